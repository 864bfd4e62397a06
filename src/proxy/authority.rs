//! Which host a request is for, decided once per request.
//!
//! HTTP/2 names it in `:authority` (RFC 9113 §8.3.1), which a `Host` field may repeat but never
//! contradict; HTTP/1.1 names it in `Host`, which must be there exactly once (RFC 9112 §3.2),
//! unless the target is in absolute form, whose authority wins (§3.2.2). The decided authority
//! is normalised once (RFC 3986 §6.2.2.1: case; DNS: the root label's trailing dot; an empty
//! port) and is then the only source of the upstream's `Host`, of `X-Forwarded-Host` and of the
//! access log's `host`.
//!
//! Pure; it never logs a value.

use http::header::{HOST, HeaderValue};
use http::{Request, Version};

/// A request's authority: `host[:port]`, normalised, ready to be sent as `Host`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestAuthority {
    value: HeaderValue,
    host_len: usize,
}

impl RequestAuthority {
    /// `host[:port]`, as the upstream's `Host` and `X-Forwarded-Host`.
    pub fn header_value(&self) -> &HeaderValue {
        &self.value
    }

    /// The host without the port: a lowercase name without a trailing dot, an IPv4 address, or
    /// a bracketed IPv6 literal.
    pub fn host(&self) -> &str {
        // Only ever built from validated ASCII.
        std::str::from_utf8(&self.value.as_bytes()[..self.host_len]).unwrap_or_default()
    }
}

/// Why a request's authority is refused (each a 400, RFC 9112 §3.2, RFC 9113 §8.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// An HTTP/1.1 request without `Host`.
    #[error("HTTP/1.1 request without Host")]
    MissingHost,
    /// More than one `Host` field line.
    #[error("more than one Host field")]
    SeveralHosts,
    /// `Host` names another authority than `:authority` or the absolute target.
    #[error("Host conflicts with the request target's authority")]
    Conflict,
    /// Not `host[:port]` as RFC 3986 defines them (e.g. userinfo, a bad character or port).
    #[error("invalid authority")]
    Invalid,
}

/// The authority `req` is for, or `None` when it names none (HTTP/1.0 without `Host`, HTTP/2
/// without `:authority` or `Host`).
///
/// ```
/// use webprom_edge::proxy::authority::decide;
/// let req = http::Request::get("/").header("host", "Ads.Example.:8443").body(()).unwrap();
/// let authority = decide(&req).unwrap().unwrap();
/// assert_eq!(authority.header_value(), "ads.example:8443");
/// assert_eq!(authority.host(), "ads.example");
/// ```
pub fn decide<B>(req: &Request<B>) -> Result<Option<RequestAuthority>, AuthorityError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(AuthorityError::SeveralHosts);
    }
    let host = host.map(|h| normalise(h.as_bytes())).transpose()?;
    // The target's authority: `:authority` in HTTP/2, the absolute form in HTTP/1.1.
    let target = req
        .uri()
        .authority()
        .map(|a| normalise(a.as_str().as_bytes()))
        .transpose()?;
    match (target, host) {
        (Some(target), Some(host)) if req.version() == Version::HTTP_2 && host != target => {
            Err(AuthorityError::Conflict)
        }
        // HTTP/1.1 still requires Host with an absolute target; its value is then ignored.
        (Some(_), None) if req.version() == Version::HTTP_11 => Err(AuthorityError::MissingHost),
        (Some(target), _) => Ok(Some(target)),
        (None, Some(host)) => Ok(Some(host)),
        (None, None) if req.version() == Version::HTTP_11 => Err(AuthorityError::MissingHost),
        (None, None) => Ok(None),
    }
}

/// `host[:port]` normalised, or why it is not one.
fn normalise(raw: &[u8]) -> Result<RequestAuthority, AuthorityError> {
    let (host, port) = split_port(raw)?;
    if !valid_host(host) {
        return Err(AuthorityError::Invalid);
    }
    // DNS: `example.com.` and `example.com` are one name (not for an IP literal).
    let host = match host {
        [rest @ .., b'.'] if !host.starts_with(b"[") && !rest.is_empty() => rest,
        _ => host,
    };
    let port = port.filter(|p| !p.is_empty());
    let kept = host.len() + port.map_or(0, |p| p.len() + 1);
    let unchanged = kept == raw.len() && !host.iter().any(u8::is_ascii_uppercase);
    let value = if unchanged {
        HeaderValue::from_bytes(raw)
    } else {
        let mut v = Vec::with_capacity(raw.len());
        v.extend(host.iter().map(u8::to_ascii_lowercase));
        if let Some(port) = port {
            v.push(b':');
            v.extend_from_slice(port);
        }
        HeaderValue::from_bytes(&v)
    }
    .map_err(|_| AuthorityError::Invalid)?;
    Ok(RequestAuthority {
        value,
        host_len: host.len(),
    })
}

/// Splits `host[:port]`; the port, if present, is all digits (possibly none) and fits u16.
fn split_port(raw: &[u8]) -> Result<(&[u8], Option<&[u8]>), AuthorityError> {
    let colon = if raw.starts_with(b"[") {
        let close = raw
            .iter()
            .position(|&b| b == b']')
            .ok_or(AuthorityError::Invalid)?;
        match raw.get(close + 1) {
            None => return Ok((raw, None)),
            Some(b':') => close + 1,
            Some(_) => return Err(AuthorityError::Invalid),
        }
    } else {
        match raw.iter().rposition(|&b| b == b':') {
            Some(i) => i,
            None => return Ok((raw, None)),
        }
    };
    let port = &raw[colon + 1..];
    let numeric = port.iter().all(u8::is_ascii_digit)
        && (port.is_empty() || std::str::from_utf8(port).is_ok_and(|p| p.parse::<u16>().is_ok()));
    if !numeric {
        return Err(AuthorityError::Invalid);
    }
    Ok((&raw[..colon], Some(port)))
}

/// RFC 3986 §3.2.2 `host`: an IP literal in brackets, or a reg-name / IPv4 address (unreserved,
/// sub-delims and percent-encoded octets only: no userinfo, no spaces, no non-ASCII). Empty is
/// refused: a request must name a host.
fn valid_host(host: &[u8]) -> bool {
    if let Some(literal) = host.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]")) {
        return std::str::from_utf8(literal).is_ok_and(|l| l.parse::<std::net::Ipv6Addr>().is_ok());
    }
    // Empty DNS labels (`.`, `.a`, `a..b`) name nothing. The root's dot is not counted in the
    // length, so a name and its fully qualified form are both accepted or both refused.
    if host.is_empty()
        || host.strip_suffix(b".").unwrap_or(host).len() > 255
        || host.starts_with(b".")
        || host.windows(2).any(|w| w == b"..")
    {
        return false;
    }
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'%' => {
                let hex = host.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 2;
            }
            b if b.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    type Row<'a> = (
        Version,
        &'a str,
        &'a [&'a str],
        Result<Option<(&'a str, &'a str)>, AuthorityError>,
    );

    #[test]
    fn authority_table() {
        use AuthorityError::*;
        // Four 63-octet labels: 255 octets, the longest name accepted.
        let name_255 =
            ["abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijk"; 4].join(".");
        let (name_255, name_256) = (name_255.as_str(), &format!("{name_255}x")[..]);
        let name_255_dot = &format!("{name_255}.")[..];
        let name_255_port = &format!("{name_255}:443")[..];
        let name_255_dot_port = &format!("{name_255}.:443")[..];
        let name_256_dot = &format!("{name_256}.")[..];
        let h2 = Version::HTTP_2;
        let h11 = Version::HTTP_11;
        let h10 = Version::HTTP_10;
        let rows: &[Row] = &[
            // HTTP/2: :authority decides; a Host that repeats it is fine, one that differs is not.
            (
                h2,
                "https://localhost:8443/",
                &[],
                Ok(Some(("localhost:8443", "localhost"))),
            ),
            (
                h2,
                "https://localhost:8443/",
                &["localhost:8443"],
                Ok(Some(("localhost:8443", "localhost"))),
            ),
            (
                h2,
                "https://localhost:8443/",
                &["LOCALHOST:8443"],
                Ok(Some(("localhost:8443", "localhost"))),
            ),
            (
                h2,
                "https://localhost:8443/",
                &["evil.example"],
                Err(Conflict),
            ),
            (h2, "https://localhost:8443/", &["localhost"], Err(Conflict)),
            (
                h2,
                "https://localhost:8443/",
                &["localhost:8443", "evil.example"],
                Err(SeveralHosts),
            ),
            (h2, "https://user@localhost/", &[], Err(Invalid)),
            // HTTP/2 without :authority: Host, else nothing.
            (
                h2,
                "/",
                &["ads.example"],
                Ok(Some(("ads.example", "ads.example"))),
            ),
            (h2, "/", &[], Ok(None)),
            // HTTP/1.1: exactly one Host (RFC 9112 §3.2).
            (
                h11,
                "/",
                &["localhost"],
                Ok(Some(("localhost", "localhost"))),
            ),
            (h11, "/", &[], Err(MissingHost)),
            (h11, "/", &["a.example", "b.example"], Err(SeveralHosts)),
            (h11, "/", &["a.example", "a.example"], Err(SeveralHosts)),
            // Absolute form: the target's authority replaces Host (§3.2.2).
            (
                h11,
                "https://ads.example/abs",
                &["localhost"],
                Ok(Some(("ads.example", "ads.example"))),
            ),
            (
                h11,
                "http://ADS.example:8080/abs",
                &["localhost"],
                Ok(Some(("ads.example:8080", "ads.example"))),
            ),
            (h11, "https://ads.example/abs", &[], Err(MissingHost)),
            // HTTP/1.0 may leave Host out.
            (h10, "/", &[], Ok(None)),
            (
                h10,
                "/",
                &["localhost"],
                Ok(Some(("localhost", "localhost"))),
            ),
            // Normalisation: case, the root's trailing dot, an empty port.
            (
                h11,
                "/",
                &["Ads.EXAMPLE.com"],
                Ok(Some(("ads.example.com", "ads.example.com"))),
            ),
            (
                h11,
                "/",
                &["ads.example."],
                Ok(Some(("ads.example", "ads.example"))),
            ),
            (
                h11,
                "/",
                &["ads.example.:443"],
                Ok(Some(("ads.example:443", "ads.example"))),
            ),
            (
                h11,
                "/",
                &["ads.example:"],
                Ok(Some(("ads.example", "ads.example"))),
            ),
            (
                h11,
                "/",
                &["[2001:DB8::1]:8443"],
                Ok(Some(("[2001:db8::1]:8443", "[2001:db8::1]"))),
            ),
            (h11, "/", &["[::1]"], Ok(Some(("[::1]", "[::1]")))),
            (
                h11,
                "/",
                &["192.0.2.1:80"],
                Ok(Some(("192.0.2.1:80", "192.0.2.1"))),
            ),
            (
                h11,
                "/",
                &["xn--bcher-kva.example"],
                Ok(Some(("xn--bcher-kva.example", "xn--bcher-kva.example"))),
            ),
            // The root's dot does not count towards the 255-octet limit (found by
            // tests/fuzz.rs): a name and its fully qualified form are one name.
            (h11, "/", &[name_255_dot], Ok(Some((name_255, name_255)))),
            (
                h11,
                "/",
                &[name_255_dot_port],
                Ok(Some((name_255_port, name_255))),
            ),
            (h11, "/", &[name_256], Err(Invalid)),
            (h11, "/", &[name_256_dot], Err(Invalid)),
            // Not an authority.
            (h11, "/", &[""], Err(Invalid)),
            (h11, "/", &[":80"], Err(Invalid)),
            (h11, "/", &["."], Err(Invalid)),
            (h11, "/", &[".ads.example"], Err(Invalid)),
            (h11, "/", &["ads..example"], Err(Invalid)),
            (h11, "/", &["user@ads.example"], Err(Invalid)),
            (h11, "/", &["ads.example:http"], Err(Invalid)),
            (h11, "/", &["ads.example:99999"], Err(Invalid)),
            (h11, "/", &["ads example"], Err(Invalid)),
            (h11, "/", &["ads.example/path"], Err(Invalid)),
            (h11, "/", &["[::1"], Err(Invalid)),
            (h11, "/", &["[not-v6]"], Err(Invalid)),
            (h11, "/", &["[::1]x"], Err(Invalid)),
            (h11, "/", &["a%zz"], Err(Invalid)),
        ];
        for (version, uri, hosts, want) in rows {
            let mut builder = Request::builder().version(*version).uri(*uri);
            for h in *hosts {
                builder = builder.header(HOST, *h);
            }
            let req = builder.body(()).unwrap();
            let got = decide(&req);
            let got = got.as_ref().map(|a| {
                a.as_ref()
                    .map(|a| (a.header_value().to_str().unwrap(), a.host()))
            });
            let got = got.map_err(|e| *e);
            assert_eq!(got, *want, "{version:?} {uri} {hosts:?}");
        }
    }

    #[test]
    fn non_ascii_host_bytes_are_invalid() {
        let req = Request::get("/")
            .header(
                HOST,
                HeaderValue::from_bytes(b"b\xc3\xbccher.example").unwrap(),
            )
            .body(())
            .unwrap();
        assert_eq!(decide(&req), Err(AuthorityError::Invalid));
    }
}

//! The PROXY protocol (HAProxy's "The PROXY protocol", versions 1 and 2): the header a layer-4
//! load balancer puts before a connection's first byte to say which client it carries.
//!
//! Owns reading and judging that header at the start of a connection, on both listeners, when
//! `server.proxy_protocol` is not `"off"`. The header is parsed by the `ppp` crate; this module
//! only frames it on the socket and applies the rules:
//!
//! - A connection from a peer in `client_ip.trusted_proxies` MUST begin with a header of a
//!   version `server.proxy_protocol` allows (`"v1"`, `"v2"` or `"any"`), in by
//!   `server.header_read_timeout` after accept (the same deadline as the first request head,
//!   which the header's time counts in). Its source address becomes the connection's peer
//!   ([`ClientAddr`], an IPv4-mapped IPv6 address folded to IPv4) for everything: the client
//!   address resolution (`X-Forwarded-For` is believed after it only if it is itself a trusted
//!   proxy), the pseudonym, the network, the country and the rate-limit key.
//! - A version 2 `LOCAL` header (a balancer's own health check), a version 2 `PROXY` header
//!   whose address family is `UNSPEC` or `AF_UNIX`, and a version 1 `UNKNOWN` header are
//!   accepted and keep the socket's peer (the balancer) as the connection's peer; on such a
//!   connection `X-Forwarded-For` and `Forwarded` are not believed (the bytes after the header
//!   are the unnamed client's, not the balancer's).
//! - A connection from any other peer that begins with a PROXY protocol signature (version 1's
//!   `PROXY `, version 2's 12 bytes) is closed: nobody else may name a client. One that does
//!   not is served as a direct client, the bytes it sent untouched.
//! - Closed, and counted in `proxy_protocol_rejected_total{reason}`: `untrusted` (a signature
//!   from an untrusted peer), `missing` (a trusted peer began with anything but a signature),
//!   `malformed` (the header does not parse, is cut short by the peer closing, or a version 1
//!   line passes 107 bytes), `version` (a version not allowed) and `timeout` (not in by the
//!   deadline). A trusted peer that closes (or resets) before sending a byte, as a balancer's
//!   connect-only health check does, is not counted.
//!
//! Exactly the header's bytes are taken from the socket (version 2: the 16 fixed bytes, then
//! the length they give; version 1: what a peek shows up to the line's end, at most 107
//! bytes, `\r\n` included), so the TLS ClientHello or the HTTP bytes after it reach the TLS or HTTP layer intact,
//! and plain HTTP on the TLS port is still recognised after a header.
//!
//! What it must never do: log, keep or count anything the header carries (addresses, TLVs) or
//! any other byte from the wire: a rejection is logged by its reason alone, and no access-log
//! record is written for a connection closed here (like a failed TLS handshake).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::client_ip::{ClientAddr, TrustedProxies};
use crate::config::{self, Cidr};
use crate::metrics::ProxyProtocolRejection as Rejection;

/// Version 1's signature: `PROXY` and a space.
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// Version 2's signature.
const V2_SIGNATURE: &[u8] = ppp::v2::PROTOCOL_PREFIX;
/// The longest version 1 line, `\r\n` included.
const V1_MAX: usize = 107;
/// Version 2's fixed part: the signature, version and command, family and protocol, length.
const V2_FIXED: usize = 16;
/// A version 2 header up to this long is read into the connection task's own buffer; a longer
/// one (many TLVs) into one allocated for it, grown as its bytes arrive.
const V2_INLINE: usize = 256;
/// How long to wait before looking again at an untrusted peer whose first bytes are a strict
/// prefix of a signature (`P`, `PRO`; no client sends its first bytes so, so this is rare): a
/// peek cannot wait for more bytes, only look again. Doubled each time, up to
/// [`UNDECIDED_RETRY_MAX`], so that a peer stopping there costs a few wake-ups, not a hundred a
/// second.
const UNDECIDED_RETRY: std::time::Duration = std::time::Duration::from_millis(5);
/// The longest wait between two looks.
const UNDECIDED_RETRY_MAX: std::time::Duration = std::time::Duration::from_millis(500);

/// How a connection's first bytes begin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// With version 1's signature.
    V1,
    /// With version 2's signature.
    V2,
    /// With something that is no signature.
    Other,
    /// Too few bytes to tell: a strict prefix of a signature (or nothing).
    Undecided,
}

fn classify(first: &[u8]) -> Start {
    let prefix_of = |sig: &[u8]| first.len() < sig.len() && sig.starts_with(first);
    if first.starts_with(V2_SIGNATURE) {
        Start::V2
    } else if first.starts_with(V1_SIGNATURE) {
        Start::V1
    } else if prefix_of(V2_SIGNATURE) || prefix_of(V1_SIGNATURE) {
        Start::Undecided
    } else {
        Start::Other
    }
}

/// What the start of a connection decided.
pub enum Accepted {
    /// Serve the connection with this peer: the client the header named, or the socket's
    /// peer when it sent no header (an untrusted direct client).
    Peer(ClientAddr),
    /// Serve the connection with the socket's peer (the balancer), whose header named no
    /// client (`LOCAL`, `UNSPEC`, `AF_UNIX`, version 1 `UNKNOWN`): its `X-Forwarded-For` and
    /// `Forwarded` are not believed, as the bytes after the header are not the balancer's own.
    Unnamed(ClientAddr),
    /// Close it: counted by reason.
    Rejected(Rejection),
    /// The trusted peer closed (or failed) before sending a byte: close, not counted.
    Gone,
}

/// The PROXY protocol settings of the listeners: the allowed versions and who may send a
/// header.
pub struct ProxyProtocol {
    v1: bool,
    v2: bool,
    trusted: TrustedProxies,
    /// When each reason (in [`Rejection::ALL`] order) was last logged as a warning:
    /// milliseconds since `started`, plus one (0 = never).
    warned_ms: [AtomicU64; 5],
    started: std::time::Instant,
}

/// How often, at most, a rejection of one reason is logged as a warning (the first at once).
pub const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl ProxyProtocol {
    /// From `server.proxy_protocol` and `client_ip.trusted_proxies`; `None` when off.
    pub fn new(mode: config::ProxyProtocol, trusted: &[Cidr]) -> Option<ProxyProtocol> {
        let (v1, v2) = match mode {
            config::ProxyProtocol::Off => return None,
            config::ProxyProtocol::V1 => (true, false),
            config::ProxyProtocol::V2 => (false, true),
            config::ProxyProtocol::Any => (true, true),
        };
        Some(ProxyProtocol {
            v1,
            v2,
            trusted: TrustedProxies::new(trusted),
            warned_ms: Default::default(),
            started: std::time::Instant::now(),
        })
    }

    /// The versions allowed, as `server.proxy_protocol` names them: `"v1"`, `"v2"` or `"any"`.
    pub fn allowed(&self) -> &'static str {
        match (self.v1, self.v2) {
            (true, true) => "any",
            (true, false) => "v1",
            _ => "v2",
        }
    }

    /// Whether a rejection for `reason` now should be logged as a warning: the first of each
    /// reason, then at most one per [`WARN_EVERY`] (the rest at debug level), so that a
    /// misconfigured balancer is seen at the default log level and a flood does not flood the
    /// log.
    pub fn should_warn(&self, reason: Rejection) -> bool {
        let Some(i) = Rejection::ALL.iter().position(|r| *r == reason) else {
            return false;
        };
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.warned_ms[i].load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < WARN_EVERY.as_millis() as u64 {
            return false;
        }
        self.warned_ms[i]
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Reads and judges the header at the start of `tcp`, accepted from `peer`, by `by` (accept
    /// + `server.header_read_timeout`). Takes the header's bytes from the socket and no other.
    pub async fn accept(&self, tcp: &mut TcpStream, peer: ClientAddr, by: Instant) -> Accepted {
        if !self.trusted.contains(peer.ip()) {
            return untrusted(tcp, peer, by).await;
        }
        match tokio::time::timeout_at(by, self.read_header(tcp, peer)).await {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(_)) => Accepted::Rejected(Rejection::Malformed),
            Err(_) => Accepted::Rejected(Rejection::Timeout),
        }
    }

    /// A trusted peer's header. An I/O error (a reset) cuts the header short: malformed.
    async fn read_header(&self, tcp: &mut TcpStream, peer: ClientAddr) -> io::Result<Accepted> {
        // The signature, read byte-exact up to the first 16 bytes (a read never returns more
        // than asked for): every byte read is a header byte, or the connection is refused.
        let mut fixed = [0u8; V2_FIXED];
        let mut len = 0;
        let start = loop {
            let start = classify(&fixed[..len]);
            let want = match start {
                Start::V1 | Start::Other => break start,
                Start::V2 if len == V2_FIXED => break start,
                // Version 2's signature, or its first bytes: its 16 fixed bytes are all header.
                _ if len > 0 && fixed[0] == V2_SIGNATURE[0] => V2_FIXED,
                // Nothing yet, or the first bytes of `PROXY `: no header is shorter than this.
                _ => V1_SIGNATURE.len(),
            };
            let n = match tcp.read(&mut fixed[len..want]).await {
                Ok(n) => n,
                // A balancer's connect-only health check may end with a reset.
                Err(_) if len == 0 => return Ok(Accepted::Gone),
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(match len {
                    0 => Accepted::Gone,
                    _ => Accepted::Rejected(Rejection::Malformed),
                });
            }
            len += n;
        };
        match start {
            Start::V1 if !self.v1 => Ok(Accepted::Rejected(Rejection::Version)),
            Start::V2 if !self.v2 => Ok(Accepted::Rejected(Rejection::Version)),
            Start::V1 => read_v1(tcp, &fixed[..len], peer).await,
            Start::V2 => read_v2(tcp, &fixed, peer).await,
            Start::Other | Start::Undecided => Ok(Accepted::Rejected(Rejection::Missing)),
        }
    }
}

/// An untrusted peer: closed if it begins with a signature, else served as it is. Only peeks:
/// nothing is taken from the socket.
async fn untrusted(tcp: &TcpStream, peer: ClientAddr, by: Instant) -> Accepted {
    let mut first = [0u8; V2_SIGNATURE.len()];
    let mut retry = UNDECIDED_RETRY;
    loop {
        // A timeout, the peer gone or an error: the TLS or HTTP layer finds the same and
        // handles it as for any direct client.
        let Ok(Ok(n)) = tokio::time::timeout_at(by, tcp.peek(&mut first)).await else {
            return Accepted::Peer(peer);
        };
        match classify(&first[..n]) {
            Start::V1 | Start::V2 => return Accepted::Rejected(Rejection::Untrusted),
            Start::Undecided if n > 0 && Instant::now() < by => {
                tokio::time::sleep_until(by.min(Instant::now() + retry)).await;
                retry = (retry * 2).min(UNDECIDED_RETRY_MAX);
            }
            _ => return Accepted::Peer(peer),
        }
    }
}

/// The rest of a version 1 line after `start` (the signature, already read): peeks, and takes
/// only up to the line's end (its first `\n`), at most [`V1_MAX`] bytes in all; then `ppp`
/// parses the whole line (which must end in `\r\n`). The line is framed here, not by `ppp`,
/// whose parser takes some cut-short lines for bad ones (`... 40000 ` then `443\r\n`).
async fn read_v1(tcp: &mut TcpStream, start: &[u8], peer: ClientAddr) -> io::Result<Accepted> {
    let mut line = [0u8; V1_MAX];
    line[..start.len()].copy_from_slice(start);
    let mut len = start.len();
    loop {
        let n = tcp.peek(&mut line[len..]).await?;
        if n == 0 {
            return Ok(Accepted::Rejected(Rejection::Malformed));
        }
        if let Some(at) = memchr::memchr(b'\n', &line[len..len + n]) {
            let end = len + at + 1;
            // What the peek showed of the line, and not a byte after it.
            tcp.read_exact(&mut line[len..end]).await?;
            return Ok(match ppp::v1::Header::try_from(&line[..end]) {
                Ok(header) if header.header.len() == end => match header.addresses {
                    ppp::v1::Addresses::Tcp4(a) => {
                        Accepted::Peer(ClientAddr::new(a.source_address.into()))
                    }
                    ppp::v1::Addresses::Tcp6(a) => {
                        Accepted::Peer(ClientAddr::new(a.source_address.into()))
                    }
                    ppp::v1::Addresses::Unknown => Accepted::Unnamed(peer),
                },
                _ => Accepted::Rejected(Rejection::Malformed),
            });
        }
        if len + n == V1_MAX {
            return Ok(Accepted::Rejected(Rejection::Malformed));
        }
        // All of it is the line so far: take it, and wait for more.
        tcp.read_exact(&mut line[len..len + n]).await?;
        len += n;
    }
}

/// The rest of a version 2 header after its `fixed` 16 bytes (already read): exactly the
/// length they give.
async fn read_v2(
    tcp: &mut TcpStream,
    fixed: &[u8; V2_FIXED],
    peer: ClientAddr,
) -> io::Result<Accepted> {
    let total = match ppp::v2::Header::try_from(&fixed[..]) {
        Err(ppp::v2::ParseError::Partial(_, length)) => V2_FIXED + length,
        // Addresses only (LOCAL with no address block has length 0).
        Ok(header) => return Ok(v2_peer(&header, peer)),
        Err(_) => return Ok(Accepted::Rejected(Rejection::Malformed)),
    };
    let mut inline = [0u8; V2_INLINE];
    let mut allocated;
    let whole: &[u8] = if total <= V2_INLINE {
        let whole = &mut inline[..total];
        whole[..V2_FIXED].copy_from_slice(fixed);
        match tcp.read_exact(&mut whole[V2_FIXED..]).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Ok(Accepted::Rejected(Rejection::Malformed));
            }
            Err(e) => return Err(e),
        }
        whole
    } else {
        // Grown as the bytes come, not to the length announced: a peer that announces 64 KiB
        // and stalls holds no more than it sent.
        allocated = Vec::with_capacity(2 * V2_INLINE);
        allocated.extend_from_slice(fixed);
        let rest = (total - V2_FIXED) as u64;
        if (&mut *tcp).take(rest).read_to_end(&mut allocated).await? as u64 != rest {
            return Ok(Accepted::Rejected(Rejection::Malformed));
        }
        &allocated
    };
    Ok(match ppp::v2::Header::try_from(whole) {
        Ok(header) => v2_peer(&header, peer),
        Err(_) => Accepted::Rejected(Rejection::Malformed),
    })
}

/// The connection's peer after a version 2 header: its source for `PROXY` over IPv4 or IPv6,
/// else (`LOCAL`, `UNSPEC`, `AF_UNIX`) the socket's `peer`, unnamed. The TLVs are never looked
/// at.
fn v2_peer(header: &ppp::v2::Header<'_>, peer: ClientAddr) -> Accepted {
    if header.command != ppp::v2::Command::Proxy {
        return Accepted::Unnamed(peer);
    }
    match header.addresses {
        ppp::v2::Addresses::IPv4(a) => Accepted::Peer(ClientAddr::new(a.source_address.into())),
        ppp::v2::Addresses::IPv6(a) => Accepted::Peer(ClientAddr::new(a.source_address.into())),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => Accepted::Unnamed(peer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejection_is_warned_the_first_time_for_each_reason_then_at_most_once_a_minute() {
        let rules = ProxyProtocol::new(config::ProxyProtocol::V2, &[]).unwrap();
        assert_eq!(rules.allowed(), "v2");
        // (reason, warned)
        let rows = [
            (Rejection::Missing, true),
            (Rejection::Missing, false),
            (Rejection::Version, true),
            (Rejection::Missing, false),
            (Rejection::Version, false),
            (Rejection::Untrusted, true),
            (Rejection::Malformed, true),
            (Rejection::Timeout, true),
            (Rejection::Timeout, false),
        ];
        for (i, (reason, warned)) in rows.into_iter().enumerate() {
            assert_eq!(rules.should_warn(reason), warned, "row {i}: {reason:?}");
        }
        // A minute on (the clock it reads moved back a minute), each reason is warned once more.
        if let Some(earlier) = rules.started.checked_sub(WARN_EVERY) {
            let later = ProxyProtocol {
                started: earlier,
                ..rules
            };
            assert!(later.should_warn(Rejection::Missing));
            assert!(!later.should_warn(Rejection::Missing));
            assert!(later.should_warn(Rejection::Timeout));
        }
        let modes = [
            (config::ProxyProtocol::V1, "v1"),
            (config::ProxyProtocol::Any, "any"),
        ];
        for (mode, name) in modes {
            assert_eq!(ProxyProtocol::new(mode, &[]).unwrap().allowed(), name);
        }
    }

    #[test]
    fn a_start_is_told_by_its_signature_alone() {
        let rows: [(&[u8], Start); 12] = [
            (b"", Start::Undecided),
            (b"P", Start::Undecided),
            (b"PROXY", Start::Undecided),
            (b"PROXY ", Start::V1),
            (b"PROXY TCP4 ", Start::V1),
            (b"PROXYTCP4", Start::Other),
            (b"POST / HTTP/1.1", Start::Other),
            (b"PRI * HTTP/2.0", Start::Other),
            (b"\x16\x03\x01", Start::Other),
            (b"\r\n\r\n\0\r\nQUI", Start::Undecided),
            (b"\r\n\r\n\0\r\nQUIT\n", Start::V2),
            (b"\r\n\r\n\0\r\nQUIT\r", Start::Other),
        ];
        for (first, want) in rows {
            assert_eq!(classify(first), want, "{first:?}");
        }
    }

    /// What `accept` decided: the peer, or the reason for closing (`None`: gone).
    type Decision = Result<std::net::IpAddr, Option<Rejection>>;

    /// A connection from 127.0.0.1, `trusted` or not, that writes `sent` in pieces of `piece`
    /// bytes, the first ones milliseconds apart, then closes: what `accept` decides (within
    /// 2 s), and the bytes the socket still holds.
    async fn accept_from(
        trusted: bool,
        mode: config::ProxyProtocol,
        sent: &[u8],
        piece: usize,
    ) -> (Decision, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = sent.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            for (i, chunk) in sent.chunks(piece).enumerate() {
                tcp.write_all(chunk).await.unwrap();
                // Apart, so that each is read on its own (the first 64: a long header's rest
                // comes at once).
                if i < 64 {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            }
        });
        let (mut tcp, from) = listener.accept().await.unwrap();
        let trusted = if trusted {
            "127.0.0.1/32"
        } else {
            "10.0.0.0/8"
        };
        let cidrs = [Cidr(trusted.parse().unwrap())];
        let rules = ProxyProtocol::new(mode, &cidrs).unwrap();
        let by = Instant::now() + std::time::Duration::from_secs(2);
        let decision = match rules.accept(&mut tcp, ClientAddr::new(from.ip()), by).await {
            Accepted::Peer(peer) | Accepted::Unnamed(peer) => Ok(peer.ip()),
            Accepted::Rejected(reason) => Err(Some(reason)),
            Accepted::Gone => Err(None),
        };
        writer.await.unwrap();
        let mut rest = Vec::new();
        tcp.read_to_end(&mut rest).await.unwrap();
        (decision, rest)
    }

    /// As [`accept_from`] a trusted peer: the peer, if accepted.
    async fn accept_trickled(
        mode: config::ProxyProtocol,
        sent: &[u8],
        piece: usize,
    ) -> (Option<std::net::IpAddr>, Vec<u8>) {
        let (decision, rest) = accept_from(true, mode, sent, piece).await;
        (decision.ok(), rest)
    }

    #[tokio::test]
    async fn an_untrusted_peer_is_refused_for_a_signature_however_slow_and_else_left_untouched() {
        let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let untrusted = Err(Some(Rejection::Untrusted));
        let v1 = b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 443\r\n\x16\x03\x01".to_vec();
        let v2 = [V2_SIGNATURE, b"\x21\x11\x00\x0c"].concat();
        // (first bytes, pieces, decision, whether every byte is left for TLS or HTTP).
        let rows: Vec<(Vec<u8>, usize, Decision, bool)> = vec![
            (v1.clone(), 4096, untrusted, false),
            (v1, 1, untrusted, false),
            (v2.clone(), 4096, untrusted, false),
            (v2, 1, untrusted, false),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                4096,
                Ok(local),
                true,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
                1,
                Ok(local),
                true,
            ),
            (
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
                1,
                Ok(local),
                true,
            ),
            (b"\x16\x03\x01\x00\xa5\x01\x00".to_vec(), 1, Ok(local), true),
            (b"\r\n\r\nGET".to_vec(), 1, Ok(local), true),
            // Cut short inside a signature: served (and failed by TLS) at the deadline.
            (b"PROX".to_vec(), 1, Ok(local), true),
            (Vec::new(), 1, Ok(local), true),
        ];
        for (sent, piece, want, untouched) in rows {
            let (decision, rest) =
                accept_from(false, config::ProxyProtocol::Any, &sent, piece).await;
            let name = String::from_utf8_lossy(&sent).into_owned();
            assert_eq!(decision, want, "{name:?} in pieces of {piece}");
            if untouched {
                assert_eq!(rest, sent, "{name:?} in pieces of {piece}: every byte left");
            }
        }
    }

    #[tokio::test]
    async fn exactly_the_header_is_taken_from_the_socket_however_it_arrives() {
        use ppp::v2::{Builder, Command, Protocol, Version};
        let v2 = |src: &str, tlv: usize| {
            let src: std::net::SocketAddr = src.parse().unwrap();
            let dst: std::net::SocketAddr = match src {
                std::net::SocketAddr::V4(_) => "127.0.0.1:443".parse().unwrap(),
                std::net::SocketAddr::V6(_) => "[::1]:443".parse().unwrap(),
            };
            let mut b = Builder::with_addresses(
                Version::Two | Command::Proxy,
                Protocol::Stream,
                (src, dst),
            );
            if tlv > 0 {
                b = b.write_tlv(0xE0, &vec![b'T'; tlv]).unwrap();
            }
            b.build().unwrap()
        };
        let after = b"\x16\x03\x01\x00\x05GET / HTTP/1.1\r\n\r\nPROXY TCP4 1.1.1.1 1.1.1.1 1 1\r\n";
        // (header, the peer it names).
        let rows: Vec<(Vec<u8>, &str)> = vec![
            (b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 443\r\n".to_vec(), "198.51.100.7"),
            (b"PROXY TCP6 2001:db8::7 ::1 40000 443\r\n".to_vec(), "2001:db8::7"),
            (b"PROXY TCP6 ::ffff:198.51.100.7 ::1 40000 443\r\n".to_vec(), "198.51.100.7"),
            (b"PROXY UNKNOWN\r\n".to_vec(), "127.0.0.1"),
            (b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n".to_vec(), "127.0.0.1"),
            (v2("198.51.100.7:40000", 0), "198.51.100.7"),
            (v2("[2001:db8::7]:40000", 0), "2001:db8::7"),
            (v2("198.51.100.7:40000", 240), "198.51.100.7"),
            (v2("198.51.100.7:40000", 4000), "198.51.100.7"),
        ];
        for (header, want) in rows {
            for piece in [1, 5, 16, 4096] {
                let mut sent = header.clone();
                sent.extend_from_slice(after);
                let (peer, rest) = accept_trickled(config::ProxyProtocol::Any, &sent, piece).await;
                let name = String::from_utf8_lossy(&header[..header.len().min(40)]).into_owned();
                assert_eq!(
                    peer,
                    Some(want.parse().unwrap()),
                    "{name:?} in pieces of {piece}"
                );
                assert_eq!(
                    rest, after,
                    "{name:?} in pieces of {piece}: bytes after the header"
                );
            }
        }
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn config() -> ProptestConfig {
            let cases = std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(128);
            ProptestConfig {
                cases,
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        /// Starts a header could have: none, a signature, or a signature and a first field.
        fn start() -> impl Strategy<Value = Vec<u8>> {
            prop::sample::select(vec![
                Vec::new(),
                b"PROXY ".to_vec(),
                b"PROXY TCP4 198.51.100.7 ".to_vec(),
                b"PROXY TCP6 ".to_vec(),
                b"PROXY UNKNOWN".to_vec(),
                V2_SIGNATURE.to_vec(),
                [V2_SIGNATURE, b"\x21\x11\x00"].concat(),
                [V2_SIGNATURE, b"\x20\x00\x00\x00"].concat(),
            ])
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn any_start_is_judged_without_a_panic_and_leaves_what_follows_the_header(
                start in start(),
                rest in prop::collection::vec(any::<u8>(), 0..160),
                piece in prop::sample::select(vec![1usize, 7, 4096]),
            ) {
                let sent = [start, rest].concat();
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let (peer, left) = rt.block_on(accept_trickled(config::ProxyProtocol::Any, &sent, piece));
                // Whatever was decided, nothing but a leading part was taken.
                prop_assert!(sent.ends_with(&left));
                if peer.is_some() {
                    let taken = &sent[..sent.len() - left.len()];
                    prop_assert!(taken.starts_with(V1_SIGNATURE) || taken.starts_with(V2_SIGNATURE));
                    if taken.starts_with(V1_SIGNATURE) {
                        prop_assert!(taken.len() <= V1_MAX && taken.ends_with(b"\r\n"));
                    }
                }
            }
        }
    }

    #[test]
    fn off_reads_no_header() {
        assert!(ProxyProtocol::new(config::ProxyProtocol::Off, &[]).is_none());
        for mode in [
            config::ProxyProtocol::V1,
            config::ProxyProtocol::V2,
            config::ProxyProtocol::Any,
        ] {
            assert!(ProxyProtocol::new(mode, &[]).is_some(), "{mode:?}");
        }
    }
}

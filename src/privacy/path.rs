//! The recorded request path (the record's `path`): the URI path with every segment that looks like
//! an identifier replaced by `:id`, and at most [`MAX_SEGMENTS`] segments.
//!
//! It owns the rule for what looks like an identifier. It must never record a query string or
//! fragment, never let an identifier-like segment through, and never emit a character that is
//! not a plain URI path character (so the result needs no JSON escaping).

/// Segments kept; the rest of a longer path is dropped without a marker, so a recorded path has
/// at most this many segments, as the record schema says.
pub const MAX_SEGMENTS: usize = 16;

/// Segments longer than this are recorded as `:id` whatever they contain.
const MAX_SEGMENT_LEN: usize = 32;

/// A path as the access log records it (the record's `path`): made only by
/// [`RecordedPath::of`], through [`normalize_path`], or [`RecordedPath::unread`], so it never
/// holds a query, an identifier-like segment or a character that needs escaping.
///
/// ```compile_fail
/// # use webprom_edge::privacy::path::RecordedPath;
/// let raw = RecordedPath(String::from("/u/alice@example.com?token=1"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordedPath(String);

impl RecordedPath {
    /// The recorded form of the URI path `path` (see [`normalize_path`]).
    ///
    /// ```
    /// use webprom_edge::privacy::path::RecordedPath;
    /// assert_eq!(RecordedPath::of("/u/alice@example.com?x=1").as_str(), "/u/:id");
    /// ```
    pub fn of(path: &str) -> RecordedPath {
        let mut out = String::with_capacity(path.len().min(128));
        normalize_path(path, &mut out);
        RecordedPath(out)
    }

    /// The path of a request whose head could not be read: empty (a read path always starts
    /// with `/`). Allocates nothing.
    pub fn unread() -> RecordedPath {
        RecordedPath(String::new())
    }

    /// The recorded path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Any text as a recorded path, for tests of what a sink does with characters that the
    /// normaliser never emits.
    #[cfg(test)]
    pub(crate) fn unchecked(text: &str) -> RecordedPath {
        RecordedPath(text.to_owned())
    }
}

/// Appends the recorded form of `path` to `out` (reuse `out` across requests).
///
/// `path` is the URI path; anything from a `?` or `#` on is ignored. The result always starts
/// with `/`, keeps a trailing slash and empty segments, and does not resolve `.` or `..`.
///
/// ```
/// use webprom_edge::privacy::path::normalize_path;
/// let mut out = String::new();
/// normalize_path("/click/12345?x=1", &mut out);
/// assert_eq!(out, "/click/:id");
/// ```
pub fn normalize_path(path: &str, out: &mut String) {
    let path = path.find(['?', '#']).map_or(path, |end| &path[..end]);
    let path = path.strip_prefix('/').unwrap_or(path);
    out.push('/');
    let mut segments = path.split('/').peekable();
    let mut kept = 0;
    while let Some(segment) = segments.next() {
        let is_trailing_slash = segment.is_empty() && segments.peek().is_none();
        if kept == MAX_SEGMENTS && !is_trailing_slash {
            break;
        }
        if kept > 0 {
            out.push('/');
        }
        if looks_like_identifier(segment) {
            out.push_str(":id");
        } else {
            out.push_str(segment);
        }
        kept += 1;
    }
}

/// Whether a path segment should be recorded as `:id`.
fn looks_like_identifier(segment: &str) -> bool {
    let s = segment.as_bytes();
    s.len() > MAX_SEGMENT_LEN
        || !s.iter().all(|&b| is_plain_path_byte(b))
        || has_digit_run(s, 3)
        || is_uuid(s)
        || is_hex_token(s)
        || is_base64_token(s)
}

/// RFC 3986 `pchar` without `%` and `@`: a percent-escape can hide anything and `@` marks an
/// e-mail address or handle. Everything else (non-ASCII, quotes, controls) is not a valid
/// path character, so it is never copied into the record either.
fn is_plain_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:".contains(&b)
}

fn has_digit_run(s: &[u8], len: usize) -> bool {
    s.split(|b| !b.is_ascii_digit()).any(|run| run.len() >= len)
}

/// `8-4-4-4-12` hex digits, any case.
fn is_uuid(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// At least 8 hex digits and nothing else, with a digit among them (so `deadbeef` or
/// `accepted` stay words).
fn is_hex_token(s: &[u8]) -> bool {
    s.len() >= 8 && s.iter().all(u8::is_ascii_hexdigit) && s.iter().any(u8::is_ascii_digit)
}

/// At least 16 characters of the base64/base64url alphabet, mixing letters and digits.
/// Long slugs with a digit in them fall under this too; recording them as `:id` is the
/// cautious side.
fn is_base64_token(s: &[u8]) -> bool {
    s.len() >= 16
        && s.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+=_-".contains(b))
        && s.iter().any(u8::is_ascii_digit)
        && s.iter().any(u8::is_ascii_alphabetic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(path: &str) -> String {
        let mut out = String::new();
        normalize_path(path, &mut out);
        out
    }

    #[test]
    fn normalize_path_table() {
        let forty = "/a".repeat(40);
        let sixteen = "/a".repeat(16);
        let seventeen_with_slash = format!("{}/", "/a".repeat(17));
        let sixteen_with_slash = format!("{sixteen}/");
        let cases: &[(&str, &str)] = &[
            ("", "/"),
            ("/", "/"),
            ("/click/12345?x=1", "/click/:id"),
            ("/click/12345#frag", "/click/:id"),
            ("/search?q=/secret/12345", "/search"),
            ("/u/alice@example.com", "/u/:id"),
            ("/a/550e8400-e29b-41d4-a716-446655440000", "/a/:id"),
            (
                "/a/550E8400-E29B-41D4-A716-446655440000/edit",
                "/a/:id/edit",
            ),
            ("/img/deadbeef12", "/img/:id"),
            ("/img/deadbeef", "/img/deadbeef"),
            ("/static/app.js", "/static/app.js"),
            ("/v2/ads/banner", "/v2/ads/banner"),
            ("/v2/ads/banner/", "/v2/ads/banner/"),
            ("/orders/42", "/orders/42"),
            ("/orders/420", "/orders/:id"),
            ("/item-1234-blue", "/:id"),
            ("/files/report%20final.pdf", "/files/:id"),
            ("/t/eyJhbGciOiJIUzI1NiJ9", "/t/:id"),
            ("/t/aGVsbG8td29ybGQtMQ", "/t/:id"),
            ("/blog/a-very-long-title", "/blog/a-very-long-title"),
            (
                "/blog/this-is-a-very-long-article-title-indeed",
                "/blog/:id",
            ),
            ("/x/0123456789abcdef0123456789abcdef", "/x/:id"),
            ("/assets/app.3f9a8b2c.js", "/assets/app.3f9a8b2c.js"),
            ("//double//slash", "//double//slash"),
            ("no-leading-slash", "/no-leading-slash"),
            ("*", "/*"),
            ("/a/./b/../c", "/a/./b/../c"),
            ("/caf\u{e9}", "/:id"),
            ("/say/\"hi\"", "/say/:id"),
            ("/back\\slash", "/:id"),
            ("/ctl/a\u{1}b", "/ctl/:id"),
            ("/users/:id/profile", "/users/:id/profile"),
            (&forty, &sixteen),
            (&seventeen_with_slash, &sixteen),
            (&sixteen_with_slash, &sixteen_with_slash),
        ];
        for &(input, want) in cases {
            assert_eq!(normalized(input), want, "input {input:?}");
        }
    }

    #[test]
    fn appends_to_the_buffer() {
        let mut out = String::from("prefix ");
        normalize_path("/a/12345", &mut out);
        assert_eq!(out, "prefix /a/:id");
    }

    #[test]
    fn output_needs_no_json_escaping() {
        let inputs = ["/\"/\\/\u{0}/\u{7f}/\u{2028}/ok", "/a b/\t/\n"];
        for input in inputs {
            let out = normalized(input);
            assert!(
                out.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'),
                "{out:?}"
            );
        }
    }
}

//! A minimal HTTP/1.1 client exchange over any byte stream: one request written, one response
//! read (Content-Length, chunked, or to the end of the connection). Enough for a benchmark
//! against servers we start ourselves; not a general client.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::corpus::Pick;

/// Appends the request head for `pick` to `out`.
pub fn write_request(out: &mut Vec<u8>, authority: &str, pick: &Pick<'_>) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(pick.path.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority.as_bytes());
    out.extend_from_slice(b"\r\nuser-agent: ");
    out.extend_from_slice(pick.user_agent.as_bytes());
    out.extend_from_slice(b"\r\naccept: */*\r\n");
    if let Some(lang) = pick.accept_language {
        out.extend_from_slice(b"accept-language: ");
        out.extend_from_slice(lang.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(client) = pick.client {
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(client.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads more into `buf`; an end of stream is an error (a response was still expected).
async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<()> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16384);
    }
    let n = stream.read_buf(buf).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(())
}

/// What one response was.
pub struct Response {
    pub status: u16,
    /// The server will close the connection (`Connection: close` or a body read to the end).
    pub closes: bool,
}

/// Reads one response from `stream`; `buf` holds bytes already read and keeps any bytes past this
/// response for the next one.
pub async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> io::Result<Response> {
    let (head_len, status, length, chunked, closes) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = response.code.ok_or_else(|| invalid("no status"))?;
                let mut length = None;
                let mut chunked = false;
                let mut closes = false;
                for h in response.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        let v = std::str::from_utf8(h.value).map_err(|_| invalid("length"))?;
                        length = Some(v.trim().parse::<usize>().map_err(|_| invalid("length"))?);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = h
                            .value
                            .windows(7)
                            .any(|w| w.eq_ignore_ascii_case(b"chunked"));
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        closes = h.value.windows(5).any(|w| w.eq_ignore_ascii_case(b"close"));
                    }
                }
                break (n, status, length, chunked, closes);
            }
            Ok(httparse::Status::Partial) => fill(stream, buf).await?,
            Err(_) => return Err(invalid("malformed response head")),
        }
    };
    if (100..200).contains(&status) {
        buf.drain(..head_len);
        return Box::pin(read_response(stream, buf)).await;
    }
    let no_body = status == 204 || status == 304;
    let end = if no_body {
        head_len
    } else if chunked {
        chunked_end(stream, buf, head_len).await?
    } else if let Some(length) = length {
        while buf.len() < head_len + length {
            fill(stream, buf).await?;
        }
        head_len + length
    } else {
        // Neither: the body runs to the end of the connection.
        loop {
            buf.reserve(16384);
            if stream.read_buf(buf).await? == 0 {
                break;
            }
        }
        buf.clear();
        return Ok(Response {
            status,
            closes: true,
        });
    };
    buf.drain(..end);
    Ok(Response { status, closes })
}

/// The offset just past a chunked body that starts at `pos`, trailers included.
async fn chunked_end<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    mut pos: usize,
) -> io::Result<usize> {
    loop {
        let line_end = loop {
            if let Some(i) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
                break pos + i;
            }
            fill(stream, buf).await?;
        };
        let line = &buf[pos..line_end];
        let hex = line.split(|&b| b == b';').next().unwrap_or(line);
        let hex = std::str::from_utf8(hex).map_err(|_| invalid("chunk size"))?;
        let size = usize::from_str_radix(hex.trim(), 16).map_err(|_| invalid("chunk size"))?;
        pos = line_end + 2;
        if size == 0 {
            // Trailer lines, then an empty line.
            loop {
                let line_end = loop {
                    if let Some(i) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
                        break pos + i;
                    }
                    fill(stream, buf).await?;
                };
                let empty = line_end == pos;
                pos = line_end + 2;
                if empty {
                    return Ok(pos);
                }
            }
        }
        while buf.len() < pos + size + 2 {
            fill(stream, buf).await?;
        }
        pos += size + 2;
    }
}

/// Writes `request` and reads its response.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> io::Result<Response> {
    stream.write_all(request).await?;
    stream.flush().await?;
    read_response(stream, buf).await
}

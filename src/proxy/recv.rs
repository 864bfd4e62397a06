//! An HTTP/2 request body as the `h2` crate delivers it ([`RecvBody`]): the connection
//! ([`crate::server::h2`]) makes one per stream, and the driver reads it as a
//! [`super::body::ClientBody`]. Reading it gives the bytes back to the client's flow-control
//! window and sends `100 (Continue)` the first time, when the client asked for it.
//!
//! What it must never do: buffer a body, or log a byte of it.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{Reason, RecvStream};
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::expect;

/// An HTTP/2 request body: DATA frames as they arrive, then trailers. Each frame read gives its
/// bytes back to the client's flow-control window; the first read sends `100 (Continue)` when
/// the client asked for it.
pub struct RecvBody {
    recv: RecvStream,
    /// What the declared `Content-Length` still promises (`h2` enforces it); `None` without.
    remaining: Option<u64>,
    data_done: bool,
    /// Fired on the first read when the client waits for `100 (Continue)`.
    continue_wanted: Option<oneshot::Sender<()>>,
}

impl RecvBody {
    /// The body of a request with `headers`, and the signal of its first read when the client
    /// expects `100-continue` and has a body to send.
    pub fn new(recv: RecvStream, headers: &HeaderMap) -> (RecvBody, Option<oneshot::Receiver<()>>) {
        let end = recv.is_end_stream();
        let remaining = if end {
            Some(0)
        } else {
            content_length(headers)
        };
        let (tx, rx) = if !end && expect::wants_continue(headers) {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let body = RecvBody {
            recv,
            remaining,
            data_done: false,
            continue_wanted: tx,
        };
        (body, rx)
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if let Some(wanted) = this.continue_wanted.take() {
            let _ = wanted.send(());
        }
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut this.remaining {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(early_end(e)),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Err(e) => Poll::Ready(early_end(e)),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// A reset with NO_ERROR ends the body without failing it: the client has its answer and stops
/// sending (RFC 9113 §8.1).
fn early_end(e: h2::Error) -> Option<Result<Frame<Bytes>, h2::Error>> {
    (e.reason() != Some(Reason::NO_ERROR)).then_some(Err(e))
}

/// The declared `Content-Length`, if every value (and list member) agrees.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut len = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for member in value.as_bytes().split(|&b| b == b',') {
            let n: u64 = std::str::from_utf8(member.trim_ascii())
                .ok()?
                .parse()
                .ok()?;
            if len.is_some_and(|l| l != n) {
                return None;
            }
            len = Some(n);
        }
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn content_length_counts_only_when_every_value_agrees() {
        let rows: &[(&[&str], Option<u64>)] = &[
            (&[], None),
            (&["0"], Some(0)),
            (&["2097152"], Some(2_097_152)),
            (&[" 42 "], Some(42)),
            (&["42", "42"], Some(42)),
            (&["42, 42"], Some(42)),
            (&["42", "43"], None),
            (&["42, 43"], None),
            (&["-1"], None),
            (&["4x"], None),
            (&[""], None),
        ];
        for (values, want) in rows {
            let mut h = HeaderMap::new();
            for v in *values {
                h.append(CONTENT_LENGTH, HeaderValue::from_str(v).unwrap());
            }
            assert_eq!(content_length(&h), *want, "{values:?}");
        }
    }
}

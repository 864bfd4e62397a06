//! The body types of the forwarding path: what goes upstream and what goes back to the client.
//!
//! A request body is read from the client by a [`ClientReader`], which owns everything that can
//! go wrong on the client's side and names it ([`ClientError`]): no byte for
//! `server.body_read_timeout` (408), a malformed body (400: bad chunked framing, an HTTP/2
//! stream violating its `Content-Length`), more than `server.max_body_bytes` (413), a body cut
//! short (400) or a stream reset or connection lost mid-body (recorded 499). A small body (at
//! most `server.body_buffer_bytes`) is read whole into memory before an upstream connection is
//! taken ([`read_small`]); a larger one streams through [`RequestBody`], whose failures are
//! told to the handler through a [`BodyWatch`] rather than read back from the upstream
//! client's error. The response body is the upstream's, streamed with the lease on its
//! connection, or a short one the proxy wrote itself ([`ResponseBody`]); the logging phase wraps
//! it ([`super::logging::CapturedBody`]).
//!
//! Never here: a body written to disk (privacy P8), a body or error text logged, a body held
//! whole when it is larger than `server.body_buffer_bytes` (what was read of it, at most one
//! frame more, is sent on first).
//!
//! A body read whole is not end-of-stream until sent, so the upstream pool never sends it
//! again on a retry meant for body-less requests.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::recv::RecvBody;
use super::upstream::Lease;
use crate::metrics::ClientError;

/// Reading a client's request body failed, for the reason `kind`: the client's doing, never
/// the upstream's. Carries no text from the request (hyper's chunked-trailer errors quote the
/// field), so it can be logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("client request body failed: {}", .kind.as_str())]
pub struct ClientBodyError {
    /// Why.
    pub kind: ClientError,
}

impl From<ClientError> for ClientBodyError {
    fn from(kind: ClientError) -> Self {
        ClientBodyError { kind }
    }
}

/// How long, at most, [`linger`] reads a body nobody wants.
const LINGER: Duration = Duration::from_secs(5);
/// How much, at most, [`linger`] reads of a body nobody wants.
const LINGER_BYTES: u64 = 16 << 20;

/// Reads and throws away what is left of an HTTP/1.x request body the proxy answered without
/// reading (a 413 or 429 before the body, or a 502 or 503 with the body part read), for at
/// most 5 s and 16 MiB, in a task of its own.
///
/// Closing a TCP connection with unread data in it makes the kernel send a reset, and a
/// client still sending its body then sees the reset instead of the answer waiting for it.
/// This is nginx's "lingering close". HTTP/2 needs none of it: the stream is reset, not the
/// connection.
pub fn linger(mut body: Incoming) {
    if body.is_end_stream() {
        return;
    }
    // No runtime (the process is shutting down): the connection goes with it anyway.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let drain = async {
            let mut read = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > LINGER_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    });
}

/// A client's request body as its connection delivers it, its errors classified.
pub enum ClientBody {
    /// HTTP/1.x, read by hyper's server.
    H1(Incoming),
    /// HTTP/2, read from its `h2` stream ([`RecvBody`]).
    H2(RecvBody),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        // Both kinds are `Unpin`.
        let res = match self.get_mut() {
            ClientBody::H1(b) => std::task::ready!(Pin::new(b).poll_frame(cx))
                .map(|r| r.map_err(|e| h1_failure(&e).into())),
            ClientBody::H2(b) => std::task::ready!(Pin::new(b).poll_frame(cx))
                .map(|r| r.map_err(|e| h2_failure(&e).into())),
        };
        Poll::Ready(res)
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::H1(b) => b.is_end_stream(),
            ClientBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::H1(b) => b.size_hint(),
            ClientBody::H2(b) => b.size_hint(),
        }
    }
}

/// What an error of hyper's HTTP/1.1 server reading a request body means. Its chunked decoder
/// (RFC 9112 §7.1) fails with `InvalidInput` or `InvalidData` on bad framing (a bare LF, no
/// CRLF after the data, a size that overflows or is not hex, an extension or trailer section
/// over its limit, an invalid trailer field) and with `UnexpectedEof` when the connection ends
/// before the body does; anything else is the transport failing.
fn h1_failure(e: &hyper::Error) -> ClientError {
    if e.is_incomplete_message() {
        return ClientError::BodyIncomplete;
    }
    if e.is_timeout() {
        return ClientError::BodyTimeout;
    }
    let mut cur = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::UnexpectedEof => ClientError::BodyIncomplete,
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
                    ClientError::BodyMalformed
                }
                _ => ClientError::BodyReset,
            };
        }
        cur = err.source();
    }
    ClientError::BodyReset
}

/// What an error of an HTTP/2 request stream means: a stream the `h2` library reset itself
/// broke a rule of RFC 9113 (DATA beyond the declared `Content-Length`, the stream ending
/// short of it, flow control): malformed (§8.1.1). A reset from the client, a GOAWAY or a lost
/// connection: the client is gone.
fn h2_failure(e: &h2::Error) -> ClientError {
    if e.is_reset() && !e.is_remote() {
        ClientError::BodyMalformed
    } else {
        ClientError::BodyReset
    }
}

/// What became of a body streamed upstream, shared between the [`RequestBody`] (which the
/// upstream connection's task polls) and the driver and [`super::logging::CapturedBody`]
/// (which decide the answer and the record). One byte, changed with plain atomic stores.
#[derive(Debug, Default)]
pub struct BodyWatch(AtomicU8);

const READING: u8 = 0;
const WAITING: u8 = 1;
const ENDED: u8 = 2;
const REPORTED: u8 = 3;
const FAILED: u8 = 16;

impl BodyWatch {
    fn set(&self, state: u8) {
        // A failure stays until it is taken.
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                (old < FAILED && old != REPORTED).then_some(state)
            });
    }

    /// Records that the client failed: the first failure stays until taken.
    fn fail(&self, kind: ClientError) {
        self.set(FAILED + kind as u8);
    }

    /// The client's failure, once: the first caller gets it, later ones `None`.
    pub fn take_failure(&self) -> Option<ClientError> {
        let old = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                (old >= FAILED).then_some(REPORTED)
            })
            .ok()?;
        ClientError::ALL.get(usize::from(old - FAILED)).copied()
    }

    /// Whether the body was, when last polled, waiting for bytes from the client (not for the
    /// upstream to take what was read): a deadline passing then is the client's slowness.
    pub fn waiting_on_client(&self) -> bool {
        self.0.load(Ordering::Acquire) == WAITING
    }
}

/// Reads a client's request body: at most `limit` bytes, each wait for the next frame at most
/// `timeout` long. Each failure is a [`ClientError`]; the rest of an HTTP/1.x body cut off for
/// its size is read and thrown away ([`linger`]); an HTTP/2 stream is reset when dropped.
pub struct ClientReader {
    inner: Option<ClientBody>,
    remaining: u64,
    timeout: Duration,
    /// Armed when a read finds nothing ready, disarmed when a frame comes; boxed and made on
    /// the first wait only.
    deadline: Option<Pin<Box<Sleep>>>,
    armed: bool,
    watch: Option<Arc<BodyWatch>>,
}

/// A reader dropped with an HTTP/1.x body left unread (the request was answered without it:
/// 502, 503, or an upstream that answered early) lingers on it, so that the client gets the
/// answer rather than a reset. A body that failed was taken by `ClientReader::fail`.
impl Drop for ClientReader {
    fn drop(&mut self) {
        if let Some(ClientBody::H1(rest)) = self.inner.take() {
            linger(rest);
        }
    }
}

impl ClientReader {
    /// Reads `inner`, at most `limit` bytes, with `timeout` as the longest wait for a byte.
    pub fn new(inner: ClientBody, limit: u64, timeout: Duration) -> ClientReader {
        ClientReader {
            inner: Some(inner),
            remaining: limit,
            timeout,
            deadline: None,
            armed: false,
            watch: None,
        }
    }

    /// Whether nothing is left to read.
    pub fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }

    /// Reports what becomes of the body to `watch` from now on.
    fn watch(&mut self) -> Arc<BodyWatch> {
        self.watch.get_or_insert_with(Default::default).clone()
    }

    fn note(&self, state: u8) {
        if let Some(w) = &self.watch {
            w.set(state);
        }
    }

    fn fail(&mut self, kind: ClientError) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        if let Some(ClientBody::H1(rest)) = self.inner.take()
            && kind == ClientError::BodyTooLarge
        {
            linger(rest);
        }
        if let Some(w) = &self.watch {
            w.fail(kind);
        }
        Poll::Ready(Some(Err(kind.into())))
    }

    /// The next frame, `None` at the end.
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.armed = false;
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > self.remaining {
                        return self.fail(ClientError::BodyTooLarge);
                    }
                    self.remaining -= len;
                }
                self.note(READING);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => self.fail(e.kind),
            Poll::Ready(None) => {
                self.inner = None;
                self.note(ENDED);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if !self.armed {
                    self.armed = true;
                    let at = Instant::now() + self.timeout;
                    match &mut self.deadline {
                        Some(d) => d.as_mut().reset(at),
                        None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                }
                if let Some(d) = &mut self.deadline
                    && d.as_mut().poll(cx).is_ready()
                {
                    return self.fail(ClientError::BodyTimeout);
                }
                self.note(WAITING);
                Poll::Pending
            }
        }
    }
}

/// A small request body read whole, or the start of a larger one and the reader of the rest.
pub enum Prefetched {
    /// The whole body: its bytes, and its trailers if it had any.
    Whole(Bytes, Option<HeaderMap>),
    /// More than the buffer holds: what was read, and the rest.
    Partial(Bytes, ClientReader),
}

/// Reads a request body into memory, up to `buffer` bytes (never to disk), before any
/// upstream connection is taken: a slow client then holds nothing upstream. A body announced
/// larger than `buffer` (`length`) is not read at all (`Partial` with nothing read); one that
/// turns out larger stops being read at the first frame past `buffer`.
pub async fn read_small(
    mut reader: ClientReader,
    length: Option<u64>,
    buffer: u64,
) -> Result<Prefetched, ClientBodyError> {
    if length.is_some_and(|len| len > buffer) || buffer == 0 {
        return Ok(Prefetched::Partial(Bytes::new(), reader));
    }
    // The common case, a body in one frame, is kept as it came: no copy.
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut read = 0u64;
    let mut trailers = None;
    while let Some(frame) = poll_fn(|cx| reader.poll_next(cx)).await {
        let frame = match frame?.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
                continue;
            }
        };
        if frame.is_empty() {
            continue;
        }
        read += frame.len() as u64;
        match first.take() {
            None if joined.is_empty() => first = Some(frame),
            prev => {
                if let Some(prev) = prev {
                    joined.extend_from_slice(&prev);
                }
                joined.extend_from_slice(&frame);
            }
        }
        if read > buffer {
            let start = first.take().unwrap_or_else(|| joined.split().freeze());
            return Ok(Prefetched::Partial(start, reader));
        }
    }
    let whole = first.unwrap_or_else(|| joined.freeze());
    Ok(Prefetched::Whole(whole, trailers))
}

/// A client's request body on its way upstream: bytes already read (all of a small body, or
/// the start of a large one), then the rest streamed from the client, then trailers.
pub struct RequestBody {
    start: Option<Bytes>,
    trailers: Option<HeaderMap>,
    rest: Option<ClientReader>,
}

impl RequestBody {
    /// A body read whole: sent with a known length.
    pub fn whole(data: Bytes, trailers: Option<HeaderMap>) -> RequestBody {
        RequestBody {
            start: Some(data).filter(|d| !d.is_empty()),
            trailers,
            rest: None,
        }
    }

    /// `start`, then the rest read by `rest`, whose failures are reported to the returned
    /// [`BodyWatch`].
    pub fn streamed(start: Bytes, mut rest: ClientReader) -> (RequestBody, Arc<BodyWatch>) {
        let watch = rest.watch();
        let body = RequestBody {
            start: Some(start).filter(|d| !d.is_empty()),
            trailers: None,
            rest: Some(rest),
        };
        (body, watch)
    }

    /// A body with nothing in it.
    pub fn empty() -> RequestBody {
        RequestBody {
            start: None,
            trailers: None,
            rest: None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        if let Some(start) = this.start.take() {
            return Poll::Ready(Some(Ok(Frame::data(start))));
        }
        if let Some(rest) = this.rest.as_mut() {
            return rest.poll_next(cx);
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.start.is_none()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(ClientReader::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let start = self.start.as_ref().map_or(0, |s| s.len() as u64);
        match &self.rest {
            // Trailers go only with chunked framing: no exact length for hyper to send.
            None if self.trailers.is_none() => SizeHint::with_exact(start),
            None => {
                let mut hint = SizeHint::new();
                hint.set_lower(start);
                hint
            }
            Some(rest) => {
                let hint = rest.size_hint();
                let mut sum = SizeHint::new();
                sum.set_lower(hint.lower().saturating_add(start));
                if let Some(upper) = hint.upper() {
                    sum.set_upper(upper.saturating_add(start));
                }
                sum
            }
        }
    }
}

/// A response body: the upstream's, streamed, or a short one the proxy wrote itself.
pub enum ResponseBody {
    /// Streamed from the upstream.
    Upstream {
        /// The upstream's body; `None` once handed to [`Lease::drain`].
        body: Option<Incoming>,
        /// Its connection, back to the pool once the body has been read to the end (or, if
        /// the client leaves first, drained: [`Lease::drain`]).
        lease: Option<Lease>,
    },
    /// Written by the proxy (its own answers: errors, refusals).
    Local {
        /// The bytes, taken when sent.
        body: Option<Bytes>,
    },
}

impl ResponseBody {
    /// The upstream's body, with the lease on its connection.
    pub fn upstream(body: Incoming, lease: Option<Lease>) -> ResponseBody {
        ResponseBody::Upstream {
            body: Some(body),
            lease,
        }
    }

    /// A body the proxy wrote itself.
    pub fn local(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody::Local {
            body: Some(bytes.into()),
        }
    }

    /// Empties a body the proxy wrote itself, for the answer to a HEAD request, which has
    /// none (RFC 9110 §9.3.2). HTTP/1.1 leaves it out on its own; HTTP/2 would send it, and
    /// the client would reset the stream (RFC 9113 §8.1.1).
    pub fn clear_local(&mut self) {
        if let ResponseBody::Local { body } = self {
            *body = None;
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let ResponseBody::Upstream { body, lease } = self
            && let Some(lease) = lease.take()
            && let Some(body) = body.take()
        {
            if body.is_end_stream() {
                lease.release();
            } else {
                // The client left before the end: the rest may be cheap to read.
                lease.drain(body);
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ResponseBody::Upstream { body, lease } => {
                let Some(body) = body else {
                    return Poll::Ready(None);
                };
                let res = Pin::new(&mut *body).poll_frame(cx);
                // The connection goes back as soon as the body is known to be over: with its
                // last frame when the length was known, or when a chunked body ends by ending.
                // Before the client has the last byte, so its next request finds it pooled.
                match &res {
                    Poll::Ready(None) => {}
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => {}
                    Poll::Ready(Some(Err(_))) => {
                        // A broken connection is closed, not drained.
                        *lease = None;
                        return res;
                    }
                    _ => return res,
                }
                if let Some(lease) = lease.take() {
                    lease.release();
                }
                res
            }
            ResponseBody::Local { body } => Poll::Ready(
                body.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { body, .. } => body.as_ref().is_none_or(|b| b.is_end_stream()),
            ResponseBody::Local { body } => body.as_ref().is_none_or(|b| b.is_empty()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { body, .. } => body
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint()),
            ResponseBody::Local { body } => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_tells_each_failure_once_and_keeps_the_first() {
        for kind in ClientError::ALL {
            let w = BodyWatch::default();
            assert!(!w.waiting_on_client());
            w.set(WAITING);
            assert!(w.waiting_on_client(), "{kind:?}");
            w.fail(kind);
            w.fail(ClientError::BodyReset);
            w.set(READING);
            assert!(!w.waiting_on_client(), "{kind:?}");
            assert_eq!(w.take_failure(), Some(kind));
            assert_eq!(w.take_failure(), None, "{kind:?} told twice");
            w.fail(kind);
            assert_eq!(w.take_failure(), None, "{kind:?} after it was told");
        }
        let ended = BodyWatch::default();
        ended.set(ENDED);
        assert_eq!(ended.take_failure(), None);
    }
}

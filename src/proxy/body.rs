//! The body types of the forwarding path: what goes upstream and what goes back to the client.
//!
//! Both stream: nothing here buffers a whole body. The request body carries the size limit
//! (`server.max_body_bytes`); going over it fails the stream with [`BodyTooLarge`], which the
//! handler turns into a 413. The response body is wrapped in [`CapturedBody`], which records
//! the request when it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::upstream::Lease;
use crate::privacy::capture::Pending;
use crate::privacy::observation::Observation;
use crate::server::h2::RecvBody;

/// The request body grew past `server.max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than the configured limit")]
pub struct BodyTooLarge;

/// How long, at most, [`linger`] reads a body nobody wants.
const LINGER: Duration = Duration::from_secs(5);
/// How much, at most, [`linger`] reads of a body nobody wants.
const LINGER_BYTES: u64 = 16 << 20;

/// Reads and throws away what is left of an HTTP/1.x request body the proxy answered without
/// reading (a 413 or 429), for at most 5 s and 16 MiB, in a task of its own.
///
/// Closing a TCP connection with unread data in it makes the kernel send a reset, and a
/// client still sending its body then sees the reset instead of the answer waiting for it.
/// This is nginx's "lingering close". HTTP/2 needs none of it: the stream is reset, not the
/// connection.
pub fn linger(mut body: Incoming) {
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
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

/// A client's request body as its connection delivers it.
pub enum ClientBody {
    /// HTTP/1.x, read by hyper's server.
    H1(Incoming),
    /// HTTP/2, read by [`crate::server::h2`].
    H2(RecvBody),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // Both kinds are `Unpin`.
        let res = match self.get_mut() {
            ClientBody::H1(b) => std::task::ready!(Pin::new(b).poll_frame(cx))
                .map(|r| r.map_err(|e| Box::new(e) as Self::Error)),
            ClientBody::H2(b) => std::task::ready!(Pin::new(b).poll_frame(cx))
                .map(|r| r.map_err(|e| Box::new(e) as Self::Error)),
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

/// A client's request body on its way upstream, cut off at a byte limit.
pub struct RequestBody {
    inner: Option<ClientBody>,
    remaining: u64,
}

impl RequestBody {
    /// Streams `inner`, failing once more than `limit` bytes have passed. The rest of an
    /// HTTP/1.x body cut off is read and thrown away ([`linger`]); an HTTP/2 stream is reset
    /// when its body is dropped.
    pub fn new(inner: ClientBody, limit: u64) -> RequestBody {
        RequestBody {
            inner: Some(inner),
            remaining: limit,
        }
    }

    /// A body with nothing in it.
    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            remaining: 0,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match std::task::ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        if let Some(ClientBody::H1(rest)) = this.inner.take() {
                            linger(rest);
                        }
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
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
    /// Written by the proxy (errors, admin pages).
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

/// Where finished observations go: the access log and the metrics.
pub struct Sinks {
    /// The access log writer.
    pub log: crate::accesslog::AccessLog,
    /// The metrics registry.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Sinks {
    /// The logging phase: one observation to every sink.
    pub fn observe(&self, obs: Observation) {
        self.metrics.observe(&obs);
        self.log.record(obs);
    }
}

struct Capturing {
    pending: Pending,
    status: u16,
    limited: bool,
    sinks: Arc<Sinks>,
}

/// A response body that counts the bytes sent and, when it is dropped (the response ended, or
/// the client went away), hands exactly one [`Observation`] to the sinks.
pub struct CapturedBody {
    inner: ResponseBody,
    bytes: u64,
    capturing: Option<Capturing>,
}

impl CapturedBody {
    /// Wraps `inner`, recording `pending` (if any: `None` records nothing) with `status` when
    /// the body is dropped.
    pub fn new(
        inner: ResponseBody,
        pending: Option<Pending>,
        status: u16,
        limited: bool,
        sinks: Arc<Sinks>,
    ) -> Self {
        CapturedBody {
            inner,
            bytes: 0,
            capturing: pending.map(|pending| Capturing {
                pending,
                status,
                limited,
                sinks,
            }),
        }
    }
}

impl Drop for CapturedBody {
    fn drop(&mut self) {
        if let Some(c) = self.capturing.take() {
            c.sinks
                .observe(c.pending.finish(c.status, self.bytes, c.limited));
        }
    }
}

impl Body for CapturedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &res
            && let Some(data) = frame.data_ref()
        {
            this.bytes += data.len() as u64;
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

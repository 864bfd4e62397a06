//! The logging phase: the one record of each request, and where it goes.
//!
//! The driver ([`super::Proxy::handle`]) opens a request's record with the capture
//! ([`crate::privacy::capture::Capture::begin`]) and holds it in an [`Unanswered`] guard while
//! the request is on its way. Once the answer exists, the guard is turned into a
//! [`CapturedBody`] around the response body ([`Unanswered::answered`]): the record is finished
//! when that body is dropped (the response ended, or the client went away), with the status
//! and the bytes actually sent. Dropped before the answer exists (the client closed the
//! connection or reset its stream), the guard finishes the record itself with
//! [`CLIENT_CLOSED_REQUEST`]. Either way each request has exactly one record, handed to the
//! [`Sinks`]: the access log and the metrics.
//!
//! Never here: a request value of any kind. What reaches the sinks is an
//! [`Observation`], the capture's allowed fields only.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};

use super::body::{BodyWatch, ResponseBody};
use crate::accesslog::AccessLog;
use crate::metrics::{Metrics, UpstreamError};
use crate::privacy::capture::Pending;
use crate::privacy::observation::Observation;

pub use crate::metrics::CLIENT_CLOSED_REQUEST;

/// Where finished observations go: the access log and the metrics.
pub struct Sinks {
    /// The access log writer.
    pub log: AccessLog,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
}

impl Sinks {
    /// One observation to every sink.
    pub fn observe(&self, obs: Observation) {
        self.metrics.observe(&obs);
        self.log.record(obs);
    }
}

/// A request's record until its answer exists: dropped before that (the client closed the
/// connection or reset the stream while the request was on its way), it writes the record with
/// [`CLIENT_CLOSED_REQUEST`], so that every request still has exactly one.
pub struct Unanswered<'a> {
    pending: Option<Pending>,
    sinks: &'a Arc<Sinks>,
}

impl<'a> Unanswered<'a> {
    /// Holds `pending` until the request is answered; its record goes to `sinks`.
    pub fn new(pending: Pending, sinks: &'a Arc<Sinks>) -> Unanswered<'a> {
        Unanswered {
            pending: Some(pending),
            sinks,
        }
    }

    /// The answer exists: the record moves into the response body, which finishes it when it
    /// is dropped ([`CapturedBody`]), with the answer's status (or that of a client body
    /// failure `watch` reports by then) and the bytes sent. `limited`: refused by the rate
    /// limiter.
    pub fn answered(
        mut self,
        resp: Response<ResponseBody>,
        limited: bool,
        watch: Option<Arc<BodyWatch>>,
    ) -> Response<CapturedBody> {
        let status = resp.status().as_u16();
        let pending = self.pending.take();
        let sinks = self.sinks.clone();
        resp.map(|body| CapturedBody::new(body, pending, status, limited, sinks, watch))
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            self.sinks
                .observe(pending.finish(CLIENT_CLOSED_REQUEST, 0, false));
        }
    }
}

struct Capturing {
    pending: Pending,
    status: u16,
    limited: bool,
    sinks: Arc<Sinks>,
    /// The streamed request body's fate: a client failure after the answer began is recorded
    /// with its own status.
    watch: Option<Arc<BodyWatch>>,
}

/// A response body that counts the bytes sent and, when it is dropped (the response ended, or
/// the client went away), hands exactly one [`Observation`] to the sinks.
pub struct CapturedBody {
    inner: ResponseBody,
    bytes: u64,
    capturing: Option<Capturing>,
    /// The upstream's body failed (cut short, bad framing): an upstream error once the
    /// request is recorded, unless the client's own body failure broke the exchange first.
    upstream_failed: bool,
}

impl CapturedBody {
    /// Wraps `inner`, recording `pending` (if any: `None` records nothing) with `status` when
    /// the body is dropped, or with the status of a client body failure `watch` reports by
    /// then (the request body failed while the response was on its way: the upstream exchange
    /// was cut off, and the client is to blame).
    pub fn new(
        inner: ResponseBody,
        pending: Option<Pending>,
        status: u16,
        limited: bool,
        sinks: Arc<Sinks>,
        watch: Option<Arc<BodyWatch>>,
    ) -> Self {
        CapturedBody {
            inner,
            bytes: 0,
            upstream_failed: false,
            capturing: pending.map(|pending| Capturing {
                pending,
                status,
                limited,
                sinks,
                watch,
            }),
        }
    }
}

impl Drop for CapturedBody {
    fn drop(&mut self) {
        if let Some(c) = self.capturing.take() {
            let mut status = c.status;
            if let Some(kind) = c.watch.as_deref().and_then(BodyWatch::take_failure) {
                c.sinks.metrics.client_error(kind);
                status = kind.status();
            } else if self.upstream_failed {
                // The status and bytes sent stay as they went out; the exchange broke
                // upstream.
                c.sinks.metrics.upstream_error(UpstreamError::Protocol);
            }
            c.sinks
                .observe(c.pending.finish(status, self.bytes, c.limited));
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
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => this.upstream_failed = true,
            _ => {}
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

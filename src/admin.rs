//! The admin listener: `GET /healthz`, `/readyz` and `/metrics`, cleartext HTTP/1.1.
//!
//! Meant for loopback or a private network (the default is `127.0.0.1:9100`). It serves only
//! aggregates and health, never a per-request value.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::body::ResponseBody;
use crate::server::Health;

/// Serves admin requests until shutdown.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let tcp = tokio::select! {
            _ = shutdown.changed() => return,
            res = listener.accept() => match res {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let resp = route(&req, &health);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn route(req: &Request<Incoming>, health: &Health) -> Response<ResponseBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if !health.listening.load(Ordering::Acquire) {
                text(StatusCode::SERVICE_UNAVAILABLE, "not listening\n")
            } else if !health.proxy.ready() {
                text(StatusCode::SERVICE_UNAVAILABLE, "no upstream available\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        "/metrics" => {
            let body = health.proxy.sinks.metrics.render();
            let mut resp = Response::new(ResponseBody::local(Bytes::from(body)));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::Metrics::content_type()),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    crate::proxy::local(status, body)
}

//! The admin listener: `GET /healthz`, `/readyz` and `/metrics`, cleartext HTTP/1.1.
//!
//! Meant for loopback or a private network (the default is `127.0.0.1:9100`). It serves only
//! aggregates and health, never a per-request value.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::proxy::body::ResponseBody;
use crate::server::Health;

/// Serves admin requests until its task is dropped: also while draining, so that `/readyz`
/// answers 503 `not ready: draining` then.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let health = health.clone();
                async move {
                    let resp = if is_readyz(&req) {
                        readyz(&health).await
                    } else {
                        route(&req, &health)
                    };
                    Ok::<_, Infallible>(resp)
                }
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

/// `GET` or `HEAD /readyz`, answered by [`readyz`] (it may wait for an upstream probe).
fn is_readyz(req: &Request<Incoming>) -> bool {
    (req.method() == Method::GET || req.method() == Method::HEAD) && req.uri().path() == "/readyz"
}

/// 200 `ready` when listening and an upstream server accepts a TCP connection; else 503
/// `not ready: <reason>` (`draining`, or each server's address and connect failure: config
/// and the operating system's words, never a request's).
async fn readyz(health: &Health) -> Response<ResponseBody> {
    match health.ready().await {
        Ok(()) => text(StatusCode::OK, "ready\n"),
        Err(why) => {
            let mut resp = Response::new(ResponseBody::local(Bytes::from(format!(
                "not ready: {why}\n"
            ))));
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    crate::proxy::local(status, body)
}

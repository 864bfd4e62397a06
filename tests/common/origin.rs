//! A real origin server on loopback for the balancing and health-check tests: answers every
//! request with its configured status after its configured delay, counts client requests and
//! health checks (told apart by the checker's User-Agent) apart, and can be stopped (listener
//! and every open connection closed) and started again on the same port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// The User-Agent the proxy's health checks send.
pub const CHECKER: &str = "webprom-edge-health-check";

/// What an origin has been asked.
#[derive(Default)]
pub struct Seen {
    /// Client requests (anything but a health check).
    pub requests: AtomicUsize,
    /// Health checks.
    pub checks: AtomicUsize,
    /// The last health check's path and head.
    pub last_check: Mutex<Option<(String, HeaderMap)>>,
}

pub struct Origin {
    pub addr: SocketAddr,
    /// The status every request gets.
    pub status: Arc<AtomicU16>,
    /// Milliseconds every answer waits.
    pub delay_ms: Arc<AtomicU64>,
    pub seen: Arc<Seen>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Origin {
    /// An origin answering 200 at once, on 127.0.0.1 and a free port.
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = Origin {
            addr: listener.local_addr().unwrap(),
            status: Arc::new(AtomicU16::new(200)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            seen: Arc::default(),
            tasks: Arc::default(),
        };
        origin.serve(listener);
        origin
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    pub fn checks(&self) -> usize {
        self.seen.checks.load(Ordering::SeqCst)
    }

    /// Closes the listener and every open connection: the port refuses connections.
    pub fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let (status, delay, seen, tasks) = (
            self.status.clone(),
            self.delay_ms.clone(),
            self.seen.clone(),
            self.tasks.clone(),
        );
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (status, delay, seen) = (status.clone(), delay.clone(), seen.clone());
                let conn = tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (status, delay, seen) = (status.clone(), delay.clone(), seen.clone());
                        async move {
                            let ua = req.headers().get("user-agent");
                            if ua.is_some_and(|v| v == CHECKER) {
                                seen.checks.fetch_add(1, Ordering::SeqCst);
                                *seen.last_check.lock().unwrap() =
                                    Some((req.uri().to_string(), req.headers().clone()));
                            } else {
                                seen.requests.fetch_add(1, Ordering::SeqCst);
                            }
                            let ms = delay.load(Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            let mut resp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
                            *resp.status_mut() =
                                http::StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
                tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `config` with `servers` (TOML array text) as `upstream.servers` and `extra` (TOML text, e.g.
/// `[upstream.health_check]` and its keys) appended.
pub fn with_servers(config: &str, servers: &str, extra: &str) -> String {
    let config = super::set(config, "upstream", "servers", servers);
    format!("{config}\n{extra}\n")
}

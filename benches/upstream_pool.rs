//! The price of the connection cap and of keeping abandoned exchanges: one request through
//! `proxy::upstream` (pooled connection taken, request sent, 1 KiB response read, connection
//! given back) against an upstream on loopback in the same thread, and the two ways an
//! exchange can outlive its client: its future boxed from the start (what the pool does) or
//! the exchange run in a task of its own; and the choice of a server by each
//! `upstream.balance`. Run with
//! `cargo bench --bench upstream_pool`.

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use webprom_edge::config;
use webprom_edge::metrics::Metrics;
use webprom_edge::proxy::body::RequestBody;
use webprom_edge::proxy::upstream::Upstreams;

// The proxy's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn send(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addr = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = service_fn(|_req| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(vec![b'x'; 1024]))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        addr
    });
    let cfg = config::Upstream {
        servers: vec![format!("http://{addr}").parse().expect("url")],
        ..Default::default()
    };
    let metrics = Metrics::new(&[]);
    let up = Upstreams::new(&cfg, metrics.upstream_pool());
    c.bench_function("one pooled GET with a 1 KiB response", |b| {
        b.iter(|| {
            rt.block_on(async {
                let pick = up.pick(None);
                let req = Request::get("/")
                    .header("host", "bench")
                    .body(RequestBody::empty())
                    .expect("request");
                let (resp, lease) = up.send(&pick, req).await.expect("exchange");
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                if let Some(lease) = lease {
                    lease.release();
                }
                black_box(body.len())
            })
        })
    });
}

/// A future the size of hyper's exchange future (a request and a channel), ready at once.
async fn exchange(req: Request<Bytes>) -> usize {
    tokio::task::yield_now().await;
    req.body().len()
}

fn strategies(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("an exchange that may outlive its client");
    group.bench_function("pinned on the stack (cannot outlive it)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let fut = std::pin::pin!(exchange(Request::new(Bytes::from_static(b"x"))));
                black_box(fut.await)
            })
        })
    });
    group.bench_function("boxed in place", |b| {
        b.iter(|| {
            rt.block_on(async {
                let fut: std::pin::Pin<Box<dyn Future<Output = usize> + Send>> =
                    Box::pin(exchange(Request::new(Bytes::from_static(b"x"))));
                black_box(fut.await)
            })
        })
    });
    group.bench_function("run in a task of its own", |b| {
        b.iter(|| {
            rt.block_on(async {
                let task = tokio::spawn(exchange(Request::new(Bytes::from_static(b"x"))));
                black_box(task.await.expect("task"))
            })
        })
    });
    group.finish();
}

/// The choice of a server by each `upstream.balance`, among three servers in rotation (no
/// connection is opened).
fn balancing(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick one of three servers");
    for (name, balance) in [
        ("round_robin", config::Balance::RoundRobin),
        ("least_request", config::Balance::LeastRequest),
        ("weighted", config::Balance::Weighted),
    ] {
        let cfg = config::Upstream {
            servers: (1..=3)
                .map(|i| format!("http://127.0.0.{i}:8080").parse().expect("url"))
                .collect(),
            balance,
            ..Default::default()
        };
        let up = Upstreams::new(&cfg, Metrics::new(&[]).upstream_pool());
        group.bench_function(name, |b| b.iter(|| black_box(up.pick(None))));
    }
    group.finish();
}

criterion_group!(benches, send, strategies, balancing);
criterion_main!(benches);

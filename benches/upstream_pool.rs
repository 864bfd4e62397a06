//! The price of the connection cap and of keeping abandoned exchanges: one request through
//! `proxy::upstream` (pooled connection taken, request sent, 1 KiB response read, connection
//! given back) against an upstream on loopback in the same thread, and the two ways an
//! exchange can outlive its client: its future boxed from the start (what the pool does) or
//! the exchange run in a task of its own; the choice of a server by each `upstream.balance`;
//! and the same GET to an `https://` upstream (rustls both sides, a certificate from a CA made
//! here): on a pooled connection, and on a new connection each time (TCP connect and TLS
//! handshake, resumed from the session cache, beside a new cleartext connection). Run with
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
        b.iter(|| rt.block_on(async { black_box(get(&up, true).await) }))
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

/// A 1 KiB answer to every request on `tcp`, over TLS when `tls` is given.
async fn serve(tcp: tokio::net::TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
    let service = service_fn(|_req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(vec![b'x'; 1024]))))
    });
    let builder = hyper::server::conn::http1::Builder::new();
    match tls {
        Some(acceptor) => {
            if let Ok(tls) = acceptor.accept(tcp).await {
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            }
        }
        None => {
            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
        }
    }
}

/// One GET through `up`; the connection is given back when `keep`, else closed.
async fn get(up: &Upstreams, keep: bool) -> usize {
    let pick = up.pick(None);
    let req = Request::get("/")
        .header("host", "bench")
        .body(RequestBody::empty())
        .expect("request");
    let (resp, lease) = up.send(&pick, req).await.expect("exchange");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    if let Some(lease) = lease
        && keep
    {
        lease.release();
    }
    body.len()
}

fn send_tls(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // A CA and a certificate for localhost, made here.
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("leaf");
    let dir = tempfile::tempdir().expect("temp dir");
    let roots = dir.path().join("ca.pem");
    std::fs::write(&roots, ca.pem()).expect("write roots");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
    let (tls_addr, plain_addr) = rt.block_on(async {
        let tls = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let plain = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addrs = (
            tls.local_addr().expect("addr"),
            plain.local_addr().expect("addr"),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = tls.accept().await {
                tokio::spawn(serve(tcp, Some(acceptor.clone())));
            }
        });
        tokio::spawn(async move {
            while let Ok((tcp, _)) = plain.accept().await {
                tokio::spawn(serve(tcp, None));
            }
        });
        addrs
    });
    let pool = |server: String| {
        let cfg = config::Upstream {
            servers: vec![server.parse().expect("url")],
            ca_roots: Some(roots.clone()),
            ..Default::default()
        };
        Upstreams::new(&cfg, Metrics::new(&[]).upstream_pool())
    };
    let https = pool(format!("https://localhost:{}", tls_addr.port()));
    let http = pool(format!("http://{plain_addr}"));
    c.bench_function("one pooled GET over TLS with a 1 KiB response", |b| {
        b.iter(|| rt.block_on(async { black_box(get(&https, true).await) }))
    });
    let mut group = c.benchmark_group("one GET on a new upstream connection");
    group.bench_function("http:// (TCP connect)", |b| {
        b.iter(|| rt.block_on(async { black_box(get(&http, false).await) }))
    });
    group.bench_function("https:// (TCP connect, TLS 1.3 handshake resumed)", |b| {
        b.iter(|| rt.block_on(async { black_box(get(&https, false).await) }))
    });
    group.finish();
}

criterion_group!(benches, send, send_tls, strategies, balancing);
criterion_main!(benches);

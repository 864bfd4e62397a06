//! The price of being able to retry: the copy of a request head that
//! `proxy::upstream` keeps while an idempotent, body-less request goes out on a reused
//! upstream connection (and drops when the response head arrives). Run with
//! `cargo bench --bench upstream_retry`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::header::{HOST, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use webprom_edge::client_ip::X_FORWARDED_FOR;
use webprom_edge::proxy::body::RequestBody;
use webprom_edge::proxy::headers::{X_FORWARDED_HOST, X_FORWARDED_PROTO, ip_value};
use webprom_edge::proxy::upstream::copy_head;

// The proxy's allocator: the copy is mostly allocation and reference counting.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A desktop browser's navigation request, as received.
const BROWSER: &[(&str, &str)] = &[
    ("host", "shop.example.com"),
    (
        "user-agent",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    ),
    (
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    ),
    ("accept-language", "sq-AL,sq;q=0.9,en-US;q=0.8,en;q=0.7"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("referer", "https://shop.example.com/catalogue?page=2"),
    ("cookie", "session=3f8a9c0d1e2f; consent=1; cart=17"),
    (
        "sec-ch-ua",
        "\"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"",
    ),
    ("sec-ch-ua-mobile", "?0"),
    ("sec-ch-ua-platform", "\"Windows\""),
    ("sec-fetch-site", "same-origin"),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-dest", "document"),
    ("upgrade-insecure-requests", "1"),
];

/// h2load's request: `:authority`, `user-agent`, `accept-encoding`... as few as it gets.
const LOAD_TOOL: &[(&str, &str)] = &[
    ("host", "localhost"),
    ("user-agent", "h2load nghttp2/1.64.0"),
    ("accept", "*/*"),
];

/// The upstream request as the proxy hands it to the pool, built as hyper's HTTP/1.1 parser and
/// the forwarding phase build it: names from bytes (a custom name is copied into a buffer of
/// its own), values as slices of one shared read buffer, the forwarding headers the proxy's own.
fn upstream_request(received: &[(&str, &str)]) -> Request<RequestBody> {
    let mut raw = String::new();
    for (_, v) in received {
        raw.push_str(v);
    }
    let shared = Bytes::from(raw.into_bytes());
    // Its first clone turns it into the shared representation a split read buffer has.
    drop(shared.clone());
    let mut req = Request::new(RequestBody::empty());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = Uri::from_static("/catalogue/item/4711?colour=blue");
    *req.version_mut() = Version::HTTP_11;
    let mut at = 0;
    for (name, value) in received {
        let v = shared.slice(at..at + value.len());
        at += value.len();
        let name = HeaderName::from_bytes(name.as_bytes()).expect("valid name");
        let v = HeaderValue::from_maybe_shared(v).expect("valid value");
        req.headers_mut().append(name, v);
    }
    let h = req.headers_mut();
    let host = h[HOST].clone();
    h.insert(X_FORWARDED_HOST.clone(), host);
    h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
    h.insert(
        X_FORWARDED_FOR.clone(),
        ip_value(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7))),
    );
    req
}

/// What an eligible request pays: the copy made before sending, dropped once the response
/// head arrives. Not inlined, so that `valgrind --tool=callgrind` can count it per call.
#[inline(never)]
fn copy_and_drop(req: &Request<RequestBody>) {
    drop(black_box(copy_head(req)));
}

fn copy(c: &mut Criterion) {
    for (name, received) in [
        ("retry_copy_browser_head", BROWSER),
        ("retry_copy_load_tool_head", LOAD_TOOL),
    ] {
        // A new request each time, so that every value is cloned as the first time (the
        // proxy's own X-Forwarded-For is promoted to a shared buffer on its first clone).
        c.bench_function(name, |b| {
            b.iter_batched(
                || upstream_request(received),
                |req| {
                    copy_and_drop(&req);
                    req
                },
                BatchSize::SmallInput,
            )
        });
    }
}

criterion_group!(benches, copy);
criterion_main!(benches);

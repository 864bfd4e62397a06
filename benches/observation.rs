//! The whole capture of one request, as the proxy does it: derive the allowed facts
//! (`Capture::begin`: pseudonym, network, country, user agent, language, host, path), complete
//! them (`Pending::finish`) and encode the JSON line; and the cost of recording one request's
//! metrics. Run with `cargo bench --bench observation`.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use webprom_edge::client_ip::ClientAddr;
use webprom_edge::config::Config;
use webprom_edge::epoch::Epoch;
use webprom_edge::metrics::Metrics;
use webprom_edge::privacy::capture::{Capture, ClientMemo, EpochKey, open_geo};
use webprom_edge::privacy::keys::Key;

const UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

fn capture() -> Capture {
    let config = Config::default();
    let geo = open_geo(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/geo/country.mmdb"))
        .expect("the default country database");
    let key = EpochKey {
        epoch: Epoch::today(),
        key: Key::from_bytes([7; 32]),
    };
    Capture::new(&config, key, geo).expect("capture")
}

fn request(ua: &str) -> http::Request<()> {
    http::Request::get("https://localhost/click/12345/banner?campaign=7&token=abc")
        .header("host", "localhost")
        .header("user-agent", ua)
        .header("accept-language", "sq-AL,sq;q=0.9,en;q=0.8")
        .header("cookie", "session=abcdef")
        .body(())
        .expect("request")
}

fn observation(c: &mut Criterion) {
    let capture = capture();
    let client = ClientAddr::new("81.26.200.10".parse::<IpAddr>().expect("address"));
    let warm = request(UA);
    let mut line = Vec::with_capacity(512);
    // Every request on a new connection: nothing remembered of the client.
    c.bench_function("observation_warm_ua_cache", |b| {
        b.iter(|| {
            let memo = ClientMemo::default();
            let pending = capture.begin(
                black_box(client),
                black_box(&warm),
                Some("localhost"),
                &memo,
            );
            let obs = pending.finish(200, 1024, false);
            line.clear();
            obs.write_json(&mut line);
            black_box(line.len())
        })
    });

    // Every request on one connection: the pseudonym and country come from its memo.
    let memo = ClientMemo::default();
    c.bench_function("observation_warm_same_connection", |b| {
        b.iter(|| {
            let pending = capture.begin(
                black_box(client),
                black_box(&warm),
                Some("localhost"),
                &memo,
            );
            let obs = pending.finish(200, 1024, false);
            line.clear();
            obs.write_json(&mut line);
            black_box(line.len())
        })
    });

    // A new user agent every time (more of them than the cache holds): the uap-core regexes
    // run on each request.
    const COLD: usize = 200_000;
    let mut n = 0usize;
    let cold: Vec<http::Request<()>> = (0..COLD)
        .map(|i| request(&format!("{UA} Variant/{i}")))
        .collect();
    c.bench_function("observation_uncached_ua", |b| {
        b.iter(|| {
            n += 1;
            let pending = capture.begin(
                client,
                &cold[n % COLD],
                Some("localhost"),
                &ClientMemo::default(),
            );
            let obs = pending.finish(200, 1024, false);
            line.clear();
            obs.write_json(&mut line);
            black_box(line.len())
        })
    });

    let pending = capture.begin(client, &warm, Some("localhost"), &ClientMemo::default());
    let obs = pending.finish(200, 1024, false);
    c.bench_function("observation_encode_json", |b| {
        b.iter(|| {
            line.clear();
            black_box(&obs).write_json(&mut line);
            black_box(line.len())
        })
    });

    let metrics = Metrics::new(&["default".to_owned()]);
    c.bench_function("metrics_observe", |b| {
        b.iter(|| metrics.observe(black_box(&obs)))
    });
}

criterion_group!(benches, observation);
criterion_main!(benches);

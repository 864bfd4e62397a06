//! The per-request privacy work: pseudonym, truncation and country lookup.
//!
//! `cargo bench --bench pseudonym`; the country lookup runs against config/geo/country.mmdb
//! when it is present.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use webprom_edge::client_ip::ClientAddr;
use webprom_edge::privacy::geo::GeoDb;
use webprom_edge::privacy::keys::{Key, pseudonym};
use webprom_edge::privacy::net::truncate;

fn addrs() -> (ClientAddr, ClientAddr) {
    let v4: IpAddr = [203, 0, 113, 7].into();
    let v6: IpAddr = [0x2001, 0xdb8, 1, 2, 0, 0, 0, 5].into();
    (ClientAddr::new(v4), ClientAddr::new(v6))
}

fn bench(c: &mut Criterion) {
    let key = Key::from_bytes([7; 32]);
    let (v4, v6) = addrs();

    c.bench_function("pseudonym/v4", |b| {
        b.iter(|| pseudonym(black_box(&key), black_box(v4), 64))
    });
    c.bench_function("pseudonym/v6", |b| {
        b.iter(|| pseudonym(black_box(&key), black_box(v6), 64))
    });
    c.bench_function("truncate/v4", |b| {
        b.iter(|| truncate(black_box(v4), 24, 48))
    });
    c.bench_function("truncate/v6", |b| {
        b.iter(|| truncate(black_box(v6), 24, 48))
    });

    let db_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/geo/country.mmdb");
    match GeoDb::open(&db_path) {
        Ok(db) => {
            let hit_v4 = ClientAddr::new([8, 8, 8, 8].into());
            let hit_v6 = ClientAddr::new([0x2001, 0x4860, 0x4860, 0, 0, 0, 0, 0x8888].into());
            c.bench_function("geo_lookup/v4", |b| b.iter(|| db.lookup(black_box(hit_v4))));
            c.bench_function("geo_lookup/v6", |b| b.iter(|| db.lookup(black_box(hit_v6))));
            c.bench_function("geo_lookup/miss", |b| b.iter(|| db.lookup(black_box(v4))));
        }
        Err(e) => eprintln!("geo_lookup skipped: {e}"),
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

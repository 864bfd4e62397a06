//! The rate limiter's hot path: one `check` with a million clients already tracked, and the
//! memory a tracked client costs. Targets: under 150 ns a check, at most 100 bytes a client.
//!
//! Also prints this machine's main-memory latency (a dependent pointer chase over 64 MiB), the
//! floor under any check whose client's state is not in a CPU cache: "check, 1M clients
//! tracked" cycles through all million clients, so every check there is such a check.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use webprom_edge::client_ip::ClientAddr;
use webprom_edge::config::RateLimit;
use webprom_edge::ratelimit::RateLimiter;

const CLIENTS: u32 = 1_000_000;
/// 10.0.0.0 onwards: a million distinct IPv4 clients.
const BASE: u32 = 0x0a00_0000;

fn client(i: u32) -> ClientAddr {
    ClientAddr::new(IpAddr::V4(Ipv4Addr::from(BASE + i % CLIENTS)))
}

/// Resident set size in bytes, from `/proc/self/statm` (Linux only; 0 elsewhere).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Nanoseconds per step of a dependent random walk over 64 MiB: one cache miss to DRAM each.
fn dram_latency_ns() -> f64 {
    const LINES: usize = 64 << 20 >> 6;
    const STRIDE: usize = 8; // u64s per 64-byte line
    let mut order: Vec<usize> = (0..LINES).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..LINES).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let mut next = vec![0usize; LINES * STRIDE];
    for k in 0..LINES {
        next[order[k] * STRIDE] = order[(k + 1) % LINES] * STRIDE;
    }
    const STEPS: u32 = 4_000_000;
    let start = std::time::Instant::now();
    let mut at = order[0] * STRIDE;
    for _ in 0..STEPS {
        at = next[at];
    }
    black_box(at);
    start.elapsed().as_nanos() as f64 / f64::from(STEPS)
}

fn filled() -> RateLimiter {
    let limiter = RateLimiter::new(&RateLimit::default()).expect("enabled by default");
    for i in 0..CLIENTS {
        limiter.check(client(i), "/");
    }
    limiter
}

fn memory_per_client() {
    let limiter = RateLimiter::new(&RateLimit::default()).expect("enabled by default");
    let before = rss_bytes();
    for i in 0..CLIENTS {
        limiter.check(client(i), "/");
    }
    let after = rss_bytes();
    let tracked = limiter.tracked() as u64;
    eprintln!(
        "memory: {tracked} clients tracked, RSS +{} bytes, {:.1} bytes/client",
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / tracked.max(1) as f64
    );
    // Housekeeping walks every shard under its write lock: how long requests may wait.
    let start = std::time::Instant::now();
    limiter.housekeep();
    eprintln!(
        "housekeep over {tracked} clients: {:?}, {} still tracked",
        start.elapsed(),
        limiter.tracked()
    );
}

fn bench(c: &mut Criterion) {
    eprintln!(
        "main-memory latency (dependent loads over 64 MiB): {:.1} ns",
        dram_latency_ns()
    );
    memory_per_client();

    let limiter = filled();
    let mut i = 0u32;
    c.bench_function("check, 1M clients tracked", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(limiter.check(black_box(client(i)), black_box("/")))
        })
    });

    // Traffic has a hot set: the same 10,000 clients over and over, among the million.
    let mut j = 0u32;
    c.bench_function("check, 1M clients tracked, 10k active", |b| {
        b.iter(|| {
            j = j.wrapping_add(1);
            black_box(limiter.check(black_box(client(j % 10_000 * 100)), black_box("/")))
        })
    });
    drop(limiter);

    let one = RateLimiter::new(&RateLimit {
        requests_per_second: u32::MAX,
        burst: u32::MAX,
        ..RateLimit::default()
    })
    .expect("enabled");
    let ip = client(1);
    c.bench_function("check, 1 client tracked", |b| {
        b.iter(|| black_box(one.check(black_box(ip), black_box("/"))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

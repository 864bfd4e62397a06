//! The per-request parsers of the capture phase: user agent (uncached and warm cache), Client
//! Hints, Accept-Language and path; and compiling the user-agent rules at start. Run with `cargo bench --bench capture_parsers`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use webprom_edge::privacy::{lang::primary_language, path::normalize_path, ua::UaParser};

const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
];
const SEC_CH_UA: &[u8] = br#""Microsoft Edge";v="131", "Chromium";v="131", "Not_A Brand";v="24""#;
const PLATFORM: &[u8] = br#""Windows""#;

fn user_agent(c: &mut Criterion) {
    let uncached = UaParser::new(0).expect("built-in rules compile");
    let cached = UaParser::new(1024).expect("built-in rules compile");
    for ua in USER_AGENTS {
        cached.parse(Some(ua.as_bytes()), None, None);
    }
    let mut i = 0;
    c.bench_function("ua_parse_uncached", |b| {
        b.iter(|| {
            i = (i + 1) % USER_AGENTS.len();
            uncached.parse(
                black_box(Some(USER_AGENTS[i].as_bytes())),
                black_box(Some(SEC_CH_UA)),
                black_box(Some(PLATFORM)),
            )
        })
    });
    c.bench_function("ua_parse_cached_warm", |b| {
        b.iter(|| {
            i = (i + 1) % USER_AGENTS.len();
            cached.parse(
                black_box(Some(USER_AGENTS[i].as_bytes())),
                black_box(Some(SEC_CH_UA)),
                black_box(Some(PLATFORM)),
            )
        })
    });
}

/// The Client Hints alone (no User-Agent, so no rules and no cache): the RFC 8941 parsing of
/// `Sec-CH-UA` as one field line and as two lines (joined before parsing), and of
/// `Sec-CH-UA-Platform`.
fn client_hints(c: &mut Criterion) {
    let parser = UaParser::new(0).expect("built-in rules compile");
    let two_lines: [&[u8]; 2] = [
        br#""Microsoft Edge";v="131", "Chromium";v="131""#,
        br#""Not_A Brand";v="24""#,
    ];
    c.bench_function("client_hints/one_line", |b| {
        b.iter(|| parser.parse(None, black_box(Some(SEC_CH_UA)), black_box(Some(PLATFORM))))
    });
    c.bench_function("client_hints/two_lines", |b| {
        b.iter(|| parser.parse(None, black_box(two_lines), black_box(Some(PLATFORM))))
    });
}

fn user_agent_rules(c: &mut Criterion) {
    let mut group = c.benchmark_group("startup");
    group.sample_size(10);
    group.bench_function("ua_parser_new", |b| {
        b.iter(|| UaParser::new(black_box(1024)).expect("built-in rules compile"))
    });
    group.finish();
}

fn language(c: &mut Criterion) {
    c.bench_function("primary_language", |b| {
        b.iter(|| primary_language(black_box(b"sq-AL,sq;q=0.9,en-US;q=0.8,en;q=0.7,de;q=0.5")))
    });
}

fn path(c: &mut Criterion) {
    let paths = [
        "/v2/ads/banner",
        "/click/12345",
        "/u/alice@example.com/settings",
        "/a/550e8400-e29b-41d4-a716-446655440000/img/deadbeef12.png",
    ];
    let mut out = String::with_capacity(256);
    let mut i = 0;
    c.bench_function("normalize_path", |b| {
        b.iter(|| {
            i = (i + 1) % paths.len();
            out.clear();
            normalize_path(black_box(paths[i]), &mut out);
            black_box(out.len())
        })
    });
}

criterion_group!(
    benches,
    user_agent,
    client_hints,
    language,
    path,
    user_agent_rules
);
criterion_main!(benches);

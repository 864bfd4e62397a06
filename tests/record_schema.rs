//! The access-log record schema (`docs/access-record.schema.json`, JSON Schema draft 2020-12)
//! holds for real records: a proxy in front of a real upstream is sent varied requests over
//! HTTP/1.1 and HTTP/2 (refusals and a head the parser never handed on included), and every
//! line of its access log must validate, with formats checked. The schema must also reject each
//! kind of record the proxy must never write, so it can fail.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use webprom_edge::privacy::observation::FIELDS;

const SCHEMA_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/docs/access-record.schema.json"
);

fn schema() -> Value {
    let text = std::fs::read_to_string(SCHEMA_PATH).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A draft 2020-12 validator for the schema that also checks `format` (off by default there).
fn validator() -> jsonschema::Validator {
    let schema = schema();
    if let Err(e) = jsonschema::meta::validate(&schema) {
        panic!("the schema is not a valid draft 2020-12 schema: {e}");
    }
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

/// The validation errors of `record`, one per line; empty when it is valid.
fn errors(v: &jsonschema::Validator, record: &Value) -> Vec<String> {
    v.iter_errors(record)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn the_schema_names_exactly_the_fields_the_proxy_writes_in_its_order() {
    let schema = schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["additionalProperties"], false);
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(
        required, FIELDS,
        "`required` lists the fields in record order"
    );
    let mut properties: Vec<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut fields = FIELDS.to_vec();
    properties.sort_unstable();
    fields.sort_unstable();
    assert_eq!(properties, fields);
}

/// A request sent through the proxy: the protocol, the request, the status it must get.
struct Row {
    what: &'static str,
    proto: Proto,
    req: Request<ReqBody>,
    status: StatusCode,
}

fn row(
    what: &'static str,
    proto: Proto,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    status: StatusCode,
) -> Row {
    let mut req = Request::builder().method(method.clone()).uri(uri);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let body = if method == Method::POST {
        body(Bytes::from_static(b"a request body the log never holds"))
    } else {
        body(Bytes::new())
    };
    Row {
        what,
        proto,
        req: req.body(body).unwrap(),
        status,
    }
}

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";
const SAFARI_IOS: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

fn rows() -> Vec<Row> {
    use Proto::{H1, H2};
    let ok = StatusCode::OK;
    let big = "x".repeat(20_000);
    let sixteen_and_slash = format!("https://localhost{}/", "/seg".repeat(16));
    let twenty = format!("https://localhost{}", "/seg".repeat(20));
    vec![
        row(
            "HTTP/1.1, IPv4 client in the country database, Chrome, Albanian",
            H1,
            Method::GET,
            "https://localhost/",
            &[
                ("user-agent", CHROME),
                ("accept-language", "sq-AL,sq;q=0.9"),
                ("x-forwarded-for", "198.51.100.7"),
            ],
            ok,
        ),
        row(
            "HTTP/2, IPv6 client, Firefox, identifier and query in the path",
            H2,
            Method::GET,
            "https://localhost/click/12345?campaign=7",
            &[
                ("user-agent", FIREFOX),
                ("accept-language", "en-US,en;q=0.5"),
                ("x-forwarded-for", "2001:db8:1:2::5"),
            ],
            ok,
        ),
        row(
            "HTTP/2 POST with a body, iOS Safari, a country code outside ISO 3166-1",
            H2,
            Method::POST,
            "https://localhost/echo",
            &[
                ("user-agent", SAFARI_IOS),
                ("x-forwarded-for", "203.0.113.9"),
            ],
            ok,
        ),
        row(
            "HTTP/1.1 crawler, no language, loopback client with no country",
            H1,
            Method::GET,
            "https://localhost/robots.txt",
            &[("user-agent", GOOGLEBOT)],
            ok,
        ),
        row(
            "HTTP/2 extension method, no user agent, trailing slash",
            H2,
            Method::from_bytes(b"PURGE").unwrap(),
            "https://localhost/a/b/",
            &[],
            ok,
        ),
        row(
            "HTTP/1.1 host not in server.hosts",
            H1,
            Method::GET,
            "https://not-listed.example/x",
            &[],
            ok,
        ),
        row(
            "HTTP/2 path of 16 segments and a trailing slash",
            H2,
            Method::GET,
            &sixteen_and_slash,
            &[],
            ok,
        ),
        row(
            "HTTP/1.1 path of 20 segments, cut at 16",
            H1,
            Method::GET,
            &twenty,
            &[],
            ok,
        ),
        row(
            "HTTP/1.1 identifier-like segments: e-mail, percent-escape, UUID",
            H1,
            Method::GET,
            "https://localhost/u/me@example.org/%41/123e4567-e89b-12d3-a456-426614174000",
            &[],
            ok,
        ),
        row(
            "HTTP/1.1 head over max_header_bytes",
            H1,
            Method::GET,
            "https://localhost/",
            &[("x-big", &big)],
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ),
        row(
            "HTTP/2 head over max_header_bytes",
            H2,
            Method::GET,
            "https://localhost/",
            &[("x-big", &big)],
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ),
        row(
            "HTTP/2 first request of the limited route",
            H2,
            Method::GET,
            "https://localhost/limited",
            &[],
            ok,
        ),
        row(
            "HTTP/2 second request of the limited route",
            H2,
            Method::GET,
            "https://localhost/limited",
            &[],
            StatusCode::TOO_MANY_REQUESTS,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_the_proxy_writes_matches_the_published_schema() {
    let up = Upstream::start().await;
    let proxy = Proxy::start_with(
        |c| {
            let c = trusting(&c);
            format!(
                "{c}\n[[rate_limit.route]]\npath_prefix = \"/limited\"\nrequests_per_second = 1\nburst = 1\n"
            )
        },
        &up.url(),
    )
    .await;
    let client = proxy.client();
    let rows = rows();
    let mut expected = rows.len();
    for r in rows {
        let resp = client.request(r.proto, r.req).await;
        assert_eq!(resp.status, r.status, "{}", r.what);
    }

    // A head the HTTP/1.1 parser refuses before any handler sees it: recorded with what is known.
    let answer = client
        .raw_h1(b"GET / HTTP/1.1\r\nHost: localhost\r\nno colon in this line\r\n\r\n")
        .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    expected += 1;

    // Plain HTTP on the TLS port: a 400 in plain HTTP, recorded with no method, host or path.
    let mut tcp = tokio::net::TcpStream::connect(proxy.tls_addr)
        .await
        .unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    assert!(answer.starts_with(b"HTTP/1.1 400"), "{answer:?}");
    expected += 1;

    let lines = proxy.wait_records(expected).await;
    assert_eq!(lines.len(), expected, "one record per request:\n{lines:#?}");

    let v = validator();
    let mut failures = Vec::new();
    let mut records = Vec::new();
    for line in &lines {
        let record: Value = serde_json::from_str(line).unwrap();
        let errs = errors(&v, &record);
        if !errs.is_empty() {
            failures.push(format!("{line}\n  {}", errs.join("\n  ")));
        }
        // The fields come in the documented order (the order of the schema's `required`).
        let at: Vec<usize> = FIELDS
            .iter()
            .map(|f| line.find(&format!("\"{f}\":")).unwrap_or(usize::MAX))
            .collect();
        assert!(at.is_sorted(), "fields out of order: {line}");
        // `duration_ms` is written with exactly one decimal, which the schema cannot say of a
        // number (`multipleOf: 0.1` fails on binary fractions).
        let duration = line
            .split_once("\"duration_ms\":")
            .and_then(|(_, rest)| rest.split_once(','))
            .map_or("", |(d, _)| d);
        let (whole, tenths) = duration.split_once('.').unwrap_or((duration, ""));
        assert!(
            !whole.is_empty()
                && whole.bytes().all(|b| b.is_ascii_digit())
                && tenths.len() == 1
                && tenths.bytes().all(|b| b.is_ascii_digit()),
            "duration_ms not written with one decimal: {line}"
        );
        records.push(record);
    }
    assert!(
        failures.is_empty(),
        "records the schema rejects:\n{}",
        failures.join("\n")
    );

    // The records cover each shape the schema allows: nulls and values, both protocols and
    // address families, refusals, rate limiting and a head nobody read.
    let any = |what: &str, f: &dyn Fn(&Value) -> bool| {
        assert!(records.iter().any(f), "no record with {what}:\n{lines:#?}");
    };
    any("a country", &|r| r["country"] == "AL");
    any("no country", &|r| r["country"].is_null());
    any("a language", &|r| r["lang"] == "sq");
    any("no language", &|r| r["lang"].is_null());
    any("a host", &|r| r["host"] == "localhost");
    any("no host", &|r| r["host"].is_null());
    any("a browser version", &|r| r["browser_version"] == "131");
    any("no browser version", &|r| r["browser_version"].is_null());
    any("an IPv6 network", &|r| r["net"] == "2001:db8:1::/48");
    any("an IPv4 network", &|r| r["net"] == "198.51.100.0/24");
    any("a bot", &|r| r["bot"] == true);
    any("method OTHER", &|r| r["method"] == "OTHER");
    any("HTTP/2", &|r| r["proto"] == "HTTP/2");
    any("HTTP/1.1", &|r| r["proto"] == "HTTP/1.1");
    any("an HTTP/2 431", &|r| {
        r["status"] == 431 && r["proto"] == "HTTP/2"
    });
    any("an HTTP/1.1 431", &|r| {
        r["status"] == 431 && r["proto"] == "HTTP/1.1"
    });
    any("rate limiting", &|r| {
        r["limited"] == true && r["status"] == 429
    });
    any("an unread head", &|r| r["status"] == 400 && r["path"] == "");
    any("16 segments and a trailing slash", &|r| {
        r["path"] == format!("{}/", "/seg".repeat(16))
    });
    any("a path cut at 16 segments", &|r| {
        r["path"] == "/seg".repeat(16)
    });
}

/// A real record with one field changed (or added, or removed), which the schema must reject.
#[test]
fn the_schema_rejects_each_kind_of_record_the_proxy_must_never_write() {
    let good = json!({
        "ts": "2026-11-25T14:03:07Z", "epoch": "2026-11-25", "client": "KgIJgOGaNuNAG_ak",
        "net": "203.0.113.0/24", "country": "AL", "browser": "Chrome", "browser_version": "131",
        "os": "Windows", "bot": false, "lang": "sq", "method": "GET", "host": "localhost",
        "path": "/click/:id", "status": 200, "bytes_sent": 1024, "duration_ms": 1.2,
        "proto": "HTTP/2", "limited": false
    });
    let v = validator();
    assert_eq!(
        errors(&v, &good),
        Vec::<String>::new(),
        "the base record is valid"
    );
    let long_segment = format!("/{}", "a".repeat(33));
    let seventeen = "/s".repeat(17);
    // (what, field, value): `+name` adds the field, `-name` removes it, `name` replaces it.
    let rows: Vec<(&str, &str, Value)> = vec![
        // fields
        (
            "a field outside the schema",
            "+user_agent",
            json!("Mozilla/5.0"),
        ),
        ("a raw address field", "+ip", json!("203.0.113.7")),
        ("a missing field", "-limited", Value::Null),
        // ts and epoch
        (
            "ts with an offset",
            "ts",
            json!("2026-11-25T15:03:07+01:00"),
        ),
        ("ts with a fraction", "ts", json!("2026-11-25T14:03:07.5Z")),
        (
            "ts on a day that does not exist",
            "ts",
            json!("2026-02-30T14:03:07Z"),
        ),
        ("ts as Unix seconds", "ts", json!(1_795_615_387)),
        ("epoch with a time", "epoch", json!("2026-11-25T00:00:00Z")),
        (
            "epoch on a day that does not exist",
            "epoch",
            json!("2026-13-01"),
        ),
        // client and net
        (
            "client one character short",
            "client",
            json!("KgIJgOGaNuNAG_a"),
        ),
        (
            "client in padded base64",
            "client",
            json!("KgIJgOGaNuNAG_a="),
        ),
        (
            "client in standard base64",
            "client",
            json!("KgIJgOGaNuNAG+ak"),
        ),
        ("net a raw IPv4 address", "net", json!("203.0.113.7")),
        ("net a raw IPv6 address", "net", json!("2001:db8:1:2::5")),
        ("net IPv4 prefix over 32", "net", json!("203.0.113.0/33")),
        ("net IPv4 octet over 255", "net", json!("203.0.113.256/24")),
        ("net IPv6 in upper case", "net", json!("2001:DB8:1::/48")),
        ("net IPv6 prefix over 128", "net", json!("2001:db8::/129")),
        ("net IPv6 with two ::", "net", json!("2001::1::/48")),
        // country, device, language
        ("country in lower case", "country", json!("al")),
        ("country as a name", "country", json!("Albania")),
        ("browser not a family", "browser", json!("Chromium")),
        ("browser null", "browser", Value::Null),
        (
            "browser version in full",
            "browser_version",
            json!("131.0.6778.85"),
        ),
        ("browser version as a number", "browser_version", json!(131)),
        ("os not a family", "os", json!("Windows 10")),
        ("bot as a string", "bot", json!("false")),
        ("lang with a region", "lang", json!("sq-AL")),
        ("lang in upper case", "lang", json!("SQ")),
        ("lang not ISO 639-1", "lang", json!("xx")),
        // method, host, path
        ("method in lower case", "method", json!("get")),
        ("method an extension", "method", json!("PURGE")),
        ("host with a port", "host", json!("localhost:8443")),
        ("host in upper case", "host", json!("LocalHost")),
        ("host empty", "host", json!("")),
        ("path with a query", "path", json!("/click?campaign=7")),
        ("path with a fragment", "path", json!("/click#top")),
        ("path with a digit run", "path", json!("/click/12345")),
        ("path with an @", "path", json!("/u/me@example.org")),
        ("path with a percent-escape", "path", json!("/a%20b")),
        ("path with a space", "path", json!("/a b")),
        (
            "path with a segment over 32 characters",
            "path",
            json!(long_segment),
        ),
        ("path of 17 segments", "path", json!(seventeen)),
        ("path without a leading slash", "path", json!("click")),
        // numbers and flags
        ("status below 100", "status", json!(99)),
        ("status over 999", "status", json!(1000)),
        ("status as a string", "status", json!("200")),
        ("bytes_sent negative", "bytes_sent", json!(-1)),
        ("bytes_sent fractional", "bytes_sent", json!(1.5)),
        ("duration_ms negative", "duration_ms", json!(-0.1)),
        ("duration_ms as a string", "duration_ms", json!("1.2")),
        ("proto HTTP/3", "proto", json!("HTTP/3")),
        ("proto HTTP/1.0", "proto", json!("HTTP/1.0")),
        ("limited null", "limited", Value::Null),
    ];
    let mut accepted = Vec::new();
    for (what, field, value) in rows {
        let mut record = good.clone();
        let map = record.as_object_mut().unwrap();
        if let Some(name) = field.strip_prefix('+') {
            map.insert(name.into(), value);
        } else if let Some(name) = field.strip_prefix('-') {
            map.remove(name);
        } else {
            map.insert(field.into(), value);
        }
        if errors(&v, &record).is_empty() {
            accepted.push(what);
        }
    }
    assert!(
        !errors(&v, &json!(["not", "an", "object"])).is_empty(),
        "a record that is not an object is rejected"
    );
    assert_eq!(accepted, Vec::<&str>::new(), "records the schema accepts");
}

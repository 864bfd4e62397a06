//! SIGHUP (issue 13 §3): what can change without a restart is applied (`server.hosts`, `tls`,
//! `geoip`, `rate_limit`); every other changed key is named in a warning, by name only.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

/// Writes `config` as the proxy's config file, sends SIGHUP and waits until the reload is done;
/// returns the output it wrote.
async fn hup(proxy: &Proxy, config: &str) -> String {
    std::fs::write(proxy.path("config.toml"), config).unwrap();
    let done = |out: &str| out.matches("reloaded the country database").count();
    let before = proxy.output();
    let reloads = done(&before);
    proxy.signal("HUP");
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(20),
        async || (done(&proxy.output()) > reloads).then_some(()),
        || format!("no reload in:\n{}", proxy.output()),
    )
    .await;
    proxy.output()[before.len()..].to_owned()
}

/// The keys named by restart warnings in `out`, in order.
fn restart_warnings(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.contains("needs a restart"))
        .filter_map(|l| {
            let start = l.find(" key=")? + 5;
            let rest = &l[start..];
            Some(
                rest[..rest.find(' ').unwrap_or(rest.len())]
                    .trim_matches('"')
                    .to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_names_each_changed_key_that_needs_a_restart_and_only_those() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    let base = base_config(proxy.dir.path(), &up.url());
    let moved = dead_addr().to_string();
    let other_up = format!("[\"http://{}\"]", dead_addr());
    // (section, key, new value, keys warned about).
    let rows: [(&str, &str, &str, &[&str]); 10] = [
        (
            "server",
            "listen",
            &format!("\"{moved}\""),
            &["server.listen"],
        ),
        (
            "admin",
            "listen",
            &format!("\"{moved}\""),
            &["admin.listen"],
        ),
        ("upstream", "servers", &other_up, &["upstream.servers"]),
        (
            "upstream",
            "connect_timeout",
            "\"3s\"",
            &["upstream.connect_timeout"],
        ),
        (
            "access_log",
            "retention",
            "\"2d\"",
            &["access_log.retention"],
        ),
        ("privacy", "ipv4_prefix", "16", &["privacy.ipv4_prefix"]),
        // Reloaded: no warning.
        ("server", "hosts", "[\"example.org\"]", &[]),
        ("rate_limit", "enabled", "true", &[]),
        ("tls", "self_signed", "false", &[]),
        // Nothing changed: no warning.
        ("server", "hosts", "[\"localhost\"]", &[]),
    ];
    for (section, key, value, want) in rows {
        let out = hup(&proxy, &set(&base, section, key, value)).await;
        let warned = restart_warnings(&out);
        assert_eq!(warned, want, "{section}.{key}:\n{out}");
        // The key's name, never its value.
        for line in out.lines().filter(|l| l.contains("needs a restart")) {
            assert!(!line.contains(&moved), "{line}");
            assert!(!line.contains("3s\""), "{line}");
        }
    }
    // The listener did not move: the proxy still serves where it started.
    assert_eq!(
        proxy.client().get(Proto::H1, "/").await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_server_hosts_takes_effect_on_sighup() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    let base = base_config(proxy.dir.path(), &up.url());
    // (server.hosts after SIGHUP, host recorded for a request to localhost).
    let rows = [
        ("[\"example.org\"]", "null"),
        ("[\"example.org\", \"LocalHost.\"]", "\"localhost\""),
        ("[]", "null"),
        ("[\"localhost\"]", "\"localhost\""),
    ];
    for (i, (hosts, want)) in rows.into_iter().enumerate() {
        let out = hup(&proxy, &set(&base, "server", "hosts", hosts)).await;
        assert!(restart_warnings(&out).is_empty(), "{hosts}:\n{out}");
        for proto in BOTH {
            assert_eq!(proxy.client().get(proto, "/").await.status, StatusCode::OK);
        }
        let records = proxy.wait_records(2 * (i + 1)).await;
        for line in &records[2 * i..] {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(record["host"].to_string(), want, "{hosts}: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_log_group_a_restart_would_refuse_says_so_naming_the_key() {
    let up = Upstream::start().await;
    let proxy = Proxy::start(&up.url()).await;
    let base = base_config(proxy.dir.path(), &up.url());
    // (access_log.group as written)
    let rows = ["\"no-such-group-r13\"", "4294967000", "\"4294967000\""];
    for group in rows {
        let out = hup(&proxy, &set(&base, "access_log", "group", group)).await;
        let refused = out
            .lines()
            .find(|l| l.contains("a restart with this config would fail"))
            .unwrap_or_else(|| panic!("group {group}: not reported:\n{out}"));
        assert!(refused.contains("access_log.group"), "{group}: {refused}");
        assert!(refused.contains("does not exist"), "{group}: {refused}");
    }
    // Still serving with the group it started with.
    assert_eq!(
        proxy.client().get(Proto::H1, "/").await.status,
        StatusCode::OK
    );
}

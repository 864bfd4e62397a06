//! End-to-end tests of the investigation tools (issue 6): `investigate` by address and by
//! pseudonym, `erase` against a live proxy under concurrent traffic, unlinkable days, the audit
//! trail, robust reading, `keys`, and exit statuses.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use http::StatusCode;
use webprom_edge::client_ip::ClientAddr;
use webprom_edge::privacy::keys::{Key, next_key, pseudonym};

const A: &str = "198.51.100.7";
const B: &str = "203.0.113.9";
const C: &str = "2001:db8:1:2::5";

/// Letters only (prefixed with `q`, not a hex digit): survives path normalisation unchanged.
fn word(mut n: usize) -> String {
    let mut s = String::from("q");
    loop {
        s.push((b'a' + (n % 26) as u8) as char);
        n /= 26;
        if n == 0 {
            return s;
        }
    }
}

/// Runs the binary with `--config <dir>/config.toml` after the subcommand: (status, stdout,
/// stderr).
fn tool(dir: &Path, command: &str, args: &[&str]) -> (i32, String, String) {
    output_text(&mut tool_command(dir, command, args))
}

/// The access-log lines (day files only).
fn log_lines(dir: &Path) -> Vec<String> {
    let mut all = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir.join("logs"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("access-") {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            all.extend(text.lines().map(str::to_owned));
        }
    }
    all
}

/// Waits (up to 15 s) until the day files hold at least `n` records.
async fn wait_records(dir: &Path, n: usize) -> Vec<String> {
    wait_lines(n, || log_lines(dir)).await
}

fn pseudo(key: &Key, ip: &str) -> String {
    pseudonym(key, ClientAddr::new(ip.parse().unwrap()), 64).to_string()
}

fn audit_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("logs/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_all_of_a_and_none_of_b_by_address_and_by_pseudonym() {
    let up = Upstream::start().await;
    let proxy = trusting_unlimited_proxy(&up).await;
    let client = proxy.client();
    let mut conn = client.connect(Proto::H2).await;
    for i in 0..6 {
        assert_eq!(
            conn.send(from(A, &format!("/a/{}", word(i)))).await.status,
            StatusCode::OK
        );
        assert_eq!(
            conn.send(from(B, &format!("/b/{}", word(i)))).await.status,
            StatusCode::OK
        );
    }
    // Another address of C's /64 is the same client.
    conn.send(from(C, "/c")).await;
    conn.send(from("2001:db8:1:2:ffff::1", "/c")).await;
    conn.send(from("2001:db8:1:3::1", "/other64")).await;
    let all = wait_records(proxy.dir.path(), 15).await;
    let dir = proxy.dir.path();

    let key = Key::from_bytes(read_key(dir, &today_string()));
    let pa = pseudo(&key, A);
    let (code, out, err) = tool(dir, "investigate", &["--ip", A]);
    assert_eq!(code, 0, "{err}");
    let found: Vec<&str> = out.lines().collect();
    assert_eq!(found.len(), 6, "{out}");
    for line in &found {
        assert!(all.iter().any(|l| l == line), "printed exactly as stored");
        assert_eq!(field(line, "client"), pa);
        assert!(field(line, "path").starts_with("/a/"));
    }
    assert!(err.contains("investigate: 6 records found"), "{err}");
    assert!(err.contains("statuses: 200=6"), "{err}");
    assert!(err.contains("days searched: 1"), "{err}");
    assert!(err.contains("days unlinkable: 0"), "{err}");
    assert!(!err.contains(A) && !out.contains(A));

    let (code, by_client, err) = tool(dir, "investigate", &["--client", &pa]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(by_client, out);

    let (code, out, _) = tool(dir, "investigate", &["--ip", "2001:db8:1:2:abcd::9"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "the /64 is the client");
    let (_, out, _) = tool(dir, "investigate", &["--ip", "192.0.2.1"]);
    assert_eq!(out, "");
    // Day bounds: nothing before today.
    let yesterday = day_offset(-1);
    let (code, out, _) = tool(dir, "investigate", &["--ip", A, "--until", &yesterday]);
    assert_eq!((code, out.as_str()), (0, ""));

    // One audit line per run, with pseudonyms and no address.
    let audit = std::fs::read_to_string(dir.join("logs/audit.jsonl")).unwrap();
    for ip in [A, "2001:db8:1:2:abcd::9", "192.0.2.1"] {
        assert!(!audit.contains(ip), "{audit}");
    }
    let lines = audit_lines(dir);
    assert_eq!(lines.len(), 5);
    let first = &lines[0];
    assert_eq!(first["command"], "investigate");
    assert_eq!(first["count"], 6);
    assert!(!first["user"].as_str().unwrap().is_empty());
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(first["days_searched"][0], today_string());
    let searched: Vec<&str> = first["pseudonyms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["client"].as_str().unwrap())
        .collect();
    assert!(searched.contains(&pa.as_str()), "{first}");
    assert_eq!(lines[1]["pseudonyms"][0]["client"], pa.as_str());
}

/// A directory with a config, a key for `key_day` and no proxy running.
fn offline_dir(key_day: Option<(&str, [u8; 32])>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        base_config(dir.path(), "http://127.0.0.1:9"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    if let Some((day, key)) = key_day {
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::write(keys.join(format!("{day}.key")), hex(&key)).unwrap();
    }
    dir
}

/// The raw bytes of the test key.
fn test_key_raw() -> [u8; 32] {
    let mut b = [0u8; 32];
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(7);
    }
    b
}

fn test_key() -> Key {
    Key::from_bytes(test_key_raw())
}

fn record(ts_day: &str, time: &str, epoch: &str, client: &str, path: &str, status: u16) -> String {
    format!(
        "{{\"ts\":\"{ts_day}T{time}Z\",\"epoch\":\"{epoch}\",\"client\":\"{client}\",\"net\":\"198.51.100.0/24\",\"country\":null,\"browser\":\"Other\",\"browser_version\":null,\"os\":\"Other\",\"bot\":false,\"lang\":null,\"method\":\"GET\",\"host\":null,\"path\":\"{path}\",\"status\":{status},\"bytes_sent\":5,\"duration_ms\":0.3,\"proto\":\"HTTP/2\",\"limited\":false}}\n"
    )
}

#[test]
fn days_across_the_key_schedule_and_unlinkable_days() {
    let d = |n: i64| day_offset(n);
    let k3 = test_key();
    let k2 = next_key(&k3);
    let k1 = next_key(&k2);
    let dir = offline_dir(Some((&d(-3), test_key_raw())));
    let logs = dir.path().join("logs");
    let (pa3, pa2, pa1) = (pseudo(&k3, A), pseudo(&k2, A), pseudo(&k1, A));
    let pb2 = pseudo(&k2, B);
    std::fs::write(
        logs.join(format!("access-{}.jsonl", d(-3))),
        [
            record(&d(-3), "10:00:00", &d(-3), &pa3, "/three", 200),
            record(&d(-3), "11:00:00", &d(-3), &pseudo(&k3, B), "/b", 200),
        ]
        .concat(),
    )
    .unwrap();
    std::fs::write(
        logs.join(format!("access-{}.jsonl", d(-2))),
        [
            record(&d(-2), "09:00:00", &d(-2), &pa2, "/two", 404),
            record(&d(-2), "09:00:01", &d(-2), &pb2, "/b", 200),
            // A's pseudonym of another day in a record of this day: a different client.
            record(&d(-2), "09:00:02", &d(-2), &pa3, "/not-a", 200),
        ]
        .concat(),
    )
    .unwrap();
    std::fs::write(
        logs.join(format!("access-{}.jsonl", d(-1))),
        [
            // Written just after midnight, before the proxy ratcheted: the day before's epoch.
            record(&d(-1), "00:00:01", &d(-2), &pa2, "/midnight", 200),
            record(&d(-1), "12:00:00", &d(-1), &pa1, "/one", 200),
        ]
        .concat(),
    )
    .unwrap();
    // An old day whose key is not kept.
    let old = d(-40);
    std::fs::write(
        logs.join(format!("access-{old}.jsonl")),
        record(&old, "10:00:00", &old, "ZZZZZZZZZZZZZZZZ", "/old", 200),
    )
    .unwrap();

    let (code, out, err) = tool(dir.path(), "investigate", &["--ip", A]);
    assert_eq!(code, 0, "{err}");
    let paths: Vec<String> = out.lines().map(|l| field(l, "path")).collect();
    assert_eq!(paths, ["/three", "/two", "/midnight", "/one"], "{err}");
    assert!(
        err.contains(&format!("days unlinkable: 1 ({old})")),
        "{err}"
    );
    assert!(err.contains("days searched: 3"), "{err}");
    assert!(err.contains("statuses: 200=3 404=1"), "{err}");
    assert!(
        err.contains(&format!("first: {}T10:00:00Z", d(-3))),
        "{err}"
    );
    assert!(err.contains(&format!("last: {}T12:00:00Z", d(-1))), "{err}");

    let (_, out, err) = tool(
        dir.path(),
        "investigate",
        &["--ip", A, "--since", &d(-2), "--until", &d(-2)],
    );
    assert_eq!(out.lines().count(), 1, "{err}");
    assert!(err.contains("days unlinkable: 0"), "{err}");

    // By pseudonym, the old day is searched (nothing to link).
    let (_, _, err) = tool(dir.path(), "investigate", &["--client", "ZZZZZZZZZZZZZZZZ"]);
    assert!(err.contains("investigate: 1 records found"), "{err}");
    assert!(err.contains("days searched: 4"), "{err}");

    // Erase: A's records go, everyone else's stay, the unlinkable day is untouched. A copy left
    // by a killed erase is removed.
    std::fs::write(
        logs.join(format!(".access-{}.jsonl.erase.999999999", d(-1))),
        "x",
    )
    .unwrap();
    let before = log_lines(dir.path());
    let (code, _, err) = tool(dir.path(), "erase", &["--ip", A]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("erase: 4 records erased"), "{err}");
    assert!(err.contains("files rewritten: 3"), "{err}");
    let after = log_lines(dir.path());
    let gone: Vec<&String> = before.iter().filter(|l| !after.contains(l)).collect();
    assert_eq!(gone.len(), 4);
    assert_eq!(after.len(), before.len() - 4);
    let (_, out, _) = tool(dir.path(), "investigate", &["--ip", A]);
    assert_eq!(out, "");
    // No temporary file left.
    let names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("access-"))
        .collect();
    assert_eq!(names, ["audit.jsonl"]);
    let audit = audit_lines(dir.path());
    let last = audit.iter().rfind(|l| l["command"] == "erase").unwrap();
    assert_eq!(last["count"], 4);
    assert_eq!(last["days_unlinkable"][0], old.as_str());

    // `keys`: the day with records but no key (destroyed), the kept day, the derivable days
    // after it; days before the first key with no records are not listed.
    let (code, out, err) = tool(dir.path(), "keys", &[]);
    assert_eq!(code, 0, "{err}");
    let expected = [
        format!("{old} destroyed"),
        format!("{} kept", d(-3)),
        format!("{} derivable", d(-2)),
        format!("{} derivable", d(-1)),
        format!("{} derivable", d(0)),
    ];
    assert_eq!(out.lines().collect::<Vec<_>>(), expected, "{out}");
    assert!(
        err.contains("keys: 1 kept, 3 derivable, 1 destroyed"),
        "{err}"
    );
}

#[test]
fn keys_never_lists_days_before_the_first_key_as_destroyed_unless_their_records_remain() {
    let d = |n: i64| day_offset(n);
    // (first kept key, days with a day file, expected lines): one row each; days are offsets
    // from today.
    type Row = (Option<i64>, &'static [i64], Vec<(i64, &'static str)>);
    let rows: [Row; 5] = [
        // A new install: today's key, no records yet.
        (Some(0), &[], vec![(0, "kept")]),
        // A new install that has served today.
        (Some(0), &[0], vec![(0, "kept")]),
        // A week-old install.
        (
            Some(-2),
            &[-2, -1],
            vec![(-2, "kept"), (-1, "derivable"), (0, "derivable")],
        ),
        // Records older than the first key: their days are unlinkable.
        (
            Some(-1),
            &[-45, -3, -1],
            vec![
                (-45, "destroyed"),
                (-3, "destroyed"),
                (-1, "kept"),
                (0, "derivable"),
            ],
        ),
        // No key directory at all: only days with records, each destroyed.
        (None, &[-5, 0], vec![(-5, "destroyed"), (0, "destroyed")]),
    ];
    for (first_key, logged, expected) in rows {
        let key_day = first_key.map(d);
        let dir = offline_dir(key_day.as_deref().map(|day| (day, test_key_raw())));
        for &n in logged {
            let day = d(n);
            std::fs::write(
                dir.path().join(format!("logs/access-{day}.jsonl")),
                record(&day, "10:00:00", &day, "AAAAAAAAAAAAAAAA", "/", 200),
            )
            .unwrap();
        }
        let (code, out, err) = tool(dir.path(), "keys", &[]);
        assert_eq!(code, 0, "{first_key:?} {logged:?}: {err}");
        let expected: Vec<String> = expected
            .iter()
            .map(|(n, state)| format!("{} {state}", d(*n)))
            .collect();
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            expected,
            "{first_key:?} {logged:?}"
        );
        let destroyed = expected.iter().filter(|l| l.ends_with("destroyed")).count();
        assert!(
            err.contains(&format!(", {destroyed} destroyed;")),
            "{first_key:?} {logged:?}: {err}"
        );
    }
}

#[test]
fn torn_blank_and_junk_lines_are_skipped_and_counted() {
    let today = today_string();
    let key = test_key();
    let dir = offline_dir(Some((&today, test_key_raw())));
    let pa = pseudo(&key, A);
    let pb = pseudo(&key, B);
    let good = record(&today, "01:00:00", &today, &pa, "/good", 200);
    let extra = record(&today, "02:00:00", &today, &pa, "/extra", 200)
        .replace(",\"limited\":false}", ",\"limited\":false,\"new_field\":1}");
    let b = record(&today, "03:00:00", &today, &pb, "/b", 200);
    let text = [
        good.as_str(),
        "\n",
        "not json at all\n",
        &b,
        "\n",
        &format!("{{\"client\":\"{pa}\" broken\n"),
        &extra,
        "\u{0}\u{1}binary\n",
        &format!(
            "{{\"ts\":\"{today}T04:00:00Z\",\"epoch\":\"{today}\",\"client\":\"{pa}\",\"net\""
        ),
    ]
    .concat();
    let path = dir.path().join(format!("logs/access-{today}.jsonl"));
    std::fs::write(&path, &text).unwrap();

    let (code, out, err) = tool(dir.path(), "investigate", &["--ip", A]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, [good.as_str(), &extra].concat());
    assert!(
        err.contains("skipped lines: 1 torn, 2 blank, 1 invalid; records with unknown fields: 1"),
        "{err}"
    );

    let (code, _, err) = tool(dir.path(), "erase", &["--ip", A]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("erase: 2 records erased"), "{err}");
    assert!(
        err.contains("unparseable lines holding the pseudonym removed: 2"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        ["\n", "not json at all\n", &b, "\n", "\u{0}\u{1}binary\n"].concat()
    );
}

#[test]
fn exit_statuses_and_messages_name_the_flag() {
    let dir = offline_dir(None);
    // (args, status, text stderr must hold)
    let cases: &[(&str, &[&str], i32, &str)] = &[
        ("investigate", &["--ip", "198.51.100.777"], 2, "--ip"),
        ("investigate", &["--ip", "not-an-address"], 2, "--ip"),
        ("erase", &["--ip", "198.51.100.777"], 2, "--ip"),
        ("investigate", &["--client", "short"], 2, "--client"),
        (
            "investigate",
            &["--ip", A, "--since", "2026-13-01"],
            2,
            "--since",
        ),
        ("erase", &["--ip", A, "--until", "tomorrow"], 2, "--until"),
        (
            "investigate",
            &["--ip", A, "--client", "AAAAAAAAAAAAAAAA"],
            2,
            "--client",
        ),
        ("investigate", &[], 2, "--ip"),
        (
            "investigate",
            &["--ip", A, "--since", "2026-02-02", "--until", "2026-02-01"],
            2,
            "--since",
        ),
        // An address typed into the wrong flag is never echoed.
        (
            "investigate",
            &["--ip", A, "--since", "198.51.100.777"],
            2,
            "--since",
        ),
        (
            "erase",
            &["--ip", A, "--until", " 198.51.100.777"],
            2,
            "--until",
        ),
        (
            "investigate",
            &["--ip", A, "--logs", "198.51.100.777"],
            2,
            "--logs",
        ),
        (
            "erase",
            &["--ip", A, "--logs", "::ffff:198.51.100.777"],
            2,
            "--logs",
        ),
        (
            "investigate",
            &["--ip", A, "--logs", "198.51.100.24"],
            2,
            "--logs",
        ),
        (
            "erase",
            &["--ip", A, "--logs", "198.51.100.0/24"],
            2,
            "--logs",
        ),
        ("erase", &["--ip", A, "--logs", "2001:db8::1"], 2, "--logs"),
        (
            "erase",
            &["--ip", A, "--since", "198.51.100.24"],
            2,
            "--since",
        ),
        ("investigate", &["--ip", A], 0, "days searched: 0"),
        ("keys", &[], 0, "keys: 0 kept"),
    ];
    for (command, args, status, text) in cases {
        let (code, _, err) = tool(dir.path(), command, args);
        assert_eq!(code, *status, "{command} {args:?}: {err}");
        assert!(err.contains(text), "{command} {args:?}: {err}");
        assert!(!err.contains("198.51.100.777"), "{err}");
        assert!(!err.contains("198.51.100"), "{err}");
    }
    // With no key at all, every day with a file is unlinkable, and nothing is created.
    let day = today_string();
    std::fs::write(
        dir.path().join(format!("logs/access-{day}.jsonl")),
        record(&day, "01:00:00", &day, "AAAAAAAAAAAAAAAA", "/", 200),
    )
    .unwrap();
    let (code, _, err) = tool(dir.path(), "investigate", &["--ip", A]);
    assert_eq!(code, 0);
    assert!(
        err.contains(&format!("days unlinkable: 1 ({day})")),
        "{err}"
    );
    assert!(!dir.path().join("keys").exists());
    // A missing config file is a usage error.
    let out = Command::new(bin())
        .args(["investigate", "--config", "/nonexistent.toml", "--ip", A])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn audit_lines_past_retention_are_dropped() {
    let dir = offline_dir(None);
    let audit = dir.path().join("logs/audit.jsonl");
    let old = "{\"time\":\"2000-01-01T00:00:00Z\",\"command\":\"investigate\"}\n";
    std::fs::write(&audit, old).unwrap();
    let (code, _, err) = tool(dir.path(), "investigate", &["--client", "AAAAAAAAAAAAAAAA"]);
    assert_eq!(code, 0, "{err}");
    let lines = audit_lines(dir.path());
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["command"], "investigate");
    assert_ne!(lines[0]["time"], "2000-01-01T00:00:00Z");
}

/// Keeps sending requests from `ips` (round robin) with unique paths until `stop`; returns
/// the paths of the requests answered 200.
fn load(
    client: Client,
    ips: Vec<&'static str>,
    tag: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(String, &'static str)>> {
    tokio::spawn(async move {
        let mut conn = client.connect(Proto::H1).await;
        let mut done = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let ip = ips[i % ips.len()];
            let path = format!("/{tag}/{}", word(i));
            if conn.send(from(ip, &path)).await.status == StatusCode::OK {
                done.push((path, ip));
            }
            i += 1;
        }
        done
    })
}

async fn erase_now(dir: &Path) -> u64 {
    let dir = dir.to_path_buf();
    let (code, _, err) = tokio::task::spawn_blocking(move || tool(&dir, "erase", &["--ip", A]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let line = err.lines().next().unwrap();
    line.trim_start_matches("erase: ")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_under_concurrent_traffic_loses_and_duplicates_nothing() {
    let up = Upstream::start().await;
    let proxy = trusting_unlimited_proxy(&up).await;
    let dir = proxy.dir.path();
    let client = proxy.client();

    // Others keep sending for the whole test; A sends during the first erases, then stops.
    let stop_others = Arc::new(AtomicBool::new(false));
    let stop_a = Arc::new(AtomicBool::new(false));
    let others = load(
        client.clone(),
        vec![B, C, "192.0.2.44"],
        "o",
        stop_others.clone(),
    );
    let others2 = load(
        client.clone(),
        vec![B, "192.0.2.45"],
        "p",
        stop_others.clone(),
    );
    let a = load(client.clone(), vec![A], "a", stop_a.clone());
    wait_records(dir, 300).await;

    let mut erased = 0;
    for _ in 0..4 {
        erased += erase_now(dir).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop_a.store(true, Ordering::Relaxed);
    let a_done = a.await.unwrap();
    // Let the writer flush A's last records (it flushes at least once a second).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    erased += erase_now(dir).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_others.store(true, Ordering::Relaxed);
    let mut others_done = others.await.unwrap();
    others_done.extend(others2.await.unwrap());
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let lines = log_lines(dir);
    let key = Key::from_bytes(read_key(dir, &today_string()));
    let pa = pseudo(&key, A);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for l in &lines {
        assert_ne!(field(l, "client"), pa, "a record of A survived");
        *seen.entry(field(l, "path")).or_default() += 1;
    }
    assert!(a_done.len() > 50, "A sent {} requests", a_done.len());
    assert!(others_done.len() > 300, "others sent {}", others_done.len());
    // Every one of A's records was erased exactly once: none lost before, none written twice.
    assert_eq!(erased, a_done.len() as u64);
    // Every other request is in the log exactly once, and nothing else is.
    for (path, ip) in &others_done {
        assert_eq!(seen.get(path), Some(&1), "{path} from {ip}");
    }
    assert_eq!(lines.len(), others_done.len());
    let (_, out, _) = tool(dir, "investigate", &["--ip", A]);
    assert_eq!(out, "");
    let metrics = proxy.admin_get("/metrics").await.1;
    assert!(metrics.contains("webprom_edge_access_log_dropped_total 0"));
    assert!(metrics.contains("webprom_edge_access_log_write_errors_total 0"));
}

/// Two instances of a fleet with one shared key directory, each with its own `access_log.node`
/// and log directory (as a central archive gathers them): `investigate` and `erase` given both
/// with `--logs` find and remove the client's records in each, report per directory, and the
/// audit line names both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn investigate_and_erase_search_every_log_directory_of_a_fleet() {
    let up = Upstream::start().await;
    let node = |name: &'static str, keys: Option<std::path::PathBuf>| {
        move |c: String| {
            let mut c = unlimited(&trusting(&c)).replace(
                "[access_log]\n",
                &format!("[access_log]\nnode = \"{name}\"\n"),
            );
            if let Some(keys) = keys {
                let line = c
                    .lines()
                    .find(|l| l.starts_with("key_dir = "))
                    .unwrap()
                    .to_owned();
                c = c.replace(
                    &line,
                    &format!("key_dir = {:?}", keys.display().to_string()),
                );
            }
            c
        }
    };
    let a = Proxy::start_with(node("edge-a", None), &up.url()).await;
    let shared_keys = a.dir.path().join("keys");
    let b = Proxy::start_with(node("edge-b", Some(shared_keys)), &up.url()).await;
    for (proxy, n) in [(&a, 3), (&b, 2)] {
        let mut conn = proxy.client().connect(Proto::H2).await;
        for i in 0..n {
            assert_eq!(
                conn.send(from(A, &format!("/a/{}", word(i)))).await.status,
                StatusCode::OK
            );
            assert_eq!(
                conn.send(from(B, &format!("/b/{}", word(i)))).await.status,
                StatusCode::OK
            );
        }
    }
    wait_records(a.dir.path(), 6).await;
    wait_records(b.dir.path(), 4).await;
    let today = today_string();
    // Each instance names its day files after its node.
    assert!(
        a.dir
            .path()
            .join(format!("logs/access-edge-a-{today}.jsonl"))
            .is_file()
    );
    assert!(
        b.dir
            .path()
            .join(format!("logs/access-edge-b-{today}.jsonl"))
            .is_file()
    );
    let (logs_a, logs_b) = (a.dir.path().join("logs"), b.dir.path().join("logs"));
    let (la, lb) = (logs_a.to_str().unwrap(), logs_b.to_str().unwrap());

    // Investigated from a third place: a config of its own, the fleet's keys.
    let desk = offline_dir(None);
    let desk_config = std::fs::read_to_string(desk.path().join("config.toml")).unwrap();
    let key_line = desk_config
        .lines()
        .find(|l| l.starts_with("key_dir = "))
        .unwrap();
    std::fs::write(
        desk.path().join("config.toml"),
        desk_config.replace(
            key_line,
            &format!(
                "key_dir = {:?}",
                a.dir.path().join("keys").display().to_string()
            ),
        ),
    )
    .unwrap();
    let key = Key::from_bytes(read_key(a.dir.path(), &today));
    let (code, out, err) = tool(
        desk.path(),
        "investigate",
        &["--ip", A, "--logs", la, "--logs", lb],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(
        out.lines().all(|l| field(l, "client") == pseudo(&key, A)),
        "{out}"
    );
    assert!(err.contains("investigate: 5 records found"), "{err}");
    assert!(
        err.contains(&format!("in {la}: 3 records found, 1 day files searched")),
        "{err}"
    );
    assert!(
        err.contains(&format!("in {lb}: 2 records found, 1 day files searched")),
        "{err}"
    );
    assert!(
        err.contains("days searched: 1"),
        "the same day in two directories is one day: {err}"
    );
    // Without --logs, the config's own (empty) log directory is searched.
    let (code, out, _) = tool(desk.path(), "investigate", &["--ip", A]);
    assert_eq!((code, out.as_str()), (0, ""));

    let (code, _, err) = tool(
        desk.path(),
        "erase",
        &["--ip", A, "--logs", la, "--logs", lb],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("erase: 5 records erased"), "{err}");
    for (proxy, others) in [(&a, 3), (&b, 2)] {
        let left = log_lines(proxy.dir.path());
        assert_eq!(left.len(), others, "only B's records remain: {left:?}");
        assert!(left.iter().all(|l| field(l, "client") == pseudo(&key, B)));
    }
    let (_, out, _) = tool(
        desk.path(),
        "investigate",
        &["--ip", A, "--logs", la, "--logs", lb],
    );
    assert_eq!(out, "");

    // The audit trail (in the desk's own access_log.dir) names every directory, never A.
    let audit = audit_lines(desk.path());
    assert_eq!(audit.len(), 4);
    let erase = &audit[2];
    assert_eq!(erase["command"], "erase");
    assert_eq!(erase["count"], 5);
    let dirs: Vec<(&str, u64, u64)> = erase["log_dirs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["dir"].as_str().unwrap(),
                d["files"].as_u64().unwrap(),
                d["records"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(dirs, [(la, 1, 3), (lb, 1, 2)]);
    let text = std::fs::read_to_string(desk.path().join("logs/audit.jsonl")).unwrap();
    assert!(!text.contains(A), "{text}");
}

/// `--logs` naming something that is not a log directory is refused before anything is
/// searched, naming it, with the usage exit status.
#[test]
fn a_logs_directory_that_is_not_one_is_named() {
    let dir = offline_dir(Some((&today_string(), test_key_raw())));
    let file = dir.path().join("config.toml");
    let missing = dir.path().join("no-such-dir");
    let rows: [(&str, &Path, &str); 2] = [
        ("investigate", &missing, "No such file or directory"),
        ("erase", &file, "is not a directory"),
    ];
    for (command, path, reason) in rows {
        let p = path.to_str().unwrap();
        let (code, out, err) = tool(dir.path(), command, &["--ip", A, "--logs", p]);
        assert_eq!(code, 2, "{command} {p}: {err}");
        assert!(
            err.contains(&format!("--logs {p}")) && err.contains(reason),
            "{err}"
        );
        assert_eq!(out, "");
        assert!(!err.contains(A), "{err}");
    }
    assert!(
        audit_lines(dir.path()).is_empty(),
        "nothing searched, nothing audited"
    );
}

/// Writes `records` of A and `others` of B (today, under the test key) into `dir/name`.
fn day_file(dir: &Path, name: &str, records: usize, others: usize) {
    let day = today_string();
    let key = test_key();
    let mut text = String::new();
    for i in 0..records {
        text += &record(
            &day,
            "01:00:00",
            &day,
            &pseudo(&key, A),
            &format!("/a/{}", word(i)),
            200,
        );
    }
    for i in 0..others {
        text += &record(
            &day,
            "02:00:00",
            &day,
            &pseudo(&key, B),
            &format!("/b/{}", word(i)),
            200,
        );
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

/// One directory given under several spellings is one directory: searched once, named once in
/// the summary and the audit, by its absolute path with links resolved. A day file reached
/// twice (a hard link under another node's name) is searched once.
#[test]
fn a_directory_or_a_day_file_reached_twice_is_searched_once() {
    let dir = offline_dir(Some((&today_string(), test_key_raw())));
    let root = dir.path();
    let day = today_string();
    day_file(
        &root.join("arch/a"),
        &format!("access-edge-1-{day}.jsonl"),
        2,
        1,
    );
    std::os::unix::fs::symlink(root.join("arch/a"), root.join("arch/link")).unwrap();
    let real = std::fs::canonicalize(root.join("arch/a")).unwrap();
    let real = real.to_str().unwrap();
    // (the spellings given)
    let rows: &[&[&str]] = &[
        &["arch/a", "arch/a/"],
        &["arch/a", "./arch/a"],
        &["arch/a", "arch/link"],
        &["arch/a", "arch/../arch/a"],
        &["arch/a", real],
        &["arch/link", "arch/link/", "./arch/./a"],
    ];
    for spellings in rows {
        let mut args = vec!["--ip", A];
        for s in *spellings {
            args.extend(["--logs", s]);
        }
        let (code, out, err) = tool(root, "investigate", &args);
        assert_eq!(code, 0, "{spellings:?}: {err}");
        assert_eq!(out.lines().count(), 2, "{spellings:?}: {out}");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("in ")).count(),
            1,
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "in {real}: 2 records found, 1 day files searched\n"
            )),
            "{err}"
        );
        let audit = audit_lines(root);
        let last = audit.last().unwrap();
        assert_eq!(last["log_dirs"].as_array().unwrap().len(), 1, "{last}");
        assert_eq!(last["log_dirs"][0]["dir"], real, "{last}");
    }
    // A hard link under another node's name in the same directory, and in another directory.
    let a = root.join(format!("arch/a/access-edge-1-{day}.jsonl"));
    std::fs::hard_link(&a, root.join(format!("arch/a/access-edge-2-{day}.jsonl"))).unwrap();
    std::fs::create_dir_all(root.join("arch/b")).unwrap();
    std::fs::hard_link(&a, root.join(format!("arch/b/access-edge-1-{day}.jsonl"))).unwrap();
    let (code, out, err) = tool(
        root,
        "investigate",
        &["--ip", A, "--logs", "arch/a", "--logs", "arch/b"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(err.contains("investigate: 2 records found"), "{err}");
    let (code, _, err) = tool(
        root,
        "erase",
        &["--ip", A, "--logs", "arch/a", "--logs", "arch/b"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("erase: 2 records erased"), "{err}");
    assert!(
        err.contains(&format!("files rewritten: 1 (access-edge-1-{day}.jsonl)")),
        "{err}"
    );
}

/// A symbolic link named like a day file is never followed: `erase` would replace the link and
/// leave the records where it points. The command fails naming it, and changes nothing.
#[test]
fn a_day_file_that_is_a_symbolic_link_is_refused_not_followed() {
    let dir = offline_dir(Some((&today_string(), test_key_raw())));
    let root = dir.path();
    let day = today_string();
    day_file(
        &root.join("live"),
        &format!("access-edge-1-{day}.jsonl"),
        2,
        2,
    );
    std::fs::create_dir_all(root.join("arch")).unwrap();
    let live = root.join(format!("live/access-edge-1-{day}.jsonl"));
    let before = std::fs::read(&live).unwrap();
    // (what the link named like a day file points to)
    let targets = [
        live.clone(),
        PathBuf::from("/etc/passwd"),
        root.join("nowhere"),
    ];
    for target in &targets {
        let link = root.join(format!("arch/access-edge-9-{day}.jsonl"));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).unwrap();
        for command in ["investigate", "erase"] {
            let (code, out, err) = tool(root, command, &["--ip", A, "--logs", "arch"]);
            assert_eq!(code, 1, "{command} → {target:?}: {err}");
            assert!(
                err.contains("symbolic link") && err.contains("access-edge-9-"),
                "{err}"
            );
            assert_eq!(out, "");
            assert!(
                std::fs::symlink_metadata(&link)
                    .unwrap()
                    .file_type()
                    .is_symlink()
            );
        }
    }
    assert_eq!(
        std::fs::read(&live).unwrap(),
        before,
        "the records it points to are untouched"
    );
}

/// Nothing is shown or erased unless its audit line can be written: a trail that is a named
/// pipe, a device, a directory or a symbolic link fails the command first (exit 1, naming the
/// trail), and never hangs or reads without end. A trail left readable by others is made
/// owner-only.
#[test]
fn an_audit_trail_that_cannot_take_the_line_stops_the_command_before_it_shows_anything() {
    use std::os::unix::fs::PermissionsExt;
    let day = today_string();
    // (what is at logs/audit.jsonl)
    type Make = fn(&Path);
    let rows: &[(&str, Make)] = &[
        ("a named pipe", |p| {
            let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        }),
        ("a link to /dev/zero", |p| {
            std::os::unix::fs::symlink("/dev/zero", p).unwrap()
        }),
        ("a link to /dev/full", |p| {
            std::os::unix::fs::symlink("/dev/full", p).unwrap()
        }),
        ("a directory", |p| std::fs::create_dir(p).unwrap()),
        ("a link to a regular file", |p| {
            let target = p.with_file_name("elsewhere.jsonl");
            std::fs::write(&target, b"").unwrap();
            std::os::unix::fs::symlink(target, p).unwrap();
        }),
    ];
    for (what, make) in rows {
        let dir = offline_dir(Some((&day, test_key_raw())));
        let root = dir.path();
        day_file(&root.join("logs"), &format!("access-{day}.jsonl"), 2, 1);
        let before = std::fs::read(root.join(format!("logs/access-{day}.jsonl"))).unwrap();
        make(&root.join("logs/audit.jsonl"));
        for command in ["investigate", "erase"] {
            let mut cmd = tool_command(root, command, &["--ip", A]);
            let (code, out, err) = output_text(cmd.arg("--logs").arg(root.join("logs")));
            assert_eq!(code, 1, "{what}, {command}: {err}");
            assert!(err.contains("audit trail"), "{what}, {command}: {err}");
            assert_eq!(out, "", "{what}: nothing shown without an audit line");
        }
        let after = std::fs::read(root.join(format!("logs/access-{day}.jsonl"))).unwrap();
        assert_eq!(
            after, before,
            "{what}: nothing erased without an audit line"
        );
    }
    // A trail readable by others is made owner-only by the next line.
    let dir = offline_dir(Some((&day, test_key_raw())));
    let trail = dir.path().join("logs/audit.jsonl");
    std::fs::write(&trail, b"").unwrap();
    std::fs::set_permissions(&trail, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = tool(dir.path(), "investigate", &["--ip", A]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::metadata(&trail).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A log directory the command makes for its trail is owner-only.
    let dir = offline_dir(Some((&day, test_key_raw())));
    std::fs::remove_dir_all(dir.path().join("logs")).unwrap();
    let (code, _, err) = tool(dir.path(), "investigate", &["--ip", A]);
    assert_eq!(code, 0, "{err}");
    let mode = std::fs::metadata(dir.path().join("logs"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// A directory whose name is not UTF-8 is searched and named in the audit line, its
/// undecodable bytes as U+FFFD: the line is never lost.
#[test]
fn a_log_directory_whose_name_is_not_utf8_is_audited() {
    use std::os::unix::ffi::OsStrExt;
    let dir = offline_dir(Some((&today_string(), test_key_raw())));
    let root = dir.path();
    let odd = root.join(std::ffi::OsStr::from_bytes(b"n\xffu"));
    day_file(&odd, &format!("access-n1-{}.jsonl", today_string()), 2, 1);
    for command in ["investigate", "erase"] {
        let mut cmd = tool_command(root, command, &["--ip", A]);
        let (code, _, err) = output_text(cmd.arg("--logs").arg(&odd));
        assert_eq!(code, 0, "{command}: {err}");
        let audit = audit_lines(root);
        let last = audit.last().unwrap();
        assert_eq!(last["command"], command);
        assert_eq!(last["count"], 2, "{last}");
        assert!(
            last["log_dirs"][0]["dir"]
                .as_str()
                .unwrap()
                .ends_with("n\u{fffd}u"),
            "{last}"
        );
    }
}

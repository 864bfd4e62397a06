//! The command line: `check-config` accepts the example and names the key of every bad config.

mod common;

use std::process::Command;

use common::{base_config, bin, output_text, set};

fn check_config(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    output_text(
        Command::new(bin())
            .args(["check-config", "--config"])
            .arg(&path)
            .current_dir(dir.path()),
    )
}

#[test]
fn example_config_is_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(bin())
        .args(["check-config", "--config", "config/example.toml"])
        .current_dir(root)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("listen = \"127.0.0.1:8443\""), "{printed}");
}

#[test]
fn bad_configs_exit_2_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_config(dir.path(), "http://127.0.0.1:8080");
    let missing_cert = set(
        &set(
            &set(&base, "tls", "self_signed", "false"),
            "tls",
            "cert",
            "\"/nonexistent/cert.pem\"",
        ),
        "tls",
        "key",
        "\"/nonexistent/key.pem\"",
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "bad address",
            set(&base, "server", "listen", "\"localhost:http\""),
            "server.listen",
        ),
        (
            "bad admin address",
            set(&base, "admin", "listen", "\"300.1.1.1:9100\""),
            "admin.listen",
        ),
        ("missing certificate", missing_cert, "tls.cert"),
        (
            "unknown key",
            set(&base, "server", "listn", "\"0.0.0.0:1\""),
            "server.listn",
        ),
        (
            "unknown section",
            format!("{base}\n[serverr]\nx = 1\n"),
            "serverr",
        ),
        (
            "bad CIDR",
            set(
                &base,
                "client_ip",
                "trusted_proxies",
                "[\"10.0.0.0/8\", \"10.0.0/99\"]",
            ),
            "client_ip.trusted_proxies[1]",
        ),
        (
            "bad duration",
            set(
                &base,
                "upstream",
                "request_timeout",
                "\"30 seconds please\"",
            ),
            "upstream.request_timeout",
        ),
        (
            "zero duration",
            set(&base, "server", "idle_timeout", "\"0s\""),
            "server.idle_timeout",
        ),
        (
            "bad upstream",
            set(&base, "upstream", "servers", "[\"ftp://x:1\"]"),
            "upstream.servers[0]",
        ),
        (
            "wrong type",
            set(&base, "server", "workers", "\"two\""),
            "server.workers",
        ),
        ("not TOML", "[server\nlisten=".to_string(), "line 1"),
    ];
    // A duration the clock cannot hold, or one that rounds a check period to nothing, is a
    // bad config: found here, never as a panic at the first connection.
    let durations = [
        ("server", "header_read_timeout"),
        ("server", "idle_timeout"),
        ("server", "send_timeout"),
        ("server", "body_read_timeout"),
        ("upstream", "connect_timeout"),
        ("upstream", "request_timeout"),
        ("upstream", "idle_timeout"),
        ("upstream", "queue_timeout"),
        ("access_log", "retention"),
    ];
    let mut cases: Vec<(&str, String, String)> = cases
        .into_iter()
        .map(|(what, text, key)| (what, text, key.to_owned()))
        .collect();
    for (section, key) in durations {
        for value in ["\"1ns\"", "\"999us\"", "\"10000000000000000000s\""] {
            cases.push((
                "duration out of range",
                set(&base, section, key, value),
                format!("{section}.{key}"),
            ));
        }
    }
    cases.push((
        "shutdown grace the clock cannot hold",
        set(
            &base,
            "server",
            "shutdown_grace",
            "\"10000000000000000000s\"",
        ),
        "server.shutdown_grace".to_owned(),
    ));
    for (what, text, key) in cases {
        let (code, _, stderr) = check_config(&text);
        assert_eq!(code, 2, "{what}: {stderr}");
        assert!(
            stderr.contains(&key),
            "{what}: {key} not named in {stderr:?}"
        );
    }
}

#[test]
fn missing_certificate_with_self_signed_is_generated_at_run_not_check() {
    let dir = tempfile::tempdir().unwrap();
    common::write_test_geo(dir.path());
    let (code, stdout, stderr) = check_config(&base_config(dir.path(), "http://127.0.0.1:8080"));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("will generate a self-signed certificate"),
        "{stdout}"
    );
    assert!(!dir.path().join("cert.pem").exists());
}

#[test]
fn bad_usage_exits_2() {
    let out = Command::new(bin()).args(["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(bin()).args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(bin())
        .args(["run", "--config", "/nonexistent/config.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/config.toml"));
}

#[test]
fn a_pseudonym_may_begin_with_a_hyphen() {
    // base64url pseudonyms start with '-' one time in 64: that must not read as a flag.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, base_config(dir.path(), "http://127.0.0.1:8080")).unwrap();
    let out = Command::new(bin())
        .args(["investigate", "--config"])
        .arg(&config)
        .args(["--client", "-bcdefghijklmnop"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 records found"));
}

/// Runs `check-config` on a good config with `WEBPROM_EDGE_LOG` set to `value` (or unset):
/// (exit status, stderr).
fn check_config_with_log_env(value: Option<&std::ffi::OsStr>) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    common::write_test_geo(dir.path());
    let path = dir.path().join("config.toml");
    std::fs::write(&path, base_config(dir.path(), "http://127.0.0.1:8080")).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["check-config", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .env_remove("WEBPROM_EDGE_LOG");
    if let Some(value) = value {
        cmd.env("WEBPROM_EDGE_LOG", value);
    }
    let (code, _, stderr) = output_text(&mut cmd);
    (code, stderr)
}

#[test]
fn an_invalid_log_filter_is_named_in_a_warning_and_info_is_used() {
    // One row per kind of bad value: (value, what the warning must quote).
    let rows = [
        ("webprom_edge=verbose", "\"webprom_edge=verbose\""),
        ("info,hyper=loud", "\"info,hyper=loud\""),
        ("=debug", "\"=debug\""),
        ("info,[", "\"info,[\""),
        ("[{", "\"[{\""),
        ("a=b=c", "\"a=b=c\""),
        ("debug,webprom_edge=6", "\"debug,webprom_edge=6\""),
    ];
    for (value, quoted) in rows {
        let (code, stderr) = check_config_with_log_env(Some(value.as_ref()));
        assert_eq!(code, 0, "{value}: {stderr}");
        let warning = stderr
            .lines()
            .find(|l| l.contains("WARN") && l.contains("WEBPROM_EDGE_LOG"))
            .unwrap_or_else(|| panic!("{value}: no warning in {stderr:?}"));
        assert!(warning.contains(quoted), "{value}: {warning}");
        assert!(warning.contains("using \"info\""), "{value}: {warning}");
    }
    // A value that is not UTF-8 is named by its variable only.
    let not_utf8 = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"debug\xff");
    let (code, stderr) = check_config_with_log_env(Some(not_utf8));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("WEBPROM_EDGE_LOG is not valid UTF-8"),
        "{stderr:?}"
    );
}

#[test]
fn a_valid_empty_or_absent_log_filter_gives_no_warning() {
    // One row per kind of good value; None: unset.
    let rows: [Option<&str>; 6] = [
        None,
        Some(""),
        Some("  "),
        Some("debug"),
        Some("webprom_edge=debug,info"),
        Some("warn,webprom_edge::server=trace"),
    ];
    for value in rows {
        let (code, stderr) = check_config_with_log_env(value.map(AsRef::as_ref));
        assert_eq!(code, 0, "{value:?}: {stderr}");
        assert!(!stderr.contains("WEBPROM_EDGE_LOG"), "{value:?}: {stderr}");
    }
}

#[test]
fn check_config_prints_each_duration_in_the_unit_it_was_written_in() {
    // (section, key, written, printed): one row each.
    let rows = [
        ("access_log", "retention", "90d", "90d"),
        ("privacy", "key_retention", "720h", "720h"),
        ("privacy", "cookie_max_age", "2w", "2w"),
        ("privacy", "timestamp_precision", "60s", "60s"),
        ("server", "idle_timeout", "1m", "1m"),
        ("server", "send_timeout", "1m 30s", "90s"),
        ("server", "shutdown_grace", "1.5m", "90s"),
        ("server", "header_read_timeout", "10 seconds", "10s"),
        ("upstream", "request_timeout", "1000ms", "1000ms"),
        ("upstream", "connect_timeout", "500ms", "500ms"),
    ];
    let dir = tempfile::tempdir().unwrap();
    common::write_test_geo(dir.path());
    let mut config = base_config(dir.path(), "http://127.0.0.1:8080");
    for (section, key, written, _) in rows {
        config = set(&config, section, key, &format!("\"{written}\""));
    }
    let printed = check_config_in(dir.path(), &config);
    let effective: toml::Table = printed.parse().unwrap();
    for (section, key, written, shown) in rows {
        assert_eq!(
            effective[section][key].as_str(),
            Some(shown),
            "{section}.{key} = {written:?}"
        );
    }
    // Defaults are shown in their natural unit, never as months and days.
    assert_eq!(effective["upstream"]["idle_timeout"].as_str(), Some("4s"));
    // The effective config is itself a config that prints the same.
    assert_eq!(check_config_in(dir.path(), &printed), printed);
}

/// `check-config` on `text` written into `dir`: its stdout (it must succeed).
fn check_config_in(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .current_dir(dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

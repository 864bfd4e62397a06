//! The files that install webprom-edge as a service (issue 13 §1, §11): the systemd unit
//! `dist/systemd/webprom-edge.service` and its user `dist/sysusers.d/webprom-edge.conf`, the
//! production config `dist/config.toml`, and the container's `Dockerfile` and `.dockerignore`.
//! Each is read as it ships; the unit is checked by `systemd-analyze verify` (Debian `systemd`),
//! the config by the real binary's `check-config`.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const UNIT: &str = "dist/systemd/webprom-edge.service";
const SYSUSERS: &str = "dist/sysusers.d/webprom-edge.conf";
const CONFIG: &str = "dist/config.toml";
/// Where the unit and the Dockerfile run the binary from.
const INSTALLED_BIN: &str = "/usr/local/bin/webprom-edge";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The unit's assignments `(section, key, value)` in order, comments and blank lines dropped.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{UNIT}: not an assignment: {line}"));
        out.push((
            section.clone(),
            key.trim().to_owned(),
            value.trim().to_owned(),
        ));
    }
    out
}

/// Every value `[Service]` assigns to `key`, in order.
fn service_values(key: &str) -> Vec<String> {
    unit_entries(&read(UNIT))
        .into_iter()
        .filter(|(s, k, _)| s == "Service" && k == key)
        .map(|(_, _, v)| v)
        .collect()
}

/// The one value `[Service]` assigns to `key`.
fn service_value(key: &str) -> String {
    match service_values(key).as_slice() {
        [one] => one.clone(),
        other => panic!("{UNIT}: {key} should be set once, is set {other:?}"),
    }
}

fn config() -> toml::Table {
    read(CONFIG).parse().unwrap()
}

fn config_str(table: &toml::Table, section: &str, key: &str) -> String {
    table[section][key]
        .as_str()
        .unwrap_or_else(|| panic!("{CONFIG}: {section}.{key} is not a string"))
        .to_owned()
}

/// The config's paths, `(key, path)`: every file and directory the proxy reads or writes.
fn config_paths() -> Vec<(&'static str, PathBuf)> {
    let c = config();
    [
        ("tls", "cert", "tls.cert"),
        ("tls", "key", "tls.key"),
        ("geoip", "database", "geoip.database"),
        ("privacy", "key_dir", "privacy.key_dir"),
        ("access_log", "dir", "access_log.dir"),
    ]
    .into_iter()
    .map(|(section, key, name)| (name, PathBuf::from(config_str(&c, section, key))))
    .collect()
}

/// The `--config` path of a command line.
fn config_arg(words: &[&str]) -> PathBuf {
    let i = words
        .iter()
        .position(|w| *w == "--config")
        .expect("a --config argument");
    PathBuf::from(words[i + 1])
}

#[test]
fn the_unit_passes_systemd_analyze_verify_with_no_warnings() {
    if !external("systemd-analyze", "systemd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let verify = |text: &str| {
        // The unit as installed, with the binary it runs where this build put it (verify checks
        // that the command exists and is executable).
        let path = dir.path().join("webprom-edge.service");
        std::fs::write(&path, text.replace(INSTALLED_BIN, bin())).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .env("SYSTEMD_LOG_COLOR", "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), stderr)
    };
    let unit = read(UNIT);
    assert!(
        unit.contains(INSTALLED_BIN),
        "the unit runs {INSTALLED_BIN}"
    );
    let (ok, stderr) = verify(&unit);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("webprom-edge.service"))
        .collect();
    assert!(
        ok && about_unit.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );

    // The check sees a mistake: a misspelt value is only a warning, which the assertion above
    // would have caught.
    let (_, stderr) = verify(&unit.replace("ProtectSystem=strict", "ProtectSystem=strcit"));
    assert!(
        stderr.contains("webprom-edge.service"),
        "a bad value gives a warning naming the unit:\n{stderr}"
    );
}

#[test]
fn the_unit_has_the_hardening_that_matters() {
    // (key, the one value it must have): each row one directive.
    let rows: &[(&str, &str)] = &[
        ("Type", "simple"),
        ("User", "webprom-edge"),
        ("Group", "webprom-edge"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0027"),
        ("StateDirectory", "webprom-edge"),
        ("StateDirectoryMode", "0700"),
        ("LogsDirectory", "webprom-edge"),
        ("LogsDirectoryMode", "0750"),
        ("ConfigurationDirectory", "webprom-edge"),
    ];
    let mut wrong = Vec::new();
    for (key, want) in rows {
        let got = service_values(key);
        if got != [*want] {
            wrong.push(format!("{key}: want [{want}], got {got:?}"));
        }
    }
    // A dynamic user puts state and logs under a 0700 directory no log shipper can enter.
    if !service_values("DynamicUser").is_empty() {
        wrong.push("DynamicUser: the service has a fixed user".to_owned());
    }
    assert!(wrong.is_empty(), "{UNIT}:\n{}", wrong.join("\n"));
}

#[test]
fn the_units_user_is_created_by_the_sysusers_file() {
    let user = service_value("User");
    let created: Vec<String> = read(SYSUSERS)
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("u")).then(|| words.next().unwrap_or("").to_owned())
        })
        .collect();
    assert_eq!(
        created,
        std::slice::from_ref(&user),
        "{SYSUSERS} creates the user"
    );
    // `u NAME` creates the group of the same name too.
    assert_eq!(service_value("Group"), user);
}

#[test]
fn the_unit_waits_longer_than_the_configs_shutdown_grace_before_killing() {
    let grace =
        humantime::parse_duration(&config_str(&config(), "server", "shutdown_grace")).unwrap();
    let stop = humantime::parse_duration(&service_value("TimeoutStopSec")).unwrap();
    assert!(
        stop > grace && stop <= grace + Duration::from_secs(30),
        "TimeoutStopSec {stop:?} should be a little more than shutdown_grace {grace:?}"
    );
}

#[test]
fn the_production_configs_paths_are_the_units_directories() {
    let state = Path::new("/var/lib").join(service_value("StateDirectory"));
    let logs = Path::new("/var/log").join(service_value("LogsDirectory"));
    let etc = Path::new("/etc").join(service_value("ConfigurationDirectory"));
    let exec = service_value("ExecStart");
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(words[..2], [INSTALLED_BIN, "run"], "ExecStart: {exec}");
    // (config key, the directory it must be in): each row one path.
    let rows: &[(&str, &Path)] = &[
        ("--config", &etc),
        ("tls.cert", &etc),
        ("tls.key", &etc),
        ("geoip.database", &state),
        ("privacy.key_dir", &state),
        ("access_log.dir", &logs),
    ];
    let mut paths = config_paths();
    paths.push(("--config", config_arg(&words)));
    let mut wrong = Vec::new();
    for (key, dir) in rows {
        let path = &paths.iter().find(|(k, _)| k == key).unwrap().1;
        if !path.starts_with(dir) {
            wrong.push(format!(
                "{key} = {} is not under {}",
                path.display(),
                dir.display()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Every path the config names has its row.
    assert_eq!(paths.len(), rows.len());

    let c = config();
    let admin: SocketAddr = config_str(&c, "admin", "listen").parse().unwrap();
    assert!(
        admin.ip().is_loopback(),
        "admin.listen {admin} is on loopback"
    );
    let listen: SocketAddr = config_str(&c, "server", "listen").parse().unwrap();
    assert_eq!(listen.port(), 443, "server.listen");
    assert_eq!(
        c["tls"]["self_signed"].as_bool(),
        Some(false),
        "tls.self_signed"
    );
}

#[test]
fn the_production_config_passes_check_config() {
    // The installed layout, under a temporary root: the operator's certificate and the GeoIP
    // database in place, the state and log directories not yet created (the proxy creates them).
    let root = tempfile::tempdir().unwrap();
    let moved = |p: &str| root.path().join(p.trim_start_matches('/'));
    let hosts: Vec<String> = config()["server"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect();
    let text = [
        "/etc/webprom-edge",
        "/var/lib/webprom-edge",
        "/var/log/webprom-edge",
    ]
    .iter()
    .fold(read(CONFIG), |text, dir| {
        text.replace(dir, &moved(dir).display().to_string())
    });
    let c: toml::Table = text.parse().unwrap();
    let cert = rcgen::generate_simple_self_signed(hosts).unwrap();
    for (key, bytes) in [
        ("cert", cert.cert.pem()),
        ("key", cert.key_pair.serialize_pem()),
    ] {
        let path = PathBuf::from(config_str(&c, "tls", key));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let geo = PathBuf::from(config_str(&c, "geoip", "database"));
    std::fs::create_dir_all(geo.parent().unwrap()).unwrap();
    std::fs::copy(repo("config/geo/country.mmdb"), &geo).unwrap();
    let config_path = moved("/etc/webprom-edge/config.toml");
    std::fs::write(&config_path, &text).unwrap();

    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check-config {CONFIG}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every path was under one of the three directories, so none is left outside the root.
    for outside in ["/etc/", "/var/", "/usr/", "/opt/"] {
        assert!(
            !stdout.contains(&format!("\"{outside}")),
            "{CONFIG} names a path under {outside} outside the unit's directories:\n{stdout}"
        );
    }
}

/// The Dockerfile's instructions `(NAME, arguments)`, continuation lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in read("Dockerfile").lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                pending.push_str(line);
                let (name, args) = pending.split_once(' ').unwrap_or((&pending, ""));
                out.push((name.to_ascii_uppercase(), args.trim().to_owned()));
                pending.clear();
            }
        }
    }
    out
}

/// A JSON-array instruction's words (`["a", "b"]`), or its whitespace-separated words.
fn words(args: &str) -> Vec<String> {
    match serde_json::from_str::<Vec<String>>(args) {
        Ok(list) => list,
        Err(_) => args.split_whitespace().map(str::to_owned).collect(),
    }
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_as_a_non_root_user_in_another() {
    let steps = dockerfile();
    let froms = steps.iter().filter(|(n, _)| n == "FROM").count();
    assert!(froms >= 2, "a multi-stage build: {froms} FROM");
    let last_from = steps.iter().rposition(|(n, _)| n == "FROM").unwrap();
    let users: Vec<&str> = steps[last_from..]
        .iter()
        .filter(|(n, _)| n == "USER")
        .map(|(_, a)| a.as_str())
        .collect();
    let user = users.last().expect("a USER in the runtime stage");
    let name = user.split(':').next().unwrap();
    assert!(
        !["root", "0", ""].contains(&name),
        "the runtime stage runs as {user}"
    );
    let value = |name: &str| {
        steps
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.clone())
            .unwrap_or_default()
    };
    assert_eq!(value("STOPSIGNAL"), "SIGTERM");
    let listen: SocketAddr = config_str(&config(), "server", "listen").parse().unwrap();
    assert!(
        words(&value("EXPOSE")).contains(&listen.port().to_string()),
        "EXPOSE {}",
        value("EXPOSE")
    );
    let command: Vec<String> = [words(&value("ENTRYPOINT")), words(&value("CMD"))].concat();
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    assert_eq!(command[..2], [INSTALLED_BIN, "run"], "{command:?}");
    assert_eq!(
        config_arg(&command),
        config_arg(
            &service_value("ExecStart")
                .split_whitespace()
                .collect::<Vec<_>>()
        ),
        "the image and the unit read the same config"
    );
}

#[test]
fn the_dockerfiles_volumes_are_the_directories_the_config_uses() {
    let volumes: BTreeSet<PathBuf> = dockerfile()
        .iter()
        .filter(|(n, _)| n == "VOLUME")
        .flat_map(|(_, a)| words(a))
        .map(PathBuf::from)
        .collect();
    let mut paths = config_paths();
    paths.push(("--config", PathBuf::from("/etc/webprom-edge/config.toml")));
    // Each path is in exactly one volume...
    let mut used = BTreeSet::new();
    for (key, path) in &paths {
        let holding: Vec<&PathBuf> = volumes.iter().filter(|v| path.starts_with(v)).collect();
        assert_eq!(
            holding.len(),
            1,
            "{key} = {} in {holding:?}",
            path.display()
        );
        used.insert(holding[0].clone());
    }
    // ... and each volume holds one of them: the unit's three directories.
    assert_eq!(used, volumes);
    let expected: BTreeSet<PathBuf> = [
        Path::new("/etc").join(service_value("ConfigurationDirectory")),
        Path::new("/var/lib").join(service_value("StateDirectory")),
        Path::new("/var/log").join(service_value("LogsDirectory")),
    ]
    .into();
    assert_eq!(volumes, expected);
}

#[test]
fn the_dockerignore_keeps_build_output_and_secrets_out_of_the_build() {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect();
    // Docker's rules for the pattern shapes used: a name excludes that top-level path and all
    // under it; `**/*.ext` excludes every file with that extension.
    let excluded = |path: &str| {
        patterns.iter().any(|p| match p.strip_prefix("**/*") {
            Some(ext) => path.ends_with(ext),
            None => path == p || path.starts_with(&format!("{p}/")),
        })
    };
    // (path, what it is): each row a file the build must never see.
    let rows = [
        ("target/debug/webprom-edge", "build output"),
        ("state/keys/2026-01-01.key", "a pseudonym key"),
        ("logs/access-2026-01-01.jsonl", "the access log"),
        ("certs/dev-key.pem", "the development TLS key"),
        ("certs/dev-cert.pem", "the development certificate"),
        ("config/tls/key.pem", "a key put anywhere else"),
        ("server.key", "a key at the root"),
    ];
    let leaked: Vec<String> = rows
        .iter()
        .filter(|(path, _)| !excluded(path))
        .map(|(path, what)| format!("{path} ({what})"))
        .collect();
    assert!(leaked.is_empty(), ".dockerignore lets in: {leaked:?}");
    // What the build needs stays in.
    for needed in [
        "Cargo.toml",
        "src/main.rs",
        "dist/config.toml",
        "config/geo/country.mmdb",
    ] {
        assert!(!excluded(needed), ".dockerignore excludes {needed}");
    }
}

//! Bad files and directories in the configuration fail early (issue 12 §5): `check-config` finds
//! every one of them, and `check-config` and `run` both exit 2 with a message naming the config
//! key, the path and one reason, before anything is written.
//!
//! "Not writable by the service user": when the tests run as root, permission bits do not stop
//! root, so those rows run both commands as `nobody` (uid 65534) against a directory of mode 0555
//! owned by root; run as another user, the same mode stops that user. The check itself never
//! reads permission bits: it creates (and removes) a probe file, so it is right for root, ACLs
//! and read-only mounts alike.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{base_config, bin, is_root, mkfifo, mmdb, set};
use webprom_edge::epoch::Epoch;

/// Everything under `dir`: (path, kind, length), so a test can tell nothing was created.
fn tree(dir: &Path) -> Vec<(PathBuf, String, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                todo.push(e.path());
            }
            out.push((e.path(), format!("{:?}", meta.file_type()), meta.len()));
        }
    }
    out.sort();
    out
}

/// Whether the service-user rows can run here: as root, `nobody` must be able to run the
/// binary (a checkout under a private home directory stops it). Without that those rows are
/// skipped with a message, unless `WEBPROM_EDGE_REQUIRE_EXTERNAL=1`, where the test fails.
fn service_user_can_run() -> bool {
    if !is_root() {
        return true;
    }
    let ok = Command::new(bin())
        .arg("--version")
        .uid(65534)
        .gid(65534)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("WEBPROM_EDGE_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
            panic!(
                "uid 65534 cannot run {} (WEBPROM_EDGE_REQUIRE_EXTERNAL=1)",
                bin()
            );
        }
        eprintln!(
            "SKIPPED: the service-user rows (uid 65534 cannot run {})",
            bin()
        );
    }
    ok
}

/// Runs the binary with `args`, as `nobody` when `as_service_user` and the tests run as root;
/// returns (exit code, stderr). A process still running after 30 s is killed: exit code -1.
fn webprom_edge(args: &[&str], config: &Path, as_service_user: bool) -> (i32, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .current_dir(config.parent().unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if as_service_user && is_root() {
        cmd.uid(65534).gid(65534);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (
                -1,
                "still running after 30 s (hung, or accepted the config)".into(),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code().unwrap_or(-1), stderr)
}

fn mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A good country database at `<dir>/country.mmdb`.
fn good_geo(dir: &Path) -> Vec<u8> {
    let path = dir.join("country.mmdb");
    mmdb::write_country_db(&path, &[("198.51.100.0/24", "AL")], mmdb::Schema::MaxMind);
    std::fs::read(path).unwrap()
}

/// A certificate and key at `<dir>/cert.pem` and `<dir>/key.pem`, readable by all (so the
/// service user can load them), and a config that uses them without generating any.
fn certificates(dir: &Path, config: &str) -> String {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), c.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), c.key_pair.serialize_pem()).unwrap();
    mode(&dir.join("key.pem"), 0o644);
    set(config, "tls", "self_signed", "false")
}

fn key_file(dir: &Path, day: Epoch) -> PathBuf {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    keys.join(format!("{day}.key"))
}

fn today_key(dir: &Path) -> PathBuf {
    key_file(dir, Epoch::today())
}

/// One bad configuration: what it is, how to make it in `dir` from the base config (returns
/// the config text), the config key the message must name, the path it must name (relative to
/// `dir`), and whether it is about what the service user may do.
struct Row {
    what: &'static str,
    make: fn(&Path, String) -> String,
    key: &'static str,
    path: &'static str,
    as_service_user: bool,
}

fn row(
    what: &'static str,
    key: &'static str,
    path: &'static str,
    make: fn(&Path, String) -> String,
) -> Row {
    Row {
        what,
        make,
        key,
        path,
        as_service_user: false,
    }
}

fn as_service_user(mut r: Row) -> Row {
    r.as_service_user = true;
    r
}

fn rows() -> Vec<Row> {
    vec![
        // geoip.database
        row(
            "GeoIP file of random bytes",
            "geoip.database",
            "country.mmdb",
            |d, c| {
                let mut bytes = vec![0u8; 4096];
                getrandom::fill(&mut bytes).unwrap();
                std::fs::write(d.join("country.mmdb"), bytes).unwrap();
                c
            },
        ),
        row(
            "GeoIP file empty",
            "geoip.database",
            "country.mmdb",
            |d, c| {
                std::fs::write(d.join("country.mmdb"), b"").unwrap();
                c
            },
        ),
        row(
            "GeoIP file truncated",
            "geoip.database",
            "country.mmdb",
            |d, c| {
                let good = good_geo(d);
                std::fs::write(d.join("country.mmdb"), &good[..good.len() / 2]).unwrap();
                c
            },
        ),
        row(
            "GeoIP path a directory",
            "geoip.database",
            "country.mmdb",
            |d, c| {
                std::fs::create_dir(d.join("country.mmdb")).unwrap();
                c
            },
        ),
        row(
            "GeoIP file missing",
            "geoip.database",
            "country.mmdb",
            |_, c| c,
        ),
        row(
            "GeoIP path a named pipe",
            "geoip.database",
            "country.mmdb",
            |d, c| {
                mkfifo(&d.join("country.mmdb"));
                c
            },
        ),
        as_service_user(row(
            "GeoIP file unreadable by the service user",
            "geoip.database",
            "country.mmdb",
            |d, c| {
                good_geo(d);
                mode(&d.join("country.mmdb"), 0o000);
                certificates(d, &c)
            },
        )),
        // key files in privacy.key_dir
        row("key file of garbage", "privacy.key_dir", "keys/", |d, c| {
            std::fs::write(today_key(d), [0x5au8; 64]).unwrap();
            c
        }),
        row(
            "key file of 10 hex digits",
            "privacy.key_dir",
            "keys/",
            |d, c| {
                std::fs::write(today_key(d), b"0123456789").unwrap();
                c
            },
        ),
        row("key file empty", "privacy.key_dir", "keys/", |d, c| {
            std::fs::write(today_key(d), b"").unwrap();
            c
        }),
        row(
            "key file of 31 raw bytes",
            "privacy.key_dir",
            "keys/",
            |d, c| {
                std::fs::write(today_key(d), [7u8; 31]).unwrap();
                c
            },
        ),
        row(
            "key file a directory",
            "privacy.key_dir",
            "keys/",
            |d, c| {
                std::fs::create_dir(today_key(d)).unwrap();
                c
            },
        ),
        row(
            "key file a named pipe",
            "privacy.key_dir",
            "keys/",
            |d, c| {
                mkfifo(&today_key(d));
                c
            },
        ),
        row(
            "yesterday's key file of garbage",
            "privacy.key_dir",
            "keys/",
            |d, c| {
                std::fs::write(key_file(d, Epoch::today().prev()), b"garbage").unwrap();
                c
            },
        ),
        as_service_user(row(
            "key file unreadable by the service user",
            "privacy.key_dir",
            "keys/",
            |d, c| {
                std::fs::write(today_key(d), "ab".repeat(32)).unwrap();
                mode(&today_key(d), 0o000);
                mode(&d.join("keys"), 0o777);
                good_geo(d);
                certificates(d, &c)
            },
        )),
        // privacy.key_dir itself
        row(
            "key directory a regular file",
            "privacy.key_dir",
            "keys",
            |d, c| {
                std::fs::write(d.join("keys"), b"").unwrap();
                c
            },
        ),
        row(
            "key directory below a regular file",
            "privacy.key_dir",
            "file",
            |d, c| {
                std::fs::write(d.join("file"), b"").unwrap();
                set(
                    &c,
                    "privacy",
                    "key_dir",
                    &format!("{:?}", d.join("file/keys")),
                )
            },
        ),
        as_service_user(row(
            "key directory not writable by the service user",
            "privacy.key_dir",
            "keys",
            |d, c| {
                std::fs::create_dir(d.join("keys")).unwrap();
                mode(&d.join("keys"), 0o555);
                std::fs::create_dir(d.join("logs")).unwrap();
                mode(&d.join("logs"), 0o777);
                good_geo(d);
                certificates(d, &c)
            },
        )),
        // access_log.dir
        row(
            "log directory a regular file",
            "access_log.dir",
            "logs",
            |d, c| {
                std::fs::write(d.join("logs"), b"").unwrap();
                c
            },
        ),
        row(
            "log directory below a regular file",
            "access_log.dir",
            "file",
            |d, c| {
                std::fs::write(d.join("file"), b"").unwrap();
                set(
                    &c,
                    "access_log",
                    "dir",
                    &format!("{:?}", d.join("file/logs")),
                )
            },
        ),
        as_service_user(row(
            "log directory not writable by the service user",
            "access_log.dir",
            "logs",
            |d, c| {
                std::fs::create_dir(d.join("keys")).unwrap();
                mode(&d.join("keys"), 0o777);
                std::fs::create_dir(d.join("logs")).unwrap();
                mode(&d.join("logs"), 0o555);
                good_geo(d);
                certificates(d, &c)
            },
        )),
        // tls.cert and tls.key
        row("certificate of garbage", "tls.cert", "cert.pem", |d, c| {
            let c = certificates(d, &c);
            std::fs::write(d.join("cert.pem"), [0x5au8; 500]).unwrap();
            c
        }),
        row("key a directory", "tls.key", "key.pem", |d, c| {
            let c = certificates(d, &c);
            std::fs::remove_file(d.join("key.pem")).unwrap();
            std::fs::create_dir(d.join("key.pem")).unwrap();
            c
        }),
        row(
            "certificate to generate below a regular file",
            "tls.cert",
            "file",
            |d, c| {
                std::fs::write(d.join("file"), b"").unwrap();
                set(&c, "tls", "cert", &format!("{:?}", d.join("file/cert.pem")))
            },
        ),
        as_service_user(row(
            "certificate to generate where the service user cannot write",
            "tls.cert",
            "ro/cert.pem",
            |d, c| {
                std::fs::create_dir(d.join("ro")).unwrap();
                mode(&d.join("ro"), 0o555);
                good_geo(d);
                set(&c, "tls", "cert", &format!("{:?}", d.join("ro/cert.pem")))
            },
        )),
    ]
}

#[test]
fn bad_files_and_directories_exit_2_naming_the_key_and_path_and_write_nothing() {
    let mut failures = Vec::new();
    let service_user = service_user_can_run();
    for r in rows()
        .into_iter()
        .filter(|r| service_user || !r.as_service_user)
    {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // The service user must be able to reach the directory and read the config.
        mode(d, 0o755);
        let base = base_config(d, "http://127.0.0.1:8080");
        if r.path != "country.mmdb" {
            good_geo(d);
        }
        let config = (r.make)(d, base);
        let config_path = d.join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let before = tree(d);
        let named = d.join(r.path).display().to_string();

        for args in [&["check-config"][..], &["run"][..]] {
            let (code, stderr) = webprom_edge(args, &config_path, r.as_service_user);
            let what = format!("{} ({})", r.what, args[0]);
            let message = stderr
                .lines()
                .find(|l| l.starts_with("webprom-edge: "))
                .unwrap_or_default();
            eprintln!("{what}: exit {code}: {message}");
            let mut wrong = Vec::new();
            if code != 2 {
                wrong.push(format!("exit {code}"));
            }
            if !message.contains(&format!("`{}`", r.key)) {
                wrong.push(format!("`{}` not named", r.key));
            }
            if !message.contains(&named) {
                wrong.push("path not named".to_owned());
            }
            if message.matches("os error").count() > 1 {
                wrong.push("OS error repeated".to_owned());
            }
            if tree(d) != before {
                wrong.push("something was written".to_owned());
            }
            if !wrong.is_empty() {
                failures.push(format!("{what}: {}\n    {stderr}", wrong.join(", ")));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} checks failed:\n{}",
        failures.len(),
        2 * rows().len(),
        failures.join("\n")
    );
}

#[test]
fn a_config_path_that_is_not_a_regular_file_exits_2_naming_it_without_waiting() {
    /// Makes what is at the config path.
    type Make = fn(&Path);
    // (what is at the config path, how it is made)
    let rows: [(&str, Make); 3] = [
        ("a named pipe", mkfifo),
        ("a directory", |p| std::fs::create_dir(p).unwrap()),
        ("nothing", |_| {}),
    ];
    for (what, make) in rows {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("config.toml");
        make(&config_path);
        for command in ["check-config", "run"] {
            // A hang shows as exit -1 (killed after 30 s).
            let (code, stderr) = webprom_edge(&[command], &config_path, false);
            let what = format!("{what} ({command})");
            assert_eq!(code, 2, "{what}: {stderr}");
            assert!(
                stderr.contains(&config_path.display().to_string()),
                "{what}: {stderr}"
            );
        }
    }
}

/// The same files, good: `check-config` accepts them, and `run` may then create what is
/// missing (the key directory, the log directory, a development certificate).
#[test]
fn good_files_pass_check_config_and_it_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    good_geo(d);
    std::fs::write(today_key(d), "ab".repeat(32)).unwrap();
    std::fs::write(key_file(d, Epoch::today().prev()), [1u8; 32]).unwrap();
    let config_path = d.join("config.toml");
    std::fs::write(&config_path, base_config(d, "http://127.0.0.1:8080")).unwrap();
    let before = tree(d);
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tree(d), before, "check-config wrote something");
}

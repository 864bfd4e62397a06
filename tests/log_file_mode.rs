//! Who can read the access log (issue 13): `access_log.file_mode` and `access_log.group`, as
//! `check-config` takes them, as the running proxy applies them to the day files and the log
//! directory whatever its umask, as `erase` keeps them, and the pseudonym keys staying 0600
//! (their directory 0700) whatever they say.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::*;
use webprom_edge::privacy::keys::{Key, pseudonym};

/// The permission bits of `path` (with setuid, setgid and sticky).
fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn gid(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().gid()
}

/// The process's effective group id.
fn own_gid() -> u32 {
    // SAFETY: no arguments; cannot fail.
    unsafe { libc::getegid() }
}

/// `/etc/group` as (name, gid) pairs.
fn groups() -> Vec<(String, u32)> {
    std::fs::read_to_string("/etc/group")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?.to_owned();
            let _pw = f.next()?;
            Some((name, f.next()?.parse().ok()?))
        })
        .collect()
}

/// A group this process is not in (as root: may still give files that group).
fn foreign_group() -> Option<(String, u32)> {
    // SAFETY: with 0 the call returns the count and writes nothing.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    let mut mine = vec![0 as libc::gid_t; n.max(0) as usize];
    // SAFETY: `mine` holds `n` entries.
    let n = unsafe { libc::getgroups(n, mine.as_mut_ptr()) };
    mine.truncate(n.max(0) as usize);
    groups()
        .into_iter()
        .find(|(_, g)| *g != own_gid() && !mine.contains(g))
}

/// A directory with the test config edited by `edit`.
fn config_dir(edit: impl FnOnce(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config = edit(base_config(dir.path(), "http://127.0.0.1:9"));
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    write_test_geo(dir.path());
    dir
}

/// Runs the binary with `--config <dir>/config.toml` under `umask`: (status, stdout, stderr).
fn tool(dir: &Path, umask: u32, command: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = tool_command(dir, command, args);
    with_umask(&mut cmd, umask);
    output_text(&mut cmd)
}

fn with_umask(cmd: &mut Command, umask: u32) {
    // SAFETY: umask is async-signal-safe and touches nothing of the parent.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(umask as libc::mode_t);
            Ok(())
        });
    }
}

fn with_access_log(edit: &[(&str, &str)]) -> impl FnOnce(String) -> String {
    let edit: Vec<(String, String)> = edit
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |mut c| {
        for (k, v) in edit {
            c = set(&c, "access_log", &k, &v);
        }
        c
    }
}

#[test]
fn check_config_takes_only_modes_that_keep_others_out_and_names_the_key() {
    // (value as written in TOML, Ok(shown by check-config) or Err(part of the reason))
    let rows: [(&str, Result<&str, &str>); 26] = [
        ("\"0640\"", Ok("\"0640\"")),
        ("\"0600\"", Ok("\"0600\"")),
        ("\"0660\"", Ok("\"0660\"")),
        ("\"640\"", Ok("\"640\"")),
        ("\"600\"", Ok("\"600\"")),
        ("\"660\"", Ok("\"660\"")),
        ("\"0644\"", Err("others")),
        ("\"0666\"", Err("others")),
        ("\"0604\"", Err("others")),
        ("\"0641\"", Err("others")),
        ("\"0700\"", Err("owner execute")),
        ("\"0755\"", Err("owner execute")),
        ("\"0650\"", Err("group execute")),
        ("\"0620\"", Err("group write without group read")),
        ("\"0440\"", Err("the owner must read and write")),
        ("\"0200\"", Err("the owner must read and write")),
        ("\"4640\"", Err("setuid, setgid or sticky")),
        ("\"2640\"", Err("setuid, setgid or sticky")),
        ("\"1640\"", Err("setuid, setgid or sticky")),
        ("\"0o640\"", Err("octal digits")),
        ("\"\"", Err("octal digits")),
        ("\"abc\"", Err("octal digits")),
        ("\"08\"", Err("octal digits")),
        ("\"0680\"", Err("octal digits")),
        ("640", Err("decimal")),
        ("0.64", Err("octal")),
    ];
    for (value, want) in rows {
        let dir = config_dir(with_access_log(&[("file_mode", value)]));
        let (code, out, err) = tool(dir.path(), 0o022, "check-config", &[]);
        match want {
            Ok(shown) => {
                assert_eq!(code, 0, "{value}: {err}");
                assert!(
                    out.contains(&format!("file_mode = {shown}")),
                    "{value}: {out}"
                );
            }
            Err(reason) => {
                assert_eq!(code, 2, "{value}: {out}{err}");
                assert!(err.contains("`access_log.file_mode`"), "{value}: {err}");
                assert!(err.contains(reason), "{value}: {err}");
            }
        }
    }
}

#[test]
fn check_config_resolves_the_group_and_names_the_key_when_it_cannot_be_used() {
    let own = own_gid();
    let own_name = groups()
        .into_iter()
        .find(|(_, g)| *g == own)
        .map(|(n, _)| n);
    // (value as written in TOML, Ok(()) or Err(part of the reason))
    let mut rows: Vec<(String, Result<(), &str>)> = vec![
        (own.to_string(), Ok(())),
        (format!("\"{own}\""), Ok(())),
        ("\"no-such-group-webprom\"".into(), Err("does not exist")),
        ("\"4000000000\"".into(), Err("does not exist")),
        ("\"\"".into(), Err("not a group name")),
        ("\"a b\"".into(), Err("not a group name")),
        ("-1".into(), Err("out of range")),
        ("99999999999".into(), Err("out of range")),
    ];
    if let Some(name) = own_name {
        rows.push((format!("\"{name}\""), Ok(())));
    }
    if let Some((name, _)) = foreign_group() {
        let want = if is_root() {
            Ok(())
        } else {
            Err("may not give files that group")
        };
        rows.push((format!("\"{name}\""), want));
    }
    for (value, want) in rows {
        let dir = config_dir(with_access_log(&[("group", &value)]));
        let (code, out, err) = tool(dir.path(), 0o022, "check-config", &[]);
        match want {
            Ok(()) => {
                assert_eq!(code, 0, "{value}: {err}");
                assert!(out.contains("group = "), "{value}: {out}");
            }
            Err(reason) => {
                assert_eq!(code, 2, "{value}: {out}{err}");
                assert!(err.contains("`access_log.group`"), "{value}: {err}");
                assert!(err.contains(reason), "{value}: {err}");
            }
        }
    }
}

#[tokio::test]
async fn run_with_a_group_that_does_not_exist_exits_2_naming_the_key() {
    let dir = config_dir(with_access_log(&[("group", "\"no-such-group-webprom\"")]));
    let (code, _, err) = tool(dir.path(), 0o022, "run", &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`access_log.group`"), "{err}");
    assert!(!dir.path().join("logs").exists(), "nothing written");
}

/// Starts the proxy in `dir` under `umask`, sends one request, waits for its record.
async fn one_record(dir: tempfile::TempDir, umask: u32) -> Proxy {
    let up = Upstream::start().await;
    let text = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
    let text = set(&text, "upstream", "servers", &format!("[\"{}\"]", up.url()));
    std::fs::write(dir.path().join("config.toml"), text).unwrap();
    let proxy = Proxy::spawn_with(dir, |cmd| with_umask(cmd, umask)).await;
    let resp = proxy.client().get(Proto::H1, "/").await;
    assert_eq!(resp.status, 200);
    proxy.wait_records(1).await;
    proxy
}

#[tokio::test]
async fn a_created_day_file_has_exactly_the_mode_whatever_the_umask() {
    // (file_mode, umask, the day file's mode, the log directory's mode)
    let rows = [
        ("0640", 0o077, 0o640, 0o750),
        ("0640", 0o022, 0o640, 0o750),
        ("0640", 0o000, 0o640, 0o750),
        ("0660", 0o077, 0o660, 0o750),
        ("0660", 0o022, 0o660, 0o750),
        ("0600", 0o077, 0o600, 0o700),
        ("0600", 0o000, 0o600, 0o700),
        ("640", 0o027, 0o640, 0o750),
    ];
    for (file_mode, umask, want_file, want_dir) in rows {
        let dir = config_dir(with_access_log(&[(
            "file_mode",
            &format!("\"{file_mode}\""),
        )]));
        let mut proxy = one_record(dir, umask).await;
        let what = format!("file_mode {file_mode}, umask {umask:03o}");
        assert_eq!(mode(&day_file(&proxy)), want_file, "{what}");
        assert_eq!(mode(&proxy.path("logs")), want_dir, "{what}");
        assert_eq!(gid(&day_file(&proxy)), own_gid(), "{what}");
        proxy.signal("TERM");
        proxy.wait_exit(std::time::Duration::from_secs(10));
    }
}

#[tokio::test]
async fn the_day_file_and_a_created_directory_get_the_configured_group() {
    let own = own_gid();
    // (group as written, the gid the files get)
    let mut rows: Vec<(String, u32)> = vec![(own.to_string(), own), (format!("\"{own}\""), own)];
    if let Some((name, _)) = groups().into_iter().find(|(_, g)| *g == own) {
        rows.push((format!("\"{name}\""), own));
    }
    // Only root may give a group it is not in; as another user check_config's rows cover it.
    if is_root()
        && let Some((name, g)) = foreign_group()
    {
        rows.push((format!("\"{name}\""), g));
        rows.push((g.to_string(), g));
    }
    for (group, want) in rows {
        let dir = config_dir(with_access_log(&[("group", &group)]));
        let mut proxy = one_record(dir, 0o077).await;
        assert_eq!(gid(&day_file(&proxy)), want, "group {group}");
        assert_eq!(mode(&day_file(&proxy)), 0o640, "group {group}");
        assert_eq!(gid(&proxy.path("logs")), want, "group {group}");
        assert_eq!(mode(&proxy.path("logs")), 0o750, "group {group}");
        proxy.signal("TERM");
        proxy.wait_exit(std::time::Duration::from_secs(10));
    }
}

#[tokio::test]
async fn an_existing_day_file_follows_the_configured_mode_and_group_at_start() {
    let group = if is_root() {
        foreign_group().map_or(own_gid(), |(_, g)| g)
    } else {
        own_gid()
    };
    // (file_mode, the mode the file had, the mode it has after start)
    let rows = [
        ("0640", 0o600, 0o640),
        ("0640", 0o644, 0o640),
        ("0640", 0o666, 0o640),
        ("0600", 0o640, 0o600),
        ("0660", 0o600, 0o660),
    ];
    for (file_mode, before, after) in rows {
        let dir = config_dir(with_access_log(&[
            ("file_mode", &format!("\"{file_mode}\"")),
            ("group", &group.to_string()),
        ]));
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = logs.join(format!("access-{}.jsonl", today_string()));
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(before)).unwrap();
        // Changed at start, before any record arrives.
        let up = Upstream::start().await;
        let text = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
        let text = set(&text, "upstream", "servers", &format!("[\"{}\"]", up.url()));
        std::fs::write(dir.path().join("config.toml"), text).unwrap();
        let mut proxy = Proxy::spawn_with(dir, |cmd| with_umask(cmd, 0o077)).await;
        let what = format!("file_mode {file_mode}, was {before:04o}");
        assert_eq!(mode(&path), after, "{what}");
        assert_eq!(gid(&path), group, "{what}");
        // The operator's directory is left as it was.
        assert_eq!(mode(&logs), 0o755, "{what}");
        proxy.signal("TERM");
        proxy.wait_exit(std::time::Duration::from_secs(10));
    }
}

/// Makes a character device node (as `/dev/null`: 1, 3) at `path`, mode 0666; false when this
/// process may not (not root).
fn mknod_null(path: &Path) -> bool {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string; the call only creates a node.
    let made = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) } == 0;
    made && std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).is_ok()
}

#[tokio::test]
async fn a_day_file_path_that_is_a_link_or_a_device_never_passes_the_mode_or_group_on() {
    let group = if is_root() {
        foreign_group().map_or(own_gid(), |(_, g)| g)
    } else {
        own_gid()
    };
    // (what is planted at today's day file path, the mode of what the proxy must not change)
    let rows: [(&str, u32); 4] = [
        (
            "a link to a file of mode 0600 outside the log directory",
            0o600,
        ),
        (
            "a link to a file of mode 0666 outside the log directory",
            0o666,
        ),
        ("a link to a device node", 0o666),
        ("a device node", 0o666),
    ];
    for (what, before) in rows {
        let dir = config_dir(with_access_log(&[
            ("file_mode", "\"0640\""),
            ("group", &group.to_string()),
        ]));
        let up = Upstream::start().await;
        let text = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
        let text = set(&text, "upstream", "servers", &format!("[\"{}\"]", up.url()));
        std::fs::write(dir.path().join("config.toml"), text).unwrap();
        let mut proxy = Proxy::spawn_with(dir, |cmd| with_umask(cmd, 0o077)).await;
        // Planted while the proxy serves, before the first record opens the day file.
        let logs = proxy.path("logs");
        let path = logs.join(format!("access-{}.jsonl", today_string()));
        let victim = proxy.path("victim");
        if what.contains("device") {
            if !mknod_null(&victim) {
                eprintln!("skipped ({what}): not allowed to make a device node");
                continue;
            }
        } else {
            std::fs::write(&victim, "not a log\n").unwrap();
            std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(before)).unwrap();
        }
        if what.starts_with("a link") {
            std::os::unix::fs::symlink(&victim, &path).unwrap();
        } else {
            std::fs::rename(&victim, &path).unwrap();
            std::os::unix::fs::symlink(&path, &victim).unwrap();
        }
        let victim_gid = std::fs::metadata(&victim).unwrap().gid();
        assert_eq!(proxy.client().get(Proto::H1, "/").await.status, 200);
        let limit = std::time::Duration::from_secs(10);
        let every = std::time::Duration::from_millis(50);
        let out = eventually(
            limit,
            every,
            // Warned about (written through), or refused when more open than file_mode.
            async || {
                Some(proxy.output()).filter(|o| {
                    o.contains("not a regular file") || o.contains("no record is written")
                })
            },
            || format!("{what}: no warning:\n{}", proxy.output()),
        )
        .await;
        assert!(out.contains(&path.display().to_string()), "{what}:\n{out}");
        assert_eq!(mode(&victim), before, "{what}");
        assert_eq!(
            std::fs::metadata(&victim).unwrap().gid(),
            victim_gid,
            "{what}"
        );
        proxy.signal("TERM");
        proxy.wait_exit(std::time::Duration::from_secs(10));
    }
}

/// Changes `path` and everything under it to owner `uid`, group `gid`.
fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    if std::fs::symlink_metadata(path).unwrap().is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

#[tokio::test]
async fn no_record_goes_to_a_day_file_more_open_than_file_mode_that_cannot_be_changed() {
    if !is_root() {
        eprintln!("skipped: needs root to plant a file of another owner and run as nobody");
        return;
    }
    // (what is at today's day file path, its mode; the proxy runs as nobody, so it can write
    // to a file of root only through others' write bit)
    let rows = [
        ("a file of root", 0o666),
        ("a file of root", 0o646),
        ("a file of root", 0o606),
        ("a link to a file of nobody", 0o666),
        ("a link to a file of nobody", 0o644),
    ];
    let nobody = 65534;
    for (what, before) in rows {
        let dir = config_dir(with_access_log(&[("file_mode", "\"0640\"")]));
        let up = Upstream::start().await;
        let text = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
        let text = set(&text, "upstream", "servers", &format!("[\"{}\"]", up.url()));
        std::fs::write(dir.path().join("config.toml"), text).unwrap();
        chown_tree(dir.path(), nobody, nobody);
        let root = dir.path().to_path_buf();
        // Planted while the proxy serves, before the first record opens the day file.
        let mut proxy = Proxy::spawn_with(dir, |cmd| {
            with_umask(cmd, 0o077);
            cmd.uid(nobody).gid(nobody);
        })
        .await;
        let path = root.join(format!("logs/access-{}.jsonl", today_string()));
        let target = if what.starts_with("a link") {
            let t = root.join("elsewhere.jsonl");
            std::os::unix::fs::symlink(&t, &path).unwrap();
            t
        } else {
            path.clone()
        };
        std::fs::write(&target, "").unwrap();
        let owner = if what.contains("of root") { 0 } else { nobody };
        std::os::unix::fs::chown(&target, Some(owner), Some(owner)).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(before)).unwrap();
        let what = format!("{what}, mode {before:04o}");
        assert_eq!(proxy.client().get(Proto::H1, "/").await.status, 200);
        let limit = std::time::Duration::from_secs(10);
        let every = std::time::Duration::from_millis(50);
        let out = eventually(
            limit,
            every,
            async || Some(proxy.output()).filter(|o| o.contains("no record is written")),
            || format!("{what}: not refused:\n{}", proxy.output()),
        )
        .await;
        assert!(out.contains(&path.display().to_string()), "{what}:\n{out}");
        assert_eq!(std::fs::read(&target).unwrap(), b"", "{what}");
        assert_eq!(mode(&target), before, "{what}");
        proxy.signal("TERM");
        proxy.wait_exit(std::time::Duration::from_secs(10));
    }
}

#[tokio::test]
async fn a_log_directory_made_under_a_umask_that_takes_the_owners_bits_away_is_still_exact() {
    if !is_root() {
        eprintln!("skipped: needs root to run the proxy as nobody (root ignores the bits)");
        return;
    }
    let nobody = 65534;
    // (umask of the proxy, running as nobody)
    for umask in [0o477, 0o377, 0o777] {
        let dir = config_dir(|c| c);
        // Made beforehand: the key directory and certificate are not what this test is about.
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("key.pem"),
            certified.key_pair.serialize_pem(),
        )
        .unwrap();
        chown_tree(dir.path(), nobody, nobody);
        let mut proxy = Proxy::spawn_with(dir, |cmd| {
            with_umask(cmd, umask);
            cmd.uid(nobody).gid(nobody);
        })
        .await;
        assert_eq!(mode(&proxy.path("logs")), 0o750, "umask {umask:04o}");
        proxy.signal("TERM");
        proxy.wait_exit(std::time::Duration::from_secs(10));
    }
}

#[tokio::test]
async fn an_operator_directory_the_group_cannot_search_is_left_alone_with_a_warning() {
    // (file_mode, the directory's mode, warned)
    let rows = [
        ("0640", 0o700, true),
        ("0660", 0o700, true),
        ("0640", 0o750, false),
        ("0640", 0o711, false),
        ("0600", 0o700, false),
    ];
    for (file_mode, dir_mode, warned) in rows {
        let dir = config_dir(with_access_log(&[(
            "file_mode",
            &format!("\"{file_mode}\""),
        )]));
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(dir_mode)).unwrap();
        let mut proxy = one_record(dir, 0o022).await;
        let what = format!("file_mode {file_mode}, directory {dir_mode:04o}");
        assert_eq!(mode(&logs), dir_mode, "{what}");
        let out = proxy.output();
        let warnings = out
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("access_log.dir") && l.contains("search"))
            .count();
        assert_eq!(warnings, usize::from(warned), "{what}:\n{out}");
        if warned {
            assert!(out.contains(&logs.display().to_string()), "{what}:\n{out}");
            assert!(out.contains("access_log.file_mode"), "{what}:\n{out}");
        }
        proxy.signal("TERM");
        proxy.wait_exit(std::time::Duration::from_secs(10));
    }
}

#[tokio::test]
async fn the_pseudonym_keys_stay_owner_only_whatever_file_mode_says() {
    // (file_mode, umask)
    let rows = [
        ("0660", 0o000),
        ("0660", 0o022),
        ("0640", 0o000),
        ("0600", 0o077),
    ];
    for (file_mode, umask) in rows {
        let dir = config_dir(with_access_log(&[
            ("file_mode", &format!("\"{file_mode}\"")),
            ("group", &own_gid().to_string()),
        ]));
        let mut proxy = one_record(dir, umask).await;
        let what = format!("file_mode {file_mode}, umask {umask:03o}");
        let keys = proxy.path("keys");
        assert_eq!(mode(&keys), 0o700, "{what}");
        let mut seen = 0;
        for entry in std::fs::read_dir(&keys).unwrap() {
            let path = entry.unwrap().path();
            assert_eq!(mode(&path), 0o600, "{what}: {}", path.display());
            seen += 1;
        }
        assert!(seen > 0, "{what}: no key file");
        proxy.signal("TERM");
        proxy.wait_exit(std::time::Duration::from_secs(10));
    }
}

/// The writer switching day files (the UTC midnight) opens the new one with the configured
/// mode, through the same path as the first file of the run.
#[test]
fn the_next_day_file_gets_the_mode_at_rollover() {
    use webprom_edge::accesslog::AccessLog;
    use webprom_edge::client_ip::ClientAddr;
    use webprom_edge::epoch::Epoch;
    use webprom_edge::metrics::Metrics;
    use webprom_edge::privacy::capture::{Capture, ClientMemo, EpochKey};

    let dir = tempfile::tempdir().unwrap();
    let mut config = webprom_edge::config::Config::default();
    config.geoip.database = "".into();
    config.access_log.dir = dir.path().join("logs");
    config.access_log.file_mode = "0660".parse().unwrap();
    let capture = Capture::new(
        &config,
        EpochKey {
            epoch: Epoch::today(),
            key: Key::from_bytes([9; 32]),
        },
        None,
    )
    .unwrap();
    let obs = || {
        let req = http::Request::get("/").body(()).unwrap();
        let client = ClientAddr::new("198.51.100.7".parse().unwrap());
        capture
            .begin(client, &req, None, &ClientMemo::default())
            .finish(200, 0, false)
    };
    let yesterday = obs().days_earlier(1);
    let metrics = Metrics::new(&[]);
    let log = AccessLog::start(&config.access_log, metrics.log_counters()).unwrap();
    log.record(yesterday);
    log.record(obs());
    log.flush();
    log.shutdown();
    for day in [Epoch::today().prev(), Epoch::today()] {
        let path = config.access_log.dir.join(format!("access-{day}.jsonl"));
        assert_eq!(mode(&path), 0o660, "{day}");
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }
}

#[test]
fn erase_keeps_the_day_files_owner_group_and_mode_whatever_its_umask() {
    let today = today_string();
    let raw = [7u8; 32];
    let key = Key::from_bytes(raw);
    let a = pseudonym(
        &key,
        webprom_edge::client_ip::ClientAddr::new("198.51.100.7".parse().unwrap()),
        64,
    )
    .to_string();
    let b = pseudonym(
        &key,
        webprom_edge::client_ip::ClientAddr::new("203.0.113.9".parse().unwrap()),
        64,
    )
    .to_string();
    let line = |client: &str| {
        format!(
            "{{\"ts\":\"{today}T01:00:00Z\",\"epoch\":\"{today}\",\"client\":\"{client}\",\"net\":\"198.51.100.0/24\",\"country\":null,\"browser\":\"Other\",\"browser_version\":null,\"os\":\"Other\",\"bot\":false,\"lang\":null,\"method\":\"GET\",\"host\":null,\"path\":\"/\",\"status\":200,\"bytes_sent\":5,\"duration_ms\":0.3,\"proto\":\"HTTP/2\",\"limited\":false}}\n"
        )
    };
    let group = if is_root() {
        foreign_group().map_or(own_gid(), |(_, g)| g)
    } else {
        own_gid()
    };
    // (the day file's mode, erase's umask)
    let rows = [
        (0o640, 0o077),
        (0o640, 0o022),
        (0o660, 0o077),
        (0o660, 0o022),
        (0o600, 0o000),
    ];
    for (file_mode, umask) in rows {
        let dir = config_dir(|c| c);
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).unwrap();
        let key_file = keys.join(format!("{today}.key"));
        std::fs::write(&key_file, hex(&raw)).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let path = logs.join(format!("access-{today}.jsonl"));
        std::fs::write(&path, [line(&a), line(&b)].concat()).unwrap();
        std::os::unix::fs::chown(&path, None, Some(group)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file_mode)).unwrap();
        let uid = std::fs::metadata(&path).unwrap().uid();

        let (code, _, err) = tool(dir.path(), umask, "erase", &["--ip", "198.51.100.7"]);
        let what = format!("mode {file_mode:04o}, umask {umask:03o}");
        assert_eq!(code, 0, "{what}: {err}");
        assert!(err.contains("erase: 1 records erased"), "{what}: {err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), line(&b), "{what}");
        assert_eq!(mode(&path), file_mode, "{what}");
        assert_eq!(gid(&path), group, "{what}");
        assert_eq!(std::fs::metadata(&path).unwrap().uid(), uid, "{what}");
        // The audit trail stays owner-only.
        assert_eq!(mode(&logs.join("audit.jsonl")), 0o600, "{what}");
    }
}

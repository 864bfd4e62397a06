//! The quickstart publishes nothing secret (issue 13 §1): the example config listens on loopback
//! only, and the stand-in upstream the README starts (`python3 -m http.server --directory demo`)
//! serves a folder that holds no key, certificate or log, and no link out of it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use webprom_edge::config::Config;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_example_config_listens_on_loopback_only() {
    let config = Config::load(&root().join("config/example.toml")).unwrap();
    let listeners = [
        ("server.listen", Some(config.server.listen)),
        ("server.listen_plain", config.server.listen_plain),
        ("admin.listen", Some(config.admin.listen)),
    ];
    for (key, addr) in listeners {
        if let Some(addr) = addr {
            assert!(addr.ip().is_loopback(), "{key} = {addr} is not loopback");
        }
    }
}

#[test]
fn every_listener_address_in_the_example_config_is_loopback_even_commented_out() {
    // An operator uncommenting `listen_plain` must not open it to the network either.
    let text = std::fs::read_to_string(root().join("config/example.toml")).unwrap();
    let mut seen = Vec::new();
    for line in text.lines() {
        let line = line.trim_start_matches(['#', ' ']);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key != "listen" && key != "listen_plain" {
            continue;
        }
        let addr: SocketAddr = value
            .trim()
            .trim_matches('"')
            .parse()
            .unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(addr.ip().is_loopback(), "{line:?} is not loopback");
        seen.push(key.to_owned());
    }
    // server.listen, admin.listen and the commented listen_plain: the scan saw them all.
    for key in ["listen", "listen_plain"] {
        assert!(seen.iter().any(|k| k == key), "no {key} line found");
    }
    assert!(seen.len() >= 3, "{seen:?}");
}

/// Every entry under `dir`, without following links.
fn entries(dir: &Path) -> Vec<(PathBuf, std::fs::FileType)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let kind = e.file_type().unwrap();
            if kind.is_dir() {
                todo.push(e.path());
            }
            out.push((e.path(), kind));
        }
    }
    out
}

#[test]
fn the_quickstart_upstream_folder_holds_no_key_certificate_log_or_link() {
    let demo = root().join("demo");
    let all = entries(&demo);
    assert!(
        all.iter().any(|(p, _)| p.ends_with("index.html")),
        "demo/index.html is missing: {all:?}"
    );
    // One row per kind of file that must never be served.
    let secret_suffixes = [
        ".key", ".pem", ".crt", ".der", ".p12", ".pfx", ".jsonl", ".log", ".mmdb",
    ];
    for (path, kind) in &all {
        assert!(!kind.is_symlink(), "{} is a link", path.display());
        let name = path.file_name().unwrap().to_string_lossy().to_lowercase();
        for suffix in secret_suffixes {
            assert!(
                !name.ends_with(suffix),
                "{} must not be served",
                path.display()
            );
        }
        // The proxy's own state directories, should one be created in the wrong place.
        for dir in ["keys", "state", "logs", "certs"] {
            assert!(
                !(kind.is_dir() && name == dir),
                "{} must not be served",
                path.display()
            );
        }
    }
}

//! Files an operator touches while the proxy serves (issue 12 §4): the GeoIP database, the
//! access-log day files, pseudonym key files and certificates. Each test is an attack script:
//! the file is truncated, rewritten, deleted or filled with garbage under live traffic, and the
//! proxy must keep serving and recording, report the file by path, and pick up a good file.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};

/// A proxy that believes X-Forwarded-For from loopback, so tests can play any client address.
async fn trusting_proxy(up: &Upstream) -> Proxy {
    Proxy::start_with(
        |c| set(&c, "client_ip", "trusted_proxies", "[\"127.0.0.1\"]"),
        &up.url(),
    )
    .await
}

fn from(ip: &str, path: &str) -> Request<ReqBody> {
    Request::get(format!("https://localhost{path}"))
        .header("x-forwarded-for", ip)
        .body(body(Bytes::new()))
        .unwrap()
}

/// Requests sent by [`Traffic`] and how many were answered 200.
#[derive(Default)]
struct Tally {
    sent: AtomicUsize,
    ok: AtomicUsize,
}

/// Requests from 198.51.100.7 on fresh connections (so each looks its country up), over
/// HTTP/1.1 and HTTP/2 in turn, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(client: Client) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let (s, t) = (stop.clone(), tally.clone());
        let task = tokio::spawn(async move {
            let mut i = 0usize;
            while !s.load(Ordering::Relaxed) {
                let proto = if i % 2 == 0 { Proto::H1 } else { Proto::H2 };
                i += 1;
                t.sent.fetch_add(1, Ordering::SeqCst);
                let resp = client
                    .request(proto, from("198.51.100.7", &format!("/live/{i}")))
                    .await;
                if resp.status == StatusCode::OK {
                    t.ok.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Traffic { stop, tally, task }
    }

    /// Stops, and returns (sent, answered 200); panics if the traffic task panicked (the proxy
    /// went away).
    async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("live traffic kept being answered");
        (
            self.tally.sent.load(Ordering::SeqCst),
            self.tally.ok.load(Ordering::SeqCst),
        )
    }
}

/// Fails the test at once if the proxy process has exited (say, killed by SIGBUS).
fn assert_alive(proxy: &mut Proxy, when: &str) {
    if let Some(status) = proxy.child.try_wait().unwrap() {
        panic!(
            "proxy died {when}: {status:?} (signal {:?})\n{}",
            std::os::unix::process::ExitStatusExt::signal(&status),
            proxy.output()
        );
    }
}

/// Waits (up to 20 s) until `cond` holds, failing at once if the proxy exits meanwhile.
async fn until(proxy: &mut Proxy, what: &str, cond: impl Fn(&Proxy) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert_alive(proxy, what);
        if cond(proxy) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: timed out\n{}",
            proxy.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The country of the newest record from 198.51.100.7 written after the first `skip` records.
fn newest_country(proxy: &Proxy, skip: usize) -> Option<String> {
    let log = proxy.access_log();
    log.lines()
        .skip(skip)
        .filter(|l| field(l, "path").starts_with("/live/"))
        .last()
        .map(|l| field(l, "country"))
}

fn write_db(path: &Path, country: &str) {
    mmdb::write_country_db(
        path,
        &[("198.51.100.0/24", country), ("203.0.113.0/24", "XK")],
        mmdb::Schema::MaxMind,
    );
}

/// The GeoIP database rewritten in every way an operator might while requests flow: the proxy
/// never dies (a mapped file truncated in place used to kill it with SIGBUS), every request is
/// answered and recorded, each unusable version is reported by path, and each good version is
/// picked up without a signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_geoip_database_rewritten_under_live_traffic_never_stops_the_proxy() {
    let up = Upstream::start().await;
    let mut proxy = trusting_proxy(&up).await;
    let db = proxy.path("country.mmdb");
    let scratch = tempfile::tempdir().unwrap();
    let nl = scratch.path().join("nl.mmdb");
    write_db(&nl, "NL");
    let nl = std::fs::read(&nl).unwrap();
    let traffic = Traffic::start(proxy.client());
    proxy.wait_records(3).await;
    assert_eq!(newest_country(&proxy, 0).as_deref(), Some("AL"));

    // (what the operator does, then: Ok(country the records show) or Err(the report))
    type Step<'a> = Box<dyn Fn(&Path) + 'a>;
    let steps: Vec<(&str, Step<'_>, Result<&str, &str>)> = vec![
        (
            "truncate in place (what `cp` does first)",
            Box::new(|p| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(0)
                    .unwrap()
            }),
            Err("the file is empty"),
        ),
        (
            "write half of a database in place",
            Box::new(|p| std::fs::write(p, &nl[..nl.len() / 2]).unwrap()),
            Err("not a valid MaxMind DB"),
        ),
        (
            "finish writing it",
            Box::new(|p| std::fs::write(p, &nl).unwrap()),
            Ok("NL"),
        ),
        (
            "write garbage in place",
            Box::new(|p| std::fs::write(p, [0xa5u8; 65536]).unwrap()),
            Err("not a valid MaxMind DB"),
        ),
        (
            "delete",
            Box::new(|p| std::fs::remove_file(p).unwrap()),
            Err("No such file or directory"),
        ),
        (
            "rename a good database into place",
            Box::new(|p| {
                let tmp = p.with_extension("new");
                write_db(&tmp, "DE");
                std::fs::rename(&tmp, p).unwrap();
            }),
            Ok("DE"),
        ),
        (
            "truncate in place once more",
            Box::new(|p| std::fs::File::create(p).map(drop).unwrap()),
            Err("the file is empty"),
        ),
        (
            "copy a good database over it",
            Box::new(|p| std::fs::write(p, &nl).unwrap()),
            Ok("NL"),
        ),
    ];
    let mut last = "AL".to_owned();
    for (what, step, want) in steps {
        let before_records = proxy.access_log().lines().count();
        let before_reports = proxy.output().matches("cannot be used").count();
        step(&db);
        match want {
            Ok(country) => {
                let what = format!("{what}: records show {country}");
                until(&mut proxy, &what, |p| {
                    newest_country(p, before_records).as_deref() == Some(country)
                })
                .await;
                last = country.to_owned();
            }
            Err(report) => {
                let what = format!("{what}: reported with {report:?}");
                until(&mut proxy, &what, |p| {
                    let out = p.output();
                    out.matches("cannot be used").count() > before_reports && out.contains(report)
                })
                .await;
                assert!(
                    proxy.output().contains(&db.display().to_string()),
                    "{what}: the report names the file"
                );
                // The database in use stays: new records show the country they showed.
                let now = proxy.access_log().lines().count();
                until(&mut proxy, &what, |p| p.access_log().lines().count() > now).await;
                assert_eq!(
                    newest_country(&proxy, now).as_deref(),
                    Some(last.as_str()),
                    "{what}"
                );
            }
        }
        assert_alive(&mut proxy, what);
    }
    let (sent, ok) = traffic.stop().await;
    assert_alive(&mut proxy, "at the end");
    assert_eq!(ok, sent, "every request answered 200");
    let records = proxy.wait_records(sent).await;
    assert_eq!(records.len(), sent, "one record per request");
}

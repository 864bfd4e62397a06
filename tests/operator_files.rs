//! Files an operator touches while the proxy serves (issue 12 §4): the GeoIP database, the
//! access-log day files, pseudonym key files and certificates. Each test is an attack script:
//! the file is truncated, rewritten, deleted or filled with garbage under live traffic, and the
//! proxy must keep serving and recording, report the file by path, and pick up a good file.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use http::StatusCode;

/// The path of [`Traffic`]'s request number `i`: its digits in pairs, `/live/12-34`, so that
/// the recorded path keeps the number (three digits in a row would be recorded as `:id`).
fn live_path(i: usize) -> String {
    let digits = i.to_string();
    let pairs: Vec<&str> = digits
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!("/live/{}", pairs.join("-"))
}

/// The request number of a recorded [`live_path`].
fn live_number(recorded: &str) -> Option<usize> {
    recorded
        .strip_prefix("/live/")?
        .replace('-', "")
        .parse()
        .ok()
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
                let proto = if i.is_multiple_of(2) {
                    Proto::H1
                } else {
                    Proto::H2
                };
                i += 1;
                t.sent.fetch_add(1, Ordering::SeqCst);
                let resp = client
                    .request(proto, from("198.51.100.7", &live_path(i)))
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

/// Observations as the capture makes them, for driving the access-log writer directly.
fn observations(n: usize) -> Vec<webprom_edge::privacy::observation::Observation> {
    use webprom_edge::client_ip::ClientAddr;
    use webprom_edge::epoch::Epoch;
    use webprom_edge::privacy::capture::{Capture, ClientMemo, EpochKey};
    use webprom_edge::privacy::keys::Key;
    let mut config = webprom_edge::config::Config::default();
    config.geoip.database = "".into();
    let key = EpochKey {
        epoch: Epoch::today(),
        key: Key::from_bytes([9; 32]),
    };
    let capture = Capture::new(&config, key, None).unwrap();
    (0..n)
        .map(|i| {
            let req = http::Request::get(format!("/n/{i}")).body(()).unwrap();
            let client = ClientAddr::new("198.51.100.7".parse().unwrap());
            capture
                .begin(client, &req, None, &ClientMemo::default())
                .finish(200, 0, false)
        })
        .collect()
}

/// A day file whose last line is partial (the proxy was killed mid-write, or a write was cut
/// short) gets the next record on a line of its own: the fragment is cut off, never glued to
/// the new record, and every line of the file is a whole record.
#[test]
fn a_partial_last_line_is_cut_off_before_the_next_record() {
    use webprom_edge::accesslog::AccessLog;
    use webprom_edge::metrics::Metrics;

    let whole = "{\"ts\":\"2026-11-25T14:03:07Z\",\"status\":200}\n";
    let long_fragment = format!(
        "{{\"ts\":\"2026-11-25T14:03:07Z\",\"path\":\"/{}",
        "x".repeat(100_000)
    );
    // (what is in the file, its whole records kept)
    let cases: Vec<(&str, String, usize)> = vec![
        ("no file", String::new(), 0),
        ("whole records", whole.repeat(3), 3),
        (
            "a record and half of another",
            format!("{whole}{{\"ts\":\"2026-11-"),
            1,
        ),
        ("half a record only", "{\"ts\":\"2026-11-25T14".into(), 0),
        (
            "records and a fragment longer than a read",
            format!("{}{long_fragment}", whole.repeat(2)),
            2,
        ),
        (
            "a fragment longer than a read only",
            long_fragment.clone(),
            0,
        ),
        ("a record without its newline", whole.trim_end().into(), 0),
    ];
    let mut obs = observations(3 * cases.len()).into_iter();
    for (what, content, kept) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut config = webprom_edge::config::Config::default();
        config.access_log.dir = dir.path().join("logs");
        std::fs::create_dir_all(&config.access_log.dir).unwrap();
        let day_file = config
            .access_log
            .dir
            .join(format!("access-{}.jsonl", today_string()));
        if what != "no file" {
            std::fs::write(&day_file, &content).unwrap();
        }
        let metrics = Metrics::new(&[]);
        let counters = metrics.log_counters();
        let log = AccessLog::start(&config.access_log, counters.clone()).unwrap();
        for o in obs.by_ref().take(3) {
            log.record(o);
        }
        log.flush();
        log.shutdown();

        let text = std::fs::read_to_string(&day_file).unwrap();
        assert!(text.ends_with('\n'), "{what}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), kept + 3, "{what}:\n{text:.300}");
        for line in &lines {
            assert!(
                serde_json::from_str::<serde_json::Value>(line).is_ok(),
                "{what}: a line that is not a record: {line:.200}"
            );
        }
        assert_eq!(counters.records.get(), 3, "{what}");
        assert_eq!(counters.dropped.get(), 0, "{what}");
    }
}

/// The value of an unlabelled metric in a Prometheus text page.
fn metric(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in:\n{page}"))
}

/// `n` requests at once on one HTTP/2 connection, so that they reach the writer as one batch.
async fn burst(client: &Client, n: usize, tag: &str) -> usize {
    let Conn::H2(send) = client.connect(Proto::H2).await else {
        unreachable!()
    };
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut send = send.clone();
        let req = get(&format!("/{tag}/{i}"));
        tasks.push(tokio::spawn(async move {
            send.ready().await.ok()?;
            send.send_request(req).await.ok().map(|r| r.status())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == Some(StatusCode::OK) {
            ok += 1;
        }
    }
    ok
}

/// Waits until every request sent is accounted for (written or dropped); returns the metrics.
/// Fails at once if the proxy exits meanwhile.
async fn accounted(proxy: &mut Proxy, requests: u64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert_alive(proxy, "while its records were written");
        let page = proxy.admin_get("/metrics").await.1;
        let done = metric(&page, "webprom_edge_access_log_records_total")
            + metric(&page, "webprom_edge_access_log_dropped_total");
        if done >= requests {
            return page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{requests} requests never all accounted for:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A day file that stops growing part-way through a batch (the process's file size limit,
/// `ulimit -f` or systemd's `LimitFSIZE=`, set here to 64 KiB in the child before it starts):
/// the write crossing the limit is cut short, later ones fail with EFBIG. The proxy must not
/// die of SIGXFSZ, and the counters must agree with the file exactly: the whole records in the
/// file are the records counted written, the partial one is cut off, and written + dropped is
/// every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_short_leaves_whole_records_and_counters_that_agree_with_the_file() {
    use std::os::unix::process::CommandExt;
    const LIMIT: u64 = 64 * 1024;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = set(
        &base_config(dir.path(), &up.url()),
        "rate_limit",
        "enabled",
        "false",
    );
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let mut proxy = Proxy::spawn_with(dir, |cmd| {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: LIMIT,
                    rlim_max: LIMIT,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
    .await;
    let client = proxy.client();
    let day_file = proxy.path(&format!("logs/access-{}.jsonl", today_string()));

    let mut sent = 0u64;
    for round in 0..8 {
        let ok = burst(&client, 60, &format!("round{round}")).await;
        assert_alive(&mut proxy, &format!("after round {round}"));
        assert_eq!(ok, 60, "round {round}: every request answered");
        sent += 60;
    }
    let page = accounted(&mut proxy, sent).await;
    assert_alive(&mut proxy, "at the end");
    let records = metric(&page, "webprom_edge_access_log_records_total");
    let dropped = metric(&page, "webprom_edge_access_log_dropped_total");
    assert_eq!(records + dropped, sent, "{page}");
    assert!(dropped > 0, "the limit was reached: {page}");
    assert!(metric(&page, "webprom_edge_access_log_write_errors_total") > 0);

    let text = std::fs::read_to_string(&day_file).unwrap();
    assert!(text.len() as u64 <= LIMIT);
    assert_eq!(
        text.matches('\n').count() as u64,
        records,
        "the file holds exactly the whole records counted as written"
    );
    assert!(text.ends_with('\n'), "no partial record at the end");
    for line in text.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "a line that is not a record: {line}"
        );
    }
    let out = proxy.output();
    assert_eq!(out.matches("access log write failed").count(), 1, "{out}");
    assert!(out.contains(&day_file.display().to_string()), "{out}");
    assert!(out.contains("File too large"), "{out}");
}

/// The day file and its directory handled every way an operator might while requests flow:
/// the proxy keeps serving, writes the next records to the file the path names (made again if
/// removed), never glues a record to a partial line, reports a file it cannot write by path,
/// and accounts for every request as written or dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_handled_under_live_traffic_never_stops_the_proxy() {
    let up = Upstream::start().await;
    let mut proxy = trusting_proxy(&up).await;
    let file = day_file(&proxy);
    let logs = proxy.path("logs");
    let traffic = Traffic::start(proxy.client());
    until(&mut proxy, "first records", |p| {
        p.access_log().lines().count() >= 3
    })
    .await;

    // (what the operator does, what undoes it if the writer cannot recover alone)
    type Step<'a> = Box<dyn Fn() + 'a>;
    let steps: Vec<(&str, Step<'_>, Option<Step<'_>>)> = vec![
        (
            "delete the day file",
            Box::new(|| std::fs::remove_file(&file).unwrap()),
            None,
        ),
        (
            "truncate it in place",
            Box::new(|| std::fs::File::create(&file).map(drop).unwrap()),
            None,
        ),
        (
            "rename it away (rotation)",
            Box::new(|| std::fs::rename(&file, logs.join("rotated.jsonl")).unwrap()),
            None,
        ),
        (
            "overwrite it with a line that does not end",
            Box::new(|| std::fs::write(&file, b"{\"ts\":\"2026-11-").unwrap()),
            None,
        ),
        (
            "append a partial line to it",
            Box::new(|| {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&file)
                    .unwrap();
                f.write_all(b"garbage without a newline").unwrap();
            }),
            None,
        ),
        (
            "remove the whole log directory",
            Box::new(|| std::fs::remove_dir_all(&logs).unwrap()),
            None,
        ),
        (
            "put a directory where the day file was",
            Box::new(|| {
                std::fs::remove_file(&file).unwrap();
                std::fs::create_dir(&file).unwrap();
            }),
            Some(Box::new(|| std::fs::remove_dir(&file).unwrap())),
        ),
        (
            "put a named pipe where the day file was",
            Box::new(|| {
                clear(&file);
                mkfifo(&file);
            }),
            Some(Box::new(|| clear(&file))),
        ),
    ];
    for (what, step, undo) in steps {
        let reports = proxy.output().matches("access log write failed").count();
        step();
        if let Some(undo) = undo {
            until(&mut proxy, what, |p| {
                let out = p.output();
                out.matches("access log write failed").count() > reports
                    && out.contains(&file.display().to_string())
            })
            .await;
            undo();
        }
        // Requests sent after the step reach the file the path names, on lines of their own.
        let after = traffic.tally.sent.load(Ordering::SeqCst) + 1;
        until(&mut proxy, what, |_| {
            std::fs::read_to_string(&file).is_ok_and(|t| {
                t.ends_with('\n')
                    && t.lines().any(|l| {
                        serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                            v["path"]
                                .as_str()
                                .and_then(live_number)
                                .is_some_and(|i| i > after)
                        })
                    })
            })
        })
        .await;
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines() {
            assert!(
                serde_json::from_str::<serde_json::Value>(line).is_ok(),
                "{what}: a line that is not a record: {line}"
            );
        }
    }
    let (sent, ok) = traffic.stop().await;
    assert_eq!(ok, sent, "every request answered 200");
    let page = accounted(&mut proxy, sent as u64).await;
    let records = metric(&page, "webprom_edge_access_log_records_total");
    let dropped = metric(&page, "webprom_edge_access_log_dropped_total");
    assert_eq!(records + dropped, sent as u64, "{page}");
    assert!(dropped > 0, "the directory in the way lost records: {page}");
    assert!(proxy.output().contains("access log writing again"));
}

/// Removes whatever is at `path`: a file, a link, a named pipe or a directory.
fn clear(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).unwrap(),
        Ok(_) => std::fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

/// The certificate and its key deleted, emptied, cut short, filled with garbage, replaced by a
/// directory or a named pipe, or paired with another key, then SIGHUP: the proxy keeps serving
/// the certificate it has, names the config key and the file, and takes the good files back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_broken_then_sighup_keep_the_served_certificate() {
    let up = Upstream::start().await;
    let mut proxy = Proxy::start(&up.url()).await;
    // Production setting from here on: never generate a certificate in place of a broken one.
    let config = std::fs::read_to_string(proxy.path("config.toml")).unwrap();
    std::fs::write(
        proxy.path("config.toml"),
        set(&config, "tls", "self_signed", "false"),
    )
    .unwrap();
    let client = proxy.client();
    let cert = proxy.path("cert.pem");
    let key = proxy.path("key.pem");
    let good_cert = std::fs::read(&cert).unwrap();
    let good_key = std::fs::read(&key).unwrap();
    let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();

    // (what is done to a file, how)
    type Step<'a> = Box<dyn Fn(&Path) + 'a>;
    let breakers: Vec<(&str, Step<'_>)> = vec![
        ("delete", Box::new(|p| std::fs::remove_file(p).unwrap())),
        ("empty", Box::new(|p| std::fs::write(p, b"").unwrap())),
        (
            "cut in half",
            Box::new(|p| {
                let bytes = std::fs::read(p).unwrap();
                std::fs::write(p, &bytes[..bytes.len() / 2]).unwrap()
            }),
        ),
        (
            "fill with garbage",
            Box::new(|p| std::fs::write(p, [0x5au8; 3000]).unwrap()),
        ),
        (
            "replace by a directory",
            Box::new(|p| {
                clear(p);
                std::fs::create_dir(p).unwrap()
            }),
        ),
        (
            "replace by a named pipe",
            Box::new(|p| {
                clear(p);
                mkfifo(p)
            }),
        ),
    ];
    // (what is done, the file, its config key, the step)
    type Row<'a> = (String, &'a Path, &'a str, &'a dyn Fn(&Path));
    let mut rows: Vec<Row<'_>> = Vec::new();
    for (what, step) in &breakers {
        rows.push((
            format!("certificate: {what}"),
            &cert,
            "tls.cert",
            step.as_ref(),
        ));
        rows.push((format!("key: {what}"), &key, "tls.key", step.as_ref()));
    }
    let pair_with_other_key = |p: &Path| std::fs::write(p, &other_key).unwrap();
    rows.push((
        "key: another certificate's".into(),
        &key,
        "tls.key",
        &pair_with_other_key,
    ));

    for (what, path, config_key, step) in rows {
        let failures = proxy.output().matches("certificate reload failed").count();
        step(path);
        proxy.signal("HUP");
        until(&mut proxy, &what, |p| {
            p.output().matches("certificate reload failed").count() > failures
        })
        .await;
        let out = proxy.output();
        let report = out
            .lines()
            .rfind(|l| l.contains("certificate reload failed"))
            .unwrap();
        assert!(report.contains(config_key), "{what}: {report}");
        assert!(
            report.contains(&path.display().to_string()),
            "{what}: {report}"
        );
        assert!(report.matches("os error").count() <= 1, "{what}: {report}");
        // New connections still get the certificate in use.
        for proto in BOTH {
            assert_eq!(
                client.get(proto, "/").await.status,
                StatusCode::OK,
                "{what}"
            );
        }

        // The good files back: the next SIGHUP takes them.
        let reloads = proxy.output().matches("reloaded certificates").count();
        clear(path);
        std::fs::write(&cert, &good_cert).unwrap();
        std::fs::write(&key, &good_key).unwrap();
        proxy.signal("HUP");
        until(&mut proxy, &what, |p| {
            p.output().matches("reloaded certificates").count() > reloads
        })
        .await;
        assert_eq!(
            client.get(Proto::H2, "/").await.status,
            StatusCode::OK,
            "{what}"
        );
    }
    assert_alive(&mut proxy, "at the end");
}

/// Key files deleted, emptied, filled with garbage, cut short or replaced by a directory (and
/// the key directory itself removed or replaced by a file) before the midnight rollover, driven
/// through the function the proxy's midnight timer calls: the rollover never panics, an error
/// names the file or directory, and the capture keeps working with the key it has.
#[test]
fn key_files_broken_before_midnight_never_break_the_capture() {
    use webprom_edge::client_ip::ClientAddr;
    use webprom_edge::epoch::Epoch;
    use webprom_edge::metrics::Metrics;
    use webprom_edge::privacy::capture::{Capture, ClientMemo, EpochKey};
    use webprom_edge::privacy::keys::schedule::rollover;
    use webprom_edge::privacy::keys::{KeyStore, next_key};

    let today = Epoch::today();
    let yesterday = today.prev();
    let y_file = format!("{yesterday}.key");
    let t_file = format!("{today}.key");
    // (what the operator did to the key directory `d`, the file named by the error, or None
    // when the rollover succeeds)
    type Break = fn(&Path);
    let cases: Vec<(&str, Break, Option<String>)> = vec![
        (
            "yesterday's key deleted",
            |d| clear(&d.join(format!("{}.key", Epoch::today().prev()))),
            None,
        ),
        (
            "yesterday's key emptied",
            |d| std::fs::write(d.join(format!("{}.key", Epoch::today().prev())), b"").unwrap(),
            Some(y_file.clone()),
        ),
        (
            "yesterday's key is garbage",
            |d| {
                std::fs::write(
                    d.join(format!("{}.key", Epoch::today().prev())),
                    [0x5a; 200],
                )
                .unwrap()
            },
            Some(y_file.clone()),
        ),
        (
            "yesterday's key cut to 10 hex digits",
            |d| {
                std::fs::write(
                    d.join(format!("{}.key", Epoch::today().prev())),
                    b"0123456789",
                )
                .unwrap()
            },
            Some(y_file.clone()),
        ),
        (
            "yesterday's key cut to 31 raw bytes",
            |d| std::fs::write(d.join(format!("{}.key", Epoch::today().prev())), [7; 31]).unwrap(),
            Some(y_file.clone()),
        ),
        (
            "yesterday's key replaced by a directory",
            |d| {
                let p = d.join(format!("{}.key", Epoch::today().prev()));
                clear(&p);
                std::fs::create_dir(p).unwrap()
            },
            Some(y_file.clone()),
        ),
        (
            "yesterday's key replaced by a named pipe",
            |d| {
                let p = d.join(format!("{}.key", Epoch::today().prev()));
                clear(&p);
                mkfifo(&p)
            },
            Some(y_file.clone()),
        ),
        (
            "today's key put in place as garbage (a fleet's copy gone wrong)",
            |d| std::fs::write(d.join(format!("{}.key", Epoch::today())), b"garbage").unwrap(),
            Some(t_file.clone()),
        ),
        (
            "the key directory removed",
            |d| std::fs::remove_dir_all(d).unwrap(),
            Some("keys".into()),
        ),
        (
            "the key directory replaced by a file",
            |d| {
                std::fs::remove_dir_all(d).unwrap();
                std::fs::write(d, b"not a directory").unwrap()
            },
            Some("keys".into()),
        ),
    ];
    let metrics = Metrics::new(&[]);
    for (what, break_it, names) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut config = webprom_edge::config::Config::default();
        config.privacy.key_dir = dir.path().join("keys");
        config.access_log.dir = dir.path().join("logs");
        config.geoip.database = "".into();
        let keys = KeyStore::open(&config.privacy.key_dir, config.privacy.key_retention.0).unwrap();
        let old = keys.ratchet_to(yesterday).unwrap();
        let old_key = old.key.clone();
        let capture = Capture::new(
            &config,
            EpochKey {
                epoch: yesterday,
                key: old.key,
            },
            None,
        )
        .unwrap();

        break_it(&config.privacy.key_dir);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rollover(&keys, &capture, &metrics, today)
        }));
        let outcome = outcome.unwrap_or_else(|_| panic!("{what}: the rollover panicked"));
        match (outcome, &names) {
            (Ok(rolled), None) => {
                assert!(rolled, "{what}");
                assert_eq!(capture.epoch(), today, "{what}");
                // With no key of yesterday left, today's is a new random one: the removed key
                // is not brought back from memory, so yesterday stays unlinkable.
                let new = keys.load(today).unwrap().unwrap();
                assert!(new != next_key(&old_key), "{what}");
            }
            (Err(e), Some(name)) => {
                let msg = e.to_string();
                assert!(msg.contains(name.as_str()), "{what}: {msg}");
                assert!(
                    msg.contains(&*dir.path().to_string_lossy()),
                    "{what}: {msg}"
                );
                assert!(msg.matches("os error").count() <= 1, "{what}: {msg}");
                // The key in use stays, and nothing was made up in place of the broken file.
                assert_eq!(capture.epoch(), yesterday, "{what}");
            }
            (got, _) => panic!("{what}: {got:?}"),
        }
        // The capture keeps working, under the key it holds.
        let req = http::Request::get("/").body(()).unwrap();
        let obs = capture
            .begin(
                ClientAddr::new("198.51.100.7".parse().unwrap()),
                &req,
                None,
                &ClientMemo::default(),
            )
            .finish(200, 0, false);
        let expected = if obs.epoch() == today {
            None
        } else {
            Some(webprom_edge::privacy::keys::pseudonym(
                &old_key,
                ClientAddr::new("198.51.100.7".parse().unwrap()),
                64,
            ))
        };
        if let Some(p) = expected {
            assert!(obs.client() == p, "{what}: still yesterday's pseudonym");
        }
    }
}

/// A day file that is not a regular file (a named pipe, a directory) in the log directory:
/// `investigate` and `erase` fail naming it instead of waiting forever for a writer.
#[test]
fn investigate_and_erase_never_hang_on_a_day_file_that_is_not_a_file() {
    use std::process::Command;
    // (what is at the day file's path, how to make it)
    type Make = fn(&Path);
    let cases: &[(&str, Make)] = &[
        ("a named pipe", mkfifo),
        ("a directory", |p| std::fs::create_dir(p).unwrap()),
    ];
    for &(what, make) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, base_config(dir.path(), "http://127.0.0.1:8080")).unwrap();
        std::fs::create_dir_all(dir.path().join("keys")).unwrap();
        std::fs::write(
            dir.path().join(format!("keys/{}.key", today_string())),
            "ab".repeat(32),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let day_file = dir
            .path()
            .join(format!("logs/access-{}.jsonl", today_string()));
        make(&day_file);
        for command in ["investigate", "erase"] {
            let mut child = Command::new(bin())
                .args([command, "--ip", "198.51.100.7", "--config"])
                .arg(&config)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{what}: {command} hung");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            assert_eq!(status.code(), Some(1), "{what}: {command}: {stderr}");
            assert!(
                stderr.contains(&day_file.display().to_string()),
                "{what}: {command}: {stderr}"
            );
        }
    }
}

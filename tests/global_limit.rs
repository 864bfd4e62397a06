//! Issue 17, part 1: the global rate-limit tier (`[rate_limit.global]`) against a real
//! `redis-server` (Debian package `redis-server`) started by each test on loopback. Two proxy
//! instances share one quota; Redis holds no address; Redis killed, stopped (SIGSTOP) or
//! refusing writes: requests follow `on_error` within the timeout, counted by kind, `/readyz`
//! stays ready, and limiting resumes when Redis returns; a Unix socket works; bad settings
//! exit 2 naming their key.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use http::StatusCode;
use webprom_edge::config::{GlobalLimit, RateLimit};
use webprom_edge::ratelimit::global::{GlobalTier, KEY_PREFIX};

/// The fleet secret the tests write (48 bytes).
const SECRET: &str = "fleet-secret-for-tests-0123456789abcdef-01234567";

/// A `redis-server` of the test's own: no persistence, on a loopback port or a Unix socket.
struct Redis {
    child: Child,
    dir: tempfile::TempDir,
    /// `redis://127.0.0.1:<port>` or `unix://<dir>/redis.sock`.
    url: String,
    args: Vec<String>,
}

impl Redis {
    /// Starts one on a free loopback port (`extra` arguments added), or `None` (skipped) when
    /// redis-server is not installed.
    fn start(extra: &[&str]) -> Option<Redis> {
        if !external("redis-server", "redis-server") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_addr().port().to_string();
        let mut args: Vec<String> = ["--port", &port, "--bind", "127.0.0.1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let url = format!("redis://127.0.0.1:{port}");
        Some(Redis::spawn(dir, url, args))
    }

    /// Starts one listening on a Unix socket only.
    fn start_unix() -> Option<Redis> {
        if !external("redis-server", "redis-server") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("redis.sock");
        let args = vec![
            "--port".to_owned(),
            "0".to_owned(),
            "--unixsocket".to_owned(),
            sock.display().to_string(),
            "--unixsocketperm".to_owned(),
            "700".to_owned(),
        ];
        let url = format!("unix://{}", sock.display());
        Some(Redis::spawn(dir, url, args))
    }

    fn spawn(dir: tempfile::TempDir, url: String, args: Vec<String>) -> Redis {
        let child = Redis::run(dir.path(), &args);
        let redis = Redis {
            child,
            dir,
            url,
            args,
        };
        redis.wait_ready();
        redis
    }

    fn run(dir: &Path, args: &[String]) -> Child {
        Command::new("redis-server")
            .args(args)
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Any answer will do (NOAUTH from a server that wants a password, too).
            if let Ok(mut con) = self.connect() {
                match redis::cmd("PING").query::<String>(&mut con) {
                    Ok(_) => return,
                    Err(e) if !e.is_io_error() => return,
                    Err(_) => {}
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url.as_str())?.get_connection()
    }

    fn con(&self) -> redis::Connection {
        self.connect().unwrap()
    }

    fn signal(&self, sig: &str) {
        common::signal_pid(self.child.id(), sig);
    }

    /// Kills it (SIGKILL: no goodbye to the clients).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again with the same arguments (same port or socket), empty.
    fn restart(&mut self) {
        self.kill();
        self.child = Redis::run(self.dir.path(), &self.args);
        self.wait_ready();
    }

    /// Every key, and every value (as bytes).
    fn dump(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut con = self.con();
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
        keys.into_iter()
            .map(|k| {
                let v: Vec<u8> = redis::cmd("GET")
                    .arg(&k)
                    .query(&mut con)
                    .unwrap_or_default();
                (k, v)
            })
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        self.kill();
    }
}

/// Writes the fleet secret (mode 0600) into `dir`; returns its path.
fn write_secret(dir: &Path) -> PathBuf {
    let path = dir.join("fleet.secret");
    std::fs::write(&path, SECRET).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The `[rate_limit]` and `[rate_limit.global]` tables: `rps`/`burst` default quota, a
/// `/limited` route of 1 request per second, burst 3; `global` keys as TOML lines.
fn limits(config: &str, rps: u32, burst: u32, global: &str) -> String {
    let config = set_all(
        &trusting(config),
        "rate_limit",
        &[
            ("enabled", "true"),
            ("requests_per_second", &rps.to_string()),
            ("burst", &burst.to_string()),
        ],
    );
    format!(
        "{config}\n[[rate_limit.route]]\npath_prefix = \"/limited\"\nrequests_per_second = 1\nburst = 3\n\n[rate_limit.global]\n{global}\n"
    )
}

/// A proxy with the global tier on `redis` (`timeout`, `on_error`), secret in its directory.
async fn proxy(
    up: &Upstream,
    redis: &str,
    rps: u32,
    burst: u32,
    timeout: &str,
    on_error: &str,
) -> Proxy {
    proxy_trusting(up, redis, (rps, burst), timeout, on_error, None).await
}

/// As [`proxy`], with `SSL_CERT_FILE` (the roots a `rediss://` server is verified against)
/// set to `roots` when given.
async fn proxy_trusting(
    up: &Upstream,
    redis: &str,
    (rps, burst): (u32, u32),
    timeout: &str,
    on_error: &str,
    roots: Option<&Path>,
) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let global = format!(
        "redis = \"{redis}\"\ntimeout = \"{timeout}\"\non_error = \"{on_error}\"\nkey_secret_file = \"{}\"\nsync_interval = \"1s\"",
        secret.display()
    );
    let config = limits(&base_config(dir.path(), &up.url()), rps, burst, &global);
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    Proxy::spawn_with(dir, |c| {
        if let Some(roots) = roots {
            c.env("SSL_CERT_FILE", roots);
        }
    })
    .await
}

/// The Redis key the fleet uses for `ip` under policy `policy` (0: default, 1: `/limited`),
/// computed with the library as any instance would.
fn redis_key(policy: usize, ip: &str) -> String {
    let cfg: RateLimit = RateLimit {
        route: vec![webprom_edge::config::RoutePolicy {
            path_prefix: "/limited".to_owned(),
            requests_per_second: 1,
            burst: 3,
        }],
        ..RateLimit::default()
    };
    let global: GlobalLimit =
        toml::from_str("redis = \"redis://127.0.0.1:1\"\nkey_secret_file = \"/x\"").unwrap();
    let tier = GlobalTier::new(&cfg, &global, SECRET.as_bytes()).unwrap();
    tier.redis_key(policy, ip.parse().unwrap())
}

/// Spends the fleet's whole budget of `ip` under `policy`: writes a theoretical arrival time an
/// hour ahead. No instance writes one further ahead than one whole bucket, so the script takes
/// it as an empty bucket: refused for one emission interval (`Retry-After: 1`), then the bucket
/// refills as any other.
fn exhaust(redis: &Redis, policy: usize, ip: &str) {
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros();
    let tat = (now_us + 3_600_000_000).to_string();
    let _: () = redis::cmd("SET")
        .arg(redis_key(policy, ip))
        .arg(tat)
        .arg("PX")
        .arg(3_600_000)
        .query(&mut redis.con())
        .unwrap();
}

/// The value of the metric line starting with `prefix` (0 when absent).
async fn metric(p: &Proxy, prefix: &str) -> f64 {
    let (_, text) = p.admin_get("/metrics").await;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn status(p: &Proxy, ip: &str, path: &str) -> (StatusCode, Option<u64>, Duration) {
    let started = Instant::now();
    let resp = p.client().request(Proto::H1, from(ip, path)).await;
    let retry = resp
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (resp.status, retry, started.elapsed())
}

#[tokio::test]
async fn two_instances_share_one_global_quota_and_redis_holds_no_address() {
    let Some(redis) = Redis::start(&[]) else {
        return;
    };
    let up = Upstream::start().await;
    // Each instance alone would allow a burst of 20 (40 over both).
    let (rps, burst) = (1, 20);
    let a = proxy(&up, &redis.url, rps, burst, "500ms", "allow").await;
    let b = proxy(&up, &redis.url, rps, burst, "500ms", "allow").await;
    let (x, y) = ("198.51.100.77", "2001:db8:1:2::abcd");
    let started = Instant::now();
    let mut allowed = 0u32;
    let mut refused = 0u32;
    for i in 0..60 {
        let p = if i % 2 == 0 { &a } else { &b };
        let (s, retry, _) = status(p, x, "/").await;
        match s {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                assert!(retry.is_some_and(|r| r >= 1), "Retry-After {retry:?}");
            }
            other => panic!("request {i}: {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The documented bound: the burst, what the rate refilled meanwhile, and one lease per
    // instance (the lease of 1 request/s, burst 20, is 1 request).
    let bound = f64::from(burst) + f64::from(rps) * elapsed.ceil() + 2.0;
    println!(
        "alternating client: {allowed} allowed, {refused} refused in {elapsed:.2}s (bound {bound})"
    );
    assert!(f64::from(allowed) <= bound, "{allowed} allowed > {bound}");
    assert!(
        allowed >= burst - 2,
        "{allowed} allowed: the fleet's burst was not granted"
    );
    let global = metric(
        &a,
        "webprom_edge_rate_limited_total{policy=\"default\",tier=\"global\"}",
    )
    .await
        + metric(
            &b,
            "webprom_edge_rate_limited_total{policy=\"default\",tier=\"global\"}",
        )
        .await;
    assert!(global >= 1.0, "no refusal counted for the global tier");
    // Another client is not affected, on either instance. Three requests each: its key then
    // lives about 6 s in Redis (a GCRA key expires when its theoretical arrival time passes,
    // one interval per request), and Redis is read at once, before anything that waits.
    for p in [&a, &b] {
        for _ in 0..3 {
            assert_eq!(status(p, y, "/").await.0, StatusCode::OK);
        }
    }
    let dump = redis.dump();
    // The access log says limited for each 429.
    let records: Vec<String> = a
        .wait_records(33)
        .await
        .into_iter()
        .chain(b.records())
        .collect();
    let limited = records
        .iter()
        .filter(|r| field(r, "limited") == "true" && field(r, "status") == "429")
        .count();
    assert_eq!(limited, refused as usize, "records with limited: true");

    // Redis holds no address: every key and value scanned for the canaries, as text and bytes.
    assert!(dump.len() >= 2, "{} keys", dump.len());
    let mut canaries: Vec<Vec<u8>> = vec![x.as_bytes().to_vec(), y.as_bytes().to_vec()];
    canaries.push(vec![198, 51, 100, 77]);
    canaries.push(hex_of(&[198, 51, 100, 77]).into_bytes());
    let v6: std::net::Ipv6Addr = y.parse().unwrap();
    canaries.push(v6.octets()[..8].to_vec());
    canaries.push(hex_of(&v6.octets()[..8]).into_bytes());
    canaries.push(b"2001:db8:1:2".to_vec());
    for (k, v) in &dump {
        let key = String::from_utf8_lossy(k);
        assert!(key.starts_with(KEY_PREFIX), "{key}");
        assert!(
            v.iter().all(u8::is_ascii_digit),
            "{key}: a value that is not a number"
        );
        for c in &canaries {
            for hay in [k, v] {
                assert!(
                    !hay.windows(c.len()).any(|w| w == c.as_slice()),
                    "{key} holds a canary"
                );
            }
        }
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How Redis fails in an outage row.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL: connections refused until it is started again on the same port.
    Killed,
    /// SIGSTOP: connected, never answering (slow), until SIGCONT.
    Stopped,
    /// `maxmemory 1`: it answers, refusing writes (OOM), until the limit is lifted.
    Refusing,
}

#[tokio::test]
async fn an_outage_follows_on_error_within_the_timeout_and_limiting_resumes() {
    // (fault, on_error, the error kind counted).
    let rows = [
        (Fault::Killed, "allow", "connection"),
        (Fault::Killed, "deny", "connection"),
        (Fault::Stopped, "allow", "timeout"),
        (Fault::Stopped, "deny", "timeout"),
        (Fault::Refusing, "allow", "response"),
        (Fault::Refusing, "deny", "response"),
    ];
    let up = Upstream::start().await;
    for (row, (fault, on_error, kind)) in rows.into_iter().enumerate() {
        let what = format!("{fault:?}, on_error = {on_error}");
        let Some(mut redis) = Redis::start(&[]) else {
            return;
        };
        let p = proxy(&up, &redis.url, 1000, 1000, "100ms", on_error).await;
        // Redis answers: a fresh client passes and the tier says ok.
        let ip = |i: usize| format!("203.0.113.{}", row * 40 + i);
        let mut before = Vec::new();
        for i in 0..5 {
            let (s, _, took) = status(&p, &ip(35 + i), "/").await;
            assert_eq!(s, StatusCode::OK, "{what}");
            before.push(took);
        }
        assert_eq!(status(&p, &ip(0), "/").await.0, StatusCode::OK, "{what}");
        let (code, body) = p.admin_get("/readyz").await;
        assert_eq!(
            (code, body.as_str()),
            (StatusCode::OK, "ready: global rate limit: ok\n"),
            "{what}"
        );

        match fault {
            Fault::Killed => redis.kill(),
            Fault::Stopped => redis.signal("STOP"),
            Fault::Refusing => {
                let _: () = redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("maxmemory")
                    .arg("1")
                    .query(&mut redis.con())
                    .unwrap();
            }
        }
        // Fresh clients (no lease): each one needs Redis.
        let mut latencies = Vec::new();
        for i in 1..=10 {
            let (s, retry, took) = status(&p, &ip(i), "/").await;
            match on_error {
                "allow" => assert_eq!(s, StatusCode::OK, "{what}: request {i}"),
                _ => {
                    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{what}: request {i}");
                    assert_eq!(retry, Some(1), "{what}");
                }
            }
            assert!(
                took < Duration::from_secs(1),
                "{what}: request {i} took {took:?}"
            );
            latencies.push(took);
        }
        println!(
            "{what}: before the fault (fresh clients, Redis asked) {before:?}; the first request after it {:?}, the next ones {:?}",
            latencies[0],
            &latencies[1..]
        );
        let errors = metric(
            &p,
            &format!("webprom_edge_global_limit_errors_total{{kind=\"{kind}\"}}"),
        )
        .await;
        assert!(errors >= 10.0, "{what}: {errors} errors of kind {kind}");
        let (code, body) = p.admin_get("/readyz").await;
        assert_eq!(code, StatusCode::OK, "{what}: {body}");
        assert!(
            body.contains("global rate limit: degraded"),
            "{what}: {body}"
        );

        match fault {
            Fault::Killed => redis.restart(),
            Fault::Stopped => redis.signal("CONT"),
            Fault::Refusing => {
                let _: () = redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("maxmemory")
                    .arg("0")
                    .query(&mut redis.con())
                    .unwrap();
            }
        }
        // The tier reconnects by itself, says so, and limits again: a client whose budget the
        // fleet spent is refused by the global tier.
        eventually(
            Duration::from_secs(15),
            Duration::from_millis(100),
            async || {
                let (_, body) = p.admin_get("/readyz").await;
                body.contains("global rate limit: ok").then_some(())
            },
            || format!("{what}: the tier did not recover"),
        )
        .await;
        let spent = ip(30);
        exhaust(&redis, 0, &spent);
        let (s, retry, _) = status(&p, &spent, "/").await;
        assert_eq!(
            s,
            StatusCode::TOO_MANY_REQUESTS,
            "{what}: limiting did not resume"
        );
        assert_eq!(retry, Some(1), "{what}: Retry-After");
        assert_eq!(status(&p, &ip(31), "/").await.0, StatusCode::OK, "{what}");
        let out = p.output();
        assert_eq!(
            out.matches("global rate-limit tier degraded").count(),
            1,
            "{what}:\n{out}"
        );
        assert_eq!(
            out.matches("global rate-limit tier recovered").count(),
            1,
            "{what}:\n{out}"
        );
        assert!(
            out.contains(&format!("kind=\"{kind}\"")) || out.contains(&format!("kind={kind}")),
            "{what}:\n{out}"
        );
    }
}

#[tokio::test]
async fn a_unix_socket_and_a_wrong_password_work_and_the_password_is_never_shown() {
    let Some(redis) = Redis::start_unix() else {
        return;
    };
    let up = Upstream::start().await;
    let p = proxy(&up, &redis.url, 1000, 1000, "500ms", "deny").await;
    let spent = "198.51.100.9";
    exhaust(&redis, 1, spent);
    // Its /limited budget is spent fleet-wide; its default one is not; another client passes.
    let (s, retry, _) = status(&p, spent, "/limited/x").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry, Some(1), "Retry-After");
    assert_eq!(status(&p, spent, "/").await.0, StatusCode::OK);
    assert_eq!(
        status(&p, "198.51.100.10", "/limited/x").await.0,
        StatusCode::OK
    );
    assert_eq!(
        metric(
            &p,
            "webprom_edge_rate_limited_total{policy=\"/limited\",tier=\"global\"}"
        )
        .await,
        1.0
    );

    // A Redis that wants a password the URL gets wrong refuses (NOAUTH / WRONGPASS): on_error,
    // counted as a response error, and neither password reaches the output.
    let Some(locked) = Redis::start(&["--requirepass", "right-password-9f8e7d"]) else {
        return;
    };
    let url = locked
        .url
        .replace("redis://", "redis://:wrong-password-1a2b3c@");
    let p = proxy(&up, &url, 1000, 1000, "500ms", "deny").await;
    let (s, retry, _) = status(&p, "198.51.100.11", "/").await;
    assert_eq!((s, retry), (StatusCode::SERVICE_UNAVAILABLE, Some(1)));
    let errors = metric(
        &p,
        "webprom_edge_global_limit_errors_total{kind=\"response\"}",
    )
    .await;
    let out = p.output();
    assert!(
        errors >= 1.0,
        "{errors}: {}\n{out}",
        p.admin_get("/metrics").await.1
    );
    assert!(out.contains("global rate-limit tier degraded"), "{out}");
    assert!(out.contains("redis://***@127.0.0.1"), "{out}");

    // The server's password is changed to the one the URL has: the tier connects anew by
    // itself (a connection the server refused at its start is never retried as it is) and
    // limits again, with no restart and no reload.
    let _: () = redis::Client::open(
        locked
            .url
            .replace("redis://", "redis://:right-password-9f8e7d@"),
    )
    .unwrap()
    .get_connection()
    .and_then(|mut c| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg("wrong-password-1a2b3c")
            .query(&mut c)
    })
    .unwrap();
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || {
            let (_, body) = p.admin_get("/readyz").await;
            body.contains("global rate limit: ok").then_some(())
        },
        || format!("the tier did not recover:\n{}", p.output()),
    )
    .await;
    assert_eq!(status(&p, "198.51.100.12", "/").await.0, StatusCode::OK);
    let out = p.output();
    assert!(out.contains("global rate-limit tier recovered"), "{out}");
    for secret in ["wrong-password-1a2b3c", "right-password-9f8e7d", SECRET] {
        assert!(!out.contains(secret), "{secret} in\n{out}");
    }
}

/// A server that is not Redis: answers every connection with an HTTP error and closes it.
async fn not_redis() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = tcp
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    format!("redis://{addr}")
}

#[tokio::test]
async fn an_idle_instance_learns_of_an_outage_and_of_the_recovery() {
    // A server that is not Redis is an outage too, of kind `response` or `connection`.
    let garbage = not_redis().await;
    let up = Upstream::start().await;
    let p = proxy(&up, &garbage, 1000, 1000, "100ms", "allow").await;
    let (s, _, took) = status(&p, "198.51.100.40", "/").await;
    assert_eq!(s, StatusCode::OK);
    assert!(took < Duration::from_secs(1), "{took:?}");
    let (code, body) = p.admin_get("/readyz").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("global rate limit: degraded"), "{body}");
    assert_eq!(metric(&p, "webprom_edge_global_limit_degraded ").await, 1.0);

    let Some(mut redis) = Redis::start(&[]) else {
        return;
    };
    let p = proxy(&up, &redis.url, 1000, 1000, "100ms", "allow").await;
    let ready = async |p: &Proxy, state: &str| {
        eventually(
            Duration::from_secs(15),
            Duration::from_millis(100),
            async || {
                let (_, body) = p.admin_get("/readyz").await;
                body.contains(state).then_some(())
            },
            || format!("/readyz never said {state:?}:\n{}", p.output()),
        )
        .await;
    };
    ready(&p, "global rate limit: ok").await;
    assert_eq!(metric(&p, "webprom_edge_global_limit_degraded ").await, 0.0);
    // Killed with no request in flight, nor any after: the tier's own probe finds out.
    redis.kill();
    ready(&p, "global rate limit: degraded (connection)").await;
    assert_eq!(metric(&p, "webprom_edge_global_limit_degraded ").await, 1.0);
    assert_eq!(
        metric(
            &p,
            "webprom_edge_global_limit_errors_total{kind=\"connection\"}"
        )
        .await,
        0.0,
        "no request followed on_error"
    );
    redis.restart();
    ready(&p, "global rate limit: ok").await;
    assert_eq!(metric(&p, "webprom_edge_global_limit_degraded ").await, 0.0);
}

#[tokio::test]
async fn values_the_fleet_did_not_write_never_degrade_the_tier() {
    let Some(redis) = Redis::start(&[]) else {
        return;
    };
    let up = Upstream::start().await;
    let p = proxy(&up, &redis.url, 1000, 1000, "500ms", "deny").await;
    let set = |key: &str, value: &str| {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query(&mut redis.con())
            .unwrap();
    };
    // (what Redis holds under the client's /limited key, the status, the Retry-After). A
    // bucket is never emptier than empty: a time far ahead waits one emission interval (1 s at
    // 1 request per second), never the hours it says; a value that is not a time is a full
    // bucket.
    let rows: [(&str, StatusCode, Option<u64>); 11] = [
        ("a hash", StatusCode::OK, None),
        ("a list", StatusCode::OK, None),
        ("not a number", StatusCode::OK, None),
        ("", StatusCode::OK, None),
        ("-5", StatusCode::OK, None),
        ("nan", StatusCode::OK, None),
        ("9e18", StatusCode::TOO_MANY_REQUESTS, Some(1)),
        ("1e400", StatusCode::TOO_MANY_REQUESTS, Some(1)),
        ("inf", StatusCode::TOO_MANY_REQUESTS, Some(1)),
        ("0x7fffffffffffffff", StatusCode::TOO_MANY_REQUESTS, Some(1)),
        (
            "99999999999999999999999",
            StatusCode::TOO_MANY_REQUESTS,
            Some(1),
        ),
    ];
    for (i, (value, want, retry)) in rows.into_iter().enumerate() {
        let ip = format!("198.51.100.{}", 100 + i);
        let key = redis_key(1, &ip);
        match value {
            "a hash" => {
                let _: () = redis::cmd("HSET")
                    .arg(&key)
                    .arg("f")
                    .arg("v")
                    .query(&mut redis.con())
                    .unwrap();
            }
            "a list" => {
                let _: () = redis::cmd("RPUSH")
                    .arg(&key)
                    .arg("v")
                    .query(&mut redis.con())
                    .unwrap();
            }
            v => set(&key, v),
        }
        let (s, r, _) = status(&p, &ip, "/limited/x").await;
        assert_eq!((s, r), (want, retry), "{value:?}");
        // Whatever it held, the key is now the script's own number, expiring.
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query(&mut redis.con())
            .unwrap();
        assert!((1..=3_000).contains(&ttl), "{value:?}: PTTL {ttl}");
        let now: String = redis::cmd("GET").arg(&key).query(&mut redis.con()).unwrap();
        assert!(now.parse::<u64>().is_ok(), "{value:?}: holds {now:?}");
    }
    // Redis drops every client connection (CLIENT KILL, as a restart or failover would): the
    // next request is asked again on a new connection, not refused (on_error is deny here).
    for round in 0..3 {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query(&mut redis.con())
            .unwrap();
        let ip = format!("198.51.100.{}", 200 + round);
        assert_eq!(
            status(&p, &ip, "/").await.0,
            StatusCode::OK,
            "round {round}"
        );
    }
    let (code, body) = p.admin_get("/readyz").await;
    assert_eq!(
        (code, body.as_str()),
        (StatusCode::OK, "ready: global rate limit: ok\n")
    );
    for kind in ["timeout", "connection", "response"] {
        let line = format!("webprom_edge_global_limit_errors_total{{kind=\"{kind}\"}}");
        assert_eq!(metric(&p, &line).await, 0.0, "{kind}");
    }
}

#[test]
fn every_bad_global_setting_exits_2_and_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_test_geo(d);
    let good_secret = write_secret(d);
    let file = |name: &str, content: &str, mode: u32| {
        let path = d.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    };
    let readable = file("readable.secret", SECRET, 0o644);
    let short = file("short.secret", "only-16-bytes-xx\n", 0o600);
    let a_dir = d.join("a-dir");
    std::fs::create_dir(&a_dir).unwrap();
    let global = |redis: &str, secret: &str| {
        limits(
            &base_config(d, "http://127.0.0.1:9"),
            50,
            100,
            &format!("redis = \"{redis}\"\nkey_secret_file = \"{secret}\""),
        )
    };
    let ok_url = "redis://127.0.0.1:9";
    let good = good_secret.display().to_string();
    let missing = d.join("missing.secret").display().to_string();
    // (what, config, the key named)
    let rows = [
        (
            "an http:// URL",
            global("http://127.0.0.1:6379", &good),
            "rate_limit.global.redis",
        ),
        (
            "a URL with no scheme",
            global("127.0.0.1:6379", &good),
            "rate_limit.global.redis",
        ),
        (
            "a missing secret file",
            global(ok_url, &missing),
            "rate_limit.global.key_secret_file",
        ),
        (
            "a secret file others can read",
            global(ok_url, &readable),
            "rate_limit.global.key_secret_file",
        ),
        (
            "a secret too short",
            global(ok_url, &short),
            "rate_limit.global.key_secret_file",
        ),
        (
            "a directory as the secret file",
            global(ok_url, &a_dir.display().to_string()),
            "rate_limit.global.key_secret_file",
        ),
    ];
    for (what, text, key) in rows {
        std::fs::write(d.join("config.toml"), &text).unwrap();
        for command in ["check-config", "run"] {
            let (code, _, stderr) = output_text(&mut tool_command(d, command, &[]));
            assert_eq!(code, 2, "{what} ({command}): {stderr}");
            assert!(
                stderr.contains(key),
                "{what} ({command}) should name {key}: {stderr}"
            );
            assert!(!stderr.contains(SECRET), "{what}: the secret in {stderr}");
        }
    }
    // The good one passes check-config.
    std::fs::write(d.join("config.toml"), global(ok_url, &good)).unwrap();
    let (code, _, stderr) = output_text(&mut tool_command(d, "check-config", &[]));
    assert_eq!(code, 0, "{stderr}");
}

#[tokio::test]
async fn rediss_verifies_the_server_against_the_system_roots() {
    let certs = tempfile::tempdir().unwrap();
    let c = certs.path();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(c.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(c.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(c.join("key.pem"), key.serialize_pem()).unwrap();
    let tls_port = free_addr().port().to_string();
    let path = |name: &str| c.join(name).display().to_string();
    // TLS for the proxy, a cleartext port for the test's own connection.
    let Some(redis) = Redis::start(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &path("cert.pem"),
        "--tls-key-file",
        &path("key.pem"),
        "--tls-ca-cert-file",
        &path("ca.pem"),
        "--tls-auth-clients",
        "no",
    ]) else {
        return;
    };
    let url = format!("rediss://localhost:{tls_port}");
    let up = Upstream::start().await;
    let roots = c.join("ca.pem");
    let p = proxy_trusting(&up, &url, (1000, 1000), "500ms", "deny", Some(&roots)).await;
    let spent = "198.51.100.20";
    exhaust(&redis, 0, spent);
    assert_eq!(
        status(&p, spent, "/").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(status(&p, "198.51.100.21", "/").await.0, StatusCode::OK);
    // A server the proxy's roots do not vouch for: no answer, so on_error (deny).
    let untrusted = proxy_trusting(&up, &url, (1000, 1000), "500ms", "deny", None).await;
    let (s, retry, _) = status(&untrusted, "198.51.100.22", "/").await;
    assert_eq!((s, retry), (StatusCode::SERVICE_UNAVAILABLE, Some(1)));
    let (code, body) = untrusted.admin_get("/readyz").await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains("global rate limit: degraded"), "{body}");
}

#[tokio::test]
async fn sighup_builds_a_new_tier_when_rate_limit_global_changes_and_keeps_it_otherwise() {
    let Some(redis) = Redis::start(&[]) else {
        return;
    };
    let up = Upstream::start().await;
    let dead = format!("redis://{}", dead_addr());
    let p = proxy(&up, &dead, 1000, 1000, "500ms", "deny").await;
    assert_eq!(
        status(&p, "198.51.100.30", "/").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let config = std::fs::read_to_string(p.path("config.toml")).unwrap();
    std::fs::write(p.path("config.toml"), config.replace(&dead, &redis.url)).unwrap();
    let reloads = |p: &Proxy| p.output().matches("reloaded the country database").count();
    p.signal("HUP");
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || (reloads(&p) == 1).then_some(()),
        || "no reload".to_owned(),
    )
    .await;
    assert_eq!(status(&p, "198.51.100.31", "/").await.0, StatusCode::OK);
    let spent = "198.51.100.32";
    exhaust(&redis, 0, spent);
    assert_eq!(
        status(&p, spent, "/").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Unchanged: the tier is kept (no reset said).
    p.signal("HUP");
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || (reloads(&p) == 2).then_some(()),
        || "no second reload".to_owned(),
    )
    .await;
    let out = p.output();
    assert_eq!(out.matches("limiter state reset").count(), 1, "{out}");
}

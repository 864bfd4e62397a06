//! The `acme.http_listen` listener (issue 16), in process so that a challenge can be made
//! pending: a real TCP client against the listener module, with the real capture, access log
//! and metrics. Its start from the config (and a bad address's exit status) is in
//! tests/acme_checks.rs.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use webprom_edge::accesslog::AccessLog;
use webprom_edge::acme::Challenges;
use webprom_edge::config::{Config, Dur};
use webprom_edge::epoch::Epoch;
use webprom_edge::metrics::Metrics;
use webprom_edge::privacy::capture::{Capture, EpochKey};
use webprom_edge::privacy::keys::Key;
use webprom_edge::proxy::logging::Sinks;
use webprom_edge::server::acme_http::AcmeHttp;

const TOKEN: &str = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
const KEY_AUTHORIZATION: &str =
    "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI";
/// Short enough that the path rules alone would record it.
const SHORT_TOKEN: &str = "tok";

/// A running listener with its access log directory.
struct Listener {
    addr: std::net::SocketAddr,
    sinks: Arc<Sinks>,
    shutdown: watch::Sender<bool>,
    drained: mpsc::Receiver<()>,
    task: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

async fn start(challenges: Challenges, header_read_timeout: Duration) -> Listener {
    start_with(challenges, header_read_timeout, |_| {}).await
}

async fn start_with(
    challenges: Challenges,
    header_read_timeout: Duration,
    edit: impl FnOnce(&mut Config),
) -> Listener {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.hosts = vec!["localhost".into(), "Ads.Example".into()];
    config.server.header_read_timeout = Dur::from(header_read_timeout);
    config.server.max_header_bytes = 16 * 1024;
    config.access_log.dir = dir.path().join("logs");
    edit(&mut config);
    let key = EpochKey {
        epoch: Epoch::today(),
        key: Key::from_bytes([7; 32]),
    };
    let capture = Arc::new(Capture::new(&config, key, None).unwrap());
    let metrics = Arc::new(Metrics::new(&[]));
    let log = AccessLog::start(&config.access_log, metrics.log_counters()).unwrap();
    let sinks = Arc::new(Sinks { log, metrics });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (tracker, drained) = mpsc::channel(1);
    let state = AcmeHttp::new(
        &config,
        Arc::new(challenges),
        capture,
        sinks.clone(),
        shutdown_rx,
        tracker,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(Arc::new(state).serve(listener));
    Listener {
        addr,
        sinks,
        shutdown,
        drained,
        task,
        dir,
    }
}

/// The proxy's own challenge store, with two HTTP-01 responses published as an order would.
async fn pending() -> Challenges {
    let challenges = Challenges::default();
    challenges
        .publish_http01(TOKEN, KEY_AUTHORIZATION)
        .await
        .unwrap();
    challenges
        .publish_http01(SHORT_TOKEN, "tok.thumbprint")
        .await
        .unwrap();
    challenges
}

impl Listener {
    /// Sends `request` on a new connection and reads until the listener closes it (at most
    /// 5 s): the whole answer, as text.
    async fn exchange(&self, request: &[u8]) -> String {
        let mut tcp = TcpStream::connect(self.addr).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
            .await
            .expect("the listener closes the connection after its answer")
            .expect("a close, not a reset");
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// The access log's records, after the writer has written what it was given.
    async fn records(&self) -> Vec<serde_json::Value> {
        let sinks = self.sinks.clone();
        tokio::task::spawn_blocking(move || sinks.log.flush())
            .await
            .unwrap();
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.dir.path().join("logs")).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            out.extend(text.lines().map(|l| serde_json::from_str(l).unwrap()));
        }
        out
    }

    /// Every byte the access log holds.
    fn log_text(&self) -> String {
        let mut all = String::new();
        for e in std::fs::read_dir(self.dir.path().join("logs")).unwrap() {
            all.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
        }
        all
    }
}

fn status_of(answer: &str) -> u16 {
    answer
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| answer.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 answer: {answer:?}"))
}

fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let head = answer.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// (request, status, Location, body, recorded path, recorded host)
type Row<'a> = (
    String,
    u16,
    Option<&'a str>,
    Option<&'a str>,
    &'a str,
    Option<&'a str>,
);

#[tokio::test]
async fn each_request_gets_its_answer_and_one_record_without_its_token() {
    let l = start(pending().await, Duration::from_secs(5)).await;
    let get = |target: &str, host: &str| format!("GET {target} HTTP/1.1\r\nhost: {host}\r\n\r\n");
    let challenge = format!("/.well-known/acme-challenge/{TOKEN}");
    let short = format!("/.well-known/acme-challenge/{SHORT_TOKEN}");
    let rows: Vec<Row> = vec![
        // A pending challenge, as the CA asks for it: any host, the key authorization.
        (
            get(&challenge, "ads.example"),
            200,
            None,
            Some(KEY_AUTHORIZATION),
            "/.well-known/acme-challenge/:id",
            Some("ads.example"),
        ),
        (
            get(&short, "unlisted.example"),
            200,
            None,
            Some("tok.thumbprint"),
            "/.well-known/acme-challenge/:id",
            None,
        ),
        (
            format!("HEAD {challenge} HTTP/1.1\r\nhost: ads.example\r\n\r\n"),
            200,
            None,
            Some(""),
            "/.well-known/acme-challenge/:id",
            Some("ads.example"),
        ),
        // A token nobody asked for, or that cannot be one.
        (
            get("/.well-known/acme-challenge/unknownToken", "ads.example"),
            404,
            None,
            None,
            "/.well-known/acme-challenge/:id",
            Some("ads.example"),
        ),
        (
            get("/.well-known/acme-challenge/", "ads.example"),
            404,
            None,
            None,
            "/.well-known/acme-challenge/:id",
            Some("ads.example"),
        ),
        (
            get(&format!("{short}/x"), "ads.example"),
            404,
            None,
            None,
            "/.well-known/acme-challenge/:id",
            Some("ads.example"),
        ),
        // Another method under the prefix: 405, not a redirect carrying the token.
        (
            format!("POST {short} HTTP/1.1\r\nhost: ads.example\r\ncontent-length: 0\r\n\r\n"),
            405,
            None,
            None,
            "/.well-known/acme-challenge/:id",
            Some("ads.example"),
        ),
        // Everything else to https, for a listed host only, named as the config spells it.
        (
            get("/click/12?x=1&y=2", "ads.example"),
            308,
            Some("https://ads.example/click/12?x=1&y=2"),
            None,
            "/click/12",
            Some("ads.example"),
        ),
        (
            get("/", "LOCALHOST.:80"),
            308,
            Some("https://localhost/"),
            None,
            "/",
            Some("localhost"),
        ),
        (
            "POST /form HTTP/1.1\r\nhost: localhost\r\ncontent-length: 3\r\n\r\na=b".to_owned(),
            308,
            Some("https://localhost/form"),
            None,
            "/form",
            Some("localhost"),
        ),
        (
            get("http://ads.example/abs?q", "ads.example"),
            308,
            Some("https://ads.example/abs?q"),
            None,
            "/abs",
            Some("ads.example"),
        ),
        // No open redirect: an unlisted host, an unlisted host in the absolute form, none.
        (get("/", "evil.example"), 400, None, None, "/", None),
        (
            get("http://evil.example/", "ads.example"),
            400,
            None,
            None,
            "/",
            None,
        ),
        (
            "GET / HTTP/1.0\r\n\r\n".to_owned(),
            400,
            None,
            None,
            "/",
            None,
        ),
        (
            get("/", "ads.example\r\nhost: localhost"),
            400,
            None,
            None,
            "/",
            None,
        ),
        (
            "OPTIONS * HTTP/1.1\r\nhost: localhost\r\n\r\n".to_owned(),
            400,
            None,
            None,
            "/*",
            Some("localhost"),
        ),
    ];
    for (request, status, location, want_body, _, _) in &rows {
        let answer = l.exchange(request.as_bytes()).await;
        assert_eq!(status_of(&answer), *status, "{request:?}: {answer}");
        assert_eq!(header(&answer, "location"), *location, "{request:?}");
        assert_eq!(header(&answer, "connection"), Some("close"), "{request:?}");
        if let Some(want) = want_body {
            assert_eq!(body(&answer), *want, "{request:?}");
        }
        if *status == 200 {
            assert_eq!(header(&answer, "content-type"), Some("text/plain"));
        }
    }

    let records = webprom_edge_wait(&l, rows.len()).await;
    assert_eq!(records.len(), rows.len(), "one record per request");
    for ((request, status, _, _, path, host), record) in rows.iter().zip(&records) {
        assert_eq!(record["status"], *status, "{request:?}");
        assert_eq!(record["path"], *path, "{request:?}");
        assert_eq!(record["host"].as_str(), *host, "{request:?}");
        assert_eq!(record["proto"], "HTTP/1.1", "{request:?}");
    }
    let log = l.log_text();
    for secret in [TOKEN, SHORT_TOKEN, "unknownToken", "x=1", "evil"] {
        assert!(!log.contains(secret), "{secret:?} reached the log:\n{log}");
    }
    // Counted like any other request, by status class.
    let metrics = l.sinks.metrics.render();
    for (class, want) in [("2xx", 3), ("3xx", 4), ("4xx", 9)] {
        let counted: f64 = metrics
            .lines()
            .filter(|line| {
                line.starts_with("webprom_edge_http_requests_total{")
                    && line.contains(&format!("status_class=\"{class}\""))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(counted, want as f64, "{class}:\n{metrics}");
    }
}

/// Waits (up to 5 s) for `n` records, in the order written.
async fn webprom_edge_wait(l: &Listener, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..50 {
        let records = l.records().await;
        if records.len() >= n {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    l.records().await
}

#[tokio::test]
async fn the_proxy_s_challenges_answer_404_for_a_token_not_pending() {
    let l = start(Challenges::default(), Duration::from_secs(5)).await;
    let answer = l
        .exchange(
            format!(
                "GET /.well-known/acme-challenge/{TOKEN} HTTP/1.1\r\nhost: ads.example\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(status_of(&answer), 404, "{answer}");
}

#[tokio::test]
async fn a_head_the_parser_refuses_is_answered_and_recorded_once_and_a_slow_one_is_closed() {
    let l = start(pending().await, Duration::from_millis(500)).await;
    // (request, status the parser answers)
    // More field lines than server.max_header_fields (100), in one segment, so that the
    // whole request is read and the close is not a reset.
    let many = format!(
        "GET / HTTP/1.1\r\nhost: localhost\r\n{}\r\n",
        "x-f: 1\r\n".repeat(120)
    );
    let rows: [(&[u8], u16); 3] = [
        (b"NOT A REQUEST\r\n\r\n", 400),
        (
            b"GET / HTTP/1.1\r\nhost: localhost\r\nbad header\r\n\r\n",
            400,
        ),
        (many.as_bytes(), 431),
    ];
    for (request, status) in rows {
        let answer = l.exchange(request).await;
        assert_eq!(status_of(&answer), status, "{answer}");
    }
    // A head that never ends: closed at header_read_timeout, nothing sent, nothing recorded.
    let started = std::time::Instant::now();
    let answer = l
        .exchange(b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nhost: loc")
        .await;
    assert_eq!(answer, "");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    // A connection that sends nothing at all: the same.
    let answer = l.exchange(b"").await;
    assert_eq!(answer, "");

    let records = webprom_edge_wait(&l, rows.len()).await;
    assert_eq!(records.len(), rows.len(), "{records:?}");
    for ((_, status), record) in rows.iter().zip(&records) {
        assert_eq!(record["status"], *status);
        assert_eq!(record["path"], "");
    }
}

#[tokio::test]
async fn a_drain_stops_accepting_and_lets_the_open_connections_end() {
    let mut l = start(pending().await, Duration::from_secs(3)).await;
    // One connection half-way through its head when the drain starts.
    let mut open = TcpStream::connect(l.addr).await.unwrap();
    open.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    l.shutdown.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(2), &mut l.task)
        .await
        .expect("the accept loop ends at once")
        .unwrap();
    assert!(
        TcpStream::connect(l.addr).await.is_err(),
        "no new connection once draining"
    );
    // The open connection ends within its deadlines (here: its head's), and with it the last
    // holder of the drain's tracker.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut rest)).await;
    let drained = tokio::time::timeout(Duration::from_secs(5), l.drained.recv()).await;
    assert_eq!(
        drained,
        Ok(None),
        "every connection has let go of the tracker"
    );
}

#[tokio::test]
async fn behind_a_balancer_the_proxy_protocol_header_names_the_client_recorded() {
    let l = start_with(pending().await, Duration::from_secs(2), |c| {
        c.server.proxy_protocol = webprom_edge::config::ProxyProtocol::V1;
        c.client_ip.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let request = format!(
        "PROXY TCP4 198.51.100.7 192.0.2.1 40000 80\r\nGET /.well-known/acme-challenge/{TOKEN} HTTP/1.1\r\nhost: ads.example\r\n\r\n"
    );
    let answer = l.exchange(request.as_bytes()).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(body(&answer), KEY_AUTHORIZATION);
    // A connection from the balancer without the header: closed (the request unread, so
    // possibly with a reset), nothing sent, counted, not recorded.
    let mut tcp = TcpStream::connect(l.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: ads.example\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("closed at once");
    assert!(read.is_ok() || read.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset));
    assert!(answer.is_empty(), "{answer:?}");
    let records = webprom_edge_wait(&l, 1).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["net"], "198.51.100.0/24");
    let metrics = l.sinks.metrics.render();
    assert!(
        metrics.lines().any(
            |line| line.starts_with("webprom_edge_proxy_protocol_rejected_total{")
                && line.ends_with(" 1")
        ),
        "{metrics}"
    );
}

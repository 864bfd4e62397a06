//! The shared test harness: a real upstream HTTP server on loopback, the real proxy binary
//! started with a config in a temporary directory, and a real TLS client that speaks HTTP/1.1
//! and HTTP/2.
#![allow(dead_code)]

pub mod mmdb;
pub mod origin;
pub mod pebble;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Deterministic bytes for upload/download checks.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A real upstream on 127.0.0.1:0 that records the request heads it sees.
///
/// Routes: `/echo` (echoes the body, streaming), `/sink` (reads the whole body first), `/headers`, `/big?bytes=N`
/// (streamed, no length), `/sized?bytes=N` (with `Content-Length`), `/slow?ms=N`,
/// `/trickle?ms=N&bytes=N` (one byte, then the other N - 1 after N ms, with `Content-Length`),
/// `/hop` (answers with hop-by-hop headers), `/ws` (101 + byte echo), `/set-cookie` (a
/// `Set-Cookie` per `x-test-set-cookie` request header, and `Date: <x-test-date>` if given),
/// anything else: a greeting.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<HeaderMap>>>,
    /// TCP connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// TCP connections open now.
    pub open: Arc<std::sync::atomic::AtomicUsize>,
    /// The most TCP connections ever open at once.
    pub max_open: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const GREETING: &str = "hello from upstream\n";

/// The body of the test upstreams' answers.
pub type UpBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn query_num(req: &Request<Incoming>, name: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

async fn upstream_route(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
) -> Response<UpBody> {
    seen.lock().unwrap().push(req.headers().clone());
    match req.uri().path() {
        "/echo" => Response::new(req.into_body().boxed()),
        "/sink" => match req.into_body().collect().await {
            Ok(b) => Response::new(full(format!("received {} bytes\n", b.to_bytes().len()))),
            Err(_) => Response::builder().status(400).body(full("")).unwrap(),
        },
        "/headers" => {
            let mut text = String::new();
            for (k, v) in req.headers() {
                text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            Response::new(full(text))
        }
        "/big" => {
            let n = query_num(&req, "bytes").unwrap_or(5 << 20) as usize;
            let data = Bytes::from(pattern(n));
            // Stream in 64 KiB frames, as a real server would.
            let chunks: Vec<Result<Frame<Bytes>, hyper::Error>> = (0..n)
                .step_by(65536)
                .map(|i| Ok(Frame::data(data.slice(i..(i + 65536).min(n)))))
                .collect();
            Response::new(BodyExt::boxed(StreamBody::new(futures_stream(chunks))))
        }
        "/sized" => {
            let n = query_num(&req, "bytes").unwrap_or(1 << 20) as usize;
            Response::new(full(pattern(n)))
        }
        "/trickle" => {
            let ms = query_num(&req, "ms").unwrap_or(300);
            let n = query_num(&req, "bytes").unwrap_or(1000).max(1) as usize;
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"a")))).await;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from(vec![b'b'; n - 1]))))
                    .await;
            });
            let body = StreamBody::new(Channel(rx));
            Response::builder()
                .header("content-length", n)
                .body(BodyExt::boxed(body))
                .unwrap()
        }
        "/slow" => {
            let ms = query_num(&req, "ms").unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full("slow done\n"))
        }
        "/cookies" => Response::builder()
            .header("set-cookie", "long=1; Max-Age=31536000; Path=/")
            .header("set-cookie", "session=2; Path=/; HttpOnly")
            .header("set-cookie", "short=3; Max-Age=60")
            .body(full("cookies\n"))
            .unwrap(),
        "/set-cookie" => {
            let mut resp = Response::builder();
            for value in req.headers().get_all("x-test-set-cookie") {
                resp = resp.header("set-cookie", value);
            }
            if let Some(date) = req.headers().get("x-test-date") {
                resp = resp.header("date", date);
            }
            resp.body(full("set-cookie\n")).unwrap()
        }
        "/hop" => Response::builder()
            .header("connection", "x-resp-hop")
            .header("x-resp-hop", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-end-to-end", "kept")
            .body(full("hop\n"))
            .unwrap(),
        "/ws" => echo_upgrade(&mut req),
        _ => Response::new(full(GREETING)),
    }
}

/// The answer of an upstream to an upgrade request (`/ws`): 101 to protocol `echo`, and a task
/// that sends back every byte the tunnel brings.
pub fn echo_upgrade(req: &mut Request<Incoming>) -> Response<UpBody> {
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(full(""))
        .unwrap()
}

/// The frames of a channel, as a stream.
struct Channel(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, hyper::Error>>);

impl futures_core::Stream for Channel {
    type Item = Result<Frame<Bytes>, hyper::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

fn futures_stream(
    items: Vec<Result<Frame<Bytes>, hyper::Error>>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, hyper::Error>> + Send + Sync + 'static {
    struct Iter(std::vec::IntoIter<Result<Frame<Bytes>, hyper::Error>>);
    impl futures_core::Stream for Iter {
        type Item = Result<Frame<Bytes>, hyper::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = connections.clone();
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let max_open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (open2, max_open2) = (open.clone(), max_open.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let now_open = open2.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                max_open2.fetch_max(now_open, std::sync::atomic::Ordering::SeqCst);
                let open = open2.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(upstream_route(req, seen).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                    open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            seen,
            connections,
            open,
            max_open,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The last request head the upstream saw.
    pub fn last_headers(&self) -> HeaderMap {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw a request")
    }
}

/// Whether the Debian program `program` (package `package`) is installed. Without it the test
/// skips with a message, unless `WEBPROM_EDGE_REQUIRE_EXTERNAL=1` (CI), where it fails.
pub fn external(program: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("WEBPROM_EDGE_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
            panic!(
                "{program} is required (WEBPROM_EDGE_REQUIRE_EXTERNAL=1): apt-get install {package}"
            );
        }
        eprintln!(
            "SKIPPED: {program} not found; install the Debian package `{package}` to run this test"
        );
    }
    found
}

/// Today's UTC day, `YYYY-MM-DD`.
pub fn today_string() -> String {
    webprom_edge::epoch::Epoch::today().to_string()
}

/// The UTC day `offset` days from today, `YYYY-MM-DD`.
pub fn day_offset(offset: i64) -> String {
    let mut day = webprom_edge::epoch::Epoch::today();
    for _ in 0..offset.unsigned_abs() {
        day = if offset < 0 { day.prev() } else { day.next() };
    }
    day.to_string()
}

/// The string value (or number, as text) of one field of a JSON line.
/// Asks `check` every `every` until it answers `Some`, and returns that; panics with `what()`
/// (which can describe the state by then) once `limit` has passed.
pub async fn eventually<T>(
    limit: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
    what: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{}", what());
        tokio::time::sleep(every).await;
    }
}

pub fn field(line: &str, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    match &v[name] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A free loopback address for a server the test starts itself (Prometheus, HAProxy): bound,
/// then let go. Not for an address that must stay dead: [`dead_addr`].
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A loopback address where nothing listens, and nothing will for the rest of the test
/// process: its port stays bound (never listening, so a connect is refused) instead of being
/// let go, where another test's server, bound to port 0 a moment later, could get it.
pub fn dead_addr() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    std::mem::forget(socket);
    addr
}

/// A proxy process with its own directory.
pub struct Proxy {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub tls_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub plain_addr: Option<SocketAddr>,
    /// The `acme.http_listen` listener, when `[acme]` has one.
    pub acme_http_addr: Option<SocketAddr>,
    pub stderr: Arc<Mutex<String>>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_webprom-edge")
}

/// The config the tests start from: everything on 127.0.0.1:0, files in `dir`.
pub fn base_config(dir: &Path, upstream: &str) -> String {
    let d = dir.display();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 2
hosts = ["localhost"]
shutdown_grace = "5s"

[tls]
cert = "{d}/cert.pem"
key = "{d}/key.pem"
self_signed = true

[upstream]
servers = ["{upstream}"]

[geoip]
database = "{d}/country.mmdb"

[privacy]
key_dir = "{d}/keys"

[access_log]
dir = "{d}/logs"

[admin]
listen = "127.0.0.1:0"
"#
    )
}

/// A small country database: 198.51.100.0/24 and 2001:db8:1::/48 are Albania, 203.0.113.0/24
/// is Kosovo.
pub fn write_test_geo(dir: &Path) {
    mmdb::write_country_db(
        &dir.join("country.mmdb"),
        &[
            ("198.51.100.0/24", "AL"),
            ("2001:db8:1::/48", "AL"),
            ("203.0.113.0/24", "XK"),
        ],
        mmdb::Schema::MaxMind,
    );
}

/// A proxy that believes X-Forwarded-For from loopback, so tests can play any client address.
pub async fn trusting_proxy(up: &Upstream) -> Proxy {
    Proxy::start_with(|c| trusting(&c), &up.url()).await
}

/// Replaces `key = ...` in `[section]` of a TOML text, or adds it.
pub fn set(config: &str, section: &str, key: &str, value: &str) -> String {
    let mut doc: toml::Table = config.parse().unwrap();
    let table = doc
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .unwrap();
    let value: toml::Value = format!("v = {value}").parse::<toml::Table>().unwrap()["v"].clone();
    table.insert(key.to_owned(), value);
    toml::to_string(&doc).unwrap()
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        Self::start_with(|c| c, upstream).await
    }

    /// Starts the proxy with the base config changed by `edit`.
    pub async fn start_with(edit: impl FnOnce(String) -> String, upstream: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let config = edit(base_config(dir.path(), upstream));
        write_test_geo(dir.path());
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        Self::spawn(dir).await
    }

    pub async fn spawn(dir: tempfile::TempDir) -> Proxy {
        Self::spawn_with(dir, |_| {}).await
    }

    /// As [`Proxy::spawn`], with the command changed by `edit` first (limits, user).
    pub async fn spawn_with(dir: tempfile::TempDir, edit: impl FnOnce(&mut Command)) -> Proxy {
        if !dir.path().join("country.mmdb").exists() {
            write_test_geo(dir.path());
        }
        let mut command = Command::new(bin());
        command
            .args(["run", "--config"])
            .arg(dir.path().join("config.toml"))
            .current_dir(dir.path())
            .env("WEBPROM_EDGE_LOG", "debug,h2=info,hyper=info,rustls=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        edit(&mut command);
        let mut child = command.spawn().expect("start webprom-edge");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(String, SocketAddr)>();
        let pipe = child.stderr.take().unwrap();
        let out = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening")
                    && let Some(addr) = log_field(&line, "addr")
                    && let Some(name) = log_field(&line, "listener")
                {
                    let _ = tx.send((name.trim_matches('"').to_owned(), addr.parse().unwrap()));
                }
                let mut all = out.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let out = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut all = out.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let (mut tls_addr, mut admin_addr, mut plain_addr, mut acme_http_addr) =
            (None, None, None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tls_addr.is_none() || admin_addr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((name, addr)) => match name.as_str() {
                    "tls" => tls_addr = Some(addr),
                    "admin" => admin_addr = Some(addr),
                    "plain" => plain_addr = Some(addr),
                    "acme-http" => acme_http_addr = Some(addr),
                    _ => {}
                },
                Err(_) => {
                    let _ = child.kill();
                    panic!("proxy did not start:\n{}", stderr.lock().unwrap());
                }
            }
        }
        // The plain and acme-http listeners are announced before the admin one.
        while let Ok((name, addr)) = rx.try_recv() {
            match name.as_str() {
                "plain" => plain_addr = Some(addr),
                "acme-http" => acme_http_addr = Some(addr),
                _ => {}
            }
        }
        Proxy {
            dir,
            child,
            tls_addr: tls_addr.unwrap(),
            admin_addr: admin_addr.unwrap(),
            plain_addr,
            acme_http_addr,
            stderr,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn signal(&self, sig: &str) {
        signal_pid(self.child.id(), sig);
    }

    /// Waits for the process to exit (at most `limit`).
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "proxy did not exit in {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn output(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The whole records in the access log directory, all day files concatenated (a line the
    /// writer is still writing is left out).
    pub fn access_log(&self) -> String {
        let mut all = String::new();
        if let Ok(entries) = std::fs::read_dir(self.path("logs")) {
            for e in entries.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                // Whole records only: the writer may be halfway through the last line.
                let whole = text.rfind('\n').map_or(0, |end| end + 1);
                all.push_str(&text[..whole]);
            }
        }
        all
    }

    /// Waits (up to 15 s) until the access log holds at least `n` records; returns them all.
    pub async fn wait_records(&self, n: usize) -> Vec<String> {
        wait_lines(n, || self.records()).await;
        // Give a straggler the chance to show it would have made n + 1.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        self.records()
    }

    /// The whole records in the access log directory, one a line (see [`Proxy::access_log`]).
    pub fn records(&self) -> Vec<String> {
        self.access_log().lines().map(str::to_owned).collect()
    }

    pub fn client(&self) -> Client {
        Client::new(self.tls_addr, &self.path("cert.pem"))
    }

    /// GET on the admin listener: (status, body).
    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        let tcp = TcpStream::connect(self.admin_addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", "admin")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[start..];
    Some(rest.split_whitespace().next().unwrap_or(rest))
}

/// Which HTTP version to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

pub const BOTH: [Proto; 2] = [Proto::H1, Proto::H2];

/// A TLS client that trusts the proxy's certificate.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    config_h1: Arc<rustls::ClientConfig>,
    config_h2: Arc<rustls::ClientConfig>,
}

/// A response, body collected.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One open connection to the proxy.
pub enum Conn {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

pub type ReqBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

pub fn body(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into()).boxed()
}

/// A body streamed in chunks with no declared length.
pub fn chunked_body(data: Vec<u8>) -> ReqBody {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    struct Iter(std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>);
    impl futures_core::Stream for Iter {
        type Item = Result<Frame<Bytes>, Infallible>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    StreamBody::new(Iter(frames.into_iter())).boxed()
}

impl Client {
    pub fn new(addr: SocketAddr, cert_pem: &Path) -> Client {
        Client {
            addr,
            config_h1: tls_client_config(cert_pem, Some(b"http/1.1")),
            config_h2: tls_client_config(cert_pem, Some(b"h2")),
        }
    }

    /// Opens a TLS connection, checks the negotiated ALPN, and starts HTTP on it.
    pub async fn connect(&self, proto: Proto) -> Conn {
        let config = match proto {
            Proto::H1 => self.config_h1.clone(),
            Proto::H2 => self.config_h2.clone(),
        };
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let alpn = tls.get_ref().1.alpn_protocol().map(|a| a.to_vec());
        match proto {
            Proto::H1 => {
                assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .unwrap();
                tokio::spawn(conn.with_upgrades());
                Conn::H1(send)
            }
            Proto::H2 => {
                assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
                let (send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                Conn::H2(send)
            }
        }
    }

    /// One request on a fresh connection.
    pub async fn request(&self, proto: Proto, req: Request<ReqBody>) -> Resp {
        let mut conn = self.connect(proto).await;
        conn.send(req).await
    }

    /// Writes `request` as it is over a TLS connection with ALPN http/1.1 and returns all that
    /// comes back until the proxy closes (or 10 s pass). For heads no HTTP client would send.
    pub async fn raw_h1(&self, request: &[u8]) -> String {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(self.config_h1.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        tls.write_all(request).await.unwrap();
        tls.flush().await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    pub async fn get(&self, proto: Proto, path: &str) -> Resp {
        self.request(proto, get(path)).await
    }
}

/// A GET request for `path` on host localhost.
pub fn get(path: &str) -> Request<ReqBody> {
    Request::get(format!("https://localhost{path}"))
        .body(body(Bytes::new()))
        .unwrap()
}

impl Conn {
    /// Sends a request and returns its response status, or the error (e.g. a stream reset).
    pub async fn try_send(&mut self, req: Request<ReqBody>) -> Result<StatusCode, hyper::Error> {
        match self {
            Conn::H1(s) => {
                s.ready().await?;
                Ok(s.send_request(req).await?.status())
            }
            Conn::H2(s) => {
                s.ready().await?;
                Ok(s.send_request(req).await?.status())
            }
        }
    }

    pub async fn send(&mut self, mut req: Request<ReqBody>) -> Resp {
        let resp = match self {
            Conn::H1(s) => {
                // HTTP/1.1 wants origin-form and a Host header.
                let pq = req.uri().path_and_query().map(|p| p.as_str().to_owned());
                if let Some(pq) = pq {
                    *req.uri_mut() = pq.parse().unwrap();
                }
                req.headers_mut()
                    .entry(http::header::HOST)
                    .or_insert(http::HeaderValue::from_static("localhost"));
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
            Conn::H2(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// A TLS client config that accepts any certificate (to look at what is served), offering
/// `alpn`.
pub fn unverified_client_config(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AcceptAll;
    impl rustls::client::danger::ServerCertVerifier for AcceptAll {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAll))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// The certificate a new TLS connection to `addr` is shown (no verification).
pub async fn presented_cert(addr: SocketAddr) -> Vec<u8> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(unverified_client_config(&[]))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The first certificate in a PEM file, DER.
pub fn pem_cert_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

// Helpers several test files share: requests, proxies started with keys set, records, key
// files and metric readers. One copy each.

/// The fields of an access-log record, in the order the proxy writes them (SPEC, record
/// schema).
pub const RECORD_FIELDS: [&str; 18] = [
    "ts",
    "epoch",
    "client",
    "net",
    "country",
    "browser",
    "browser_version",
    "os",
    "bot",
    "lang",
    "method",
    "host",
    "path",
    "status",
    "bytes_sent",
    "duration_ms",
    "proto",
    "limited",
];

/// A GET for `path` on host localhost, from the client `ip` as a trusted proxy would name it
/// (`X-Forwarded-For`; see [`trusting_proxy`]).
pub fn from(ip: &str, path: &str) -> Request<ReqBody> {
    Request::get(format!("https://localhost{path}"))
        .header("x-forwarded-for", ip)
        .body(body(Bytes::new()))
        .unwrap()
}

/// `config` with loopback (127.0.0.1) a trusted proxy, so that `X-Forwarded-For` names the
/// client.
pub fn trusting(config: &str) -> String {
    set(config, "client_ip", "trusted_proxies", "[\"127.0.0.1\"]")
}

/// `config` with rate limiting off, for tests that send hundreds of requests from one address.
pub fn unlimited(config: &str) -> String {
    set(config, "rate_limit", "enabled", "false")
}

/// `config` with each `(key, value)` of `keys` set in `[section]`.
pub fn set_all(config: &str, section: &str, keys: &[(&str, &str)]) -> String {
    keys.iter()
        .fold(config.to_owned(), |c, (k, v)| set(&c, section, k, v))
}

/// A proxy in front of `upstream` with no rate limit, its config then changed by `edit`.
pub async fn unlimited_proxy(upstream: &str, edit: impl FnOnce(String) -> String) -> Proxy {
    Proxy::start_with(|c| edit(unlimited(&c)), upstream).await
}

/// A proxy in front of `upstream` with no rate limit, its `[upstream]` keys set from `keys`.
pub async fn proxy_with_upstream_keys(upstream: &str, keys: &[(&str, &str)]) -> Proxy {
    unlimited_proxy(upstream, |c| set_all(&c, "upstream", keys)).await
}

/// A proxy that believes X-Forwarded-For from loopback and does not rate-limit.
pub async fn trusting_unlimited_proxy(up: &Upstream) -> Proxy {
    Proxy::start_with(|c| unlimited(&trusting(&c)), &up.url()).await
}

/// Waits (up to 15 s) until `read` gives at least `n` lines; returns them.
pub async fn wait_lines(n: usize, read: impl Fn() -> Vec<String>) -> Vec<String> {
    eventually(
        Duration::from_secs(15),
        Duration::from_millis(100),
        async || Some(read()).filter(|lines| lines.len() >= n),
        || {
            let lines = read();
            format!("{} of {n} records:\n{}", lines.len(), lines.join("\n"))
        },
    )
    .await
}

/// The key of `day` (`YYYY-MM-DD`) in `<dir>/keys`, from its 64 hex characters.
pub fn read_key(dir: &Path, day: &str) -> [u8; 32] {
    let raw = std::fs::read(dir.join(format!("keys/{day}.key"))).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let hex = text.trim();
    assert_eq!(hex.len(), 64, "key file is 64 hex characters");
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    key
}

/// `bytes` as lowercase hex, as a key file holds them.
pub fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Today's day file of a proxy started from the harness.
pub fn day_file(proxy: &Proxy) -> PathBuf {
    proxy.path(&format!("logs/access-{}.jsonl", today_string()))
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Makes a named pipe (mode 0600) at `path`.
pub fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// One HTTP/2 frame (RFC 9113 §4.1): `kind`, `flags`, `stream` and `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A TLS client config that trusts the certificates of the file `cert_pem` and offers `alpn`.
pub fn tls_client_config(cert_pem: &Path, alpn: Option<&[u8]>) -> Arc<rustls::ClientConfig> {
    tls_client_config_pem(&std::fs::read(cert_pem).unwrap(), alpn)
}

/// A TLS client config that trusts the PEM certificates `pem` and offers `alpn`.
pub fn tls_client_config_pem(pem: &[u8], alpn: Option<&[u8]>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.into_iter().map(<[u8]>::to_vec).collect();
    Arc::new(config)
}

/// A second handle on an HTTP/2 connection, for concurrent streams.
pub fn share(conn: &Conn) -> Conn {
    match conn {
        Conn::H2(s) => Conn::H2(s.clone()),
        Conn::H1(_) => panic!("an HTTP/1.1 connection carries one request at a time"),
    }
}

/// A plain HTTP GET; None if the server is not up yet.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .ok()?;
    let resp = send.send_request(req).await.ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// The value of one sample line of the Prometheus text, 0 when absent.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every sample of the Prometheus text whose line starts with `series_prefix`.
pub fn metric_sum(metrics: &str, series_prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(series_prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `upstream_errors_total{kind}`.
pub fn upstream_errors(metrics: &str, kind: &str) -> f64 {
    sample(
        metrics,
        &format!("webprom_edge_upstream_errors_total{{kind=\"{kind}\"}}"),
    )
}

/// `upstream_errors_total` of every kind.
pub fn total_upstream_errors(metrics: &str) -> f64 {
    ["connect", "timeout", "protocol"]
        .iter()
        .map(|k| upstream_errors(metrics, k))
        .sum()
}

/// A real Prometheus server scraping one target every second, killed when dropped. Its HTTP
/// API listens on `web`.
pub struct Prometheus {
    pub web: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `prometheus` (Debian package `prometheus`; see [`external`]) scraping `target`
    /// as job `job`, its data in a temporary directory.
    pub fn scraping(target: SocketAddr, job: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let web = free_addr();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Prometheus {
            web,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to its end: its exit status (-1 when a signal ended it), stdout and stderr, as
/// text.
pub fn output_text(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The binary's `command` with `--config <dir>/config.toml` and then `args`, to run in `dir`.
pub fn tool_command(dir: &Path, command: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg(command)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .args(args)
        .current_dir(dir);
    cmd
}

/// Sends signal `sig` (`HUP`, `STOP`, `CONT`, `KILL`…) to process `pid` with kill(1); a
/// process that cannot be signalled fails the test.
pub fn signal_pid(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

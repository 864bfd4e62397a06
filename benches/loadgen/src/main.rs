//! webprom-edge-loadgen: the load generator of `benches/edge/run.sh`.
//!
//! ```text
//! loadgen run  --addr 127.0.0.1:PORT --proto h2|h1 [--conns 50] [--streams 10] [--duration 10]
//!              [--corpus DIR | --path /] [--new-conn [--resume]] [--timeout 10] [--seed 1]
//! loadgen hold --addr 127.0.0.1:PORT --proto h2|h1 --conns 10000 [--parallel 64] [--hold 5]
//! ```
//!
//! `run` keeps `--conns` TLS connections busy for `--duration` seconds: with `--proto h2`,
//! `--streams` requests in flight on each (ALPN h2); with `--proto h1`, one at a time (ALPN
//! http/1.1, keep-alive). With `--corpus`, each request takes the next client address of
//! `clients.txt` (as `X-Forwarded-For`), a user agent and an Accept-Language value drawn by their
//! weights, and a path drawn from `paths.txt`. With `--new-conn`, each connection carries one
//! request and is closed (`--conns` clients, each opening one connection after another): every
//! handshake is full, or, with `--resume`, resumed from the session ticket the client's previous
//! connection received (each client keeps its own tickets, as a browser does).
//!
//! `hold` opens `--conns` connections (TLS handshake done; for h2 also the client preface and
//! SETTINGS sent), prints `ready`, keeps them idle for `--hold` seconds and prints how many are
//! still open.
//!
//! Results are `key=value` lines on stdout. One thread (a current-thread runtime), so the
//! harness can pin it to one core. Latencies are measured from the request's start (for
//! `--new-conn`, from the TCP connect) to the end of its response body.

mod corpus;
mod h1;
mod stats;
mod tls;

use std::cell::{Cell, RefCell};
use std::error::Error;
use std::future::poll_fn;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::header::{ACCEPT, ACCEPT_LANGUAGE, HeaderName, USER_AGENT};
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Uri};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, spawn_local};
use tokio::time::{Instant, sleep, timeout};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use corpus::{Corpus, Rng};
use stats::Stats;

type BoxError = Box<dyn Error>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    H2,
    H1,
}

struct Args {
    hold_mode: bool,
    addr: SocketAddr,
    sni: String,
    proto: Proto,
    conns: usize,
    streams: usize,
    duration: Duration,
    corpus: Option<PathBuf>,
    path: String,
    new_conn: bool,
    resume: bool,
    timeout: Duration,
    parallel: usize,
    hold: Duration,
    seed: u64,
}

fn usage() -> &'static str {
    "usage: loadgen run|hold --addr HOST:PORT --proto h2|h1 [--conns N] [--streams N] \
     [--duration S] [--corpus DIR] [--path P] [--new-conn] [--resume] [--timeout S] \
     [--parallel N] [--hold S] [--sni NAME] [--seed N]"
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let hold_mode = match it.next().as_deref() {
        Some("run") => false,
        Some("hold") => true,
        _ => return Err(usage().to_owned()),
    };
    let mut a = Args {
        hold_mode,
        addr: SocketAddr::from(([127, 0, 0, 1], 443)),
        sni: "localhost".to_owned(),
        proto: Proto::H2,
        conns: 50,
        streams: 10,
        duration: Duration::from_secs(10),
        corpus: None,
        path: "/".to_owned(),
        new_conn: false,
        resume: false,
        timeout: Duration::from_secs(10),
        parallel: 64,
        hold: Duration::from_secs(5),
        seed: 1,
    };
    let mut addr = None;
    let secs = |v: &str| -> Result<Duration, String> {
        v.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("not a number of seconds: {v}"))
    };
    let count = |v: &str| -> Result<usize, String> {
        v.parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("not a positive count: {v}"))
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--new-conn" => a.new_conn = true,
            "--resume" => a.resume = true,
            _ => {
                let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
                match flag.as_str() {
                    "--addr" => addr = Some(v),
                    "--sni" => a.sni = v,
                    "--proto" => {
                        a.proto = match v.as_str() {
                            "h2" => Proto::H2,
                            "h1" => Proto::H1,
                            _ => return Err(format!("--proto is h2 or h1, not {v}")),
                        }
                    }
                    "--conns" => a.conns = count(&v)?,
                    "--streams" => a.streams = count(&v)?,
                    "--duration" => a.duration = secs(&v)?,
                    "--corpus" => a.corpus = Some(PathBuf::from(v)),
                    "--path" => a.path = v,
                    "--timeout" => a.timeout = secs(&v)?,
                    "--parallel" => a.parallel = count(&v)?,
                    "--hold" => a.hold = secs(&v)?,
                    "--seed" => a.seed = v.parse().map_err(|_| format!("--seed: {v}"))?,
                    _ => return Err(format!("unknown option {flag}\n{}", usage())),
                }
            }
        }
    }
    let addr = addr.ok_or("--addr is required")?;
    a.addr = addr
        .to_socket_addrs()
        .map_err(|e| format!("--addr {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("--addr {addr}: no address"))?;
    if a.resume && !a.new_conn {
        return Err("--resume goes with --new-conn".to_owned());
    }
    Ok(a)
}

/// What every task of a run shares (one thread: `Rc`, `Cell`, `RefCell`).
struct Shared {
    args: Args,
    corpus: Corpus,
    config: Arc<ClientConfig>,
    authority: Authority,
    stats: RefCell<Stats>,
    /// Requests begun: request `n` takes client address `n` (modulo their number).
    issued: Cell<u64>,
    deadline: Cell<Instant>,
}

impl Shared {
    fn running(&self) -> bool {
        Instant::now() < self.deadline.get()
    }

    fn next_request(&self) -> u64 {
        let n = self.issued.get();
        self.issued.set(n + 1);
        n
    }

    /// Counts a finished request if it finished before the deadline (after it, the run is
    /// over and connections are being dropped: neither results nor errors count).
    fn finish(&self, started: Instant, result: Result<u16, BoxError>) {
        let now = Instant::now();
        if now > self.deadline.get() {
            return;
        }
        let mut stats = self.stats.borrow_mut();
        match result {
            Ok(status) => stats.record(now - started, status),
            Err(e) => stats.error(&e),
        }
    }

    fn h2_request(&self, rng: &mut Rng) -> Result<Request<()>, BoxError> {
        let pick = self.corpus.pick(self.next_request(), rng);
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTPS);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(pick.path.clone());
        let mut request = Request::new(());
        *request.uri_mut() = Uri::from_parts(parts)?;
        let headers = request.headers_mut();
        headers.reserve(4);
        headers.insert(USER_AGENT, pick.user_agent.clone());
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        if let Some(lang) = pick.accept_language {
            headers.insert(ACCEPT_LANGUAGE, lang.clone());
        }
        if let Some(client) = pick.client {
            headers.insert(X_FORWARDED_FOR, client.clone());
        }
        Ok(request)
    }

    fn h1_request(&self, rng: &mut Rng, out: &mut Vec<u8>) {
        out.clear();
        let pick = self.corpus.pick(self.next_request(), rng);
        h1::write_request(out, self.authority.as_str(), &pick);
    }

    /// A TCP connection and a TLS handshake, counted.
    async fn connect(&self) -> Result<TlsStream<TcpStream>, BoxError> {
        self.connect_with(&self.config).await
    }

    /// The same with a given client configuration (a session cache of its own).
    async fn connect_with(
        &self,
        config: &Arc<ClientConfig>,
    ) -> Result<TlsStream<TcpStream>, BoxError> {
        let result = async {
            let tcp = TcpStream::connect(self.args.addr).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(self.args.sni.clone())?;
            let tls = TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await?;
            Ok::<_, BoxError>(tls)
        }
        .await;
        let mut stats = self.stats.borrow_mut();
        match result {
            Ok(tls) => {
                let (_, c) = tls.get_ref();
                stats.connections += 1;
                if c.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    stats.resumed += 1;
                }
                if stats.tls.is_none() {
                    let alpn = c.alpn_protocol().map(String::from_utf8_lossy);
                    stats.tls = Some(format!(
                        "{:?} {:?} alpn={}",
                        c.protocol_version()
                            .unwrap_or(rustls::ProtocolVersion::Unknown(0)),
                        c.negotiated_cipher_suite().map(|s| s.suite()),
                        alpn.as_deref().unwrap_or("-")
                    ));
                }
                Ok(tls)
            }
            Err(e) => {
                stats.connect_errors += 1;
                if stats.first_error.is_none() {
                    stats.first_error = Some(format!("connect: {e}"));
                }
                Err(e)
            }
        }
    }

    async fn h2_connect(&self) -> Result<SendRequest<Bytes>, BoxError> {
        self.h2_connect_with(&self.config).await
    }

    async fn h2_connect_with(
        &self,
        config: &Arc<ClientConfig>,
    ) -> Result<SendRequest<Bytes>, BoxError> {
        let tls = self.connect_with(config).await?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 24)
            .handshake::<_, Bytes>(tls)
            .await?;
        spawn_local(async move {
            let _ = connection.await;
        });
        Ok(send)
    }
}

/// One HTTP/2 request on `send`, its response body read to the end.
async fn h2_exchange(send: &mut SendRequest<Bytes>, request: Request<()>) -> Result<u16, BoxError> {
    poll_fn(|cx| send.poll_ready(cx)).await?;
    let (response, _) = send.send_request(request, true)?;
    let response = response.await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(status)
}

/// One stream slot of a keep-alive HTTP/2 connection: a request, then the next, until the
/// deadline or an error.
async fn h2_stream_loop(sh: Rc<Shared>, mut send: SendRequest<Bytes>, seed: u64) {
    let mut rng = Rng::new(seed);
    while sh.running() {
        let started = Instant::now();
        let result = match sh.h2_request(&mut rng) {
            Ok(request) => match timeout(sh.args.timeout, h2_exchange(&mut send, request)).await {
                Ok(r) => r,
                Err(_) => Err("request timed out".into()),
            },
            Err(e) => Err(e),
        };
        let failed = result.is_err();
        sh.finish(started, result);
        if failed {
            break;
        }
    }
}

/// One keep-alive HTTP/2 connection with `--streams` requests in flight; reconnects if the
/// connection fails before the deadline.
async fn h2_connection_loop(sh: Rc<Shared>, mut send: Option<SendRequest<Bytes>>, id: u64) {
    let mut round = 0u64;
    while sh.running() {
        let s = match send.take() {
            Some(s) => s,
            None => match sh.h2_connect().await {
                Ok(s) => s,
                Err(_) => {
                    sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let slots: Vec<JoinHandle<()>> = (0..sh.args.streams as u64)
            .map(|j| {
                let seed = sh.args.seed ^ (id << 32) ^ (round << 16) ^ j;
                spawn_local(h2_stream_loop(sh.clone(), s.clone(), seed))
            })
            .collect();
        drop(s);
        for slot in slots {
            let _ = slot.await;
        }
        round += 1;
    }
}

/// One keep-alive HTTP/1.1 connection, one request at a time; reconnects when the server
/// closes it or it fails.
async fn h1_connection_loop(sh: Rc<Shared>, mut tls: Option<TlsStream<TcpStream>>, id: u64) {
    let mut rng = Rng::new(sh.args.seed ^ (id << 32));
    let mut request = Vec::with_capacity(1024);
    let mut buf = Vec::with_capacity(16384);
    while sh.running() {
        let mut stream = match tls.take() {
            Some(s) => s,
            None => match sh.connect().await {
                Ok(s) => s,
                Err(_) => {
                    sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        buf.clear();
        while sh.running() {
            sh.h1_request(&mut rng, &mut request);
            let started = Instant::now();
            let result = timeout(
                sh.args.timeout,
                h1::exchange(&mut stream, &request, &mut buf),
            )
            .await;
            let (result, reconnect) = match result {
                Ok(Ok(r)) => (Ok(r.status), r.closes),
                Ok(Err(e)) => (Err(e.into()), true),
                Err(_) => (Err("request timed out".into()), true),
            };
            sh.finish(started, result);
            if reconnect {
                break;
            }
        }
    }
}

/// One request on a new connection, which is then closed.
async fn one_connection(
    sh: &Shared,
    config: &Arc<ClientConfig>,
    rng: &mut Rng,
    request: &mut Vec<u8>,
    buf: &mut Vec<u8>,
) -> Result<u16, BoxError> {
    match sh.args.proto {
        Proto::H1 => {
            let mut tls = sh.connect_with(config).await?;
            sh.h1_request(rng, request);
            buf.clear();
            let response = h1::exchange(&mut tls, request, buf).await?;
            let _ = tls.shutdown().await;
            Ok(response.status)
        }
        Proto::H2 => {
            let mut send = sh.h2_connect_with(config).await?;
            let request = sh.h2_request(rng)?;
            let status = h2_exchange(&mut send, request).await?;
            // The last handle dropped: the connection sends GOAWAY and closes.
            drop(send);
            Ok(status)
        }
    }
}

/// One client opening connection after connection; with `--resume` it keeps its own session
/// tickets, so each connection resumes the previous one's session.
async fn new_connection_loop(sh: Rc<Shared>, id: u64) {
    let config = if sh.args.resume {
        tls::own_session_cache(&sh.config)
    } else {
        sh.config.clone()
    };
    let mut rng = Rng::new(sh.args.seed ^ (id << 32));
    let mut request = Vec::with_capacity(1024);
    let mut buf = Vec::with_capacity(16384);
    while sh.running() {
        let started = Instant::now();
        let result = match timeout(
            sh.args.timeout,
            one_connection(&sh, &config, &mut rng, &mut request, &mut buf),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err("connection timed out".into()),
        };
        sh.finish(started, result);
    }
}

async fn run(sh: Rc<Shared>) -> ExitCode {
    let conns = sh.args.conns;
    // Far ahead while connections are opened; set for real when the clock starts.
    sh.deadline
        .set(Instant::now() + Duration::from_secs(86_400));
    let mut tasks = Vec::with_capacity(conns);
    let started;
    if sh.args.new_conn {
        started = Instant::now();
        sh.deadline.set(started + sh.args.duration);
        for id in 0..conns as u64 {
            tasks.push(spawn_local(new_connection_loop(sh.clone(), id)));
        }
    } else {
        // Keep-alive: every connection is opened before the clock starts.
        let opens: Vec<_> = (0..conns)
            .map(|_| {
                let sh = sh.clone();
                spawn_local(async move {
                    match sh.args.proto {
                        Proto::H2 => sh.h2_connect().await.ok().map(Ok),
                        Proto::H1 => sh.connect().await.ok().map(Err),
                    }
                })
            })
            .collect();
        let mut opened = Vec::with_capacity(conns);
        for o in opens {
            opened.push(o.await.ok().flatten());
        }
        if opened.iter().all(Option::is_none) {
            sh.stats.borrow_mut().print(Duration::from_secs(1), 0, 0);
            eprintln!("loadgen: no connection could be opened");
            return ExitCode::FAILURE;
        }
        started = Instant::now();
        sh.deadline.set(started + sh.args.duration);
        for (id, c) in opened.into_iter().enumerate() {
            let id = id as u64;
            tasks.push(match (sh.args.proto, c) {
                (Proto::H2, Some(Ok(send))) => {
                    spawn_local(h2_connection_loop(sh.clone(), Some(send), id))
                }
                (Proto::H1, Some(Err(tls))) => {
                    spawn_local(h1_connection_loop(sh.clone(), Some(tls), id))
                }
                (Proto::H2, _) => spawn_local(h2_connection_loop(sh.clone(), None, id)),
                (Proto::H1, _) => spawn_local(h1_connection_loop(sh.clone(), None, id)),
            });
        }
    }
    tokio::time::sleep_until(sh.deadline.get()).await;
    let elapsed = sh.deadline.get() - started;
    // Let this instant's completions land; later ones are not counted.
    tokio::task::yield_now().await;
    let issued = sh.issued.get();
    sh.stats
        .borrow_mut()
        .print(elapsed, sh.corpus.clients(), issued);
    let _ = std::io::stdout().flush();
    for t in tasks {
        t.abort();
    }
    ExitCode::SUCCESS
}

async fn hold(sh: Rc<Shared>) -> ExitCode {
    let open = Rc::new(Cell::new(0u64));
    let failed = Rc::new(Cell::new(0u64));
    let next = Rc::new(Cell::new(0usize));
    let handles: Rc<RefCell<Vec<SendRequest<Bytes>>>> = Rc::new(RefCell::new(Vec::new()));
    let workers: Vec<_> = (0..sh.args.parallel.min(sh.args.conns))
        .map(|_| {
            let (sh, open, failed, next, handles) = (
                sh.clone(),
                open.clone(),
                failed.clone(),
                next.clone(),
                handles.clone(),
            );
            spawn_local(async move {
                loop {
                    let i = next.get();
                    if i >= sh.args.conns {
                        break;
                    }
                    next.set(i + 1);
                    let Ok(tls) = sh.connect().await else {
                        failed.set(failed.get() + 1);
                        continue;
                    };
                    match sh.args.proto {
                        Proto::H2 => match h2::client::handshake(tls).await {
                            Ok((send, connection)) => {
                                handles.borrow_mut().push(send);
                                open.set(open.get() + 1);
                                let open = open.clone();
                                spawn_local(async move {
                                    let _ = connection.await;
                                    open.set(open.get() - 1);
                                });
                            }
                            Err(_) => failed.set(failed.get() + 1),
                        },
                        Proto::H1 => {
                            open.set(open.get() + 1);
                            let open = open.clone();
                            spawn_local(async move {
                                let mut tls = tls;
                                let mut b = [0u8; 512];
                                // Reads only what the server sends unasked (session tickets);
                                // an end of stream or an error means it closed the connection.
                                while let Ok(n) = tls.read(&mut b).await {
                                    if n == 0 {
                                        break;
                                    }
                                }
                                open.set(open.get() - 1);
                            });
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    // Let the last prefaces and SETTINGS reach the server.
    sleep(Duration::from_millis(500)).await;
    println!("established={}", open.get());
    println!("failed={}", failed.get());
    println!("ready");
    let _ = std::io::stdout().flush();
    sleep(sh.args.hold).await;
    println!("still_open={}", open.get());
    if let Some(e) = &sh.stats.borrow().first_error {
        println!("first_error={e}");
    }
    let _ = std::io::stdout().flush();
    drop(handles);
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let corpus = match &args.corpus {
        Some(dir) => Corpus::load(dir),
        None => Corpus::fixed(&args.path),
    };
    let corpus = match corpus {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: corpus: {e}");
            return ExitCode::from(2);
        }
    };
    let alpn: &[u8] = match args.proto {
        Proto::H2 => b"h2",
        Proto::H1 => b"http/1.1",
    };
    let config = match tls::client_config(alpn, args.resume) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: TLS: {e}");
            return ExitCode::from(2);
        }
    };
    let authority = match Authority::try_from(format!("{}:{}", args.sni, args.addr.port())) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: --sni: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let hold_mode = args.hold_mode;
    let shared = Rc::new(Shared {
        args,
        corpus,
        config,
        authority,
        stats: RefCell::new(Stats::default()),
        issued: Cell::new(0),
        deadline: Cell::new(Instant::now()),
    });
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&runtime, async move {
        if hold_mode {
            hold(shared).await
        } else {
            run(shared).await
        }
    });
    // Connections still open are dropped with the runtime.
    drop(local);
    code
}

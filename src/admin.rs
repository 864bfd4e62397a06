//! The admin listener: `GET /healthz`, `/readyz` and `/metrics`, cleartext HTTP/1.1.
//!
//! Meant for loopback or a private network (the default is `127.0.0.1:9100`). It serves only
//! aggregates and health, never a per-request value.
//!
//! Owns its health view ([`Health`]: the server says when it is listening, the upstream pool
//! is probed) and its own body type ([`Body`], a whole short body); it reads the metrics and
//! the upstream pool it is handed, and never touches the request path.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, VARY};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::fields::{elements, weighted};
use crate::metrics::Metrics;
use crate::proxy::LimiterCell;
use crate::proxy::upstream::Upstreams;

/// An admin response body: short, written whole.
pub type Body = Full<Bytes>;

/// How long an upstream probe's answer is reused by `/readyz`.
pub const READY_PROBE_TTL: Duration = Duration::from_secs(1);

/// What `/readyz` reads: whether the server is listening (set by the server once every
/// listener is bound, cleared when draining starts) and whether an upstream server accepts a
/// connection.
pub struct Health {
    listening: AtomicBool,
    upstreams: Arc<Upstreams>,
    /// The last upstream probe and when it finished; one probe at a time, so that a burst of
    /// `/readyz` requests opens at most one connection per server per [`READY_PROBE_TTL`].
    probed: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
    /// The rate limiter, whose global tier's state `/readyz` reports (never makes unready).
    limiter: Option<Arc<LimiterCell>>,
}

impl Health {
    /// Not listening yet; readiness probes `upstreams`.
    pub fn new(upstreams: Arc<Upstreams>) -> Health {
        Health {
            listening: AtomicBool::new(false),
            upstreams,
            probed: tokio::sync::Mutex::new(None),
            limiter: None,
        }
    }

    /// Also reports the state of `limiter`'s global rate-limit tier, when it has one.
    pub fn with_limiter(mut self, limiter: Arc<LimiterCell>) -> Health {
        self.limiter = Some(limiter);
        self
    }

    /// `global rate limit: ok`, or `global rate limit: degraded (<kind>)` while Redis does not
    /// answer (the proxy stays ready: requests follow `rate_limit.global.on_error`); `None`
    /// without a global tier.
    fn global_tier(&self) -> Option<String> {
        let cell = self.limiter.as_ref()?;
        let guard = cell.load();
        let tier = guard.as_ref()?.global()?;
        Some(match tier.degraded() {
            None => "global rate limit: ok".to_owned(),
            Some(kind) => format!("global rate limit: degraded ({})", kind.as_str()),
        })
    }

    /// Sets the gauges read off this state at a scrape: `global_limit_degraded`.
    pub fn update_gauges(&self, metrics: &Metrics) {
        let degraded = self.limiter.as_ref().is_some_and(|cell| {
            cell.load()
                .as_ref()
                .and_then(|l| l.global())
                .is_some_and(|tier| tier.degraded().is_some())
        });
        metrics.global_limit_degraded.set(i64::from(degraded));
    }

    /// [`Health::ready`] with the global tier's state appended to a ready answer's detail.
    pub async fn ready_detail(&self) -> Result<Option<String>, String> {
        let ready = self.ready().await?;
        Ok(match (ready, self.global_tier()) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        })
    }

    /// Says whether every listener is bound and serving (`false`: not yet, or draining).
    pub fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::Release);
    }

    /// Whether the proxy should be sent traffic: `Err` says why not (`draining`, or each
    /// upstream server's connect failure). With `[upstream.health_check]` on, ready while at
    /// least one server is healthy, saying how many (`upstreams: 2 of 3 healthy`); otherwise
    /// probes the upstreams with a TCP connect ([`Upstreams::probe`]) at most once per
    /// [`READY_PROBE_TTL`]; concurrent callers wait for the one probe.
    pub async fn ready(&self) -> Result<Option<String>, String> {
        if !self.listening.load(Ordering::Acquire) {
            return Err("draining".to_owned());
        }
        // With health checks on, their verdict: no probe connection of its own.
        if let Some((healthy, all)) = self.upstreams.healthy_count() {
            let counted = format!("upstreams: {healthy} of {all} healthy");
            return if healthy > 0 {
                Ok(Some(counted))
            } else {
                Err(counted)
            };
        }
        // The admin listener's lock, never taken on the request path.
        let mut probed = self.probed.lock().await;
        if let Some((at, result)) = probed.as_ref()
            && at.elapsed() < READY_PROBE_TTL
        {
            return result.clone().map(|()| None);
        }
        let result = self
            .upstreams
            .probe()
            .await
            .map_err(|why| format!("no upstream server accepts a connection ({why})"));
        *probed = Some((Instant::now(), result.clone()));
        result.map(|()| None)
    }
}

/// Serves admin requests until its task is dropped: also while draining, so that `/readyz`
/// answers 503 `not ready: draining` then.
pub async fn serve(listener: TcpListener, health: Arc<Health>, metrics: Arc<Metrics>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (health, metrics) = (health.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (health, metrics) = (health.clone(), metrics.clone());
                async move {
                    let resp = if is_readyz(&req) {
                        readyz(&health).await
                    } else {
                        if req.uri().path() == "/metrics" {
                            health.update_gauges(&metrics);
                        }
                        route(&req, &metrics)
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// Every route but `/readyz`: `/healthz` (200 `ok`), `/metrics`; 405 for a method other than
/// GET and HEAD, 404 for any other path.
fn route<B>(req: &Request<B>, metrics: &Metrics) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/metrics" => render_metrics(req, metrics),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/metrics`: the text exposition, gzip-coded when the scraper prefers it (Prometheus asks with
/// `Accept-Encoding: gzip`), identity otherwise; `Vary: Accept-Encoding` either way (RFC 9110
/// §12.5.5). The text is small (measured: 25 KB at start, 111 KB with every country and
/// language series present; gzip's fast level makes them 3.4 KB in 0.15 ms and 14 KB in 0.36 ms
/// on one core, where the default level takes 2.6 ms for 9% less), so it is compressed inline at
/// the fast level, once per scrape, like the rendering itself.
fn render_metrics<B>(req: &Request<B>, metrics: &Metrics) -> Response<Body> {
    let text = metrics.render();
    let gzipped = if prefers_gzip(req.headers().get_all(ACCEPT_ENCODING)) {
        gzip(text.as_bytes())
    } else {
        None
    };
    let gzip_coded = gzipped.is_some();
    let body = gzipped.map_or_else(|| Bytes::from(text), Bytes::from);
    let mut resp = Response::new(Body::new(body));
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::Metrics::content_type()),
    );
    headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip_coded {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}

/// `data` gzip-coded (RFC 1952); `None` if the encoder fails, so the caller sends identity.
fn gzip(data: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::fast(),
    );
    encoder.write_all(data).ok()?;
    encoder.finish().ok()
}

/// Whether to answer gzip-coded a request whose `Accept-Encoding` field has these `lines`
/// (RFC 9110 §12.5.3). gzip's weight is that of `gzip` or its alias `x-gzip` (§8.4.1.3), else
/// of `*`; identity's is that of `identity`, else of `*`, else none (acceptable, but not
/// preferred). gzip wins with a non-zero weight at least as high as identity's: `gzip`, `*` and
/// `br, gzip;q=0.5` give gzip; `gzip;q=0`, `identity`, `gzip;q=0.5, identity`, an empty field
/// and no field give identity. Codings compare case-insensitively (§8.4.1); an element whose
/// qvalue is malformed is left out; the first mention of a coding counts. A request that
/// refuses identity and gzip alike (`*;q=0`) still gets identity rather than a 406.
pub fn prefers_gzip<'a>(lines: impl IntoIterator<Item = &'a HeaderValue>) -> bool {
    let (mut gzip, mut identity, mut any) = (None, None, None);
    for element in elements(lines, b',') {
        let (coding, weight) = weighted(element);
        let Some(weight) = weight else { continue };
        let slot = if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip")
        {
            &mut gzip
        } else if coding.eq_ignore_ascii_case(b"identity") {
            &mut identity
        } else if coding == b"*" {
            &mut any
        } else {
            continue;
        };
        slot.get_or_insert(weight);
    }
    let gzip = gzip.or(any).unwrap_or(0);
    gzip > 0 && identity.or(any).is_none_or(|identity| gzip >= identity)
}

/// `GET` or `HEAD /readyz`, answered by [`readyz`] (it may wait for an upstream probe).
fn is_readyz<B>(req: &Request<B>) -> bool {
    (req.method() == Method::GET || req.method() == Method::HEAD) && req.uri().path() == "/readyz"
}

/// 200 `ready` when listening and an upstream server accepts a TCP connection (with health
/// checks on: `ready: upstreams: H of N healthy`, H at least 1; with a global rate-limit tier,
/// `; global rate limit: ok` or `degraded (<kind>)` appended, ready either way); else 503 `not ready: <reason>`
/// (`draining`, `upstreams: 0 of N healthy`, or each server's address and connect failure:
/// config and the operating system's words, never a request's).
async fn readyz(health: &Health) -> Response<Body> {
    match health.ready_detail().await {
        Ok(None) => text(StatusCode::OK, "ready\n"),
        Ok(Some(detail)) => text(StatusCode::OK, Bytes::from(format!("ready: {detail}\n"))),
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from(format!("not ready: {why}\n")),
        ),
    }
}

/// A plain-text answer.
fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Body::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::str::FromStr;

    async fn body_of(resp: Response<Body>) -> Bytes {
        match resp.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        }
    }

    fn request(method: &str, path: &str, accept_encoding: Option<&str>) -> Request<()> {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(coding) = accept_encoding {
            req = req.header(ACCEPT_ENCODING, coding);
        }
        req.body(()).unwrap()
    }

    #[tokio::test]
    async fn admin_routes_answer_health_metrics_and_nothing_else() {
        let metrics = Metrics::new(&[]);
        let plain = "text/plain; charset=utf-8";
        let exposition = Metrics::content_type();
        // (method, path, Accept-Encoding, status, Content-Type, gzip-coded, body starts with)
        let rows = [
            ("GET", "/healthz", None, 200, plain, false, "ok\n"),
            ("HEAD", "/healthz", None, 200, plain, false, "ok\n"),
            (
                "POST",
                "/healthz",
                None,
                405,
                plain,
                false,
                "only GET and HEAD\n",
            ),
            (
                "DELETE",
                "/metrics",
                None,
                405,
                plain,
                false,
                "only GET and HEAD\n",
            ),
            ("GET", "/", None, 404, plain, false, "not found\n"),
            ("GET", "/healthz/", None, 404, plain, false, "not found\n"),
            ("GET", "/metrics", None, 200, exposition, false, "# HELP "),
            (
                "GET",
                "/metrics",
                Some("gzip"),
                200,
                exposition,
                true,
                "# HELP ",
            ),
            (
                "GET",
                "/metrics",
                Some("gzip;q=0"),
                200,
                exposition,
                false,
                "# HELP ",
            ),
        ];
        for (method, path, coding, status, content_type, gzipped, start) in rows {
            let what = format!("{method} {path} {coding:?}");
            let resp = route(&request(method, path, coding), &metrics);
            assert_eq!(resp.status().as_u16(), status, "{what}");
            assert_eq!(resp.headers()[CONTENT_TYPE], content_type, "{what}");
            let coded = resp.headers().get(CONTENT_ENCODING).is_some();
            assert_eq!(coded, gzipped, "{what}");
            if path == "/metrics" && status == 200 {
                assert_eq!(resp.headers()[VARY], "Accept-Encoding", "{what}");
            }
            let mut body = body_of(resp).await.to_vec();
            if gzipped {
                use std::io::Read;
                let mut text = Vec::new();
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_end(&mut text)
                    .unwrap();
                body = text;
            }
            assert!(body.starts_with(start.as_bytes()), "{what}");
        }
    }

    #[test]
    fn only_get_and_head_of_readyz_wait_for_the_probe() {
        let rows = [
            ("GET", "/readyz", true),
            ("HEAD", "/readyz", true),
            ("POST", "/readyz", false),
            ("GET", "/readyz/", false),
            ("GET", "/healthz", false),
        ];
        for (method, path, want) in rows {
            assert_eq!(
                is_readyz(&request(method, path, None)),
                want,
                "{method} {path}"
            );
        }
    }

    fn health(port: u16) -> Health {
        let server = format!("http://127.0.0.1:{port}");
        let cfg = crate::config::Upstream {
            servers: vec![crate::config::UpstreamServer::from_str(&server).unwrap()],
            ..Default::default()
        };
        let upstreams = Upstreams::new(&cfg, Metrics::new(&[]).upstream_pool());
        Health::new(Arc::new(upstreams))
    }

    #[tokio::test]
    async fn readyz_says_draining_until_listening_then_asks_the_upstream() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = upstream.local_addr().unwrap().port();
        let up = health(port);
        let resp = readyz(&up).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body_of(resp).await, "not ready: draining\n");

        up.set_listening(true);
        let resp = readyz(&up).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body_of(resp).await, "ready\n");
        // The probe's answer is reused for READY_PROBE_TTL: the upstream gone, still ready.
        drop(upstream);
        assert_eq!(readyz(&up).await.status(), StatusCode::OK);

        // A server that refuses connections: not ready, saying which and why.
        let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = gone.local_addr().unwrap().port();
        drop(gone);
        let down = health(port);
        down.set_listening(true);
        let resp = readyz(&down).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let text = String::from_utf8(body_of(resp).await.to_vec()).unwrap();
        assert!(
            text.starts_with("not ready: no upstream server accepts a connection ("),
            "{text}"
        );
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");

        // Draining again.
        up.set_listening(false);
        assert_eq!(body_of(readyz(&up).await).await, "not ready: draining\n");
    }

    #[test]
    fn accept_encoding_chooses_gzip_only_when_preferred() {
        let rows: &[(&[&str], bool)] = &[
            (&[], false),
            (&[""], false),
            (&["gzip"], true),
            (&["GZIP"], true),
            (&["x-gzip"], true),
            (&["gzip;q=0"], false),
            (&["gzip; Q=0.000"], false),
            (&["gzip;q=0.001"], true),
            (&["identity"], false),
            (&["*"], true),
            (&["*;q=0"], false),
            (&["*;q=0, gzip"], true),
            (&["gzip;q=0, *"], false),
            (&["br, gzip;q=0.5"], true),
            (&["br"], false),
            (&["deflate, br, zstd"], false),
            (&["gzip;q=0.5, identity"], false),
            (&["gzip, identity;q=0.5"], true),
            (&["gzip;q=0.5, identity;q=0.5"], true),
            (&["gzip;q=0.5, *;q=0.8"], false),
            (&["identity;q=0, gzip"], true),
            (&["gzip;q=2"], false),
            (&["gzip;q=abc"], false),
            (&["gzip;q=0, gzip"], false),
            (&["br", "gzip"], true),
            (&["gzip", "gzip;q=0"], true),
            (&[" , gzip ,"], true),
            (&["\"gzip\""], false),
            (&["gzipx, xgzip"], false),
            (&["deflate, gzip;q=1.0, *;q=0.5"], true),
        ];
        for (lines, want) in rows {
            let values: Vec<HeaderValue> = lines.iter().map(|l| l.parse().unwrap()).collect();
            assert_eq!(
                prefers_gzip(values.iter()),
                *want,
                "Accept-Encoding: {lines:?}"
            );
        }
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let text = "# TYPE x counter\nx 1\n".repeat(100);
        let coded = gzip(text.as_bytes()).unwrap();
        assert!(coded.len() < text.len() / 4);
        let mut back = String::new();
        flate2::read::GzDecoder::new(&coded[..])
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, text);
    }
}

//! Listeners, signals and the process lifecycle: bind, serve, reload on SIGHUP, drain on
//! SIGTERM/SIGINT.
//!
//! [`run`] builds the shared parts once (the capture, the rate limiter, the upstream pool, the
//! metrics and the access log) and hands each task only what it needs: the request driver
//! ([`Proxy`]) and the connections get theirs, the key schedule the key store, the capture
//! and the metrics ([`schedule::rotate_keys`]), the admin listener its health view
//! ([`admin::Health`]) and the metrics, SIGHUP the capture, the certificates and the limiter,
//! the `acme.http_listen` listener ([`acme_http`]) the ACME challenges, the capture and the
//! sinks. The certificates keep `tls_certificate_expiry_timestamp_seconds` from the start on.
//! No part is reached through another.
//!
//! What it must never do: log a request value, or hold a lock across an await.

pub mod acme_http;
pub mod conn;
pub mod h2;
pub mod preflight;
pub mod proxy_protocol;
pub mod tickets;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::accesslog::AccessLog;
use crate::admin::{self, Health};
use crate::client_ip::ClientAddr;
use crate::config::{Config, ConfigError};
use crate::epoch::Epoch;
use crate::metrics::Metrics;
use crate::privacy::capture::{Capture, EpochKey, open_geo};
use crate::privacy::geo::{GeoChange, GeoFollower};
use crate::privacy::keys::KeyStore;
use crate::privacy::keys::schedule;
use crate::proxy::logging::Sinks;
use crate::proxy::upstream::Upstreams;
use crate::proxy::{LimiterCell, Proxy};
use crate::ratelimit::RateLimiter;
use crate::ratelimit::global::GlobalTier;
use acme_http::AcmeHttp;
use conn::ConnShared;
use tls::CertResolver;

async fn bind(key: &str, addr: SocketAddr) -> Result<TcpListener, ConfigError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ConfigError::invalid(key, format!("cannot listen on {addr}: {e}")))
}

/// Serves until SIGTERM or SIGINT, then drains for up to `server.shutdown_grace`.
pub async fn run(config: Config, config_path: PathBuf) -> Result<(), preflight::RunError> {
    // Nothing is written (no certificate generated, no key or directory created) until every
    // file and directory the config names has been checked and every listener is bound.
    let checked = preflight::check(&config)?;
    let tls_listener = bind("server.listen", config.server.listen).await?;
    let plain_listener = match config.server.listen_plain {
        Some(addr) => Some(bind("server.listen_plain", addr).await?),
        None => None,
    };
    let admin_listener = bind("admin.listen", config.admin.listen).await?;
    let acme_http_listener = match config.acme.http_listen.filter(|_| config.acme.enabled) {
        Some(addr) => Some(bind("acme.http_listen", addr).await?),
        None => None,
    };

    let resolver = Arc::new(preflight::certificates(&config, checked.certs)?);
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(resolver.clone())));

    // The capture's state: today's pseudonym key, the country database, the UA parser.
    let keys = Arc::new(KeyStore::open(
        &config.privacy.key_dir,
        config.privacy.key_retention.0,
    )?);
    let today = Epoch::today();
    let key = schedule::ratchet(&keys, today)?;
    let geo = checked.geo;
    if geo.is_none() {
        tracing::warn!("no geoip.database configured: every country is recorded as null");
    }
    let capture = Arc::new(
        Capture::new(&config, EpochKey { epoch: today, key }, geo).map_err(anyhow::Error::msg)?,
    );
    let limiter = build_limiter(&config.rate_limit)?;
    let policies = limiter
        .as_ref()
        .map(|l| l.policy_names())
        .unwrap_or_default();
    let limiter = Arc::new(LimiterCell::from(limiter.map(Arc::new)));
    let metrics = Arc::new(Metrics::new(&policies));
    resolver.report_expiry(metrics.certificate_expiry.clone());
    let log = AccessLog::start(&config.access_log, metrics.log_counters())
        .with_context(|| "starting the access log (access_log.dir)")?;
    // ACME: the stored certificates are served from the first handshake on; a task per name
    // orders and renews.
    let acme = match config.acme.enabled {
        true => Some(crate::acme::start(&config.acme, resolver.clone(), metrics.clone()).await?),
        false => None,
    };
    let sinks = Arc::new(Sinks {
        log,
        metrics: metrics.clone(),
    });
    let upstreams = Arc::new(Upstreams::with_tls(
        &config.upstream,
        metrics.upstream_pool(),
        checked.upstream_tls.as_ref(),
    ));
    let proxy = Arc::new(Proxy::new(
        &config,
        capture.clone(),
        limiter.clone(),
        upstreams.clone(),
        sinks.clone(),
    ));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (tracker, mut drained) = mpsc::channel::<()>(1);
    let acme_http = acme_http_listener.zip(acme.as_ref()).map(|(l, acme)| {
        let state = AcmeHttp::new(
            &config,
            acme.challenges.clone(),
            capture.clone(),
            sinks.clone(),
            shutdown_rx.clone(),
            tracker.clone(),
        );
        (l, Arc::new(state))
    });
    let shared = Arc::new(
        ConnShared::new(
            &config.server,
            proxy_protocol::ProxyProtocol::new(
                config.server.proxy_protocol,
                &config.client_ip.trusted_proxies,
            ),
            proxy,
            capture.clone(),
            sinks.clone(),
            shutdown_rx.clone(),
            tracker,
        )
        .with_acme(acme.as_ref().map(|a| a.challenges.clone())),
    );
    let health = Arc::new(Health::new(upstreams.clone()).with_limiter(limiter.clone()));
    let health_checks = upstreams.start_health_checks();

    // The config as started: what a changed key that needs a restart is compared with.
    let started = Arc::new(config.clone());
    let mut signals = Signals::new()?;
    let background = [
        tokio::spawn(schedule::rotate_keys(
            keys,
            capture.clone(),
            metrics.clone(),
        )),
        tokio::spawn(housekeep_limiter(limiter.clone())),
        tokio::spawn(close_idle_upstreams(upstreams)),
        tokio::spawn(follow_geo(capture.clone())),
    ];
    log_listening("tls", &tls_listener);
    tokio::spawn(accept_loop(tls_listener, Some(acceptor), shared.clone()));
    if let Some(l) = plain_listener {
        log_listening("plain", &l);
        tokio::spawn(accept_loop(l, None, shared.clone()));
    }
    if let Some((l, state)) = acme_http {
        log_listening("acme-http", &l);
        tokio::spawn(state.serve(l));
    }
    // Listening before the admin listener is announced: whoever reads that line and asks
    // /readyz at once must not be told "draining".
    health.set_listening(true);
    log_listening("admin", &admin_listener);
    let admin_task = tokio::spawn(admin::serve(admin_listener, health.clone(), metrics));

    loop {
        match signals.next().await {
            Signal::Reload => {
                // Reading files may block: off the runtime, and one reload at a time.
                let (path, started) = (config_path.clone(), started.clone());
                let (r, c, l) = (resolver.clone(), capture.clone(), limiter.clone());
                let reloaded =
                    tokio::task::spawn_blocking(move || reload(&path, &started, &r, &c, &l)).await;
                if let Err(e) = reloaded {
                    tracing::error!(error = %e, "reload task failed");
                }
            }
            Signal::Stop(name) => {
                tracing::info!(signal = name, grace = ?config.server.shutdown_grace.0, "draining");
                break;
            }
        }
    }

    health.set_listening(false);
    let _ = shutdown_tx.send(true);
    drop(shared);
    // Every connection task holds a tracker sender; recv() returns None once all are gone.
    let grace = config.server.shutdown_grace.0;
    if tokio::time::timeout(grace, drained.recv()).await.is_err() {
        tracing::warn!(
            ?grace,
            "shutdown grace period over; closing the remaining connections"
        );
    }
    // The admin listener answered "draining" until now.
    admin_task.abort();
    let acme_tasks = acme.map(|a| a.tasks).unwrap_or_default();
    for task in background
        .into_iter()
        .chain(health_checks)
        .chain(acme_tasks)
    {
        task.abort();
    }
    // Everything queued reaches the file before the process exits.
    let _ = tokio::task::spawn_blocking(move || sinks.log.shutdown()).await;
    tracing::info!("stopped");
    Ok(())
}

/// How often the country database's file is looked at (one `stat`).
const GEO_POLL: Duration = Duration::from_secs(2);

/// Reloads the country database when its file changes on disk (replaced by rename, rewritten
/// in place, removed and put back), as SIGHUP does; a changed file that is not a valid database
/// keeps the one in use, reported once by path.
async fn follow_geo(capture: Arc<Capture>) {
    let mut follower = GeoFollower::default();
    let mut tick = tokio::time::interval(GEO_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(current) = capture.geo() else {
            continue;
        };
        let polled = tokio::task::spawn_blocking(move || {
            let change = follower.poll(&current);
            (follower, change)
        })
        .await;
        let change;
        (follower, change) = match polled {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "country database check failed");
                (GeoFollower::default(), GeoChange::Unchanged)
            }
        };
        match change {
            GeoChange::Unchanged => {}
            GeoChange::Reloaded(db) => {
                let path = db.path().display().to_string();
                capture.set_geo(Some(db));
                tracing::info!(%path, "country database file changed: reloaded");
            }
            GeoChange::Unusable(e) => {
                tracing::error!(path = %e.path().display(), error = %e, "country database file changed but cannot be used; keeping the database in use");
            }
        }
    }
}

/// Keeps the rate limiter's memory bounded.
async fn housekeep_limiter(limiter: Arc<LimiterCell>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Some(limiter) = limiter.load_full() {
            let _ = tokio::task::spawn_blocking(move || limiter.housekeep()).await;
        }
    }
}

/// Closes pooled upstream connections as they pass `upstream.idle_timeout`, also when no
/// request comes; runs until its task is dropped.
async fn close_idle_upstreams(upstreams: Arc<Upstreams>) {
    let mut tick = tokio::time::interval(upstreams.close_idle_period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        upstreams.close_idle();
    }
}

fn log_listening(listener: &'static str, l: &TcpListener) {
    if let Ok(addr) = l.local_addr() {
        tracing::info!(listener, %addr, "listening");
    }
}

/// Whether SIGHUP applies a change of the config key `key` (dotted, as in the file):
/// `server.hosts` and everything under `tls`, `geoip` and `rate_limit`. Every other key needs a
/// restart.
pub fn reloadable(key: &str) -> bool {
    key == "server.hosts"
        || ["tls", "geoip", "rate_limit"].iter().any(|t| {
            key.strip_prefix(t)
                .is_some_and(|rest| rest.starts_with('.'))
        })
}

/// The dotted keys (`server.listen`, `tls.sni`) whose values differ between `a` and `b`, in
/// order; set in one and not the other counts as differing. Arrays (`upstream.servers`,
/// `rate_limit.route`) compare as one value.
pub fn changed_keys(a: &Config, b: &Config) -> Result<Vec<String>, toml::ser::Error> {
    fn walk(prefix: &str, a: Option<&toml::Value>, b: Option<&toml::Value>, out: &mut Vec<String>) {
        match (a, b) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let dotted = match prefix {
                        "" => k.clone(),
                        p => format!("{p}.{k}"),
                    };
                    walk(&dotted, a.get(k), b.get(k), out);
                }
            }
            // A duration written in another unit ("2s", "2000ms") is the same value.
            (Some(toml::Value::String(a)), Some(toml::Value::String(b))) if same_duration(a, b) => {
            }
            // A file mode with or without its leading 0 ("640", "0640") is the same mode.
            (Some(toml::Value::String(a)), Some(toml::Value::String(b)))
                if prefix == "access_log.file_mode" && same_mode(a, b) => {}
            (a, b) if a != b => out.push(prefix.to_owned()),
            _ => {}
        }
    }
    let (a, b) = (toml::Value::try_from(a)?, toml::Value::try_from(b)?);
    let mut out = Vec::new();
    walk("", Some(&a), Some(&b), &mut out);
    Ok(out)
}

/// Whether `a` and `b` both read as durations (`server.shutdown_grace` and the like) and
/// are equal.
fn same_duration(a: &str, b: &str) -> bool {
    use serde::Deserialize as _;
    let read = |s: &str| crate::config::Dur::deserialize(toml::Value::String(s.to_owned())).ok();
    matches!((read(a), read(b)), (Some(a), Some(b)) if a == b)
}

/// Whether `a` and `b` both read as `access_log.file_mode` values with the same bits.
fn same_mode(a: &str, b: &str) -> bool {
    let read = |s: &str| s.parse::<crate::config::FileMode>().ok().map(|m| m.bits);
    matches!((read(a), read(b)), (Some(a), Some(b)) if a == b)
}

/// SIGHUP: read the config again and reload what can change without a restart ([`reloadable`]):
/// the host names recorded, the certificates, the country database and the rate-limit quotas.
/// Each part that fails keeps its old state and says why; each other key that differs from the
/// config the process `started` with is named in a warning (its name only, never its value);
/// a changed `access_log.group`, or `upstream` roots (read again at each SIGHUP, as the file may
/// have changed under its key), that a start would refuse are reported as errors.
fn reload(
    path: &Path,
    started: &Config,
    resolver: &CertResolver,
    capture: &Capture,
    limiter: &LimiterCell,
) {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reload failed; keeping the running configuration");
            return;
        }
    };
    match changed_keys(started, &config) {
        Ok(keys) => {
            for key in keys.iter().filter(|k| !reloadable(k)) {
                tracing::warn!(%key, "config key changed but needs a restart to take effect; still running with the value it started with");
            }
            // What only start checks against the system: said now, not at the next restart.
            if keys.iter().any(|k| k == "access_log.group")
                && let Err(e) = crate::accesslog::files::Ownership::of(&config.access_log)
            {
                tracing::error!(error = %e, "a restart with this config would fail");
            }
            // The roots' file may have changed under an unchanged key: read it again too.
            if (keys.iter().any(|k| k.starts_with("upstream."))
                || config.upstream.ca_roots.is_some())
                && let Err(e) =
                    crate::proxy::upstream_tls::TlsClient::for_upstreams(&config.upstream)
            {
                tracing::error!(error = %e, "a restart with this config would fail");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot compare the config with the running one; keys that need a restart may have changed")
        }
    }
    capture.set_hosts(&config.server.hosts);
    let result = tls::ensure_self_signed(&config.tls, &config.server.hosts).and_then(|made| {
        if let Some(fp) = made {
            tracing::warn!(cert = %config.tls.cert.display(), sha256 = %fp, "certificate missing: generated a self-signed one ({})", tls::self_signed_purpose(&config));
        }
        resolver.reload(&config.tls)
    });
    match result {
        Ok(()) => tracing::info!("reloaded certificates"),
        Err(e) => {
            tracing::error!(error = %e, "certificate reload failed; keeping the old certificates")
        }
    }
    match open_geo(&config.geoip.database) {
        Ok(geo) => {
            capture.set_geo(geo);
            tracing::info!("reloaded the country database");
        }
        Err(e) => {
            tracing::error!(error = %e, "country database reload failed; keeping the old one")
        }
    }
    let current = limiter.load();
    let secret = match &config.rate_limit.global {
        Some(g) => match preflight::secret_file(&g.key_secret_file) {
            Ok(secret) => Some(secret),
            Err(reason) => {
                let path = g.key_secret_file.display();
                tracing::error!(key = "rate_limit.global.key_secret_file", %path, %reason, "rate-limit reload failed; keeping the running limiter");
                return;
            }
        },
        None => None,
    };
    let unchanged = match (current.as_ref(), config.rate_limit.enabled) {
        (Some(l), true) => {
            l.same_quotas(&config.rate_limit)
                && match (l.global(), &config.rate_limit.global, &secret) {
                    (None, None, _) => true,
                    (Some(tier), Some(g), Some(secret)) => tier.same_config(g, secret),
                    _ => false,
                }
        }
        (None, false) => true,
        _ => false,
    };
    if !unchanged {
        match build_limiter(&config.rate_limit) {
            Ok(new) => {
                limiter.store(new.map(Arc::new));
                tracing::info!("rate-limit quotas or global tier changed: limiter state reset");
            }
            Err(e) => {
                tracing::error!(error = %e, "rate-limit reload failed; keeping the running limiter")
            }
        }
    }
}

/// The rate limiter for `cfg` (`None` when limiting is off), with its global tier when
/// `[rate_limit.global]` is set: keyed by `key_secret_file`, connecting lazily (a Redis that is
/// down does not stop a start; the tier reports itself degraded until it answers). Needs a
/// Tokio runtime (a blocking task of one will do).
fn build_limiter(cfg: &crate::config::RateLimit) -> Result<Option<RateLimiter>, ConfigError> {
    let Some(limiter) = RateLimiter::new(cfg) else {
        return Ok(None);
    };
    let Some(global) = &cfg.global else {
        return Ok(Some(limiter));
    };
    let key = "rate_limit.global.key_secret_file";
    let secret = preflight::secret_file(&global.key_secret_file).map_err(|reason| {
        ConfigError::invalid(
            key,
            format!("{}: {reason}", global.key_secret_file.display()),
        )
    })?;
    let tier = GlobalTier::new(cfg, global, &secret)
        .map_err(|e| ConfigError::invalid("rate_limit.global.redis", e.to_string()))?;
    tracing::info!(redis = %global.redis.redacted(), timeout = ?global.timeout.0, on_error = ?global.on_error, "global rate-limit tier on");
    Ok(Some(limiter.with_global(tier)))
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<ConnShared>) {
    let mut shutdown = shared.shutdown.clone();
    let name = if tls.is_some() {
        "server.listen"
    } else {
        "server.listen_plain"
    };
    while let Some((tcp, peer)) = accept(&listener, &mut shutdown, name).await {
        spawn_connection(tcp, peer, tls.clone(), shared.clone());
    }
}

/// The next connection on `listener` (configured at `key`), or `None` once `shutdown` flips
/// (the process drains). A failed accept (out of file descriptors and the like) is warned
/// about and retried after 50 ms instead of spinning.
pub(crate) async fn accept(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
    key: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return None,
            res = listener.accept() => match res {
                Ok(pair) => return Some(pair),
                Err(e) => {
                    tracing::warn!(error = %e, listener = key, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

fn spawn_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<ConnShared>,
) {
    let _ = tcp.set_nodelay(true);
    let peer = ClientAddr::new(peer.ip());
    match tls {
        Some(acceptor) => tokio::spawn(conn::serve_tls(tcp, peer, acceptor, shared)),
        None => tokio::spawn(conn::serve_plain(tcp, peer, shared)),
    };
}

enum Signal {
    Reload,
    Stop(&'static str),
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("installing the {name} handler"))
        };
        Ok(Signals {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop("SIGTERM"),
            _ = self.int.recv() => Signal::Stop("SIGINT"),
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("test.toml")).unwrap()
    }

    #[test]
    fn changed_keys_name_each_differing_dotted_key_once() {
        // (config file after the edit, keys named against an empty file).
        let rows: [(&str, &[&str]); 14] = [
            // The default 2 s written in another unit: unchanged.
            ("[upstream]\nconnect_timeout = \"2000ms\"", &[]),
            (
                "[upstream]\nconnect_timeout = \"2001ms\"",
                &["upstream.connect_timeout"],
            ),
            ("", &[]),
            ("[server]\nlisten = \"127.0.0.1:8443\"", &["server.listen"]),
            ("[server]\nhosts = [\"a.example\"]", &["server.hosts"]),
            (
                "[server]\nlisten_plain = \"127.0.0.1:8080\"",
                &["server.listen_plain"],
            ),
            (
                "[upstream]\nservers = [\"http://127.0.0.1:1\", \"http://127.0.0.1:2\"]\nconnect_timeout = \"9s\"",
                &["upstream.connect_timeout", "upstream.servers"],
            ),
            (
                "[[rate_limit.route]]\npath_prefix = \"/a\"\nrequests_per_second = 1\nburst = 1",
                &["rate_limit.route"],
            ),
            ("[admin]\nlisten = \"127.0.0.1:9100\"", &[]),
            (
                "[access_log]\nretention = \"2d\"",
                &["access_log.retention"],
            ),
            // The default "0640" written without its leading 0: unchanged.
            ("[access_log]\nfile_mode = \"640\"", &[]),
            (
                "[access_log]\nfile_mode = \"0600\"",
                &["access_log.file_mode"],
            ),
            (
                "[access_log]\nfile_mode = \"600\"",
                &["access_log.file_mode"],
            ),
            ("[access_log]\ngroup = 0", &["access_log.group"]),
        ];
        let empty = parse("");
        for (text, want) in rows {
            let got = changed_keys(&empty, &parse(text)).unwrap();
            assert_eq!(got, want, "{text}");
            // Symmetric: undoing the edit names the same keys.
            assert_eq!(changed_keys(&parse(text), &empty).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn reloadable_keys_are_hosts_tls_geoip_and_rate_limit() {
        let rows = [
            ("server.hosts", true),
            ("tls.cert", true),
            ("tls.sni", true),
            ("geoip.database", true),
            ("rate_limit.route", true),
            ("rate_limit.enabled", true),
            ("server.listen", false),
            ("server.hosts_extra", false),
            ("tlsx.cert", false),
            ("upstream.servers", false),
            ("upstream.ca_roots", false),
            ("upstream.tls_server_name", false),
            ("access_log.dir", false),
            ("admin.listen", false),
            ("privacy.key_dir", false),
        ];
        for (key, want) in rows {
            assert_eq!(reloadable(key), want, "{key}");
        }
    }
}

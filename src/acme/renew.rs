//! Keeping each name's certificate: loaded from the storage at start, ordered when none is
//! usable, renewed when due (inside the CA's renewal window, RFC 9773 §4.2, when it offers one;
//! else when a third of the lifetime remains), retried with exponential back-off after a
//! failure, and picked up from the storage when another instance of the fleet stored it.
//!
//! The fleet's rule: the instance that holds `locks/<name>.lock` orders; it reads the storage
//! again first (another may just have renewed). The others look at the storage every
//! [`WATCH_EVERY`] and load what appears. A holder that dies releases its lock with its
//! process.
//!
//! Must never panic, stop the proxy, or drop the certificate in use on a failure.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{Account, AccountCredentials, CertificateIdentifier, NewAccount};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Challenges;
use super::client::AcmeHttp;
use super::order::{self, OrderError};
use super::storage::{self, Meta, Storage, Stored, Window};
use crate::config::{self, ConfigError};
use crate::files::FileStamp;
use crate::metrics::{AcmeOrderResult, Metrics};
use crate::server::tls::{CertFacts, CertResolver};

/// How often an instance that does not order looks at the storage for a new certificate.
pub const WATCH_EVERY: Duration = Duration::from_secs(5);

/// The longest wait between two attempts after failures (or `acme.retry_backoff`, if longer).
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// How long an instance waits for another to finish creating the account.
const ACCOUNT_LOCK_WAIT: Duration = Duration::from_secs(120);

/// The running ACME manager: the challenges the listeners answer, and its tasks.
pub struct Running {
    /// The responses pending, for the TLS listener (TLS-ALPN-01) and `acme.http_listen`
    /// (HTTP-01).
    pub challenges: Arc<Challenges>,
    /// One task per name; aborted at shutdown.
    pub tasks: Vec<JoinHandle<()>>,
}

/// When a certificate valid from `not_before` to `not_after` (Unix seconds) is to be renewed:
/// a point of the CA's `window` chosen by `random` (in [0, 1)), or `now` when the window has
/// begun (RFC 9773 §4.2); without a window, when a third of the lifetime remains.
pub fn renewal_time(
    not_before: i64,
    not_after: i64,
    window: Option<Window>,
    now: i64,
    random: f64,
) -> i64 {
    match window {
        Some(w) if w.start <= now => now,
        Some(w) => {
            let span = w.end.saturating_sub(w.start).max(0) as f64;
            w.start + (span * random.clamp(0.0, 1.0)) as i64
        }
        None => not_after - not_after.saturating_sub(not_before).max(0) / 3,
    }
}

/// The wait after the `failures`-th failure in a row (1 = the first): `base` doubled for each
/// failure before it, at most [`MAX_BACKOFF`] (or `base`, if longer).
pub fn backoff(base: Duration, failures: u32) -> Duration {
    let cap = MAX_BACKOFF.max(base);
    let doublings = failures.saturating_sub(1).min(32);
    base.checked_mul(1u32 << doublings.min(31))
        .map_or(cap, |d| d.min(cap))
}

/// When the fleet's back-off (`retry.json`) lets the next order go, Unix milliseconds; `None`
/// when it has passed. One further ahead than the longest back-off (`backoff(base, _)` at
/// most) was not written by a fleet with this clock (garbage, or a clock set back): ignored,
/// so that it cannot stop renewals until the certificate expires.
pub fn fleet_wait(retry: &storage::Retry, now_ms: i64, base: Duration) -> Option<i64> {
    let longest = i64::try_from(MAX_BACKOFF.max(base).as_millis()).unwrap_or(i64::MAX);
    (retry.retry_at_ms > now_ms && retry.retry_at_ms <= now_ms.saturating_add(longest))
        .then_some(retry.retry_at_ms)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn random_unit() -> f64 {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}

/// `unix` (seconds) as an RFC 3339 UTC time (`2026-12-01T17:07:59Z`), for log lines and
/// `certs`; the bare number if out of range.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// What the manager shares between its tasks.
struct Engine {
    config: config::Acme,
    storage: Storage,
    http: AcmeHttp,
    resolver: Arc<CertResolver>,
    metrics: Arc<Metrics>,
    challenges: Arc<Challenges>,
    /// The account, once loaded or created.
    account: tokio::sync::Mutex<Option<Account>>,
}

/// What a name's task knows.
#[derive(Default)]
struct Kept {
    /// The stamp of the `cert.pem` last read, usable or not: not read again until it changes.
    seen: Option<FileStamp>,
    /// The certificate served from the storage.
    current: Option<Current>,
}

/// The certificate a name is served with, from the storage.
struct Current {
    facts: CertFacts,
    leaf: CertificateDer<'static>,
    /// The CA's renewal window, when it offers renewal information.
    window: Option<Window>,
    /// Unix seconds.
    renew_at: i64,
}

/// Opens the storage (`acme.storage`), loads every stored certificate of `acme.domains` into
/// `resolver`, and starts one task per name that keeps it. The error names the key at fault
/// (`acme.storage`, `acme.ca_roots`).
pub async fn start(
    acme: &config::Acme,
    resolver: Arc<CertResolver>,
    metrics: Arc<Metrics>,
) -> Result<Running, ConfigError> {
    let root = acme.storage.clone();
    let storage = tokio::task::spawn_blocking(move || Storage::open(&root))
        .await
        .map_err(|e| ConfigError::invalid("acme.storage", e.to_string()))?
        .map_err(|e| {
            ConfigError::invalid("acme.storage", format!("{}: {e}", acme.storage.display()))
        })?;
    let http = AcmeHttp::new(acme.ca_roots.as_deref(), acme.timeout.0)
        .map_err(|e| ConfigError::invalid("acme.ca_roots", e))?;
    let challenges = Arc::new(Challenges::with_storage(storage.clone()));
    let engine = Arc::new(Engine {
        config: acme.clone(),
        storage,
        http,
        resolver,
        metrics,
        challenges: challenges.clone(),
        account: tokio::sync::Mutex::new(None),
    });
    let mut tasks = Vec::with_capacity(acme.domains.len());
    for name in &acme.domains {
        let mut kept = Kept::default();
        engine.pick_up(name, &mut kept).await;
        tasks.push(tokio::spawn(keep(engine.clone(), name.clone(), kept)));
    }
    Ok(Running { challenges, tasks })
}

/// What one attempt to renew came to.
enum Attempt {
    /// Another instance holds the name's lock (and orders).
    NotHolder,
    /// The storage holds a certificate not yet due (another instance renewed it).
    Fresh,
    /// A certificate was issued, stored and installed.
    Issued,
    /// The fleet is backing off after failures (another instance's): no order before this
    /// time, Unix milliseconds.
    Waiting(i64),
    /// The order failed; `failures` in a row, fleet-wide, when the storage could say.
    Failed {
        /// Why.
        error: OrderError,
        /// Failed orders in a row, this one included.
        failures: Option<u32>,
    },
}

fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// An [`Attempt::Failed`] not yet counted (by [`Engine::attempt`], in the storage).
fn failed(error: OrderError) -> Attempt {
    Attempt::Failed {
        error,
        failures: None,
    }
}

/// How often the CA's renewal information is asked for when its answer gives no time
/// (RFC 9773 §4.3: it says when to ask again, in `Retry-After`).
const ARI_EVERY: Duration = Duration::from_secs(6 * 3600);

/// Keeps `name`'s certificate for as long as the proxy runs.
async fn keep(engine: Arc<Engine>, name: String, mut kept: Kept) {
    let mut failures = 0u32;
    let mut retry_at: Option<Instant> = None;
    let mut ask_ari_at = Instant::now();
    loop {
        engine.pick_up(&name, &mut kept).await;
        if kept.current.as_ref().is_some_and(|c| c.window.is_some()) && Instant::now() >= ask_ari_at
        {
            ask_ari_at = Instant::now() + engine.refresh_window(&name, &mut kept).await;
        }
        let due = kept
            .current
            .as_ref()
            .is_none_or(|c| c.renew_at <= unix_now());
        if due && retry_at.is_none_or(|t| t <= Instant::now()) {
            match engine.attempt(&name, &mut kept).await {
                Attempt::NotHolder => {
                    tracing::debug!(domain = %name, "another instance holds the order lock; watching the storage");
                    tokio::time::sleep(WATCH_EVERY).await;
                    continue;
                }
                Attempt::Fresh | Attempt::Issued => {
                    failures = 0;
                    retry_at = None;
                }
                Attempt::Waiting(at_ms) => {
                    let ahead = u64::try_from(at_ms.saturating_sub(unix_now_ms())).unwrap_or(0);
                    retry_at = Some(Instant::now() + Duration::from_millis(ahead));
                    tracing::debug!(domain = %name, "the fleet is backing off after a failed order");
                }
                Attempt::Failed {
                    error,
                    failures: shared,
                } => {
                    failures = shared.unwrap_or(failures.saturating_add(1));
                    let wait = backoff(engine.config.retry_backoff.0, failures);
                    retry_at = Some(Instant::now() + wait);
                    engine.failed(&name, &error, failures, wait, kept.current.as_ref());
                }
            }
        }
        // Up at the renewal time (or the retry after it), and every WATCH_EVERY to look at
        // the storage.
        let now = Instant::now();
        let mut due_at = match &kept.current {
            Some(c) => {
                let ahead = c.renew_at.saturating_sub(unix_now()).max(0);
                now + Duration::from_secs(u64::try_from(ahead).unwrap_or(u64::MAX / 2))
            }
            None => now,
        };
        if let Some(r) = retry_at {
            due_at = due_at.max(r);
        }
        let wake = due_at
            .min(now + WATCH_EVERY)
            .max(now + Duration::from_millis(50));
        tokio::time::sleep_until(wake).await;
    }
}

impl Engine {
    /// Loads `name`'s stored certificate into the resolver when it changed on disk since it
    /// was last read; an unusable one is reported once and left aside.
    async fn pick_up(&self, name: &str, kept: &mut Kept) {
        let storage = self.storage.clone();
        let owned = name.to_owned();
        let seen = kept.seen;
        let read = tokio::task::spawn_blocking(move || {
            let stamp = storage.cert_stamp(&owned);
            if stamp.is_none() || stamp == seen {
                return (stamp, Ok(None));
            }
            (stamp, storage.read_certificate(&owned))
        })
        .await;
        let (stamp, read) = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::error!(domain = %name, error = %e, "reading the stored certificate failed");
                return;
            }
        };
        // The chain is written last: a new stamp means all its files are in place, so a
        // certificate that cannot be used now is not read again until it changes.
        kept.seen = stamp;
        let stored = match read {
            Ok(Some(stored)) => stored,
            Ok(None) => return,
            Err(why) => {
                tracing::warn!(domain = %name, error = %why, "stored certificate cannot be used; not read again until it changes");
                return;
            }
        };
        self.serve(name, &stored, kept);
    }

    /// Serves `stored` for `name` from the next handshake on, if it can be used; else says
    /// why and leaves the certificate in use.
    fn serve(&self, name: &str, stored: &Stored, kept: &mut Kept) {
        match self.usable(stored) {
            Ok((certified, facts)) => {
                let now = unix_now();
                let window = stored.meta.renewal_window;
                let mut renew_at = renewal_time(
                    facts.not_before,
                    facts.not_after,
                    window,
                    now,
                    random_unit(),
                );
                // From another CA (the directory changed): replaced at once, served meanwhile.
                if stored.meta.directory != self.config.directory {
                    renew_at = now;
                }
                self.resolver.install(name, certified);
                tracing::info!(
                    domain = %name,
                    serial = %facts.serial,
                    not_after = %rfc3339(facts.not_after),
                    renew_at = %rfc3339(renew_at),
                    "serving the ACME certificate"
                );
                kept.current = Some(Current {
                    facts,
                    leaf: stored.chain[0].clone(),
                    window,
                    renew_at,
                });
            }
            Err(why) => {
                tracing::warn!(domain = %name, error = %why, "stored certificate cannot be used; not read again until it changes");
            }
        }
    }

    /// Asks the CA for the renewal window of the certificate served (RFC 9773), and moves the
    /// renewal time into a new window; returns when to ask again.
    async fn refresh_window(&self, name: &str, kept: &mut Kept) -> Duration {
        let Some(current) = kept.current.as_mut() else {
            return ARI_EVERY;
        };
        let Ok(account) = self.account().await else {
            return ARI_EVERY;
        };
        let Some((window, again)) = renewal_info(&account, &current.leaf).await else {
            return ARI_EVERY;
        };
        if current.window != Some(window) {
            current.window = Some(window);
            current.renew_at = renewal_time(
                current.facts.not_before,
                current.facts.not_after,
                Some(window),
                unix_now(),
                random_unit(),
            );
            tracing::info!(domain = %name, renew_at = %rfc3339(current.renew_at), "the CA moved the renewal window");
        }
        again.clamp(Duration::from_secs(60), Duration::from_secs(24 * 3600))
    }

    /// Counts and reports a failed attempt: one warning naming the domain, the CA's problem
    /// and detail, the attempt and when the next one is.
    fn failed(
        &self,
        name: &str,
        e: &OrderError,
        attempt: u32,
        wait: Duration,
        current: Option<&Current>,
    ) {
        let result = match e {
            OrderError::Rejected { .. } => AcmeOrderResult::Rejected,
            OrderError::Failed(_) => AcmeOrderResult::Error,
        };
        self.metrics.acme_order(result);
        let kept = match current {
            Some(c) => format!(
                "serving the certificate in use until {}",
                rfc3339(c.facts.not_after)
            ),
            None => "serving the configured certificate meanwhile".to_owned(),
        };
        let (problem, detail) = match e {
            OrderError::Rejected { problem, detail } => (problem.as_str(), detail.as_str()),
            OrderError::Failed(why) => ("none", why.as_str()),
        };
        let next = unix_now().saturating_add(i64::try_from(wait.as_secs()).unwrap_or(i64::MAX));
        tracing::warn!(
            domain = %name,
            directory = %self.config.directory,
            attempt,
            problem,
            detail,
            retry_in = ?wait,
            retry_at = %rfc3339(next),
            "ACME order failed; {kept}"
        );
    }

    fn usable(&self, stored: &Stored) -> Result<(Arc<CertifiedKey>, CertFacts), String> {
        let facts = CertFacts::of(stored.chain[0].as_ref())?;
        if facts.not_after <= unix_now() {
            return Err(format!("expired at {}", rfc3339(facts.not_after)));
        }
        let provider = rustls::crypto::ring::default_provider();
        let certified =
            CertifiedKey::from_der(stored.chain.clone(), stored.key.clone_key(), &provider)
                .map_err(|e| format!("the key does not fit the certificate: {e}"))?;
        Ok((Arc::new(certified), facts))
    }

    /// One attempt to renew `name`, if this instance gets its lock.
    async fn attempt(&self, name: &str, kept: &mut Kept) -> Attempt {
        let storage = self.storage.clone();
        let owned = name.to_owned();
        let lock = match tokio::task::spawn_blocking(move || storage.try_lock(&owned)).await {
            Ok(Ok(Some(lock))) => lock,
            Ok(Ok(None)) => return Attempt::NotHolder,
            Ok(Err(e)) => {
                return failed(OrderError::Failed(format!(
                    "taking the order lock in acme.storage: {e}"
                )));
            }
            Err(e) => return failed(OrderError::Failed(e.to_string())),
        };
        // Another instance may have stored a new certificate since we last looked.
        self.pick_up(name, kept).await;
        if kept
            .current
            .as_ref()
            .is_some_and(|c| c.renew_at > unix_now())
        {
            return Attempt::Fresh;
        }
        // Or failed, and the fleet backs off.
        let storage = self.storage.clone();
        let owned = name.to_owned();
        let mut retry = tokio::task::spawn_blocking(move || storage.read_retry(&owned))
            .await
            .unwrap_or_default();
        let now = unix_now_ms();
        if let Some(at_ms) = fleet_wait(&retry, now, self.config.retry_backoff.0) {
            return Attempt::Waiting(at_ms);
        }
        // A back-off that ended long ago (an earlier renewal's) starts again from the first.
        let long_ago = i64::try_from(MAX_BACKOFF.as_millis()).unwrap_or(i64::MAX);
        if now.saturating_sub(retry.retry_at_ms) > long_ago {
            retry.failures = 0;
        }
        let outcome = self.order(name, kept).await;
        let storage = self.storage.clone();
        let owned = name.to_owned();
        let outcome = match outcome {
            Attempt::Failed { error, .. } => {
                let (_, next) = self.next_retry(&retry);
                let failures = next.failures;
                let _ =
                    tokio::task::spawn_blocking(move || storage.write_retry(&owned, &next)).await;
                Attempt::Failed {
                    error,
                    failures: Some(failures),
                }
            }
            // Due again as soon as issued (a lifetime of seconds, a CA's clock or renewal
            // window off, or not usable at all): the fleet backs off as after a failure, so
            // that a misbehaving CA cannot start an ordering storm.
            Attempt::Issued
                if kept
                    .current
                    .as_ref()
                    .is_none_or(|c| c.renew_at <= unix_now()) =>
            {
                let (wait, next) = self.next_retry(&retry);
                tracing::warn!(
                    domain = %name,
                    attempt = next.failures,
                    retry_in = ?wait,
                    "the certificate issued is due for renewal already; the next order waits"
                );
                let _ =
                    tokio::task::spawn_blocking(move || storage.write_retry(&owned, &next)).await;
                Attempt::Waiting(next.retry_at_ms)
            }
            Attempt::Issued => {
                let _ = tokio::task::spawn_blocking(move || storage.clear_retry(&owned)).await;
                Attempt::Issued
            }
            other => other,
        };
        drop(lock);
        outcome
    }

    /// After one more failure than `retry` counts: the wait, and the fleet's back-off to store.
    fn next_retry(&self, retry: &storage::Retry) -> (Duration, storage::Retry) {
        let failures = retry.failures.saturating_add(1);
        let wait = backoff(self.config.retry_backoff.0, failures);
        let next = storage::Retry {
            failures,
            retry_at_ms: unix_now_ms()
                .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
        };
        (wait, next)
    }

    async fn order(&self, name: &str, kept: &mut Kept) -> Attempt {
        let account = match self.account().await {
            Ok(a) => a,
            Err(e) => return failed(e),
        };
        let started = std::time::Instant::now();
        tracing::info!(domain = %name, challenge = order::challenge_name(self.config.challenge), "ordering a certificate");
        let mut published = Vec::new();
        let issued = order::issue(
            &account,
            name,
            self.config.challenge,
            &self.challenges,
            &mut published,
        )
        .await;
        self.challenges.withdraw(published).await;
        let issued = match issued {
            Ok(i) => i,
            Err(e) => {
                if let OrderError::Rejected { problem, .. } = &e
                    && problem == "accountDoesNotExist"
                {
                    // The CA forgot the account: a new one at the next attempt.
                    *self.account.lock().await = None;
                    let storage = self.storage.clone();
                    let directory = self.config.directory.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        std::fs::remove_file(storage.account_path(&directory))
                    })
                    .await;
                }
                return failed(e);
            }
        };
        let window = self.renewal_window(&account, &issued.chain_pem).await;
        let meta = Meta {
            directory: self.config.directory.clone(),
            issued_at: unix_now(),
            renewal_window: window,
        };
        let storage = self.storage.clone();
        let owned = name.to_owned();
        let (chain_pem, key_pem) = (issued.chain_pem.clone(), issued.key_pem.clone());
        let stored = tokio::task::spawn_blocking(move || {
            storage.write_certificate(&owned, &chain_pem, &key_pem, &meta)
        })
        .await;
        let not_stored = match stored {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("storing the certificate in acme.storage: {e}")),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = not_stored {
            // Served from memory all the same, so that it is not ordered again (and again)
            // before its renewal is due; the other instances do not see it.
            let meta = Meta {
                directory: self.config.directory.clone(),
                issued_at: unix_now(),
                renewal_window: window,
            };
            match Stored::from_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes(), meta) {
                Ok(stored) => self.serve(name, &stored, kept),
                Err((_, e)) => {
                    tracing::error!(domain = %name, error = %e, "the issued certificate cannot be read")
                }
            }
            return failed(OrderError::Failed(why));
        }
        self.metrics.acme_order(AcmeOrderResult::Issued);
        tracing::info!(domain = %name, elapsed = ?started.elapsed(), "certificate issued and stored");
        self.pick_up(name, kept).await;
        Attempt::Issued
    }

    /// The CA's renewal window for the certificate (RFC 9773), if it offers one.
    async fn renewal_window(&self, account: &Account, chain_pem: &str) -> Option<Window> {
        use rustls_pki_types::pem::PemObject;
        let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .next()?
            .ok()?;
        renewal_info(account, &leaf).await.map(|(w, _)| w)
    }

    /// The ACME account: loaded from the storage, or created once for the whole fleet (under
    /// `locks/account.lock`) and stored with mode 0600.
    async fn account(&self) -> Result<Account, OrderError> {
        let mut cached = self.account.lock().await;
        if let Some(account) = cached.as_ref() {
            return Ok(account.clone());
        }
        let waited = std::time::Instant::now();
        let _lock = loop {
            let storage = self.storage.clone();
            match tokio::task::spawn_blocking(move || storage.try_lock("account")).await {
                Ok(Ok(Some(lock))) => break lock,
                Ok(Ok(None)) if waited.elapsed() < ACCOUNT_LOCK_WAIT => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok(Ok(None)) => {
                    return Err(OrderError::Failed(
                        "another instance holds acme.storage's account lock".to_owned(),
                    ));
                }
                Ok(Err(e)) => {
                    return Err(OrderError::Failed(format!(
                        "taking the account lock in acme.storage: {e}"
                    )));
                }
                Err(e) => return Err(OrderError::Failed(e.to_string())),
            }
        };
        let storage = self.storage.clone();
        let directory = self.config.directory.clone();
        let stored = tokio::task::spawn_blocking(move || storage.read_account(&directory))
            .await
            .map_err(|e| OrderError::Failed(e.to_string()))?
            .map_err(|e| OrderError::Failed(format!("reading the ACME account: {e}")))?;
        let builder = Account::builder_with_http(Box::new(self.http.clone()));
        let account = match stored {
            Some(json) => {
                let credentials: AccountCredentials = serde_json::from_slice(&json)
                    .map_err(|e| OrderError::Failed(format!("the stored ACME account: {e}")))?;
                builder.from_credentials(credentials).await?
            }
            None => {
                let eab = self.external_account().await?;
                let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
                let (account, credentials) = builder
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.config.directory.clone(),
                        eab.as_ref(),
                    )
                    .await?;
                let json = zeroize::Zeroizing::new(
                    serde_json::to_vec(&credentials)
                        .map_err(|e| OrderError::Failed(e.to_string()))?,
                );
                let storage = self.storage.clone();
                let directory = self.config.directory.clone();
                tokio::task::spawn_blocking(move || storage.write_account(&directory, &json))
                    .await
                    .map_err(|e| OrderError::Failed(e.to_string()))?
                    .map_err(|e| OrderError::Failed(format!("storing the ACME account: {e}")))?;
                tracing::info!(directory = %self.config.directory, "ACME account created");
                account
            }
        };
        *cached = Some(account.clone());
        Ok(account)
    }

    /// The external account binding (RFC 8555 §7.3.4) of `acme.eab_kid` and
    /// `acme.eab_hmac_key_file`, when set.
    async fn external_account(
        &self,
    ) -> Result<Option<instant_acme::ExternalAccountKey>, OrderError> {
        let (Some(kid), Some(path)) = (&self.config.eab_kid, &self.config.eab_hmac_key_file) else {
            return Ok(None);
        };
        let path = path.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut bytes = zeroize::Zeroizing::new(Vec::new());
            crate::files::read_regular(&path, 4096, &mut bytes)
                .map_err(|e| format!("acme.eab_hmac_key_file {}: {e}", path.display()))?;
            decode_mac_key(&bytes)
                .ok_or_else(|| format!("acme.eab_hmac_key_file {}: not base64url", path.display()))
        })
        .await
        .map_err(|e| OrderError::Failed(e.to_string()))?
        .map_err(OrderError::Failed)?;
        Ok(Some(instant_acme::ExternalAccountKey::new(
            kid.clone(),
            &read,
        )))
    }
}

/// The CA's suggested renewal window for `leaf` (RFC 9773 §4.2) and when to ask again; `None`
/// when the CA offers no renewal information or did not answer.
async fn renewal_info(account: &Account, leaf: &CertificateDer<'_>) -> Option<(Window, Duration)> {
    let id = CertificateIdentifier::try_from(leaf).ok()?;
    match account.renewal_info(&id).await {
        Ok((info, again)) => Some((
            Window {
                start: info.suggested_window.start.unix_timestamp(),
                end: info.suggested_window.end.unix_timestamp(),
            },
            again,
        )),
        Err(instant_acme::Error::Unsupported(_)) => None,
        Err(e) => {
            tracing::debug!(error = %order::causes(&e), "no renewal information from the CA");
            None
        }
    }
}

/// The MAC key of an external account binding as CAs hand it out: base64url, padded or not,
/// surrounding whitespace ignored. `None` when it is not that, or empty.
pub fn decode_mac_key(text: &[u8]) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    use base64::Engine as _;
    let text = std::str::from_utf8(text).ok()?.trim().trim_end_matches('=');
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    (!key.is_empty()).then(|| zeroize::Zeroizing::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_a_third_of_the_lifetime_left_or_inside_the_cas_window() {
        let day = 86_400;
        // (not_before, not_after, window, now, random, renewal time)
        let rows: [(i64, i64, Option<Window>, i64, f64, i64); 7] = [
            // 90 days: renewed with 30 days left.
            (0, 90 * day, None, 0, 0.5, 60 * day),
            // 6-day short-lived certificate: with 2 days left.
            (0, 6 * day, None, 0, 0.5, 4 * day),
            // 30 s (a test CA): 10 s left.
            (100, 130, None, 100, 0.5, 120),
            // A window ahead: a point inside it.
            (
                0,
                90 * day,
                Some(Window {
                    start: 50 * day,
                    end: 52 * day,
                }),
                0,
                0.5,
                51 * day,
            ),
            (
                0,
                90 * day,
                Some(Window {
                    start: 50 * day,
                    end: 52 * day,
                }),
                0,
                0.0,
                50 * day,
            ),
            // A window that has begun (or passed: revocation ahead): now.
            (
                0,
                90 * day,
                Some(Window { start: 10, end: 20 }),
                15,
                0.9,
                15,
            ),
            (
                0,
                90 * day,
                Some(Window { start: 10, end: 20 }),
                day,
                0.9,
                day,
            ),
        ];
        for (nb, na, window, now, random, want) in rows {
            assert_eq!(
                renewal_time(nb, na, window, now, random),
                want,
                "{nb} {na} {window:?} {now}"
            );
        }
    }

    #[test]
    fn back_off_doubles_per_failure_up_to_an_hour() {
        let minute = Duration::from_secs(60);
        // (base, failures in a row, wait)
        let rows = [
            (minute, 1, minute),
            (minute, 2, 2 * minute),
            (minute, 3, 4 * minute),
            (minute, 6, 32 * minute),
            (minute, 7, MAX_BACKOFF),
            (minute, 40, MAX_BACKOFF),
            (minute, u32::MAX, MAX_BACKOFF),
            (minute, 0, minute),
            (Duration::from_secs(7200), 3, Duration::from_secs(7200)),
            (Duration::from_millis(100), 4, Duration::from_millis(800)),
        ];
        for (base, failures, want) in rows {
            assert_eq!(backoff(base, failures), want, "{base:?} {failures}");
        }
    }

    #[test]
    fn the_fleets_back_off_is_honoured_only_as_far_ahead_as_the_longest_back_off() {
        let now = 1_700_000_000_000i64;
        let minute = Duration::from_secs(60);
        let hour_ms = 3_600_000;
        // (retry_at_ms in retry.json, base, order held until)
        let rows: [(i64, Duration, Option<i64>); 9] = [
            (0, minute, None),
            (now - 1, minute, None),
            (now, minute, None),
            (now + 1, minute, Some(now + 1)),
            (now + hour_ms, minute, Some(now + hour_ms)),
            // Further ahead than any back-off this fleet writes: garbage or a clock set back.
            (now + hour_ms + 1, minute, None),
            (i64::MAX, minute, None),
            // A base longer than an hour is the longest back-off.
            (
                now + 2 * hour_ms,
                Duration::from_secs(7200),
                Some(now + 2 * hour_ms),
            ),
            (now + 2 * hour_ms + 1, Duration::from_secs(7200), None),
        ];
        for (retry_at_ms, base, want) in rows {
            let retry = storage::Retry {
                failures: 3,
                retry_at_ms,
            };
            assert_eq!(
                fleet_wait(&retry, now, base),
                want,
                "{retry_at_ms} {base:?}"
            );
        }
    }

    #[test]
    fn a_mac_key_is_read_as_base64url_padded_or_not() {
        // (file content, key)
        let rows: [(&[u8], Option<&[u8]>); 7] = [
            (
                b"zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W",
                None,
            ),
            (b"AQID", Some(&[1, 2, 3])),
            (b"AQID\n", Some(&[1, 2, 3])),
            (b"AQI=", Some(&[1, 2])),
            (b"-_8", Some(&[0xfb, 0xff])),
            (b"", None),
            (b"not base64!", None),
        ];
        for (text, want) in rows {
            let got = decode_mac_key(text);
            match want {
                Some(w) => assert_eq!(got.as_deref().map(Vec::as_slice), Some(w), "{text:?}"),
                None if text.len() > 20 => assert_eq!(got.map(|k| k.len()), Some(48), "{text:?}"),
                None => assert!(got.is_none(), "{text:?}"),
            }
        }
    }
}

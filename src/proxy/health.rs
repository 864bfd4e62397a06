//! Active health checks (`[upstream.health_check]`): one task per upstream server sends
//! `GET path` every `interval`, on a connection of its own opened by the pool's own connect
//! path (so a check reaches a server exactly as a request would), with
//! `User-Agent: webprom-edge-health-check`, the server's `host:port` as `Host` and
//! `Connection: close`. A check
//! passes when a response head with a status in `expect_status` arrives within `timeout`.
//! `unhealthy_threshold` failures in a row take the server out of rotation,
//! `healthy_threshold` passes in a row bring it back; every server starts in rotation, and the
//! first check runs at once.
//!
//! A check is not a client request: it never reaches the access log, nor
//! `upstream_requests_total`, nor the connection cap. Transitions are logged (warn: out, with
//! the reason; info: back) with the server's name and authority from the config, never
//! anything of a request. Never holds a lock; a task ends when its pool is dropped.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use http::header::{CONNECTION, HOST, USER_AGENT};
use http::{HeaderValue, Request};

use super::body::RequestBody;
use super::upstream::{Slot, Upstreams};
use crate::config::HealthCheck;

/// The `User-Agent` of a health check.
pub const USER_AGENT_VALUE: &str = "webprom-edge-health-check";

impl Upstreams {
    /// Starts the health-check tasks, one per server, when `[upstream.health_check]` is on;
    /// each ends when the pool is dropped (or when its handle is aborted).
    pub fn start_health_checks(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let Some(cfg) = &self.health_check else {
            return Vec::new();
        };
        (0..self.peers.len())
            .map(|index| tokio::spawn(check_forever(Arc::downgrade(self), index, cfg.clone())))
            .collect()
    }

    /// With health checks on, how many servers are healthy (passing their checks, not ejected)
    /// and how many there are; `None` when checks are off.
    pub fn healthy_count(&self) -> Option<(usize, usize)> {
        self.health_check.as_ref()?;
        let healthy = self.peers.iter().filter(|p| self.is_healthy(p)).count();
        Some((healthy, self.peers.len()))
    }

    /// One check of the server at `index`: `Err` says why it failed (config values and the
    /// error's words only).
    async fn check(&self, index: usize, cfg: &HealthCheck) -> Result<(), String> {
        let peer = &self.peers[index];
        let exchange = async {
            let mut conn = self
                .connect(peer, Slot::uncounted())
                .await
                .map_err(|e| e.to_string())?;
            let mut req = Request::new(RequestBody::empty());
            *req.uri_mut() = cfg
                .path
                .parse()
                .map_err(|_| "the path is not a request target".to_owned())?;
            if let Some(host) = &peer.host {
                req.headers_mut().insert(HOST, host.clone());
            }
            req.headers_mut()
                .insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
            // The connection ends with the check (RFC 9112 §9.6).
            req.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            conn.sender
                .ready()
                .await
                .map_err(|e| format!("connection closed: {e}"))?;
            let resp = conn
                .sender
                .send_request(req)
                .await
                .map_err(|e| format!("exchange failed: {e}"))?;
            // Dropped with its connection: a check never reuses one.
            Ok::<_, String>(resp.status().as_u16())
        };
        let status = tokio::time::timeout(cfg.timeout.0, exchange)
            .await
            .map_err(|_| format!("no response within {}", cfg.timeout))??;
        if cfg.expect_status.contains(status) {
            Ok(())
        } else {
            Err(format!(
                "status {status}, expected {}-{}",
                cfg.expect_status.0, cfg.expect_status.1
            ))
        }
    }
}

/// Checks the server at `index` of the pool every `cfg.interval` until the pool is gone,
/// moving it out of and back into rotation by the thresholds.
async fn check_forever(pool: Weak<Upstreams>, index: usize, cfg: HealthCheck) {
    // Passes (positive) or failures (negative) in a row.
    let mut streak: i64 = 0;
    loop {
        let Some(up) = pool.upgrade() else { return };
        let result = up.check(index, &cfg).await;
        let peer = &up.peers[index];
        let passing = peer.passing.load(Ordering::Relaxed);
        match result {
            Ok(()) => {
                streak = streak.max(0) + 1;
                if !passing && streak >= i64::from(cfg.healthy_threshold) {
                    peer.passing.store(true, Ordering::Relaxed);
                    if up.is_healthy(peer) {
                        peer.server.healthy.set(1);
                    }
                    tracing::info!(
                        server = %peer.label,
                        authority = %peer.authority,
                        passes = streak,
                        "upstream server passes its health checks: back in rotation"
                    );
                }
            }
            Err(reason) => {
                streak = streak.min(0) - 1;
                if passing && -streak >= i64::from(cfg.unhealthy_threshold) {
                    peer.passing.store(false, Ordering::Relaxed);
                    peer.server.healthy.set(0);
                    tracing::warn!(
                        server = %peer.label,
                        authority = %peer.authority,
                        failures = -streak,
                        %reason,
                        "upstream server fails its health checks: out of rotation"
                    );
                } else {
                    tracing::debug!(server = %peer.label, %reason, "upstream health check failed");
                }
            }
        }
        drop(up);
        tokio::time::sleep(cfg.interval.0).await;
    }
}

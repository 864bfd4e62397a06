//! Upgraded connections (HTTP/1.1 `Upgrade` answered `101 Switching Protocols`, RFC 9110
//! §7.8; WebSocket is the common case): the client's connection and the upstream's, spliced
//! byte for byte until either side closes or no byte has moved either way for
//! `server.idle_timeout`. An open tunnel counts in `connections_open` (the client connection it
//! took over) and in `tunnels_open`.
//!
//! What it must never do: read, keep or log a byte it carries; outlive its idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What every tunnel shares: its idle timeout and the gauges it counts in.
pub struct Tunnels {
    idle_timeout: Duration,
    connections_open: IntGauge,
    tunnels_open: IntGauge,
}

/// How a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// One side closed and the other followed, or a side failed.
    Closed,
    /// No byte moved either way for the idle timeout.
    Idle,
}

impl Tunnels {
    /// Tunnels closed after `idle_timeout` without a byte moving, counted in both gauges.
    pub fn new(
        idle_timeout: Duration,
        connections_open: IntGauge,
        tunnels_open: IntGauge,
    ) -> Tunnels {
        Tunnels {
            idle_timeout,
            connections_open,
            tunnels_open,
        }
    }

    /// Splices the upgraded client connection to the upgraded upstream connection, in a task of
    /// its own, once both sides have switched protocols. Dropping the task (the process exits
    /// at the end of its drain) closes both.
    pub fn spawn(&self, client: OnUpgrade, upstream: OnUpgrade) {
        let idle_timeout = self.idle_timeout;
        let gauges = [self.connections_open.clone(), self.tunnels_open.clone()];
        tokio::spawn(async move {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(error = %e, "protocol upgrade failed");
                    return;
                }
            };
            let _open = Open::new(gauges);
            let end = splice(TokioIo::new(client), TokioIo::new(upstream), idle_timeout).await;
            if end == End::Idle {
                tracing::debug!(?idle_timeout, "tunnel idle: closed");
            }
        });
    }
}

/// Copies both ways until both directions have ended (each side's end of stream is passed on
/// to the other as a write shutdown) or a side fails, or until no byte has moved for
/// `idle_timeout`. Both connections are dropped, so closed, on return.
async fn splice<C, U>(client: C, upstream: U, idle_timeout: Duration) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = AtomicBool::new(false);
    let mut client = Watched {
        inner: client,
        activity: &activity,
    };
    let mut upstream = Watched {
        inner: upstream,
        activity: &activity,
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    // Checked four times per idle period, as client connections are: a tunnel closes after one
    // to one-and-a-quarter periods without a byte moving either way.
    let mut tick = tokio::time::interval(idle_timeout / 4);
    tick.tick().await;
    let mut quiet_ticks = 0u32;
    loop {
        tokio::select! {
            biased;
            res = copy.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "tunnel ended with an error");
                }
                return End::Closed;
            }
            _ = tick.tick() => {
                if activity.swap(false, Ordering::Relaxed) {
                    quiet_ticks = 0;
                } else {
                    quiet_ticks += 1;
                    if quiet_ticks >= 4 {
                        return End::Idle;
                    }
                }
            }
        }
    }
}

/// Counts a tunnel in its gauges for as long as it lives.
struct Open([IntGauge; 2]);

impl Open {
    fn new(gauges: [IntGauge; 2]) -> Open {
        for g in &gauges {
            g.inc();
        }
        Open(gauges)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        for g in &self.0 {
            g.dec();
        }
    }
}

/// A connection that notes whether any byte moved, for the idle timeout.
struct Watched<'a, T> {
    inner: T,
    activity: &'a AtomicBool,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() != before {
            this.activity.store(true, Ordering::Relaxed);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.store(true, Ordering::Relaxed);
        }
        res
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    const IDLE: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn a_tunnel_with_no_byte_moving_ends_as_idle() {
        let (client, _client_peer) = duplex(64);
        let (upstream, _upstream_peer) = duplex(64);
        let started = tokio::time::Instant::now();
        let end = splice(client, upstream, IDLE).await;
        assert_eq!(end, End::Idle);
        let took = started.elapsed();
        assert!(took >= IDLE, "{took:?}");
        assert!(took <= IDLE * 5, "{took:?}");
    }

    #[tokio::test]
    async fn bytes_one_way_keep_a_tunnel_open_and_its_end_closes_it() {
        let (client, mut client_peer) = duplex(64);
        let (upstream, mut upstream_peer) = duplex(64);
        let task = tokio::spawn(splice(client, upstream, IDLE));
        for _ in 0..10 {
            tokio::time::sleep(IDLE / 2).await;
            client_peer.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            upstream_peer.read_exact(&mut b).await.unwrap();
        }
        assert!(!task.is_finished());
        drop(client_peer);
        drop(upstream_peer);
        assert_eq!(task.await.unwrap(), End::Closed);
    }
}

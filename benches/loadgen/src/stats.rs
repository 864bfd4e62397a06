//! What a run counts: completed requests and their latencies, statuses, errors, connections
//! and how their TLS handshakes went. Printed as `key=value` lines for the harness to read.

use std::time::Duration;

#[derive(Default)]
pub struct Stats {
    /// Latency of each request completed before the deadline, microseconds.
    pub latencies_us: Vec<u32>,
    /// Completed requests with a 2xx status.
    pub ok: u64,
    /// Completed requests with another status.
    pub other_status: u64,
    /// Requests that failed: connection refused or reset, TLS or protocol error, timeout.
    pub errors: u64,
    /// Connections whose TLS handshake completed.
    pub connections: u64,
    /// Of those, resumed from a session ticket or ID.
    pub resumed: u64,
    /// Connections that failed before their handshake completed.
    pub connect_errors: u64,
    /// The first connection's TLS version, cipher suite and ALPN protocol.
    pub tls: Option<String>,
    /// The first error's text, for the harness's raw output.
    pub first_error: Option<String>,
}

impl Stats {
    pub fn record(&mut self, latency: Duration, status: u16) {
        self.latencies_us
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        if (200..300).contains(&status) {
            self.ok += 1;
        } else {
            self.other_status += 1;
        }
    }

    pub fn error(&mut self, e: &dyn std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    /// Prints the summary; `elapsed` is the measured time, `clients` the number of distinct
    /// client addresses in the corpus (0: none sent), `issued` the requests begun.
    pub fn print(&mut self, elapsed: Duration, clients: usize, issued: u64) {
        let n = self.latencies_us.len();
        self.latencies_us.sort_unstable();
        let pct = |p: f64| -> f64 {
            if n == 0 {
                return 0.0;
            }
            let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
            f64::from(self.latencies_us[i]) / 1000.0
        };
        let mean = if n == 0 {
            0.0
        } else {
            self.latencies_us.iter().map(|&v| u64::from(v)).sum::<u64>() as f64 / n as f64 / 1000.0
        };
        let secs = elapsed.as_secs_f64();
        println!("duration_s={secs:.3}");
        println!("requests={n}");
        println!("ok={}", self.ok);
        println!("other_status={}", self.other_status);
        println!("errors={}", self.errors);
        println!("req_per_s={:.1}", n as f64 / secs);
        println!("mean_ms={mean:.3}");
        println!("p50_ms={:.3}", pct(0.50));
        println!("p90_ms={:.3}", pct(0.90));
        println!("p99_ms={:.3}", pct(0.99));
        println!("max_ms={:.3}", pct(1.0));
        println!("connections={}", self.connections);
        println!("resumed={}", self.resumed);
        println!("connect_errors={}", self.connect_errors);
        println!("conn_per_s={:.1}", self.connections as f64 / secs);
        if clients > 0 {
            println!("distinct_clients={}", issued.min(clients as u64));
        }
        println!("tls={}", self.tls.as_deref().unwrap_or("-"));
        if let Some(e) = &self.first_error {
            println!("first_error={}", e.replace('\n', " "));
        }
    }
}

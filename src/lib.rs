//! webprom-edge: a privacy-aware, TLS-terminating reverse proxy.
//!
//! One request's life: [`server`] accepts, terminates TLS and speaks HTTP/1.1 or HTTP/2, then
//! hands the request to [`proxy::Proxy::handle`], the driver, which calls each phase by name:
//! the client address ([`client_ip`]), the capture's begin ([`privacy`]), the request filter,
//! the rate limit ([`ratelimit`]), the body filter, the upstream request, the body, the send
//! (the upstream pool), the response filter, and the logging phase, whose body writes the
//! request's one record to [`accesslog`] and [`metrics`] when the answer ends. Around it:
//! [`admin`] serves health, readiness and metrics; [`config`] is the validated configuration;
//! [`cli`] is the command line and the log commands over [`accesslog`]'s reader; [`files`] and
//! [`epoch`] hold the file and day helpers everyone uses. ARCHITECTURE.md draws the same map.

/// The JSON Lines access log: the writer thread, day files and their modes, the reader.
pub mod accesslog;
/// The admin listener: `/healthz`, `/readyz` (its own health view), `/metrics`.
pub mod admin;
/// The commands: `run`, `check-config`, `investigate`, `erase`, `keys`, `man`, `completions`.
pub mod cli;
/// `ClientAddr`, the canonical client address that cannot be printed, and trusted proxies.
pub mod client_ip;
/// The configuration file: parsing, defaults, validation naming the key at fault.
pub mod config;
/// The UTC day (`Epoch`) and the only arithmetic on days.
pub mod epoch;
/// The field-list reader (RFC 9110 §5.6.1) and the one set of whitespace-trim helpers.
pub mod fields;
/// Checked reads of operator files, writability probes and the one atomic replacement.
pub mod files;
/// Prometheus metrics: counters, gauges, the distinct-visitor estimate; no personal label.
pub mod metrics;
/// The capture: the allowed facts of a request, pseudonyms and their keys, truncation.
pub mod privacy;
/// The request driver and its phases: filters, forwarding, bodies, upstream pool, logging.
pub mod proxy;
/// Per-client quotas (GCRA) by route, on canonical client addresses.
pub mod ratelimit;
/// Listeners, TLS, connections, signals: builds the parts and hands each task its own.
pub mod server;

//! webprom-edge: a privacy-aware, TLS-terminating reverse proxy.
//!
//! One request's life: [`server`] accepts, terminates TLS and speaks HTTP/1.1 or HTTP/2, then
//! hands the request to [`proxy::Proxy::handle`], the driver, which calls each phase by name:
//! the client address ([`client_ip`]), the authority, the capture's begin ([`privacy`]), the
//! request filter, the rate limit ([`ratelimit`]), the body filter, the pick of an upstream
//! server, the upstream request, the body, the send
//! (the upstream pool), the response filter, and the logging phase, whose body writes the
//! request's one record to [`accesslog`] and [`metrics`] when the answer ends. Around it:
//! [`admin`] serves health, readiness and metrics; [`config`] is the validated configuration;
//! [`cli`] is the command line and the log commands over [`accesslog`]'s reader; [`files`] and
//! [`epoch`] hold the file and day helpers everyone uses. ARCHITECTURE.md draws the same map.
//!
//! - [`accesslog`]: the JSON Lines access log: the writer thread, day files and their modes, the reader.
//! - [`acme`]: certificates from Let's Encrypt by ACME: orders, challenges, fleet storage, renewal.
//! - [`admin`]: the admin listener: `/healthz`, `/readyz` (its own health view), `/metrics`.
//! - [`cli`]: the commands: `run`, `check-config`, `investigate`, `erase`, `keys`, `certs`, `man`, `completions`.
//! - [`client_ip`]: `ClientAddr`, the canonical client address that cannot be printed, and trusted proxies.
//! - [`config`]: the configuration file: parsing, defaults, validation naming the key at fault.
//! - [`epoch`]: the UTC day (`Epoch`) and the only arithmetic on days.
//! - [`fields`]: the field-list reader (RFC 9110 §5.6.1) and the one set of whitespace-trim helpers.
//! - [`files`]: checked reads of operator files, writability probes and the one atomic replacement.
//! - [`metrics`]: Prometheus metrics: counters, gauges, the distinct-visitor estimate; no personal label.
//! - [`privacy`]: the capture: the allowed facts of a request, pseudonyms and their keys, truncation.
//! - [`proxy`]: the request driver and its phases: filters, forwarding, bodies, upstream pool, logging.
//! - [`ratelimit`]: per-client quotas (GCRA) by route, on canonical client addresses.
//! - [`server`]: listeners, TLS, connections, signals: builds the parts and hands each task its own.

pub mod accesslog;
pub mod acme;
pub mod admin;
pub mod cli;
pub mod client_ip;
pub mod config;
pub mod epoch;
pub mod fields;
pub mod files;
pub mod metrics;
pub mod privacy;
pub mod proxy;
pub mod ratelimit;
pub mod server;

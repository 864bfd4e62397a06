//! webprom-edge: a privacy-aware, TLS-terminating reverse proxy.
//!
//! The life of a request, module by module:
//! [`server`] accepts and terminates TLS → [`client_ip`] resolves the client address →
//! [`ratelimit`] checks the client's quota → [`proxy`] forwards to an upstream and filters the
//! response → [`privacy`] captures the allowed facts as an Observation → [`accesslog`] and
//! [`metrics`] record it. [`admin`] serves health and metrics; [`config`] holds the validated
//! configuration; [`cli`] defines the command line and runs the commands, among them
//! `investigate` and `erase`, which search and erase the logs of one client for investigations
//! and data-subject requests; [`files`] reads and checks the files and directories the
//! configuration names and replaces files atomically; [`epoch`] is the UTC day and the
//! arithmetic on days.

pub mod accesslog;
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

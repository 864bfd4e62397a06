//! webprom-edge: a privacy-aware, TLS-terminating reverse proxy.
//!
//! The life of a request, module by module:
//! [`server`] accepts and terminates TLS → [`client_ip`] resolves the client address →
//! [`ratelimit`] admits or refuses it per client →
//! [`proxy`] forwards to an upstream and filters the response. [`admin`] serves health and
//! metrics; [`config`] holds the validated configuration; [`cli`] runs the commands.

pub mod admin;
pub mod cli;
pub mod client_ip;
pub mod config;
pub mod proxy;
pub mod ratelimit;
pub mod server;

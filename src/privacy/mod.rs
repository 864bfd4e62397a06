//! The capture: what the proxy may learn about a client, and nothing more.

pub mod geo;
pub mod keys;
pub mod net;

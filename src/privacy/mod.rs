//! The capture: what may be recorded about a request, and nothing more. Each allowed field has
//! its own module; [`capture`] derives them from a request and [`observation`] holds the result.

pub mod capture;
pub mod geo;
pub mod host;
pub mod keys;
pub mod lang;
pub mod net;
pub mod observation;
pub mod path;
pub mod ua;

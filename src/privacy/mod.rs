//! The capture: what may be recorded about a request, each in its own module.

pub mod lang;
pub mod path;
pub mod ua;

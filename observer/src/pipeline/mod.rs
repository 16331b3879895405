//! From kernel maps to figures per identity.

pub mod aggregate;
pub mod http;
pub mod names;

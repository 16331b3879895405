//! Exporters: the Prometheus collector and the HTTP admin endpoint.

pub mod admin;
pub mod metrics;

//! Exporters: the Prometheus collector, the HTTP admin endpoint and the gRPC query API.

pub mod admin;
pub mod grpc;
pub mod metrics;

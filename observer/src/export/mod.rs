//! Exporters: the Prometheus collector, the HTTP admin endpoint and the gRPC query API, all
//! reading one shared snapshot of the figures.

pub mod admin;
pub mod grpc;
pub mod metrics;
pub mod snapshot;

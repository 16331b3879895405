//! Prometheus metrics, encoded at scrape time from one snapshot of the figures (a
//! `Collector`): nothing is copied into user space between scrapes. One file per family group;
//! the request families come from each protocol's `Spec`, so a new protocol needs nothing here.

mod lifecycle;
mod requests;
mod selfobs;
mod syscalls;
mod tcp;
#[cfg(test)]
mod tests;
mod topology;

use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::MetricType,
    registry::Unit,
};

pub use selfobs::LOST_SOURCES;

use crate::{
    ebpf::load::ProbeStatus,
    export::snapshot::Snapshots,
    identity::Identity,
    model::Hist,
    pipeline::{
        aggregate::{KernelHealth, Totals},
        topology::Topology,
    },
};

/// Collects everything the observer exports, from the shared snapshot.
pub struct ObserverCollector {
    snapshots: Arc<Snapshots>,
    probes: Vec<ProbeStatus>,
}

impl fmt::Debug for ObserverCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserverCollector").finish_non_exhaustive()
    }
}

impl ObserverCollector {
    pub fn new(snapshots: Arc<Snapshots>, probes: Vec<ProbeStatus>) -> Self {
        Self { snapshots, probes }
    }
}

impl Collector for ObserverCollector {
    fn encode(&self, enc: DescriptorEncoder) -> fmt::Result {
        let s = self.snapshots.for_scrape();
        let health = s.health.clone().unwrap_or_default();
        encode_all(enc, &s.totals, &health, &self.probes, &s.topology)
    }
}

/// Encodes every family from one snapshot of the figures.
pub fn encode_all(
    mut enc: DescriptorEncoder,
    totals: &Totals,
    health: &KernelHealth,
    probes: &[ProbeStatus],
    topology: &Topology,
) -> fmt::Result {
    selfobs::encode(&mut enc, health, probes)?;
    syscalls::encode(&mut enc, totals)?;
    tcp::encode(&mut enc, totals)?;
    requests::encode(&mut enc, &totals.requests)?;
    lifecycle::encode(&mut enc, &totals.lifecycle)?;
    topology::encode(&mut enc, topology)
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn with<'a>(id: &'a Identity, extra: &[(&'static str, &'a str)]) -> Labels<'a> {
    let mut l: Labels<'a> = id.labels().to_vec();
    l.extend_from_slice(extra);
    l
}

/// A histogram from pre-aggregated bucket counts (not cumulative; last is +Inf).
struct RawHistogram<'a> {
    sum: f64,
    count: u64,
    buckets: &'a [(f64, u64)],
}

impl EncodeMetric for RawHistogram<'_> {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, self.buckets, None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Encodes a [`Hist`] into a family.
fn histogram<L: prometheus_client::encoding::EncodeLabelSet>(
    m: &mut prometheus_client::encoding::MetricEncoder,
    labels: &L,
    h: &Hist,
) -> fmt::Result {
    let buckets = h.buckets();
    RawHistogram {
        sum: h.sum,
        count: h.count,
        buckets: &buckets,
    }
    .encode(m.encode_family(labels)?)
}

fn counter<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl Iterator<Item = (Labels<'a>, u64)>,
) -> fmt::Result {
    let mut rows = rows.peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in rows {
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
    }
    Ok(())
}

fn gauge<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Labels<'a>, i64)>,
) -> fmt::Result {
    let mut rows = rows.peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        m.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

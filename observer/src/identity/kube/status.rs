//! Whether the metadata is there: per watched resource, whether its first list completed and
//! how many watch errors it met. Read by `/readyz` and exported as
//! `observer_kubernetes_metadata_synced{resource}` and
//! `observer_kubernetes_watch_errors_total{resource}`.

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
};

/// The watched resources, in export order.
pub const RESOURCES: &[&str] = &[
    "pods",
    "services",
    "replicasets",
    "jobs",
    "deployments",
    "statefulsets",
    "daemonsets",
    "horizontalpodautoscalers",
    "events",
];

#[derive(Debug, Default)]
struct One {
    synced: AtomicBool,
    errors: AtomicU64,
}

/// Shared between the watchers, `/readyz` and the collector.
#[derive(Debug)]
pub struct KubeStatus {
    each: Vec<One>,
}

impl Default for KubeStatus {
    fn default() -> Self {
        Self {
            each: RESOURCES.iter().map(|_| One::default()).collect(),
        }
    }
}

impl KubeStatus {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn index(resource: &str) -> usize {
        RESOURCES
            .iter()
            .position(|r| *r == resource)
            .expect("known resource")
    }

    pub fn set_synced(&self, resource: &str) {
        self.each[Self::index(resource)]
            .synced
            .store(true, Ordering::Relaxed);
    }

    pub fn add_error(&self, resource: &str) {
        self.each[Self::index(resource)]
            .errors
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn synced(&self, resource: &str) -> bool {
        self.each[Self::index(resource)]
            .synced
            .load(Ordering::Relaxed)
    }

    /// `Err(reason)` while some resource has not been listed once.
    pub fn ready(&self) -> Result<(), String> {
        let missing: Vec<&str> = RESOURCES
            .iter()
            .zip(&self.each)
            .filter(|(_, o)| !o.synced.load(Ordering::Relaxed))
            .map(|(r, _)| *r)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "Kubernetes metadata not listed yet: {}",
                missing.join(", ")
            ))
        }
    }
}

/// The self-metrics of the Kubernetes watchers.
#[derive(Debug)]
pub struct KubeCollector(pub Arc<KubeStatus>);

impl Collector for KubeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let mut m = enc.encode_descriptor(
            "observer_kubernetes_metadata_synced",
            "1 once the first list of the resource completed (labels from the Kubernetes API are available)",
            None,
            MetricType::Gauge,
        )?;
        for (r, o) in RESOURCES.iter().zip(&self.0.each) {
            let v = i64::from(o.synced.load(Ordering::Relaxed));
            m.encode_family(&vec![("resource", *r)])?.encode_gauge(&v)?;
        }
        let mut m = enc.encode_descriptor(
            "observer_kubernetes_watch_errors",
            "Errors listing or watching the resource (each is retried with backoff)",
            None,
            MetricType::Counter,
        )?;
        for (r, o) in RESOURCES.iter().zip(&self.0.each) {
            let v = o.errors.load(Ordering::Relaxed);
            m.encode_family(&vec![("resource", *r)])?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_every_resource_listed() {
        let s = KubeStatus::new();
        assert!(s.ready().unwrap_err().contains("pods"));
        for r in RESOURCES {
            s.set_synced(r);
        }
        assert!(s.ready().is_ok());
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(Box::new(KubeCollector(s.clone())));
        s.add_error("pods");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains("observer_kubernetes_metadata_synced{resource=\"events\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("observer_kubernetes_watch_errors_total{resource=\"pods\"} 1"),
            "{out}"
        );
    }
}

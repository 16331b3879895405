//! Lifecycle families: OOM kills, exits, restarts, Kubernetes Warning events, replicas.

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;

use super::{counter, gauge, with, Labels};
use crate::pipeline::events::LifecycleCounts;

/// OOM kills, exits, restarts, Kubernetes Warning events and replica counts.
pub fn encode(enc: &mut DescriptorEncoder, l: &LifecycleCounts) -> fmt::Result {
    counter(
        enc,
        "observer_container_oom_kills",
        "Processes of the container the kernel's OOM killer killed",
        None,
        l.oom_kills.iter().map(|(id, n)| (with(id, &[]), *n)),
    )?;
    counter(
        enc,
        "observer_container_exits",
        "Exits of a container's (or host service's) main process: exited (with a code), signaled, oom_killed",
        None,
        l.exits
            .iter()
            .map(|((id, r), n)| (with(id, &[("reason", r.as_str())]), *n)),
    )?;
    counter(
        enc,
        "observer_container_restarts",
        "Container restarts, with the reason Kubernetes gives (OOMKilled, Error, CrashLoopBackOff, ...)",
        None,
        l.restarts
            .iter()
            .map(|((id, r), n)| (with(id, &[("reason", r.as_str())]), *n)),
    )?;
    counter(
        enc,
        "observer_kubernetes_events",
        "Kubernetes Warning events of this node's pods, by reason",
        None,
        l.kube_events.iter().map(|(k, n)| {
            let labels: Labels = vec![
                ("type", k.event_type.as_str()),
                ("reason", k.reason.as_str()),
                ("k8s_namespace_name", k.namespace.as_str()),
                ("k8s_pod_name", k.pod.as_str()),
            ];
            (labels, *n)
        }),
    )?;
    gauge(
        enc,
        "observer_workload_replicas",
        "Replicas of a workload: desired (spec), ready, hpa_desired (when an HPA targets it)",
        l.replicas.iter().flat_map(|(k, r)| {
            let base = [
                ("k8s_namespace_name", k.namespace.as_str()),
                ("kind", k.kind.as_str()),
                ("workload", k.name.as_str()),
            ];
            let mut rows = vec![
                (state_labels(&base, "desired"), r.desired),
                (state_labels(&base, "ready"), r.ready),
            ];
            if let Some(h) = r.hpa_desired {
                rows.push((state_labels(&base, "hpa_desired"), h));
            }
            rows
        }),
    )
}

fn state_labels<'a>(base: &[(&'static str, &'a str); 3], state: &'static str) -> Labels<'a> {
    let mut l = base.to_vec();
    l.push(("state", state));
    l
}

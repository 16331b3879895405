//! Lifecycle events: what happened to a workload (OOM kill, exit of its main process, container
//! restart, a Kubernetes Warning event, a replica change). Sources (the kernel's lifecycle ring,
//! the Kubernetes watchers) `publish` here; the Prometheus collector reads the counters, the gRPC
//! event stream subscribes to the broadcast and replays the recent ones.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use tokio::sync::broadcast;

pub use crate::events::{
    EventKind, ExitReason, KubeEventKey, LifecycleEvent, Replicas, WorkloadKey,
};
use crate::identity::Identity;

/// How many recent events a new gRPC subscriber is replayed (the evidence of a pod that is
/// gone is kept outside it).
pub const RECENT_EVENTS: usize = 1024;

/// A copy of the counters, for one scrape.
#[derive(Clone, Debug, Default)]
pub struct LifecycleCounts {
    pub oom_kills: BTreeMap<Arc<Identity>, u64>,
    pub exits: BTreeMap<(Arc<Identity>, ExitReason), u64>,
    pub restarts: BTreeMap<(Arc<Identity>, String), u64>,
    pub kube_events: BTreeMap<KubeEventKey, u64>,
    pub replicas: BTreeMap<WorkloadKey, Replicas>,
}

/// Counters and the event fan-out.
pub struct Lifecycle {
    pub oom_kills: BTreeMap<Arc<Identity>, u64>,
    /// (identity, reason, code or signal number) → count.
    pub exits: BTreeMap<(Arc<Identity>, ExitReason), u64>,
    /// (identity, Kubernetes reason) → count.
    pub restarts: BTreeMap<(Arc<Identity>, String), u64>,
    pub kube_events: BTreeMap<KubeEventKey, u64>,
    pub replicas: BTreeMap<WorkloadKey, Replicas>,
    recent: VecDeque<LifecycleEvent>,
    tx: broadcast::Sender<LifecycleEvent>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("recent", &self.recent.len())
            .finish_non_exhaustive()
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            oom_kills: BTreeMap::new(),
            exits: BTreeMap::new(),
            restarts: BTreeMap::new(),
            kube_events: BTreeMap::new(),
            replicas: BTreeMap::new(),
            recent: VecDeque::new(),
            tx: broadcast::channel(RECENT_EVENTS).0,
        }
    }
}

impl Lifecycle {
    /// Counts an event and hands it to the subscribers. Counting is done here, synchronously,
    /// so the Prometheus figures never depend on anyone listening.
    pub fn publish(&mut self, ev: LifecycleEvent) {
        match ev.kind {
            EventKind::OomKill => *self.oom_kills.entry(ev.identity.clone()).or_default() += 1,
            EventKind::ProcessExit => {
                let reason = match ev.fields.get("reason").map(String::as_str) {
                    Some("oom_killed") => ExitReason::OomKilled,
                    Some("signaled") => ExitReason::Signaled,
                    _ => ExitReason::Exited,
                };
                *self.exits.entry((ev.identity.clone(), reason)).or_default() += 1;
            }
            EventKind::ContainerRestart => {
                let reason = ev.fields.get("reason").cloned().unwrap_or_default();
                *self
                    .restarts
                    .entry((ev.identity.clone(), reason))
                    .or_default() += 1;
            }
            EventKind::KubernetesEvent => {
                let key = KubeEventKey {
                    event_type: ev.fields.get("type").cloned().unwrap_or_default(),
                    reason: ev.fields.get("reason").cloned().unwrap_or_default(),
                    namespace: ev.identity.k8s_namespace_name.clone(),
                    pod: ev.identity.k8s_pod_name.clone(),
                };
                *self.kube_events.entry(key).or_default() += 1;
            }
            EventKind::WorkloadScale => {}
        }
        if self.recent.len() == RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(ev.clone());
        let _ = self.tx.send(ev);
    }

    /// The counters as they are now.
    pub fn counts(&self) -> LifecycleCounts {
        LifecycleCounts {
            oom_kills: self.oom_kills.clone(),
            exits: self.exits.clone(),
            restarts: self.restarts.clone(),
            kube_events: self.kube_events.clone(),
            replicas: self.replicas.clone(),
        }
    }

    /// Sets a workload's replica counts (the gauge); the caller publishes a `WorkloadScale`
    /// event when the desired count changed.
    pub fn set_replicas(&mut self, key: WorkloadKey, r: Replicas) -> Option<Replicas> {
        self.replicas.insert(key, r)
    }

    /// Drops the gauge of a deleted workload.
    pub fn remove_workload(&mut self, key: &WorkloadKey) {
        self.replicas.remove(key);
    }

    /// The recent events (oldest first) and a receiver for what comes after them.
    pub fn subscribe(&self) -> (Vec<LifecycleEvent>, broadcast::Receiver<LifecycleEvent>) {
        (self.recent.iter().cloned().collect(), self.tx.subscribe())
    }

    /// Forgets the counters of workloads that are gone: no known cgroup has their identity
    /// any more (after the grace period, with their other series) and the Kubernetes API no
    /// longer lists their pod. `live_pods` are (UID, namespace, name) of the pods the API
    /// lists: a container that never started (ImagePullBackOff) has restarts but no cgroup.
    pub fn retain(
        &mut self,
        alive: &std::collections::HashSet<Arc<Identity>>,
        live_pods: &[(String, String, String)],
    ) {
        let uids: std::collections::HashSet<&str> =
            live_pods.iter().map(|(u, _, _)| u.as_str()).collect();
        let names: std::collections::HashSet<(&str, &str)> = live_pods
            .iter()
            .map(|(_, ns, n)| (ns.as_str(), n.as_str()))
            .chain(
                alive
                    .iter()
                    .map(|i| (i.k8s_namespace_name.as_str(), i.k8s_pod_name.as_str())),
            )
            .collect();
        let keep =
            |id: &Arc<Identity>| alive.contains(id) || uids.contains(id.k8s_pod_uid.as_str());
        self.oom_kills.retain(|id, _| keep(id));
        self.exits.retain(|(id, _), _| keep(id));
        self.restarts.retain(|(id, _), _| keep(id));
        self.kube_events
            .retain(|k, _| names.contains(&(k.namespace.as_str(), k.pod.as_str())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, pod: &str, fields: &[(&str, &str)]) -> LifecycleEvent {
        LifecycleEvent {
            kind,
            time: std::time::SystemTime::now(),
            identity: Arc::new(Identity {
                k8s_pod_name: pod.into(),
                ..Default::default()
            }),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            message: String::new(),
        }
    }

    #[test]
    fn counts_and_replays() {
        let mut l = Lifecycle::default();
        l.publish(ev(EventKind::OomKill, "a", &[]));
        l.publish(ev(EventKind::ProcessExit, "a", &[("reason", "oom_killed")]));
        l.publish(ev(
            EventKind::ProcessExit,
            "b",
            &[("reason", "exited"), ("code", "3")],
        ));
        l.publish(ev(
            EventKind::ContainerRestart,
            "a",
            &[("reason", "OOMKilled")],
        ));
        l.publish(ev(
            EventKind::KubernetesEvent,
            "a",
            &[("type", "Warning"), ("reason", "BackOff")],
        ));
        assert_eq!(l.oom_kills.values().sum::<u64>(), 1);
        assert_eq!(l.exits.len(), 2);
        assert_eq!(l.restarts.values().sum::<u64>(), 1);
        assert_eq!(l.kube_events.values().sum::<u64>(), 1);
        let (recent, _rx) = l.subscribe();
        assert_eq!(recent.len(), 5);
        for _ in 0..RECENT_EVENTS {
            l.publish(ev(EventKind::WorkloadScale, "", &[]));
        }
        assert_eq!(l.subscribe().0.len(), RECENT_EVENTS);
    }
}

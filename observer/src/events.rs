//! The vocabulary of lifecycle events: what happened to a workload (OOM kill, exit of its main
//! process, container restart, a Kubernetes Warning event, a replica change). Their sources
//! (the kernel's lifecycle ring, the Kubernetes watchers in `identity`) make them; the pipeline
//! counts and fans them out (`pipeline::events`).

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use crate::identity::Identity;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// The kernel's OOM killer chose a process of the workload (`oom:mark_victim`, confirmed
    /// at its exit).
    OomKill,
    /// The main process of a container (or of a host service) exited.
    ProcessExit,
    /// A container of a pod was started again (new container id, or restart count up).
    ContainerRestart,
    /// A Warning event Kubernetes recorded for a pod of this node.
    KubernetesEvent,
    /// A workload's desired replica count changed (Deployment/StatefulSet/ReplicaSet or HPA).
    WorkloadScale,
}

impl EventKind {
    /// The `kind` string of the gRPC event.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::OomKill => "oom_kill",
            EventKind::ProcessExit => "process_exit",
            EventKind::ContainerRestart => "container_restart",
            EventKind::KubernetesEvent => "kubernetes_event",
            EventKind::WorkloadScale => "workload_scale",
        }
    }
}

/// One event. `fields` carry the kind's details (documented in the proto); `identity` is the
/// workload it is about (empty labels for cluster-level events without a pod).
#[derive(Clone, Debug)]
pub struct LifecycleEvent {
    pub kind: EventKind,
    pub time: SystemTime,
    pub identity: Arc<Identity>,
    pub fields: BTreeMap<String, String>,
    /// One line for people.
    pub message: String,
}

/// Why a main process ended, as the `reason` label of `observer_container_exits_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExitReason {
    /// exit() with a code (0 included).
    Exited,
    /// Killed by a signal other than the OOM killer's.
    Signaled,
    /// Killed by the OOM killer.
    OomKilled,
}

impl ExitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Exited => "exited",
            ExitReason::Signaled => "signaled",
            ExitReason::OomKilled => "oom_killed",
        }
    }
}

/// Labels of `observer_kubernetes_events_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KubeEventKey {
    /// `Warning` (Normal events are not counted).
    pub event_type: String,
    /// The Kubernetes reason (`FailedScheduling`, `FailedMount`, `Unhealthy`, `BackOff`, ...).
    pub reason: String,
    pub namespace: String,
    pub pod: String,
}

/// Labels of `observer_workload_replicas`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadKey {
    pub namespace: String,
    /// `Deployment`, `StatefulSet`, `ReplicaSet`, `DaemonSet`.
    pub kind: String,
    pub name: String,
}

/// Replica counts of a workload; `hpa_desired` when an HPA targets it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replicas {
    pub desired: i64,
    pub ready: i64,
    pub hpa_desired: Option<i64>,
}

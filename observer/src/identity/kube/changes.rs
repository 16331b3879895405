//! Turning object updates into lifecycle events, each exactly once: container restarts (a new
//! container id or a higher restart count, or a container stuck in a failure state), replica
//! changes of workloads and HPAs, and Warning event counts. A relist (after `410 Gone` or a
//! reconnect) hands the same objects again: the trackers remember what they published, so it
//! adds nothing; the first list of all only seeds them (what happened before the observer
//! started is not counted).

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::store::strip_runtime;

/// Waiting reasons that mean the container cannot run (counted as a restart with that reason).
pub const FAILURE_WAITING: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "InvalidImageName",
    "RunContainerError",
];

/// A container's status, reduced to what restart detection needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerState {
    pub name: String,
    /// Current container id (runtime prefix stripped), empty while none runs.
    pub id: String,
    pub restarts: i32,
    pub waiting: Option<String>,
    /// `lastState.terminated` (reason, exit code).
    pub last_terminated: Option<(String, i32)>,
}

impl ContainerState {
    pub fn from_status(s: &ContainerStatus) -> Self {
        let waiting = s
            .state
            .as_ref()
            .and_then(|st| st.waiting.as_ref())
            .and_then(|w| w.reason.clone());
        let last_terminated = s
            .last_state
            .as_ref()
            .and_then(|st| st.terminated.as_ref())
            .map(|t| {
                (
                    t.reason.clone().unwrap_or_else(|| "Unknown".into()),
                    t.exit_code,
                )
            });
        ContainerState {
            name: s.name.clone(),
            id: s
                .container_id
                .as_deref()
                .map(strip_runtime)
                .unwrap_or_default()
                .to_string(),
            restarts: s.restart_count,
            waiting,
            last_terminated,
        }
    }
}

/// The container states of a pod (init containers included).
pub fn container_states(pod: &Pod) -> Vec<ContainerState> {
    let Some(st) = &pod.status else {
        return Vec::new();
    };
    st.init_container_statuses
        .iter()
        .flatten()
        .chain(st.container_statuses.iter().flatten())
        .map(ContainerState::from_status)
        .collect()
}

/// One detected restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    pub container: String,
    pub reason: String,
    pub restart_count: i32,
    pub exit_code: Option<i32>,
    pub previous_container_id: String,
    pub container_id: String,
}

#[derive(Debug, Default)]
pub struct RestartTracker {
    /// Pod uid → container name → (last container id, restart count).
    last: HashMap<String, HashMap<String, (String, i32)>>,
    /// (pod uid, container, restart count) published (or seeded).
    published: HashSet<(String, String, i32)>,
}

impl RestartTracker {
    /// Compares a pod's states with the previous ones. `seed`: remember, publish nothing.
    /// `pod_reason` is the pod's status reason (`Evicted`).
    pub fn observe(
        &mut self,
        uid: &str,
        states: &[ContainerState],
        pod_reason: Option<&str>,
        seed: bool,
    ) -> Vec<Restart> {
        let mut out = Vec::new();
        let last = self.last.entry(uid.to_string()).or_default();
        for st in states {
            let prev = last.get(&st.name).cloned();
            let restarted = prev.as_ref().is_some_and(|(id, count)| {
                st.restarts > *count || (!id.is_empty() && !st.id.is_empty() && st.id != *id)
            });
            let failing = st
                .waiting
                .as_deref()
                .filter(|w| FAILURE_WAITING.contains(w));
            if restarted || failing.is_some() {
                let fresh = self
                    .published
                    .insert((uid.to_string(), st.name.clone(), st.restarts));
                if fresh && !seed {
                    let terminated = st.last_terminated.as_ref();
                    let reason = match (terminated, failing) {
                        (Some((r, _)), _) if r == "OOMKilled" => r.clone(),
                        (_, Some(w)) => w.to_string(),
                        (Some((r, _)), None) => r.clone(),
                        (None, None) => "Unknown".to_string(),
                    };
                    let prev_id = prev.as_ref().map(|(id, _)| id.clone()).unwrap_or_default();
                    out.push(Restart {
                        container: st.name.clone(),
                        reason,
                        restart_count: st.restarts,
                        exit_code: terminated.map(|(_, c)| *c),
                        previous_container_id: prev_id,
                        container_id: st.id.clone(),
                    });
                }
            }
            let id = match (&prev, st.id.is_empty()) {
                (Some((old, _)), true) => old.clone(),
                _ => st.id.clone(),
            };
            last.insert(st.name.clone(), (id, st.restarts));
        }
        if pod_reason == Some("Evicted") {
            let first = states.first().map(|s| s.name.clone()).unwrap_or_default();
            if self.published.insert((uid.to_string(), String::new(), -1)) && !seed {
                out.push(Restart {
                    container: first,
                    reason: "Evicted".into(),
                    restart_count: states.first().map_or(0, |s| s.restarts),
                    exit_code: None,
                    previous_container_id: String::new(),
                    container_id: String::new(),
                });
            }
        }
        out
    }

    /// Forgets a pod that is gone.
    pub fn forget(&mut self, uid: &str) {
        self.last.remove(uid);
        self.published.retain(|(u, _, _)| u != uid);
    }
}

/// Counts of Warning events already counted, by event uid.
#[derive(Debug, Default)]
pub struct EventCounter {
    counted: HashMap<String, i32>,
}

impl EventCounter {
    /// How many new occurrences an event object with `count` brings (0 when seeding).
    pub fn observe(&mut self, uid: &str, count: i32, seed: bool) -> i32 {
        let count = count.max(1);
        let prev = self.counted.insert(uid.to_string(), count);
        if seed {
            return 0;
        }
        match prev {
            Some(p) => (count - p).max(0),
            None => count,
        }
    }

    pub fn forget(&mut self, uid: &str) {
        self.counted.remove(uid);
    }
}

/// Desired replica counts, to tell a change from a resync.
#[derive(Debug, Default)]
pub struct ScaleTracker {
    desired: HashMap<(String, String, String), i32>,
}

impl ScaleTracker {
    /// `Some(previous)` when the desired count of (namespace, kind, name) changed; records it.
    pub fn observe(
        &mut self,
        key: (String, String, String),
        desired: i32,
        seed: bool,
    ) -> Option<i32> {
        let prev = self.desired.insert(key, desired);
        match prev {
            Some(p) if p != desired && !seed => Some(p),
            _ => None,
        }
    }

    pub fn forget(&mut self, key: &(String, String, String)) {
        self.desired.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(id: &str, restarts: i32, waiting: Option<&str>, last: Option<&str>) -> ContainerState {
        ContainerState {
            name: "app".into(),
            id: id.into(),
            restarts,
            waiting: waiting.map(Into::into),
            last_terminated: last.map(|r| (r.to_string(), 137)),
        }
    }

    #[test]
    fn a_restart_is_published_once() {
        let mut t = RestartTracker::default();
        assert!(t
            .observe("u", &[st("a", 0, None, None)], None, true)
            .is_empty());
        let r = t.observe("u", &[st("b", 1, None, Some("OOMKilled"))], None, false);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (
                r[0].reason.as_str(),
                r[0].restart_count,
                r[0].previous_container_id.as_str(),
                r[0].container_id.as_str()
            ),
            ("OOMKilled", 1, "a", "b")
        );
        // The same status again (a resync or relist): nothing.
        assert!(t
            .observe("u", &[st("b", 1, None, Some("OOMKilled"))], None, false)
            .is_empty());
        // Crash loop: waiting with the count up, then running again with the same count.
        let r = t.observe(
            "u",
            &[st("", 2, Some("CrashLoopBackOff"), Some("Error"))],
            None,
            false,
        );
        assert_eq!(r[0].reason, "CrashLoopBackOff");
        assert!(t
            .observe("u", &[st("c", 2, None, Some("Error"))], None, false)
            .is_empty());
        // A plain error exit.
        let r = t.observe("u", &[st("d", 3, None, Some("Error"))], None, false);
        assert_eq!((r[0].reason.as_str(), r[0].exit_code), ("Error", Some(137)));
    }

    #[test]
    fn image_pull_failures_and_evictions() {
        let mut t = RestartTracker::default();
        let r = t.observe("u", &[st("", 0, Some("ErrImagePull"), None)], None, false);
        assert_eq!(r[0].reason, "ErrImagePull");
        assert!(t
            .observe(
                "u",
                &[st("", 0, Some("ImagePullBackOff"), None)],
                None,
                false
            )
            .is_empty());
        let r = t.observe(
            "u",
            &[st("", 0, Some("ImagePullBackOff"), None)],
            Some("Evicted"),
            false,
        );
        assert_eq!(r[0].reason, "Evicted");
        assert!(t.observe("u", &[], Some("Evicted"), false).is_empty());
        // Seeding publishes nothing and remembers.
        let mut t = RestartTracker::default();
        assert!(t
            .observe(
                "v",
                &[st("", 4, Some("CrashLoopBackOff"), None)],
                None,
                true
            )
            .is_empty());
        assert!(t
            .observe(
                "v",
                &[st("", 4, Some("CrashLoopBackOff"), None)],
                None,
                false
            )
            .is_empty());
    }

    #[test]
    fn event_counts_add_the_difference() {
        let mut c = EventCounter::default();
        assert_eq!(c.observe("e", 1, false), 1);
        assert_eq!(c.observe("e", 1, false), 0);
        assert_eq!(c.observe("e", 3, false), 2);
        assert_eq!(c.observe("f", 5, true), 0);
        assert_eq!(c.observe("f", 6, false), 1);
    }

    #[test]
    fn scale_changes() {
        let mut s = ScaleTracker::default();
        let k = (
            "ns".to_string(),
            "Deployment".to_string(),
            "web".to_string(),
        );
        assert_eq!(s.observe(k.clone(), 2, false), None);
        assert_eq!(s.observe(k.clone(), 2, false), None);
        assert_eq!(s.observe(k.clone(), 5, false), Some(2));
        assert_eq!(s.observe(k.clone(), 3, true), None);
    }
}

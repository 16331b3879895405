//! What each watched object means: pods and owners into the store, container restarts,
//! Warning events and replica changes into lifecycle events. A relist (`Init` … `InitDone`)
//! deletes what it no longer lists.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, RwLock},
    time::SystemTime,
};

use k8s_openapi::{
    api::{
        apps::v1::ReplicaSet,
        batch::v1::Job,
        core::v1::{Event as KubeEvent, Pod, Service},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::runtime::watcher::Event;

use super::{
    changes::{container_states, EventCounter, RestartTracker, ScaleTracker},
    status::KubeStatus,
    store::{MetaStore, PodMeta, ServiceMeta},
    KubeSettings, Msg,
};
use crate::{
    events::{EventKind, LifecycleEvent, Replicas, WorkloadKey},
    identity::Identity,
};

/// What the watchers hand to the pipeline.
#[derive(Debug, Clone)]
pub enum Output {
    Event(LifecycleEvent),
    Replicas(WorkloadKey, Replicas),
    RemoveWorkload(WorkloadKey),
}

pub type Sink = Box<dyn FnMut(Vec<Output>) + Send>;

pub struct State {
    settings: KubeSettings,
    store: Arc<RwLock<MetaStore>>,
    status: Arc<KubeStatus>,
    sink: Sink,
    restarts: RestartTracker,
    events: EventCounter,
    scale: ScaleTracker,
    gauges: HashMap<WorkloadKey, Replicas>,
    /// (namespace, HPA name) → its target.
    hpa_targets: HashMap<(String, String), WorkloadKey>,
    /// Per resource: keys present, and the keys listed by the relist under way.
    present: HashMap<&'static str, HashSet<String>>,
    listing: HashMap<&'static str, HashSet<String>>,
    /// Resources whose first list completed (before that, changes only seed the trackers).
    listed: HashSet<&'static str>,
    /// Resources whose last list or watch failed (warned once until they list again).
    failing: HashSet<&'static str>,
    out: Vec<Output>,
}

fn ns_name(m: &ObjectMeta) -> (String, String) {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

fn key_of(m: &ObjectMeta) -> String {
    let (ns, n) = ns_name(m);
    format!("{ns}/{n}")
}

fn split_key(k: &str) -> (String, String) {
    let (ns, n) = k.split_once('/').unwrap_or(("", k));
    (ns.to_string(), n.to_string())
}

fn controller(m: &ObjectMeta) -> Option<(String, String)> {
    m.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.clone(), o.name.clone()))
}

fn event(
    kind: EventKind,
    identity: Identity,
    fields: &[(&str, String)],
    message: String,
) -> LifecycleEvent {
    LifecycleEvent {
        kind,
        time: SystemTime::now(),
        identity: Arc::new(identity),
        fields: fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        message,
    }
}

impl State {
    pub fn new(
        settings: KubeSettings,
        store: Arc<RwLock<MetaStore>>,
        status: Arc<KubeStatus>,
        sink: Sink,
    ) -> Self {
        Self {
            settings,
            store,
            status,
            sink,
            restarts: RestartTracker::default(),
            events: EventCounter::default(),
            scale: ScaleTracker::default(),
            gauges: HashMap::new(),
            hpa_targets: HashMap::new(),
            present: HashMap::new(),
            listing: HashMap::new(),
            listed: HashSet::new(),
            failing: HashSet::new(),
            out: Vec::new(),
        }
    }

    fn store(&self) -> std::sync::RwLockWriteGuard<'_, MetaStore> {
        self.store.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn sweep(&mut self) {
        let keep = self.settings.keep_deleted;
        self.store().sweep(keep);
    }

    pub fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Pod(e) => self.step(
                "pods",
                e,
                |m| m.uid.clone().unwrap_or_default(),
                Self::pod,
                Self::delete_pod,
            ),
            Msg::Service(e) => {
                self.step("services", e, key_of, Self::service, Self::delete_service)
            }
            Msg::ReplicaSet(e) => self.step(
                "replicasets",
                e,
                key_of,
                Self::replicaset,
                Self::delete_replicaset,
            ),
            Msg::Job(e) => self.step("jobs", e, key_of, Self::job, Self::delete_job),
            Msg::Deployment(e) => self.step(
                "deployments",
                e,
                key_of,
                Self::deployment,
                Self::delete_deployment,
            ),
            Msg::StatefulSet(e) => self.step(
                "statefulsets",
                e,
                key_of,
                Self::statefulset,
                Self::delete_statefulset,
            ),
            Msg::DaemonSet(e) => self.step(
                "daemonsets",
                e,
                key_of,
                Self::daemonset,
                Self::delete_daemonset,
            ),
            Msg::Hpa(e) => self.step(
                "horizontalpodautoscalers",
                e,
                key_of,
                Self::hpa,
                Self::delete_hpa,
            ),
            Msg::Event(e) => self.step(
                "events",
                e,
                |m| m.uid.clone().unwrap_or_default(),
                Self::kube_event,
                Self::delete_event,
            ),
            Msg::Error(resource, e) => {
                self.status.add_error(resource);
                let gone =
                    matches!(&e, kube::runtime::watcher::Error::WatchError(s) if s.code == 410);
                if gone {
                    tracing::info!(resource, "Kubernetes watch: {e}; listing again");
                } else if self.failing.insert(resource) {
                    tracing::warn!(resource, "Kubernetes watch: {e} (retrying with backoff)");
                } else {
                    tracing::debug!(resource, "Kubernetes watch: {e} (retrying with backoff)");
                }
            }
        }
        if !self.out.is_empty() {
            (self.sink)(std::mem::take(&mut self.out));
        }
    }

    /// The watcher protocol, common to every resource: `apply(obj, seed)` for objects,
    /// `delete(key)` for deletions and for what a relist no longer lists.
    fn step<K: kube::Resource>(
        &mut self,
        resource: &'static str,
        ev: Event<K>,
        key: fn(&ObjectMeta) -> String,
        apply: fn(&mut Self, &K, bool),
        delete: fn(&mut Self, &str),
    ) {
        let seed = !self.listed.contains(resource);
        match ev {
            Event::Init => {
                self.listing.insert(resource, HashSet::new());
            }
            Event::InitApply(obj) => {
                let k = key(obj.meta());
                self.listing.entry(resource).or_default().insert(k.clone());
                self.present.entry(resource).or_default().insert(k);
                apply(self, &obj, seed);
            }
            Event::InitDone => {
                let listed = self.listing.remove(resource).unwrap_or_default();
                let gone: Vec<String> = self
                    .present
                    .get(resource)
                    .map(|p| p.difference(&listed).cloned().collect())
                    .unwrap_or_default();
                for k in &gone {
                    delete(self, k);
                }
                self.present.insert(resource, listed);
                let was_failing = self.failing.remove(resource);
                if self.listed.insert(resource) {
                    tracing::info!(resource, "Kubernetes metadata listed");
                } else if was_failing {
                    tracing::info!(resource, "Kubernetes metadata listed again");
                }
                self.status.set_synced(resource);
            }
            Event::Apply(obj) => {
                self.present
                    .entry(resource)
                    .or_default()
                    .insert(key(obj.meta()));
                apply(self, &obj, seed);
            }
            Event::Delete(obj) => {
                let k = key(obj.meta());
                if let Some(p) = self.present.get_mut(resource) {
                    p.remove(&k);
                }
                delete(self, &k);
            }
        }
    }

    fn pod(&mut self, p: &Pod, seed: bool) {
        let m = &p.metadata;
        let (namespace, name) = ns_name(m);
        let uid = m.uid.clone().unwrap_or_default();
        let spec = p.spec.as_ref();
        let node = spec.and_then(|s| s.node_name.clone()).unwrap_or_default();
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let states = container_states(p);
        let status = p.status.as_ref();
        let mut ips: Vec<IpAddr> = Vec::new();
        if !host_network {
            let listed = status.and_then(|s| s.pod_ips.as_ref());
            for ip in listed.iter().flat_map(|v| v.iter()).map(|i| i.ip.as_str()) {
                ips.extend(ip.parse::<IpAddr>().ok());
            }
            if let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()) {
                ips.extend(ip.parse::<IpAddr>().ok().filter(|i| !ips.contains(i)));
            }
        }
        let containers: BTreeMap<String, String> = states
            .iter()
            .filter(|s| !s.id.is_empty())
            .map(|s| (s.id.clone(), s.name.clone()))
            .collect();
        self.store().put_pod(PodMeta {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: uid.clone(),
            node: node.clone(),
            owner: controller(m),
            containers,
            ips,
            labels: m.labels.clone().unwrap_or_default(),
        });
        if node != self.settings.node_name {
            return;
        }
        let reason = status.and_then(|s| s.reason.as_deref());
        let restarts = self.restarts.observe(&uid, &states, reason, seed);
        for r in restarts {
            let Some(identity) = self.store().container_identity(&uid, &r.container) else {
                continue;
            };
            let mut fields = vec![
                ("reason", r.reason.clone()),
                ("restart_count", r.restart_count.to_string()),
                ("container", r.container.clone()),
                ("previous_container_id", r.previous_container_id.clone()),
                ("container_id", r.container_id.clone()),
            ];
            if let Some(c) = r.exit_code {
                fields.push(("exit_code", c.to_string()));
            }
            let msg = format!(
                "container {} of pod {namespace}/{name} restarted ({}, restart {})",
                r.container, r.reason, r.restart_count
            );
            tracing::info!("{msg}");
            self.out.push(Output::Event(event(
                EventKind::ContainerRestart,
                identity,
                &fields,
                msg,
            )));
        }
    }

    fn delete_pod(&mut self, uid: &str) {
        self.store().delete_pod(uid);
        self.restarts.forget(uid);
    }

    fn service(&mut self, s: &Service, _seed: bool) {
        let (ns, name) = ns_name(&s.metadata);
        let spec = s.spec.as_ref();
        let mut ips: Vec<IpAddr> = spec
            .and_then(|s| s.cluster_ips.clone())
            .unwrap_or_default()
            .iter()
            .filter_map(|i| i.parse().ok())
            .collect();
        if let Some(ip) = spec
            .and_then(|s| s.cluster_ip.as_deref())
            .and_then(|i| i.parse().ok())
        {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        let selector = spec.and_then(|s| s.selector.clone()).unwrap_or_default();
        self.store()
            .put_service(&ns, &name, Some(ServiceMeta { ips, selector }));
    }

    fn delete_service(&mut self, key: &str) {
        let (ns, name) = split_key(key);
        self.store().put_service(&ns, &name, None);
    }

    fn replicaset(&mut self, rs: &ReplicaSet, seed: bool) {
        let (ns, name) = ns_name(&rs.metadata);
        let deployment = controller(&rs.metadata)
            .filter(|(k, _)| k == "Deployment")
            .map(|(_, n)| n);
        let owned = deployment.is_some();
        self.store().put_rs_owner(&ns, &name, deployment);
        if owned {
            return;
        }
        let desired = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let ready = rs
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        self.workload(&ns, "ReplicaSet", &name, desired, ready, seed, true);
    }

    fn delete_replicaset(&mut self, key: &str) {
        let (ns, name) = split_key(key);
        self.store().put_rs_owner(&ns, &name, None);
        self.delete_workload(&ns, "ReplicaSet", &name);
    }

    fn job(&mut self, j: &Job, _seed: bool) {
        let (ns, name) = ns_name(&j.metadata);
        let cron = controller(&j.metadata)
            .filter(|(k, _)| k == "CronJob")
            .map(|(_, n)| n);
        self.store().put_job_owner(&ns, &name, cron);
    }

    fn delete_job(&mut self, key: &str) {
        let (ns, name) = split_key(key);
        self.store().put_job_owner(&ns, &name, None);
    }

    fn kube_event(&mut self, e: &KubeEvent, seed: bool) {
        let uid = e.metadata.uid.clone().unwrap_or_default();
        let count = e
            .series
            .as_ref()
            .and_then(|s| s.count)
            .or(e.count)
            .unwrap_or(1);
        let delta = self.events.observe(&uid, count, seed);
        if delta == 0 || e.type_.as_deref() != Some("Warning") {
            return;
        }
        let obj = &e.involved_object;
        if obj.kind.as_deref() != Some("Pod") {
            return;
        }
        let pod_uid = obj.uid.clone().unwrap_or_default();
        // `spec.containers{name}` names the container the event is about.
        let container = obj
            .field_path
            .as_deref()
            .and_then(|f| f.split_once('{'))
            .map(|(_, c)| c.trim_end_matches('}').to_string())
            .unwrap_or_default();
        let identity = {
            let store = self.store.read().unwrap_or_else(|e| e.into_inner());
            let local = store
                .pod(&pod_uid)
                .is_some_and(|p| p.node == self.settings.node_name);
            if !local {
                return;
            }
            store.container_identity(&pod_uid, &container)
        };
        let Some(identity) = identity else { return };
        let reason = e.reason.clone().unwrap_or_default();
        let object = format!("Pod/{}", obj.name.clone().unwrap_or_default());
        let fields = [
            ("type", "Warning".to_string()),
            ("reason", reason),
            ("object", object),
            ("count", count.to_string()),
        ];
        let message = e.message.clone().unwrap_or_default();
        // One publication per occurrence: the counters add one each.
        for _ in 0..delta {
            self.out.push(Output::Event(event(
                EventKind::KubernetesEvent,
                identity.clone(),
                &fields,
                message.clone(),
            )));
        }
    }

    fn delete_event(&mut self, uid: &str) {
        self.events.forget(uid);
    }
}

#[cfg(test)]
mod tests;
mod workloads;

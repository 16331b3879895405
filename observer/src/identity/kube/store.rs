//! What the watchers learned, in the shape the resolver asks for: pods by UID (with their
//! container ids → names and their workload through the owner chain), the owners of
//! ReplicaSets and Jobs, and Service ClusterIPs. Every change that can alter an identity bumps
//! `generation`, so the resolver knows when to look again.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::identity::{runtime::CgroupKind, Identity};

/// What a pod contributes to identities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    /// Direct controller owner (kind, name), if any.
    pub owner: Option<(String, String)>,
    /// Container id (64 hex, runtime prefix stripped) → container name, from the statuses
    /// (previous ids are kept: a restarted container's old cgroup keeps its name).
    pub containers: BTreeMap<String, String>,
    /// Pod IPs (not for host-network pods, whose IP is the node's).
    pub ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
}

/// A Service: its ClusterIPs and selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceMeta {
    pub ips: Vec<IpAddr>,
    pub selector: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
pub struct MetaStore {
    /// Bumped by every change that may alter an identity or a peer name.
    pub generation: u64,
    pods: HashMap<String, (PodMeta, Option<Instant>)>,
    /// (namespace, ReplicaSet) → Deployment.
    rs_owner: HashMap<(String, String), String>,
    /// (namespace, Job) → CronJob.
    job_owner: HashMap<(String, String), String>,
    /// (namespace, name) → Service.
    services: HashMap<(String, String), ServiceMeta>,
}

/// `containerd://<id>` → `<id>`.
pub fn strip_runtime(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, i)| i)
}

impl MetaStore {
    pub fn pod(&self, uid: &str) -> Option<&PodMeta> {
        self.pods.get(uid).map(|(p, _)| p)
    }

    /// Adds or updates a pod (a deleted pod that comes back is live again).
    pub fn put_pod(&mut self, mut p: PodMeta) {
        if let Some((old, _)) = self.pods.get(&p.uid) {
            // Keep the names of earlier container ids (the old cgroup may still be aggregated).
            for (id, name) in &old.containers {
                p.containers
                    .entry(id.clone())
                    .or_insert_with(|| name.clone());
            }
            if *old == p && self.pods[&p.uid].1.is_none() {
                return;
            }
        }
        self.pods.insert(p.uid.clone(), (p, None));
        self.generation += 1;
    }

    /// A pod was deleted: kept (its series keep their names) until [`MetaStore::sweep`].
    pub fn delete_pod(&mut self, uid: &str) {
        if let Some((_, gone)) = self.pods.get_mut(uid) {
            if gone.is_none() {
                *gone = Some(Instant::now());
                self.generation += 1;
            }
        }
    }

    /// UIDs of pods that are not deleted.
    pub fn live_pods(&self) -> Vec<String> {
        self.pods
            .iter()
            .filter(|(_, (_, g))| g.is_none())
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// Forgets pods deleted longer than `keep` ago.
    pub fn sweep(&mut self, keep: Duration) {
        let before = self.pods.len();
        self.pods
            .retain(|_, (_, g)| g.is_none_or(|t| t.elapsed() < keep));
        if self.pods.len() != before {
            self.generation += 1;
        }
    }

    pub fn put_rs_owner(&mut self, ns: &str, rs: &str, deployment: Option<String>) {
        let key = (ns.to_string(), rs.to_string());
        let changed = match deployment {
            Some(d) => self.rs_owner.insert(key, d.clone()).as_ref() != Some(&d),
            None => self.rs_owner.remove(&key).is_some(),
        };
        if changed {
            self.generation += 1;
        }
    }

    pub fn put_job_owner(&mut self, ns: &str, job: &str, cronjob: Option<String>) {
        let key = (ns.to_string(), job.to_string());
        let changed = match cronjob {
            Some(c) => self.job_owner.insert(key, c.clone()).as_ref() != Some(&c),
            None => self.job_owner.remove(&key).is_some(),
        };
        if changed {
            self.generation += 1;
        }
    }

    pub fn put_service(&mut self, ns: &str, name: &str, s: Option<ServiceMeta>) {
        let key = (ns.to_string(), name.to_string());
        let changed = match s {
            Some(s) => self.services.insert(key, s.clone()).as_ref() != Some(&s),
            None => self.services.remove(&key).is_some(),
        };
        if changed {
            self.generation += 1;
        }
    }

    /// The workload of a pod: ReplicaSet → Deployment, Job → CronJob, StatefulSet, DaemonSet
    /// (or any other controller) by name; a bare pod is its own workload.
    pub fn workload(&self, p: &PodMeta) -> String {
        match &p.owner {
            Some((kind, name)) if kind == "ReplicaSet" => self
                .rs_owner
                .get(&(p.namespace.clone(), name.clone()))
                .cloned()
                .unwrap_or_else(|| name.clone()),
            Some((kind, name)) if kind == "Job" => self
                .job_owner
                .get(&(p.namespace.clone(), name.clone()))
                .cloned()
                .unwrap_or_else(|| name.clone()),
            Some((_, name)) => name.clone(),
            None => p.name.clone(),
        }
    }

    /// The identity of container `container` (a name) of pod `uid`.
    pub fn container_identity(&self, uid: &str, container: &str) -> Option<Identity> {
        let p = self.pod(uid)?;
        Some(Identity {
            k8s_namespace_name: p.namespace.clone(),
            k8s_pod_name: p.name.clone(),
            k8s_pod_uid: p.uid.clone(),
            k8s_container_name: container.to_string(),
            service_name: self.workload(p),
        })
    }

    /// The identity of a pod's cgroup, when the pod is known. A container id the statuses do
    /// not name (the sandbox's pause container) gets an empty container name.
    pub fn identity(&self, kind: &CgroupKind) -> Option<Identity> {
        let (uid, cid) = match kind {
            CgroupKind::Container {
                pod_uid,
                container_id,
                ..
            } => (pod_uid, container_id.as_deref()),
            CgroupKind::Pod { pod_uid, .. } => (pod_uid, None),
            _ => return None,
        };
        let p = self.pod(uid)?;
        let name = cid
            .and_then(|c| p.containers.get(c))
            .cloned()
            .unwrap_or_default();
        self.container_identity(uid, &name)
    }

    /// Cluster-wide addresses: pod IPs (any node) and Service ClusterIPs, each named after its
    /// workload. A Service is named after the workload of the pods its selector picks when they
    /// all belong to one, after itself otherwise.
    pub fn peers(&self) -> HashMap<IpAddr, Arc<Identity>> {
        let mut out = HashMap::new();
        for (p, gone) in self.pods.values() {
            if gone.is_some() {
                continue;
            }
            let id = Arc::new(Identity {
                k8s_namespace_name: p.namespace.clone(),
                k8s_pod_name: p.name.clone(),
                k8s_pod_uid: p.uid.clone(),
                k8s_container_name: String::new(),
                service_name: self.workload(p),
            });
            for ip in &p.ips {
                out.insert(*ip, id.clone());
            }
        }
        // Selectors only pick pods of their own namespace.
        let mut by_ns: HashMap<&str, Vec<&PodMeta>> = HashMap::new();
        for (p, gone) in self.pods.values() {
            if gone.is_none() {
                by_ns.entry(p.namespace.as_str()).or_default().push(p);
            }
        }
        for ((ns, name), s) in &self.services {
            let mut workloads: Vec<String> = if s.selector.is_empty() {
                Vec::new()
            } else {
                by_ns
                    .get(ns.as_str())
                    .into_iter()
                    .flatten()
                    .filter(|p| s.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
                    .map(|p| self.workload(p))
                    .collect()
            };
            workloads.sort();
            workloads.dedup();
            let service_name = match workloads.as_slice() {
                [one] => one.clone(),
                _ => name.clone(),
            };
            let id = Arc::new(Identity {
                k8s_namespace_name: ns.clone(),
                service_name,
                ..Default::default()
            });
            for ip in &s.ips {
                out.insert(*ip, id.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::runtime::parse_cgroup_path;

    const UID: &str = "0f3c1e2a-5b6d-4e7f-8a9b-0c1d2e3f4a5b";
    const CID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa99887766554433221100";

    fn pod(owner: Option<(&str, &str)>) -> PodMeta {
        PodMeta {
            namespace: "shop".into(),
            name: "web-7d9f-abcde".into(),
            uid: UID.into(),
            node: "n1".into(),
            owner: owner.map(|(k, n)| (k.into(), n.into())),
            containers: [(CID.to_string(), "nginx".to_string())].into(),
            ips: vec!["10.1.2.3".parse().unwrap()],
            labels: [("app".to_string(), "web".to_string())].into(),
        }
    }

    #[test]
    fn owner_chain_and_identity() {
        let mut s = MetaStore::default();
        s.put_pod(pod(Some(("ReplicaSet", "web-7d9f"))));
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope",
            UID.replace('-', "_")
        );
        let kind = parse_cgroup_path(&path);
        assert_eq!(s.identity(&kind).unwrap().service_name, "web-7d9f");
        let g = s.generation;
        s.put_rs_owner("shop", "web-7d9f", Some("web".into()));
        assert!(s.generation > g);
        let id = s.identity(&kind).unwrap();
        assert_eq!(
            (
                id.k8s_namespace_name.as_str(),
                id.k8s_pod_name.as_str(),
                id.k8s_container_name.as_str(),
                id.service_name.as_str()
            ),
            ("shop", "web-7d9f-abcde", "nginx", "web")
        );
        let mut p = pod(Some(("Job", "backup-2901")));
        p.uid = "u2".into();
        s.put_pod(p);
        s.put_job_owner("shop", "backup-2901", Some("backup".into()));
        assert_eq!(
            s.container_identity("u2", "c").unwrap().service_name,
            "backup"
        );
        let mut bare = pod(None);
        bare.uid = "u3".into();
        bare.name = "debug".into();
        s.put_pod(bare);
        assert_eq!(
            s.container_identity("u3", "c").unwrap().service_name,
            "debug"
        );
    }

    #[test]
    fn deleted_pods_keep_names_until_swept() {
        let mut s = MetaStore::default();
        s.put_pod(pod(Some(("StatefulSet", "db"))));
        s.delete_pod(UID);
        assert_eq!(s.container_identity(UID, "x").unwrap().service_name, "db");
        assert!(s.peers().is_empty());
        s.sweep(Duration::from_secs(60));
        assert!(s.pod(UID).is_some());
        s.sweep(Duration::ZERO);
        assert!(s.pod(UID).is_none());
    }

    #[test]
    fn peers_name_pods_and_services_by_workload() {
        let mut s = MetaStore::default();
        s.put_pod(pod(Some(("StatefulSet", "db"))));
        s.put_service(
            "shop",
            "db-svc",
            Some(ServiceMeta {
                ips: vec!["10.96.0.10".parse().unwrap()],
                selector: [("app".to_string(), "web".to_string())].into(),
            }),
        );
        s.put_service(
            "shop",
            "empty",
            Some(ServiceMeta {
                ips: vec!["10.96.0.11".parse().unwrap()],
                selector: BTreeMap::new(),
            }),
        );
        let p = s.peers();
        assert_eq!(p[&"10.1.2.3".parse::<IpAddr>().unwrap()].service_name, "db");
        assert_eq!(
            p[&"10.96.0.10".parse::<IpAddr>().unwrap()].service_name,
            "db"
        );
        assert_eq!(
            p[&"10.96.0.11".parse::<IpAddr>().unwrap()].service_name,
            "empty"
        );
    }
}

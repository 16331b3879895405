//! Who a cgroup is: cgroup id → cgroup path → container / pod / host unit → identity labels.
//! The pipeline asks; identity never calls into the pipeline.

pub mod cgroup;
pub mod kube;
pub mod libpod;
pub mod netns;
pub mod runtime;

/// The identity labels on every per-workload series. Fixed now so that later sources
/// (Kubernetes metadata) fill them without changing the schema. The container id is not a
/// label: it changes at every restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub k8s_namespace_name: String,
    pub k8s_pod_name: String,
    pub k8s_pod_uid: String,
    pub k8s_container_name: String,
    pub service_name: String,
}

impl Identity {
    /// The label pairs, in schema order.
    pub fn labels(&self) -> [(&'static str, &str); 5] {
        [
            ("k8s_namespace_name", &self.k8s_namespace_name),
            ("k8s_pod_name", &self.k8s_pod_name),
            ("k8s_pod_uid", &self.k8s_pod_uid),
            ("k8s_container_name", &self.k8s_container_name),
            ("service_name", &self.service_name),
        ]
    }

    /// Identity derived from the cgroup path alone. `process_name` names the workload of a
    /// pod's container (until Kubernetes metadata gives the workload name).
    pub fn from_kind(kind: &runtime::CgroupKind, process_name: Option<&str>) -> Self {
        use runtime::CgroupKind;
        match kind {
            CgroupKind::Container { pod_uid, .. } | CgroupKind::Pod { pod_uid, .. } => Identity {
                k8s_pod_uid: pod_uid.clone(),
                service_name: process_name.unwrap_or_default().to_string(),
                ..Default::default()
            },
            CgroupKind::Libpod { container_id, .. } => Identity {
                service_name: container_id[..container_id.len().min(12)].to_string(),
                ..Default::default()
            },
            CgroupKind::SystemdUnit { unit } => Identity {
                service_name: unit.clone(),
                ..Default::default()
            },
            CgroupKind::Other { path } => Identity {
                service_name: path.clone(),
                ..Default::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_from_paths() {
        let pod = runtime::parse_cgroup_path(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f3c1e2a_5b6d_4e7f_8a9b_0c1d2e3f4a5b.slice/cri-containerd-3f4e5d6c7b8a99887766554433221100ffeeddccbbaa99887766554433221100.scope",
        );
        let id = Identity::from_kind(&pod, Some("nginx"));
        assert_eq!(id.k8s_pod_uid, "0f3c1e2a-5b6d-4e7f-8a9b-0c1d2e3f4a5b");
        assert_eq!(id.service_name, "nginx");
        assert_eq!(id.k8s_pod_name, "");
        let unit = Identity::from_kind(
            &runtime::parse_cgroup_path("/system.slice/nginx.service"),
            None,
        );
        assert_eq!(unit.service_name, "nginx.service");
        assert_eq!(unit.k8s_pod_uid, "");
        let root = Identity::from_kind(&runtime::parse_cgroup_path("/"), Some("init"));
        assert_eq!(root.service_name, "/");
    }
}

//! Workloads and HPAs: the replica gauges and scale events.

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    autoscaling::v2::HorizontalPodAutoscaler,
};

use super::{event, ns_name, split_key, Output, State};
use crate::{
    events::{EventKind, WorkloadKey},
    identity::Identity,
};

impl State {
    pub(super) fn deployment(&mut self, d: &Deployment, seed: bool) {
        let (ns, name) = ns_name(&d.metadata);
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let ready = d
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        self.workload(&ns, "Deployment", &name, desired, ready, seed, true);
    }

    pub(super) fn delete_deployment(&mut self, key: &str) {
        let (ns, name) = split_key(key);
        self.delete_workload(&ns, "Deployment", &name);
    }

    pub(super) fn statefulset(&mut self, s: &StatefulSet, seed: bool) {
        let (ns, name) = ns_name(&s.metadata);
        let desired = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let ready = s
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        self.workload(&ns, "StatefulSet", &name, desired, ready, seed, true);
    }

    pub(super) fn delete_statefulset(&mut self, key: &str) {
        let (ns, name) = split_key(key);
        self.delete_workload(&ns, "StatefulSet", &name);
    }

    pub(super) fn daemonset(&mut self, d: &DaemonSet, seed: bool) {
        let (ns, name) = ns_name(&d.metadata);
        let st = d.status.as_ref();
        let desired = st.map_or(0, |s| s.desired_number_scheduled);
        let ready = st.map_or(0, |s| s.number_ready);
        // A DaemonSet's desired count follows the nodes, not a decision: a gauge, no event.
        self.workload(&ns, "DaemonSet", &name, desired, ready, seed, false);
    }

    pub(super) fn delete_daemonset(&mut self, key: &str) {
        let (ns, name) = split_key(key);
        self.delete_workload(&ns, "DaemonSet", &name);
    }

    /// Updates a workload's gauge; publishes a scale event when its desired count changed.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call per workload kind, all positional"
    )]
    pub(super) fn workload(
        &mut self,
        ns: &str,
        kind: &str,
        name: &str,
        desired: i32,
        ready: i32,
        seed: bool,
        scale: bool,
    ) {
        let key = WorkloadKey {
            namespace: ns.into(),
            kind: kind.into(),
            name: name.into(),
        };
        let g = self.gauges.entry(key.clone()).or_default();
        let before = *g;
        g.desired = desired.into();
        g.ready = ready.into();
        let now = *g;
        if now != before {
            self.out.push(Output::Replicas(key.clone(), now));
        }
        let changed = self
            .scale
            .observe((ns.into(), kind.into(), name.into()), desired, seed);
        if let (Some(from), true) = (changed, scale) {
            self.scale_event(ns, kind, name, from, desired, "spec");
        }
    }

    fn scale_event(&mut self, ns: &str, kind: &str, name: &str, from: i32, to: i32, source: &str) {
        let identity = Identity {
            k8s_namespace_name: ns.into(),
            service_name: name.into(),
            ..Default::default()
        };
        let fields = [
            ("kind", kind.to_string()),
            ("workload", name.to_string()),
            ("from", from.to_string()),
            ("to", to.to_string()),
            ("source", source.to_string()),
        ];
        let dir = if to > from { "up" } else { "down" };
        let msg = format!("{kind} {ns}/{name} scaled {dir} from {from} to {to} ({source})");
        tracing::info!("{msg}");
        self.out.push(Output::Event(event(
            EventKind::WorkloadScale,
            identity,
            &fields,
            msg,
        )));
    }

    pub(super) fn delete_workload(&mut self, ns: &str, kind: &str, name: &str) {
        let key = WorkloadKey {
            namespace: ns.into(),
            kind: kind.into(),
            name: name.into(),
        };
        self.scale.forget(&(ns.into(), kind.into(), name.into()));
        if self.gauges.remove(&key).is_some() {
            self.out.push(Output::RemoveWorkload(key));
        }
    }

    pub(super) fn hpa(&mut self, h: &HorizontalPodAutoscaler, seed: bool) {
        let (ns, name) = ns_name(&h.metadata);
        let Some(target) = h.spec.as_ref().map(|s| &s.scale_target_ref) else {
            return;
        };
        let desired = h.status.as_ref().map_or(0, |s| s.desired_replicas);
        let key = WorkloadKey {
            namespace: ns.clone(),
            kind: target.kind.clone(),
            name: target.name.clone(),
        };
        self.hpa_targets
            .insert((ns.clone(), name.clone()), key.clone());
        let g = self.gauges.entry(key.clone()).or_default();
        if g.hpa_desired != Some(desired.into()) {
            g.hpa_desired = Some(desired.into());
            let now = *g;
            self.out.push(Output::Replicas(key, now));
        }
        let changed = self.scale.observe(
            (ns.clone(), "HorizontalPodAutoscaler".into(), name),
            desired,
            seed,
        );
        if let Some(from) = changed {
            let (kind, workload) = (target.kind.clone(), target.name.clone());
            self.scale_event(&ns, &kind, &workload, from, desired, "hpa");
        }
    }

    pub(super) fn delete_hpa(&mut self, key: &str) {
        let (ns, name) = split_key(key);
        self.scale
            .forget(&(ns.clone(), "HorizontalPodAutoscaler".into(), name.clone()));
        if let Some(target) = self.hpa_targets.remove(&(ns, name)) {
            if let Some(g) = self.gauges.get_mut(&target) {
                g.hpa_desired = None;
                let now = *g;
                self.out.push(Output::Replicas(target, now));
            }
        }
    }
}

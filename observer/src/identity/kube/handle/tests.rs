use std::sync::Mutex;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::runtime::watcher::Event;

use super::*;

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"replicas": replicas, "selector": {}, "template": {}},
    }))
    .unwrap()
}

fn pod(uid: &str, node: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("p-{uid}"), "namespace": "ns", "uid": uid},
        "spec": {"nodeName": node, "containers": []},
        "status": {"podIP": "10.0.0.7"},
    }))
    .unwrap()
}

type Collected = Arc<Mutex<Vec<Output>>>;

fn state() -> (State, Collected, Arc<RwLock<MetaStore>>) {
    let got: Arc<Mutex<Vec<Output>>> = Arc::default();
    let sink = got.clone();
    let store = Arc::new(RwLock::new(MetaStore::default()));
    let settings = KubeSettings {
        kubeconfig: None,
        node_name: "n1".into(),
        keep_deleted: std::time::Duration::from_secs(60),
    };
    let s = State::new(
        settings,
        store.clone(),
        KubeStatus::new(),
        Box::new(move |o| sink.lock().unwrap().extend(o)),
    );
    (s, got, store)
}

fn summary(got: &Mutex<Vec<Output>>) -> Vec<String> {
    got.lock()
        .unwrap()
        .drain(..)
        .map(|o| match o {
            Output::Event(e) => format!("event {:?} {:?}", e.kind, e.fields),
            Output::Replicas(k, r) => format!("replicas {} {} {}", k.name, r.desired, r.ready),
            Output::RemoveWorkload(k) => format!("remove {}", k.name),
        })
        .collect()
}

#[test]
fn first_list_seeds_changes_publish_relists_delete_what_is_gone() {
    let (mut s, got, _) = state();
    s.handle(Msg::Deployment(Event::Init));
    s.handle(Msg::Deployment(Event::InitApply(deployment("web", 2))));
    s.handle(Msg::Deployment(Event::InitDone));
    assert_eq!(summary(&got), ["replicas web 2 0"]);
    s.handle(Msg::Deployment(Event::Apply(deployment("web", 5))));
    let out = summary(&got);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0], "replicas web 5 0");
    assert!(
        out[1].contains("WorkloadScale") && out[1].contains("\"from\": \"2\""),
        "{out:?}"
    );
    // The same object again (a resync): nothing.
    s.handle(Msg::Deployment(Event::Apply(deployment("web", 5))));
    assert!(summary(&got).is_empty());
    // A relist that no longer has it (deleted while the watch was down): gone.
    s.handle(Msg::Deployment(Event::Init));
    s.handle(Msg::Deployment(Event::InitApply(deployment("api", 1))));
    s.handle(Msg::Deployment(Event::InitDone));
    assert_eq!(summary(&got), ["replicas api 1 0", "remove web"]);
}

#[test]
fn pods_deleted_during_an_outage_are_marked_deleted_by_the_relist() {
    let (mut s, _, store) = state();
    s.handle(Msg::Pod(Event::Init));
    s.handle(Msg::Pod(Event::InitApply(pod("a", "n1"))));
    s.handle(Msg::Pod(Event::InitApply(pod("b", "n2"))));
    s.handle(Msg::Pod(Event::InitDone));
    assert_eq!(
        store.read().unwrap().peers().len(),
        1,
        "one IP, two pods: the last wins"
    );
    s.handle(Msg::Pod(Event::Init));
    s.handle(Msg::Pod(Event::InitApply(pod("b", "n2"))));
    s.handle(Msg::Pod(Event::InitDone));
    let st = store.read().unwrap();
    assert_eq!(st.live_pods(), ["b"]);
    // Deleted, but still named (its last series keep their names).
    assert_eq!(st.container_identity("a", "c").unwrap().k8s_pod_name, "p-a");
}

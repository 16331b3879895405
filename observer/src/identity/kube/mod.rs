//! Kubernetes metadata (kube-rs): one watcher per resource, merged into one task that keeps
//! the [`store::MetaStore`] the resolver asks, and turns changes into lifecycle events.
//!
//! Pods are watched cluster-wide, once: the node's own pods (`spec.nodeName`, compared here)
//! give the identities, every pod's IP names topology peers on other nodes. A second,
//! node-scoped pod watch would list and stream the node's pods a second time for nothing.
//! Watchers back off on errors (`default_backoff`) and relist on `410 Gone`; the observer
//! never waits for them: labels fill in when the API answers, `/readyz` and
//! `observer_kubernetes_metadata_synced` say when they are not there yet.

pub mod changes;
mod handle;
pub mod status;
pub mod store;

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use futures::{stream::BoxStream, StreamExt};
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
    autoscaling::v2::HorizontalPodAutoscaler,
    batch::v1::Job,
    core::v1::{Event as KubeEvent, Pod, Service},
};
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Client, Resource,
};
use serde::de::DeserializeOwned;

pub use self::handle::{Output, Sink};
use self::{status::KubeStatus, store::MetaStore};
use crate::{error::StartError, shutdown::Shutdown};

/// Where the API is and which node this is.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// None: the in-cluster configuration (service account token, KUBERNETES_SERVICE_HOST).
    pub kubeconfig: Option<PathBuf>,
    pub node_name: String,
    /// How long a deleted pod's names are kept (the cgroup grace period, and a margin).
    pub keep_deleted: Duration,
}

/// Builds the API client (no request is made: an unreachable API is not an error here).
pub async fn client(s: &KubeSettings) -> Result<Client, StartError> {
    let config = match &s.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| StartError::Config(format!("kubeconfig {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| StartError::Config(format!("kubeconfig {}: {e}", path.display())))?
        }
        None => kube::Config::incluster()
            .map_err(|e| StartError::Config(format!("in-cluster Kubernetes configuration: {e}")))?,
    };
    Client::try_from(config).map_err(|e| StartError::Config(format!("Kubernetes client: {e}")))
}

/// One watcher's item, tagged with its resource.
enum Msg {
    Pod(watcher::Event<Pod>),
    Service(watcher::Event<Service>),
    ReplicaSet(watcher::Event<ReplicaSet>),
    Job(watcher::Event<Job>),
    Deployment(watcher::Event<Deployment>),
    StatefulSet(watcher::Event<StatefulSet>),
    DaemonSet(watcher::Event<DaemonSet>),
    Hpa(watcher::Event<HorizontalPodAutoscaler>),
    Event(watcher::Event<KubeEvent>),
    /// A list or watch failed (retried with backoff).
    Error(&'static str, watcher::Error),
}

fn watch<K>(
    client: &Client,
    resource: &'static str,
    cfg: watcher::Config,
    wrap: fn(watcher::Event<K>) -> Msg,
) -> BoxStream<'static, Msg>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    watcher(api, cfg)
        .default_backoff()
        .map(move |r| match r {
            Ok(ev) => wrap(ev),
            Err(e) => Msg::Error(resource, e),
        })
        .boxed()
}

/// Watches until shutdown; `sink` receives lifecycle events and replica gauges.
pub async fn run(
    client: Client,
    settings: KubeSettings,
    store: Arc<RwLock<MetaStore>>,
    status: Arc<KubeStatus>,
    sink: Sink,
    shutdown: Shutdown,
) {
    let c = &client;
    let any = watcher::Config::default;
    let streams = vec![
        watch(c, "pods", any(), Msg::Pod),
        watch(c, "services", any(), Msg::Service),
        watch(c, "replicasets", any(), Msg::ReplicaSet),
        watch(c, "jobs", any(), Msg::Job),
        watch(c, "deployments", any(), Msg::Deployment),
        watch(c, "statefulsets", any(), Msg::StatefulSet),
        watch(c, "daemonsets", any(), Msg::DaemonSet),
        watch(c, "horizontalpodautoscalers", any(), Msg::Hpa),
        watch(c, "events", any().fields("type=Warning"), Msg::Event),
    ];
    let mut all = futures::stream::select_all(streams);
    let mut state = handle::State::new(settings, store, status, sink);
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            msg = all.next() => {
                let Some(msg) = msg else { return };
                state.handle(msg);
            }
            _ = sweep.tick() => state.sweep(),
            _ = shutdown.clone().wait() => return,
        }
    }
}

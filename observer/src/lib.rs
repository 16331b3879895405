//! The observer: eBPF programs (`ebpf`) → L7 protocols (`l7`) → aggregation per identity
//! (`pipeline`, asking `identity`) → exporters (`export`), all reading one snapshot.

pub mod config;
pub mod ebpf;
pub mod error;
pub mod events;
pub mod export;
pub mod identity;
pub mod l7;
pub mod model;
pub mod pipeline;
pub mod shutdown;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::registry::Registry;

use crate::{
    config::Config,
    error::StartError,
    export::{metrics::ObserverCollector, snapshot::Snapshots},
    identity::cgroup::{CgroupFs, Resolver},
    pipeline::{
        aggregate::{KernelMaps, Pipeline},
        capture::{Dispatch, KernelConns, L7Reader, DRAIN_INTERVAL},
        requests::{RequestAgg, RequestSettings},
    },
};

/// How often the cgroup hierarchy is walked for new and deleted cgroups.
const GC_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the observer until SIGTERM/SIGINT.
pub async fn run(cfg: Config) -> Result<(), StartError> {
    // Raised first (it may succeed without CAP_SYS_RESOURCE, under a generous hard limit), so
    // that the check sees the limit the maps will meet.
    ebpf::privileges::raise_memlock();
    ebpf::privileges::check(cfg.tls)?;
    let cgroups = CgroupFs::discover()?;
    tracing::info!(mount = %cgroups.root().display(), "cgroup v2 hierarchy");
    let listener = export::admin::bind(cfg.metrics_addr).await?;
    let grpc_listener = export::grpc::bind(cfg.grpc_addr).await?;

    let load_cfg = cfg.clone();
    let load_cgroups = cgroups.clone();
    let mut loaded = tokio::task::spawn_blocking(move || {
        ebpf::load::load(&load_cfg, &load_cgroups, ebpf::EBPF_OBJECT)
    })
    .await
    .map_err(|e| StartError::NoProbe(format!("loader panicked: {e}")))??;

    let logger = match aya_log::EbpfLogger::init(&mut loaded.ebpf) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::debug!("no kernel-side log: {e}");
            None
        }
    };
    let maps = KernelMaps::take(
        &mut loaded.ebpf,
        cfg.syscall_table_size,
        cfg.conn_table_size,
    );
    let l7_ring = loaded.ebpf.take_map("L7_EVENTS");
    let l7_conns = loaded.ebpf.take_map("L7_CONNS");
    let lifecycle_ring = loaded.ebpf.take_map("LIFECYCLE_EVENTS");
    let exec_ring = loaded.ebpf.take_map("EXEC_EVENTS");
    // From here the object is shared with the TLS probe, which attaches to libraries found
    // later; dropping the last holder detaches every program.
    let object = Arc::new(Mutex::new(loaded.ebpf));
    let mut resolver = Resolver::new(cgroups);
    resolver.rescan();
    let requests = RequestAgg::new(RequestSettings {
        apdex_t: cfg.apdex_threshold,
        apdex_for: cfg.apdex_threshold_for.iter().cloned().collect(),
        target_cap: cfg.http_route_cap,
    });
    let pipeline = Arc::new(Mutex::new(Pipeline::new(
        maps,
        resolver,
        cfg.cgroup_grace,
        requests,
    )));
    let snapshots = Arc::new(Snapshots::new(pipeline.clone()));

    let mut registry = Registry::default();
    registry.register_collector(Box::new(ObserverCollector::new(
        snapshots.clone(),
        loaded.probes.clone(),
    )));

    let shutdown = shutdown::on_signals();
    let kube_status = match &cfg.kubernetes {
        Some(settings) => {
            Some(start_kubernetes(settings, &pipeline, &mut registry, &shutdown).await?)
        }
        None => None,
    };
    if let Some(logger) = logger {
        tokio::spawn(ebpf::reader::run(
            "kernel log",
            logger,
            KernelLog,
            None,
            shutdown.clone(),
        ));
    }
    let l7_up: Vec<&str> = cfg
        .l7
        .iter()
        .map(|s| s.name)
        .filter(|n| loaded.probes.iter().any(|p| p.probe == *n && p.up))
        .collect();
    if !l7_up.is_empty() {
        match l7_ring.map(aya::maps::RingBuf::try_from) {
            Some(Ok(ring)) => {
                let conns = l7_conns.and_then(|m| aya::maps::HashMap::try_from(m).ok());
                let settings = l7::Settings {
                    request_timeout_ns: cfg.http_request_timeout.as_nanos() as u64,
                };
                let protocols = l7::registry(&settings)
                    .into_iter()
                    .filter(|p| l7_up.contains(&p.spec().name))
                    .collect();
                let reader = L7Reader::new(
                    Dispatch::new(protocols),
                    KernelConns(conns),
                    pipeline.clone(),
                );
                tokio::spawn(ebpf::reader::run(
                    "L7",
                    ring,
                    reader,
                    Some(DRAIN_INTERVAL),
                    shutdown.clone(),
                ));
            }
            _ => tracing::error!("L7 ring buffer missing from the object; request figures off"),
        }
    }
    if let Some(libraries) = loaded.tls.take() {
        match exec_ring.map(aya::maps::RingBuf::try_from) {
            Some(Ok(ring)) => {
                tokio::spawn(ebpf::reader::run(
                    "exec",
                    ring,
                    ebpf::tls::ExecReader::new(object.clone(), libraries),
                    Some(ebpf::tls::TICK),
                    shutdown.clone(),
                ));
            }
            _ => tracing::error!(
                "exec ring buffer missing from the object; new TLS libraries unseen"
            ),
        }
    }
    if loaded.probes.iter().any(|p| p.probe == "lifecycle" && p.up) {
        match lifecycle_ring.map(aya::maps::RingBuf::try_from) {
            Some(Ok(ring)) => {
                tokio::spawn(ebpf::reader::run(
                    "lifecycle",
                    ring,
                    pipeline::lifecyclecapture::LifecycleReader::new(pipeline.clone()),
                    None,
                    shutdown.clone(),
                ));
            }
            _ => tracing::error!("lifecycle ring buffer missing from the object; events off"),
        }
    }
    let gc_pipeline = pipeline.clone();
    let gc_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(GC_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = gc_shutdown.clone().wait() => return,
            }
            let p = gc_pipeline.clone();
            let _ = tokio::task::spawn_blocking(move || {
                p.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .collect_garbage()
            })
            .await;
        }
    });

    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: cfg.metrics_addr,
        source,
    })?;
    let grpc_addr = grpc_listener.local_addr().unwrap_or(cfg.grpc_addr);
    let grpc = tokio::spawn(export::grpc::serve(
        grpc_listener,
        snapshots.clone(),
        loaded.probes.clone(),
        shutdown.clone(),
    ));
    tracing::info!("gRPC API on {grpc_addr} (observer.v1.Observer, health, reflection)");
    println!("observer: gRPC API on http://{grpc_addr}");
    tracing::info!("serving http://{addr}/metrics (also /healthz, /readyz)");
    println!("observer: serving http://{addr}/metrics");
    let down = loaded
        .probes
        .iter()
        .filter(|p| p.blocks_readiness())
        .map(|p| {
            format!(
                "{}: {}",
                p.probe,
                p.reason.as_deref().unwrap_or("not attached")
            )
        })
        .collect();
    export::admin::serve(listener, registry, down, kube_status, shutdown).await;
    // Open streams end at shutdown; give the gRPC server a moment to say goodbye.
    let _ = tokio::time::timeout(Duration::from_secs(5), grpc).await;
    // Dropping the object detaches every program.
    drop(object);
    tracing::info!("stopped");
    Ok(())
}

/// Starts the Kubernetes watchers: the resolver names pods from their store, lifecycle events
/// and replica gauges go to the pipeline. Returns the status `/readyz` reports.
async fn start_kubernetes(
    settings: &identity::kube::KubeSettings,
    pipeline: &Arc<Mutex<Pipeline>>,
    registry: &mut Registry,
    shutdown: &shutdown::Shutdown,
) -> Result<Arc<identity::kube::status::KubeStatus>, StartError> {
    use identity::kube::{self, Output};
    let client = kube::client(settings).await?;
    let store = Arc::new(std::sync::RwLock::new(kube::store::MetaStore::default()));
    let status = kube::status::KubeStatus::new();
    registry.register_collector(Box::new(kube::status::KubeCollector(status.clone())));
    pipeline
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .set_metadata(store.clone());
    let sink_pipeline = pipeline.clone();
    let sink: kube::Sink = Box::new(move |outputs| {
        let mut p = sink_pipeline.lock().unwrap_or_else(|e| e.into_inner());
        for o in outputs {
            match o {
                Output::Event(e) => p.lifecycle.publish(e),
                Output::Replicas(k, r) => {
                    p.lifecycle.set_replicas(k, r);
                }
                Output::RemoveWorkload(k) => p.lifecycle.remove_workload(&k),
            }
        }
    });
    tracing::info!(node = %settings.node_name, "Kubernetes metadata on");
    tokio::spawn(kube::run(
        client,
        settings.clone(),
        store,
        status.clone(),
        sink,
        shutdown.clone(),
    ));
    Ok(status)
}

/// Forwards the kernel programs' aya-log records to the observer's own log.
struct KernelLog;

impl ebpf::reader::Reader for KernelLog {
    type Fd = aya_log::EbpfLogger<&'static dyn log::Log>;

    fn drain(&mut self, logger: &mut Self::Fd) {
        logger.flush();
    }
}

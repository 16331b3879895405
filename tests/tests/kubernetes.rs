//! Kubernetes metadata end to end, against the API stand-in (`observer_tests::kubeapi`): the
//! stand-in's Pod objects carry the UIDs and container ids of simulated pods, and the observer
//! (with `--kubeconfig` pointing at the stand-in) must name their series after them, name
//! topology peers on other nodes and behind Services, count restarts, Warning events and
//! replica changes exactly once (also across a `410 Gone` relist), and keep serving while the
//! API is away.

use std::{
    collections::BTreeMap,
    process::Child,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet, StatefulSet},
    autoscaling::v2::HorizontalPodAutoscaler,
    batch::v1::{CronJob, Job},
    core::v1::{Event, Pod as KPod, Service},
};
use observer_tests::{
    grpc::pb, kubeapi::KubeApi, metrics::Sample, net::Bridge, observer::Observer, pod::Pod,
    require_root, sh, sh_quiet, TempDir,
};
use serde_json::{json, Value};

const NODE: &str = "test-node";
const NS: &str = "shop";

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

/// A running container's status.
fn running(name: &str, id: &str, restarts: i32) -> Value {
    json!({"name": name, "containerID": format!("containerd://{id}"), "restartCount": restarts,
           "ready": true, "image": "img", "imageID": "img", "state": {"running": {}}})
}

/// The Pod object of simulated pod `p` on `node`, owned by `owner` (kind, name).
fn pod_object(
    p: &Pod,
    name: &str,
    node: &str,
    owner: Option<(&str, &str)>,
    app: &str,
    statuses: Value,
) -> KPod {
    let owners = owner.map_or(json!([]), |(kind, n)| {
        json!([{"apiVersion": "apps/v1", "kind": kind, "name": n, "uid": format!("uid-{n}"), "controller": true}])
    });
    typed(json!({
        "metadata": {"name": name, "namespace": NS, "uid": p.uid, "labels": {"app": app},
                     "ownerReferences": owners},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "img"}]},
        "status": {"phase": "Running", "podIP": p.ip, "podIPs": [{"ip": p.ip}],
                   "containerStatuses": statuses}
    }))
}

fn owned(kind: &str, name: &str, owner_kind: &str, owner: &str, api: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": NS,
           "ownerReferences": [{"apiVersion": api, "kind": owner_kind, "name": owner, "uid": format!("uid-{owner}"), "controller": true}]},
           "kind": kind})
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    typed(json!({"metadata": {"name": name, "namespace": NS},
                 "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                          "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "main"}]}}},
                 "status": {"readyReplicas": 1}}))
}

/// An HPA on Deployment `target` whose controller wants `desired` replicas.
fn hpa(target: &str, desired: i32) -> HorizontalPodAutoscaler {
    typed(
        json!({"metadata": {"name": format!("{target}-hpa"), "namespace": NS},
                 "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
                          "minReplicas": 1, "maxReplicas": 10},
                 "status": {"currentReplicas": 2, "desiredReplicas": desired}}),
    )
}

fn warning(
    uid_name: &str,
    pod: &Pod,
    pod_name: &str,
    reason: &str,
    kind: &str,
    count: i32,
) -> Event {
    typed(
        json!({"metadata": {"name": uid_name, "namespace": NS, "uid": format!("ev-{uid_name}")},
                 "type": kind, "reason": reason, "message": "Back-off restarting failed container",
                 "count": count,
                 "involvedObject": {"kind": "Pod", "namespace": NS, "name": pod_name, "uid": pod.uid,
                                    "fieldPath": "spec.containers{main}"}}),
    )
}

fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let hits: Vec<f64> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .collect();
    (!hits.is_empty()).then(|| hits.iter().sum())
}

/// The identity labels of the syscall series of pod `uid` (one set expected).
fn identities(samples: &[Sample], uid: &str) -> Vec<BTreeMap<String, String>> {
    let mut out: Vec<BTreeMap<String, String>> = samples
        .iter()
        .filter(|s| {
            s.name == "observer_syscalls_total"
                && s.labels.get("k8s_pod_uid").map(String::as_str) == Some(uid)
        })
        .map(|s| {
            [
                "k8s_namespace_name",
                "k8s_pod_name",
                "k8s_container_name",
                "service_name",
            ]
            .iter()
            .map(|k| (k.to_string(), s.labels.get(*k).cloned().unwrap_or_default()))
            .collect()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn names(ns: &str, pod: &str, container: &str, service: &str) -> Vec<BTreeMap<String, String>> {
    vec![[
        ("k8s_namespace_name", ns),
        ("k8s_pod_name", pod),
        ("k8s_container_name", container),
        ("service_name", service),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()]
}

/// Addresses added to the host (a remote pod's IP, a ClusterIP), removed on drop.
struct HostAddrs(String, Vec<String>);

impl Drop for HostAddrs {
    fn drop(&mut self) {
        for a in &self.1 {
            sh_quiet(&format!("ip addr del {a}/32 dev {}", self.0));
        }
    }
}

/// A sandbox (`pause`-like) container of a simulated pod: a cgroup of its own in the pod's
/// cgroup, a process in the pod's network namespace; removed on drop (before the pod).
struct Sandbox {
    dir: std::path::PathBuf,
    child: Child,
}

impl Sandbox {
    fn new(pod: &Pod) -> anyhow::Result<Sandbox> {
        let id = format!(
            "{}{}",
            observer_tests::random_hex(32),
            observer_tests::random_hex(32)
        );
        let dir = pod.pod_dir.join(format!("cri-containerd-{id}.scope"));
        std::fs::create_dir(&dir)?;
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec ip netns exec {} sleep 300",
                dir.display(),
                pod.netns
            ))
            .spawn();
        match child {
            Ok(child) => Ok(Sandbox { dir, child }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e.into())
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

struct HostProcess(Child);

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const CLIENT: &str = r#"
import http.client, sys
for target in sys.argv[2:]:
    for _ in range(int(sys.argv[1])):
        c = http.client.HTTPConnection(target, timeout=10)
        c.request("GET", "/")
        c.getresponse().read()
        c.close()
"#;

#[test]
fn names_peers_restarts_events_and_scale_follow_the_api() {
    require_root();
    let dir = TempDir::new("kubernetes").unwrap();
    let api = KubeApi::start().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let bridge = Bridge::new().unwrap();
    let mut web = Pod::new(&bridge).unwrap();
    let mut db = Pod::new(&bridge).unwrap();
    let mut job = Pod::new(&bridge).unwrap();
    let mut bare = Pod::new(&bridge).unwrap();

    // Owners: Deployment web → ReplicaSet web-5d8f; StatefulSet db; CronJob backup → Job.
    api.apply(&deployment("web", 2));
    api.apply(&deployment("marker", 1));
    api.apply(&hpa("web", 2));
    api.apply::<ReplicaSet>(&typed(owned(
        "ReplicaSet",
        "web-5d8f",
        "Deployment",
        "web",
        "apps/v1",
    )));
    api.apply::<StatefulSet>(&typed(json!({"metadata": {"name": "db", "namespace": NS}, "spec": {"replicas": 1,
        "selector": {"matchLabels": {"app": "db"}}, "serviceName": "db",
        "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "main"}]}}}})));
    api.apply::<CronJob>(&typed(json!({"metadata": {"name": "backup", "namespace": NS},
        "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "main"}]}}}}}})));
    api.apply::<Job>(&typed(owned(
        "Job",
        "backup-29000",
        "CronJob",
        "backup",
        "batch/v1",
    )));
    let web_pod = pod_object(
        &web,
        "web-5d8f-abcde",
        NODE,
        Some(("ReplicaSet", "web-5d8f")),
        "web",
        json!([running("main", &web.container_id, 0)]),
    );
    api.apply(&web_pod);
    api.apply(&pod_object(
        &db,
        "db-0",
        NODE,
        Some(("StatefulSet", "db")),
        "db",
        json!([running("main", &db.container_id, 0)]),
    ));
    api.apply(&pod_object(
        &job,
        "backup-29000-x7k2p",
        NODE,
        Some(("Job", "backup-29000")),
        "backup",
        json!([running("main", &job.container_id, 0)]),
    ));
    api.apply(&pod_object(
        &bare,
        "debug",
        NODE,
        None,
        "debug",
        json!([running("main", &bare.container_id, 0)]),
    ));

    // Peers elsewhere: a pod of Deployment "remote-api" on another node and the ClusterIP of a
    // Service whose pods belong to Deployment "payments", both answered by a server on the host
    // (the addresses are the host's, so no local pod owns them).
    let oct = 20 + (std::process::id() % 200);
    let remote_ip = format!("10.97.{oct}.9");
    let cluster_ip = format!("10.96.{oct}.7");
    let addrs = HostAddrs(
        bridge.name.clone(),
        vec![remote_ip.clone(), cluster_ip.clone()],
    );
    for a in &addrs.1 {
        sh(&format!("ip addr add {a}/32 dev {}", bridge.name)).unwrap();
    }
    api.apply::<ReplicaSet>(&typed(owned(
        "ReplicaSet",
        "remote-api-7f9c",
        "Deployment",
        "remote-api",
        "apps/v1",
    )));
    api.apply::<ReplicaSet>(&typed(owned(
        "ReplicaSet",
        "payments-6b7d",
        "Deployment",
        "payments",
        "apps/v1",
    )));
    let remote: KPod = typed(
        json!({"metadata": {"name": "remote-api-7f9c-q1w2e", "namespace": NS, "uid": "a1a1a1a1-0000-4000-8000-000000000001",
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "remote-api-7f9c", "uid": "x", "controller": true}]},
        "spec": {"nodeName": "other-node", "containers": [{"name": "main"}]},
        "status": {"podIP": remote_ip, "podIPs": [{"ip": remote_ip}]}}),
    );
    api.apply(&remote);
    let payments: KPod = typed(
        json!({"metadata": {"name": "payments-6b7d-zzzzz", "namespace": NS, "uid": "a1a1a1a1-0000-4000-8000-000000000002",
        "labels": {"app": "payments"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "payments-6b7d", "uid": "y", "controller": true}]},
        "spec": {"nodeName": "other-node", "containers": [{"name": "main"}]},
        "status": {"podIP": "10.98.0.5", "podIPs": [{"ip": "10.98.0.5"}]}}),
    );
    api.apply(&payments);
    api.apply::<Service>(&typed(json!({"metadata": {"name": "payments-svc", "namespace": NS},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "selector": {"app": "payments"}, "ports": [{"port": 80}]}})));

    let port = observer_tests::observer::free_port();
    let server = HostProcess(
        std::process::Command::new("python3")
            .args(["-m", "http.server", "--bind", "0.0.0.0", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );

    let kc = kubeconfig.to_string_lossy().into_owned();
    let obs = Observer::start(&[
        "--kubeconfig",
        &kc,
        "--node-name",
        NODE,
        "--cgroup-grace",
        "60s",
    ])
    .unwrap();
    for p in [&mut web, &mut db, &mut job, &mut bare] {
        p.spawn("sleep", &["300"]).unwrap();
    }
    // The db pod also has a sandbox container (not in its statuses) and an HTTP server.
    let _sandbox = Sandbox::new(&db).unwrap();
    db.spawn("python3", &["-m", "http.server", "8080"]).unwrap();
    db.wait_listening(8080).unwrap();
    // Ready once every resource was listed.
    let deadline = std::time::Instant::now() + observer_tests::scaled(Duration::from_secs(30));
    while obs.get("/readyz", None).unwrap().0 != 200 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(obs.get("/readyz", None).unwrap().0, 200);

    let expected = [
        (web.uid.clone(), names(NS, "web-5d8f-abcde", "main", "web")),
        (db.uid.clone(), {
            // The sandbox: the pod's names, no container name.
            let mut both = names(NS, "db-0", "", "db");
            both.extend(names(NS, "db-0", "main", "db"));
            both
        }),
        (
            job.uid.clone(),
            names(NS, "backup-29000-x7k2p", "main", "backup"),
        ),
        (bare.uid.clone(), names(NS, "debug", "main", "debug")),
    ];
    let all_named = |s: &[Sample]| {
        expected
            .iter()
            .all(|(uid, want)| identities(s, uid) == *want)
    };
    let s = obs
        .scrape_until(Duration::from_secs(30), all_named)
        .unwrap();
    for (uid, want) in &expected {
        assert_eq!(identities(&s, uid), *want, "pod {uid}");
    }
    assert_eq!(
        value(
            &s,
            "observer_kubernetes_metadata_synced",
            &[("resource", "pods")]
        ),
        Some(1.0)
    );

    // Topology: the web pod calls the remote pod's IP, the Service's ClusterIP and the db pod.
    let n = 4;
    web.python(
        CLIENT,
        &[
            &n.to_string(),
            &format!("{}:8080", db.ip),
            &format!("{remote_ip}:{port}"),
            &format!("{cluster_ip}:{port}"),
        ],
    )
    .unwrap();
    let edges = |s: &[Sample]| {
        let mut out = BTreeMap::new();
        for x in s
            .iter()
            .filter(|x| x.name == "traces_service_graph_request_total")
        {
            let get = |k: &str| x.labels.get(k).cloned().unwrap_or_default();
            if get("client") == "web" {
                *out.entry((get("server"), get("connection_type")))
                    .or_insert(0.0) += x.value;
            }
        }
        out
    };
    let want_edges: BTreeMap<(String, String), f64> = [
        (("db".to_string(), String::new()), n as f64),
        (("payments".to_string(), String::new()), n as f64),
        (("remote-api".to_string(), String::new()), n as f64),
    ]
    .into();
    let s = obs
        .scrape_until(Duration::from_secs(20), |s| edges(s) == want_edges)
        .unwrap();
    assert_eq!(edges(&s), want_edges);
    // The local server's side of the same requests joins the edge: the db pod's address stands
    // for its named container, not its sandbox.
    let server_side = |s: &[Sample]| {
        value(
            s,
            "traces_service_graph_request_server_seconds_count",
            &[("client", "web"), ("server", "db")],
        )
    };
    let s = obs
        .scrape_until(Duration::from_secs(10), |s| {
            server_side(s) == Some(n as f64)
        })
        .unwrap();
    assert_eq!(server_side(&s), Some(n as f64));
    drop(server);

    // The gRPC event stream, from here on (collected in the background).
    let rt = observer_tests::grpc::runtime();
    let events: Arc<Mutex<Vec<pb::Event>>> = Arc::default();
    let mut stream = rt.block_on(async {
        let mut c = observer_tests::grpc::connect(&obs.grpc_addr).await.unwrap();
        c.stream_events(pb::StreamEventsRequest { replay: false })
            .await
            .unwrap()
            .into_inner()
    });
    let sink = events.clone();
    rt.spawn(async move {
        while let Ok(Some(e)) = stream.message().await {
            sink.lock().unwrap().push(e);
        }
    });

    // A restart (new container id, count 1, OOMKilled), a crash loop, a Warning event, a scale.
    let new_id = format!(
        "{}{}",
        observer_tests::random_hex(32),
        observer_tests::random_hex(32)
    );
    let mut restarted = running("main", &new_id, 1);
    restarted["lastState"] = json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}});
    api.delete::<KPod>(NS, "debug");
    api.apply(&pod_object(
        &web,
        "web-5d8f-abcde",
        NODE,
        Some(("ReplicaSet", "web-5d8f")),
        "web",
        json!([restarted]),
    ));
    let crash = json!([{"name": "main", "restartCount": 1, "ready": false, "image": "img", "imageID": "img",
        "containerID": format!("containerd://{}", db.container_id),
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]);
    api.apply(&pod_object(
        &db,
        "db-0",
        NODE,
        Some(("StatefulSet", "db")),
        "db",
        crash,
    ));
    api.apply(&warning(
        "db-0.backoff",
        &db,
        "db-0",
        "BackOff",
        "Warning",
        1,
    ));
    api.apply(&warning("db-0.pulled", &db, "db-0", "Pulled", "Normal", 1));
    api.apply(&deployment("web", 5));
    api.apply(&hpa("web", 7));

    let restarts = |s: &[Sample], pod: &str, reason: &str| {
        value(
            s,
            "observer_container_restarts_total",
            &[("k8s_pod_name", pod), ("reason", reason)],
        )
    };
    let backoffs = |s: &[Sample]| {
        value(
            s,
            "observer_kubernetes_events_total",
            &[
                ("type", "Warning"),
                ("reason", "BackOff"),
                ("k8s_namespace_name", NS),
                ("k8s_pod_name", "db-0"),
            ],
        )
    };
    let desired = |s: &[Sample]| {
        value(
            s,
            "observer_workload_replicas",
            &[
                ("kind", "Deployment"),
                ("workload", "web"),
                ("state", "desired"),
            ],
        )
    };
    let hpa_desired = |s: &[Sample]| {
        value(
            s,
            "observer_workload_replicas",
            &[
                ("kind", "Deployment"),
                ("workload", "web"),
                ("state", "hpa_desired"),
            ],
        )
    };
    let done = |s: &[Sample]| {
        restarts(s, "web-5d8f-abcde", "OOMKilled") == Some(1.0)
            && restarts(s, "db-0", "CrashLoopBackOff") == Some(1.0)
            && backoffs(s) == Some(1.0)
            && desired(s) == Some(5.0)
            && hpa_desired(s) == Some(7.0)
    };
    let s = obs.scrape_until(Duration::from_secs(20), done).unwrap();
    assert_eq!(restarts(&s, "web-5d8f-abcde", "OOMKilled"), Some(1.0));
    let web_restart = value(
        &s,
        "observer_container_restarts_total",
        &[("k8s_pod_uid", &web.uid)],
    );
    assert_eq!(web_restart, Some(1.0), "one restart of web, of one reason");
    assert_eq!(restarts(&s, "db-0", "CrashLoopBackOff"), Some(1.0));
    assert_eq!(backoffs(&s), Some(1.0));
    assert_eq!(
        value(
            &s,
            "observer_kubernetes_events_total",
            &[("reason", "Pulled")]
        ),
        None
    );
    assert_eq!(desired(&s), Some(5.0));
    assert_eq!(hpa_desired(&s), Some(7.0));
    assert_eq!(
        value(
            &s,
            "observer_workload_replicas",
            &[
                ("kind", "Deployment"),
                ("workload", "web"),
                ("state", "ready")
            ]
        ),
        Some(1.0)
    );
    // The deleted pod keeps its names while its cgroup lives, and after it is gone (grace).
    assert_eq!(
        identities(&s, &bare.uid),
        names(NS, "debug", "main", "debug")
    );
    let bare_uid = bare.uid.clone();
    drop(bare);

    // The event seen twice more (count 1 → 3): 3 in all.
    api.apply(&warning(
        "db-0.backoff",
        &db,
        "db-0",
        "BackOff",
        "Warning",
        3,
    ));
    let s = obs
        .scrape_until(Duration::from_secs(20), |s| backoffs(s) == Some(3.0))
        .unwrap();
    assert_eq!(backoffs(&s), Some(3.0));

    // 410 Gone: history compacted, open watches end; the observer relists, counts nothing
    // twice, and the names stay.
    let before = api.requests().len();
    api.compact();
    let relisted = |r: &[String]| {
        r[before..]
            .iter()
            .any(|q| q.starts_with("/api/v1/pods") && !q.contains("watch=true"))
    };
    let deadline = std::time::Instant::now() + observer_tests::scaled(Duration::from_secs(30));
    while !relisted(&api.requests()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        relisted(&api.requests()),
        "no relist of pods after 410: {:?}",
        &api.requests()[before..]
    );
    // A restart after the relist, on the same pod stream: once it is counted, the relist
    // before it was processed too.
    let mut failed = running("main", &job.container_id, 1);
    failed["lastState"] = json!({"terminated": {"exitCode": 3, "reason": "Error"}});
    api.apply(&pod_object(
        &job,
        "backup-29000-x7k2p",
        NODE,
        Some(("Job", "backup-29000")),
        "backup",
        json!([failed]),
    ));
    let s = obs
        .scrape_until(Duration::from_secs(20), |s| {
            restarts(s, "backup-29000-x7k2p", "Error") == Some(1.0)
        })
        .unwrap();
    assert_eq!(restarts(&s, "backup-29000-x7k2p", "Error"), Some(1.0));
    // A scale after the relist, on the same Deployment stream: once it is in the event stream,
    // everything the relists could have repeated would be there before it.
    api.apply(&deployment("marker", 2));
    let is_scale_of = |e: &pb::Event, w: &str| {
        e.kind == "workload_scale" && e.fields.get("workload").map(String::as_str) == Some(w)
    };
    let deadline = std::time::Instant::now() + observer_tests::scaled(Duration::from_secs(20));
    while !events
        .lock()
        .unwrap()
        .iter()
        .any(|e| is_scale_of(e, "marker"))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = events.lock().unwrap().clone();
    let field = |e: &pb::Event, k: &str| e.fields.get(k).cloned().unwrap_or_default();
    let pod_of = |e: &pb::Event| {
        e.workload
            .as_ref()
            .map(|w| w.pod_name.clone())
            .unwrap_or_default()
    };
    let scales: Vec<(String, String, String, String)> = got
        .iter()
        .filter(|e| e.kind == "workload_scale")
        .map(|e| {
            (
                field(e, "workload"),
                field(e, "from"),
                field(e, "to"),
                field(e, "source"),
            )
        })
        .collect();
    let scale = |w: &str, from: &str, to: &str, source: &str| {
        (
            w.to_string(),
            from.to_string(),
            to.to_string(),
            source.to_string(),
        )
    };
    let mut scales = scales;
    scales.sort();
    assert_eq!(
        scales,
        vec![
            scale("marker", "1", "2", "spec"),
            scale("web", "2", "5", "spec"),
            scale("web", "2", "7", "hpa"),
        ]
    );
    let mut restart_events: Vec<(String, String, String, String)> = got
        .iter()
        .filter(|e| e.kind == "container_restart")
        .map(|e| {
            (
                pod_of(e),
                field(e, "reason"),
                field(e, "restart_count"),
                field(e, "container_id"),
            )
        })
        .collect();
    restart_events.sort();
    let restart = |pod: &str, reason: &str, id: &str| {
        (
            pod.to_string(),
            reason.to_string(),
            "1".to_string(),
            id.to_string(),
        )
    };
    let mut want_restarts = vec![
        restart("web-5d8f-abcde", "OOMKilled", &new_id),
        restart("db-0", "CrashLoopBackOff", &db.container_id),
        restart("backup-29000-x7k2p", "Error", &job.container_id),
    ];
    want_restarts.sort();
    assert_eq!(restart_events, want_restarts);
    let oom = got
        .iter()
        .find(|e| e.kind == "container_restart" && field(e, "reason") == "OOMKilled")
        .unwrap();
    assert_eq!(
        (
            field(oom, "previous_container_id"),
            field(oom, "exit_code"),
            field(oom, "container")
        ),
        (
            web.container_id.clone(),
            "137".to_string(),
            "main".to_string()
        )
    );
    assert_eq!(
        oom.workload.as_ref().map(|w| w.service_name.as_str()),
        Some("web")
    );
    let warnings = got.iter().filter(|e| e.kind == "kubernetes_event").count();
    assert_eq!(warnings, 3, "the BackOff event, once per occurrence");
    let watches = api
        .requests()
        .iter()
        .filter(|q| q.starts_with("/api/v1/pods?") && q.contains("watch=true"))
        .count();
    assert!(watches >= 2, "pods watched again after the relist");
    assert_eq!(restarts(&s, "web-5d8f-abcde", "OOMKilled"), Some(1.0));
    assert_eq!(restarts(&s, "db-0", "CrashLoopBackOff"), Some(1.0));
    assert_eq!(backoffs(&s), Some(3.0));
    for (uid, want) in &expected[..3] {
        assert_eq!(identities(&s, uid), *want, "pod {uid} after the relist");
    }
    assert_eq!(
        identities(&s, &bare_uid),
        names(NS, "debug", "main", "debug"),
        "deleted pod within grace"
    );
    drop(addrs);
    obs.stop().unwrap();
}

#[test]
fn api_down_at_start_then_up() {
    require_root();
    let dir = TempDir::new("kubernetes-down").unwrap();
    let api = KubeApi::start().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let bridge = Bridge::new().unwrap();
    let mut pod = Pod::new(&bridge).unwrap();
    api.apply(&pod_object(
        &pod,
        "late-0",
        NODE,
        Some(("StatefulSet", "late")),
        "late",
        json!([running("c1", &pod.container_id, 0)]),
    ));
    api.stop();

    let kc = kubeconfig.to_string_lossy().into_owned();
    let obs = Observer::start(&["--kubeconfig", &kc, "--node-name", NODE]).unwrap();
    pod.spawn("sleep", &["300"]).unwrap();
    let (code, _, body) = obs.get("/readyz", None).unwrap();
    assert_eq!(code, 503);
    assert!(
        body.contains("Kubernetes metadata not listed yet"),
        "{body}"
    );
    // Observing goes on: the pod's syscalls are there, under its cgroup-derived identity.
    let s = obs
        .scrape_until(Duration::from_secs(20), |s| {
            identities(s, &pod.uid) == names("", "", "", "sleep")
                && value(
                    s,
                    "observer_kubernetes_watch_errors_total",
                    &[("resource", "pods")],
                )
                .unwrap_or(0.0)
                    >= 1.0
        })
        .unwrap();
    assert_eq!(identities(&s, &pod.uid), names("", "", "", "sleep"));
    assert_eq!(
        value(
            &s,
            "observer_kubernetes_metadata_synced",
            &[("resource", "pods")]
        ),
        Some(0.0)
    );
    assert!(
        value(
            &s,
            "observer_kubernetes_watch_errors_total",
            &[("resource", "pods")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );

    api.resume().unwrap();
    let want = names(NS, "late-0", "c1", "late");
    let s = obs
        .scrape_until(Duration::from_secs(60), |s| identities(s, &pod.uid) == want)
        .unwrap();
    assert_eq!(identities(&s, &pod.uid), want);
    assert_eq!(
        value(
            &s,
            "observer_kubernetes_metadata_synced",
            &[("resource", "pods")]
        ),
        Some(1.0)
    );
    let deadline = std::time::Instant::now() + observer_tests::scaled(Duration::from_secs(30));
    while obs.get("/readyz", None).unwrap().0 != 200 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        obs.get("/readyz", None).unwrap(),
        (200, "text/plain; charset=utf-8".into(), "ready\n".into())
    );
    obs.stop().unwrap();
}

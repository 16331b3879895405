//! The Kubernetes manifests, rendered with the real `kubectl kustomize`, parsed into the
//! `k8s-openapi` types (and written back, so that a misspelt field, which serde would skip, shows)
//! and checked for what a security review asks: read-only RBAC on exactly what the observer reads,
//! no privileged container, only the capabilities the probes need (each with its reason in a
//! comment, and each known to the observer's own start-up check), read-only root and host mounts;
//! the Dockerfile agrees with the DaemonSet and with xtask's toolchain; every alert rule passes
//! `promtool check rules` and its `promtool test rules` unit tests, and the PrometheusRules ship
//! exactly the tested rules.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, Namespace, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::api::resource::Quantity,
    serde::de::DeserializeOwned,
};
use observer_tests::{
    kubeapi::KubeApi,
    manifest::{render, yaml_docs},
    observer::{binary, Observer},
    require_root, TempDir,
};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn named<'a>(objs: &'a [Value], k: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == k && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {k} {name}"))
}

/// The object of that kind and name as its k8s-openapi type. Written back, it must give the
/// rendered object again: a field the type does not know (a typo, a field of another version)
/// would otherwise be dropped without a word.
fn typed<T: DeserializeOwned + k8s_openapi::serde::Serialize>(
    objs: &[Value],
    k: &str,
    name: &str,
) -> T {
    let raw = named(objs, k, name);
    let t: T = serde_json::from_value(raw.clone()).unwrap_or_else(|e| panic!("{k} {name}: {e}"));
    assert_eq!(
        &serde_json::to_value(&t).unwrap(),
        raw,
        "{k} {name}: fields k8s-openapi does not know"
    );
    t
}

fn daemonset(objs: &[Value]) -> DaemonSet {
    typed(objs, "DaemonSet", "observer")
}

fn container(ds: &DaemonSet) -> Container {
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.containers.len(), 1);
    pod.containers[0].clone()
}

fn added_caps(c: &Container) -> BTreeSet<String> {
    let caps = c
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    caps.add.clone().unwrap_or_default().into_iter().collect()
}

/// The comment lines right above line `i`, joined.
fn comment_above(lines: &[&str], i: usize) -> String {
    let mut c: Vec<&str> = lines[..i]
        .iter()
        .rev()
        .take_while(|p| p.starts_with('#'))
        .map(|p| p.trim_start_matches('#').trim())
        .collect();
    c.reverse();
    c.join(" ")
}

/// Each capability of the `add:` list of a YAML file (its `- NAME` entries), with the comment
/// right above it.
fn commented_caps(yaml: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = yaml.lines().map(str::trim).collect();
    let mut out = Vec::new();
    let mut in_add = false;
    for (i, t) in lines.iter().enumerate() {
        if *t == "add:" {
            in_add = true;
        } else if in_add && !t.starts_with('#') {
            match t.strip_prefix("- ") {
                Some(cap) => out.push((cap.to_string(), comment_above(&lines, i))),
                None => in_add = false,
            }
        }
    }
    out
}

fn quantity_bytes(q: &Quantity) -> f64 {
    let s = q.0.as_str();
    let (n, mul) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (
            &s[..i],
            match &s[i..] {
                "Ki" => 1024.0,
                "Mi" => 1024.0 * 1024.0,
                "Gi" => 1024.0 * 1024.0 * 1024.0,
                u => panic!("unit {u}"),
            },
        ),
        None => (s, 1.0),
    };
    n.parse::<f64>().unwrap() * mul
}

fn quantity_cores(q: &Quantity) -> f64 {
    match q.0.strip_suffix('m') {
        Some(m) => m.parse::<f64>().unwrap() / 1000.0,
        None => q.0.parse().unwrap(),
    }
}

/// A figure of the README, the number right after `prefix`.
fn readme_figure(prefix: &str) -> f64 {
    let readme = read("README.md");
    let at = readme
        .find(prefix)
        .unwrap_or_else(|| panic!("README has no {prefix:?}"))
        + prefix.len();
    let num: String = readme[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse()
        .unwrap_or_else(|_| panic!("README: {prefix:?} {num:?}"))
}

#[test]
fn every_manifest_parses_into_its_kubernetes_type() {
    let objs = render("base");
    let kinds: BTreeSet<&str> = objs.iter().filter_map(|o| o["kind"].as_str()).collect();
    let want = [
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "Namespace",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ];
    assert_eq!(kinds, want.into_iter().collect());
    assert_eq!(objs.len(), 9, "one of each, two PrometheusRules");
    for o in &objs {
        let cluster_scoped = ["Namespace", "ClusterRole", "ClusterRoleBinding"]
            .contains(&o["kind"].as_str().unwrap());
        assert_eq!(
            o["metadata"]["namespace"].is_null(),
            cluster_scoped,
            "{}",
            o["kind"]
        );
        if !cluster_scoped {
            assert_eq!(o["metadata"]["namespace"], "observer", "{}", o["kind"]);
        }
    }
    let _: Namespace = typed(&objs, "Namespace", "observer");
    let _: ServiceAccount = typed(&objs, "ServiceAccount", "observer");
    let _: ClusterRole = typed(&objs, "ClusterRole", "observer");
    let _: ClusterRoleBinding = typed(&objs, "ClusterRoleBinding", "observer");
    let _: Service = typed(&objs, "Service", "observer");
    let _ = daemonset(&objs);
    // The CRDs (prometheus-operator's) have no k8s-openapi type.
    for (k, n) in [
        ("ServiceMonitor", "observer"),
        ("PrometheusRule", "observer"),
        ("PrometheusRule", "observer-apm"),
    ] {
        assert_eq!(named(&objs, k, n)["apiVersion"], "monitoring.coreos.com/v1");
    }
}

#[test]
fn daemonset_is_least_privilege() {
    let objs = render("base");
    let ds = daemonset(&objs);
    let pod = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let c = container(&ds);
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("Unconfined"),
        "runtime defaults refuse bpf() to CAP_BPF (tests/tests/container.rs)"
    );
    assert_eq!(sc.proc_mount.as_deref(), Some("Default"));
    // User 0 with the capabilities below only (the Dockerfile says why; see dockerfile_agrees...).
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.run_as_non_root, Some(false));
    assert!(pod.security_context.is_none(), "no pod-level override");
    let caps = sc.capabilities.clone().unwrap();
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    assert_eq!(added_caps(&c), ["BPF", "PERFMON"].map(String::from).into());

    // hostPID gives the node's /proc; nothing else of the host's namespaces.
    assert_eq!(pod.host_pid, Some(true));
    assert_ne!(pod.host_network, Some(true));
    assert_ne!(pod.host_ipc, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("observer"));
    assert!(c.command.is_none(), "the image's entrypoint runs");

    // Host paths: exactly what is read, each mounted read-only at the same path; no /proc mount.
    let volumes = pod.volumes.clone().unwrap();
    let mounts = c.volume_mounts.clone().unwrap();
    assert_eq!(volumes.len(), mounts.len());
    let mut paths = BTreeSet::new();
    for v in &volumes {
        let hp = v
            .host_path
            .as_ref()
            .unwrap_or_else(|| panic!("volume {} is not a host path", v.name));
        assert_eq!(hp.type_.as_deref(), Some("Directory"));
        let m = mounts.iter().find(|m| m.name == v.name).unwrap();
        assert_eq!(m.read_only, Some(true), "{}", v.name);
        assert_eq!(m.mount_path, hp.path);
        paths.insert(hp.path.as_str());
    }
    assert_eq!(paths, ["/sys/fs/cgroup", "/sys/kernel/btf"].into());

    // Node name from the downward API, in the variable the observer reads.
    let env = c.env.clone().unwrap();
    let node = env
        .iter()
        .find(|e| e.name == "OBSERVER_NODE_NAME")
        .expect("OBSERVER_NODE_NAME");
    let field = node
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.field_path, "spec.nodeName");

    // Probes on the admin endpoint's port; the ports are the ones the flags bind.
    let port_of = |name: &str| {
        c.ports
            .as_ref()
            .unwrap()
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap()
            .container_port
    };
    let live = c
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    let ready = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(live.path.as_deref(), Some("/healthz"));
    assert_eq!(ready.path.as_deref(), Some("/readyz"));
    for p in [live, ready] {
        assert_eq!(
            p.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".into())
        );
    }
    let args = c.args.clone().unwrap();
    assert!(
        args.contains(&format!("--metrics-addr=0.0.0.0:{}", port_of("metrics"))),
        "{args:?}"
    );
    assert!(
        args.contains(&format!("--grpc-addr=0.0.0.0:{}", port_of("grpc"))),
        "{args:?}"
    );

    // Sizing against the measured footprint (README, Cost): the memory request holds the peak
    // RSS, the limit more; the CPU request holds the measured share of a core at 10,000
    // requests/s; no CPU limit (throttling would lose ring-buffer records).
    let res = c.resources.clone().unwrap();
    let (req, lim) = (res.requests.unwrap(), res.limits.unwrap());
    let peak_rss = readme_figure("Peak RSS") * 1024.0 * 1024.0;
    let mem_req = quantity_bytes(&req["memory"]);
    assert!(
        mem_req >= peak_rss,
        "memory request {mem_req} under the measured peak {peak_rss}"
    );
    assert!(quantity_bytes(&lim["memory"]) >= 2.0 * mem_req);
    let cpu_share =
        readme_figure("| observer CPU (user space and its threads), % of one core |") / 100.0;
    assert!(
        quantity_cores(&req["cpu"]) >= cpu_share,
        "cpu request under {cpu_share} cores"
    );
    assert!(!lim.contains_key("cpu"));

    // Every node: one toleration of everything.
    let tol = pod.tolerations.clone().unwrap();
    assert_eq!(tol.len(), 1);
    assert_eq!(tol[0].operator.as_deref(), Some("Exists"));
    assert!(tol[0].key.is_none() && tol[0].effect.is_none());
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
}

/// The flags and variables the DaemonSet passes are the observer's own (its `--help`).
#[test]
fn daemonset_flags_are_the_observers() {
    let c = container(&daemonset(&render("base")));
    let help = Command::new(binary())
        .arg("--help")
        .output()
        .expect("observer --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for a in c.args.unwrap() {
        let flag = a.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{flag} ")),
            "observer --help has no {flag}"
        );
    }
    for e in c.env.unwrap() {
        assert!(
            help.contains(&format!("env: {}", e.name)),
            "observer --help has no {}",
            e.name
        );
    }
}

/// Each added capability has its reason in a comment above it, and the observer's start-up check
/// knows each one (it names what a missing one costs).
#[test]
fn each_capability_has_its_reason() {
    let privileges = read("observer/src/ebpf/privileges.rs");
    let raw = read("deploy/base/daemonset.yaml");
    let caps = commented_caps(&raw);
    for (cap, why) in &caps {
        assert!(
            why.split_whitespace().count() >= 4,
            "{cap} has no reason: {why:?}"
        );
        assert!(
            privileges.contains(&format!("CAP_{cap}")),
            "privileges.rs does not check CAP_{cap}"
        );
    }
    // The rendered list is the commented one.
    let commented: BTreeSet<String> = caps.into_iter().map(|(c, _)| c).collect();
    assert_eq!(
        commented,
        added_caps(&container(&daemonset(&render("base"))))
    );
}

/// The DaemonSet variant `overlay` is the base plus exactly the capabilities `added`: the same
/// objects, and the same DaemonSet but for its capability list.
fn assert_variant_adds_only(overlay: &str, added: &[&str]) {
    let base = render("base");
    let variant = render(overlay);
    let mut want = added_caps(&container(&daemonset(&base)));
    want.extend(added.iter().map(|c| c.to_string()));
    assert_eq!(added_caps(&container(&daemonset(&variant))), want);
    assert_eq!(base.len(), variant.len());
    let strip = |docs: &[Value]| -> Vec<Value> {
        docs.iter()
            .map(|d| {
                let mut d = d.clone();
                if d["kind"] == "DaemonSet" {
                    d["spec"]["template"]["spec"]["containers"][0]["securityContext"]
                        ["capabilities"]["add"] = Value::Null;
                }
                d
            })
            .collect()
    };
    assert_eq!(strip(&base), strip(&variant));
}

/// The variant for kernels before 5.11 is the base plus CAP_SYS_RESOURCE, with its reason, and
/// the observer's start-up check names it where the capability is missing there.
#[test]
fn the_variant_for_kernels_before_5_11_adds_only_sys_resource() {
    assert_variant_adds_only("overlays/kernel-before-5.11", &["SYS_RESOURCE"]);
    let raw = read("deploy/overlays/kernel-before-5.11/kustomization.yaml");
    assert!(raw.contains("RLIMIT_MEMLOCK"), "{raw}");
    let privileges = read("observer/src/ebpf/privileges.rs");
    assert!(privileges.contains("CAP_SYS_RESOURCE (to raise RLIMIT_MEMLOCK"));
    assert!(privileges.contains("deploy/overlays/kernel-before-5.11"));
}

/// The variant for TLS is the base plus CAP_SYS_ADMIN and CAP_SYS_PTRACE, each with its reason,
/// and the observer's start-up lines name it.
#[test]
fn the_variant_for_tls_adds_only_sys_admin_and_sys_ptrace() {
    assert_variant_adds_only("overlays/tls", &["SYS_ADMIN", "SYS_PTRACE"]);
    let raw = read("deploy/overlays/tls/kustomization.yaml");
    assert!(
        raw.contains("uprobes") && raw.contains("/proc/<pid>/maps"),
        "{raw}"
    );
    let sources = read("observer/src/ebpf/load.rs") + &read("observer/src/ebpf/privileges.rs");
    assert!(sources.contains("deploy/overlays/tls"));
    assert!(sources.contains("CAP_SYS_PTRACE not held: the tls probe"));
}

/// Every `.rs` file under `dir`, concatenated.
fn sources(dir: &Path, out: &mut String) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push_str(&std::fs::read_to_string(p).unwrap());
        }
    }
}

/// The Kubernetes API resources the observer reads: the types it watches or makes an `Api` of
/// (`watcher::Event<T>`, `Api<T>`, `Api::<T>` in observer/src), as (API group, resource). None
/// while it has no Kubernetes client. A type this table does not know fails the test, so that a
/// new watcher cannot come without its RBAC.
fn resources_read() -> Option<BTreeSet<(String, String)>> {
    use k8s_openapi::{
        api::{apps::v1 as apps, autoscaling::v2 as hpa, batch::v1 as batch, core::v1 as core},
        Resource,
    };
    fn r<T: Resource>() -> (String, String) {
        (T::GROUP.to_string(), T::URL_PATH_SEGMENT.to_string())
    }
    let mut src = String::new();
    sources(&repo().join("observer/src"), &mut src);
    let known = [
        ("Pod", r::<core::Pod>()),
        ("Service", r::<core::Service>()),
        ("Node", r::<core::Node>()),
        ("Namespace", r::<core::Namespace>()),
        ("Endpoints", r::<core::Endpoints>()),
        ("ReplicaSet", r::<apps::ReplicaSet>()),
        ("Deployment", r::<apps::Deployment>()),
        ("StatefulSet", r::<apps::StatefulSet>()),
        ("DaemonSet", r::<apps::DaemonSet>()),
        ("Job", r::<batch::Job>()),
        ("CronJob", r::<batch::CronJob>()),
        (
            "HorizontalPodAutoscaler",
            r::<hpa::HorizontalPodAutoscaler>(),
        ),
        (
            "EndpointSlice",
            r::<k8s_openapi::api::discovery::v1::EndpointSlice>(),
        ),
    ];
    let mut read = BTreeSet::new();
    for marker in ["watcher::Event<", "Api<", "Api::<"] {
        for (i, _) in src.match_indices(marker) {
            let name: String = src[i + marker.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.len() <= 1 {
                continue; // a type parameter (K, T)
            }
            // Events: core/v1 or events.k8s.io/v1, under whatever name they were imported.
            let event_group = |n: &str| {
                let imported = n == "Event" || src.contains(&format!("Event as {n}"));
                imported.then(|| {
                    if src.contains("events::v1::Event")
                        || src.contains(&format!("events::v1::{{Event as {n}"))
                    {
                        r::<k8s_openapi::api::events::v1::Event>()
                    } else {
                        r::<core::Event>()
                    }
                })
            };
            let res = known
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, r)| r.clone())
                .or_else(|| event_group(&name))
                .unwrap_or_else(|| panic!("observer/src watches {name}: add it to this table (and to the ClusterRole)"));
            read.insert(res);
        }
    }
    (!read.is_empty()).then_some(read)
}

#[test]
fn rbac_reads_only_what_the_observer_reads() {
    let objs = render("base");
    let role: ClusterRole = typed(&objs, "ClusterRole", "observer");
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap() {
        for v in &rule.verbs {
            assert!(
                ["get", "list", "watch"].contains(&v.as_str()),
                "{v}: read-only verbs only"
            );
        }
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for g in rule.api_groups.unwrap() {
            for r in rule.resources.clone().unwrap() {
                assert!(
                    !r.contains('*') && !g.contains('*') && r != "secrets" && !r.contains('/'),
                    "{g}/{r}"
                );
                granted.insert((g.clone(), r));
            }
        }
    }
    if let Some(read) = resources_read() {
        assert_eq!(
            granted, read,
            "ClusterRole vs the Api<T> the observer's watchers use"
        );
    } else {
        eprintln!(
            "the observer has no Kubernetes client yet: RBAC checked for read-only verbs only"
        );
    }
    let binding: ClusterRoleBinding = typed(&objs, "ClusterRoleBinding", "observer");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, "observer");
    let subjects = binding.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (subjects[0].kind.as_str(), subjects[0].name.as_str()),
        ("ServiceAccount", "observer")
    );
    assert_eq!(subjects[0].namespace.as_deref(), Some("observer"));
}

/// (API group, resource, verb) of a request to the API: `/api/v1/pods?watch=true&...` →
/// ("", "pods", "watch"); `/apis/apps/v1/namespaces/x/replicasets/y` → ("apps", "replicasets", "get").
fn api_request(uri: &str) -> (String, String, String) {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("not an API path: {uri}"),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        r => r,
    };
    let watch = query
        .split('&')
        .any(|q| q == "watch=true" || q == "watch=1");
    let verb = match (rest.len(), watch) {
        (_, true) => "watch",
        (1, false) => "list",
        _ => "get",
    };
    (group.to_string(), rest[0].to_string(), verb.to_string())
}

/// What the observer really asks the API for, against the stand-in (`observer_tests::kubeapi`),
/// is exactly what the ClusterRole grants: every (group, resource) it lists or watches has a rule
/// with that verb, and the ClusterRole grants nothing it does not ask for.
#[test]
fn rbac_is_what_the_observer_requests() {
    require_root();
    let dir = TempDir::new("deploy-rbac").unwrap();
    let api = KubeApi::start().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let kc = kubeconfig.to_string_lossy().into_owned();
    let obs = Observer::start(&["--kubeconfig", &kc, "--node-name", "node-rbac"]).unwrap();
    // Ready: every watched resource was listed once; then a moment for the watches.
    let deadline =
        std::time::Instant::now() + observer_tests::scaled(std::time::Duration::from_secs(30));
    while obs.get("/readyz", None).unwrap().0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    obs.stop().unwrap();
    let requested: BTreeSet<(String, String, String)> =
        api.requests().iter().map(|r| api_request(r)).collect();
    println!("requests: {requested:?}");

    let role: ClusterRole = typed(&render("base"), "ClusterRole", "observer");
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap() {
        for g in rule.api_groups.unwrap() {
            for r in rule.resources.clone().unwrap() {
                for v in &rule.verbs {
                    granted.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    for req in &requested {
        assert!(
            granted.contains(req),
            "the observer asks for {req:?}, the ClusterRole does not grant it"
        );
    }
    let resources = |set: &BTreeSet<(String, String, String)>| -> BTreeSet<(String, String)> {
        set.iter().map(|(g, r, _)| (g.clone(), r.clone())).collect()
    };
    assert_eq!(
        resources(&granted),
        resources(&requested),
        "granted but never requested"
    );
    // Nor a verb it does not use (its watchers list and watch; they never get one object).
    assert_eq!(granted, requested, "verbs granted but never used");
    for verb in ["list", "watch"] {
        assert!(
            requested.iter().any(|(_, _, v)| v == verb),
            "no {verb} request: {requested:?}"
        );
    }
}

#[test]
fn service_and_service_monitor_reach_the_daemonset() {
    let objs = render("base");
    let ds = daemonset(&objs);
    let c = container(&ds);
    let pod_labels = ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let svc: Service = typed(&objs, "Service", "observer");
    let spec = svc.spec.unwrap();
    // A node whose observer is not ready (metadata missing) is still scraped.
    assert_eq!(spec.publish_not_ready_addresses, Some(true));
    for (k, v) in spec.selector.unwrap() {
        assert_eq!(pod_labels.get(&k), Some(&v), "selector {k}={v}");
    }
    let ports: BTreeSet<(String, i32, String)> = spec
        .ports
        .unwrap()
        .into_iter()
        .map(|p| {
            let target = match p.target_port.unwrap() {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s,
                other => panic!("target port {other:?}: name it"),
            };
            (p.name.unwrap(), p.port, target)
        })
        .collect();
    let container_ports: BTreeSet<(String, i32, String)> = c
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.clone().unwrap(), p.container_port, p.name.unwrap()))
        .collect();
    assert_eq!(
        ports, container_ports,
        "metrics and gRPC, by the container's port names"
    );
    let sm = named(&objs, "ServiceMonitor", "observer");
    let svc_labels = named(&objs, "Service", "observer")["metadata"]["labels"].clone();
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&svc_labels[k], v);
    }
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
}

/// The image the DaemonSet runs is built by the Dockerfile: Debian bookworm stages, the toolchain
/// of xtask, the entrypoint it runs, the user it runs as, the ports it serves.
#[test]
fn dockerfile_agrees_with_the_daemonset_and_xtask() {
    let docker = read("Dockerfile");
    let lines: Vec<&str> = docker
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    // No registry image: every stage starts from the base given as a build argument, which
    // xtask makes with mmdebstrap (Debian bookworm) when podman does not have it.
    assert_eq!(
        froms,
        [
            "${BASE} AS build",
            "${BASE} AS prebuilt",
            "${BASE} AS runtime"
        ]
    );
    let base = lines
        .iter()
        .find_map(|l| l.strip_prefix("ARG BASE="))
        .expect("ARG BASE=");
    assert!(
        read("xtask/src/image.rs").contains(&format!("pub const BASE: &str = \"{base}\";")),
        "xtask's base image is the Dockerfile's default"
    );
    let stage = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .skip_while(|l| !l.starts_with(&format!("FROM ${{BASE}} AS {name}")))
            .skip(1)
            .take_while(|l| !l.starts_with("FROM "))
            .copied()
            .collect()
    };
    let final_stage = stage("runtime");
    let prebuilt_stage = stage("prebuilt");
    let users: Vec<&str> = final_stage
        .iter()
        .filter_map(|l| l.strip_prefix("USER "))
        .collect();
    assert_eq!(users, ["0:0"]);
    // The stage the tests run differs from the runtime only in where the binary comes from.
    let without_copy = |s: &[&str]| -> Vec<String> {
        s.iter()
            .filter(|l| !l.starts_with("COPY "))
            .map(|l| l.to_string())
            .collect()
    };
    assert_eq!(without_copy(&final_stage), without_copy(&prebuilt_stage));
    // The build stage does not build as root.
    let build_stage = stage("build");
    let build_user = build_stage
        .iter()
        .position(|l| l.starts_with("USER builder"))
        .expect("USER builder");
    let cargo_build = build_stage
        .iter()
        .position(|l| l.contains("cargo build"))
        .unwrap();
    assert!(build_user < cargo_build);

    let ds = daemonset(&render("base"));
    let c = container(&ds);
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(0), "the Dockerfile's user");
    let version = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    assert_eq!(
        c.image.as_deref(),
        Some(format!("observer:{version}").as_str())
    );
    assert!(docker.contains(&format!(
        "podman build --build-arg BASE={base} -t localhost/observer:{version} ."
    )));
    assert!(final_stage.contains(&r#"ENTRYPOINT ["/usr/local/bin/observer"]"#));
    let exposed: BTreeSet<i32> = final_stage
        .iter()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(|p| p.parse().unwrap()))
        .collect();
    let ports: BTreeSet<i32> = c.ports.unwrap().iter().map(|p| p.container_port).collect();
    assert_eq!(exposed, ports);

    // The toolchain is xtask's: the same Debian packages, the same bpf-linker.
    let install = read("xtask/src/install.rs");
    let apt = docker
        .split("apt-get install")
        .nth(1)
        .unwrap()
        .split("&&")
        .next()
        .unwrap()
        .replace('\\', " ");
    let packages: Vec<&str> = apt
        .split_whitespace()
        .filter(|w| !w.starts_with('-'))
        .collect();
    assert!(packages.contains(&"rustc-web") && packages.contains(&"libstd-rust-web-dev-bpf"));
    for p in packages {
        assert!(
            install.contains(&format!("\"{p}\"")),
            "{p} is not in xtask's install list"
        );
    }
    assert!(docker.contains(
        "cargo install bpf-linker --version 0.13.0 --no-default-features --features llvm-22"
    ));
    for w in [
        "\"bpf-linker\"",
        "\"0.13.0\"",
        "\"llvm-22\"",
        "/usr/lib/llvm-22/bin",
    ] {
        assert!(
            install.contains(w),
            "xtask installs bpf-linker otherwise ({w})"
        );
    }
    // The build context leaves out build outputs but the one binary the prebuilt stage packs.
    let ignore: Vec<String> = read(".dockerignore")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_string)
        .collect();
    let target = ignore.iter().position(|l| l == "target/*");
    let keep = ignore.iter().position(|l| l == "!target/image/observer");
    assert!(
        target.is_some() && keep.is_some() && target < keep,
        "{ignore:?}"
    );
}

/// Runs promtool and returns whether it succeeded and what it printed.
fn promtool(args: &[&str], file: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .arg(file)
        .output()
        .expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

/// A rule file of deploy/rules: promtool checks it and runs its unit tests; every alert is tested
/// firing with each severity it has and not firing; the PrometheusRule of the base carries exactly
/// its groups.
fn rule_file_is_tested_and_shipped(rules: &str, tests: &str, prometheus_rule: &str, count: usize) {
    let dir = repo().join("deploy/rules");
    let (ok, report) = promtool(&["check", "rules"], &dir.join(rules));
    println!("promtool check rules {rules}:\n{report}");
    assert!(ok, "{report}");
    assert!(
        report.contains(&format!("SUCCESS: {count} rules found")),
        "{report}"
    );
    let (ok, report) = promtool(&["test", "rules"], &dir.join(tests));
    println!("promtool test rules {tests}:\n{report}");
    assert!(ok && report.contains("SUCCESS"), "{report}");

    let plain = yaml_docs(read(&format!("deploy/rules/{rules}")).as_bytes());
    let cases = yaml_docs(read(&format!("deploy/rules/{tests}")).as_bytes());
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for t in cases[0]["tests"].as_array().unwrap() {
        for a in t["alert_rule_test"].as_array().into_iter().flatten() {
            let name = a["alertname"].as_str().unwrap().to_string();
            let exp = a["exp_alerts"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if exp.is_empty() {
                quiet.insert(name.clone());
            }
            for e in exp {
                firing.insert((
                    name.clone(),
                    e["exp_labels"]["severity"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    for g in plain[0]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            let Some(alert) = r["alert"].as_str() else {
                continue;
            };
            let severity = r["labels"]["severity"].as_str().unwrap();
            assert!(
                ["warning", "critical"].contains(&severity),
                "{alert}: {severity}"
            );
            assert!(
                firing.contains(&(alert.to_string(), severity.to_string())),
                "{alert} ({severity}) never tested firing"
            );
            assert!(quiet.contains(alert), "{alert} never tested not firing");
        }
    }
    let objs = render("base");
    let rendered = &named(&objs, "PrometheusRule", prometheus_rule)["spec"]["groups"];
    assert!(rendered.as_array().is_some_and(|g| !g.is_empty()));
    assert_eq!(
        rendered, &plain[0]["groups"],
        "PrometheusRule {prometheus_rule}: spec.groups differ from deploy/rules/{rules}"
    );
}

#[test]
fn self_and_lifecycle_alerts_pass_promtool_unit_tests() {
    // 5 recording rules; 12 alerts (ProbeDown, TableNearlyFull; EventsLost, OOMKilled,
    // CrashLooping, RestartRateHigh, ReplicasNotReady as warning and critical).
    rule_file_is_tested_and_shipped(
        "observer.rules.yaml",
        "observer.rules.test.yaml",
        "observer",
        17,
    );
}

#[test]
fn apm_rules_pass_promtool_unit_tests() {
    // 28 recording rules, 18 alerts (warning and critical of 9).
    rule_file_is_tested_and_shipped("apm.rules.yaml", "apm.rules.test.yaml", "observer-apm", 46);
}

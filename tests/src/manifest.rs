//! The DaemonSet as the tests run it: rendered from `deploy/` with `kubectl kustomize` (never
//! repeated in a test), the capabilities it adds, and a `capsh` wrapper that gives a root process
//! exactly those, as a container runtime does.

use std::{
    collections::BTreeSet,
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
};

use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Container};
use serde_json::Value;

use crate::sh;

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
        .to_path_buf()
}

/// The kernel's (major, minor).
pub fn kernel() -> (u32, u32) {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut p = r
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (p.next().unwrap_or(0), p.next().unwrap_or(0))
}

/// The kustomization for this kernel, under `deploy/`: the base, or before 5.11 (maps charged to
/// RLIMIT_MEMLOCK) the overlay that adds CAP_SYS_RESOURCE.
pub fn for_this_kernel() -> &'static str {
    if kernel() < (5, 11) {
        "overlays/kernel-before-5.11"
    } else {
        "base"
    }
}

/// YAML documents as JSON values (Debian's python3-yaml).
pub fn yaml_docs(yaml: &[u8]) -> Vec<Value> {
    let mut py = Command::new("python3")
        .args(["-c", "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    py.stdin.take().unwrap().write_all(yaml).unwrap();
    let json = py.wait_with_output().unwrap();
    assert!(json.status.success());
    serde_json::from_slice(&json.stdout).unwrap()
}

/// Renders a kustomization of `deploy/` and returns its objects.
pub fn render(dir: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join("deploy").join(dir))
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_docs(&out.stdout)
}

/// The DaemonSet of a kustomization of `deploy/`.
pub fn daemonset(dir: &str) -> DaemonSet {
    println!("manifest: deploy/{dir}");
    let objs = render(dir);
    let ds = objs
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .expect("DaemonSet");
    serde_json::from_value(ds.clone()).expect("a DaemonSet")
}

/// Its one container.
pub fn container(ds: &DaemonSet) -> Container {
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.containers.len(), 1);
    pod.containers[0].clone()
}

/// The capabilities the container adds, as capsh names them (`BPF` → `cap_bpf`), after
/// checking that it drops all others.
pub fn added_caps(c: &Container) -> BTreeSet<String> {
    let caps = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let add: BTreeSet<String> = caps
        .add
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|c| format!("cap_{}", c.to_ascii_lowercase()))
        .collect();
    assert!(!add.is_empty());
    add
}

/// Capability names of a set, as capsh decodes a `/proc/<pid>/status` mask.
pub fn decode(mask: &str) -> BTreeSet<String> {
    let out = sh(&format!("capsh --decode={mask}")).unwrap();
    let names = out.trim().split_once('=').map(|(_, n)| n).unwrap_or("");
    names
        .split(',')
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect()
}

/// The bounding set of this (root) test process.
pub fn all_caps() -> BTreeSet<String> {
    let out = sh("capsh --print").unwrap();
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("Bounding set ="))
        .expect("capsh --print");
    line.split(',').map(|c| c.trim().to_string()).collect()
}

/// `capsh` dropping every capability but `keep` from the bounding set, then running its last
/// arguments (program and flags) with exec, so the pid stays the observer's, under a container's
/// usual RLIMIT_MEMLOCK. As root the program then holds exactly `keep`.
pub fn capsh_keeping(keep: &BTreeSet<String>) -> Vec<String> {
    let all = all_caps();
    for k in keep {
        assert!(all.contains(k), "this test process itself lacks {k}");
    }
    let drop: Vec<&str> = all
        .iter()
        .filter(|c| !keep.contains(*c))
        .map(String::as_str)
        .collect();
    vec![
        "capsh".into(),
        format!("--drop={}", drop.join(",")),
        "--".into(),
        "-c".into(),
        // RLIMIT_MEMLOCK as a container runtime commonly leaves it (64 KiB, soft and hard):
        // kernels before 5.11 charge BPF maps to it, later ones do not.
        r#"ulimit -S -l 64 && ulimit -H -l 64 && exec "$0" "$@""#.into(),
    ]
}

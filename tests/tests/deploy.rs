//! The Kubernetes manifests, rendered with the real `kubectl kustomize` and checked for what a
//! security review asks: read-only RBAC, no privileged container, only the capabilities the
//! probes need, read-only root and host mounts; the alert rules pass `promtool check rules`; the APM
//! recording rules (deploy/rules) pass their `promtool test rules` unit tests and the
//! PrometheusRule that ships them carries exactly those rules.

use std::{
    collections::BTreeSet,
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
};

use observer_tests::random_hex;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/base")
}

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/rules")
}

/// Parses a YAML stream into its (non-empty) documents, as JSON, through python3's yaml.
fn yaml_docs(yaml: &[u8]) -> Vec<Value> {
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

/// Renders the kustomize base and returns its objects (YAML → JSON through python3's yaml).
fn render() -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy_dir())
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_docs(&out.stdout)
}

fn kind<'a>(objs: &'a [Value], k: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == k)
        .unwrap_or_else(|| panic!("no {k}"))
}

fn named<'a>(objs: &'a [Value], k: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == k && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {k} {name}"))
}

/// Runs promtool and returns whether it succeeded and what it printed.
fn promtool(args: &[&str], file: &std::path::Path) -> (bool, String) {
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

#[test]
fn manifests_are_least_privilege() {
    let objs = render();
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
    for o in &objs {
        if o["kind"] != "Namespace"
            && o["kind"] != "ClusterRole"
            && o["kind"] != "ClusterRoleBinding"
        {
            assert_eq!(o["metadata"]["namespace"], "observer", "{}", o["kind"]);
        }
    }

    // RBAC: get/list/watch only.
    for rule in kind(&objs, "ClusterRole")["rules"].as_array().unwrap() {
        for verb in rule["verbs"].as_array().unwrap() {
            assert!(
                ["get", "list", "watch"].contains(&verb.as_str().unwrap()),
                "{rule}"
            );
        }
    }

    let spec = &kind(&objs, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"], true);
    assert_ne!(spec["hostNetwork"], true);
    assert_eq!(spec["serviceAccountName"], "observer");
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let added: BTreeSet<&str> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        added,
        ["BPF", "PERFMON", "SYS_RESOURCE"].into_iter().collect()
    );
    // Every host path is mounted read-only.
    let host_volumes: BTreeSet<&str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v.get("hostPath").is_some())
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(!host_volumes.is_empty());
    for m in c["volumeMounts"].as_array().unwrap() {
        if host_volumes.contains(m["name"].as_str().unwrap()) {
            assert_eq!(m["readOnly"], true, "{m}");
        }
    }
    // The probes and the Service use the ports the observer serves.
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(args, ["--metrics-addr", "0.0.0.0:9464"]);
}

#[test]
fn alert_rules_pass_promtool() {
    let objs = render();
    let groups = &named(&objs, "PrometheusRule", "observer")["spec"]["groups"];
    let file = std::env::temp_dir().join(format!("observer-rules-{}.json", random_hex(8)));
    // promtool reads YAML, and JSON is YAML.
    std::fs::write(&file, serde_json::json!({ "groups": groups }).to_string()).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(report.contains("SUCCESS: 3 rules found"), "{report}");
}

#[test]
fn apm_recording_rules_pass_promtool_unit_tests() {
    let rules = rules_dir().join("apm.rules.yaml");
    let (ok, report) = promtool(&["check", "rules"], &rules);
    println!("promtool check rules:\n{report}");
    assert!(ok, "{report}");
    // 13 recording rules, 10 alerts (warning and critical of 5).
    assert!(report.contains("SUCCESS: 23 rules found"), "{report}");

    let (ok, report) = promtool(&["test", "rules"], &rules_dir().join("apm.rules.test.yaml"));
    println!("promtool test rules:\n{report}");
    assert!(ok, "{report}");
    assert!(report.contains("SUCCESS"), "{report}");

    // The PrometheusRule the kustomize base renders carries exactly the tested groups.
    let objs = render();
    let rendered = &named(&objs, "PrometheusRule", "observer-apm")["spec"]["groups"];
    let plain = yaml_docs(&std::fs::read(&rules).unwrap());
    assert_eq!(plain.len(), 1);
    assert!(rendered.as_array().is_some_and(|g| !g.is_empty()));
    assert_eq!(
        rendered, &plain[0]["groups"],
        "deploy/base/apm-rules.yaml spec.groups differ from deploy/rules/apm.rules.yaml"
    );
}

//! The observer's image, run by a real container runtime (podman with runc) the way the
//! DaemonSet's pod spec says: the `podman run` flags are derived from the rendered manifest
//! (`kubectl kustomize deploy/...`), never written here a second time, and a field this
//! translation does not know fails the test rather than being left out. The image is the
//! Dockerfile's `prebuilt` stage (`cargo xtask image --prebuilt`, which `cargo xtask test` runs
//! first): the runtime stage with the host's release binary, without its debug sections.
//!
//! - In the container the observer counts a simulated pod's syscalls, HTTP requests and TCP
//!   connections exactly, with every default probe up and its readiness endpoint answering.
//! - With one capability fewer the container exits with the same one line as the observer on
//!   the host with that capability fewer.
//! - Podman's default seccomp profile (a real runtime's RuntimeDefault) refuses bpf() to a
//!   process without CAP_SYS_ADMIN: the observer exits with one line naming the seccomp filter.
//!   The same default with bpf() allowed to CAP_BPF is enough: bpf() is the one system call the
//!   observer needs beyond it. The DaemonSet therefore sets seccomp Unconfined.
//!
//! Host kernel only (the guests have no container runtime). Run as root by `cargo xtask test`.

use std::{
    collections::BTreeSet,
    io::Read,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Container};
use observer_tests::{
    manifest::{added_caps, capsh_keeping, container, daemonset, repo},
    metrics::{self, Sample},
    observer::{binary, free_port, http_get},
    podman::{self, podman},
    random_hex, require_root, scaled,
    workload::{every_default_probe_is_up_unless_refused, pods_are_counted_exactly},
    TempDir,
};

const WAIT: Duration = Duration::from_secs(10);

/// The tests of this file one at a time (each runs the DaemonSet's container).
static SERIAL: Mutex<()> = Mutex::new(());

fn version() -> String {
    std::fs::read_to_string(repo().join("Cargo.toml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .unwrap()
        .trim_matches('"')
        .to_string()
}

/// The image under test, which `cargo xtask image --prebuilt` builds.
fn image() -> String {
    let name = format!("localhost/observer-prebuilt:{}", version());
    let exists = podman()
        .args(["image", "exists", &name])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        exists,
        "{name} is not built: cargo xtask image --prebuilt (cargo xtask test does it)"
    );
    name
}

/// What the seccomp flag becomes: the manifest's, or an override of a test.
enum Seccomp {
    Manifest,
    /// The runtime's default profile (the manifest's field dropped).
    RuntimeDefault,
    /// A profile file.
    File(String),
}

/// `podman run` flags for the DaemonSet's pod spec: (flags before the image, the container's
/// args, the published metrics port on the host's loopback). `caps` replaces the added
/// capabilities when given.
fn run_flags(
    ds: &DaemonSet,
    caps: Option<&BTreeSet<String>>,
    seccomp: Seccomp,
) -> (Vec<String>, Vec<String>, u16) {
    let pod = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let c: Container = container(ds);
    let mut f: Vec<String> = podman::ULIMITS.iter().map(|s| s.to_string()).collect();

    // The pod: host PID namespace, not the host's network (published ports instead).
    if pod.host_pid == Some(true) {
        f.push("--pid=host".into());
    }
    assert_ne!(
        pod.host_network,
        Some(true),
        "hostNetwork is not translated"
    );
    assert_ne!(pod.host_ipc, Some(true), "hostIPC is not translated");
    assert!(
        pod.init_containers.is_none(),
        "initContainers are not translated"
    );

    // The container's image: the manifest names the runtime stage's tag; the test runs the
    // prebuilt stage, which differs from it only in where the binary comes from (deploy.rs).
    assert_eq!(
        c.image.as_deref(),
        Some(format!("observer:{}", version()).as_str())
    );
    assert!(
        c.command.is_none(),
        "the image's entrypoint is the observer"
    );

    // The security context, field by field.
    let sc = c.security_context.clone().expect("securityContext");
    assert_eq!(sc.privileged, Some(false));
    if sc.allow_privilege_escalation == Some(false) {
        f.push("--security-opt=no-new-privileges".into());
    }
    if sc.read_only_root_filesystem == Some(true) {
        f.push("--read-only".into());
    }
    let uid = sc.run_as_user.expect("runAsUser");
    f.push(match sc.run_as_group {
        Some(g) => format!("--user={uid}:{g}"),
        None => format!("--user={uid}"),
    });
    assert!(matches!(sc.proc_mount.as_deref(), None | Some("Default")));
    assert!(sc.se_linux_options.is_none() && sc.app_armor_profile.is_none());
    let caps_spec = sc.capabilities.as_ref().expect("capabilities");
    for d in caps_spec.drop.clone().unwrap_or_default() {
        f.push(format!("--cap-drop={}", d.to_ascii_lowercase()));
    }
    let add: BTreeSet<String> = match caps {
        Some(c) => c.clone(),
        None => added_caps(&c),
    };
    for a in &add {
        f.push(format!("--cap-add={}", a.to_ascii_uppercase()));
    }
    let profile = sc.seccomp_profile.as_ref().map(|p| p.type_.as_str());
    match seccomp {
        Seccomp::Manifest => match profile {
            Some("Unconfined") => f.push("--security-opt=seccomp=unconfined".into()),
            Some("RuntimeDefault") | None => {}
            Some(other) => panic!("seccompProfile {other} is not translated"),
        },
        Seccomp::RuntimeDefault => {}
        Seccomp::File(path) => f.push(format!("--security-opt=seccomp={path}")),
    }

    // Mounts: each volumeMount from its hostPath volume.
    let volumes = pod.volumes.clone().unwrap_or_default();
    for m in c.volume_mounts.clone().unwrap_or_default() {
        let v = volumes
            .iter()
            .find(|v| v.name == m.name)
            .unwrap_or_else(|| panic!("no volume {}", m.name));
        let host = v
            .host_path
            .as_ref()
            .unwrap_or_else(|| panic!("volume {} is not a hostPath", v.name));
        let ro = if m.read_only == Some(true) { ":ro" } else { "" };
        f.push(format!("--volume={}:{}{ro}", host.path, m.mount_path));
    }

    // Environment: values, and the node's name from the downward API.
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for e in c.env.clone().unwrap_or_default() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), None) => v.clone(),
            (None, Some(from)) => {
                let field = from
                    .field_ref
                    .as_ref()
                    .map(|r| r.field_path.as_str())
                    .unwrap_or_else(|| panic!("env {} is not translated", e.name));
                assert_eq!(field, "spec.nodeName", "env {} from {field}", e.name);
                node.trim().to_string()
            }
            _ => panic!("env {} is not translated", e.name),
        };
        f.push(format!("--env={}={value}", e.name));
    }

    // The memory limit (the CPU request is a scheduling weight, which has no meaning for one
    // container on a machine; there is no CPU limit).
    if let Some(limits) = c.resources.as_ref().and_then(|r| r.limits.as_ref()) {
        for (k, q) in limits {
            assert_eq!(k, "memory", "limit {k} is not translated");
            let mib = q.0.strip_suffix("Mi").expect("a memory limit in Mi");
            f.push(format!("--memory={mib}m"));
        }
    }

    // Ports: each containerPort published on the host's loopback; the metrics one is returned.
    let mut metrics_port = 0;
    for p in c.ports.clone().unwrap_or_default() {
        let host_port = free_port();
        f.push(format!(
            "--publish=127.0.0.1:{host_port}:{}",
            p.container_port
        ));
        if p.name.as_deref() == Some("metrics") {
            metrics_port = host_port;
        }
    }
    assert_ne!(metrics_port, 0, "no port named metrics");
    (f, c.args.clone().unwrap_or_default(), metrics_port)
}

/// The readiness probe's path on the metrics port.
fn readiness_path(ds: &DaemonSet) -> String {
    let c = container(ds);
    let probe = c.readiness_probe.expect("readinessProbe");
    probe.http_get.expect("httpGet").path.expect("path")
}

/// A running container of the image; removed when dropped.
struct Running {
    name: String,
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Running {
    /// Starts it and waits until its readiness probe answers 200.
    fn start(ds: &DaemonSet, seccomp: Seccomp) -> Running {
        let (flags, args, port) = run_flags(ds, None, seccomp);
        let name = format!("obs-{}", random_hex(8));
        let mut child = podman()
            .args(["run", "--rm", "--name", &name])
            .args(&flags)
            .arg(image())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("podman");
        let log = Arc::new(Mutex::new(String::new()));
        for mut pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let s = String::from_utf8_lossy(&buf[..n]);
                    eprint!("[container] {s}");
                    log.lock().unwrap().push_str(&s);
                }
            });
        }
        let mut r = Running {
            name,
            child,
            addr: format!("127.0.0.1:{port}"),
            log,
        };
        let path = readiness_path(ds);
        let deadline = Instant::now() + scaled(Duration::from_secs(90));
        loop {
            if let Ok((200, _, _)) = http_get(&r.addr, &path, None) {
                return r;
            }
            if let Ok(Some(status)) = r.child.try_wait() {
                panic!("the container exited ({status}): {}", r.log.lock().unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "not ready: {}",
                r.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn scrape(&self) -> Vec<Sample> {
        let (status, _, body) = http_get(&self.addr, "/metrics", None).unwrap();
        assert_eq!(status, 200);
        metrics::parse(&body)
    }

    fn scrape_until(&self, cond: &dyn Fn(&[Sample]) -> bool) -> Vec<Sample> {
        let deadline = Instant::now() + scaled(WAIT);
        loop {
            let s = self.scrape();
            if cond(&s) || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What the runtime says of the container's process: (capability masks, NoNewPrivs,
    /// Seccomp) from its /proc status, found through the runtime's pid.
    fn process_status(&self) -> String {
        let out = podman()
            .args(["inspect", "--format", "{{.State.Pid}}", &self.name])
            .output()
            .unwrap();
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap()
    }

    /// Stops it as the kubelet does (SIGTERM, then the grace period) and returns the exit code.
    fn stop(mut self) -> Option<i32> {
        let _ = podman()
            .args(["stop", "-t", "10", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = podman()
                .args(["rm", "-f", "-t", "0", &self.name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = self.child.wait();
        }
    }
}

/// Runs the container to its exit; returns (exit code, the lines it wrote to stderr).
fn run_to_exit(flags: &[String], args: &[String]) -> (Option<i32>, Vec<String>) {
    let name = format!("obs-{}", random_hex(8));
    let out = podman()
        .args(["run", "--rm", "--name", &name])
        .args(flags)
        .arg(image())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("podman");
    let err = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code(),
        err.lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect(),
    )
}

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name}"))
        .trim()
        .to_string()
}

/// The DaemonSet's pod spec in podman: the container holds exactly the manifest's
/// capabilities, no_new_privs and no seccomp filter (Unconfined), every default probe is up,
/// and a simulated pod's syscalls, HTTP requests and TCP connections are counted exactly.
#[test]
fn the_daemonsets_container_counts_pods_exactly() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ds = daemonset("base");
    let keep = added_caps(&container(&ds));
    let c = Running::start(&ds, Seccomp::Manifest);

    let status = c.process_status();
    let caps = |field: &str| observer_tests::manifest::decode(&status_field(&status, field));
    assert_eq!(caps("CapEff:"), keep, "effective");
    assert_eq!(caps("CapBnd:"), keep, "bounding");
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1");
    assert_eq!(status_field(&status, "Seccomp:"), "0", "Unconfined");

    every_default_probe_is_up_unless_refused(&c.scrape(), &c.log.lock().unwrap().clone());
    pods_are_counted_exactly(&|cond| c.scrape_until(cond));

    let log = c.log.lock().unwrap().clone();
    // No feature named degraded but, on a kernel that creates uprobes for CAP_PERFMON, the tls
    // probe's discovery without CAP_SYS_PTRACE (which only deploy/overlays/tls grants).
    let warnings: Vec<&str> = (log.lines())
        .filter(|l| l.contains("WARN") && !l.contains("CAP_SYS_PTRACE not held: the tls probe"))
        .collect();
    assert!(warnings.is_empty(), "{log}");
    if !observer_tests::workload::uprobes_refused(&log) {
        assert!(!log.contains("probe down"), "{log}");
    }
    // SIGTERM from the runtime: a clean stop.
    assert_eq!(c.stop(), Some(0));
}

/// Without any one of the manifest's capabilities the container exits 1 with one line, the
/// same line the observer prints on the host with that capability fewer.
#[test]
fn without_any_one_capability_the_container_exits_with_the_hosts_line() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ds = daemonset("base");
    let keep = added_caps(&container(&ds));
    for missing in &keep {
        let mut fewer = keep.clone();
        fewer.remove(missing);
        let (flags, args, _) = run_flags(&ds, Some(&fewer), Seccomp::Manifest);
        let (code, lines) = run_to_exit(&flags, &args);
        assert_eq!(code, Some(1), "without {missing}: {lines:?}");
        assert_eq!(lines.len(), 1, "without {missing}: {lines:?}");

        let wrapper = capsh_keeping(&fewer);
        let host = Command::new(&wrapper[0])
            .args(&wrapper[1..])
            .arg(binary())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let host_err = String::from_utf8_lossy(&host.stderr);
        let host_lines: Vec<&str> = host_err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(host.status.code(), Some(1), "{host_err}");
        assert_eq!(host_lines, [lines[0].as_str()], "the host's line");
        assert!(
            lines[0].contains(&format!("{} (to ", missing.to_ascii_uppercase())),
            "{lines:?}"
        );
    }
}

/// Podman's default seccomp profile, the runtime's RuntimeDefault, allows bpf() only with
/// CAP_SYS_ADMIN: the observer exits 1 with one line naming the seccomp filter. That default
/// with bpf() allowed to CAP_BPF runs it with every probe up: nothing else is missing.
#[test]
fn the_runtimes_default_seccomp_profile_refuses_bpf_and_only_bpf() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ds = daemonset("base");
    let (flags, args, _) = run_flags(&ds, None, Seccomp::RuntimeDefault);
    let (code, lines) = run_to_exit(&flags, &args);
    assert_eq!(code, Some(1), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(
            "observer: the bpf() system call is refused (EPERM) by this process's seccomp filter"
        ),
        "{lines:?}"
    );

    // The runtime's own default profile, with one rule more.
    let default = "/usr/share/containers/seccomp.json";
    let mut profile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(default).expect(default)).unwrap();
    let syscalls = profile["syscalls"].as_array_mut().unwrap();
    // The rule that gives bpf() to CAP_SYS_ADMIN only is there (else this test is moot).
    assert!(syscalls.iter().any(|r| {
        r["names"].as_array().unwrap().iter().any(|n| n == "bpf")
            && r["includes"]["caps"] == serde_json::json!(["CAP_SYS_ADMIN"])
    }));
    syscalls.insert(
        0,
        serde_json::json!({
            "names": ["bpf"],
            "action": "SCMP_ACT_ALLOW",
            "includes": {"caps": ["CAP_BPF"]},
        }),
    );
    let dir = TempDir::new("obs-seccomp").unwrap();
    let path = dir
        .write("bpf-for-cap-bpf.json", profile.to_string())
        .unwrap();
    let c = Running::start(&ds, Seccomp::File(path));
    let status = c.process_status();
    assert_eq!(status_field(&status, "Seccomp:"), "2", "a filter is on");
    every_default_probe_is_up_unless_refused(&c.scrape(), &c.log.lock().unwrap().clone());
    assert_eq!(c.stop(), Some(0));
}

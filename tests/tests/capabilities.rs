//! The observer with only the capabilities the DaemonSet grants (read from the rendered manifest,
//! `kubectl kustomize deploy/base`, never repeated here), started under `capsh` with every other
//! capability dropped from its bounding set, as a container runtime does: every probe attaches and
//! a simulated pod's syscalls, TCP connections and HTTP requests are counted exactly. Without any
//! one of those capabilities the observer does not start, and says in one line which one is
//! missing and what for. Run as root by `cargo xtask test`.
//!
//! Debian's and Ubuntu's kernels refuse perf_event_open (classic tracepoints) to anything but
//! CAP_SYS_ADMIN when `kernel.perf_event_paranoid` is above 2, and Debian's default is 3: nodes with
//! such kernels need `kernel.perf_event_paranoid=2` (README, Deployment). The first test sets that
//! where it is higher, as such a node would have it; the last one shows that at 3 the observer's
//! start-up check says so exactly when the kernel enforces it.

use std::{
    collections::BTreeSet,
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use observer_tests::{
    metrics::{sum, Sample},
    net::Bridge,
    observer::{binary, Observer},
    pod::Pod,
    require_root, sh,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// The tests of this file one at a time: one of them changes a sysctl of the whole machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const PARANOID: &str = "/proc/sys/kernel/perf_event_paranoid";

/// Sets `kernel.perf_event_paranoid` and puts the old value back when dropped.
struct Paranoid(String);

impl Paranoid {
    fn set(v: i32) -> Paranoid {
        let old = std::fs::read_to_string(PARANOID).unwrap();
        std::fs::write(PARANOID, v.to_string()).unwrap();
        Paranoid(old.trim().to_string())
    }
}

impl Drop for Paranoid {
    fn drop(&mut self) {
        let _ = std::fs::write(PARANOID, &self.0);
    }
}

fn paranoid() -> i32 {
    std::fs::read_to_string(PARANOID)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The capabilities the DaemonSet adds, as capsh names them (`BPF` → `cap_bpf`).
fn manifest_caps() -> BTreeSet<String> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/base");
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut py = Command::new("python3")
        .args(["-c", "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    py.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let objs: Vec<Value> = serde_json::from_slice(&py.wait_with_output().unwrap().stdout).unwrap();
    let ds = objs
        .iter()
        .find(|o| o["kind"] == "DaemonSet")
        .expect("DaemonSet");
    let caps = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"];
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
    let add: BTreeSet<String> = caps["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("cap_{}", c.as_str().unwrap().to_ascii_lowercase()))
        .collect();
    assert!(!add.is_empty());
    add
}

/// Capability names of a set, as capsh decodes a `/proc/<pid>/status` mask.
fn decode(mask: &str) -> BTreeSet<String> {
    let out = sh(&format!("capsh --decode={mask}")).unwrap();
    let names = out.trim().split_once('=').map(|(_, n)| n).unwrap_or("");
    names
        .split(',')
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect()
}

/// The bounding set of this (root) test process.
fn all_caps() -> BTreeSet<String> {
    let out = sh("capsh --print").unwrap();
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("Bounding set ="))
        .expect("capsh --print");
    line.split(',').map(|c| c.trim().to_string()).collect()
}

/// `capsh` dropping every capability but `keep` from the bounding set, then running its last
/// arguments (program and flags) with exec, so the pid stays the observer's. As root the program
/// then holds exactly `keep`.
fn capsh_keeping(keep: &BTreeSet<String>) -> Vec<String> {
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
        r#"exec "$0" "$@""#.into(),
    ]
}

fn pod_sum(s: &[Sample], name: &str, pod: &Pod, extra: &[(&str, &str)]) -> f64 {
    let mut want = vec![("k8s_pod_uid", pod.uid.as_str())];
    want.extend_from_slice(extra);
    sum(s, name, &want)
}

/// Calls getpriority K times and sched_getscheduler on a pid that does not exist E times.
const SYSCALLS: &str = r#"
import os, sys
k, e = int(sys.argv[1]), int(sys.argv[2])
for _ in range(k):
    os.getpriority(os.PRIO_PROCESS, 0)
for _ in range(e):
    try:
        os.sched_getscheduler(2**22 + 12345)
    except ProcessLookupError:
        pass
"#;

/// HTTP/1.1 server: 404 for /missing, 200 otherwise; head and body in one write.
const HTTP_SERVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        code = 404 if self.path == "/missing" else 200
        body = b"ok\n"
        self.send_response_only(code)
        self.send_header("Content-Length", str(len(body)))
        self._headers_buffer.append(b"\r\n" + body)
        self.flush_headers()
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"#;

/// K requests for /items/<i> and E for /missing on one keep-alive connection; prints statuses.
const HTTP_CLIENT: &str = r#"
import http.client, sys
host, port, k, e = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
c = http.client.HTTPConnection(host, port, timeout=10)
got = []
for path in ["/items/%d" % i for i in range(k)] + ["/missing"] * e:
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    got.append(r.status)
c.close()
print(" ".join(str(s) for s in sorted(set(got))), got.count(200), got.count(404))
"#;

#[test]
fn with_only_the_manifests_capabilities_everything_works() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    println!("kernel.perf_event_paranoid is {}", paranoid());
    exact_with_manifest_caps();
}

/// At `kernel.perf_event_paranoid` 3 and 4 (Debian's and Ubuntu's defaults, where their kernels
/// give `perf_event_open` only to CAP_SYS_ADMIN), with exactly the manifest's capabilities: every
/// default probe is up and every figure exact, since no probe attaches through
/// `perf_event_open`. Where the kernel enforces the level, the start-up log says, as an info
/// line, that it is refused and needed by no probe.
#[test]
fn every_default_probe_works_at_perf_event_paranoid_3_and_4() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for level in [3, 4] {
        let _paranoid = Paranoid::set(level);
        println!("kernel.perf_event_paranoid {level}");
        let log = exact_with_manifest_caps();
        if log.contains("perf_event_open is refused") {
            assert!(
                log.contains(&format!("kernel.perf_event_paranoid is {level}")),
                "{log}"
            );
            assert!(log.contains("no probe needs it"), "{log}");
        }
    }
}

/// The observer under capsh with exactly the manifest's capabilities: every default probe up,
/// a pod's syscalls, HTTP requests and TCP connections exact. Returns its log.
fn exact_with_manifest_caps() -> String {
    let keep = manifest_caps();
    let wrapper = capsh_keeping(&keep);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();

    let bridge = Bridge::new().unwrap();
    let a = Pod::new(&bridge).unwrap();
    let client = Pod::new(&bridge).unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let obs = Observer::start_wrapped(&wrapper, &[]).unwrap();

    // It runs with exactly the manifest's capabilities.
    let status = std::fs::read_to_string(format!("/proc/{}/status", obs.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(decode(&field("CapEff:")), keep, "effective");
    assert_eq!(decode(&field("CapBnd:")), keep, "bounding");

    // Every probe attached (the default ones at least, and whatever else this build has).
    let s = obs.scrape().unwrap();
    let probes: Vec<&Sample> = s.iter().filter(|x| x.name == "observer_probe_up").collect();
    let names: BTreeSet<&str> = probes.iter().map(|p| p.labels["probe"].as_str()).collect();
    for p in [
        "http",
        "lifecycle",
        "syscalls",
        "tcp_bytes",
        "tcp_connections",
        "tcp_retransmits",
    ] {
        assert!(names.contains(p), "no probe {p} in {names:?}");
    }
    for p in &probes {
        assert_eq!(p.value, 1.0, "probe {:?} down", p.labels);
    }

    // Syscalls of a pod, exactly.
    a.python(SYSCALLS, &["37", "11"]).unwrap();
    // HTTP and TCP between two pods, exactly.
    server.spawn_python(HTTP_SERVER, &["8080"]).unwrap();
    server.wait_listening(8080).unwrap();
    let got = client
        .python(HTTP_CLIENT, &[&server.ip, "8080", "25", "4"])
        .unwrap();
    assert_eq!(got.trim(), "200 404 25 4");

    let gp = [("syscall", "getpriority")];
    let s = obs
        .scrape_until(WAIT, |s| {
            pod_sum(s, "observer_syscalls_total", &a, &gp) >= 37.0
                && pod_sum(
                    s,
                    "http_server_request_duration_seconds_count",
                    &server,
                    &[],
                ) >= 29.0
                && pod_sum(
                    s,
                    "http_client_request_duration_seconds_count",
                    &client,
                    &[],
                ) >= 29.0
                && pod_sum(s, "observer_tcp_connections_closed_total", &client, &[]) >= 1.0
        })
        .unwrap();
    assert_eq!(pod_sum(&s, "observer_syscalls_total", &a, &gp), 37.0);
    let sg = [("syscall", "sched_getscheduler")];
    assert_eq!(pod_sum(&s, "observer_syscalls_total", &a, &sg), 11.0);
    assert_eq!(
        pod_sum(
            &s,
            "observer_syscall_errors_total",
            &a,
            &[("syscall", "sched_getscheduler"), ("errno", "ESRCH")]
        ),
        11.0
    );
    let server_count = |code: &str| {
        pod_sum(
            &s,
            "http_server_request_duration_seconds_count",
            &server,
            &[("http_response_status_code", code)],
        )
    };
    assert_eq!(server_count("200"), 25.0);
    assert_eq!(server_count("404"), 4.0);
    assert_eq!(
        pod_sum(
            &s,
            "http_client_request_duration_seconds_count",
            &client,
            &[]
        ),
        29.0
    );
    // The HTTP route, from the request line the kernel copied out of the pod's buffer.
    assert_eq!(
        pod_sum(
            &s,
            "http_server_request_duration_seconds_count",
            &server,
            &[("http_route", "/items/{id}")]
        ),
        25.0
    );
    let out = [("direction", "outbound")];
    let inb = [("direction", "inbound")];
    assert_eq!(
        pod_sum(&s, "observer_tcp_connections_opened_total", &client, &out),
        1.0
    );
    assert_eq!(
        pod_sum(&s, "observer_tcp_connections_opened_total", &server, &inb),
        1.0
    );
    assert_eq!(
        pod_sum(&s, "observer_tcp_connections_closed_total", &client, &[]),
        1.0
    );

    // Nothing it does needs more than the manifest grants: no feature is named as degraded.
    let log = obs.stderr.lock().unwrap().clone();
    assert!(!log.contains(" missing"), "{log}");
    assert!(!log.contains("WARN"), "{log}");
    assert!(!log.contains("probe down"), "{log}");
    assert!(obs.stop().unwrap().success());
    log
}

#[test]
fn without_any_one_of_them_one_line_names_it_and_the_observer_exits() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let keep = manifest_caps();
    for missing in &keep {
        let mut fewer = keep.clone();
        fewer.remove(missing);
        let wrapper = capsh_keeping(&fewer);
        let out = Command::new(&wrapper[0])
            .args(&wrapper[1..])
            .arg(binary())
            .args([
                "--metrics-addr",
                "127.0.0.1:0",
                "--grpc-addr",
                "127.0.0.1:0",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "without {missing}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "without {missing}: {err}");
        let name = missing.to_ascii_uppercase();
        assert!(lines[0].contains(&format!("{name} (to ")), "{err}");
        for other in &fewer {
            assert!(
                !lines[0].contains(&other.to_ascii_uppercase()),
                "{other} is there: {err}"
            );
        }
    }
}

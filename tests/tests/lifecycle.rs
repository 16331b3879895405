//! Lifecycle events from the kernel, exact against what the test did to its simulated pods:
//! an HTTP server that answers a known number of requests and exits with code 3, one killed by
//! SIGTERM after a known load, and a process OOM-killed by its memory limit (cgroup v2
//! `memory.max` where the v2 hierarchy has the memory controller, else the v1 memory
//! controller at /sys/fs/cgroup/memory). Each event must arrive exactly once, on the right pod,
//! with the right reason, and (gRPC) with the server's request figures of the minute before.

use std::{collections::BTreeMap, fs, path::PathBuf, time::Duration};

use observer_tests::{
    grpc::{connect, pb, runtime},
    metrics::{sum, Sample},
    net::Bridge,
    observer::Observer,
    pod::{cgroup2_root, Pod},
    random_hex, require_root, scaled, TempDir,
};

const PORT: u16 = 8080;

/// A single-threaded HTTP/1.1 server: /fail answers 500, anything else 200. Args: port, then
/// the number of requests after which it exits with the code given as third argument (0:
/// serve forever).
const SERVER: &str = r#"
import http.server, os, sys
port, limit, code = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
served = 0

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        global served
        body = b"ok\n"
        self.send_response(500 if self.path == "/fail" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        served += 1
        if limit and served == limit:
            os._exit(code)

http.server.HTTPServer(("0.0.0.0", port), H).serve_forever()
"#;

/// Sequential GETs, a new connection each: args host, port, ok count, fail count. Prints
/// {status: count}.
const CLIENT: &str = r#"
import http.client, json, sys
host, port, ok, fail = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
seen = {}
for path in ["/ok"] * ok + ["/fail"] * fail:
    c = http.client.HTTPConnection(host, port, timeout=20)
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    c.close()
    seen[str(r.status)] = seen.get(str(r.status), 0) + 1
print(json.dumps(seen))
"#;

/// Waits for the go-file, then allocates 1 MiB strings (written, so the pages are really
/// charged) until the memory limit's OOM kill.
const HOG: &str = r#"
import os, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
a = []
while True:
    a.append(b"x" * (1 << 20))
"#;

fn pod_value(s: &[Sample], name: &str, uid: &str, extra: &[(&str, &str)]) -> f64 {
    let mut want = vec![("k8s_pod_uid", uid)];
    want.extend_from_slice(extra);
    sum(s, name, &want)
}

/// Runs the client in `client` against `server` and returns its tally.
fn load(client: &Pod, server: &Pod, ok: u32, fail: u32) -> BTreeMap<String, u64> {
    let out = client
        .python(
            CLIENT,
            &[
                &server.ip,
                &PORT.to_string(),
                &ok.to_string(),
                &fail.to_string(),
            ],
        )
        .expect("client");
    serde_json::from_str(out.trim()).expect("client tally")
}

/// The lifecycle events of pod `uid` in a replayed event stream, read until `want` of them
/// arrived (or the deadline; then whatever came).
fn events_of(obs: &Observer, uid: &str, want: usize) -> Vec<pb::Event> {
    let rt = runtime();
    let addr = obs.grpc_addr.clone();
    let uid = uid.to_string();
    rt.block_on(async move {
        let mut c = connect(&addr).await.expect("grpc");
        let mut s = c
            .stream_events(pb::StreamEventsRequest { replay: true })
            .await
            .expect("stream")
            .into_inner();
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + scaled(Duration::from_secs(20));
        while got.len() < want {
            match tokio::time::timeout_at(deadline, s.message()).await {
                Ok(Ok(Some(e))) => {
                    if e.workload.as_ref().is_some_and(|w| w.pod_uid == uid) {
                        got.push(e);
                    }
                }
                _ => break,
            }
        }
        // Anything more for this pod would be a duplicate: give it a moment to show up.
        while let Ok(Ok(Some(e))) =
            tokio::time::timeout(Duration::from_millis(500), s.message()).await
        {
            if e.workload.as_ref().is_some_and(|w| w.pod_uid == uid) {
                got.push(e);
            }
        }
        got
    })
}

fn figures(e: &pb::Event) -> (u64, u64) {
    let f = e.figures_before.as_ref().expect("figures_before");
    (f.requests, f.errors)
}

#[test]
fn exit_code_and_signal_with_figures_before() {
    require_root();
    let bridge = Bridge::new().unwrap();
    // The default probes but tls: this test runs on the emulated guests too, where verifying
    // the tls probe's uprobe programs on 5.10 pushed the observer's start past its 8-minute
    // wait (the tls probe's own tests run on the host).
    let obs = Observer::start(&[
        "--probes",
        "syscalls,tcp,http,http2,redis,postgresql,mysql,memcached,lifecycle",
    ])
    .unwrap();
    let client = Pod::new(&bridge).unwrap();

    // A server that answers 9 + 3 requests and exits with code 3.
    let mut exits = Pod::new(&bridge).unwrap();
    let exits_pid = exits
        .spawn_python(SERVER, &[&PORT.to_string(), "12", "3"])
        .unwrap();
    exits.wait_listening(PORT).unwrap();
    let tally = load(&client, &exits, 9, 3);
    assert_eq!(
        tally,
        BTreeMap::from([("200".into(), 9), ("500".into(), 3)])
    );

    // A server that answers 7 + 2 requests and is then killed with SIGTERM.
    let mut killed = Pod::new(&bridge).unwrap();
    let killed_pid = killed
        .spawn_python(SERVER, &[&PORT.to_string(), "0", "0"])
        .unwrap();
    killed.wait_listening(PORT).unwrap();
    let tally = load(&client, &killed, 7, 2);
    assert_eq!(
        tally,
        BTreeMap::from([("200".into(), 7), ("500".into(), 2)])
    );
    // SAFETY: kill(2) on the pid of the server this test started.
    assert_eq!(unsafe { libc::kill(killed_pid as i32, libc::SIGTERM) }, 0);

    let s = obs
        .scrape_until(Duration::from_secs(15), |s| {
            pod_value(s, "observer_container_exits_total", &exits.uid, &[]) >= 1.0
                && pod_value(s, "observer_container_exits_total", &killed.uid, &[]) >= 1.0
        })
        .unwrap();
    let exits_total = |uid: &str, reason: &str| {
        pod_value(
            &s,
            "observer_container_exits_total",
            uid,
            &[("reason", reason)],
        )
    };
    assert_eq!(exits_total(&exits.uid, "exited"), 1.0);
    assert_eq!(exits_total(&exits.uid, "signaled"), 0.0);
    assert_eq!(exits_total(&killed.uid, "signaled"), 1.0);
    assert_eq!(exits_total(&killed.uid, "exited"), 0.0);
    for uid in [&exits.uid, &killed.uid, &client.uid] {
        assert_eq!(
            pod_value(&s, "observer_container_oom_kills_total", uid, &[]),
            0.0
        );
    }
    // The client pod's own processes (each `python -c` run is its main process) exited 0.
    assert_eq!(exits_total(&client.uid, "exited"), 1.0 + 1.0);

    let ev = events_of(&obs, &exits.uid, 1);
    assert_eq!(ev.len(), 1, "{ev:#?}");
    assert_eq!(ev[0].kind, "process_exit");
    assert_eq!(ev[0].fields["reason"], "exited");
    assert_eq!(ev[0].fields["code"], "3");
    assert_eq!(ev[0].fields["pid"], exits_pid.to_string());
    assert_eq!(ev[0].fields["comm"], "python3");
    assert_eq!(figures(&ev[0]), (12, 3), "{:#?}", ev[0]);

    let ev = events_of(&obs, &killed.uid, 1);
    assert_eq!(ev.len(), 1, "{ev:#?}");
    assert_eq!(ev[0].kind, "process_exit");
    assert_eq!(ev[0].fields["reason"], "signaled");
    assert_eq!(ev[0].fields["signal_name"], "SIGTERM");
    assert_eq!(ev[0].fields["signal"], "15");
    assert_eq!(ev[0].fields["pid"], killed_pid.to_string());
    assert_eq!(figures(&ev[0]), (9, 2), "{:#?}", ev[0]);

    // The command line shows the same, replayed: one JSON object per event.
    let out = std::process::Command::new("timeout")
        .args(["5", observer_tests::observer::binary().to_str().unwrap()])
        .args([
            "events",
            "--replay",
            "--output",
            "json",
            "--server",
            &obs.grpc_addr,
        ])
        .output()
        .unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["workload"]["pod_uid"] == exits.uid.as_str())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["kind"], "process_exit");
    assert_eq!(lines[0]["fields"]["code"], "3");
    assert_eq!(lines[0]["figures_before"]["requests"], 12);
    assert_eq!(lines[0]["figures_before"]["errors"], 3);
}

/// A memory limit on a pod's container: cgroup v2 `memory.max` when the v2 hierarchy has the
/// memory controller, else a v1 memory cgroup the process is moved into. Removed on drop.
struct MemoryLimit {
    v1_dir: Option<PathBuf>,
}

impl MemoryLimit {
    fn v2_available() -> bool {
        fs::read_to_string(cgroup2_root().join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|c| c == "memory")
    }

    /// Limits `pod`'s container to `bytes` (v2), or prepares a v1 cgroup with that limit.
    fn new(pod: &Pod, bytes: u64) -> MemoryLimit {
        if Self::v2_available() {
            // Enable the controller from the root down to the pod (none of these cgroups has
            // processes of its own), then limit the container.
            let root = cgroup2_root();
            let rel = pod.pod_dir.strip_prefix(&root).unwrap().to_path_buf();
            let mut dir = root.clone();
            fs::write(dir.join("cgroup.subtree_control"), "+memory").unwrap();
            for c in rel.components() {
                dir = dir.join(c);
                fs::write(dir.join("cgroup.subtree_control"), "+memory").unwrap();
            }
            fs::write(pod.cgroup.join("memory.max"), bytes.to_string()).unwrap();
            let _ = fs::write(pod.cgroup.join("memory.swap.max"), "0");
            return MemoryLimit { v1_dir: None };
        }
        let dir = PathBuf::from(format!("/sys/fs/cgroup/memory/obs-oom-{}", random_hex(8)));
        fs::create_dir(&dir).expect("the v1 memory controller at /sys/fs/cgroup/memory");
        fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string()).unwrap();
        let _ = fs::write(dir.join("memory.memsw.limit_in_bytes"), bytes.to_string());
        MemoryLimit { v1_dir: Some(dir) }
    }

    /// Puts `pid` under the limit (v1 only; under v2 it is there by being in the pod).
    fn enter(&self, pid: u32) {
        if let Some(d) = &self.v1_dir {
            fs::write(d.join("cgroup.procs"), pid.to_string()).unwrap();
        }
    }
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        if let Some(d) = &self.v1_dir {
            for _ in 0..100 {
                if fs::remove_dir(d).is_ok() || !d.exists() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[test]
fn oom_kill_of_a_pods_main_process() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let obs = Observer::start(&[]).unwrap();
    let mut pod = Pod::new(&bridge).unwrap();
    let dir = TempDir::new("obs-oom").unwrap();
    let go = dir.join("go");
    let limit = MemoryLimit::new(&pod, 48 << 20);
    let pid = pod.spawn_python(HOG, &[&go]).unwrap();
    limit.enter(pid);
    fs::write(&go, "").unwrap();

    let s = obs
        .scrape_until(Duration::from_secs(30), |s| {
            pod_value(s, "observer_container_exits_total", &pod.uid, &[]) >= 1.0
        })
        .unwrap();
    assert_eq!(
        pod_value(&s, "observer_container_oom_kills_total", &pod.uid, &[]),
        1.0
    );
    assert_eq!(
        pod_value(
            &s,
            "observer_container_exits_total",
            &pod.uid,
            &[("reason", "oom_killed")]
        ),
        1.0
    );
    assert_eq!(
        pod_value(&s, "observer_container_exits_total", &pod.uid, &[]),
        1.0
    );

    let ev = events_of(&obs, &pod.uid, 2);
    let kinds: Vec<&str> = ev.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["oom_kill", "process_exit"], "{ev:#?}");
    for e in &ev {
        assert_eq!(e.fields["pid"], pid.to_string());
        assert_eq!(e.fields["comm"], "python3");
        // The pod served nothing: its figures are there, and zero.
        assert_eq!(figures(e), (0, 0));
    }
    assert_eq!(ev[1].fields["reason"], "oom_killed");
    drop(pod);
    drop(limit);
}

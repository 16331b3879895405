//! The service topology, exact against what the test drove: a three-tier chain of simulated pods
//! (frontend → api → backend, real HTTP servers calling each other over keep-alive connections),
//! a load generator pod with a known number of requests, and one call from the frontend to a
//! server outside the pods (on the host, at the test bridge's gateway address).
//!
//! Every pod runs Debian's python3 under its own executable name (a symlink), so each tier has
//! its own `service_name` and the edges are told apart by the service-graph labels alone. The
//! edges are read through `/metrics` (Tempo's service-graph families, TCP per edge) and through
//! the gRPC API's `GetTopology`.

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    time::Duration,
};

use observer_tests::{
    metrics::Sample, net::Bridge, observer::Observer, pod::Pod, require_root, TempDir,
};

const PORT: u16 = 8080;
const OK: usize = 20;
const FAIL: usize = 5;

/// A tier: answers /ok and /fail by calling the next tier with the same path (keep-alive, one
/// connection per thread) and passing its status on; without a next tier /ok is 200 and /fail
/// 500. /ext calls the external server once and answers 200. Args: port, next (`host:port` or
/// `-`), external (`host:port` or `-`).
const TIER: &str = r#"
import http.client, http.server, sys, threading
port, nxt, ext = int(sys.argv[1]), sys.argv[2], sys.argv[3]
local = threading.local()

def call(target, path):
    conn = getattr(local, target, None)
    if conn is None:
        host, p = target.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(p), timeout=10)
        setattr(local, target, conn)
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    return r.status

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.path == "/ext" and ext != "-":
            call(ext, "/ext")
            code = 200
        elif nxt != "-":
            code = call(nxt, self.path)
        else:
            code = 200 if self.path in ("/ok", "/ext") else 500
        body = b"done\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.ThreadingHTTPServer(("0.0.0.0", port), H).serve_forever()
"#;

/// The load: OK × /ok, FAIL × /fail, one /ext, on one keep-alive connection; prints statuses,
/// then the seconds the requests took on its clock. Before that, one connect to a closed port of
/// the host given as fourth argument (refused).
const LOAD: &str = r#"
import http.client, socket, sys, time
host, ok, fail, refuse = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
try:
    socket.create_connection((refuse, 8081), timeout=5)
except ConnectionRefusedError:
    pass
c = http.client.HTTPConnection(host, 8080, timeout=20)
seen = {}
t0 = time.monotonic()
for path in ["/ok"] * ok + ["/fail"] * fail + ["/ext"]:
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    seen[r.status] = seen.get(r.status, 0) + 1
elapsed = time.monotonic() - t0
print(" ".join(f"{k}:{v}" for k, v in sorted(seen.items())))
print(elapsed)
"#;

/// A host process, stopped when dropped.
struct HostProcess(Child);

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `/usr/bin/python3` under the executable name `name` (the workload's `service_name`).
fn python_as(dir: &TempDir, name: &str) -> String {
    let path = dir.join(name);
    std::os::unix::fs::symlink("/usr/bin/python3", &path).expect("symlink");
    path
}

/// Service-graph samples keyed by (client, server, connection_type).
fn graph(samples: &[Sample], name: &str) -> BTreeMap<(String, String, String), f64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name) {
        let get = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        *out.entry((get("client"), get("server"), get("connection_type")))
            .or_insert(0.0) += s.value;
    }
    out
}

#[test]
fn three_tier_chain_gives_exactly_the_expected_edges() {
    require_root();
    let dir = TempDir::new("topology").unwrap();
    let bridge = Bridge::new().unwrap();
    let gateway = bridge.gateway();
    let ext_port = observer_tests::observer::free_port();
    let ext_script = dir.write("ext.py", TIER).unwrap();
    let ext_exe = python_as(&dir, "outside");
    let _ext = HostProcess(
        Command::new(&ext_exe)
            .args([&ext_script, &ext_port.to_string(), "-", "-"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("external server"),
    );

    let mut backend = Pod::new(&bridge).unwrap();
    let mut api = Pod::new(&bridge).unwrap();
    let mut frontend = Pod::new(&bridge).unwrap();
    let load = Pod::new(&bridge).unwrap();
    let tier = dir.write("tier.py", TIER).unwrap();
    let obs = Observer::start(&["--probes", "http,tcp"]).unwrap();

    let exe = python_as(&dir, "backend");
    backend.spawn(&exe, &[&tier, "8080", "-", "-"]).unwrap();
    backend.wait_listening(PORT).unwrap();
    let exe = python_as(&dir, "api");
    let next = format!("{}:{PORT}", backend.ip);
    api.spawn(&exe, &[&tier, "8080", &next, "-"]).unwrap();
    api.wait_listening(PORT).unwrap();
    let exe = python_as(&dir, "frontend");
    let next = format!("{}:{PORT}", api.ip);
    let ext = format!("{gateway}:{ext_port}");
    let cmd = format!(
        "exec {exe} {tier} 8080 {next} {ext} 2>{}",
        dir.join("frontend.err")
    );
    frontend.spawn("sh", &["-c", &cmd]).unwrap();
    frontend.wait_listening(PORT).unwrap();
    // Let a cgroup walk find the pods and their addresses (every 2 s).
    std::thread::sleep(Duration::from_secs(3));

    let exe = python_as(&dir, "loadgen");
    let script = dir.write("load.py", LOAD).unwrap();
    let out = load
        .run(
            &exe,
            &[
                &script,
                &frontend.ip,
                &OK.to_string(),
                &FAIL.to_string(),
                &backend.ip,
            ],
        )
        .unwrap_or_else(|e| {
            let err = std::fs::read_to_string(dir.join("frontend.err")).unwrap_or_default();
            panic!("{e}\nfrontend stderr:\n{err}")
        });
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = stdout.lines();
    let seen = lines.next().unwrap_or_default().trim().to_string();
    let elapsed: f64 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("the load's elapsed seconds");
    // The client's pod has no process left: two cgroup walks (every 2 s) find it empty, and the
    // server's view of its requests still names it.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        seen,
        format!("200:{} 500:{FAIL}", OK + 1),
        "the load's own statuses"
    );

    let ext_node = format!("{gateway}:{ext_port}");
    let want: BTreeMap<(String, String, String), f64> = [
        (("loadgen", "frontend", ""), (OK + FAIL + 1) as f64),
        (("frontend", "api", ""), (OK + FAIL) as f64),
        (("api", "backend", ""), (OK + FAIL) as f64),
        (("frontend", ext_node.as_str(), "virtual_node"), 1.0),
    ]
    .into_iter()
    .map(|((c, s, t), v)| ((c.to_string(), s.to_string(), t.to_string()), v))
    .collect();
    let want_failed: BTreeMap<(String, String, String), f64> = want
        .keys()
        .map(|k| {
            let failed = if k.2.is_empty() { FAIL as f64 } else { 0.0 };
            (k.clone(), failed)
        })
        .collect();
    let ours =
        |g: BTreeMap<(String, String, String), f64>| -> BTreeMap<(String, String, String), f64> {
            // Only edges among this test's workloads (the host has its own traffic).
            g.into_iter()
                .filter(|((c, s, _), _)| {
                    ["loadgen", "frontend", "api", "backend"].contains(&c.as_str())
                        || [ext_node.as_str()].contains(&s.as_str())
                })
                .collect()
        };
    let samples = obs
        .scrape_until(Duration::from_secs(10), |s| {
            ours(graph(s, "traces_service_graph_request_total")) == want
        })
        .unwrap();
    assert_eq!(
        ours(graph(&samples, "traces_service_graph_request_total")),
        want
    );
    assert_eq!(
        ours(graph(&samples, "traces_service_graph_request_failed_total")),
        want_failed
    );
    // Both latencies of every edge between pods.
    let client = graph(
        &samples,
        "traces_service_graph_request_client_seconds_count",
    );
    let server = graph(
        &samples,
        "traces_service_graph_request_server_seconds_count",
    );
    for ((c, s, t), n) in &want {
        let key = (c.clone(), s.clone(), t.clone());
        assert_eq!(
            client.get(&key),
            Some(n),
            "client-side latency count of {key:?}"
        );
        let server_count = if t.is_empty() { Some(n) } else { None };
        assert_eq!(
            server.get(&key),
            server_count,
            "server-side latency count of {key:?}"
        );
    }
    // The sums, ordered where one thread did both in sequence (so no scheduling between two
    // processes can turn them): a tier answers each request after its own call to the next
    // tier returned, and the load's requests all fall within its own clock.
    let client_sum = graph(&samples, "traces_service_graph_request_client_seconds_sum");
    let server_sum = graph(&samples, "traces_service_graph_request_server_seconds_sum");
    let edge = |c: &str, s: &str, t: &str| (c.to_string(), s.to_string(), t.to_string());
    let loadgen = client_sum[&edge("loadgen", "frontend", "")];
    assert!(
        loadgen > 0.0 && loadgen <= elapsed,
        "the load's requests took {loadgen} s by the observer, {elapsed} s by its own clock"
    );
    let frontend_out = client_sum[&edge("frontend", "api", "")]
        + client_sum[&edge("frontend", &ext_node, "virtual_node")];
    let frontend_in = server_sum[&edge("loadgen", "frontend", "")];
    assert!(
        frontend_in >= frontend_out && frontend_out > 0.0,
        "frontend answered in {frontend_in} s, its calls took {frontend_out} s"
    );
    let api_out = client_sum[&edge("api", "backend", "")];
    let api_in = server_sum[&edge("frontend", "api", "")];
    assert!(
        api_in >= api_out && api_out > 0.0,
        "api answered in {api_in} s, its calls took {api_out} s"
    );
    // TCP per edge: one keep-alive connection on each edge (one handler thread per incoming
    // connection, one outgoing connection per thread), and the refused connect.
    let mut want_conns = want.clone();
    want_conns.values_mut().for_each(|v| *v = 1.0);
    let refused_key = ("loadgen".to_string(), "backend".to_string(), String::new());
    assert_eq!(
        ours(graph(&samples, "observer_tcp_edge_connections_total")),
        {
            let mut w = want_conns.clone();
            w.insert(refused_key.clone(), 0.0);
            w
        }
    );
    let failures = ours(graph(&samples, "observer_tcp_edge_connect_failures_total"));
    assert_eq!(
        failures.get(&refused_key),
        Some(&1.0),
        "the refused connect"
    );
    assert_eq!(
        failures.values().sum::<f64>(),
        1.0,
        "no other failed connect"
    );

    // The same edges through the gRPC API (a real tonic client): requests and errors per edge.
    let rt = observer_tests::grpc::runtime();
    let topo = rt.block_on(async {
        let mut c = observer_tests::grpc::connect(&obs.grpc_addr).await.unwrap();
        c.get_topology(observer_tests::grpc::pb::GetTopologyRequest {
            window_seconds: None,
        })
        .await
        .unwrap()
        .into_inner()
    });
    let name = |id: &str| -> String {
        topo.nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.name.clone())
            .unwrap_or_default()
    };
    let mut api_edges = BTreeMap::new();
    let mut api_errors = BTreeMap::new();
    for e in &topo.edges {
        let total = e.total.unwrap_or_default();
        if total.requests == 0 {
            continue; // TCP-only edges (the refused connect)
        }
        let key = (name(&e.client), name(&e.server), e.connection_type.clone());
        api_edges.insert(key.clone(), total.requests as f64);
        api_errors.insert(key, total.errors as f64);
    }
    assert_eq!(ours(api_edges), want, "edges through GetTopology");
    assert_eq!(
        ours(api_errors),
        want_failed,
        "errors per edge through GetTopology"
    );
    obs.stop().unwrap();
}

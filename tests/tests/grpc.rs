//! The gRPC query API (observer.v1.Observer) and its clients, exact against what the test drove:
//! a Python HTTP server pod and a client pod that makes a known number of requests, whose own
//! tally of statuses is the ground truth.
//!
//! Clients: a tonic client generated from the same .proto (observer_tests::grpc), Debian's
//! python3 with grpcio (stubs made at test time by Debian's protoc, the reflection and health
//! protos from Debian's grpc-proto), and the observer's own CLI (`top`, `topology`, `tail`).

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use observer_tests::{
    grpc::{connect, connect_small_windows, pb, runtime},
    metrics::sum,
    net::Bridge,
    observer::{binary, Observer},
    pod::Pod,
    require_root, scaled, TempDir,
};
use tonic::Code;

const PORT: u16 = 8080;

/// Keep-alive HTTP/1.1 server (TCP_NODELAY); the status comes from the path: /users 200,
/// /orders 201, /missing 404, /fail 500, anything else 200. Any method; a request body is read.
const SERVER: &str = r#"
import http.server, sys

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *a):
        pass

    def serve(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        code = {"/users": 200, "/orders": 201, "/missing": 404, "/fail": 500}.get(self.path, 200)
        body = b"x\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = serve

class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

S(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"#;

/// Keep-alive client: args host, port, connections, plan file (JSON list of [method, path]);
/// request i goes on connection i % connections, in order. Prints {status: count} as JSON.
const CLIENT: &str = r#"
import http.client, json, sys, threading

host, port, nconn = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
plan = json.load(open(sys.argv[4]))
out, lock = {}, threading.Lock()

def worker(k):
    c = http.client.HTTPConnection(host, port, timeout=30)
    for method, path in plan[k::nconn]:
        c.request(method, path, body=b"" if method in ("POST", "PUT") else None)
        r = c.getresponse()
        r.read()
        with lock:
            out[str(r.status)] = out.get(str(r.status), 0) + 1
    c.close()

threads = [threading.Thread(target=worker, args=(k,)) for k in range(nconn)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(out, sort_keys=True))
"#;

/// `/usr/bin/python3` under the executable name `name` (the workload's `service_name`).
fn python_as(dir: &TempDir, name: &str) -> String {
    let path = dir.join(name);
    std::os::unix::fs::symlink("/usr/bin/python3", &path).expect("symlink");
    path
}

/// A server pod, a client pod and an observer.
struct Setup {
    dir: TempDir,
    _bridge: Bridge,
    server: Pod,
    client: Pod,
    obs: Observer,
}

fn setup(name: &str) -> Setup {
    require_root();
    let dir = TempDir::new(name).unwrap();
    let bridge = Bridge::new().unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let client = Pod::new(&bridge).unwrap();
    let script = dir.write("server.py", SERVER).unwrap();
    let exe = python_as(&dir, "grpcsrv");
    server.spawn(&exe, &[&script, &PORT.to_string()]).unwrap();
    server.wait_listening(PORT).unwrap();
    // Started once the server runs: a pod cgroup the observer first finds empty has no
    // process to name its workload after (the client pod's service_name is not checked).
    let obs = Observer::start(&["--probes", "tcp,http"]).unwrap();
    Setup {
        dir,
        _bridge: bridge,
        server,
        client,
        obs,
    }
}

impl Setup {
    /// Runs `plan` from the client pod over `conns` connections; returns its status tally.
    fn drive(&self, plan: &[(&str, &str)], conns: usize) -> BTreeMap<String, u64> {
        let plan_json =
            serde_json::to_string(&plan.iter().map(|(m, p)| [*m, *p]).collect::<Vec<_>>()).unwrap();
        let file = self
            .dir
            .write(
                &format!("plan-{}.json", observer_tests::random_hex(6)),
                plan_json,
            )
            .unwrap();
        let script = self.dir.write("client.py", CLIENT).unwrap();
        let exe = self.dir.join("grpcload");
        if !std::path::Path::new(&exe).exists() {
            python_as(&self.dir, "grpcload");
        }
        let out = self
            .client
            .run(
                &exe,
                &[
                    &script,
                    &self.server.ip,
                    &PORT.to_string(),
                    &conns.to_string(),
                    &file,
                ],
            )
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn grpc(&self) -> &str {
        &self.obs.grpc_addr
    }
}

fn plan_30_ok_10_fail() -> Vec<(&'static str, &'static str)> {
    let mut plan = vec![("GET", "/users"); 30];
    plan.extend(vec![("GET", "/fail"); 10]);
    plan
}

fn latency_req(pod_uid: &str) -> pb::GetLatencyRequest {
    pb::GetLatencyRequest {
        selector: Some(pb::get_latency_request::Selector::PodUid(
            pod_uid.to_string(),
        )),
        ..Default::default()
    }
}

/// Per-status request counts of a workload's server series.
fn by_status(w: &pb::WorkloadLatency) -> BTreeMap<u32, u64> {
    let mut m = BTreeMap::new();
    for s in &w.server {
        *m.entry(s.status).or_default() += s.count;
    }
    m
}

/// Polls GetLatency until the pod's server side has `n` requests (figures arrive within ~0.2 s).
async fn latency_when(
    c: &mut observer_tests::grpc::ObserverClient<tonic::transport::Channel>,
    pod_uid: &str,
    n: u64,
) -> pb::WorkloadLatency {
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    loop {
        let got = c.get_latency(latency_req(pod_uid)).await;
        if let Ok(r) = &got {
            let w = &r.get_ref().workloads;
            let total: u64 = w.iter().map(|w| w.total.unwrap_or_default().requests).sum();
            if (w.len() == 1 && total == n) || Instant::now() > deadline {
                assert_eq!(w.len(), 1, "one workload for pod {pod_uid}: {w:?}");
                return w[0].clone();
            }
        } else if Instant::now() > deadline {
            panic!("GetLatency for {pod_uid}: {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn latency_network_and_workloads_are_exact() {
    let s = setup("grpc-exact");
    let truth = s.drive(&plan_30_ok_10_fail(), 2);
    assert_eq!(
        truth,
        BTreeMap::from([("200".into(), 30), ("500".into(), 10)]),
        "the client's own tally"
    );
    runtime().block_on(async {
        let mut c = connect(s.grpc()).await.unwrap();

        // GetLatency: exact counts per status, route and method; errors; APDEX; the window.
        let w = latency_when(&mut c, &s.server.uid, 40).await;
        assert_eq!(w.workload.as_ref().unwrap().service_name, "grpcsrv");
        assert_eq!(by_status(&w), BTreeMap::from([(200, 30), (500, 10)]));
        for series in &w.server {
            assert_eq!(series.method, "GET");
            let route = if series.status == 200 {
                "/users"
            } else {
                "/fail"
            };
            assert_eq!(series.route, route);
            assert_eq!(
                series.errors,
                if series.status == 500 {
                    series.count
                } else {
                    0
                }
            );
            let h = series.histogram.as_ref().unwrap();
            assert_eq!(h.count, series.count);
            assert_eq!(h.buckets.last().unwrap().cumulative_count, series.count);
            assert!(h.buckets.last().unwrap().le.is_infinite());
            let l = series.latency.as_ref().unwrap();
            assert!(
                l.p50_seconds <= l.p95_seconds && l.p95_seconds <= l.p99_seconds,
                "{l:?}"
            );
            assert!(l.mean_seconds > 0.0);
        }
        let total = w.total.unwrap();
        assert_eq!((total.requests, total.errors), (40, 10));
        assert!((total.error_rate - 0.25).abs() < 1e-9);
        let window = w.window.unwrap();
        assert_eq!(
            (window.requests, window.errors),
            (40, 10),
            "the observer is younger than the window"
        );
        assert!(window.requests_per_second > 0.0);
        let a = w.apdex.unwrap();
        assert_eq!(a.satisfied + a.tolerating + a.frustrated, 40);
        assert!(a.frustrated >= 10, "5xx are frustrated: {a:?}");
        assert_eq!(a.threshold_seconds, 0.5);
        assert_eq!(w.active_clients, 1);

        // The client pod's side of the same requests.
        let deadline = Instant::now() + scaled(Duration::from_secs(10));
        let client_status = loop {
            let r = c
                .get_latency(latency_req(&s.client.uid))
                .await
                .unwrap()
                .into_inner();
            let mut client_status = BTreeMap::new();
            for series in r.workloads.iter().flat_map(|w| &w.client) {
                assert_eq!(
                    (series.server_address.as_str(), series.server_port),
                    (s.server.ip.as_str(), PORT as u32)
                );
                *client_status.entry(series.status).or_insert(0u64) += series.count;
            }
            if client_status.values().sum::<u64>() == 40 || Instant::now() > deadline {
                break client_status;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(client_status, BTreeMap::from([(200, 30), (500, 10)]));

        // GetNetwork: the client pod's calls to the server's address, its TCP connections.
        let net = c
            .get_network(pb::GetNetworkRequest {
                selector: Some(pb::get_network_request::Selector::PodUid(
                    s.client.uid.clone(),
                )),
                namespace: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(net.workloads.len(), 1);
        let n = &net.workloads[0];
        let peers: Vec<(String, u32, u64, u64)> = n
            .http_peers
            .iter()
            .map(|p| {
                (
                    p.server_address.clone(),
                    p.server_port,
                    p.requests,
                    p.errors,
                )
            })
            .collect();
        assert_eq!(peers, vec![(s.server.ip.clone(), PORT as u32, 40, 10)]);
        let tcp = n.tcp.clone().expect("TCP figures of the client pod");
        assert_eq!(
            tcp.opened.unwrap().outbound,
            2,
            "two keep-alive connections"
        );
        assert!(tcp.sent_bytes > 0 && tcp.received_bytes > 0);
        let edge = n
            .edges
            .iter()
            .find(|e| e.total.unwrap_or_default().requests == 40);
        assert!(
            edge.is_some(),
            "an edge with the 40 requests: {:?}",
            n.edges
        );

        // GetNetwork by service name finds the server pod.
        let by_name = c
            .get_network(pb::GetNetworkRequest {
                selector: Some(pb::get_network_request::Selector::ServiceName(
                    "grpcsrv".into(),
                )),
                namespace: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(by_name
            .workloads
            .iter()
            .any(|w| w.workload.as_ref().unwrap().pod_uid == s.server.uid));

        // ListWorkloads: the server's row.
        let list = c
            .list_workloads(pb::ListWorkloadsRequest {
                window_seconds: Some(60),
            })
            .await
            .unwrap()
            .into_inner();
        let row = list
            .workloads
            .iter()
            .find(|w| w.workload.as_ref().unwrap().pod_uid == s.server.uid)
            .expect("the server pod is listed");
        let t = row.total.unwrap();
        assert_eq!((t.requests, t.errors), (40, 10));
        assert_eq!(row.window.unwrap().requests, 40);
        assert_eq!(row.active_clients, 1);
        let crow = list
            .workloads
            .iter()
            .find(|w| w.workload.as_ref().unwrap().pod_uid == s.client.uid)
            .expect("the client pod is listed");
        assert_eq!(crow.client_total.unwrap().requests, 40);
        assert_eq!(crow.total.unwrap().requests, 0);

        // GetTopology: the client → server edge, counted once.
        let topo = c
            .get_topology(pb::GetTopologyRequest {
                window_seconds: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(topo.window.unwrap().requested_seconds, 60);
        let node = |id: &str| topo.nodes.iter().find(|n| n.id == id).cloned().unwrap();
        let edges: Vec<&pb::Edge> = topo
            .edges
            .iter()
            .filter(|e| {
                node(&e.client)
                    .workload
                    .is_some_and(|w| w.pod_uid == s.client.uid)
            })
            .collect();
        assert_eq!(edges.len(), 1, "{edges:?}");
        let e = edges[0];
        let server = node(&e.server);
        let server_addr = format!("{}:{PORT}", s.server.ip);
        assert!(
            server
                .workload
                .as_ref()
                .is_some_and(|w| w.pod_uid == s.server.uid)
                || server.address == server_addr,
            "{server:?}"
        );
        let et = e.total.unwrap();
        assert_eq!((et.requests, et.errors), (40, 10));
        assert_eq!(e.window.unwrap().requests, 40);
        assert_eq!(e.client_latency.unwrap().count, 40);
        let tcp = e.tcp.unwrap();
        assert_eq!(tcp.connections, 2, "two keep-alive connections: {tcp:?}");
        assert!(
            tcp.bytes_client_to_server > 0 && tcp.bytes_server_to_client > 0,
            "{tcp:?}"
        );
    });

    // The CLI, as a script would use it.
    let cli = |args: &[&str]| {
        let out = Command::new(binary())
            .args(args)
            .args(["--server", s.grpc(), "--output", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let top = cli(&["top"]);
    let rows = top["workloads"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["workload"]["pod_uid"] == s.server.uid.as_str())
        .expect("server in top");
    assert_eq!(row["workload"]["service_name"], "grpcsrv");
    assert_eq!(row["total"]["requests"], 40);
    assert_eq!(row["total"]["errors"], 10);
    let topo = cli(&["topology", "--window", "30"]);
    assert_eq!(topo["window_seconds"], 30);
    let edges: Vec<&serde_json::Value> = topo["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["client"]["workload"]["pod_uid"] == s.client.uid.as_str())
        .collect();
    assert_eq!(edges.len(), 1, "{edges:?}");
    assert_eq!(edges[0]["total"]["requests"], 40);
    let server_addr = format!("{}:{PORT}", s.server.ip);
    assert!(
        edges[0]["server"]["workload"]["pod_uid"] == s.server.uid.as_str()
            || edges[0]["server"]["address"] == server_addr.as_str(),
        "{}",
        edges[0]
    );
    // And for people: an aligned table naming the service.
    let out = Command::new(binary())
        .args(["top", "--server", s.grpc()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let header = text
        .lines()
        .find(|l| l.starts_with("NAMESPACE"))
        .expect("header");
    for col in ["TPS", "ERROR%", "MEAN(ms)", "P99(ms)", "APDEX", "CLIENTS"] {
        assert!(header.contains(col), "{header}");
    }
    let line = text
        .lines()
        .find(|l| l.contains(&s.server.uid))
        .expect("server row");
    assert!(line.contains("grpcsrv") && line.contains("25.0"), "{line}");
}

#[test]
fn stream_delivers_every_request_in_order() {
    let s = setup("grpc-stream");
    let plan: Vec<(&str, &str)> = [
        ("GET", "/users"),
        ("POST", "/orders"),
        ("GET", "/missing"),
        ("DELETE", "/users"),
        ("PUT", "/fail"),
    ]
    .into_iter()
    .cycle()
    .take(20)
    .collect();
    let status = |p: &str| match p {
        "/users" => 200,
        "/orders" => 201,
        "/missing" => 404,
        _ => 500,
    };
    let rt = runtime();
    let (mut server_stream, mut client_stream) = rt.block_on(async {
        let mut c = connect(s.grpc()).await.unwrap();
        let server = c
            .stream_requests(pb::StreamRequestsRequest {
                pod_uid: s.server.uid.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let client = c
            .stream_requests(pb::StreamRequestsRequest {
                pod_uid: s.client.uid.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        (server, client)
    });
    // One connection: the requests complete in plan order.
    let truth = s.drive(&plan, 1);
    assert_eq!(truth.values().sum::<u64>(), 20);
    rt.block_on(async {
        for (side, stream, peer, peer_port) in [
            (pb::Side::Server, &mut server_stream, &s.client.ip, None),
            (
                pb::Side::Client,
                &mut client_stream,
                &s.server.ip,
                Some(PORT as u32),
            ),
        ] {
            let mut got = Vec::new();
            while got.len() < plan.len() {
                let msg = tokio::time::timeout(scaled(Duration::from_secs(10)), stream.message())
                    .await
                    .unwrap_or_else(|_| panic!("{side:?}: {} of 20 requests came", got.len()))
                    .unwrap()
                    .unwrap();
                match msg.event.unwrap() {
                    pb::request_event::Event::Request(r) => got.push(r),
                    pb::request_event::Event::Missed(m) => panic!("{side:?}: missed {}", m.count),
                }
            }
            for (r, (method, path)) in got.iter().zip(&plan) {
                assert_eq!(pb::Side::try_from(r.side), Ok(side));
                assert_eq!(
                    (r.method.as_str(), r.route.as_str(), r.status),
                    (*method, *path, status(path)),
                    "{side:?}: {r:?}"
                );
                assert_eq!(r.error_type, "");
                assert_eq!(&r.peer_address, peer);
                if let Some(p) = peer_port {
                    assert_eq!(r.peer_port, p);
                }
                assert!(r.duration_seconds > 0.0 && r.duration_seconds < 10.0);
                assert!(r.time_unix_nano > 0);
                let w = r.workload.clone().unwrap();
                if side == pb::Side::Server {
                    assert_eq!(
                        (&w.pod_uid, w.service_name.as_str()),
                        (&s.server.uid, "grpcsrv")
                    );
                } else {
                    assert_eq!(&w.pod_uid, &s.client.uid);
                }
            }
            let times: Vec<i64> = got.iter().map(|r| r.time_unix_nano).collect();
            assert!(
                times.windows(2).all(|w| w[0] <= w[1]),
                "in order of completion"
            );
        }
    });

    // Server-side filters: status and route select exactly their requests; a latency floor
    // above anything here selects none. The CLI's tail prints them as JSON lines.
    let tail = Command::new("timeout")
        .arg("30")
        .arg(binary())
        .args([
            "tail",
            "--server",
            s.grpc(),
            "--pod-uid",
            &s.server.uid,
            "--status",
            "404",
            "--count",
            "4",
            "--output",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    rt.block_on(async {
        let mut c = connect(s.grpc()).await.unwrap();
        let mut users = c
            .stream_requests(pb::StreamRequestsRequest {
                pod_uid: s.server.uid.clone(),
                route: "/users".into(),
                side: pb::Side::Server as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut slow = c
            .stream_requests(pb::StreamRequestsRequest {
                pod_uid: s.server.uid.clone(),
                min_latency_ms: 5000.0,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        // Give the CLI time to subscribe.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let again = s.drive(&plan, 1);
        assert_eq!(again.values().sum::<u64>(), 20);
        let mut n = 0;
        while n < 8 {
            let msg = tokio::time::timeout(scaled(Duration::from_secs(10)), users.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let pb::request_event::Event::Request(r) = msg.event.unwrap() else {
                panic!("missed")
            };
            assert_eq!((r.route.as_str(), r.status), ("/users", 200));
            n += 1;
        }
        let none = tokio::time::timeout(Duration::from_millis(500), slow.message()).await;
        assert!(none.is_err(), "nothing takes 5 s here: {none:?}");
    });
    let out = tail.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    for l in &lines {
        assert_eq!(
            (
                l["method"].as_str(),
                l["route"].as_str(),
                l["status"].as_u64()
            ),
            (Some("GET"), Some("/missing"), Some(404))
        );
        assert_eq!(l["side"], "server");
    }
}

#[test]
fn an_unread_stream_does_not_slow_the_observer() {
    let s = setup("grpc-unread");
    const N: u64 = 6000;
    let rt = runtime();
    // A reader with small flow-control windows that does not read while the load runs.
    let mut stream = rt.block_on(async {
        let mut c = connect_small_windows(s.grpc()).await.unwrap();
        c.stream_requests(pb::StreamRequestsRequest {
            pod_uid: s.server.uid.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
    });
    let plan = vec![("GET", "/users"); N as usize];
    let t0 = Instant::now();
    let truth = s.drive(&plan, 4);
    let took = t0.elapsed();
    assert_eq!(truth, BTreeMap::from([("200".into(), N)]));
    // The figures are exact all the same.
    let pod = [("k8s_pod_uid", s.server.uid.as_str())];
    let samples = s
        .obs
        .scrape_until(Duration::from_secs(10), |m| {
            sum(m, "http_server_request_duration_seconds_count", &pod) == N as f64
        })
        .unwrap();
    assert_eq!(
        sum(&samples, "http_server_request_duration_seconds_count", &pod),
        N as f64
    );
    let cpod = [("k8s_pod_uid", s.client.uid.as_str())];
    assert_eq!(
        sum(
            &samples,
            "http_client_request_duration_seconds_count",
            &cpod
        ),
        N as f64
    );
    eprintln!("{N} requests in {took:?} with an unread stream open");

    // Reading now: what is delivered plus what is reported missed covers every request.
    let (delivered, missed) = rt.block_on(async {
        let (mut delivered, mut missed) = (0u64, 0u64);
        while let Ok(Ok(Some(msg))) =
            tokio::time::timeout(Duration::from_secs(2), stream.message()).await
        {
            match msg.event.unwrap() {
                pb::request_event::Event::Request(r) => {
                    assert_eq!(r.workload.unwrap().pod_uid, s.server.uid);
                    delivered += 1;
                }
                pb::request_event::Event::Missed(m) => missed += m.count,
            }
        }
        (delivered, missed)
    });
    eprintln!("delivered {delivered}, missed {missed}");
    assert!(
        missed > 0,
        "the reader fell behind and is told so (delivered {delivered})"
    );
    assert!(delivered < N);
    assert!(
        delivered + missed >= N,
        "delivered {delivered} + missed {missed} cover the {N} requests"
    );
}

#[test]
fn bad_requests_get_invalid_argument_or_not_found() {
    require_root();
    let obs = Observer::start(&["--probes", "http"]).unwrap();
    runtime().block_on(async {
        let mut c = connect(&obs.grpc_addr).await.unwrap();
        let uid = "0f3c1e2a-5b6d-4e7f-8a9b-0c1d2e3f4a5b";
        let e = c.get_latency(latency_req(uid)).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().contains(uid), "{e:?}");
        let e = c
            .get_network(pb::GetNetworkRequest {
                selector: Some(pb::get_network_request::Selector::ServiceName(
                    "no-such-service".into(),
                )),
                namespace: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().contains("no-such-service"), "{e:?}");
        let e = c
            .get_latency(pb::GetLatencyRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        for w in [4, 901] {
            let mut r = latency_req(uid);
            r.window_seconds = Some(w);
            let e = c.get_latency(r).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains("between 5 and 900"), "{e:?}");
            let e = c
                .get_topology(pb::GetTopologyRequest {
                    window_seconds: Some(w),
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            let e = c
                .list_workloads(pb::ListWorkloadsRequest {
                    window_seconds: Some(w),
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
        }
        for (r, needle) in [
            (
                pb::StreamRequestsRequest {
                    status: 700,
                    ..Default::default()
                },
                "100 to 599",
            ),
            (
                pb::StreamRequestsRequest {
                    status: 42,
                    ..Default::default()
                },
                "100 to 599",
            ),
            (
                pb::StreamRequestsRequest {
                    min_latency_ms: -1.0,
                    ..Default::default()
                },
                "0 or more",
            ),
            (
                pb::StreamRequestsRequest {
                    route: "users".into(),
                    ..Default::default()
                },
                "start with '/'",
            ),
            (
                pb::StreamRequestsRequest {
                    side: 9,
                    ..Default::default()
                },
                "Side",
            ),
        ] {
            let e = c.stream_requests(r).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains(needle), "{e:?}");
        }

        // StreamEvents: the probe states first.
        let mut ev = c
            .stream_events(pb::StreamEventsRequest { replay: false })
            .await
            .unwrap()
            .into_inner();
        loop {
            let e = tokio::time::timeout(Duration::from_secs(5), ev.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(e.kind, "probe_status", "{e:?}");
            assert!(e.time_unix_nano > 0);
            if e.fields.get("probe").map(String::as_str) == Some("http") {
                assert_eq!(
                    e.fields.get("up").map(String::as_str),
                    Some("true"),
                    "{e:?}"
                );
                break;
            }
        }
    });

    // The CLI: a bad invocation exits 2, an unreachable server 1, each with one line.
    let run = |args: &[&str]| Command::new(binary()).args(args).output().unwrap();
    for args in [
        vec!["top", "--window", "3"],
        vec!["tail", "--status", "700"],
        vec!["tail", "--min-latency-ms", "-5"],
        vec!["topology", "--output", "yaml"],
        vec!["top", "--bogus"],
    ] {
        let out = run(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run(&["top", "--server", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot reach") && err.contains("127.0.0.1:1"),
        "{err}"
    );
    let out = run(&["tail", "--server", &obs.grpc_addr, "--route", "users"]);
    assert_eq!(out.status.code(), Some(2), "the server's INVALID_ARGUMENT");
    assert!(String::from_utf8_lossy(&out.stderr).contains("start with '/'"));
}

/// grpcio client: args grpc address, stub dir, pod uid. Lists the services by reflection (v1
/// and v1alpha), checks health, and prints the pod's per-status counts from GetLatency.
const PY_CLIENT: &str = r#"
import json, sys
sys.path.insert(0, sys.argv[2])
import importlib.util, os
import grpc
from observer.v1 import observer_pb2 as pb


def load(name, rel):
    # The stubs' package `grpc` would shadow grpcio's: load them by path.
    spec = importlib.util.spec_from_file_location(name, os.path.join(sys.argv[2], rel))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


r1 = load("r1", "grpc/reflection/v1/reflection_pb2.py")
r1a = load("r1a", "grpc/reflection/v1alpha/reflection_pb2.py")
hp = load("hp", "grpc/health/v1/health_pb2.py")

ch = grpc.insecure_channel(sys.argv[1])
grpc.channel_ready_future(ch).result(timeout=10)
out = {}
for name, mod, path in [("v1", r1, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
                        ("v1alpha", r1a, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")]:
    call = ch.stream_stream(path, request_serializer=mod.ServerReflectionRequest.SerializeToString,
                            response_deserializer=mod.ServerReflectionResponse.FromString)
    resp = next(call(iter([mod.ServerReflectionRequest(list_services="")]), timeout=10))
    out[name] = sorted(s.name for s in resp.list_services_response.service)
check = ch.unary_unary("/grpc.health.v1.Health/Check", request_serializer=hp.HealthCheckRequest.SerializeToString,
                       response_deserializer=hp.HealthCheckResponse.FromString)
out["health"] = {s: hp.HealthCheckResponse.ServingStatus.Name(check(hp.HealthCheckRequest(service=s), timeout=10).status)
                 for s in ["", "observer.v1.Observer"]}
lat = ch.unary_unary("/observer.v1.Observer/GetLatency", request_serializer=pb.GetLatencyRequest.SerializeToString,
                     response_deserializer=pb.Latency.FromString)
r = lat(pb.GetLatencyRequest(pod_uid=sys.argv[3]), timeout=10)
counts = {}
for w in r.workloads:
    for s in w.server:
        counts[str(s.status)] = counts.get(str(s.status), 0) + s.count
out["counts"] = counts
out["window"] = r.window.requested_seconds
try:
    lat(pb.GetLatencyRequest(pod_uid="00000000-0000-4000-8000-000000000000"), timeout=10)
    out["unknown"] = "OK"
except grpc.RpcError as e:
    out["unknown"] = e.code().name
print(json.dumps(out, sort_keys=True))
"#;

#[test]
fn python_grpcio_client_and_reflection() {
    let s = setup("grpc-python");
    let truth = s.drive(&plan_30_ok_10_fail(), 2);
    assert_eq!(
        truth,
        BTreeMap::from([("200".into(), 30), ("500".into(), 10)])
    );
    // Wait until the observer has them all.
    runtime().block_on(async {
        let mut c = connect(s.grpc()).await.unwrap();
        latency_when(&mut c, &s.server.uid, 40).await;
    });
    let stubs = s.dir.join("stubs");
    std::fs::create_dir(&stubs).unwrap();
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let protoc = |include: &str, files: &[&str]| {
        let out = Command::new("protoc")
            .arg(format!("-I{include}"))
            .arg(format!("--python_out={stubs}"))
            .args(files)
            .output()
            .expect("protoc (Debian's protobuf-compiler)");
        assert!(
            out.status.success(),
            "protoc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    protoc(proto, &["observer/v1/observer.proto"]);
    protoc(
        "/usr/share/grpc-proto",
        &[
            "grpc/reflection/v1/reflection.proto",
            "grpc/reflection/v1alpha/reflection.proto",
            "grpc/health/v1/health.proto",
        ],
    );
    let script = s.dir.write("client.py", PY_CLIENT).unwrap();
    let out = Command::new("/usr/bin/python3")
        .args([&script, s.grpc(), &stubs, &s.server.uid])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for v in ["v1", "v1alpha"] {
        let services: Vec<&str> = got[v]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        for want in ["observer.v1.Observer", "grpc.health.v1.Health"] {
            assert!(services.contains(&want), "{v}: {services:?}");
        }
    }
    assert_eq!(
        got["health"],
        serde_json::json!({ "": "SERVING", "observer.v1.Observer": "SERVING" })
    );
    assert_eq!(got["counts"], serde_json::json!({ "200": 30, "500": 10 }));
    assert_eq!(got["window"], 60);
    assert_eq!(got["unknown"], "NOT_FOUND");
}

/// Holds 300 loopback TCP connections open for a second.
const MANY_CONNECTIONS: &str = r#"
import socket, time
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(512)
cs = [socket.create_connection(l.getsockname()) for _ in range(300)]
ss = [l.accept()[0] for _ in range(300)]
time.sleep(1)
"#;

#[test]
fn events_report_lost_records_as_they_happen() {
    require_root();
    // A connection table of 64 entries overflows with 300 connections (600 sockets).
    let obs = Observer::start(&["--probes", "tcp", "--conn-table-size", "64"]).unwrap();
    let rt = runtime();
    let event = rt.block_on(async {
        let mut c = connect(&obs.grpc_addr).await.unwrap();
        let mut ev = c
            .stream_events(pb::StreamEventsRequest { replay: false })
            .await
            .unwrap()
            .into_inner();
        // The poller takes its baseline within a second of the first subscriber.
        tokio::time::sleep(scaled(Duration::from_millis(2500))).await;
        let out = tokio::task::spawn_blocking(|| {
            Command::new("/usr/bin/python3")
                .args(["-c", MANY_CONNECTIONS])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + scaled(Duration::from_secs(10));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = tokio::time::timeout(left, ev.message())
                .await
                .expect("a records_lost event within 10 s")
                .unwrap()
                .unwrap();
            if e.kind == "records_lost"
                && e.fields.get("source").map(String::as_str) == Some("connection_table_full")
            {
                return e;
            }
            assert!(
                ["probe_status", "records_lost"].contains(&e.kind.as_str()),
                "{e:?}"
            );
        }
    });
    let increase: u64 = event.fields["increase"].parse().unwrap();
    let total: u64 = event.fields["total"].parse().unwrap();
    assert!(increase > 0 && total >= increase, "{event:?}");
    assert!(event.message.contains("connection_table_full"), "{event:?}");
    // The counter on /metrics is the same one.
    let samples = obs.scrape().unwrap();
    let lost = sum(
        &samples,
        "observer_events_lost_total",
        &[("source", "connection_table_full")],
    );
    assert!(
        lost >= total as f64,
        "/metrics {lost} < event total {total}"
    );
}

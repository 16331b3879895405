//! Privileged accuracy tests of HTTP/2 and gRPC capture (`--probes http2`): real servers and
//! clients in simulated pods, counts EXACT against each end's own record:
//! - nginx serving HTTP/2 in cleartext (`listen ... http2`, prior knowledge) to h2load (nghttp2)
//!   with many concurrent streams per connection: per status, equal to nginx's access log (its
//!   `$server_protocol` says every request was HTTP/2.0) and to h2load's own status classes, on
//!   both sides, with `network_protocol_version="2"`;
//! - a Python `grpcio` server (gRPC's C core) and client over one channel: unary calls
//!   answered OK, NOT_FOUND and INTERNAL (a trailers-only response), and a server-streaming
//!   call, each a known number of times: per method and status, equal to what the client got
//!   (which is what each method answers by construction), on both sides.

use std::{collections::BTreeMap, fs, time::Duration};

use observer_tests::{
    metrics::{matching, Sample},
    net::Bridge,
    observer::Observer,
    pod::Pod,
    require_root, slowdown, TempDir,
};

const PORT: u16 = 8082;
const GRPC_PORT: u16 = 50071;
/// Debian's interpreter, with Debian's `grpcio`.
const PYTHON: &str = "/usr/bin/python3";

fn nginx_conf(dir: &TempDir) -> String {
    format!(
        r#"daemon off;
master_process on;
worker_processes 1;
user www-data;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
  log_format truth '$status $request_method $uri $server_protocol';
  access_log {d}/access.log truth;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  http2_max_concurrent_streams 128;
  server {{
    listen {PORT} http2;
    root {d}/www;
    location = /ok {{ return 200 "ok\n"; }}
    location = /fail {{ return 500; }}
  }}
}}
"#,
        d = dir.path().display()
    )
}

/// nginx's access log per status (every line HTTP/2.0, else the test fails).
fn nginx_log(dir: &TempDir) -> BTreeMap<String, u64> {
    let text = fs::read_to_string(dir.join("access.log")).unwrap_or_default();
    let mut t = BTreeMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f.len(), 4, "access log line {l:?}");
        assert_eq!(f[3], "HTTP/2.0", "{l}");
        *t.entry(f[0].to_string()).or_default() += 1;
    }
    t
}

/// A pod's requests in `family` per status, with `extra` labels.
fn per_status(
    s: &[Sample],
    family: &str,
    pod: &Pod,
    extra: &[(&str, &str)],
) -> BTreeMap<String, u64> {
    let mut want = vec![("k8s_pod_uid", pod.uid.as_str())];
    want.extend_from_slice(extra);
    let mut m = BTreeMap::new();
    for x in matching(s, family, &want) {
        *m.entry(x.labels["http_response_status_code"].clone())
            .or_default() += x.value as u64;
    }
    m.retain(|_, v| *v > 0);
    m
}

/// h2load's "status codes: A 2xx, B 3xx, C 4xx, D 5xx" line, per class.
fn h2load_classes(out: &str) -> BTreeMap<String, u64> {
    let line = out
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_else(|| panic!("no status line in {out}"));
    let mut m = BTreeMap::new();
    for part in line.trim_start_matches("status codes:").split(',') {
        let mut w = part.split_whitespace();
        let (n, class) = (w.next().unwrap(), w.next().unwrap());
        let n: u64 = n.parse().unwrap();
        if n > 0 {
            m.insert(class.to_string(), n);
        }
    }
    m
}

fn classes(m: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut c = BTreeMap::new();
    for (k, v) in m {
        *c.entry(format!("{}xx", &k[..1])).or_default() += v;
    }
    c
}

#[test]
fn nginx_under_h2load_is_counted_exactly_per_status_on_both_sides() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-http2-nginx").unwrap();
    let mut web = Pod::new(&bridge).unwrap();
    let client = Pod::new(&bridge).unwrap();
    fs::create_dir(dir.path().join("www")).unwrap();
    let conf = dir.write("nginx.conf", nginx_conf(&dir)).unwrap();
    let prefix = dir.join("");
    let errors = dir.join("error.log");
    web.spawn("nginx", &["-p", &prefix, "-c", &conf, "-e", &errors])
        .unwrap();
    web.wait_listening(PORT).unwrap();
    let obs = Observer::start(&["--probes", "tcp,http2"]).unwrap();
    let base = format!("http://{}:{PORT}", web.ip);
    // Each client cycles through the three paths; 3 connections of 10 concurrent streams.
    let n: u64 = if slowdown() > 1 { 60 } else { 3000 };
    let out = client
        .run(
            "h2load",
            &[
                "-n",
                &n.to_string(),
                "-c",
                "3",
                "-m",
                "10",
                &format!("{base}/ok"),
                &format!("{base}/missing"),
                &format!("{base}/fail"),
            ],
        )
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    // h2load counts 4xx and 5xx as "failed"; "errored" are requests without a response.
    assert!(
        out.contains(&format!("{n} total, {n} started, {n} done")) && out.contains(" 0 errored"),
        "h2load did not complete every request: {out}"
    );
    let logged = nginx_log(&dir);
    assert_eq!(
        logged.values().sum::<u64>(),
        n,
        "nginx logged every request"
    );
    assert_eq!(
        classes(&logged),
        h2load_classes(&out),
        "nginx and h2load agree"
    );
    let version = [("network_protocol_version", "2")];
    let samples = obs
        .scrape_until(Duration::from_secs(20), |x| {
            per_status(
                x,
                "http_server_request_duration_seconds_count",
                &web,
                &version,
            ) == logged
                && per_status(
                    x,
                    "http_client_request_duration_seconds_count",
                    &client,
                    &version,
                ) == logged
        })
        .unwrap();
    assert_eq!(
        per_status(
            &samples,
            "http_server_request_duration_seconds_count",
            &web,
            &version
        ),
        logged,
        "server side"
    );
    assert_eq!(
        per_status(
            &samples,
            "http_client_request_duration_seconds_count",
            &client,
            &version
        ),
        logged,
        "client side"
    );
    // Routes as templated, methods as sent.
    let ok = per_status(
        &samples,
        "http_server_request_duration_seconds_count",
        &web,
        &[("http_route", "/ok"), ("http_request_method", "GET")],
    );
    assert_eq!(ok.get("200").copied(), logged.get("200").copied());
    let unparsed: f64 = matching(
        &samples,
        "observer_l7_messages_unparsed_total",
        &[("protocol", "http2")],
    )
    .map(|x| x.value)
    .sum();
    assert_eq!(unparsed, 0.0, "unparsed HTTP/2 records");
    obs.stop().unwrap();
}

/// A gRPC server without generated code (raw bytes in and out): `/shop.Cart/Ok` answers,
/// `NotFound` and `Internal` abort with their status (a trailers-only response), `Watch`
/// streams three messages.
const GRPC_SERVER: &str = r#"
import grpc, sys
from concurrent import futures
ip, port = sys.argv[1], sys.argv[2]
def ok(req, ctx):
    return b"ok"
def not_found(req, ctx):
    ctx.abort(grpc.StatusCode.NOT_FOUND, "no such cart")
def internal(req, ctx):
    ctx.abort(grpc.StatusCode.INTERNAL, "boom")
def watch(req, ctx):
    for i in range(3):
        yield b"item"
handlers = {
    "Ok": grpc.unary_unary_rpc_method_handler(ok),
    "NotFound": grpc.unary_unary_rpc_method_handler(not_found),
    "Internal": grpc.unary_unary_rpc_method_handler(internal),
    "Watch": grpc.unary_stream_rpc_method_handler(watch),
}
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("shop.Cart", handlers),))
server.add_insecure_port(f"{ip}:{port}")
server.start()
print("listening", flush=True)
server.wait_for_termination()
"#;

/// Calls each method `n` times over one channel; prints `method code count` per outcome.
const GRPC_CLIENT: &str = r#"
import grpc, sys
target, n = sys.argv[1], int(sys.argv[2])
got = {}
with grpc.insecure_channel(target) as ch:
    grpc.channel_ready_future(ch).result(timeout=30)
    for name in ["Ok", "NotFound", "Internal", "Watch"]:
        path = "/shop.Cart/" + name
        call = ch.unary_stream(path) if name == "Watch" else ch.unary_unary(path)
        for i in range(n):
            try:
                r = call(b"x", timeout=30)
                if name == "Watch":
                    assert list(r) == [b"item"] * 3
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
            key = (path, code.value[0])
            got[key] = got.get(key, 0) + 1
for (path, code), k in sorted(got.items()):
    print(path, code, k)
"#;

fn per_method(s: &[Sample], family: &str, pod: &Pod) -> BTreeMap<(String, String), u64> {
    let mut m = BTreeMap::new();
    for x in matching(
        s,
        family,
        &[("k8s_pod_uid", pod.uid.as_str()), ("rpc_system", "grpc")],
    ) {
        *m.entry((
            x.labels["rpc_method"].clone(),
            x.labels["rpc_grpc_status_code"].clone(),
        ))
        .or_default() += x.value as u64;
    }
    m.retain(|_, v| *v > 0);
    m
}

#[test]
fn grpc_unary_and_streaming_calls_are_counted_per_method_and_status_on_both_sides() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-grpc").unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let client = Pod::new(&bridge).unwrap();
    let srv = dir.write("server.py", GRPC_SERVER).unwrap();
    let cli = dir.write("client.py", GRPC_CLIENT).unwrap();
    server
        .spawn(PYTHON, &[&srv, &server.ip.clone(), &GRPC_PORT.to_string()])
        .unwrap();
    server.wait_listening(GRPC_PORT).unwrap();
    let obs = Observer::start(&["--probes", "tcp,http2"]).unwrap();
    let n: u64 = if slowdown() > 1 { 3 } else { 50 };
    let out = client
        .run(
            PYTHON,
            &[&cli, &format!("{}:{GRPC_PORT}", server.ip), &n.to_string()],
        )
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    // What the client got, per (method, code).
    let mut got = BTreeMap::new();
    for l in out.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        got.insert(
            (f[0].to_string(), f[1].to_string()),
            f[2].parse::<u64>().unwrap(),
        );
    }
    let want = BTreeMap::from([
        (("/shop.Cart/Ok".to_string(), "0".to_string()), n),
        (("/shop.Cart/NotFound".to_string(), "5".to_string()), n),
        (("/shop.Cart/Internal".to_string(), "13".to_string()), n),
        (("/shop.Cart/Watch".to_string(), "0".to_string()), n),
    ]);
    assert_eq!(got, want, "what the client got: {out}");
    let samples = obs
        .scrape_until(Duration::from_secs(20), |x| {
            per_method(x, "rpc_server_duration_seconds_count", &server) == want
                && per_method(x, "rpc_client_duration_seconds_count", &client) == want
        })
        .unwrap();
    assert_eq!(
        per_method(&samples, "rpc_server_duration_seconds_count", &server),
        want,
        "server side"
    );
    assert_eq!(
        per_method(&samples, "rpc_client_duration_seconds_count", &client),
        want,
        "client side"
    );
    // gRPC calls are not counted again as HTTP requests.
    let http: f64 = matching(
        &samples,
        "http_server_request_duration_seconds_count",
        &[("k8s_pod_uid", server.uid.as_str())],
    )
    .map(|x| x.value)
    .sum();
    assert_eq!(http, 0.0);
    obs.stop().unwrap();
}

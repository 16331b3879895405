//! Privileged accuracy tests of HTTP/2 and gRPC capture (`--probes http2`): real servers and
//! clients in simulated pods, counts EXACT against each end's own record:
//! - nginx serving HTTP/2 in cleartext (`listen ... http2`, prior knowledge) to h2load (nghttp2)
//!   with many concurrent streams per connection (3 connections of 10, then 1,000 streams on one
//!   connection, 100 in flight): per status, equal to nginx's access log (its
//!   `$server_protocol` says every request was HTTP/2.0) and to h2load's own status classes, on
//!   both sides, with `network_protocol_version="2"`;
//! - a Python `grpcio` server (gRPC's C core) and client over one channel: unary calls
//!   answered OK, NOT_FOUND and INTERNAL (a trailers-only response), and a server-streaming
//!   call, each a known number of times: per method and status, equal to what the client got
//!   (which is what each method answers by construction), on both sides, and the messages
//!   of each (one request message per call, three streamed by `Watch`) in
//!   `rpc_{server,client}_messages_total`;
//! - Node.js's `http2` server and client (a second implementation), many concurrent streams on
//!   one session, per status equal to what the server answered and the client got, both
//!   sides;
//! - nginx pushing a resource with every page to a Node.js client that refuses each push
//!   (RST_STREAM REFUSED_STREAM) and changes its header table size twice (nginx answers each
//!   change with a table size update), every request with a header value of its own (the
//!   client's table churns): per status equal to nginx's log and the client's count, pushes
//!   never counted as requests, no header table lost;
//! - a gRPC channel opened before the observer (its HPACK tables filled before): every call
//!   after the join counted on both sides, names either right or `_unknown`, never wrong,
//!   methods first called after the join named, and the directions joined counted.

use std::{collections::BTreeMap, fs, time::Duration};

use observer_tests::{
    metrics::{matching, Sample},
    net::Bridge,
    nginx,
    observer::Observer,
    pod::Pod,
    require_root, slowdown, TempDir,
};

const PORT: u16 = 8082;
const GRPC_PORT: u16 = 50071;
const NODE_PORT: u16 = 8093;
/// HTTP/2's series in the HTTP families.
const V2: &[(&str, &str)] = &[("network_protocol_version", "2")];
/// Debian's interpreter, with Debian's `grpcio`.
const PYTHON: &str = "/usr/bin/python3";

fn nginx_conf(dir: &TempDir) -> String {
    nginx::conf(
        dir,
        1,
        "$status $request_method $uri $server_protocol",
        &format!(
            r#"  http2_max_concurrent_streams 128;
  server {{
    listen {PORT} http2;
    root {d}/www;
    location = /ok {{ return 200 "ok\n"; }}
    location = /fail {{ return 500; }}
    location = /page {{ http2_push /pushed.txt; }}
  }}"#,
            d = dir.path().display()
        ),
    )
}

/// nginx's access log per status (every line HTTP/2.0, else the test fails), without the
/// lines of `except` (a path).
fn nginx_log(dir: &TempDir, except: &str) -> BTreeMap<String, u64> {
    let text = fs::read_to_string(dir.join("access.log")).unwrap_or_default();
    let mut t = BTreeMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f.len(), 4, "access log line {l:?}");
        assert_eq!(f[3], "HTTP/2.0", "{l}");
        if f[2] != except {
            *t.entry(f[0].to_string()).or_default() += 1;
        }
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
    nginx::start(&mut web, &dir, &nginx_conf(&dir), PORT).unwrap();
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
    // Then many streams on one connection: 1,000 requests, 100 in flight at a time.
    let (many, flight) = if slowdown() > 1 {
        (200u64, 50)
    } else {
        (1000, 100)
    };
    let out2 = client
        .run(
            "h2load",
            &[
                "-n",
                &many.to_string(),
                "-c",
                "1",
                "-m",
                &flight.to_string(),
                &format!("{base}/ok"),
                &format!("{base}/missing"),
            ],
        )
        .unwrap();
    let out2 = String::from_utf8_lossy(&out2.stdout).into_owned();
    // h2load counts 4xx and 5xx as "failed"; "errored" are requests without a response.
    for (k, o) in [(n, &out), (many, &out2)] {
        assert!(
            o.contains(&format!("{k} total, {k} started, {k} done")) && o.contains(" 0 errored"),
            "h2load did not complete every request: {o}"
        );
    }
    let logged = nginx_log(&dir, "");
    assert_eq!(
        logged.values().sum::<u64>(),
        n + many,
        "nginx logged every request"
    );
    let mut answered = h2load_classes(&out);
    for (class, k) in h2load_classes(&out2) {
        *answered.entry(class).or_default() += k;
    }
    assert_eq!(classes(&logged), answered, "nginx and h2load agree");
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
    "Ping": grpc.unary_unary_rpc_method_handler(ok),
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

/// What a gRPC client script printed, a `method code count` line per outcome.
fn client_outcomes(out: &str) -> BTreeMap<(String, String), u64> {
    let mut got = BTreeMap::new();
    for l in out.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f.len(), 3, "client output line {l:?}");
        got.insert(
            (f[0].to_string(), f[1].to_string()),
            f[2].parse::<u64>().unwrap(),
        );
    }
    got
}

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
    let got = client_outcomes(&out);
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
    // Messages per method and direction: one request message per call; `Ok` answers one,
    // `Watch` three, the aborted calls none. The client sends what the server receives.
    let per_type = |family: &str, pod: &Pod| -> BTreeMap<(String, String), u64> {
        let mut m = BTreeMap::new();
        for x in matching(&samples, family, &[("k8s_pod_uid", pod.uid.as_str())]) {
            *m.entry((
                x.labels["rpc_method"].clone(),
                x.labels["rpc_message_type"].clone(),
            ))
            .or_default() += x.value as u64;
        }
        m.retain(|_, v| *v > 0);
        m
    };
    let messages = |received: &str, sent: &str| {
        BTreeMap::from([
            (("/shop.Cart/Ok".to_string(), received.to_string()), n),
            (("/shop.Cart/Ok".to_string(), sent.to_string()), n),
            (("/shop.Cart/NotFound".to_string(), received.to_string()), n),
            (("/shop.Cart/Internal".to_string(), received.to_string()), n),
            (("/shop.Cart/Watch".to_string(), received.to_string()), n),
            (("/shop.Cart/Watch".to_string(), sent.to_string()), 3 * n),
        ])
    };
    assert_eq!(
        per_type("rpc_server_messages_total", &server),
        messages("RECEIVED", "SENT"),
        "server side messages"
    );
    assert_eq!(
        per_type("rpc_client_messages_total", &client),
        messages("SENT", "RECEIVED"),
        "client side messages"
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

/// One channel, opened and used before the observer: `warm` calls each of `Ok` and
/// `NotFound`, then it says so (`warm` file) and waits for the `go` file; then one `Ping`
/// (the call at which the kernel may claim the connection, counted or not) and `n` calls
/// each of `Ok`, `NotFound`, `Internal` and `Watch`, whose outcomes it writes to `out`.
const GRPC_JOINED_CLIENT: &str = r#"
import grpc, sys, os, time
target, warm, n, flag_warm, flag_go, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
got = {}
def calls(ch, names, k, count):
    for name in names:
        path = "/shop.Cart/" + name
        call = ch.unary_stream(path) if name == "Watch" else ch.unary_unary(path)
        for i in range(k):
            try:
                r = call(b"x", timeout=60)
                if name == "Watch":
                    assert list(r) == [b"item"] * 3
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
            if count:
                key = (path, code.value[0])
                got[key] = got.get(key, 0) + 1
with grpc.insecure_channel(target) as ch:
    grpc.channel_ready_future(ch).result(timeout=30)
    calls(ch, ["Ok", "NotFound"], warm, False)
    open(flag_warm, "w").close()
    deadline = time.time() + 300
    while not os.path.exists(flag_go):
        assert time.time() < deadline, "never told to go on"
        time.sleep(0.05)
    calls(ch, ["Ping"], 1, False)
    calls(ch, ["Ok", "NotFound", "Internal", "Watch"], n, True)
with open(out + ".tmp", "w") as f:
    for (path, code), k in sorted(got.items()):
        print(path, code, k, file=f)
os.rename(out + ".tmp", out)
"#;

/// Waits for `path` to exist.
fn wait_file(path: &str, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while !std::path::Path::new(path).exists() {
        assert!(std::time::Instant::now() < deadline, "{path} never came");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_grpc_channel_opened_before_the_observer_is_counted_with_unknown_names_never_wrong_ones() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-grpc-joined").unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let mut client = Pod::new(&bridge).unwrap();
    let srv = dir.write("server.py", GRPC_SERVER).unwrap();
    let cli = dir.write("client.py", GRPC_JOINED_CLIENT).unwrap();
    server
        .spawn(PYTHON, &[&srv, &server.ip.clone(), &GRPC_PORT.to_string()])
        .unwrap();
    server.wait_listening(GRPC_PORT).unwrap();
    let n: u64 = if slowdown() > 1 { 3 } else { 40 };
    let (warm, go, out) = (dir.join("warm"), dir.join("go"), dir.join("out"));
    client
        .spawn(
            PYTHON,
            &[
                &cli,
                &format!("{}:{GRPC_PORT}", server.ip),
                "5",
                &n.to_string(),
                &warm,
                &go,
                &out,
            ],
        )
        .unwrap();
    wait_file(&warm, observer_tests::scaled(Duration::from_secs(30)));
    let obs = Observer::start(&["--probes", "tcp,http2"]).unwrap();
    fs::write(&go, "").unwrap();
    wait_file(&out, observer_tests::scaled(Duration::from_secs(60)));
    let text = fs::read_to_string(&out).unwrap();
    let got = client_outcomes(&text);
    let truth = BTreeMap::from([
        ("/shop.Cart/Ok", "0"),
        ("/shop.Cart/NotFound", "5"),
        ("/shop.Cart/Internal", "13"),
        ("/shop.Cart/Watch", "0"),
    ]);
    let want: BTreeMap<(String, String), u64> = truth
        .iter()
        .map(|(m, c)| ((m.to_string(), c.to_string()), n))
        .collect();
    assert_eq!(got, want, "what the client got: {text}");
    // Every call after the `Ping` (whose request may have gone before the kernel claimed the
    // connection on a side), on both sides.
    let counted = |m: &BTreeMap<(String, String), u64>| -> u64 {
        m.iter()
            .filter(|((meth, _), _)| meth != "/shop.Cart/Ping")
            .map(|(_, v)| v)
            .sum()
    };
    let table = |x: &[Sample], reason: &str| -> f64 {
        matching(
            x,
            "observer_http2_header_table_unsynced_total",
            &[("reason", reason)],
        )
        .map(|x| x.value)
        .sum()
    };
    // The observer's own counters are published on their own period: waited for too.
    let samples = obs
        .scrape_until(Duration::from_secs(20), |x| {
            counted(&per_method(x, "rpc_server_duration_seconds_count", &server)) == 4 * n
                && counted(&per_method(x, "rpc_client_duration_seconds_count", &client)) == 4 * n
                && table(x, "joined") == 4.0
        })
        .unwrap();
    for (family, pod) in [
        ("rpc_server_duration_seconds_count", &server),
        ("rpc_client_duration_seconds_count", &client),
    ] {
        let seen = per_method(&samples, family, pod);
        eprintln!("{family}: {seen:?}");
        assert_eq!(counted(&seen), 4 * n, "{family}: {seen:?}");
        for ((method, code), k) in &seen {
            match method.as_str() {
                "/shop.Cart/Ping" => assert!(*k <= 1 && (code == "0" || code == "_unknown")),
                "_unknown" => {}
                m => {
                    let right = truth.get(m).unwrap_or_else(|| panic!("a wrong name: {m}"));
                    assert!(
                        code == right || code == "_unknown",
                        "{family}: {m} with a wrong status {code}: {seen:?}"
                    );
                }
            }
        }
        // Methods first called after the join: their paths entered the tables since.
        for m in ["/shop.Cart/Internal", "/shop.Cart/Watch"] {
            let named: u64 = (seen.iter())
                .filter(|((meth, _), _)| meth == m)
                .map(|(_, v)| v)
                .sum();
            assert_eq!(named, n, "{family}: {m} in {seen:?}");
        }
        let http: f64 = matching(
            &samples,
            &family
                .replace("rpc_", "http_")
                .replace("_duration", "_request_duration"),
            &[("k8s_pod_uid", pod.uid.as_str())],
        )
        .map(|x| x.value)
        .sum();
        assert_eq!(http, 0.0, "{family}: gRPC calls taken for HTTP requests");
    }
    // Two connection ends (the client's and the server's socket), two directions each.
    assert_eq!(table(&samples, "joined"), 4.0);
    assert_eq!(table(&samples, "undecodable"), 0.0);
    obs.stop().unwrap();
}

/// A Node.js HTTP/2 server (cleartext): `/ok` 200, `/missing` 404, `/fail` 500; on SIGTERM it
/// prints what it answered per status.
const NODE_SERVER: &str = r#"
const http2 = require("http2");
const [ip, port] = process.argv.slice(2);
const answered = {};
const server = http2.createServer();
server.on("stream", (stream, headers) => {
  const status = { "/ok": 200, "/missing": 404, "/fail": 500 }[headers[":path"]] || 400;
  answered[status] = (answered[status] || 0) + 1;
  stream.respond({ ":status": status, "content-type": "text/plain" });
  stream.end("x".repeat(100));
});
server.listen(Number(port), ip, () => console.log("listening"));
process.on("SIGTERM", () => { console.log(JSON.stringify(answered)); process.exit(0); });
"#;

/// A Node.js HTTP/2 client: one session, `n` requests to each path, `m` in flight at a time;
/// prints the statuses it got.
const NODE_CLIENT: &str = r#"
const http2 = require("http2");
const [url, n, m] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const session = http2.connect(url);
const paths = [];
for (const p of ["/ok", "/missing", "/fail"]) for (let i = 0; i < n; i++) paths.push(p);
const got = {};
let next = 0, done = 0;
function one() {
  if (next >= paths.length) return;
  const req = session.request({ ":path": paths[next++] });
  req.on("response", (h) => { got[h[":status"]] = (got[h[":status"]] || 0) + 1; });
  req.resume();
  req.on("end", () => {
    if (++done === paths.length) { console.log(JSON.stringify(got)); session.close(); }
    else one();
  });
  req.end();
}
for (let i = 0; i < m; i++) one();
"#;

/// `{"200":5,"404":5}` → status → count.
fn statuses(json: &str) -> BTreeMap<String, u64> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("a JSON object");
    (v.as_object().expect("an object").iter())
        .map(|(k, v)| (k.clone(), v.as_u64().expect("a count")))
        .collect()
}

#[test]
fn nodejs_http2_server_and_client_are_counted_exactly_per_status_on_both_sides() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-node-h2").unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let client = Pod::new(&bridge).unwrap();
    let srv = dir.write("server.js", NODE_SERVER).unwrap();
    let cli = dir.write("client.js", NODE_CLIENT).unwrap();
    let out = dir.join("server.out");
    let node = format!("exec /usr/bin/node {srv} {} {NODE_PORT} > {out}", server.ip);
    let pid = server.spawn("/bin/sh", &["-c", &node]).unwrap();
    server.wait_listening(NODE_PORT).unwrap();
    let obs = Observer::start(&["--probes", "tcp,http2"]).unwrap();
    let n: u64 = if slowdown() > 1 { 5 } else { 200 };
    let got = client
        .run(
            "/usr/bin/node",
            &[
                &cli,
                &format!("http://{}:{NODE_PORT}", server.ip),
                &n.to_string(),
                "20",
            ],
        )
        .unwrap();
    let got = statuses(&String::from_utf8_lossy(&got.stdout));
    let want = BTreeMap::from([
        ("200".to_string(), n),
        ("404".to_string(), n),
        ("500".to_string(), n),
    ]);
    assert_eq!(got, want, "what the client got");
    let samples = obs
        .scrape_until(Duration::from_secs(20), |x| {
            per_status(x, "http_server_request_duration_seconds_count", &server, V2) == want
                && per_status(x, "http_client_request_duration_seconds_count", &client, V2) == want
        })
        .unwrap();
    // The server's own account, once it is told to stop.
    observer_tests::sh(&format!("kill -TERM {pid}; sleep 0.5")).unwrap();
    let text = fs::read_to_string(&out).unwrap();
    let answered = statuses(text.lines().last().unwrap_or("{}"));
    assert_eq!(answered, want, "what the server answered");
    assert_eq!(
        per_status(
            &samples,
            "http_server_request_duration_seconds_count",
            &server,
            V2
        ),
        answered,
        "server side"
    );
    assert_eq!(
        per_status(
            &samples,
            "http_client_request_duration_seconds_count",
            &client,
            V2
        ),
        got,
        "client side"
    );
    obs.stop().unwrap();
}

/// A gRPC server of client- and bidirectional streams and a slow method: `Sum` reads every
/// request message and answers one, `Chat` answers each message with one, `Slow` answers
/// after half a second.
const GRPC_STREAMS_SERVER: &str = r#"
import grpc, sys, time
from concurrent import futures
ip, port = sys.argv[1], sys.argv[2]
def total(reqs, ctx):
    return b"%d" % sum(1 for _ in reqs)
def chat(reqs, ctx):
    for r in reqs:
        yield r
def slow(req, ctx):
    time.sleep(0.5)
    return b"late"
handlers = {
    "Sum": grpc.stream_unary_rpc_method_handler(total),
    "Chat": grpc.stream_stream_rpc_method_handler(chat),
    "Slow": grpc.unary_unary_rpc_method_handler(slow),
}
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("shop.Stream", handlers),))
server.add_insecure_port(f"{ip}:{port}")
server.start()
server.wait_for_termination()
"#;

/// `n` calls of each: `Sum` with 3 messages, `Chat` with 2, `Slow` with a 100 ms deadline;
/// prints `method code count` per outcome.
const GRPC_STREAMS_CLIENT: &str = r#"
import grpc, sys
target, n = sys.argv[1], int(sys.argv[2])
got = {}
with grpc.insecure_channel(target) as ch:
    grpc.channel_ready_future(ch).result(timeout=30)
    total = ch.stream_unary("/shop.Stream/Sum")
    chat = ch.stream_stream("/shop.Stream/Chat")
    slow = ch.unary_unary("/shop.Stream/Slow")
    for name in ["Sum", "Chat", "Slow"]:
        for i in range(n):
            try:
                if name == "Sum":
                    assert total(iter([b"a", b"b", b"c"]), timeout=30) == b"3"
                elif name == "Chat":
                    assert list(chat(iter([b"x", b"y"]), timeout=30)) == [b"x", b"y"]
                else:
                    slow(b"x", timeout=0.1)
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
            key = ("/shop.Stream/" + name, code.value[0])
            got[key] = got.get(key, 0) + 1
for (path, code), k in sorted(got.items()):
    print(path, code, k)
"#;

#[test]
fn grpc_client_and_bidirectional_streams_and_deadlines_are_counted_on_both_sides() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-grpc-streams").unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let client = Pod::new(&bridge).unwrap();
    let srv = dir.write("server.py", GRPC_STREAMS_SERVER).unwrap();
    let cli = dir.write("client.py", GRPC_STREAMS_CLIENT).unwrap();
    server
        .spawn(PYTHON, &[&srv, &server.ip.clone(), &GRPC_PORT.to_string()])
        .unwrap();
    server.wait_listening(GRPC_PORT).unwrap();
    let obs = Observer::start(&["--probes", "tcp,http2"]).unwrap();
    let n: u64 = if slowdown() > 1 { 3 } else { 20 };
    let out = client
        .run(
            PYTHON,
            &[&cli, &format!("{}:{GRPC_PORT}", server.ip), &n.to_string()],
        )
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let got = client_outcomes(&out);
    // DEADLINE_EXCEEDED is 4.
    let want = BTreeMap::from([
        (("/shop.Stream/Sum".to_string(), "0".to_string()), n),
        (("/shop.Stream/Chat".to_string(), "0".to_string()), n),
        (("/shop.Stream/Slow".to_string(), "4".to_string()), n),
    ]);
    assert_eq!(got, want, "what the client got: {out}");
    // Per method, status and error type: a call past its deadline ends with the server's
    // DEADLINE_EXCEEDED or with the client's RST_STREAM, whichever the wire saw first.
    let outcomes = |x: &[Sample], family: &str, pod: &Pod| {
        let mut m: BTreeMap<(String, String), u64> = BTreeMap::new();
        for s in matching(x, family, &[("k8s_pod_uid", pod.uid.as_str())]) {
            let status = match s.labels["error_type"].as_str() {
                "" => s.labels["rpc_grpc_status_code"].clone(),
                e => e.to_string(),
            };
            *m.entry((s.labels["rpc_method"].clone(), status))
                .or_default() += s.value as u64;
        }
        m.retain(|_, v| *v > 0);
        m
    };
    let total = |m: &BTreeMap<(String, String), u64>| m.values().sum::<u64>();
    let samples = obs
        .scrape_until(Duration::from_secs(20), |x| {
            total(&outcomes(x, "rpc_server_duration_seconds_count", &server)) == 3 * n
                && total(&outcomes(x, "rpc_client_duration_seconds_count", &client)) == 3 * n
        })
        .unwrap();
    for (family, pod) in [
        ("rpc_server_duration_seconds_count", &server),
        ("rpc_client_duration_seconds_count", &client),
    ] {
        let seen = outcomes(&samples, family, pod);
        let of = |m: &str, s: &str| {
            seen.get(&(m.to_string(), s.to_string()))
                .copied()
                .unwrap_or(0)
        };
        assert_eq!(of("/shop.Stream/Sum", "0"), n, "{family}: {seen:?}");
        assert_eq!(of("/shop.Stream/Chat", "0"), n, "{family}: {seen:?}");
        assert_eq!(
            of("/shop.Stream/Slow", "4") + of("/shop.Stream/Slow", "stream_reset"),
            n,
            "{family}: {seen:?}"
        );
        assert_eq!(total(&seen), 3 * n, "{family}: {seen:?}");
    }
    // Messages: Sum 3 in and 1 out, Chat 2 and 2 (calls that ended past their deadline have
    // no message count: their bodies never completed).
    let messages = |family: &str, pod: &Pod, m: &str, t: &str| -> u64 {
        matching(
            &samples,
            family,
            &[
                ("k8s_pod_uid", pod.uid.as_str()),
                ("rpc_method", m),
                ("rpc_message_type", t),
            ],
        )
        .map(|x| x.value as u64)
        .sum()
    };
    for (family, pod, inbound, outbound) in [
        ("rpc_server_messages_total", &server, "RECEIVED", "SENT"),
        ("rpc_client_messages_total", &client, "SENT", "RECEIVED"),
    ] {
        assert_eq!(messages(family, pod, "/shop.Stream/Sum", inbound), 3 * n);
        assert_eq!(messages(family, pod, "/shop.Stream/Sum", outbound), n);
        assert_eq!(messages(family, pod, "/shop.Stream/Chat", inbound), 2 * n);
        assert_eq!(messages(family, pod, "/shop.Stream/Chat", outbound), 2 * n);
    }
    obs.stop().unwrap();
}

/// A Node.js HTTP/2 client of nginx: `n` requests of `/page` (which nginx answers with a
/// push it refuses) and of `/missing`, `m` in flight, each with an `x-request-id` of its own.
/// Its header table size is 256 from the start and 4096 half-way; prints the statuses it got
/// and the pushes it refused.
const NODE_PUSH_CLIENT: &str = r#"
const http2 = require("http2");
const [url, n, m] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const session = http2.connect(url, { settings: { headerTableSize: 256 } });
const got = {};
let pushes = 0;
session.on("stream", (pushed) => {
  pushes++;
  // Closing with an error code is an error of the stream's own.
  pushed.on("error", () => {});
  pushed.close(http2.constants.NGHTTP2_REFUSED_STREAM);
});
const paths = [];
for (let i = 0; i < n; i++) paths.push("/page", "/missing");
let next = 0, done = 0;
function one() {
  if (next >= paths.length) return;
  const i = next++;
  if (i === paths.length / 2) session.settings({ headerTableSize: 4096 });
  const req = session.request({ ":path": paths[i], "x-request-id": "req-" + i + "-" + Date.now() });
  req.on("response", (h) => { got[h[":status"]] = (got[h[":status"]] || 0) + 1; });
  req.resume();
  req.on("end", () => {
    if (++done === paths.length) {
      got.pushes = pushes;
      console.log(JSON.stringify(got));
      session.close();
    } else one();
  });
  req.end();
}
for (let i = 0; i < m; i++) one();
"#;

#[test]
fn refused_pushes_and_header_table_size_changes_leave_every_request_counted() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-http2-push").unwrap();
    let mut web = Pod::new(&bridge).unwrap();
    let client = Pod::new(&bridge).unwrap();
    let www = dir.path().join("www");
    fs::create_dir(&www).unwrap();
    fs::write(www.join("page"), "a page\n".repeat(50)).unwrap();
    fs::write(www.join("pushed.txt"), "pushed\n".repeat(50)).unwrap();
    nginx::start(&mut web, &dir, &nginx_conf(&dir), PORT).unwrap();
    let cli = dir.write("client.js", NODE_PUSH_CLIENT).unwrap();
    let obs = Observer::start(&["--probes", "tcp,http2"]).unwrap();
    let n: u64 = if slowdown() > 1 { 10 } else { 300 };
    let out = client
        .run(
            "/usr/bin/node",
            &[
                &cli,
                &format!("http://{}:{PORT}", web.ip),
                &n.to_string(),
                "5",
            ],
        )
        .unwrap();
    let mut got = statuses(&String::from_utf8_lossy(&out.stdout));
    // nginx pushed with every page, and the client refused each push.
    assert_eq!(got.remove("pushes"), Some(n), "pushes refused");
    let want = BTreeMap::from([("200".to_string(), n), ("404".to_string(), n)]);
    assert_eq!(got, want, "what the client got");
    // nginx's log: the requests, and the pushed resource as requests of its own (however far
    // each got before its refusal), which are no requests of the client's.
    let logged = nginx_log(&dir, "/pushed.txt");
    assert_eq!(logged, want, "nginx's log");
    let samples = obs
        .scrape_until(Duration::from_secs(20), |x| {
            per_status(x, "http_server_request_duration_seconds_count", &web, V2) == want
                && per_status(x, "http_client_request_duration_seconds_count", &client, V2) == want
        })
        .unwrap();
    for (family, pod) in [
        ("http_server_request_duration_seconds_count", &web),
        ("http_client_request_duration_seconds_count", &client),
    ] {
        assert_eq!(per_status(&samples, family, pod, V2), want, "{family}");
    }
    // Named on the server's side (the client's side has no route): its decoder followed the
    // table through every size change.
    let family = "http_server_request_duration_seconds_count";
    let mut routes = BTreeMap::new();
    for x in matching(&samples, family, &[("k8s_pod_uid", web.uid.as_str())]) {
        *routes.entry(x.labels["http_route"].clone()).or_default() += x.value as u64;
    }
    routes.retain(|_, v| *v > 0);
    assert_eq!(
        routes,
        BTreeMap::from([("/missing".to_string(), n), ("/page".to_string(), n)]),
        "per route"
    );
    assert_eq!(
        observer_tests::metrics::sum(&samples, "observer_http2_header_table_unsynced_total", &[]),
        0.0,
        "header tables lost"
    );
    obs.stop().unwrap();
}

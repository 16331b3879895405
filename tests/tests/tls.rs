//! Privileged accuracy tests of the TLS probe (`--probes http,http2,tls`): HTTPS between
//! simulated pods, with real servers (nginx, Python's `ssl`, Node.js `https`) and real clients
//! (wrk, curl, h2load, Python, Node.js), every request counted exactly on both sides from the
//! plaintext the TLS libraries read and wrote.
//!
//! Ground truth is what the programs report themselves: nginx's access log (`$status
//! $server_protocol`), the Python and Node servers' own logs, wrk's Lua counters, curl's
//! `%{http_code}`, h2load's summary, and the Python and Node clients' own tallies.
//!
//! The libraries: curl, wrk, h2load, nginx and Python link Debian's `libssl.so.3` (a socket BIO:
//! the library reads and writes the socket itself); Node.js carries its own OpenSSL and hands
//! it memory (a memory BIO). Every server here starts after the observer.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    time::Duration,
};

use observer_tests::{
    gotls::{self, wait_probed},
    metrics::{matching, sum, Sample},
    net::Bridge,
    nginx,
    observer::Observer,
    pod::Pod,
    require_root, scaled, slowdown, TempDir,
};

const WAIT: Duration = Duration::from_secs(15);
const PORT: u16 = 8443;

type Tally = BTreeMap<String, u64>;

/// A self-signed server certificate and a CA-signed client certificate (mTLS) in `dir`.
fn certificates(dir: &TempDir) {
    let d = dir.path().display();
    let cmds = [
        format!("openssl req -x509 -newkey rsa:2048 -nodes -keyout {d}/key.pem -out {d}/cert.pem -days 2 -subj /CN=observer-test-server"),
        format!("openssl req -x509 -newkey rsa:2048 -nodes -keyout {d}/ca.key -out {d}/ca.pem -days 2 -subj /CN=observer-test-ca"),
        format!("openssl req -newkey rsa:2048 -nodes -keyout {d}/client.key -out {d}/client.csr -subj /CN={CLIENT_CN}"),
        format!("openssl x509 -req -in {d}/client.csr -CA {d}/ca.pem -CAkey {d}/ca.key -CAcreateserial -out {d}/client.pem -days 2"),
    ];
    for c in cmds {
        observer_tests::sh(&format!("{c} 2>/dev/null")).unwrap();
    }
}

/// The client certificate's subject: it must never reach the observer's output.
const CLIENT_CN: &str = "observer-secret-client-7f3a";

/// nginx over TLS (HTTP/1.1 and, by ALPN, HTTP/2), client certificates optional (verified
/// against the test's CA), sessions cached for resumption. `/fail` answers 500 and closes.
fn nginx_conf(dir: &TempDir) -> String {
    nginx::conf(
        dir,
        2,
        "$status $server_protocol",
        &format!(
            r#"  server {{
    listen {PORT} ssl http2;
    ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem;
    ssl_client_certificate {d}/ca.pem;
    ssl_verify_client optional;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:1m;
    root {d}/www;
    location = /ok {{ return 200 "ok\n"; }}
    location = /fail {{ return 500; }}
  }}"#,
            d = dir.path().display()
        ),
    )
}

/// The paths wrk cycles over ([`nginx::wrk_mix`]).
const WRK_PATHS: &[&str] = &["/ok", "/ok", "/big.bin", "/missing", "/fail"];

/// Python client: TLS 1.2 and TLS 1.3 connections, each followed by one that resumes its
/// session, all with the client certificate; closes without `close_notify` (Python's `close()`
/// does not send it). Args: host, port, directory of the certificates. Prints
/// `{"counts": {status: n}, "resumed": [tls1.2, tls1.3]}`.
const PY_CLIENT: &str = r#"
import http.client, json, socket, ssl, sys
host, port, d = sys.argv[1], int(sys.argv[2]), sys.argv[3]
counts = {}
def context(version):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    ctx.load_cert_chain(d + "/client.pem", d + "/client.key")
    return ctx
def conn(ctx, paths, session=None):
    s = ctx.wrap_socket(socket.create_connection((host, port)), session=session)
    c = http.client.HTTPConnection(host, port)
    c.sock = s
    for p in paths:
        c.request("GET", p)
        r = c.getresponse()
        r.read()
        counts[str(r.status)] = counts.get(str(r.status), 0) + 1
    out = (s.session, s.session_reused)
    s.close()
    return out
paths = ["/ok", "/missing", "/big.bin", "/ok", "/ok"]
resumed = []
for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
    ctx = context(v)
    session, _ = conn(ctx, paths)
    _, again = conn(ctx, paths[:3], session)
    resumed.append(again)
print(json.dumps({"counts": counts, "resumed": resumed}))
"#;

/// Node.js client: one keep-alive connection, the paths in turn, after waiting `ms`. Args:
/// host, port, ms. Prints `{status: n}`.
const NODE_CLIENT: &str = r#"
const https = require('https');
const fs = require('fs');
const [host, port, ready] = process.argv.slice(1);
const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
const paths = ['/ok', '/missing', '/ok', '/big.bin', '/ok', '/missing'];
const counts = {};
let i = 0;
function next() {
  if (i >= paths.length) { agent.destroy(); console.log(JSON.stringify(counts)); return; }
  https.get({ host, port, path: paths[i++], agent, rejectUnauthorized: false }, (r) => {
    r.resume();
    r.on('end', () => { counts[r.statusCode] = (counts[r.statusCode] || 0) + 1; next(); });
  }).on('error', (e) => { console.error(e); process.exit(1); });
}
function start() { if (fs.existsSync(ready)) next(); else setTimeout(start, 20); }
start();
"#;

/// Node.js HTTPS server: `/s/<code>` answers that status; logs `<code>` per response. Args:
/// port, certificate directory, log file.
const NODE_SERVER: &str = r#"
const https = require('https'), fs = require('fs');
const [port, d, log] = process.argv.slice(1);
https.createServer({ key: fs.readFileSync(d + '/key.pem'), cert: fs.readFileSync(d + '/cert.pem') }, (req, res) => {
  const m = /^\/s\/(\d{3})$/.exec(req.url);
  const code = m ? Number(m[1]) : 404;
  res.writeHead(code, { 'content-type': 'text/plain' });
  res.end('x'.repeat(code));
  fs.appendFileSync(log, code + '\n');
}).listen(Number(port));
"#;

/// Python HTTPS server (threaded, keep-alive): `/s/<code>` answers that status; logs `<code>`
/// per response. Args: port, certificate directory, log file.
const PY_SERVER: &str = r#"
import http.server, re, ssl, sys, threading
port, d, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        m = re.fullmatch(r"/s/(\d{3})", self.path)
        code = int(m.group(1)) if m else 404
        body = b"x" * code
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with lock, open(log, "a") as f:
            f.write(f"{code}\n")
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("0.0.0.0", port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(d + "/cert.pem", d + "/key.pem")
s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"#;

/// Python client of `/s/<code>` paths over one keep-alive TLS connection. Args: host, port,
/// codes (comma-separated). Prints `{status: n}`.
const PY_CODES_CLIENT: &str = r#"
import http.client, json, ssl, sys
host, port, codes = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
ctx = ssl._create_unverified_context()
c = http.client.HTTPSConnection(host, port, context=ctx)
counts = {}
for code in codes:
    c.request("GET", "/s/" + code)
    r = c.getresponse()
    r.read()
    counts[str(r.status)] = counts.get(str(r.status), 0) + 1
c.close()
print(json.dumps(counts))
"#;

fn add(t: &mut Tally, other: &Tally) {
    for (k, v) in other {
        *t.entry(k.clone()).or_default() += v;
    }
}

fn from_json(out: &str) -> Tally {
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect()
}

/// A server's log of one status per line.
fn code_log(path: &str) -> Tally {
    let mut t = Tally::new();
    for l in fs::read_to_string(path).unwrap_or_default().lines() {
        *t.entry(l.trim().to_string()).or_default() += 1;
    }
    t
}

/// Per-status requests of `pod` in the HTTP family of `side` (`server`/`client`), over the
/// series with the labels `want`; zeros left out.
fn observed(s: &[Sample], side: &str, pod: &Pod, want: &[(&str, &str)]) -> Tally {
    let name = format!("http_{side}_request_duration_seconds_count");
    let mut w = vec![("k8s_pod_uid", pod.uid.as_str())];
    w.extend_from_slice(want);
    let mut t = Tally::new();
    for x in matching(s, &name, &w) {
        *t.entry(x.labels["http_response_status_code"].clone())
            .or_default() += x.value as u64;
    }
    t.retain(|_, v| *v > 0);
    t
}

fn total(t: &Tally) -> u64 {
    t.values().sum()
}

/// Values of `label` on the HTTP `_count` series of `pod` on `side`.
fn label_values(s: &[Sample], side: &str, pod: &Pod, label: &str) -> BTreeSet<String> {
    let name = format!("http_{side}_request_duration_seconds_count");
    matching(s, &name, &[("k8s_pod_uid", pod.uid.as_str())])
        .map(|x| x.labels.get(label).cloned().unwrap_or_default())
        .collect()
}

/// Nothing the TLS probe or the L7 path could not keep.
fn assert_nothing_lost(s: &[Sample]) {
    for x in s.iter().filter(|x| x.name == "observer_events_lost_total") {
        let src = &x.labels["source"];
        if src.starts_with("tls") || src.starts_with("l7") {
            assert_eq!(x.value, 0.0, "lost: {:?}", x.labels);
        }
    }
}

fn wait_for(obs: &Observer, want: &[(&str, &Pod, u64)]) -> Vec<Sample> {
    obs.scrape_until(WAIT, |s| {
        want.iter()
            .all(|(side, pod, n)| total(&observed(s, side, pod, &[])) >= *n)
    })
    .unwrap()
}

fn start_observer() -> Observer {
    Observer::start(&["--probes", "http,http2,tls"]).unwrap()
}

#[test]
fn https_to_nginx_is_counted_exactly_per_status_on_both_sides_for_every_client() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-tls-nginx").unwrap();
    certificates(&dir);
    fs::create_dir(dir.path().join("www")).unwrap();
    // A 1 MiB body: many TLS records per response (64 KiB in the emulated guests).
    let big = if slowdown() > 1 { 1 << 16 } else { 1 << 20 };
    dir.write("www/big.bin", vec![b'b'; big]).unwrap();
    let obs = start_observer();
    let mut web = Pod::new(&bridge).unwrap();
    let wrk = Pod::new(&bridge).unwrap();
    let curl = Pod::new(&bridge).unwrap();
    let py = Pod::new(&bridge).unwrap();
    let node = Pod::new(&bridge).unwrap();
    let h2 = Pod::new(&bridge).unwrap();
    // nginx starts after the observer.
    nginx::start(&mut web, &dir, &nginx_conf(&dir), PORT).unwrap();
    // The node's libssl: probed at start, or at nginx's exec look where pid 1's root is not
    // readable (the first requests of a file not yet probed are missed).
    wait_probed(&obs, "libssl");
    let url = format!("https://{}:{PORT}", web.ip);
    let d = dir.path().display().to_string();
    let mut clients: Vec<(&Pod, Tally)> = Vec::new();

    // wrk over HTTPS, keep-alive: 2 threads x 1 connection x 100 responses (a 500 closes the
    // connection, wrk opens another: a new handshake).
    let lua = dir.write("mix.lua", nginx::wrk_mix(WRK_PATHS)).unwrap();
    let duration = format!("{}s", 5 * slowdown());
    let out = wrk
        .run(
            "wrk",
            &["-t2", "-c2", "-d", &duration, "-s", &lua, &url, "--", "100"],
        )
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let t = nginx::wrk_statuses(&out);
    assert_eq!(
        t,
        Tally::from([("200".into(), 120), ("404".into(), 40), ("500".into(), 40)]),
        "{out}"
    );
    clients.push((&wrk, t));

    // curl: one process and connection per request (closes with close_notify); it offers
    // HTTP/2 by ALPN, which nginx takes.
    let mut t = Tally::new();
    for path in ["/ok", "/missing", "/big.bin", "/fail", "/ok"] {
        let out = curl
            .run(
                "curl",
                &[
                    "-sk",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &format!("{url}{path}"),
                ],
            )
            .unwrap();
        *t.entry(String::from_utf8_lossy(&out.stdout).to_string())
            .or_default() += 1;
    }
    clients.push((&curl, t));

    // Python: TLS 1.2 and 1.3, each resumed, with a client certificate.
    let out = py
        .python(PY_CLIENT, &[&web.ip, &PORT.to_string(), &d])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["resumed"], serde_json::json!([true, true]), "{out}");
    clients.push((&py, from_json(&v["counts"].to_string())));

    // Node.js (its own OpenSSL, a memory BIO), keep-alive. The first Node.js process on the
    // node brings a file not probed yet: the observer finds it at the exec, reads its symbols
    // (a 100 MB program) and attaches, which takes a few tenths of a second here (seconds
    // under emulation): the client waits for that before its first request (later Node.js
    // processes are seen from their first request: the file stays probed).
    let ready = dir.path().join("node-ready");
    let client = node
        .command(
            "node",
            &[
                "-e",
                NODE_CLIENT,
                &web.ip,
                &PORT.to_string(),
                &ready.display().to_string(),
            ],
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_probed(&obs, "node");
    fs::write(&ready, b"").unwrap();
    let out = client.wait_with_output().unwrap();
    assert!(out.status.success(), "the Node.js client failed");
    clients.push((&node, from_json(&String::from_utf8_lossy(&out.stdout))));

    // h2load: HTTP/2 over TLS (ALPN h2, as curl's above), 2 connections, 5 streams in flight
    // each.
    let out = h2
        .run(
            "h2load",
            &["-n", "40", "-c", "2", "-m", "5", &format!("{url}/ok")],
        )
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.contains("Application protocol: h2"), "{out}");
    assert!(
        out.contains("status codes: 40 2xx, 0 3xx, 0 4xx, 0 5xx"),
        "{out}"
    );
    clients.push((&h2, Tally::from([("200".into(), 40)])));

    // nginx logged what the clients counted.
    let log = fs::read_to_string(dir.join("access.log")).unwrap();
    let mut server = Tally::new();
    let mut h2_logged = 0;
    for l in log.lines() {
        let (status, proto) = l.split_once(' ').unwrap();
        *server.entry(status.to_string()).or_default() += 1;
        h2_logged += u64::from(proto == "HTTP/2.0");
    }
    assert_eq!(h2_logged, 40 + total(&clients[1].1), "{log}");
    let mut all = Tally::new();
    for (_, t) in &clients {
        add(&mut all, t);
    }
    assert_eq!(server, all, "nginx logged what the clients counted");

    let mut want = vec![("server", &web, total(&server))];
    want.extend(clients.iter().map(|(p, t)| ("client", *p, total(t))));
    let s = wait_for(&obs, &want);
    assert_eq!(observed(&s, "server", &web, &[]), server, "nginx pod");
    let mut over_h2 = clients[1].1.clone();
    add(&mut over_h2, &clients[4].1);
    assert_eq!(
        observed(&s, "server", &web, &[("network_protocol_version", "2")]),
        over_h2,
        "nginx pod, HTTP/2 (curl and h2load)"
    );
    for (pod, t) in &clients {
        assert_eq!(
            &observed(&s, "client", pod, &[]),
            t,
            "client pod {}",
            pod.uid
        );
        assert_eq!(
            label_values(&s, "client", pod, "url_scheme"),
            BTreeSet::from(["https".to_string()])
        );
        assert_eq!(
            label_values(&s, "client", pod, "server_port"),
            BTreeSet::from([PORT.to_string()])
        );
    }
    for (pod, t) in [&clients[1], &clients[4]] {
        assert_eq!(
            &observed(&s, "client", pod, &[("network_protocol_version", "2")]),
            t
        );
    }
    assert_eq!(
        label_values(&s, "server", &web, "url_scheme"),
        BTreeSet::from(["https".to_string()])
    );
    assert_eq!(
        label_values(&s, "server", &web, "service_name"),
        BTreeSet::from(["nginx".to_string()])
    );
    assert_nothing_lost(&s);
    // The client certificate's subject and the bodies never reach the output.
    let (_, _, text) = obs.get("/metrics", None).unwrap();
    assert!(!text.contains(CLIENT_CN) && !text.contains("bbbbbbbb"));
    let log = obs.stderr.lock().unwrap().clone();
    assert!(!log.contains(CLIENT_CN), "{log}");
    obs.stop().unwrap();
}

#[test]
fn python_and_node_servers_over_tls_are_counted_exactly_on_both_sides() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-tls-servers").unwrap();
    certificates(&dir);
    let d = dir.path().display().to_string();
    let obs = start_observer();
    let mut py_srv = Pod::new(&bridge).unwrap();
    let mut node_srv = Pod::new(&bridge).unwrap();
    let curl = Pod::new(&bridge).unwrap();
    let py = Pod::new(&bridge).unwrap();
    let (py_log, node_log) = (dir.join("py.log"), dir.join("node.log"));
    py_srv
        .spawn_python(PY_SERVER, &[&PORT.to_string(), &d, &py_log])
        .unwrap();
    node_srv
        .spawn(
            "node",
            &["-e", NODE_SERVER, &PORT.to_string(), &d, &node_log],
        )
        .unwrap();
    py_srv.wait_listening(PORT).unwrap();
    node_srv.wait_listening(PORT).unwrap();
    // Node's own file is probed a moment after its exec (see the nginx test), and so is the
    // node's libssl where it could not be at start (pid 1's root unreadable, as in this
    // machine's sandbox): the first requests of a file not yet probed are missed.
    wait_probed(&obs, "node");
    wait_probed(&obs, "libssl");

    let codes = ["200", "201", "404", "200", "503", "200", "302"];
    let mut curl_t = Tally::new();
    let mut py_t = Tally::new();
    for srv in [&py_srv, &node_srv] {
        // curl: one connection for all (`--next`-less: several URLs on one command line
        // reuse it).
        let urls: Vec<String> = codes
            .iter()
            .map(|c| format!("https://{}:{PORT}/s/{c}", srv.ip))
            .collect();
        let mut args = vec!["-sk", "-w", "%{http_code}\\n"];
        for u in &urls {
            args.extend(["-o", "/dev/null", u]);
        }
        let out = curl.run("curl", &args).unwrap();
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            *curl_t.entry(l.trim().to_string()).or_default() += 1;
        }
        let out = py
            .python(
                PY_CODES_CLIENT,
                &[&srv.ip, &PORT.to_string(), &codes.join(",")],
            )
            .unwrap();
        add(&mut py_t, &from_json(&out));
    }
    let each: Tally = {
        // Twice each code: two servers per client, two clients per server.
        let mut t = Tally::new();
        for c in codes {
            *t.entry(c.to_string()).or_default() += 2;
        }
        t
    };
    // Each client asked each server for the codes once; each server got them from both.
    assert_eq!(curl_t, each, "curl's own count");
    assert_eq!(py_t, each, "the Python client's own count");
    // Each server answered each client's codes once.
    let served = |log: &str| {
        let want = std::time::Instant::now() + scaled(Duration::from_secs(5));
        loop {
            let t = code_log(log);
            if total(&t) >= total(&each) || std::time::Instant::now() > want {
                return t;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(served(&py_log), each, "the Python server's log");
    assert_eq!(served(&node_log), each, "the Node server's log");

    let s = wait_for(
        &obs,
        &[
            ("server", &py_srv, total(&each)),
            ("server", &node_srv, total(&each)),
            ("client", &py, total(&py_t)),
        ],
    );
    assert_eq!(observed(&s, "server", &py_srv, &[]), each, "Python server");
    assert_eq!(observed(&s, "server", &node_srv, &[]), each, "Node server");
    assert_eq!(observed(&s, "client", &py, &[]), py_t, "Python client");
    for pod in [&py_srv, &node_srv] {
        assert_eq!(
            label_values(&s, "server", pod, "url_scheme"),
            BTreeSet::from(["https".to_string()])
        );
    }
    assert_nothing_lost(&s);
    obs.stop().unwrap();
}

/// A copy of `libssl.so.3` that only processes started after the observer load (their own
/// file, as a container image's would be): found at their exec, probed once for 20 processes,
/// and every request of theirs counted.
#[test]
fn a_library_first_loaded_after_start_is_probed_once_for_twenty_processes() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-tls-copy").unwrap();
    certificates(&dir);
    let d = dir.path().display().to_string();
    let lib = dir.path().join("lib");
    fs::create_dir(&lib).unwrap();
    let system = observer_tests::sh(
        "python3 -c 'import _ssl; print(open(\"/proc/self/maps\").read())' | grep -o '/[^ ]*libssl.so[^ ]*' | head -1",
    )
    .unwrap();
    fs::copy(system.trim(), lib.join("libssl.so.3")).unwrap();
    let obs = start_observer();
    let probed = |s: &[Sample]| sum(s, "observer_tls_libraries_probed", &[]);
    let mut srv = Pod::new(&bridge).unwrap();
    let clients = Pod::new(&bridge).unwrap();
    let log = dir.join("srv.log");
    srv.spawn_python(PY_SERVER, &[&PORT.to_string(), &d, &log])
        .unwrap();
    srv.wait_listening(PORT).unwrap();
    // The server's library (the system's) is probed by now, at its exec if not at start.
    std::thread::sleep(scaled(Duration::from_secs(1)));
    let before = probed(&obs.scrape().unwrap());
    // 20 Python clients with the copy: each loads it, waits for the observer's look at new
    // programs (an exec is looked at after 20 ms and 0.5 s), then makes 3 requests.
    let wait = 1.5 * f64::from(slowdown());
    let client = dir
        .write(
            "client.py",
            format!("import ssl, time\ntime.sleep({wait})\n{PY_CODES_CLIENT}"),
        )
        .unwrap();
    let cmd = format!(
        "for i in $(seq 20); do LD_LIBRARY_PATH={} python3 {client} {} {PORT} 200,404,200 > {d}/out-$i.json & done; wait",
        lib.display(),
        srv.ip
    );
    clients.run("sh", &["-c", &cmd]).unwrap();
    let mut t = Tally::new();
    for i in 1..=20 {
        add(
            &mut t,
            &from_json(&fs::read_to_string(dir.join(&format!("out-{i}.json"))).unwrap()),
        );
    }
    assert_eq!(
        t,
        Tally::from([("200".into(), 40), ("404".into(), 20)]),
        "the clients' own count"
    );
    let s = wait_for(&obs, &[("client", &clients, 60)]);
    assert_eq!(observed(&s, "client", &clients, &[]), t);
    assert_eq!(probed(&s), before + 1.0, "the copy, once");
    let copy = lib.join("libssl.so.3").display().to_string();
    let log = obs.stderr.lock().unwrap().clone();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS library probed") && l.contains(&copy))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert_nothing_lost(&s);
    obs.stop().unwrap();
}

/// `openssl s_client` sends a request, then after a pause the line `cmd` (`R`: renegotiate,
/// TLS 1.2; `K`: update the keys and ask the peer to, TLS 1.3), then another request; prints
/// what it got. Args: the address, the protocol flag, `cmd`, the pause in seconds.
const S_CLIENT: &str = r#"
req='GET /ok HTTP/1.1\r\nHost: observer\r\n\r\n'
(printf "$req"; sleep "$4"; printf '%s\n' "$3"; sleep "$4"; printf "$req"; sleep "$4") |
  openssl s_client -connect "$1" "$2" 2>&1
true
"#;

#[test]
fn renegotiation_refused_and_a_key_update_leave_the_counts_exact() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-tls-renegotiation").unwrap();
    certificates(&dir);
    fs::create_dir(dir.path().join("www")).unwrap();
    let obs = start_observer();
    let mut web = Pod::new(&bridge).unwrap();
    let client = Pod::new(&bridge).unwrap();
    nginx::start(&mut web, &dir, &nginx_conf(&dir), PORT).unwrap();
    // The node's libssl: probed at start, or at nginx's exec look where pid 1's root is not
    // readable (the first requests of a file not yet probed are missed).
    wait_probed(&obs, "libssl");
    let script = dir.write("s_client.sh", S_CLIENT).unwrap();
    let addr = format!("{}:{PORT}", web.ip);
    let pause = slowdown().to_string();
    let run = |proto: &str, cmd: &str| -> String {
        let out = client
            .run("sh", &[&script, &addr, proto, cmd, &pause])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // TLS 1.2: nginx's OpenSSL refuses the client's renegotiation (a `no_renegotiation`
    // alert) and the connection ends: its one request.
    let refused = run("-tls1_2", "R");
    assert!(
        refused.contains("RENEGOTIATING") && refused.contains("no renegotiation"),
        "renegotiation refused: {refused}"
    );
    // TLS 1.3: both ends update their keys and the connection goes on: two requests.
    let updated = run("-tls1_3", "K");
    assert!(updated.contains("KEYUPDATE"), "key update: {updated}");
    let got = |out: &str| out.matches("HTTP/1.1 200 OK").count() as u64;
    assert_eq!((got(&refused), got(&updated)), (1, 2), "what s_client got");
    let want = Tally::from([("200".to_string(), 3)]);
    let samples = obs
        .scrape_until(scaled(WAIT), |x| {
            observed(x, "server", &web, &[]) == want && observed(x, "client", &client, &[]) == want
        })
        .unwrap();
    let log = fs::read_to_string(dir.join("access.log")).unwrap();
    assert_eq!(
        (log.lines()).filter(|l| *l == "200 HTTP/1.1").count(),
        3,
        "nginx's log: {log}"
    );
    assert_eq!(observed(&samples, "server", &web, &[]), want, "server side");
    assert_eq!(
        observed(&samples, "client", &client, &[]),
        want,
        "client side"
    );
    // The handshakes inside the connections (a refused one, a key update) were never read as
    // HTTP.
    let unparsed = sum(
        &samples,
        "observer_l7_messages_unparsed_total",
        &[("protocol", "http")],
    );
    assert_eq!(unparsed, 0.0, "unparsed");
    obs.stop().unwrap();
}

/// Go's own TLS (`crypto/tls`, no OpenSSL anywhere): a Go HTTPS server started after the
/// observer, stripped (no symbol table: its functions come from Go's own function table), asked
/// by a Go client over HTTP/1.1 keep-alive connections, by another over HTTP/2 (ALPN), each
/// with 4 goroutines sharing its connections, and by a third with a new connection per request.
/// Every request is counted exactly on both sides against the server's log and each client's
/// own tally, with its HTTP version; nothing lost, nothing unparsed.
#[test]
fn go_https_server_and_clients_are_counted_exactly_on_both_sides() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-tls-go").unwrap();
    certificates(&dir);
    let go = gotls::build(&dir);
    let obs = start_observer();
    let mut srv = Pod::new(&bridge).unwrap();
    let h1 = Pod::new(&bridge).unwrap();
    let h2 = Pod::new(&bridge).unwrap();
    let h1c = Pod::new(&bridge).unwrap();
    let log = dir.join("go.log");
    let args = gotls::serve_args(&dir, PORT, &log);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The server stripped (its functions found in Go's own function table), the clients not
    // (in the symbol table).
    srv.spawn(&format!("{go}-stripped"), &args).unwrap();
    srv.wait_listening(PORT).unwrap();
    // A program is probed a moment after its exec: the clients' file is made known by a
    // server of its own first (unused), as a long-running client would be.
    let mut h1 = h1;
    let idle_log = dir.join("idle.log");
    let idle = gotls::serve_args(&dir, PORT + 1, &idle_log);
    let idle: Vec<&str> = idle.iter().map(String::as_str).collect();
    h1.spawn(&go, &idle).unwrap();
    wait_probed(&obs, "gotls-stripped");
    wait_probed(&obs, "/gotls kind");

    let codes = ["200", "201", "404", "200", "500", "503"];
    let (workers, rounds) = (4, if slowdown() > 1 { 2 } else { 25 });
    let base = format!("https://{}:{PORT}", srv.ip);
    let mut want = Tally::new();
    for c in codes {
        *want.entry(c.to_string()).or_default() += workers * rounds;
    }
    let get = |pod: &Pod, version: &str| {
        let out = pod
            .run(
                &go,
                &[
                    "get",
                    &base,
                    version,
                    &workers.to_string(),
                    &rounds.to_string(),
                    &codes.join(","),
                ],
            )
            .unwrap();
        from_json(&String::from_utf8_lossy(&out.stdout))
    };
    let h1_t = get(&h1, "h1");
    let h2_t = get(&h2, "h2");
    let h1c_t = get(&h1c, "h1close");
    assert_eq!(h1_t, want, "the HTTP/1.1 Go client's own count");
    assert_eq!(h2_t, want, "the HTTP/2 Go client's own count");
    assert_eq!(
        h1c_t, want,
        "the HTTP/1.1 Go client without keep-alive's own count"
    );
    let mut served = want.clone();
    add(&mut served, &want);
    add(&mut served, &want);
    assert_eq!(code_log(&log), served, "the Go server's log");

    let s = wait_for(
        &obs,
        &[
            ("server", &srv, total(&served)),
            ("client", &h1, total(&want)),
            ("client", &h2, total(&want)),
            ("client", &h1c, total(&want)),
        ],
    );
    // Losses first: they would explain a count below.
    assert_nothing_lost(&s);
    assert_eq!(observed(&s, "server", &srv, &[]), served, "Go server");
    assert_eq!(
        observed(&s, "client", &h1, &[]),
        want,
        "Go client, HTTP/1.1"
    );
    assert_eq!(observed(&s, "client", &h2, &[]), want, "Go client, HTTP/2");
    // A new connection per request: its reader and writer goroutines enter it on two CPUs at
    // once, and must not undo each other's decision that it carries HTTP.
    assert_eq!(
        observed(&s, "client", &h1c, &[]),
        want,
        "Go client, HTTP/1.1 without keep-alive"
    );
    let versions = |pod: &Pod, side: &str| label_values(&s, side, pod, "network_protocol_version");
    // The request line's version, and HTTP/2's "2".
    assert_eq!(versions(&h1, "client"), BTreeSet::from(["1.1".to_string()]));
    assert_eq!(
        versions(&h1c, "client"),
        BTreeSet::from(["1.1".to_string()])
    );
    assert_eq!(versions(&h2, "client"), BTreeSet::from(["2".to_string()]));
    assert_eq!(
        versions(&srv, "server"),
        BTreeSet::from(["1.1".to_string(), "2".to_string()])
    );
    assert_eq!(
        label_values(&s, "server", &srv, "url_scheme"),
        BTreeSet::from(["https".to_string()])
    );
    for protocol in ["http", "http2"] {
        let label = [("protocol", protocol)];
        let unparsed = sum(&s, "observer_l7_messages_unparsed_total", &label);
        let why: Vec<_> = matching(&s, "observer_l7_messages_unparsed_total", &label)
            .filter(|x| x.value > 0.0)
            .collect();
        assert_eq!(unparsed, 0.0, "unparsed {protocol}: {why:?}");
    }
    obs.stop().unwrap();
}

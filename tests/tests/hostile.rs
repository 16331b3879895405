//! Hostile and unusual traffic, as a new user's traffic would be: clients that half-close their
//! connections and read the answer later, clients that reset right after sending, at the same
//! time as well-behaved clients of another server whose sockets reuse the same kernel memory;
//! and session ids and random tokens in request paths. Every count is exact against what each
//! program did, and every request stays on its own pod; no secret reaches a label, the live
//! stream or the command line.

use std::{
    collections::BTreeMap,
    fs,
    time::{Duration, Instant},
};

use observer_tests::{
    grpc::{connect, pb, runtime},
    metrics::Sample,
    net::Bridge,
    observer::{binary, Observer},
    pod::Pod,
    require_root, scaled, slowdown, TempDir,
};

const WAIT: Duration = Duration::from_secs(15);

/// One request per connection: reads the request head, logs `REQ <path>`, answers 200 (a small
/// body, one write) and logs `SENT <path>`, or `FAILED <path>` when the write failed (the client
/// reset first). Args: port, log file.
const LOGGING_SERVER: &str = r#"
import socket, socketserver, sys, threading
port, log_path = int(sys.argv[1]), sys.argv[2]
lock = threading.Lock()
log = open(log_path, "a", buffering=1)
def note(line):
    with lock:
        log.write(line + "\n")
class H(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                b = s.recv(4096)
                if not b:
                    return
                data += b
        except OSError:
            return
        path = data.split(b" ")[1].decode()
        note("REQ " + path)
        body = b"ok\n"
        resp = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n" + body
        try:
            s.sendall(resp)
            note("SENT " + path)
        except OSError:
            note("FAILED " + path)
class S(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
S(("0.0.0.0", port), H).serve_forever()
"#;

/// Hostile client: for each of N rounds, one connection that sends a request, half-closes
/// (`shutdown(SHUT_WR)`), waits 20 ms and reads the whole answer; and one that sends a request
/// and resets at once (`SO_LINGER` 0). Prints `half <status>` per answered half-close, and
/// `reset` per reset.
const HOSTILE_CLIENT: &str = r#"
import socket, struct, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for i in range(n):
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(b"GET /half/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
    s.shutdown(socket.SHUT_WR)
    time.sleep(0.02)
    got = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        got += b
    s.close()
    out.append("half " + got.split(b" ")[1].decode())
    r = socket.create_connection((host, port), timeout=10)
    r.sendall(b"GET /reset/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
    r.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    r.close()
    out.append("reset")
print("\n".join(out))
"#;

/// Well-behaved client: N requests, each on a connection of its own (new sockets all along, so
/// the kernel reuses socket memory), reading each answer. Prints each status.
const PLAIN_CLIENT: &str = r#"
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for i in range(n):
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(b"GET /plain/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
    got = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        got += b
    s.close()
    out.append(got.split(b" ")[1].decode())
print("\n".join(out))
"#;

/// Counts of a pod's series of one side: (status label, error_type label) → requests.
fn tally(s: &[Sample], family: &str, pod: &Pod) -> BTreeMap<(String, String), u64> {
    let mut t = BTreeMap::new();
    for x in s
        .iter()
        .filter(|x| x.name == family && x.labels.get("k8s_pod_uid") == Some(&pod.uid))
    {
        let k = (
            x.labels
                .get("http_response_status_code")
                .cloned()
                .unwrap_or_default(),
            x.labels.get("error_type").cloned().unwrap_or_default(),
        );
        *t.entry(k).or_default() += x.value as u64;
    }
    t.retain(|_, v| *v > 0);
    t
}

const SERVER: &str = "http_server_request_duration_seconds_count";
const CLIENT: &str = "http_client_request_duration_seconds_count";

fn ok(n: u64) -> ((String, String), u64) {
    (("200".to_string(), String::new()), n)
}

fn closed(n: u64) -> ((String, String), u64) {
    ((String::new(), "connection_closed".to_string()), n)
}

fn log_lines(path: &str) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn half_closes_and_resets_count_on_their_own_pods_beside_well_behaved_traffic() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-hostile").unwrap();
    let mut hostile_server = Pod::new(&bridge).unwrap();
    let hostile = Pod::new(&bridge).unwrap();
    let mut plain_server = Pod::new(&bridge).unwrap();
    let plain = Pod::new(&bridge).unwrap();
    let (hlog, plog) = (dir.join("hostile.log"), dir.join("plain.log"));
    hostile_server
        .spawn_python(LOGGING_SERVER, &["8080", &hlog])
        .unwrap();
    plain_server
        .spawn_python(LOGGING_SERVER, &["8080", &plog])
        .unwrap();
    hostile_server.wait_listening(8080).unwrap();
    plain_server.wait_listening(8080).unwrap();
    let obs = Observer::start(&["--probes", "tcp,http"]).unwrap();
    // Many rounds, so that socket memory freed by one connection is taken by another.
    let rounds = (400 / slowdown() as u64).max(20);
    let (n_h, n_p) = (rounds.to_string(), (3 * rounds).to_string());
    let (hs_ip, ps_ip) = (hostile_server.ip.clone(), plain_server.ip.clone());
    let (hostile_out, plain_out) = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            hostile
                .python(HOSTILE_CLIENT, &[&hs_ip, "8080", &n_h])
                .unwrap()
        });
        let p = sc.spawn(|| plain.python(PLAIN_CLIENT, &[&ps_ip, "8080", &n_p]).unwrap());
        (h.join().unwrap(), p.join().unwrap())
    });
    // The clients' own account.
    let half_ok = hostile_out.lines().filter(|l| *l == "half 200").count() as u64;
    let resets = hostile_out.lines().filter(|l| *l == "reset").count() as u64;
    assert_eq!((half_ok, resets), (rounds, rounds), "{hostile_out}");
    assert!(plain_out.lines().all(|l| l == "200"));
    assert_eq!(plain_out.lines().count() as u64, 3 * rounds);
    // The servers' own account, once every handler is done.
    let deadline = Instant::now() + scaled(WAIT);
    let settled = |path: &str| {
        let l = log_lines(path);
        let reqs = l.iter().filter(|x| x.starts_with("REQ ")).count();
        let done = l
            .iter()
            .filter(|x| x.starts_with("SENT ") || x.starts_with("FAILED "))
            .count();
        reqs == done
    };
    while !(settled(&hlog) && settled(&plog)) || log_lines(&plog).len() < 6 * rounds as usize {
        assert!(Instant::now() < deadline, "the servers did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(scaled(Duration::from_millis(500)));
    let h = log_lines(&hlog);
    let count = |prefix: &str| h.iter().filter(|x| x.starts_with(prefix)).count() as u64;
    let (sent_half, sent_reset, failed) = (
        count("SENT /half/"),
        count("SENT /reset/"),
        count("FAILED "),
    );
    assert_eq!(sent_half, rounds, "every half-close was answered");
    let seen_resets = count("REQ /reset/");
    let server_truth: BTreeMap<_, _> = [ok(sent_half + sent_reset), closed(failed)]
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .collect();
    let hostile_truth: BTreeMap<_, _> = [ok(rounds), closed(resets)].into_iter().collect();
    let plain_truth: BTreeMap<_, _> = [ok(3 * rounds)].into_iter().collect();

    let want = |s: &[Sample]| {
        tally(s, SERVER, &hostile_server) == server_truth
            && tally(s, CLIENT, &hostile) == hostile_truth
            && tally(s, SERVER, &plain_server) == plain_truth
            && tally(s, CLIENT, &plain) == plain_truth
    };
    let s = obs.scrape_until(scaled(WAIT), want).unwrap();
    // Every request the hostile server read is counted once: with its status where the answer
    // went out, as connection_closed where it could not.
    assert_eq!(
        tally(&s, SERVER, &hostile_server),
        server_truth,
        "hostile server ({seen_resets} resets read, {sent_reset} answered, {failed} failed)"
    );
    // The half-closing client read every answer 20 ms after its close: each with its status.
    assert_eq!(tally(&s, CLIENT, &hostile), hostile_truth, "hostile client");
    assert_eq!(
        tally(&s, SERVER, &plain_server),
        plain_truth,
        "plain server"
    );
    assert_eq!(tally(&s, CLIENT, &plain), plain_truth, "plain client");
    // Nothing anywhere else: no pod has a side it never took.
    for (family, pod) in [
        (CLIENT, &hostile_server),
        (SERVER, &hostile),
        (CLIENT, &plain_server),
        (SERVER, &plain),
    ] {
        assert_eq!(
            tally(&s, family, pod),
            BTreeMap::new(),
            "{family} of pod {}",
            pod.uid
        );
    }
    // And the kernel's L7 table holds no connection of these pods: every one ended with its
    // socket (the table itself also holds whatever else the machine does, the scrapes
    // included, so it is read entry by entry).
    std::thread::sleep(scaled(Duration::from_secs(1)));
    let pods = [&hostile_server, &hostile, &plain_server, &plain].map(|p| p.cgroup_id());
    assert_eq!(
        l7_entries_of(&pods),
        0,
        "every L7 connection ended with its socket"
    );
    obs.stop().unwrap();
}

/// Entries of the kernel's L7 connection table (of every observer running) whose cgroup is one
/// of `cgroups` (the first 8 bytes of an entry, little-endian).
fn l7_entries_of(cgroups: &[u64]) -> usize {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "name", "L7_CONNS"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let byte = |b: &serde_json::Value| {
        u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    };
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            let value = e["value"].as_array().unwrap();
            let id = u64::from_le_bytes(std::array::from_fn(|i| byte(&value[i])));
            cgroups.contains(&id)
        })
        .count()
}

/// A client asking paths with secrets in them: a Java session id as a path parameter, a long
/// all-lower-case random token and a hex token without digits.
const SECRET_CLIENT: &str = r#"
import http.client, sys
host, port = sys.argv[1], int(sys.argv[2])
paths = [
    "/shop/cart;jsessionid=0A1B2C3D4E5F60718293A4B5C6D7E8F9",
    "/shop/cart;jsessionid=qpwoeirutyalskdjfhg/checkout",
    "/reset/kqzvhxmwptrbnjfdlswqx",
    "/t/deadbeefcafebabedeadbeefcafebabe",
]
c = http.client.HTTPConnection(host, port, timeout=10)
for p in paths:
    c.request("GET", p)
    r = c.getresponse()
    r.read()
    print(r.status)
"#;

const SECRETS: [&str; 4] = [
    "0A1B2C3D4E5F60718293A4B5C6D7E8F9",
    "qpwoeirutyalskdjfhg",
    "kqzvhxmwptrbnjfdlswqx",
    "deadbeefcafebabedeadbeefcafebabe",
];

#[test]
fn secrets_in_paths_reach_no_label_stream_or_command_line() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-secrets").unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let client = Pod::new(&bridge).unwrap();
    server
        .spawn_python(LOGGING_SERVER, &["8080", &dir.join("server.log")])
        .unwrap();
    server.wait_listening(8080).unwrap();
    let obs = Observer::start(&["--probes", "http"]).unwrap();
    let rt = runtime();
    let grpc = obs.grpc_addr.clone();
    let mut stream = rt.block_on(async {
        let mut c = connect(&grpc).await.unwrap();
        c.stream_requests(pb::StreamRequestsRequest::default())
            .await
            .unwrap()
            .into_inner()
    });
    // The command line's live view too.
    let tail = std::process::Command::new(binary())
        .args([
            "tail",
            "--server",
            &format!("http://{grpc}"),
            "--count",
            "8",
            "--output",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(scaled(Duration::from_millis(500)));
    let out = client.python(SECRET_CLIENT, &[&server.ip, "8080"]).unwrap();
    assert_eq!(out.lines().collect::<Vec<_>>(), ["200"; 4]);
    // Four requests, seen from both sides: eight records on the stream.
    let mut routes = Vec::new();
    rt.block_on(async {
        while routes.len() < 8 {
            let msg = tokio::time::timeout(scaled(WAIT), stream.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Some(pb::request_event::Event::Request(r)) = msg.event {
                routes.push(r.route);
            }
        }
    });
    let tail = tail.wait_with_output().unwrap();
    let cli = String::from_utf8_lossy(&tail.stdout).into_owned();
    assert_eq!(cli.lines().count(), 8, "{cli}");
    let s = obs
        .scrape_until(scaled(WAIT), |s| {
            observer_tests::metrics::sum(s, SERVER, &[]) >= 4.0
                && observer_tests::metrics::sum(s, CLIENT, &[]) >= 4.0
        })
        .unwrap();
    let exposition = obs.get("/metrics", None).unwrap().2;
    for secret in SECRETS {
        assert!(!exposition.contains(secret), "/metrics holds {secret}");
        assert!(
            !cli.contains(secret),
            "observer tail printed {secret}: {cli}"
        );
        assert!(
            routes.iter().all(|r| !r.contains(secret)),
            "the stream holds {secret}: {routes:?}"
        );
    }
    assert!(!exposition.contains("jsessionid") && !cli.contains("jsessionid"));
    let mut server_routes: Vec<String> = s
        .iter()
        .filter(|x| x.name == SERVER && x.labels.get("k8s_pod_uid") == Some(&server.uid))
        .map(|x| x.labels["http_route"].clone())
        .collect();
    server_routes.sort();
    server_routes.dedup();
    assert_eq!(
        server_routes,
        [
            "/reset/{id}",
            "/shop/cart",
            "/shop/cart/checkout",
            "/t/{id}"
        ]
    );
    obs.stop().unwrap();
}

/// A stand-in peer for the database ports (no real server would answer lies): per connection it
/// reads the first message; a well-formed one (Redis `ECHO`, Memcached `incr`, a PostgreSQL or
/// MySQL `SELECT 1`) gets a well-formed reply, anything else a reply whose lengths lie followed
/// by random bytes. Then it reads until the client closes. Args: the four ports.
const DB_PEER: &str = r#"
import random, socket, struct, sys, threading
ports = [int(p) for p in sys.argv[1:5]]
REDIS, PG, MYSQL, MC = ports
def good(port, data):
    if port == REDIS and b"ECHO" in data:
        return b"$2\r\nhi\r\n"
    if port == MC and data.startswith(b"incr"):
        return b"5\r\n"
    if port == PG and b"SELECT 1" in data:
        tag = b"SELECT 1\x00"
        return b"C" + struct.pack(">I", 4 + len(tag)) + tag + b"Z\x00\x00\x00\x05I"
    if port == MYSQL and b"SELECT 1" in data:
        ok = b"\x00\x00\x00\x02\x00\x00\x00"
        return struct.pack("<I", len(ok))[:3] + b"\x01" + ok
    return None
def lie(port, rnd):
    junk = bytes(rnd.getrandbits(8) for _ in range(512))
    return {
        REDIS: b"$99999999999999999999\r\nxx",
        MC: b"VALUE k 0 99999999999999\r\n",
        PG: b"T\x7f\xff\xff\xff",
        MYSQL: b"\x05\x00\x00\x07\x00\x00\x00\x02\x00",
    }[port] + junk
def serve(port, conn, seed):
    rnd = random.Random(seed)
    try:
        data = conn.recv(65536)
        conn.sendall(good(port, data) or lie(port, rnd))
        while conn.recv(65536):
            pass
    except OSError:
        pass
    conn.close()
def listen(port):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("0.0.0.0", port))
    l.listen(64)
    seed = 0
    while True:
        c, _ = l.accept()
        seed += 1
        threading.Thread(target=serve, args=(port, c, port * 1000 + seed), daemon=True).start()
for p in ports[1:]:
    threading.Thread(target=listen, args=(p,), daemon=True).start()
listen(ports[0])
"#;

/// For each port: `n` hostile connections (a message that claims the connection, then the peer's
/// lying reply, then the client's own truncated packets, lying lengths and random bytes), then
/// one well-formed exchange on a new connection. Prints `ok <port>` per well-formed reply read.
const DB_CLIENT: &str = r#"
import random, socket, struct, sys, time
host, n = sys.argv[1], int(sys.argv[2])
ports = [int(p) for p in sys.argv[3:7]]
REDIS, PG, MYSQL, MC = ports
def pg(tag, body):
    return tag + struct.pack(">I", 4 + len(body)) + body
def my(seq, body):
    return struct.pack("<I", len(body))[:3] + bytes([seq]) + body
claim = {
    REDIS: b"*1\r\n$4\r\nPING\r\n",
    MC: b"get k\r\n",
    PG: pg(b"Q", b"INSERT INTO t VALUES (1)\x00"),
    MYSQL: my(0, b"\x03INSERT INTO t VALUES (1)"),
}
lies = {
    REDIS: b"*3\r\n$999999999999\r\nab",
    MC: b"set k 0 0 99999999999999\r\nab",
    PG: b"P\xff\xff\xff\xff\x00",
    MYSQL: b"\x02\x00\x00\x05\x03S",
}
wellformed = {
    REDIS: (b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n", b"$2\r\nhi\r\n"),
    MC: (b"incr ctr 1\r\n", b"5\r\n"),
    PG: (pg(b"Q", b"SELECT 1\x00"), b"I"),
    MYSQL: (my(0, b"\x03SELECT 1"), b"\x00\x02\x00\x00\x00"),
}
rnd = random.Random(7)
for port in ports:
    for i in range(n):
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(claim[port])
        s.recv(65536)
        time.sleep(0.01)
        s.sendall(lies[port])
        time.sleep(0.01)
        s.sendall(bytes(rnd.getrandbits(8) for _ in range(1024)))
        s.close()
for port in ports:
    msg, end = wellformed[port]
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(msg)
    got = b""
    while not got.endswith(end):
        b = s.recv(65536)
        if not b:
            break
        got += b
    s.close()
    print("ok", port)
"#;

/// Lying lengths, truncated packets and random bytes on each database port, both ways: the
/// observer keeps running, counts them as unparsed per protocol, and a well-formed exchange
/// after them on the same ports is counted exactly once, under its own name.
#[test]
fn hostile_bytes_on_database_ports_are_counted_as_unparsed_and_crash_nothing() {
    require_root();
    let dir = TempDir::new("hostile-db").unwrap();
    let bridge = Bridge::new().unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let client = Pod::new(&bridge).unwrap();
    let ports = ["6379", "5432", "3306", "11211"];
    let peer = dir.write("peer.py", DB_PEER).unwrap();
    let mut args = vec![peer.as_str()];
    args.extend(ports);
    server.spawn("python3", &args).unwrap();
    for p in ports {
        server.wait_listening(p.parse().unwrap()).unwrap();
    }
    let obs = Observer::start(&["--probes", "tcp,redis,postgresql,mysql,memcached"]).unwrap();
    let script = dir.write("client.py", DB_CLIENT).unwrap();
    let n = if slowdown() > 1 { 2 } else { 10 };
    let n_arg = n.to_string();
    let mut args = vec![script.as_str(), server.ip.as_str(), n_arg.as_str()];
    args.extend(ports);
    let out = client.run("python3", &args).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(text.lines().count(), 4, "{text}");
    let systems = [
        ("redis", "redis", "ECHO"),
        ("postgresql", "postgresql", "SELECT"),
        ("mysql", "mysql", "SELECT"),
        ("memcached", "memcached", "incr"),
    ];
    let good = |s: &[Sample], system: &str, op: &str| -> f64 {
        s.iter()
            .filter(|x| {
                x.name == "db_client_operation_duration_seconds_count"
                    && x.labels.get("k8s_pod_uid") == Some(&client.uid)
                    && x.labels.get("db_system_name").map(String::as_str) == Some(system)
                    && x.labels.get("db_operation_name").map(String::as_str) == Some(op)
            })
            .map(|x| x.value)
            .sum()
    };
    let unparsed = |s: &[Sample], protocol: &str| -> f64 {
        s.iter()
            .filter(|x| {
                x.name == "observer_l7_messages_unparsed_total"
                    && x.labels.get("protocol").map(String::as_str) == Some(protocol)
            })
            .map(|x| x.value)
            .sum()
    };
    let done = |s: &[Sample]| {
        systems
            .iter()
            .all(|(p, sys, op)| good(s, sys, op) == 1.0 && unparsed(s, p) > 0.0)
    };
    let s = obs.scrape_until(WAIT, done).unwrap();
    for (protocol, system, op) in systems {
        let reasons: Vec<String> = s
            .iter()
            .filter(|x| {
                x.name == "observer_l7_messages_unparsed_total"
                    && x.labels.get("protocol").map(String::as_str) == Some(protocol)
                    && x.value > 0.0
            })
            .map(|x| format!("{}={}", x.labels["reason"], x.value))
            .collect();
        println!("{protocol}: unparsed {reasons:?}");
        assert_eq!(
            good(&s, system, op),
            1.0,
            "{protocol}: the well-formed {op}"
        );
        assert!(
            unparsed(&s, protocol) > 0.0,
            "{protocol}: nothing counted unparsed"
        );
    }
    let status = obs.stop().unwrap();
    assert!(status.success(), "the observer exited with {status}");
}

//! Privileged accuracy tests of HTTP/1.x capture (`--probes http`): real servers (nginx, a
//! threaded Python `http.server`) and real clients (wrk, hey, curl, Python `http.client`, raw
//! sockets) in simulated pods, with EXACT request counts on both sides compared with ground truth.
//!
//! Ground truth is what the programs at either end report themselves, never the observer:
//! - client side: what the load generator says it completed, per status: wrk's Lua `response()`
//!   callback (per-thread counters, summed over the threads in `done()`), hey's "Status code
//!   distribution", curl's `%{http_code}`, and the Python clients' own results (status, or the
//!   exception when no response came, and their own timing);
//! - server side: what the server logged: nginx's access log (`$status $request_method $uri`),
//!   and the Python server's log of every request it handled (method, path, status or `-` when it
//!   sent no response, and its own handling time from reading the request line to the end of the
//!   response).
//!
//! Where the two truths must agree (every answered request was seen by both ends) the test checks
//! that first, so a test cannot pass on a miscounting load generator. wrk stops by request count,
//! not duration: each thread has one connection and stops itself in `response()` after N
//! responses, so nothing is in flight when it ends and its count is the server's count too.
//!
//! Series are selected by `k8s_pod_uid` (the simulated pod's uid) and by side: the
//! `http_server_request_duration_seconds` histogram for the pod that served, the
//! `http_client_request_duration_seconds` one for the pod that called. Counts are the histograms'
//! `_count`, summed over the labels a test does not look at. A request without response has
//! `http_response_status_code=""` and a non-empty `error_type` (`"timeout"` once
//! `--http-request-timeout` passed).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    time::{Duration, Instant},
};

use observer_tests::{
    gotls::build_go,
    metrics::{matching, sum, Sample},
    net::Bridge,
    nginx,
    observer::Observer,
    pod::Pod,
    random_hex, require_root, scaled, slowdown, TempDir,
};

const WAIT: Duration = Duration::from_secs(10);
const PORT: u16 = 8080;
const PORT6: u16 = 8086;

// ---------------------------------------------------------------------------------------------
// Programs run in the pods
// ---------------------------------------------------------------------------------------------

/// Threaded HTTP/1.1 server (keep-alive, every response framed by Content-Length or chunked).
/// Args: port, log file, [IPv6-only port]. Logs `METHOD PATH STATUS SECONDS` per request after
/// its response is written (`-` for a request it never answers). A request line that is not
/// strictly `METHOD /target HTTP/1.x` CRLF is dropped: the connection closes without any answer
/// (so junk never gets a response). TCP_NODELAY, as most servers. A connection's first bytes
/// are peeked (`MSG_PEEK`) before they are read, as protocol-sniffing servers do. Paths:
/// /status/<code> (204 and 304 without body), /delay/<ms> (200 after sleeping), /split (203,
/// 1000-byte body in 100 writes), /big (200, 1 MiB), /upload and /expect (201 and 226; read a
/// Content-Length or chunked body), /chunked (207, chunked in 5 chunks), /hang (no answer: waits
/// for the client to close), /drop (closes at once without answer), /item/<x> (200), HEAD of
/// anything (200, Content-Length 12345, no body), anything else 404.
const HTTP_SERVER: &str = r#"
import http.server, re, socket, socketserver, sys, threading, time

port, log_path = int(sys.argv[1]), sys.argv[2]
v6_port = int(sys.argv[3]) if len(sys.argv) > 3 else 0
lock = threading.Lock()
log = open(log_path, "a", buffering=1)
LINE = re.compile(rb"[A-Z]+ /[!-~]* HTTP/1\.[01]\r\n")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def setup(self):
        # A connection's first bytes peeked before they are read, as servers that sniff the
        # protocol do (Envoy's listener filters; a TLS or HTTP/2 detector).
        try:
            self.request.recv(64, socket.MSG_PEEK)
        except OSError:
            pass
        super().setup()

    def parse_request(self):
        self.t0 = time.perf_counter()
        if not LINE.fullmatch(self.raw_requestline):
            self.close_connection = True
            return False
        return super().parse_request()

    def record(self, code):
        took = time.perf_counter() - self.t0
        with lock:
            log.write(f"{self.command} {self.path} {code} {took:.6f}\n")

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            n = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return n
                n += len(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return len(self.rfile.read(length)) if length else 0

    def head(self, code, headers):
        self.send_response_only(code)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()

    def send(self, code, body):
        # Head and body in one write, as most servers send a small response (pipelined
        # responses then reach the client whole, never cut between head and body).
        self.send_response_only(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self._headers_buffer.append(b"\r\n" + body)
        self.flush_headers()

    def serve(self):
        got = self.read_body()
        parts = self.path.split("?")[0].strip("/").split("/")
        what = parts[0]
        if self.command == "HEAD":
            code = 200
            self.head(code, [("Content-Length", "12345")])
        elif what == "status":
            code = int(parts[1])
            if code in (204, 304):
                self.head(code, [])
            else:
                self.send(code, b"status %d\n" % code)
        elif what == "delay":
            time.sleep(int(parts[1]) / 1000)
            code = 200
            self.send(code, b"slept\n")
        elif what == "split":
            code = 203
            self.head(code, [("Content-Length", "1000")])
            for _ in range(100):
                self.wfile.write(b"0123456789")
        elif what == "big":
            code = 200
            self.send(code, b"b" * (1 << 20))
        elif what in ("upload", "expect"):
            code = 201 if what == "upload" else 226
            self.send(code, b"%d\n" % got)
        elif what == "chunked":
            code = 207
            self.head(code, [("Transfer-Encoding", "chunked")])
            for i in range(5):
                chunk = b"chunk %d\n" % i
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        elif what in ("hang", "drop"):
            if what == "hang":
                self.rfile.read(1)
            self.close_connection = True
            code = "-"
        elif what == "item":
            code = 200
            self.send(code, b"item\n")
        else:
            code = 404
            self.send(code, b"no such thing\n")
        self.record(code)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_PROPFIND = serve


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "pod", self.server_address[1]


class Server6(Server):
    address_family = socket.AF_INET6


if v6_port:
    threading.Thread(target=Server6(("::", v6_port), Handler).serve_forever, daemon=True).start()
Server(("0.0.0.0", port), Handler).serve_forever()
"#;

/// Keep-alive client (`http.client`): args host, port, connections, plan file (JSON list of
/// `[method, path, body]`, body = bytes sent with Content-Length, negative = that many bytes
/// chunked, 0 = none). Request i goes on connection i % connections, in order. Prints a JSON list
/// of `[method, path, status or null, seconds, exception name or ""]`.
const HTTP_CLIENT: &str = r#"
import http.client, json, sys, threading, time

host, port, nconn = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
plan = json.load(open(sys.argv[4]))
out, lock = [], threading.Lock()


def chunks(n):
    while n > 0:
        k = min(n, 8192)
        n -= k
        yield b"c" * k


def worker(k):
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.connect()
    for method, path, body in plan[k::nconn]:
        data = b"p" * body if body > 0 else chunks(-body) if body < 0 else None
        t0 = time.perf_counter()
        try:
            conn.request(method, path, body=data)
            r = conn.getresponse()
            r.read()
            res = [method, path, r.status, time.perf_counter() - t0, ""]
        except Exception as e:
            conn.close()
            res = [method, path, None, time.perf_counter() - t0, type(e).__name__]
        with lock:
            out.append(res)
    conn.close()


threads = [threading.Thread(target=worker, args=(k,)) for k in range(nconn)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(out))
"#;

/// Python shared by the raw clients below: `response(f)` reads one response from the socket's
/// file `f` (its status line, its head, a `Content-Length` body) and returns its status.
macro_rules! read_response_py {
    () => {
        r#"
def response(f):
    code = f.readline().split()[1].decode()
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.decode().partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    f.read(length)
    return code
"#
    };
}

/// Sends GET requests for every path argument in ONE write on one connection (pipelining), then
/// reads the responses in order; prints their statuses.
const PIPELINING_CLIENT: &str = concat!(
    read_response_py!(),
    r#"
import socket, sys

host, port, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
s = socket.create_connection((host, port), timeout=30)
s.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: pod\r\n\r\n" % p.encode() for p in paths))
f = s.makefile("rb")
codes = [response(f) for _ in paths]
s.close()
print(" ".join(codes))
"#
);

/// One keep-alive connection: a request, then three whose heads go out in pieces, each its own
/// segment (`TCP_NODELAY`, a pause between): `G`, `E`, then the rest; `GET` and the rest; `D`
/// and `ELETE …` (which alone reads as a request of method `ELETE`). Each response is read
/// before the next request. Prints the statuses.
const SPLIT_HEAD_CLIENT: &str = concat!(
    read_response_py!(),
    r#"
import socket, sys, time

host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
head = b"GET %s HTTP/1.1\r\nHost: pod\r\n\r\n" % path.encode()
delete = b"DELETE %s HTTP/1.1\r\nHost: pod\r\n\r\n" % path.encode()
line = head.index(b"\r\n")
codes = []

def connection(requests):
    s = socket.create_connection((host, port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    for pieces in requests:
        for p in pieces:
            s.sendall(p)
            time.sleep(0.1)
        codes.append(response(f))
    s.close()

connection([
    [head],
    # A next request's first bytes alone.
    [head[:1], head[1:2], head[2:]],
    [head[:3], head[3:]],
    [delete[:1], delete[1:]],
    # A head whose request line is cut: inside the target, before the version, and a head
    # in four pieces, its last one the empty line alone.
    [head[:10], head[10:]],
    [head[:line - 9], head[line - 9:]],
    [head[:line - 9], head[line - 9:line + 2], head[line + 2:-2], head[-2:]],
])
# A connection's first request cut inside its target.
connection([[head[:10], head[10:]]])
print(" ".join(codes))
"#
);

/// Sends junk to an HTTP port, each on its own connection, half-closes and reads what comes back:
/// binary bytes, a real TLS ClientHello (made by Python's ssl without a network), a request line
/// cut short ("GET /trunc", no CRLF), and a request line with a control byte in its target. Then
/// a valid GET followed by junk on the same connection, and a valid GET on a fresh one. Prints the
/// number of bytes each junk case got back, then the two statuses.
const JUNK_CLIENT: &str = concat!(
    read_response_py!(),
    r#"
import socket, ssl, sys

host, port = sys.argv[1], int(sys.argv[2])
binary = b"\x00\x01\x02\xff" + bytes((i * 7 + 3) % 256 for i in range(4096)).replace(b"\n", b"\x00")
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(incoming, outgoing, server_hostname="example.com")
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = outgoing.read()
assert hello[0] == 0x16, hello[:8]
GET = b"GET /status/200 HTTP/1.1\r\nHost: pod\r\n\r\n"


def drain(s):
    got = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                return got
            got += b
    except ConnectionResetError:
        return got


def status(s):
    return response(s.makefile("rb"))


out = []
for junk in [binary, hello, b"GET /trunc", b"GET /a\x01b HTTP/1.1\r\nHost: pod\r\n\r\n"]:
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(junk)
    s.shutdown(socket.SHUT_WR)
    out.append(str(len(drain(s))))
    s.close()
s = socket.create_connection((host, port), timeout=30)
s.sendall(GET)
first = status(s)
s.sendall(binary)
s.shutdown(socket.SHUT_WR)
out.append(str(len(drain(s))))
s.close()
s = socket.create_connection((host, port), timeout=30)
s.sendall(GET)
out += [first, status(s)]
s.close()
print(" ".join(out))
"#
);

/// Requests that never get an answer: H connections each send `GET /hang` and are held open until
/// the file `go` appears; D requests to /drop, which the server closes without answering. Writes
/// `go.sent` (what the /drop requests got) once all were sent, and after closing the held
/// connections `go.done` (how many bytes they received: none).
const UNANSWERED_CLIENT: &str = r#"
import http.client, os, socket, sys, time

host, port, hang, drop, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
held = []
for _ in range(hang):
    s = socket.create_connection((host, port), timeout=60)
    s.sendall(b"GET /hang HTTP/1.1\r\nHost: pod\r\n\r\n")
    held.append(s)
seen = []
for _ in range(drop):
    c = http.client.HTTPConnection(host, port, timeout=60)
    try:
        c.request("GET", "/drop")
        seen.append(str(c.getresponse().status))
    except http.client.RemoteDisconnected:
        seen.append("disconnected")
    c.close()
with open(go + ".tmp", "w") as f:
    f.write(" ".join(seen))
os.rename(go + ".tmp", go + ".sent")
while not os.path.exists(go):
    time.sleep(0.05)
got = 0
for s in held:
    s.setblocking(False)
    try:
        got += len(s.recv(65536))
    except BlockingIOError:
        pass
    s.close()
with open(go + ".tmp", "w") as f:
    f.write(str(got))
os.rename(go + ".tmp", go + ".done")
"#;

/// The paths wrk cycles over ([`nginx::wrk_mix`]).
const WRK_PATHS: &[&str] = &["/ok", "/ok", "/static.txt", "/missing", "/fail"];

/// wrk script: every request is `GET /item/<word>` with a word of five lower-case letters
/// (nothing the route templating turns into `{id}`), never the same word twice: thread `id`
/// numbers its requests from `id * (limit + 1)` (wrk calls thread 0's `request()` once more, to
/// check the script, before it sends anything). Script arguments: N, a directory, the number of
/// threads. Each thread counts the responses per status on its one connection and stops itself
/// after N, then creates `<dir>/done-<id>`; the thread that finds every thread's file there
/// sends wrk SIGINT, which ends wrk's `-d` wait at once (wrk waits all of `-d` otherwise).
/// `popen`, not `os.execute`: `system()` ignores SIGINT in its caller while it runs. `done()`
/// is [`nginx::WRK_DONE`].
const WRK_WORDS: &str = r#"
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads - 1)
end
function init(args)
  limit = tonumber(args[1])
  dir = args[2]
  nthreads = tonumber(args[3])
  counts = {}
  n = 0
  sent = 0
end
local function word(g)
  local s = ""
  for _ = 1, 5 do
    s = string.char(97 + g % 26) .. s
    g = math.floor(g / 26)
  end
  return s
end
function request()
  local g = id * (limit + 1) + sent
  sent = sent + 1
  return wrk.format("GET", "/item/" .. word(g))
end
function response(status, headers, body)
  local k = tostring(status)
  counts[k] = (counts[k] or 0) + 1
  n = n + 1
  if n >= limit then
    wrk.thread:stop()
    io.open(dir .. "/done-" .. id, "w"):close()
    for t = 0, nthreads - 1 do
      local f = io.open(dir .. "/done-" .. t)
      if not f then return end
      f:close()
    end
    io.popen("kill -INT $PPID"):close()
  end
end
"#;

/// nginx with a master and two workers (the master's comm is the pod's service_name "nginx").
/// Access log = server-side truth. `return 500` closes the connection (nginx does that for 500).
/// `/item/<anything>` answers 200 with an empty body.
fn nginx_conf(dir: &TempDir, port: u16) -> String {
    nginx::conf(
        dir,
        2,
        "$status $request_method $uri $server_protocol",
        &format!(
            r#"  sendfile on;
  server {{
    listen {port};
    root {d}/www;
    location = /ok {{ return 200 "ok\n"; }}
    location = /fail {{ return 500; }}
    location /item/ {{ return 200; }}
  }}"#,
            d = dir.path().display()
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Ground truth
// ---------------------------------------------------------------------------------------------

/// One request as an end saw it. `status` is "" when no response came (or was sent).
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    status: String,
    seconds: f64,
    error: String,
}

type Tally = BTreeMap<Vec<String>, u64>;

/// Counts of `reqs` keyed by `key`.
fn tally(reqs: &[Req], key: impl Fn(&Req) -> Vec<String>) -> Tally {
    let mut t = Tally::new();
    for r in reqs {
        *t.entry(key(r)).or_default() += 1;
    }
    t
}

fn by_status(r: &Req) -> Vec<String> {
    vec![r.status.clone()]
}

fn by_method_status(r: &Req) -> Vec<String> {
    vec![r.method.clone(), r.status.clone()]
}

/// Status-keyed tally from `(status, count)` pairs (what wrk and hey print).
fn status_tally<'a>(pairs: impl IntoIterator<Item = (&'a str, u64)>) -> Tally {
    let mut t = Tally::new();
    for (status, n) in pairs {
        *t.entry(vec![status.to_string()]).or_default() += n;
    }
    t
}

fn merge(a: &Tally, b: &Tally) -> Tally {
    let mut t = a.clone();
    for (k, v) in b {
        *t.entry(k.clone()).or_default() += v;
    }
    t
}

fn total(t: &Tally) -> u64 {
    t.values().sum()
}

/// The Python server's log.
fn server_log(path: &str) -> Vec<Req> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 4, "server log line {l:?}");
            Req {
                method: f[0].to_string(),
                path: f[1].to_string(),
                status: if f[2] == "-" {
                    String::new()
                } else {
                    f[2].to_string()
                },
                seconds: f[3].parse().unwrap(),
                error: String::new(),
            }
        })
        .collect()
}

/// Starts [`HTTP_SERVER`] in `pod` (and its IPv6-only listener on `v6_port` when given); returns
/// the path of its log.
fn start_server(pod: &mut Pod, dir: &TempDir, v6_port: Option<u16>) -> String {
    let log = dir.join(&format!("server-{}.log", random_hex(6)));
    let port = PORT.to_string();
    let v6 = v6_port.map(|p| p.to_string());
    let mut args = vec![port.as_str(), log.as_str()];
    args.extend(v6.as_deref());
    pod.spawn_python(HTTP_SERVER, &args).unwrap();
    pod.wait_listening(PORT).unwrap();
    if let Some(p) = v6_port {
        pod.wait_listening(p).unwrap();
    }
    log
}

/// Runs [`HTTP_CLIENT`] in `pod` with `plan` (method, path, body) and returns its results.
fn run_client(
    pod: &Pod,
    dir: &TempDir,
    host: &str,
    port: u16,
    conns: usize,
    plan: &[(&str, String, i64)],
) -> Vec<Req> {
    let plan: Vec<serde_json::Value> = plan
        .iter()
        .map(|(m, p, b)| serde_json::json!([m, p, b]))
        .collect();
    let file = dir
        .write(
            &format!("plan-{}.json", random_hex(6)),
            serde_json::to_vec(&plan).unwrap(),
        )
        .unwrap();
    let out = pod
        .python(
            HTTP_CLIENT,
            &[host, &port.to_string(), &conns.to_string(), &file],
        )
        .unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap();
    rows.iter()
        .map(|r| Req {
            method: r[0].as_str().unwrap().to_string(),
            path: r[1].as_str().unwrap().to_string(),
            status: r[2].as_u64().map(|s| s.to_string()).unwrap_or_default(),
            seconds: r[3].as_f64().unwrap(),
            error: r[4].as_str().unwrap().to_string(),
        })
        .collect()
}

/// wrk's count per status ([`nginx::wrk_statuses`]).
fn parse_wrk(out: &str) -> Tally {
    status_tally((nginx::wrk_statuses(out).iter()).map(|(s, n)| (s.as_str(), *n)))
}

/// hey's "Status code distribution" (`  [200]\t700 responses`).
fn parse_hey(out: &str) -> Tally {
    status_tally(out.lines().filter_map(|l| {
        let l = l.trim();
        let (code, rest) = l.strip_prefix('[')?.split_once(']')?;
        Some((
            code,
            rest.trim().strip_suffix("responses")?.trim().parse().ok()?,
        ))
    }))
}

/// nginx's access log ([`nginx_conf`]'s `truth` format) keyed by `[uri, status]`.
fn nginx_log(dir: &TempDir) -> Tally {
    let text = fs::read_to_string(dir.join("access.log")).unwrap_or_default();
    let mut t = Tally::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f.len(), 4, "access log line {l:?}");
        assert_eq!(f[1], "GET");
        *t.entry(vec![f[2].to_string(), f[0].to_string()])
            .or_default() += 1;
    }
    t
}

/// nginx's access log per HTTP version (`1.0`, `1.1`).
fn nginx_versions(dir: &TempDir) -> Tally {
    let text = fs::read_to_string(dir.join("access.log")).unwrap_or_default();
    let mut t = Tally::new();
    for l in text.lines() {
        let v = l.rsplit(' ').next().unwrap_or_default();
        let v = v.strip_prefix("HTTP/").unwrap_or(v);
        *t.entry(vec![v.to_string()]).or_default() += 1;
    }
    t
}

/// Drops the first key element (e.g. `[uri, status]` → `[status]`), summing.
fn project(t: &Tally, keep: impl Fn(&[String]) -> Vec<String>) -> Tally {
    let mut out = Tally::new();
    for (k, v) in t {
        *out.entry(keep(k)).or_default() += v;
    }
    out
}

/// The command name of the first process of the pod's container cgroup: what the observer uses
/// as the pod's `service_name`.
fn main_comm(pod: &Pod) -> String {
    let procs = fs::read_to_string(pod.cgroup.join("cgroup.procs")).unwrap();
    let pid = procs.lines().next().expect("the pod runs a process").trim();
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap()
        .trim()
        .to_string()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[(xs.len() - 1) / 2]
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

// ---------------------------------------------------------------------------------------------
// What the observer exports
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Side {
    /// `http_server_request_duration_seconds`: requests the pod answered.
    Server,
    /// `http_client_request_duration_seconds`: requests the pod made.
    Client,
}

impl Side {
    fn metric(self, suffix: &str) -> String {
        let base = match self {
            Side::Server => "http_server_request_duration_seconds",
            Side::Client => "http_client_request_duration_seconds",
        };
        format!("{base}{suffix}")
    }
}

fn with_pod<'a>(pod: &'a Pod, want: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut w = vec![("k8s_pod_uid", pod.uid.as_str())];
    w.extend_from_slice(want);
    w
}

/// Request counts of `pod` on `side` (its histogram's `_count`) over the series whose labels
/// include `want`, keyed by the values of the labels `by` (missing label = ""); zeros left out.
fn observed(s: &[Sample], side: Side, pod: &Pod, want: &[(&str, &str)], by: &[&str]) -> Tally {
    let name = side.metric("_count");
    let want = with_pod(pod, want);
    let mut t = Tally::new();
    for x in matching(s, &name, &want) {
        let key = by
            .iter()
            .map(|l| x.labels.get(*l).cloned().unwrap_or_default())
            .collect();
        assert_eq!(x.value.fract(), 0.0, "a count is whole: {x:?}");
        *t.entry(key).or_default() += x.value as u64;
    }
    t.retain(|_, v| *v > 0);
    t
}

/// Per-status request counts of `pod` on `side` (summed over routes, methods, peers).
fn per_status(s: &[Sample], side: Side, pod: &Pod) -> Tally {
    observed(s, side, pod, &[], &["http_response_status_code"])
}

/// Per-(method, status) request counts of `pod` on `side`.
fn per_method_status(s: &[Sample], side: Side, pod: &Pod) -> Tally {
    observed(
        s,
        side,
        pod,
        &[],
        &["http_request_method", "http_response_status_code"],
    )
}

/// All requests of `pod` on `side`.
fn requests(s: &[Sample], side: Side, pod: &Pod) -> u64 {
    sum(s, &side.metric("_count"), &with_pod(pod, &[])) as u64
}

/// Distinct values of `label` on the `_count` series of `pod` on `side`.
fn label_values(s: &[Sample], side: Side, pod: &Pod, label: &str) -> BTreeSet<String> {
    let name = side.metric("_count");
    matching(s, &name, &with_pod(pod, &[]))
        .map(|x| x.labels.get(label).cloned().unwrap_or_default())
        .collect()
}

/// Every histogram series of `pod` on `side` is consistent: buckets cumulative, the `+Inf` bucket
/// equal to `_count`, and `_sum` present.
fn check_histograms(s: &[Sample], side: Side, pod: &Pod) {
    let count_name = side.metric("_count");
    let bucket_name = side.metric("_bucket");
    let sum_name = side.metric("_sum");
    for c in matching(s, &count_name, &with_pod(pod, &[])) {
        let same = |x: &Sample| {
            let mut l = x.labels.clone();
            l.remove("le");
            l == c.labels
        };
        let mut buckets: Vec<(f64, f64)> = s
            .iter()
            .filter(|x| x.name == bucket_name && same(x))
            .map(|x| (x.labels["le"].parse::<f64>().unwrap(), x.value))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(!buckets.is_empty(), "no buckets for {c:?}");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "buckets not cumulative: {buckets:?}"
        );
        let inf = buckets.last().unwrap();
        assert!(inf.0.is_infinite(), "no +Inf bucket for {c:?}");
        assert_eq!(inf.1, c.value, "+Inf bucket != _count for {:?}", c.labels);
        assert!(
            s.iter().any(|x| x.name == sum_name && x.labels == c.labels),
            "no _sum for {:?}",
            c.labels
        );
    }
}

/// (upper bound, cumulative count) of the buckets of `pod` on `side`, summed over its series.
fn buckets(s: &[Sample], side: Side, pod: &Pod) -> Vec<(f64, f64)> {
    let mut by_le: BTreeMap<String, f64> = BTreeMap::new();
    for x in matching(s, &side.metric("_bucket"), &with_pod(pod, &[])) {
        *by_le.entry(x.labels["le"].clone()).or_default() += x.value;
    }
    let mut b: Vec<(f64, f64)> = by_le
        .into_iter()
        .map(|(le, v)| (le.parse().unwrap(), v))
        .collect();
    b.sort_by(|a, b| a.0.total_cmp(&b.0));
    b
}

/// The bucket (lower, upper] that holds the median of the histogram of `pod` on `side`.
fn median_bucket(s: &[Sample], side: Side, pod: &Pod) -> (f64, f64) {
    let b = buckets(s, side, pod);
    let n = b.last().map(|x| x.1).unwrap_or(0.0);
    let mut lower = 0.0;
    for (le, cum) in b {
        if cum >= (n / 2.0).ceil() {
            return (lower, le);
        }
        lower = le;
    }
    panic!("empty histogram for pod {}", pod.uid)
}

/// Mean duration (`_sum / _count`) of `pod` on `side`.
fn observed_mean(s: &[Sample], side: Side, pod: &Pod) -> f64 {
    sum(s, &side.metric("_sum"), &with_pod(pod, &[])) / requests(s, side, pod) as f64
}

/// No L7 record was lost (`observer_events_lost_total` of every source starting with `l7`).
fn assert_no_http_loss(s: &[Sample]) {
    for x in s.iter().filter(|x| x.name == "observer_events_lost_total") {
        if x.labels.get("source").is_some_and(|v| v.starts_with("l7")) {
            assert_eq!(x.value, 0.0, "events lost: {:?}", x.labels);
        }
    }
}

fn unparsed(s: &[Sample]) -> f64 {
    sum(
        s,
        "observer_l7_messages_unparsed_total",
        &[("protocol", "http")],
    )
}

/// Scrapes until every (side, pod) has at least its number of requests (or WAIT passes).
fn wait_for(obs: &Observer, want: &[(Side, &Pod, u64)]) -> Vec<Sample> {
    obs.scrape_until(WAIT, |s| {
        want.iter()
            .all(|(side, pod, n)| requests(s, *side, pod) >= *n)
    })
    .unwrap()
}

fn start_observer(extra: &[&str]) -> Observer {
    let mut flags = vec!["--probes", "http"];
    flags.extend_from_slice(extra);
    Observer::start(&flags).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn nginx_under_wrk_and_hey_is_counted_exactly_per_status_on_both_sides() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-http-nginx").unwrap();
    let mut web = Pod::new(&bridge).unwrap();
    let wrk = Pod::new(&bridge).unwrap();
    let hey = Pod::new(&bridge).unwrap();
    fs::create_dir(dir.path().join("www")).unwrap();
    dir.write("www/static.txt", "a static file, sent with sendfile\n")
        .unwrap();
    nginx::start(&mut web, &dir, &nginx_conf(&dir, PORT), PORT).unwrap();
    let obs = start_observer(&[]);
    let url = format!("http://{}:{PORT}", web.ip);

    // wrk: 2 threads x 1 connection x 500 responses, mix 2/5 /ok, 1/5 /static.txt (200),
    // 1/5 /missing (404), 1/5 /fail (500, connection closed and reopened).
    let lua = dir.write("mix.lua", nginx::wrk_mix(WRK_PATHS)).unwrap();
    let duration = format!("{}s", 3 * slowdown());
    let out = wrk
        .run(
            "wrk",
            &["-t2", "-c2", "-d", &duration, "-s", &lua, &url, "--", "500"],
        )
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let wrk_truth = parse_wrk(&out);
    assert_eq!(
        total(&wrk_truth),
        1000,
        "wrk did not stop by count within {duration}: {out}"
    );
    assert_eq!(
        wrk_truth,
        status_tally([("200", 600), ("404", 200), ("500", 200)]),
        "{out}"
    );
    assert!(!out.contains("Socket errors"), "{out}");
    assert_eq!(
        project(&nginx_log(&dir), |k| vec![k[1].clone()]),
        wrk_truth,
        "nginx logged what wrk counted"
    );

    // hey: exact counts with concurrency, keep-alive (Go's client).
    let mut hey_truth = Tally::new();
    for (path, n, c, status) in [("/static.txt", 300, 3, "200"), ("/fail", 100, 4, "500")] {
        let out = hey
            .run(
                "hey",
                &[
                    "-n",
                    &n.to_string(),
                    "-c",
                    &c.to_string(),
                    &format!("{url}{path}"),
                ],
            )
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        let t = parse_hey(&out);
        assert_eq!(t, status_tally([(status, n)]), "{out}");
        assert!(!out.contains("Error distribution"), "{out}");
        hey_truth = merge(&hey_truth, &t);
    }
    // HTTP/1.0 requests (curl, one connection each) from the same pod: their series say so.
    let old_ones = if slowdown() > 1 { 3 } else { 10 };
    let ok = format!("{url}/ok");
    for _ in 0..old_ones {
        let code = hey
            .run(
                "curl",
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--http1.0",
                    &ok,
                ],
            )
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&code.stdout), "200");
    }
    hey_truth = merge(&hey_truth, &status_tally([("200", old_ones)]));
    let server_truth = nginx_log(&dir);
    assert_eq!(
        project(&server_truth, |k| vec![k[1].clone()]),
        merge(&wrk_truth, &hey_truth),
        "nginx logged what wrk and hey counted"
    );

    let s = wait_for(
        &obs,
        &[
            (Side::Server, &web, total(&server_truth)),
            (Side::Client, &wrk, total(&wrk_truth)),
            (Side::Client, &hey, total(&hey_truth)),
        ],
    );
    assert_eq!(
        observed(
            &s,
            Side::Server,
            &web,
            &[],
            &["http_route", "http_response_status_code"]
        ),
        server_truth,
        "nginx pod: [route, status]"
    );
    assert_eq!(per_status(&s, Side::Client, &wrk), wrk_truth, "wrk pod");
    assert_eq!(per_status(&s, Side::Client, &hey), hey_truth, "hey pod");
    // Per HTTP version: nginx's log on the server side, what each client sent on its own.
    let versions = &["network_protocol_version"];
    assert_eq!(
        observed(&s, Side::Server, &web, &[], versions),
        nginx_versions(&dir),
        "nginx pod: per version"
    );
    assert_eq!(
        observed(&s, Side::Client, &hey, &[], versions),
        Tally::from([
            (vec!["1.0".to_string()], old_ones),
            (vec!["1.1".to_string()], total(&hey_truth) - old_ones)
        ]),
        "hey pod: per version"
    );
    assert_eq!(
        observed(&s, Side::Client, &wrk, &[], versions),
        Tally::from([(vec!["1.1".to_string()], total(&wrk_truth))]),
        "wrk pod: per version"
    );
    assert_eq!(
        label_values(&s, Side::Server, &web, "http_request_method"),
        BTreeSet::from(["GET".to_string()])
    );
    assert_eq!(
        label_values(&s, Side::Server, &web, "service_name"),
        BTreeSet::from(["nginx".to_string()])
    );
    assert_eq!(
        label_values(&s, Side::Server, &web, "error_type"),
        BTreeSet::from([String::new()])
    );
    for client in [&wrk, &hey] {
        assert_eq!(
            label_values(&s, Side::Client, client, "server_address"),
            BTreeSet::from([web.ip.clone()])
        );
        assert_eq!(
            label_values(&s, Side::Client, client, "server_port"),
            BTreeSet::from([PORT.to_string()])
        );
        assert_eq!(
            requests(&s, Side::Server, client),
            0,
            "a client served nothing"
        );
        check_histograms(&s, Side::Client, client);
    }
    assert_eq!(requests(&s, Side::Client, &web), 0, "nginx made no request");
    check_histograms(&s, Side::Server, &web);
    assert_no_http_loss(&s);
    obs.stop().unwrap();
}

/// Go's `net/http` and Node's `http`, servers and clients, neither written for the observer:
/// a Node client (a keep-alive agent, 4 requests at a time; GETs, and POSTs whose body the
/// client writes after the head) asks a Go server (which reads one byte ahead between
/// keep-alive requests), a Go client (4 goroutines, 2 idle connections kept: the others are
/// opened and closed) asks a Node server (chunked answers written in two pieces, others
/// whole). Per method and status, exact on both sides against each server's log and each
/// client's own tally; nothing unparsed.
#[test]
fn go_and_node_servers_and_clients_are_counted_exactly_per_status_on_both_sides() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-http-go-node").unwrap();
    let go = build_go(&dir, "gotls", include_str!("../src/gotls.go"), false);
    let node_server = dir.write("server.js", NODE_SERVER).unwrap();
    let node_client = dir.write("client.js", NODE_CLIENT).unwrap();
    let mut go_srv = Pod::new(&bridge).unwrap();
    let mut node_srv = Pod::new(&bridge).unwrap();
    let go_cli = Pod::new(&bridge).unwrap();
    let node_cli = Pod::new(&bridge).unwrap();
    let (go_log, node_log) = (dir.join("go.log"), dir.join("node.log"));
    let obs = start_observer(&[]);
    go_srv
        .spawn(&go, &["serve-http", &format!(":{PORT}"), &go_log])
        .unwrap();
    node_srv
        .spawn("node", &[&node_server, &PORT.to_string(), &node_log])
        .unwrap();
    go_srv.wait_listening(PORT).unwrap();
    node_srv.wait_listening(PORT).unwrap();

    let rounds = if slowdown() > 1 { 2 } else { 25 };
    let codes = ["200", "201", "404", "200", "500", "503"];
    let tally = |out: &std::process::Output| -> BTreeMap<String, u64> {
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
        (v.as_object().unwrap().iter())
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
            .collect()
    };
    let go_said = tally(
        &go_cli
            .run(
                &go,
                &[
                    "get",
                    &format!("http://{}:{PORT}", node_srv.ip),
                    "h1",
                    "4",
                    &rounds.to_string(),
                    &codes.join(","),
                ],
            )
            .unwrap(),
    );
    let node_said = tally(
        &node_cli
            .run(
                "node",
                &[
                    &node_client,
                    &format!("http://{}:{PORT}", go_srv.ip),
                    "4",
                    &rounds.to_string(),
                    &codes.join(","),
                ],
            )
            .unwrap(),
    );
    // Go's client GETs every code; Node's POSTs the 201s and GETs the rest.
    let mut go_want = Tally::new();
    let mut node_want = Tally::new();
    for c in codes {
        let n = 4 * rounds;
        *go_want.entry(vec!["GET".into(), c.into()]).or_default() += n;
        let m = if c == "201" { "POST" } else { "GET" };
        *node_want.entry(vec![m.into(), c.into()]).or_default() += n;
    }
    let statuses = |t: &Tally| project(t, |k| vec![k[1].clone()]);
    let as_tally =
        |m: BTreeMap<String, u64>| -> Tally { m.into_iter().map(|(k, v)| (vec![k], v)).collect() };
    assert_eq!(
        as_tally(go_said),
        statuses(&go_want),
        "the Go client's own count"
    );
    assert_eq!(
        as_tally(node_said),
        statuses(&node_want),
        "the Node client's own count"
    );
    let logged = |path: &str| -> Tally {
        let mut t = Tally::new();
        for l in fs::read_to_string(path).unwrap_or_default().lines() {
            *t.entry(vec![l.trim().to_string()]).or_default() += 1;
        }
        t
    };
    assert_eq!(
        logged(&node_log),
        statuses(&go_want),
        "the Node server's log"
    );
    assert_eq!(logged(&go_log), statuses(&node_want), "the Go server's log");

    let s = wait_for(
        &obs,
        &[
            (Side::Server, &go_srv, total(&node_want)),
            (Side::Server, &node_srv, total(&go_want)),
            (Side::Client, &go_cli, total(&go_want)),
            (Side::Client, &node_cli, total(&node_want)),
        ],
    );
    for (pod, side, want, what) in [
        (&go_srv, Side::Server, &node_want, "Go server"),
        (&node_cli, Side::Client, &node_want, "Node client"),
        (&node_srv, Side::Server, &go_want, "Node server"),
        (&go_cli, Side::Client, &go_want, "Go client"),
    ] {
        assert_eq!(per_method_status(&s, side, pod), *want, "{what}");
        assert_eq!(
            label_values(&s, side, pod, "network_protocol_version"),
            BTreeSet::from(["1.1".to_string()]),
            "{what}"
        );
    }
    assert_eq!(
        label_values(&s, Side::Server, &go_srv, "http_route"),
        BTreeSet::from(["/s/{id}".to_string()])
    );
    assert_no_http_loss(&s);
    assert_eq!(unparsed(&s), 0.0, "unparsed HTTP");
    obs.stop().unwrap();
}

/// Answers `/s/<code>` with `<code>` once the request's body is read (200 chunked, in two
/// writes; the others whole), one line per answer in the log `$2`; listens on port `$1`.
const NODE_SERVER: &str = r#"
const http = require("http");
const fs = require("fs");
const [port, log] = process.argv.slice(2);
http
  .createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      const code = Number(req.url.split("/").pop()) || 400;
      res.statusCode = code;
      fs.appendFileSync(log, code + "\n");
      if (code === 200) {
        res.write("node says ");
        setImmediate(() => res.end("200\n"));
      } else {
        res.end("node says " + code + "\n");
      }
    });
  })
  .listen(Number(port));
"#;

/// `$2` loops of one keep-alive agent (at most `$2` sockets), each asking `$3` rounds of
/// `/s/<code>` for every code of `$4` (201 as a POST with a 3,000-byte body written after the
/// head, the others GET) of `$1`; prints the answers' count per status as JSON.
const NODE_CLIENT: &str = r#"
const http = require("http");
const [base, workers, rounds, codes] = process.argv.slice(2);
const agent = new http.Agent({ keepAlive: true, maxSockets: Number(workers) });
const ask = (code) =>
  new Promise((ok, fail) => {
    const post = code === "201";
    const req = http.request(
      base + "/s/" + code,
      { agent, method: post ? "POST" : "GET", headers: post ? { "content-length": 3000 } : {} },
      (res) => {
        res.resume();
        res.on("end", () => ok(res.statusCode));
      }
    );
    req.on("error", fail);
    if (post) {
      req.flushHeaders();
      setImmediate(() => req.end("x".repeat(3000)));
    } else {
      req.end();
    }
  });
(async () => {
  const counts = {};
  const loop = async () => {
    for (let i = 0; i < Number(rounds); i++) {
      for (const c of codes.split(",")) {
        const s = await ask(c);
        counts[s] = (counts[s] || 0) + 1;
      }
    }
  };
  await Promise.all([...Array(Number(workers))].map(loop));
  console.log(JSON.stringify(counts));
  agent.destroy();
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
"#;

/// nginx as a reverse proxy, an ingress controller's shape: wrk asks nginx, which passes every
/// request to a Python upstream over kept-alive HTTP/1.1 connections (`keepalive 4`; nginx
/// checks waiting clients and idle upstream connections with `MSG_PEEK`, and the upstream peeks
/// each connection's first bytes). Exact per status on every hop: wrk's own count, nginx's
/// access log (its server side), the upstream's log (nginx's client side, the upstream's server
/// side), with the upstream's address on nginx's client series.
#[test]
fn nginx_as_a_reverse_proxy_is_counted_exactly_on_every_hop() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-http-proxy").unwrap();
    let mut upstream = Pod::new(&bridge).unwrap();
    let mut proxy = Pod::new(&bridge).unwrap();
    let client = Pod::new(&bridge).unwrap();
    let upstream_log = start_server(&mut upstream, &dir, None);
    let conf = nginx::conf(
        &dir,
        1,
        "$status $request_method $uri $server_protocol",
        &format!(
            r#"  upstream backend {{
    server {}:{PORT};
    keepalive 4;
  }}
  server {{
    listen {PORT};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}"#,
            upstream.ip
        ),
    );
    nginx::start(&mut proxy, &dir, &conf, PORT).unwrap();
    let obs = start_observer(&[]);

    let paths = [
        "/status/200",
        "/item/abcde",
        "/status/404",
        "/status/503",
        "/status/201",
    ];
    let lua = dir.write("mix.lua", nginx::wrk_mix(&paths)).unwrap();
    let per_thread = if slowdown() > 1 { 25 } else { 300 };
    let duration = format!("{}s", 5 * slowdown());
    let out = client
        .run(
            "wrk",
            &[
                "-t2",
                "-c2",
                "-d",
                &duration,
                "-s",
                &lua,
                &format!("http://{}:{PORT}", proxy.ip),
                "--",
                &per_thread.to_string(),
            ],
        )
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let wrk_truth = parse_wrk(&out);
    assert_eq!(
        total(&wrk_truth),
        2 * per_thread,
        "wrk stopped by count: {out}"
    );
    assert!(!out.contains("Socket errors"), "{out}");
    let proxied = project(&nginx_log(&dir), |k| vec![k[1].clone()]);
    assert_eq!(proxied, wrk_truth, "nginx logged what wrk counted");
    let upstream_truth = tally(&server_log(&upstream_log), by_status);
    assert_eq!(
        upstream_truth, wrk_truth,
        "the upstream answered every request once"
    );

    let n = total(&wrk_truth);
    let s = wait_for(
        &obs,
        &[
            (Side::Client, &client, n),
            (Side::Server, &proxy, n),
            (Side::Client, &proxy, n),
            (Side::Server, &upstream, n),
        ],
    );
    assert_eq!(per_status(&s, Side::Client, &client), wrk_truth, "wrk pod");
    assert_eq!(
        per_status(&s, Side::Server, &proxy),
        proxied,
        "nginx pod, server side"
    );
    assert_eq!(
        per_status(&s, Side::Client, &proxy),
        upstream_truth,
        "nginx pod, client side"
    );
    assert_eq!(
        per_status(&s, Side::Server, &upstream),
        upstream_truth,
        "upstream pod"
    );
    assert_eq!(
        label_values(&s, Side::Client, &proxy, "server_address"),
        BTreeSet::from([upstream.ip.clone()])
    );
    assert_eq!(
        requests(&s, Side::Client, &upstream),
        0,
        "the upstream asked nothing"
    );
    assert_no_http_loss(&s);
    assert_eq!(unparsed(&s), 0.0, "unparsed HTTP");
    obs.stop().unwrap();
}

#[test]
fn python_keep_alive_requests_are_counted_exactly_per_method_and_status() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-http-py").unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let client = Pod::new(&bridge).unwrap();
    let log = start_server(&mut server, &dir, None);
    let obs = start_observer(&[]);

    // 150 requests over 3 keep-alive connections; every target templates to /status/{id}.
    let mut plan = Vec::new();
    for i in 0..25 {
        plan.push(("GET", format!("/status/200?page={i}"), 0));
        plan.push(("GET", "/status/404".to_string(), 0));
        plan.push(("POST", "/status/500".to_string(), 300));
        plan.push(("DELETE", "/status/202".to_string(), 0));
        plan.push(("PROPFIND", "/status/207".to_string(), 0));
        plan.push(("GET", "/status/200/".to_string(), 0));
    }
    let got = run_client(&client, &dir, &server.ip, PORT, 3, &plan);
    let client_truth = tally(&got, by_method_status);
    let expected: Tally = [
        (["GET", "200"], 50),
        (["GET", "404"], 25),
        (["POST", "500"], 25),
        (["DELETE", "202"], 25),
        (["PROPFIND", "207"], 25),
    ]
    .into_iter()
    .map(|(k, v)| (k.map(String::from).to_vec(), v))
    .collect();
    assert_eq!(client_truth, expected, "{got:?}");
    let server_truth = tally(&server_log(&log), by_method_status);
    assert_eq!(
        server_truth, client_truth,
        "the server logged what the client got"
    );

    let s = wait_for(
        &obs,
        &[(Side::Server, &server, 150), (Side::Client, &client, 150)],
    );
    // Methods outside the standard nine are "_OTHER" (OpenTelemetry).
    let otel = |t: &Tally| -> Tally {
        project(t, |k| {
            let m = if k[0] == "PROPFIND" { "_OTHER" } else { &k[0] };
            vec![m.to_string(), k[1].clone()]
        })
    };
    assert_eq!(
        per_method_status(&s, Side::Server, &server),
        otel(&server_truth),
        "server pod"
    );
    assert_eq!(
        per_method_status(&s, Side::Client, &client),
        otel(&client_truth),
        "client pod"
    );
    assert_eq!(
        label_values(&s, Side::Server, &server, "http_route"),
        BTreeSet::from(["/status/{id}".to_string()]),
        "ids templated, query strings and trailing slashes dropped"
    );
    assert_eq!(
        label_values(&s, Side::Server, &server, "service_name"),
        BTreeSet::from([main_comm(&server)])
    );
    assert_eq!(
        label_values(&s, Side::Client, &client, "server_address"),
        BTreeSet::from([server.ip.clone()])
    );
    for side in [Side::Server, Side::Client] {
        let pod = if matches!(side, Side::Server) {
            &server
        } else {
            &client
        };
        assert_eq!(
            label_values(&s, side, pod, "error_type"),
            BTreeSet::from([String::new()])
        );
        check_histograms(&s, side, pod);
    }
    assert_no_http_loss(&s);
    obs.stop().unwrap();
}

#[test]
fn latency_histograms_and_apdex_match_the_servers_own_timing() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-http-delay").unwrap();
    let client = Pod::new(&bridge).unwrap();
    // One pod per delay: APDEX is per service. T = 0.2 s: 5 and 50 ms are satisfied (<= T),
    // 500 ms tolerating (<= 4T) - scores 1.0, 1.0, 0.5.
    let delays = [(5u64, "satisfied"), (50, "satisfied"), (500, "tolerating")];
    let mut servers = Vec::new();
    for _ in delays {
        let mut p = Pod::new(&bridge).unwrap();
        let log = start_server(&mut p, &dir, None);
        servers.push((p, log));
    }
    let obs = start_observer(&["--apdex-threshold", "0.2"]);
    let n = 20u64;
    let mut truths = Vec::new();
    for ((ms, _), (server, log)) in delays.iter().zip(&servers) {
        let plan: Vec<_> = (0..n).map(|_| ("GET", format!("/delay/{ms}"), 0)).collect();
        let got = run_client(&client, &dir, &server.ip, PORT, 5, &plan);
        assert_eq!(
            tally(&got, by_status),
            status_tally([("200", n)]),
            "{got:?}"
        );
        let logged = server_log(log);
        assert_eq!(logged.len() as u64, n);
        for r in &logged {
            assert!(
                r.seconds >= *ms as f64 / 1000.0,
                "the server slept at least {ms} ms: {r:?}"
            );
        }
        truths.push((got, logged));
    }

    let mut want = vec![(Side::Client, &client, 3 * n)];
    want.extend(servers.iter().map(|(p, _)| (Side::Server, p, n)));
    let s = wait_for(&obs, &want);
    let slack = 0.0005 * slowdown() as f64;
    for (((ms, level), (server, _)), (got, logged)) in delays.iter().zip(&servers).zip(&truths) {
        assert_eq!(
            per_status(&s, Side::Server, server),
            status_tally([("200", n)])
        );
        assert_eq!(
            label_values(&s, Side::Server, server, "http_route"),
            BTreeSet::from(["/delay/{id}".to_string()])
        );
        // The server's own timing: from the request line read to the response written.
        let truth: Vec<f64> = logged.iter().map(|r| r.seconds).collect();
        let (lo, hi) = median_bucket(&s, Side::Server, server);
        // Under software emulation the server's own span (Python, from its readline to its
        // write) drifts from the kernel's by milliseconds: one bucket either side there.
        let (lo, hi) = if slowdown() > 1 {
            (lo * 0.4, hi * 2.5)
        } else {
            (lo, hi)
        };
        let m = median(truth.clone());
        assert!(
            lo < m && m <= hi,
            "{ms} ms: the server's median {m} lies in the histogram's median bucket ({lo}, {hi}]"
        );
        let (obs_mean, true_mean) = (observed_mean(&s, Side::Server, server), mean(&truth));
        assert!(
            (obs_mean - true_mean).abs() <= 0.05 * true_mean + slack,
            "{ms} ms: server mean {obs_mean} vs the server's own {true_mean}"
        );
        assert!(
            obs_mean >= *ms as f64 / 1000.0,
            "{ms} ms: server mean {obs_mean}"
        );
        // APDEX: every request at one level, exactly.
        for lvl in ["satisfied", "tolerating", "frustrated"] {
            let got_lvl = sum(
                &s,
                "http_server_request_apdex_total",
                &with_pod(server, &[("apdex_level", lvl)]),
            );
            let want_lvl = if lvl == *level { n as f64 } else { 0.0 };
            assert_eq!(got_lvl, want_lvl, "{ms} ms: apdex_level {lvl}");
        }
        // Client side: this delay's requests (selected by the server's address).
        let addr = [("server_address", server.ip.as_str())];
        let client_count = observed(
            &s,
            Side::Client,
            &client,
            &addr,
            &["http_response_status_code"],
        );
        assert_eq!(
            client_count,
            status_tally([("200", n)]),
            "{ms} ms: client pod"
        );
        let client_sum = sum(&s, &Side::Client.metric("_sum"), &with_pod(&client, &addr));
        let client_truth: Vec<f64> = got.iter().map(|r| r.seconds).collect();
        let (obs_mean, true_mean) = (client_sum / n as f64, mean(&client_truth));
        // The client's span (request written → response read) lies between the server's own
        // handling time and the client's own wall time around the call (which adds the
        // client's user-space work: large under software emulation).
        let server_mean = mean(&truth);
        assert!(
            obs_mean >= server_mean - slack && obs_mean <= 1.05 * true_mean + slack,
            "{ms} ms: client mean {obs_mean} outside [the server's own {server_mean}, the client's own {true_mean}]"
        );
        check_histograms(&s, Side::Server, server);
    }
    check_histograms(&s, Side::Client, &client);
    assert_no_http_loss(&s);
    obs.stop().unwrap();
}

#[test]
fn edge_cases_of_framing_are_each_counted_once_with_their_status() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-http-edge").unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let client = Pod::new(&bridge).unwrap();
    let server6 = server.add_ipv6().unwrap();
    client.add_ipv6().unwrap();
    let log = start_server(&mut server, &dir, Some(PORT6));
    let obs = start_observer(&[]);
    let mib = 1i64 << 20;

    // One keep-alive connection, a plain GET after each tricky response: a misframed response
    // would swallow or split the next one.
    let plan = vec![
        ("GET", "/split".to_string(), 0), // 203, body in 100 writes
        ("GET", "/status/200".to_string(), 0),
        // Request lines longer than the kernel's snippet: a long query, a long path.
        ("GET", format!("/status/200?q={}", "x".repeat(400)), 0),
        ("GET", format!("/item/{}", "y".repeat(400)), 0),
        ("GET", "/big".to_string(), 0), // 200, 1 MiB body
        ("GET", "/status/200".to_string(), 0),
        ("POST", "/upload".to_string(), mib), // 201, 1 MiB request body
        ("GET", "/chunked".to_string(), 0),   // 207, chunked response
        ("GET", "/status/200".to_string(), 0),
        ("POST", "/upload".to_string(), -(3 * 8192 + 100)), // 201, chunked request body
        ("HEAD", "/head".to_string(), 0),                   // 200 with Content-Length, no body
        ("GET", "/status/204".to_string(), 0),
        ("GET", "/status/304".to_string(), 0),
        ("GET", "/status/200".to_string(), 0),
    ];
    let mut got = run_client(&client, &dir, &server.ip, PORT, 1, &plan);
    // Three requests in one write.
    let piped = client
        .python(
            PIPELINING_CLIENT,
            &[
                &server.ip,
                &PORT.to_string(),
                "/status/202",
                "/status/202",
                "/status/202",
            ],
        )
        .unwrap();
    assert_eq!(piped.trim(), "202 202 202");
    for _ in 0..3 {
        got.push(Req {
            method: "GET".into(),
            path: "/status/202".into(),
            status: "202".into(),
            seconds: 0.0,
            error: String::new(),
        });
    }
    // Request heads in pieces, joined on both sides: first bytes in calls of their own on a
    // connection that carried a request (Go's HTTP server reads one byte ahead between
    // requests), and heads whose request line is cut (a client that writes a head in pieces,
    // as Rust's `write!` on a socket does, read by a server as they come).
    let split = client
        .python(
            SPLIT_HEAD_CLIENT,
            &[&server.ip, &PORT.to_string(), "/status/209"],
        )
        .unwrap();
    assert_eq!(split.trim(), ["209"; 8].join(" "));
    for method in ["GET", "GET", "GET", "DELETE", "GET", "GET", "GET", "GET"] {
        got.push(Req {
            method: method.into(),
            path: "/status/209".into(),
            status: "209".into(),
            seconds: 0.0,
            error: String::new(),
        });
    }
    // Expect: 100-continue (curl sends the body after the interim 100, which is no response).
    let body = dir.write("body.bin", vec![b'e'; 4096]).unwrap();
    let out = client
        .run(
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "Expect: 100-continue",
                "--data-binary",
                &format!("@{body}"),
                &format!("http://{}:{PORT}/expect", server.ip),
            ],
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "226");
    got.push(Req {
        method: "POST".into(),
        path: "/expect".into(),
        status: "226".into(),
        seconds: 0.0,
        error: String::new(),
    });
    // IPv6.
    let plan6 = vec![("GET", "/status/208".to_string(), 0); 2];
    let got6 = run_client(&client, &dir, &server6, PORT6, 1, &plan6);
    assert_eq!(tally(&got6, by_status), status_tally([("208", 2)]));
    got.extend(got6);

    assert!(got.iter().all(|r| r.error.is_empty()), "{got:?}");
    let client_truth = tally(&got, by_method_status);
    let expected: Tally = [
        (["GET", "200"], 7),
        (["GET", "202"], 3),
        (["GET", "203"], 1),
        (["GET", "204"], 1),
        (["GET", "207"], 1),
        (["GET", "208"], 2),
        (["GET", "209"], 7),
        (["DELETE", "209"], 1),
        (["GET", "304"], 1),
        (["HEAD", "200"], 1),
        (["POST", "201"], 2),
        (["POST", "226"], 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.map(String::from).to_vec(), v))
    .collect();
    assert_eq!(client_truth, expected, "{got:?}");
    let server_truth = tally(&server_log(&log), by_method_status);
    assert_eq!(
        server_truth, client_truth,
        "the server logged what the clients got"
    );

    let n = total(&client_truth);
    let s = wait_for(
        &obs,
        &[(Side::Server, &server, n), (Side::Client, &client, n)],
    );
    assert_eq!(
        per_method_status(&s, Side::Server, &server),
        server_truth,
        "server pod"
    );
    assert_eq!(
        per_method_status(&s, Side::Client, &client),
        client_truth,
        "client pod"
    );
    assert_eq!(
        observed(
            &s,
            Side::Client,
            &client,
            &[("server_address", &server6)],
            &["server_port", "http_response_status_code"]
        ),
        [(vec![PORT6.to_string(), "208".to_string()], 2)].into(),
        "the IPv6 requests, by the server's canonical IPv6 address"
    );
    // The long path's route ends where the kernel's snippet did.
    assert_eq!(
        observed(
            &s,
            Side::Server,
            &server,
            &[("http_route", "/item/...")],
            &["http_request_method"]
        ),
        [(vec!["GET".to_string()], 1)].into(),
        "the long path: {:?}",
        label_values(&s, Side::Server, &server, "http_route")
    );
    for side in [Side::Server, Side::Client] {
        let pod = if matches!(side, Side::Server) {
            &server
        } else {
            &client
        };
        let statuses = label_values(&s, side, pod, "http_response_status_code");
        assert!(
            !statuses.contains("100"),
            "an interim 100 Continue is no response"
        );
        assert_eq!(
            label_values(&s, side, pod, "error_type"),
            BTreeSet::from([String::new()])
        );
        check_histograms(&s, side, pod);
    }
    assert_no_http_loss(&s);
    obs.stop().unwrap();
}

#[test]
fn junk_on_an_http_port_is_no_request() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-http-junk").unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let client = Pod::new(&bridge).unwrap();
    let log = start_server(&mut server, &dir, None);
    let obs = start_observer(&[]);
    let before = unparsed(&obs.scrape().unwrap());

    let out = client
        .python(JUNK_CLIENT, &[&server.ip, &PORT.to_string()])
        .unwrap();
    // No junk got a byte back; the valid GET before junk on one connection and the one after on
    // a fresh connection were answered.
    assert_eq!(out.trim(), "0 0 0 0 0 200 200");
    let server_truth = tally(&server_log(&log), by_status);
    assert_eq!(server_truth, status_tally([("200", 2)]));

    let s = wait_for(
        &obs,
        &[(Side::Server, &server, 2), (Side::Client, &client, 2)],
    );
    let s2 = obs.scrape_until(WAIT, |s| unparsed(s) > before).unwrap();
    assert_eq!(
        per_status(&s, Side::Server, &server),
        server_truth,
        "server pod"
    );
    assert_eq!(
        per_status(&s, Side::Client, &client),
        server_truth,
        "client pod"
    );
    assert_eq!(
        label_values(&s, Side::Server, &server, "http_route"),
        BTreeSet::from(["/status/{id}".to_string()]),
        "no route from junk"
    );
    assert!(
        unparsed(&s2) > before,
        "the request line with a control byte starts like HTTP and fails to parse: \
         observer_l7_messages_unparsed_total {} -> {}",
        before,
        unparsed(&s2)
    );
    // Still exact after a while (nothing late from the junk), and the observer still serves.
    std::thread::sleep(scaled(Duration::from_secs(1)));
    let s3 = obs.scrape().unwrap();
    assert_eq!(per_status(&s3, Side::Server, &server), server_truth);
    assert_eq!(per_status(&s3, Side::Client, &client), server_truth);
    assert_no_http_loss(&s3);
    obs.stop().unwrap();
}

/// 100,000 distinct routes against nginx with `--http-route-cap 100` (5,000 under software
/// emulation, see below): the series count stays within the cap. wrk (2 threads × 1 connection,
/// [`WRK_WORDS`]) sends `GET /item/<word>` with letters-only words, each once; nginx answers 200.
/// Truth: wrk's per-status counts and nginx's access log (every uri once). The server side has
/// exactly 101 `http_route` values for the pod: 100 admitted routes, each counted once and each
/// one nginx logged, and `/{overflow}` with all the other requests, which
/// `observer_l7_targets_overflow_total{protocol="http",service_name="nginx"}` counts too; every request is
/// counted on both sides and no HTTP event is lost.
#[test]
fn routes_beyond_the_cap_go_to_the_overflow_route_and_every_request_is_counted() {
    require_root();
    const CAP: u64 = 100;
    const THREADS: u64 = 2;
    // On a 2-CPU host wrk drives about 13,000 requests/s here (100,000 in 7-8 s, no record
    // lost); a software-emulated guest (slowdown 8, 2 vCPUs) managed about 260/s, so 100,000
    // would take over 6 minutes there: under slowdown, 5,000 (about 20 s; still 50 times the
    // cap), same exact checks. The host run is the 100,000 the issue asks for.
    let n: u64 = if slowdown() > 1 { 5_000 } else { 100_000 };
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-http-routes").unwrap();
    let mut web = Pod::new(&bridge).unwrap();
    let wrk = Pod::new(&bridge).unwrap();
    fs::create_dir(dir.path().join("www")).unwrap();
    fs::create_dir(dir.path().join("marks")).unwrap();
    nginx::start(&mut web, &dir, &nginx_conf(&dir, PORT), PORT).unwrap();
    let cap = CAP.to_string();
    let obs = start_observer(&["--http-route-cap", &cap]);

    // wrk gets a generous -d: its threads stop by count and then end its wait (WRK_WORDS).
    let lua = dir
        .write("words.lua", [WRK_WORDS, nginx::WRK_DONE].concat())
        .unwrap();
    let marks = dir.join("marks");
    let ceiling = format!("{}s", scaled(Duration::from_secs(120)).as_secs());
    let threads = format!("-t{THREADS}");
    let conns = format!("-c{THREADS}");
    let url = format!("http://{}:{PORT}", web.ip);
    let per = (n / THREADS).to_string();
    let started = Instant::now();
    let out = wrk
        .run(
            "wrk",
            &[
                &threads,
                &conns,
                "-d",
                &ceiling,
                "-s",
                &lua,
                &url,
                "--",
                &per,
                &marks,
                &THREADS.to_string(),
            ],
        )
        .unwrap();
    let took = started.elapsed();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "{n} requests in {took:.1?} ({:.0}/s)",
        n as f64 / took.as_secs_f64()
    );
    let wrk_truth = parse_wrk(&out);
    assert_eq!(
        wrk_truth,
        status_tally([("200", n)]),
        "wrk did not stop by count within {ceiling}: {out}"
    );
    assert!(!out.contains("Socket errors"), "{out}");
    let log = nginx_log(&dir);
    assert_eq!(
        project(&log, |k| vec![k[1].clone()]),
        wrk_truth,
        "nginx logged what wrk counted"
    );
    assert_eq!(log.len() as u64, n, "every uri once");
    let sent: BTreeSet<String> = log.keys().map(|k| k[0].clone()).collect();
    for uri in &sent {
        let word = uri.strip_prefix("/item/").unwrap_or("");
        assert!(
            word.len() == 5 && word.bytes().all(|c| c.is_ascii_lowercase()),
            "a letters-only word: {uri:?}"
        );
    }

    let s = obs
        .scrape_until(Duration::from_secs(30), |s| {
            requests(s, Side::Server, &web) >= n && requests(s, Side::Client, &wrk) >= n
        })
        .unwrap();
    assert_eq!(requests(&s, Side::Server, &web), n, "server side");
    assert_eq!(per_status(&s, Side::Client, &wrk), wrk_truth, "client side");
    assert_eq!(
        label_values(&s, Side::Server, &web, "service_name"),
        BTreeSet::from(["nginx".to_string()])
    );
    let routes = observed(&s, Side::Server, &web, &[], &["http_route"]);
    assert_eq!(
        routes.len() as u64,
        CAP + 1,
        "the cap's routes and /{{overflow}}"
    );
    let overflow = routes
        .get(&vec!["/{overflow}".to_string()])
        .copied()
        .unwrap_or(0);
    for (route, count) in routes.iter().filter(|(k, _)| k[0] != "/{overflow}") {
        assert_eq!(*count, 1, "each word was requested once: {route:?}");
        assert!(
            sent.contains(&route[0]),
            "an admitted route is one nginx logged: {route:?}"
        );
    }
    assert_eq!(overflow, n - CAP);
    assert_eq!(
        sum(
            &s,
            "observer_l7_targets_overflow_total",
            &[("protocol", "http"), ("service_name", "nginx")]
        ),
        (n - CAP) as f64,
        "overflowed requests of nginx"
    );
    assert!(
        matching(
            &s,
            "observer_events_lost_total",
            &[("source", "l7_ringbuf_full")]
        )
        .next()
        .is_some(),
        "the ring buffer's losses are exported"
    );
    assert_no_http_loss(&s);
    obs.stop().unwrap();
}

#[test]
fn requests_without_response_are_counted_as_errors_without_status() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-http-noanswer").unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let mut client = Pod::new(&bridge).unwrap();
    let log = start_server(&mut server, &dir, None);
    let obs = start_observer(&["--http-request-timeout", "2s"]);
    let (hang, dropped) = (5u64, 3u64);
    let go = dir.join("go");
    client
        .spawn_python(
            UNANSWERED_CLIENT,
            &[
                &server.ip,
                &PORT.to_string(),
                &hang.to_string(),
                &dropped.to_string(),
                &go,
            ],
        )
        .unwrap();
    let sent = format!("{go}.sent");
    let deadline = Instant::now() + scaled(WAIT);
    while !std::path::Path::new(&sent).exists() {
        assert!(
            Instant::now() < deadline,
            "the client did not send its requests"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        fs::read_to_string(&sent).unwrap(),
        vec!["disconnected"; dropped as usize].join(" ")
    );
    // The held connections are still open: the timeout, not the close, ends those requests.
    let no_status = [("http_response_status_code", "")];
    let timeout = [("http_response_status_code", ""), ("error_type", "timeout")];
    let count = |s: &[Sample], side, pod, want: &[(&str, &str)]| -> u64 {
        observed(s, side, pod, want, &[]).values().sum()
    };
    let s = obs
        .scrape_until(WAIT + Duration::from_secs(2), |s| {
            [(Side::Client, &client), (Side::Server, &server)]
                .into_iter()
                .all(|(side, pod)| {
                    count(s, side, pod, &timeout) >= hang
                        && count(s, side, pod, &no_status) >= hang + dropped
                })
        })
        .unwrap();
    fs::write(&go, "").unwrap();
    for (side, pod) in [(Side::Client, &client), (Side::Server, &server)] {
        assert_eq!(count(&s, side, pod, &timeout), hang, "{side:?}: timeouts");
        assert_eq!(
            count(&s, side, pod, &no_status),
            hang + dropped,
            "{side:?}: every unanswered request, once"
        );
        assert!(
            !label_values(&s, side, pod, "error_type").contains(""),
            "{side:?}: no request got a response"
        );
    }
    // Once the client closed its connections (and the server its side), nothing is counted twice.
    let done = format!("{go}.done");
    let deadline = Instant::now() + scaled(WAIT);
    while !std::path::Path::new(&done).exists() {
        assert!(Instant::now() < deadline, "the client did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        fs::read_to_string(&done).unwrap(),
        "0",
        "held connections got nothing"
    );
    std::thread::sleep(scaled(Duration::from_secs(1)));
    assert_eq!(
        tally(&server_log(&log), |r| vec![
            r.path.clone(),
            r.status.clone()
        ]),
        [
            (vec!["/drop".to_string(), String::new()], dropped),
            (vec!["/hang".to_string(), String::new()], hang),
        ]
        .into(),
        "the server answered none"
    );
    let s = obs.scrape().unwrap();
    assert_eq!(requests(&s, Side::Client, &client), hang + dropped);
    assert_eq!(requests(&s, Side::Server, &server), hang + dropped);
    assert_eq!(count(&s, Side::Client, &client, &no_status), hang + dropped);
    assert_eq!(count(&s, Side::Server, &server, &no_status), hang + dropped);
    assert_no_http_loss(&s);
    obs.stop().unwrap();
}

#[test]
fn a_lone_request_shows_up_within_a_second() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-http-lone").unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let client = Pod::new(&bridge).unwrap();
    let _log = start_server(&mut server, &dir, None);
    let obs = start_observer(&[]);
    std::thread::sleep(scaled(Duration::from_secs(1)));
    let out = client
        .run(
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://{}:{PORT}/status/200", server.ip),
            ],
        )
        .unwrap();
    let done = Instant::now();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let limit = scaled(Duration::from_secs(1));
    let mut seen = None;
    while done.elapsed() <= limit {
        if requests(&obs.scrape().unwrap(), Side::Server, &server) >= 1 {
            seen = Some(done.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = wait_for(
        &obs,
        &[(Side::Server, &server, 1), (Side::Client, &client, 1)],
    );
    let later = requests(&s, Side::Server, &server);
    assert!(
        seen.is_some(),
        "not exported within {limit:?} of the response (server-side count {later} after {:?})",
        done.elapsed()
    );
    assert_eq!(
        per_status(&s, Side::Server, &server),
        status_tally([("200", 1)])
    );
    assert_eq!(
        per_status(&s, Side::Client, &client),
        status_tally([("200", 1)])
    );
    assert_no_http_loss(&s);
    obs.stop().unwrap();
}

/// Opens one keep-alive connection, makes one request on it, waits until the file given as
/// third argument exists, then makes N more on the same connection; writes the statuses it got
/// (after the wait) to the file given as fourth argument.
const LATE_CLIENT: &str = r#"
import http.client, os, sys, time
host, n, go, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = http.client.HTTPConnection(host, 8080, timeout=20)
c.request("GET", "/status/200")
c.getresponse().read()
while not os.path.exists(go):
    time.sleep(0.05)
seen = []
for _ in range(n):
    c.request("GET", "/status/201")
    r = c.getresponse()
    r.read()
    seen.append(str(r.status))
open(out + ".tmp", "w").write(" ".join(seen))
os.rename(out + ".tmp", out)
"#;

/// A keep-alive connection opened (and used) before the observer started: the requests made on
/// it afterwards are counted exactly on both sides; the one before is not invented. On the
/// server side (a threaded server, blocked in a receive call on that connection when the
/// observer attaches) the first request after the start is counted too: the L7 path reads the
/// call's buffer from the syscall's own arguments when the data arrives, whenever the call
/// began. Before 6.3 the receive hook is fexit on `tcp_recvmsg`, which wraps only calls that
/// start after it is attached (and before 5.15 the buffer is known only from a syscall entry the
/// observer saw): the call that was already blocked is missed there, exactly that one request
/// on the server side (README, Kernels: limits).
#[test]
fn requests_on_a_connection_opened_before_the_observer_are_counted() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-http-late").unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let mut client = Pod::new(&bridge).unwrap();
    start_server(&mut server, &dir, None);
    let (go, out) = (dir.join("go"), dir.join("out"));
    let n = 7u64;
    client
        .spawn_python(LATE_CLIENT, &[&server.ip, &n.to_string(), &go, &out])
        .unwrap();
    // The first request is answered before the observer exists.
    std::thread::sleep(scaled(Duration::from_secs(1)));
    let obs = Observer::start(&["--probes", "http"]).unwrap();
    fs::write(&go, "").unwrap();
    let deadline = Instant::now() + scaled(WAIT);
    while !std::path::Path::new(&out).exists() {
        assert!(Instant::now() < deadline, "the client did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = fs::read_to_string(&out).unwrap();
    assert_eq!(
        seen.split(' ').filter(|s| *s == "201").count() as u64,
        n,
        "client's own statuses: {seen}"
    );
    let want = status_tally([("201", n)]);
    let server_sees = if observer_tests::manifest::kernel() < (6, 3) {
        n - 1
    } else {
        n
    };
    let want_server = status_tally([("201", server_sees)]);
    let s = obs
        .scrape_until(WAIT, |s| {
            observed(
                s,
                Side::Server,
                &server,
                &[],
                &["http_response_status_code"],
            ) == want_server
                && observed(
                    s,
                    Side::Client,
                    &client,
                    &[],
                    &["http_response_status_code"],
                ) == want
        })
        .unwrap();
    assert_eq!(
        observed(
            &s,
            Side::Client,
            &client,
            &[],
            &["http_response_status_code"]
        ),
        want
    );
    assert_eq!(
        observed(
            &s,
            Side::Server,
            &server,
            &[],
            &["http_response_status_code"]
        ),
        want_server
    );
    assert_no_http_loss(&s);
    obs.stop().unwrap();
}

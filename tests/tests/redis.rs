//! Privileged accuracy tests of Redis capture (`--probes redis`): Debian's `redis-server` in one
//! simulated pod, clients in another (the C clients `redis-benchmark` and `redis-cli`, and a
//! Python client speaking RESP on a raw socket), counts EXACT against ground truth:
//! - the server's own record: `INFO commandstats` (calls per command) and `INFO errorstats`
//!   (errors per prefix), read before and after the load;
//! - the clients' own: the number of requests `redis-benchmark` was told to make per command,
//!   and the Python client's tally of every command it sent and every reply it read.
//!
//! Series are selected by `k8s_pod_uid` and by family: `db_client_operation_duration_seconds`
//! for the client pod, `db_server_operation_duration_seconds` for the server pod, both with
//! `db_system_name="redis"`; counts are the histograms' `_count`.

use std::{collections::BTreeMap, time::Duration};

use observer_tests::{
    db::{self, CLIENT, SERVER},
    metrics::{matching, Sample},
    net::Bridge,
    observer::Observer,
    pod::Pod,
    require_root, sh, slowdown, TempDir,
};

const PORT: u16 = 6379;

/// A Redis client on a raw socket: a pipeline of 100 SETs in one write, MULTI/EXEC, a
/// WRONGTYPE error, a 100 kB value written and read back (longer than what the kernel reads of
/// a call), pub/sub (a SUBSCRIBE of two channels, a message published on another connection,
/// a PING while subscribed). Prints its tally: `OP count` lines, then `error PREFIX count`.
const CLIENT_PY: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])

def enc(*a):
    out = b"*%d\r\n" % len(a)
    for x in a:
        x = x if isinstance(x, bytes) else str(x).encode()
        out += b"$%d\r\n%s\r\n" % (len(x), x)
    return out

class Conn:
    def __init__(self):
        self.s = socket.create_connection((host, port), timeout=20)
        self.f = self.s.makefile("rb")
    def reply(self):
        line = self.f.readline()
        t, rest = line[:1], line[1:-2]
        if t in (b"+", b"-", b":"):
            return t, rest
        if t == b"$":
            n = int(rest)
            return t, (self.f.read(n + 2)[:-2] if n >= 0 else None)
        if t == b"*":
            n = int(rest)
            return t, [self.reply() for _ in range(max(n, 0))]
        raise RuntimeError("bad reply %r" % line)

tally, errors = {}, {}
def run(c, cmds, replies=None):
    c.s.sendall(b"".join(enc(*x) for x in cmds))
    got = []
    for x in cmds:
        tally[x[0]] = tally.get(x[0], 0) + 1
    for _ in range(len(cmds) if replies is None else replies):
        t, v = c.reply()
        if t == b"-":
            p = v.split()[0].decode()
            errors[p] = errors.get(p, 0) + 1
        got.append((t, v))
    return got

c = Conn()
run(c, [("SET", "k%d" % i, "v") for i in range(100)])
got = run(c, [("MULTI",), ("INCR", "n"), ("INCR", "n"), ("EXEC",)])
assert got[3][1] == [(b":", b"1"), (b":", b"2")], got
run(c, [("LPUSH", "k1", "x")])
run(c, [("SET", "big", "x" * 100000)])
assert run(c, [("GET", "big")])[0][1] == b"x" * 100000
sub = Conn()
run(sub, [("SUBSCRIBE", "a", "b")], replies=2)
run(c, [("PUBLISH", "a", "hello")])
t, v = sub.reply()
assert v[0] == (b"$", b"message"), v
run(sub, [("PING",)])
for op in sorted(tally):
    print(op, tally[op])
for p in sorted(errors):
    print("error", p, errors[p])
"#;

/// A RESP3 client (`HELLO 3`, as Lettuce and redis-py's `protocol=3` speak): maps, sets,
/// doubles and nulls as replies; a pipeline; an error; a connection that subscribes (confirmed
/// by pushes), gets a message (a push), and goes on with commands while subscribed; client-side
/// caching's invalidation (a push) between a command and its reply. Prints each command's
/// count and each error prefix's.
const RESP3_PY: &str = r##"
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])

def enc(*a):
    out = b"*%d\r\n" % len(a)
    for x in a:
        x = x if isinstance(x, bytes) else str(x).encode()
        out += b"$%d\r\n%s\r\n" % (len(x), x)
    return out

class Conn:
    def __init__(self):
        self.s = socket.create_connection((host, port), timeout=20)
        self.f = self.s.makefile("rb")
        self.pushes = []
    def value(self):
        line = self.f.readline()
        t, rest = line[:1], line[1:-2]
        if t in (b"+", b"-", b":", b"_", b",", b"#", b"("):
            return t, rest
        if t in (b"$", b"!", b"="):
            n = int(rest)
            return t, (self.f.read(n + 2)[:-2] if n >= 0 else None)
        if t in (b"*", b"~", b">"):
            return t, [self.value() for _ in range(max(int(rest), 0))]
        if t == b"%":
            return t, [(self.value(), self.value()) for _ in range(int(rest))]
        if t == b"|":
            [(self.value(), self.value()) for _ in range(int(rest))]
            return self.value()
        raise RuntimeError("bad value %r" % line)
    def reply(self):
        while True:
            t, v = self.value()
            if t != b">":
                return t, v
            self.pushes.append(v)
    def push(self):
        if self.pushes:
            return self.pushes.pop(0)
        t, v = self.value()
        assert t == b">", (t, v)
        return v

tally, errors = {}, {}
def run(c, cmds):
    c.s.sendall(b"".join(enc(*x) for x in cmds))
    got = []
    for x in cmds:
        tally[x[0]] = tally.get(x[0], 0) + 1
        if x[0] in ("SUBSCRIBE", "UNSUBSCRIBE"):
            # Confirmed by a push per channel.
            for ch in x[1:]:
                v = c.push()
                assert v[0][1].decode() == x[0].lower(), v
            got.append(None)
            continue
        t, v = c.reply()
        if t in (b"-", b"!"):
            p = v.split()[0].decode()
            errors[p] = errors.get(p, 0) + 1
        got.append((t, v))
    return got

c = Conn()
assert run(c, [("HELLO", "3")])[0][0] == b"%"
run(c, [("HSET", "h", "a", "1", "b", "2")])
assert run(c, [("HGETALL", "h")])[0][0] == b"%"
run(c, [("SADD", "s", "x", "y")])
assert run(c, [("SMEMBERS", "s")])[0][0] == b"~"
run(c, [("ZADD", "z", "1.5", "m")])
assert run(c, [("ZSCORE", "z", "m")])[0][0] == b","
assert run(c, [("GET", "missing")])[0][0] == b"_"
run(c, [("SET", "str", "v")])
run(c, [("LPUSH", "str", "x")])
run(c, [("INCR", "n") for _ in range(50)])
sub = Conn()
run(sub, [("HELLO", "3")])
run(sub, [("SUBSCRIBE", "a", "b")])
run(c, [("PUBLISH", "a", "hello")])
v = sub.push()
assert v[0] == (b"$", b"message"), v
assert run(sub, [("PING",)])[0] == (b"+", b"PONG")
assert run(sub, [("GET", "str")])[0] == (b"$", b"v")
run(sub, [("UNSUBSCRIBE", "a", "b")])
run(c, [("CLIENT", "TRACKING", "ON")])
run(c, [("GET", "t")])
other = Conn()
run(other, [("SET", "t", "1")])
time.sleep(0.2)
assert run(c, [("PING",)])[0] == (b"+", b"PONG")
assert c.pushes and c.pushes[0][0] == (b"$", b"invalidate"), c.pushes
for op in sorted(tally):
    print(op, tally[op])
for p in sorted(errors):
    print("error", p, errors[p])
"##;

/// A raw client's printed tally: its count per command, and per error prefix.
fn client_tally(out: &str) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let mut tally = BTreeMap::new();
    let mut errors = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["error", p, n] => {
                errors.insert(p.to_string(), n.parse::<u64>().unwrap());
            }
            [op, n] => {
                tally.insert(op.to_string(), n.parse::<u64>().unwrap());
            }
            _ => panic!("unexpected client output {line:?}"),
        }
    }
    (tally, errors)
}

/// `INFO <section>` of the server: `name -> value` of each `key:calls=N,...` or `key:count=N`.
fn info(host: &str, section: &str, field: &str) -> BTreeMap<String, u64> {
    let out = sh(&format!("redis-cli -h {host} -p {PORT} INFO {section}")).unwrap();
    let mut m = BTreeMap::new();
    for line in out.lines() {
        let Some((key, rest)) = line.trim().split_once(':') else {
            continue;
        };
        let Some(v) = rest
            .split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
        else {
            continue;
        };
        m.insert(key.to_string(), v.parse().unwrap());
    }
    m
}

/// Calls per command (upper case; subcommands `config|get` summed into their command).
fn commandstats(host: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (k, v) in info(host, "commandstats", "calls") {
        let name = k.trim_start_matches("cmdstat_");
        let name = name.split('|').next().unwrap().to_uppercase();
        *m.entry(name).or_default() += v;
    }
    m
}

fn errorstats(host: &str) -> BTreeMap<String, u64> {
    info(host, "errorstats", "count")
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches("errorstat_").to_string(), v))
        .collect()
}

/// Operations per `db_operation_name` of a pod's series of `family`.
fn per_op(s: &[Sample], family: &str, pod: &Pod, extra: &[(&str, &str)]) -> BTreeMap<String, u64> {
    db::ops(s, family, pod, "redis", extra)
}

/// Scrapes until a pod's operations per name in `family` are `want`; asserts they are.
fn until_ops(
    obs: &Observer,
    family: &str,
    pod: &Pod,
    want: &BTreeMap<String, u64>,
    what: &str,
) -> Vec<Sample> {
    let samples = obs
        .scrape_until(Duration::from_secs(15), |x| {
            per_op(x, family, pod, &[]) == *want
        })
        .unwrap();
    assert_eq!(&per_op(&samples, family, pod, &[]), want, "{what}");
    samples
}

struct Setup {
    dir: TempDir,
    _bridge: Bridge,
    server: Pod,
    client: Pod,
    obs: Observer,
}

/// A server pod running redis-server and a client pod; `before` runs once the server listens
/// and before the observer starts.
fn setup(before: impl FnOnce(&TempDir, &mut Pod, &str)) -> Setup {
    require_root();
    let dir = TempDir::new("redis").unwrap();
    let bridge = Bridge::new().unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let mut client = Pod::new(&bridge).unwrap();
    server
        .spawn(
            "redis-server",
            &[
                "--port",
                &PORT.to_string(),
                "--bind",
                "0.0.0.0",
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "yes",
                "--dir",
                dir.path().to_str().unwrap(),
            ],
        )
        .unwrap();
    server.wait_listening(PORT).unwrap();
    before(&dir, &mut client, &server.ip.clone());
    let obs = Observer::start(&["--probes", "tcp,redis"]).unwrap();
    Setup {
        dir,
        _bridge: bridge,
        server,
        client,
        obs,
    }
}

/// Connects at once, waits for the file given as third argument, then sends PING and
/// `DEBUG SLEEP 0.06` on that connection, one at a time, and reads their replies.
const EARLY_PY: &str = r#"
import os, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
while not os.path.exists(sys.argv[3]):
    time.sleep(0.05)
f = s.makefile("rb")
for cmd, want in ((b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"),
                  (b"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n$4\r\n0.06\r\n", b"+OK\r\n")):
    s.sendall(cmd)
    assert f.readline() == want
"#;

#[test]
fn redis_benchmark_pipelined_counts_equal_the_servers_commandstats() {
    let s = setup(|_, _, _| {});
    let host = s.server.ip.clone();
    // Small loads under emulation, heavy ones on the host kernel.
    let n: u64 = if slowdown() > 1 { 320 } else { 40_000 };
    let before = commandstats(&host);
    let out = s
        .client
        .run(
            "redis-benchmark",
            &[
                "-h",
                &host,
                "-p",
                &PORT.to_string(),
                "-n",
                &n.to_string(),
                "-P",
                "16",
                "-c",
                "4",
                "-t",
                "set,get,incr,lpush",
                "-q",
            ],
        )
        .unwrap();
    let after = commandstats(&host);
    let server = db::delta(&after, &before);
    // The load generator's own count per command, and the server's agree.
    for op in ["SET", "GET", "INCR", "LPUSH"] {
        assert_eq!(
            server.get(op),
            Some(&n),
            "{op} by the server; redis-benchmark said {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // The client pod made everything the server counted but the first INFO (the test's).
    let mut want_client = server.clone();
    want_client.remove("INFO");
    until_ops(&s.obs, CLIENT, &s.client, &want_client, "client side");
    // The server pod answered all of it, and both INFO calls of the test.
    let mut want_server = server.clone();
    *want_server.entry("INFO".into()).or_default() += 1;
    let samples = until_ops(&s.obs, SERVER, &s.server, &want_server, "server side");
    // None failed, and nothing was left unparsed.
    let failed: f64 = matching(&samples, CLIENT, &[("k8s_pod_uid", s.client.uid.as_str())])
        .filter(|x| {
            !x.labels["db_response_status_code"].is_empty() || !x.labels["error_type"].is_empty()
        })
        .map(|x| x.value)
        .sum();
    assert_eq!(failed, 0.0);
    let unparsed = db::unparsed(&samples, "redis");
    assert_eq!(unparsed, 0.0, "unparsed Redis records");
    // The edge: the benchmark to the server, a database edge (the test's own INFO calls, from
    // the host, make edges of their own).
    let edges = |x: &[Sample]| -> BTreeMap<(String, String), u64> {
        let mut m = BTreeMap::new();
        for e in matching(
            x,
            "traces_service_graph_request_total",
            &[
                ("connection_type", "database"),
                ("client", "redis-benchmark"),
            ],
        ) {
            let key = (e.labels["client"].clone(), e.labels["server"].clone());
            *m.entry(key).or_default() += e.value as u64;
        }
        m
    };
    let want_edges = BTreeMap::from([(
        ("redis-benchmark".to_string(), "redis-server".to_string()),
        want_client.values().sum::<u64>(),
    )]);
    let samples = s
        .obs
        .scrape_until(Duration::from_secs(15), |x| edges(x) == want_edges)
        .unwrap();
    let names: Vec<String> = matching(&samples, CLIENT, &[("k8s_pod_uid", s.client.uid.as_str())])
        .map(|x| x.labels["service_name"].clone())
        .collect();
    let all: Vec<String> = matching(
        &samples,
        "traces_service_graph_request_total",
        &[("connection_type", "database")],
    )
    .map(|e| format!("{:?}={}", e.labels, e.value))
    .collect();
    assert_eq!(
        edges(&samples),
        want_edges,
        "service graph edges; the client pod is named {names:?}; every database edge: {all:?}"
    );
    s.obs.stop().unwrap();
}

/// RESP3 from a raw client ([`RESP3_PY`]): per command, the client's tally, the server's
/// `commandstats` and the client pod's operations agree, the error counted once by its prefix;
/// nothing left unanswered (RESP3 confirms subscriptions with pushes).
#[test]
fn a_resp3_client_with_pushes_is_counted_exactly() {
    let s = setup(|_, _, _| {});
    let host = s.server.ip.clone();
    let before = commandstats(&host);
    let errors_before = errorstats(&host);
    let out = s
        .client
        .python(RESP3_PY, &[&host, &PORT.to_string()])
        .unwrap();
    let after = commandstats(&host);
    let errors = db::delta(&errorstats(&host), &errors_before);
    let (tally, tally_errors) = client_tally(&out);
    let mut server = db::delta(&after, &before);
    server.remove("INFO");
    assert_eq!(server, tally, "the client's tally against commandstats");
    assert_eq!(
        errors, tally_errors,
        "errors: the client's against errorstats"
    );
    assert_eq!(tally_errors, BTreeMap::from([("WRONGTYPE".to_string(), 1)]));
    let samples = until_ops(&s.obs, CLIENT, &s.client, &tally, "client side");
    assert_eq!(
        per_op(
            &samples,
            CLIENT,
            &s.client,
            &[("db_response_status_code", "WRONGTYPE")]
        ),
        BTreeMap::from([("LPUSH".to_string(), 1)]),
        "the error, by prefix"
    );
    // Every command had its own reply: none ended without one (a confirmation push not taken
    // for a reply leaves a command waiting, ended by its connection's close).
    assert_eq!(
        per_op(&samples, CLIENT, &s.client, &[("error_type", "")]),
        tally,
        "answered"
    );
    let unparsed: f64 = matching(
        &samples,
        "observer_l7_messages_unparsed_total",
        &[("protocol", "redis")],
    )
    .map(|x| x.value)
    .sum();
    assert_eq!(unparsed, 0.0, "unparsed Redis messages");
    s.obs.stop().unwrap();
}

#[test]
fn a_raw_client_pipelines_transactions_errors_and_pub_sub() {
    let s = setup(|_, _, _| {});
    let host = s.server.ip.clone();
    let before = commandstats(&host);
    let errors_before = errorstats(&host);
    let out = s
        .client
        .python(CLIENT_PY, &[&host, &PORT.to_string()])
        .unwrap();
    let after = commandstats(&host);
    let errors = db::delta(&errorstats(&host), &errors_before);
    let (tally, tally_errors) = client_tally(&out);
    // The client's tally and the server's record agree (the test's first INFO aside).
    let mut server = db::delta(&after, &before);
    server.remove("INFO");
    assert_eq!(server, tally, "the client's tally against commandstats");
    assert_eq!(
        errors, tally_errors,
        "errors: the client's against errorstats"
    );
    assert_eq!(tally_errors, BTreeMap::from([("WRONGTYPE".to_string(), 1)]));
    let samples = until_ops(&s.obs, CLIENT, &s.client, &tally, "client side");
    assert_eq!(
        per_op(
            &samples,
            CLIENT,
            &s.client,
            &[("db_response_status_code", "WRONGTYPE")]
        ),
        BTreeMap::from([("LPUSH".to_string(), 1)]),
        "the error, by prefix"
    );
    s.obs.stop().unwrap();
}

#[test]
fn a_connection_from_before_the_observer_counts_and_a_slow_command_lands_in_its_bucket() {
    let go = std::cell::RefCell::new(String::new());
    let s = setup(|dir, client, host| {
        let script = dir.write("early.py", EARLY_PY).unwrap();
        *go.borrow_mut() = dir.join("go");
        client
            .spawn("python3", &[&script, host, &PORT.to_string(), &go.borrow()])
            .unwrap();
        // Connected before the observer starts.
        std::thread::sleep(Duration::from_millis(500));
    });
    std::fs::write(&*go.borrow(), "").unwrap();
    let want = BTreeMap::from([("PING".to_string(), 1), ("DEBUG".to_string(), 1)]);
    let samples = until_ops(&s.obs, CLIENT, &s.client, &want, "operations");
    let bucket = |le: &str| db::client_bucket(&samples, &s.client, "DEBUG", le);
    assert_eq!(bucket("0.05"), 0, "slept 60 ms");
    // Under emulation a guest's clock runs unevenly: the upper bound is the host kernel's.
    if slowdown() == 1 {
        assert_eq!(bucket("0.1"), 1, "within 0.1 s");
    }
    let _ = &s.dir;
    s.obs.stop().unwrap();
}

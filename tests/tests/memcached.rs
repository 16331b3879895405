//! Privileged accuracy tests of Memcached capture (`--probes memcached`): Debian's memcached in
//! one simulated pod, `memcslap` (libmemcached, C) and a Python client (pymemcache from Debian,
//! plus a raw socket for error replies) in another; counts EXACT against ground truth:
//! - the server's own record: its `stats` counters (`cmd_get` counts keys, `cmd_set` every
//!   storage command, `delete_*`, `incr_*`), read before and after the load from the host;
//! - the clients' own tally of what they sent.
//!
//! Series: `db_client_operation_duration_seconds` of the client pod with
//! `db_system_name="memcached"`.

use std::{collections::BTreeMap, time::Duration};

use observer_tests::{
    db::{self, CLIENT, SERVER},
    metrics::{matching, Sample},
    net::Bridge,
    observer::{self, Observer},
    pod::Pod,
    require_root, sh, slowdown, TempDir,
};

const PORT: u16 = 11211;
/// Debian's interpreter, which has pymemcache (another `python3` on the PATH may not).
const PYTHON: &str = "/usr/bin/python3";

/// Reads the server's `stats` counters (from the host: the host's own `stats` command is an
/// operation of the server pod, never of the client pod).
const STATS_PY: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"stats\r\n")
buf = b""
while not buf.endswith(b"END\r\n"):
    buf += s.recv(65536)
for line in buf.decode().splitlines():
    p = line.split()
    if len(p) == 3 and p[0] == "STAT" and p[2].isdigit():
        print(p[1], p[2])
"#;

struct Setup {
    dir: TempDir,
    _bridge: Bridge,
    server: Pod,
    client: Pod,
    obs: Observer,
}

fn setup() -> Setup {
    require_root();
    let dir = TempDir::new("memcached").unwrap();
    let bridge = Bridge::new().unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let client = Pod::new(&bridge).unwrap();
    server
        .spawn(
            "memcached",
            &["-u", "root", "-p", &PORT.to_string(), "-U", "0", "-m", "64"],
        )
        .unwrap();
    server.wait_listening(PORT).unwrap();
    let obs = Observer::start(&["--probes", "tcp,memcached"]).unwrap();
    Setup {
        dir,
        _bridge: bridge,
        server,
        client,
        obs,
    }
}

fn stats(dir: &TempDir, host: &str) -> BTreeMap<String, u64> {
    let script = dir.write("stats.py", STATS_PY).unwrap();
    sh(&format!("{PYTHON} {script} {host} {PORT}"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, key: &str) -> u64 {
    after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)
}

/// Operations per `db_operation_name` (and status, when `by_status`) of a pod in `family`.
fn per_op(s: &[Sample], family: &str, pod: &Pod, by_status: bool) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for x in matching(
        s,
        family,
        &[
            ("k8s_pod_uid", pod.uid.as_str()),
            ("db_system_name", "memcached"),
        ],
    ) {
        let mut k = x.labels["db_operation_name"].clone();
        if by_status && !x.labels["db_response_status_code"].is_empty() {
            k = format!("{k} {}", x.labels["db_response_status_code"]);
        }
        *m.entry(k).or_default() += x.value as u64;
    }
    m.retain(|_, v| *v > 0);
    m
}

#[test]
fn memcslap_counts_equal_the_servers_stats() {
    let s = setup();
    let host = s.server.ip.clone();
    let n: u64 = if slowdown() > 1 { 20 } else { 2000 };
    let before = stats(&s.dir, &host);
    for test in ["set", "get"] {
        s.client
            .run(
                "memcslap",
                &[
                    &format!("--servers={host}:{PORT}"),
                    "--concurrency=2",
                    &format!("--execute-number={n}"),
                    &format!("--test={test}"),
                ],
            )
            .unwrap();
    }
    let after = stats(&s.dir, &host);
    let want = BTreeMap::from([
        ("get".to_string(), delta(&after, &before, "cmd_get")),
        ("set".to_string(), delta(&after, &before, "cmd_set")),
    ]);
    // memcslap's own: 2 × n of each test (its get test loads keys with sets first).
    assert_eq!(want["get"], 2 * n, "{after:?}");
    assert!(want["set"] >= 2 * n, "{after:?}");
    let samples = s
        .obs
        .scrape_until(Duration::from_secs(20), |x| {
            per_op(x, CLIENT, &s.client, false) == want
        })
        .unwrap();
    assert_eq!(
        per_op(&samples, CLIENT, &s.client, false),
        want,
        "client pod"
    );
    // The server answered the same, and the host's two `stats`.
    let mut want_server = want.clone();
    want_server.insert("stats".into(), 2);
    let samples = s
        .obs
        .scrape_until(Duration::from_secs(20), |x| {
            per_op(x, SERVER, &s.server, false) == want_server
        })
        .unwrap();
    assert_eq!(per_op(&samples, SERVER, &s.server, false), want_server);
    let unparsed = db::unparsed(&samples, "memcached");
    assert_eq!(unparsed, 0.0, "unparsed Memcached records");
    let edge: f64 = matching(
        &samples,
        "traces_service_graph_request_total",
        &[
            ("client", "memcslap"),
            ("server", "memcached"),
            ("connection_type", "database"),
        ],
    )
    .map(|x| x.value)
    .sum();
    assert_eq!(edge as u64, want.values().sum::<u64>(), "the database edge");
    s.obs.stop().unwrap();
}

/// pymemcache (sets and deletes with `noreply`, its default; gets of one and of three keys;
/// increments), then a raw socket's get, unknown command and bad increment. Prints its tally: `op
/// count` lines (`op STATUS count` for errors) and `keys <n>` for the keys its gets asked for.
const CLIENT_PY: &str = r#"
import socket, sys, collections
from pymemcache.client.base import Client
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = Client((host, port))
t = collections.Counter()
keys = 0
for i in range(n):
    c.set("k%d" % i, b"v" * 100)
    t["set"] += 1
for i in range(n):
    c.get("k%d" % i)
    t["get"] += 1
    keys += 1
for i in range(0, n, 3):
    c.get_many(["k%d" % i, "k%d" % (i + 1), "k%d" % (i + 2)])
    t["get"] += 1
    keys += 3
c.set("ctr", "0", noreply=False)
t["set"] += 1
for i in range(n):
    c.incr("ctr", 1)
    t["incr"] += 1
for i in range(n):
    c.delete("k%d" % i, noreply=(i % 2 == 0))
    t["delete"] += 1
c.close()
s = socket.create_connection((host, port))
f = s.makefile("rb")
# A connection is claimed at a command the protocol has: this one's first.
s.sendall(b"get k1\r\n")
assert f.readline() == b"END\r\n"
t["get"] += 1
keys += 1
s.sendall(b"bogus\r\n")
assert f.readline() == b"ERROR\r\n"
t["_OTHER ERROR"] += 1
s.sendall(b"incr ctr abc\r\n")
assert f.readline().startswith(b"CLIENT_ERROR")
t["incr CLIENT_ERROR"] += 1
s.close()
for op, k in sorted(t.items()):
    print(op, k)
print("keys", keys)
"#;

#[test]
fn a_python_client_with_noreply_multi_key_gets_and_errors() {
    let s = setup();
    let host = s.server.ip.clone();
    let n: u64 = if slowdown() > 1 { 12 } else { 300 };
    let before = stats(&s.dir, &host);
    let script = s.dir.write("client.py", CLIENT_PY).unwrap();
    let out = s
        .client
        .run(PYTHON, &[&script, &host, &PORT.to_string(), &n.to_string()])
        .unwrap();
    let after = stats(&s.dir, &host);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut tally: BTreeMap<String, u64> = text
        .lines()
        .filter_map(|l| {
            let (op, k) = l.rsplit_once(' ')?;
            Some((op.to_string(), k.parse().ok()?))
        })
        .collect();
    let keys = tally.remove("keys").unwrap();
    // The server's counters agree with the tally.
    assert_eq!(delta(&after, &before, "cmd_get"), keys, "{text}");
    assert_eq!(delta(&after, &before, "cmd_set"), tally["set"], "{text}");
    assert_eq!(
        delta(&after, &before, "delete_hits") + delta(&after, &before, "delete_misses"),
        tally["delete"]
    );
    assert_eq!(
        delta(&after, &before, "incr_hits") + delta(&after, &before, "incr_misses"),
        tally["incr"]
    );
    let samples = s
        .obs
        .scrape_until(Duration::from_secs(20), |x| {
            per_op(x, CLIENT, &s.client, true) == tally
        })
        .unwrap();
    assert_eq!(per_op(&samples, CLIENT, &s.client, true), tally, "{text}");
    let failed: f64 = matching(
        &samples,
        CLIENT,
        &[
            ("k8s_pod_uid", s.client.uid.as_str()),
            ("db_response_status_code", "CLIENT_ERROR"),
        ],
    )
    .map(|x| x.value)
    .sum();
    assert_eq!(failed, 1.0);
    // `observer top`: the client pod's database operations, exact, with the two error replies,
    // and the time it waited on them.
    let out = std::process::Command::new(observer::binary())
        .args(["top", "--server", &s.obs.grpc_addr, "--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let top: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = top["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["workload"]["pod_uid"] == s.client.uid.as_str())
        .unwrap_or_else(|| panic!("client pod in top: {top}"))
        .clone();
    let ops: u64 = tally.values().sum();
    assert_eq!(row["db_client_total"]["requests"], ops, "{row}");
    assert_eq!(row["db_client_total"]["errors"], 2, "{row}");
    assert_eq!(row["client_total"]["requests"], ops, "{row}");
    assert!(row["db_ms_per_second"].as_f64().is_some(), "{row}");
    s.obs.stop().unwrap();
}

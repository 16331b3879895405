//! Privileged accuracy tests of DNS capture (`--probes dns`): dnsmasq answering a
//! test zone in one simulated pod; `dig` (BIND 9, `sendmmsg` of one query, `recvmsg`) and
//! Python's `socket.getaddrinfo` (glibc's resolver: the A and AAAA queries together in one
//! `sendmmsg`, answers by `recvfrom`) in another, whose resolver configuration names the server
//! pod (`ip netns exec` mounts `/etc/netns/<netns>/resolv.conf`); over TCP, `dig +tcp` and a
//! Python client pipelining two queries per connection; from an unconnected socket, a Python
//! resolver's `sendto` and `sendmsg`. Counts EXACT against:
//! - the server's own record: dnsmasq's query log (`--log-queries`, one line per query, with
//!   its type and the client's address);
//! - what each query is answered by construction (a name of the zone: NOERROR; a name under the
//!   zone that is not there: NXDOMAIN; a name outside it, with no upstream server: REFUSED).
//!
//! The datagrams come from the socket tracepoints since 6.3 and from fexit on UDP's functions
//! before: each kernel's hook is checked too.

use std::{collections::BTreeMap, time::Duration};

use observer_tests::{
    gotls::build_go,
    metrics::{matching, Sample},
    net::Bridge,
    observer::Observer,
    pod::Pod,
    require_root, sh, slowdown, TempDir,
};

const CLIENT: &str = "dns_lookup_duration_seconds_count";
const SERVER: &str = "dns_server_duration_seconds_count";
const ZONE: &str = "test.example";
/// Debian's interpreter (another `python3` on the PATH may not be glibc's).
const PYTHON: &str = "/usr/bin/python3";

/// The hook DNS's datagrams come from on this kernel: the `sock_send_length` tracepoints since
/// 6.3, fexit on UDP's own functions before.
fn expected_hook() -> &'static str {
    let uname = sh("uname -r").unwrap();
    let mut v = uname
        .trim()
        .split(['.', '-'])
        .map(|x| x.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    if (major, minor) >= (6, 3) {
        "tp_btf"
    } else {
        "fexit"
    }
}

struct Setup {
    dir: TempDir,
    _bridge: Bridge,
    server: Pod,
    client: Pod,
    obs: Observer,
    _resolv: ResolvConf,
}

/// The client pod's `/etc/netns/<netns>/`, removed also when a test fails.
struct ResolvConf(String);

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// dnsmasq in the server pod (logging every query to a file), the client pod's resolver
/// pointed at it, then the observer.
fn setup() -> Setup {
    require_root();
    let dir = TempDir::new("dns").unwrap();
    let bridge = Bridge::new().unwrap();
    let mut server = Pod::new(&bridge).unwrap();
    let client = Pod::new(&bridge).unwrap();
    let log = dir.join("queries.log");
    server
        .spawn(
            "dnsmasq",
            &[
                "--no-daemon",
                "--user=root",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                &format!("--listen-address={}", server.ip),
                "--port=53",
                "--log-queries",
                &format!("--log-facility={log}"),
                &format!("--local=/{ZONE}/"),
                &format!("--host-record=api.{ZONE},10.9.8.7,fd00::7"),
            ],
        )
        .unwrap();
    let deadline = std::time::Instant::now() + observer_tests::scaled(Duration::from_secs(10));
    while !sh(&format!(
        "ip netns exec {} ss -Hlun sport = :53",
        server.netns
    ))
    .unwrap_or_default()
    .contains(":53")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "dnsmasq does not listen"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let resolv = ResolvConf(format!("/etc/netns/{}", client.netns));
    let resolv_dir = &resolv.0;
    std::fs::create_dir_all(resolv_dir).unwrap();
    std::fs::write(
        format!("{resolv_dir}/resolv.conf"),
        format!("nameserver {}\noptions timeout:2 attempts:1\n", server.ip),
    )
    .unwrap();
    let obs = Observer::start(&["--probes", "tcp,dns", "--http-request-timeout", "3s"]).unwrap();
    Setup {
        dir,
        _bridge: bridge,
        server,
        client,
        obs,
        _resolv: resolv,
    }
}

/// The server's log: queries from `from`, per type.
fn logged(dir: &TempDir, from: &str) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(dir.join("queries.log")).unwrap_or_default();
    let mut m = BTreeMap::new();
    for l in text.lines() {
        let Some(rest) = l.split_once("query[").map(|(_, r)| r) else {
            continue;
        };
        let Some((ty, tail)) = rest.split_once(']') else {
            continue;
        };
        if tail.trim_end().ends_with(&format!(" from {from}")) {
            *m.entry(ty.to_string()).or_default() += 1;
        }
    }
    m
}

/// A pod's lookups in `family`, per (type, response code), with `extra` labels.
fn per_type(
    s: &[Sample],
    family: &str,
    pod: &Pod,
    extra: &[(&str, &str)],
) -> BTreeMap<String, u64> {
    let mut want = vec![("k8s_pod_uid", pod.uid.as_str())];
    want.extend_from_slice(extra);
    let mut m = BTreeMap::new();
    for x in matching(s, family, &want) {
        let k = format!(
            "{} {}{}",
            x.labels["dns_question_type"], x.labels["dns_response_code"], x.labels["error_type"]
        );
        *m.entry(k).or_default() += x.value as u64;
    }
    m.retain(|_, v| *v > 0);
    m
}

/// DNS records the observer could not use, with `extra` labels (a reason).
fn unparsed(s: &[Sample], extra: &[(&str, &str)]) -> f64 {
    let mut want = vec![("protocol", "dns")];
    want.extend_from_slice(extra);
    let found: Vec<_> = matching(s, "observer_l7_messages_unparsed_total", &want)
        .filter(|x| x.value > 0.0)
        .collect();
    if !found.is_empty() {
        eprintln!("unparsed DNS records: {found:?}");
    }
    found.iter().map(|x| x.value).sum()
}

/// Sums per type, whatever the response.
fn by_type(m: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut t = BTreeMap::new();
    for (k, v) in m {
        *t.entry(k.split(' ').next().unwrap().to_string())
            .or_default() += v;
    }
    t
}

/// Looks up `$1` `$2` times with Go's own resolver, then `$3`, which must not resolve.
const GO_RESOLVER: &str = r#"
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
)

func main() {
	n, _ := strconv.Atoi(os.Args[2])
	r := &net.Resolver{PreferGo: true}
	for i := 0; i < n; i++ {
		if _, err := r.LookupHost(context.Background(), os.Args[1]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	if _, err := r.LookupHost(context.Background(), os.Args[3]); err == nil {
		fmt.Fprintln(os.Stderr, "resolved?")
		os.Exit(1)
	}
}
"#;

/// Asks server `$1` for `$2`'s A and AAAA records `$3` times with Node's c-ares resolver, then
/// for the A record of a name under zone `$4` that is not there.
const NODE_RESOLVER: &str = r#"
const { Resolver } = require("dns").promises;
const [server, name, n, zone] = process.argv.slice(2);
const r = new Resolver({ timeout: 2000, tries: 1 });
r.setServers([server]);
(async () => {
  for (let i = 0; i < Number(n); i++) {
    await r.resolve4(name);
    await r.resolve6(name);
  }
  try {
    await r.resolve4("missing." + zone);
    console.error("resolved?");
    process.exit(1);
  } catch (e) {
    if (e.code !== "ENOTFOUND") throw e;
  }
})().catch((e) => { console.error(e); process.exit(1); });
"#;

const GAI_PY: &str = r#"
import socket, sys
name, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)
try:
    socket.getaddrinfo("missing." + sys.argv[3], 80, proto=socket.IPPROTO_TCP)
    print("resolved?")
except socket.gaierror:
    pass
"#;

#[test]
fn dig_and_glibc_lookups_equal_the_servers_query_log() {
    let s = setup();
    let probes = s.obs.scrape().unwrap();
    let up: Vec<(String, f64)> = matching(&probes, "observer_probe_up", &[("probe", "dns")])
        .map(|x| (x.labels["hook"].clone(), x.value))
        .collect();
    assert_eq!(up, [(expected_hook().to_string(), 1.0)]);
    let host = s.server.ip.clone();
    let n: u64 = if slowdown() > 1 { 3 } else { 40 };
    let dig = |name: &str, ty: &str| {
        let out = s
            .client
            .output(
                "dig",
                &[&format!("@{host}"), "+tries=1", "+time=3", name, ty],
            )
            .unwrap();
        assert!(out.status.success(), "dig {name} {ty}: {out:?}");
    };
    for _ in 0..n {
        dig(&format!("api.{ZONE}"), "A");
        dig(&format!("api.{ZONE}"), "AAAA");
    }
    dig(&format!("missing.{ZONE}"), "TXT");
    dig("outside.example.org", "MX");
    let script = s.dir.write("gai.py", GAI_PY).unwrap();
    s.client
        .run(
            PYTHON,
            &[&script, &format!("api.{ZONE}"), &n.to_string(), ZONE],
        )
        .unwrap();
    // What each lookup is answered, by construction: dig's n A and n AAAA, glibc's n pairs,
    // one NXDOMAIN TXT (dig) and an NXDOMAIN pair (glibc), one REFUSED MX.
    let want = BTreeMap::from([
        ("A NOERROR".to_string(), 2 * n),
        ("AAAA NOERROR".to_string(), 2 * n),
        ("A NXDOMAIN".to_string(), 1),
        ("AAAA NXDOMAIN".to_string(), 1),
        ("TXT NXDOMAIN".to_string(), 1),
        ("MX REFUSED".to_string(), 1),
    ]);
    let samples = exact_on_both_sides(&s, &want, &[]);
    // The question names and the server's address.
    assert_eq!(
        per_type(
            &samples,
            CLIENT,
            &s.client,
            &[
                ("dns_question_name", &format!("api.{ZONE}")),
                ("server_address", &host)
            ]
        ),
        BTreeMap::from([
            ("A NOERROR".to_string(), 2 * n),
            ("AAAA NOERROR".to_string(), 2 * n)
        ])
    );
    s.obs.stop().unwrap();
}

/// Go's own resolver (`PreferGo`, as every static Go program resolves: one connected UDP
/// socket per question, A and AAAA at once from two goroutines, `write` and `read`) and
/// Node's `dns.Resolver` (c-ares: a connected socket, `sendto` without address and
/// `recvfrom`): resolvers whose system calls neither dig nor glibc make.
#[test]
fn go_and_node_resolvers_equal_the_servers_query_log() {
    let s = setup();
    let host = s.server.ip.clone();
    let n: u64 = if slowdown() > 1 { 3 } else { 40 };
    let go = build_go(&s.dir, "godns", GO_RESOLVER, false);
    let api = format!("api.{ZONE}.");
    let missing = format!("missing.{ZONE}.");
    s.client
        .run(&go, &[&api, &n.to_string(), &missing])
        .unwrap();
    let script = s.dir.write("resolve.js", NODE_RESOLVER).unwrap();
    s.client
        .run(
            "node",
            &[&script, &host, &format!("api.{ZONE}"), &n.to_string(), ZONE],
        )
        .unwrap();
    // Go: n pairs and an NXDOMAIN pair; Node: n A, n AAAA and one NXDOMAIN A.
    let want = BTreeMap::from([
        ("A NOERROR".to_string(), 2 * n),
        ("AAAA NOERROR".to_string(), 2 * n),
        ("A NXDOMAIN".to_string(), 2),
        ("AAAA NXDOMAIN".to_string(), 1),
    ]);
    let samples = exact_on_both_sides(&s, &want, &[]);
    assert_eq!(
        per_type(
            &samples,
            CLIENT,
            &s.client,
            &[("dns_question_name", &format!("api.{ZONE}"))]
        ),
        BTreeMap::from([
            ("A NOERROR".to_string(), 2 * n),
            ("AAAA NOERROR".to_string(), 2 * n)
        ])
    );
    s.obs.stop().unwrap();
}

#[test]
fn a_query_without_answer_is_a_timeout() {
    let s = setup();
    // Nothing listens on the client pod's own port 53: the query goes, no answer comes (the
    // kernel's port-unreachable reaches dig as an error, never as a DNS message).
    let out = s
        .client
        .output(
            "dig",
            &["@127.0.0.1", "+tries=1", "+time=1", "nobody.here", "A"],
        )
        .unwrap();
    assert!(!out.status.success());
    let want = BTreeMap::from([("A timeout".to_string(), 1)]);
    let samples = s
        .obs
        .scrape_until(Duration::from_secs(20), |x| {
            per_type(x, CLIENT, &s.client, &[("server_address", "127.0.0.1")]) == want
        })
        .unwrap();
    assert_eq!(
        per_type(
            &samples,
            CLIENT,
            &s.client,
            &[("server_address", "127.0.0.1")]
        ),
        want
    );
    assert!(logged(&s.dir, &s.client.ip).is_empty());
    s.obs.stop().unwrap();
}

const HOSTILE_PY: &str = r#"
import os, socket, sys
host, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((host, 53))
for i in range(n):
    # Shorter than a DNS header: no server answers it.
    s.send(os.urandom(1 + i % 11))
s.close()
"#;

#[test]
fn bytes_that_are_no_dns_are_counted_and_a_later_lookup_once() {
    let s = setup();
    let host = s.server.ip.clone();
    let n = 10u64;
    let script = s.dir.write("hostile.py", HOSTILE_PY).unwrap();
    s.client
        .run(PYTHON, &[&script, &host, &n.to_string()])
        .unwrap();
    let out = s
        .client
        .output(
            "dig",
            &[
                &format!("@{host}"),
                "+tries=1",
                "+time=3",
                &format!("api.{ZONE}"),
                "A",
            ],
        )
        .unwrap();
    assert!(out.status.success());
    let want = BTreeMap::from([("A NOERROR".to_string(), 1)]);
    // Sent by the client and read by the server: each datagram twice.
    let invalid = |x: &[Sample]| unparsed(x, &[("reason", "invalid")]);
    let samples = s
        .obs
        .scrape_until(Duration::from_secs(20), |x| {
            per_type(x, CLIENT, &s.client, &[]) == want && invalid(x) == 2.0 * n as f64
        })
        .unwrap();
    assert_eq!(per_type(&samples, CLIENT, &s.client, &[]), want);
    assert_eq!(per_type(&samples, SERVER, &s.server, &[]), want);
    assert_eq!(invalid(&samples), 2.0 * n as f64);
    assert_eq!(
        logged(&s.dir, &s.client.ip),
        BTreeMap::from([("A".to_string(), 1)])
    );
    s.obs.stop().unwrap();
}

/// A resolver of its own, speaking DNS with the socket calls the test names: `udp` sends from
/// an unconnected socket (`sendto` with `recvfrom` for A, `sendmsg` with `recvmsg` for AAAA, as
/// musl's resolver and forwarding servers do); `tcp` opens a connection per round and
/// pipelines an A and an AAAA query in one write, reading both answers after.
const RESOLVER_PY: &str = r#"
import socket, struct, sys
host, n, zone, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

def query(qid, name, qtype):
    b = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        b += bytes([len(label)]) + label.encode()
    return b + b"\0" + struct.pack(">HH", qtype, 1)

def exact(c, k):
    b = b""
    while len(b) < k:
        more = c.recv(k - len(b))
        if not more:
            raise SystemExit("connection closed early")
        b += more
    return b

if mode == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    for i in range(n):
        s.sendto(query(i, "api." + zone, 1), (host, 53))
        s.recvfrom(4096)
        s.sendmsg([query(1000 + i, "api." + zone, 28)], [], 0, (host, 53))
        s.recvmsg(4096)
else:
    for i in range(n):
        c = socket.create_connection((host, 53), timeout=5)
        a = query(2 * i, "api." + zone, 1)
        b = query(2 * i + 1, "missing." + zone, 28)
        c.sendall(struct.pack(">H", len(a)) + a + struct.pack(">H", len(b)) + b)
        for _ in range(2):
            (k,) = struct.unpack(">H", exact(c, 2))
            exact(c, k)
        c.close()
"#;

/// Lookups of both sides, per (type, code), once they equal `want`.
fn settle(s: &Setup, want: &BTreeMap<String, u64>, client_extra: &[(&str, &str)]) -> Vec<Sample> {
    s.obs
        .scrape_until(Duration::from_secs(20), |x| {
            per_type(x, CLIENT, &s.client, client_extra) == *want
                && per_type(x, SERVER, &s.server, &[]) == *want
        })
        .unwrap()
}

/// The client's lookups answered `want` (per type and code): dnsmasq's query log says the
/// same per type, and both sides count exactly that (the client's series with
/// `client_extra`), with nothing unparsed. Returns the samples.
fn exact_on_both_sides(
    s: &Setup,
    want: &BTreeMap<String, u64>,
    client_extra: &[(&str, &str)],
) -> Vec<Sample> {
    assert_eq!(
        logged(&s.dir, &s.client.ip),
        by_type(want),
        "dnsmasq's query log"
    );
    let samples = settle(s, want, client_extra);
    assert_eq!(
        per_type(&samples, CLIENT, &s.client, client_extra),
        *want,
        "client pod"
    );
    assert_eq!(
        per_type(&samples, SERVER, &s.server, &[]),
        *want,
        "server pod"
    );
    assert_eq!(unparsed(&samples, &[]), 0.0, "unparsed DNS records");
    samples
}

#[test]
fn tcp_lookups_pipelined_or_one_per_connection_equal_the_servers_query_log() {
    let s = setup();
    let host = s.server.ip.clone();
    let n: u64 = if slowdown() > 1 { 2 } else { 20 };
    // dig over TCP: a connection per lookup.
    for _ in 0..n {
        let out = s
            .client
            .output(
                "dig",
                &[
                    &format!("@{host}"),
                    "+tcp",
                    "+tries=1",
                    "+time=3",
                    &format!("api.{ZONE}"),
                    "TXT",
                ],
            )
            .unwrap();
        assert!(out.status.success(), "dig +tcp: {out:?}");
    }
    let script = s.dir.write("resolver.py", RESOLVER_PY).unwrap();
    s.client
        .run(PYTHON, &[&script, &host, &n.to_string(), ZONE, "tcp"])
        .unwrap();
    // A name of the zone without TXT record: NOERROR with no answer.
    let want = BTreeMap::from([
        ("TXT NOERROR".to_string(), n),
        ("A NOERROR".to_string(), n),
        ("AAAA NXDOMAIN".to_string(), n),
    ]);
    exact_on_both_sides(&s, &want, &[("server_address", &host)]);
    s.obs.stop().unwrap();
}

/// Answers read several at once with `recvmmsg` (as batching resolvers and DNS proxies read):
/// a connected socket sends `n` rounds of three queries (A of the zone's name, AAAA of it, A of
/// a missing name), then reads the round's answers with `recvmmsg` once they are all there.
/// Each answer is one message of one call and is counted once, exact against dnsmasq's log.
#[test]
fn answers_read_several_at_once_with_recvmmsg_are_each_counted() {
    let s = setup();
    let host = s.server.ip.clone();
    let n: u64 = if slowdown() > 1 { 2 } else { 20 };
    let script = s.dir.write("recvmmsg.py", RECVMMSG_PY).unwrap();
    let out = s
        .client
        .run(PYTHON, &[&script, &host, &n.to_string(), ZONE])
        .unwrap();
    // Every round's three answers came in one call (else the test would not test it).
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{n} calls of 3"),
        "recvmmsg"
    );
    let want = BTreeMap::from([
        ("A NOERROR".to_string(), n),
        ("AAAA NOERROR".to_string(), n),
        ("A NXDOMAIN".to_string(), n),
    ]);
    exact_on_both_sides(&s, &want, &[("server_address", &host)]);
    s.obs.stop().unwrap();
}

/// `$2` rounds, to server `$1`: three queries sent (A and AAAA of `api.$3`, A of
/// `missing.$3`), then, once all three answers are there, one `recvmmsg` of up to four
/// messages (its `msg_len`s zeroed first, as callers do). Prints how many calls read how many.
const RECVMMSG_PY: &str = r#"
import ctypes, select, socket, struct, sys, time

class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]

class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]

assert ctypes.sizeof(mmsghdr) == 64
libc = ctypes.CDLL(None, use_errno=True)
host, rounds, zone = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def query(qid, name, qtype):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack(">HH", qtype, 1)

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((host, 53))
VLEN = 4
bufs = [ctypes.create_string_buffer(512) for _ in range(VLEN)]
iovs = (iovec * VLEN)()
msgs = (mmsghdr * VLEN)()
calls = {}
qid = 1
for r in range(rounds):
    for name, qtype in (("api." + zone, 1), ("api." + zone, 28), ("missing." + zone, 1)):
        s.send(query(qid, name, qtype))
        qid += 1
    # Read once the three answers are queued (readable, then a moment for the rest).
    got = 0
    while got < 3:
        ctypes.memset(msgs, 0, ctypes.sizeof(msgs))
        for i in range(VLEN):
            iovs[i].base = ctypes.cast(bufs[i], ctypes.c_void_p)
            iovs[i].len = 512
            msgs[i].hdr.iov = ctypes.pointer(iovs[i])
            msgs[i].hdr.iovlen = 1
        select.select([s], [], [], 5)
        time.sleep(0.2)
        n = libc.recvmmsg(s.fileno(), msgs, VLEN, 0x40, None)  # MSG_DONTWAIT
        if n < 0:
            raise OSError(ctypes.get_errno(), "recvmmsg")
        calls[n] = calls.get(n, 0) + 1
        got += n
print(" ".join("%d calls of %d" % (c, k) for k, c in sorted(calls.items())))
"#;

#[test]
fn lookups_from_an_unconnected_socket_are_followed() {
    let s = setup();
    let host = s.server.ip.clone();
    let n: u64 = if slowdown() > 1 { 3 } else { 40 };
    let script = s.dir.write("resolver.py", RESOLVER_PY).unwrap();
    s.client
        .run(PYTHON, &[&script, &host, &n.to_string(), ZONE, "udp"])
        .unwrap();
    let want = BTreeMap::from([
        ("A NOERROR".to_string(), n),
        ("AAAA NOERROR".to_string(), n),
    ]);
    assert_eq!(
        logged(&s.dir, &s.client.ip),
        by_type(&want),
        "dnsmasq's query log"
    );
    let samples = settle(
        &s,
        &want,
        &[
            ("server_address", &host),
            ("dns_question_name", &format!("api.{ZONE}")),
        ],
    );
    assert_eq!(
        per_type(&samples, SERVER, &s.server, &[]),
        want,
        "server pod"
    );
    s.obs.stop().unwrap();
}

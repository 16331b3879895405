//! The exact workload of the deployment tests (the observer under exactly the DaemonSet's
//! capabilities, on the host and in a container): a pod's syscalls, and HTTP requests and TCP
//! connections between two pods, each counted against what the test processes did.

use std::collections::BTreeSet;

use crate::{
    metrics::{sum, Sample},
    net::Bridge,
    pod::Pod,
};

/// Every probe a default start attaches is up (and whatever else this build has).
pub fn every_default_probe_is_up(s: &[Sample]) {
    every_default_probe_is_up_but(s, &[]);
}

/// The observer's log says its uprobes are refused (`kernel.perf_event_paranoid`, or a kernel
/// that creates uprobes only for CAP_SYS_ADMIN): the tls probe is down then.
pub fn uprobes_refused(log: &str) -> bool {
    log.contains("uprobes attach through perf_event_open, which is refused")
}

/// Every probe a default start attaches is up, but the tls probe where the observer's log
/// says its uprobes are refused.
pub fn every_default_probe_is_up_unless_refused(s: &[Sample], log: &str) {
    let down: &[&str] = if uprobes_refused(log) { &["tls"] } else { &[] };
    every_default_probe_is_up_but(s, down);
}

/// Every probe a default start attaches is up but those of `down` (which are down).
pub fn every_default_probe_is_up_but(s: &[Sample], down: &[&str]) {
    let probes: Vec<&Sample> = s.iter().filter(|x| x.name == "observer_probe_up").collect();
    let names: BTreeSet<&str> = probes.iter().map(|p| p.labels["probe"].as_str()).collect();
    for p in [
        "http",
        "http2",
        "redis",
        "postgresql",
        "mysql",
        "memcached",
        "tls",
        "lifecycle",
        "syscalls",
        "tcp_bytes",
        "tcp_connections",
        "tcp_retransmits",
    ] {
        assert!(names.contains(p), "no probe {p} in {names:?}");
    }
    for p in &probes {
        let want = if down.contains(&p.labels["probe"].as_str()) {
            0.0
        } else {
            1.0
        };
        assert_eq!(p.value, want, "probe {:?}", p.labels);
    }
}

fn pod_sum(s: &[Sample], name: &str, pod: &Pod, extra: &[(&str, &str)]) -> f64 {
    let mut want = vec![("k8s_pod_uid", pod.uid.as_str())];
    want.extend_from_slice(extra);
    sum(s, name, &want)
}

/// Calls getpriority K times and sched_getscheduler on a pid that does not exist E times.
pub const SYSCALLS: &str = r#"
import os, sys
k, e = int(sys.argv[1]), int(sys.argv[2])
for _ in range(k):
    os.getpriority(os.PRIO_PROCESS, 0)
for _ in range(e):
    try:
        os.sched_getscheduler(2**22 + 12345)
    except ProcessLookupError:
        pass
"#;

/// HTTP/1.1 server: 404 for /missing, 200 otherwise; head and body in one write.
const HTTP_SERVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        code = 404 if self.path == "/missing" else 200
        body = b"ok\n"
        self.send_response_only(code)
        self.send_header("Content-Length", str(len(body)))
        self._headers_buffer.append(b"\r\n" + body)
        self.flush_headers()
http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
"#;

/// K requests for /items/<i> and E for /missing on one keep-alive connection; prints statuses.
const HTTP_CLIENT: &str = r#"
import http.client, sys
host, port, k, e = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
c = http.client.HTTPConnection(host, port, timeout=10)
got = []
for path in ["/items/%d" % i for i in range(k)] + ["/missing"] * e:
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    got.append(r.status)
c.close()
print(" ".join(str(s) for s in sorted(set(got))), got.count(200), got.count(404))
"#;

/// A condition on a scrape.
pub type Cond<'a> = &'a dyn Fn(&[Sample]) -> bool;

/// Makes three pods, drives them, and checks the figures of scrapes taken with
/// `scrape_until` (which scrapes until its condition holds or its time is up).
pub fn pods_are_counted_exactly(scrape_until: &dyn Fn(Cond) -> Vec<Sample>) {
    let bridge = Bridge::new().unwrap();
    let a = Pod::new(&bridge).unwrap();
    let client = Pod::new(&bridge).unwrap();
    let mut server = Pod::new(&bridge).unwrap();

    // Syscalls of a pod, exactly.
    a.python(SYSCALLS, &["37", "11"]).unwrap();
    // HTTP and TCP between two pods, exactly.
    server.spawn_python(HTTP_SERVER, &["8080"]).unwrap();
    server.wait_listening(8080).unwrap();
    let got = client
        .python(HTTP_CLIENT, &[&server.ip, "8080", "25", "4"])
        .unwrap();
    assert_eq!(got.trim(), "200 404 25 4");

    let gp = [("syscall", "getpriority")];
    let s = scrape_until(&|s: &[Sample]| {
        pod_sum(s, "observer_syscalls_total", &a, &gp) >= 37.0
            && pod_sum(
                s,
                "http_server_request_duration_seconds_count",
                &server,
                &[],
            ) >= 29.0
            && pod_sum(
                s,
                "http_client_request_duration_seconds_count",
                &client,
                &[],
            ) >= 29.0
            && pod_sum(s, "observer_tcp_connections_closed_total", &client, &[]) >= 1.0
    });
    assert_eq!(pod_sum(&s, "observer_syscalls_total", &a, &gp), 37.0);
    let sg = [("syscall", "sched_getscheduler")];
    assert_eq!(pod_sum(&s, "observer_syscalls_total", &a, &sg), 11.0);
    assert_eq!(
        pod_sum(
            &s,
            "observer_syscall_errors_total",
            &a,
            &[("syscall", "sched_getscheduler"), ("errno", "ESRCH")]
        ),
        11.0
    );
    let server_count = |code: &str| {
        pod_sum(
            &s,
            "http_server_request_duration_seconds_count",
            &server,
            &[("http_response_status_code", code)],
        )
    };
    assert_eq!(server_count("200"), 25.0);
    assert_eq!(server_count("404"), 4.0);
    assert_eq!(
        pod_sum(
            &s,
            "http_client_request_duration_seconds_count",
            &client,
            &[]
        ),
        29.0
    );
    // The HTTP route, from the request line the kernel copied out of the pod's buffer.
    assert_eq!(
        pod_sum(
            &s,
            "http_server_request_duration_seconds_count",
            &server,
            &[("http_route", "/items/{id}")]
        ),
        25.0
    );
    let out = [("direction", "outbound")];
    let inb = [("direction", "inbound")];
    assert_eq!(
        pod_sum(&s, "observer_tcp_connections_opened_total", &client, &out),
        1.0
    );
    assert_eq!(
        pod_sum(&s, "observer_tcp_connections_opened_total", &server, &inb),
        1.0
    );
    assert_eq!(
        pod_sum(&s, "observer_tcp_connections_closed_total", &client, &[]),
        1.0
    );
}

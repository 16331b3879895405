//! The exposition against the real Prometheus tools: promtool's linter, and the Prometheus
//! server scraping the observer and answering queries about a pod.

use std::{
    io::Write,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use observer_tests::{
    metrics::sum,
    net::Bridge,
    observer::{free_port, http_get, Observer},
    pod::Pod,
    random_hex, require_root,
};

const GETPRIORITY: &str =
    "import os, sys\nfor _ in range(int(sys.argv[1])): os.getpriority(os.PRIO_PROCESS, 0)\n";
const CONNECT: &str = "import socket, sys\nfor _ in range(int(sys.argv[2])):\n    try: socket.create_connection((sys.argv[1], 1), timeout=3)\n    except OSError: pass\n";

#[test]
fn promtool_accepts_the_exposition() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let pod = Pod::new(&bridge).unwrap();
    let obs = Observer::start(&[]).unwrap();
    // Make every family appear: syscalls with errors, TCP with failures.
    pod.python(CONNECT, &[&bridge.prefix.add_host(1), "3"])
        .unwrap();
    let s = obs
        .scrape_until(Duration::from_secs(10), |s| {
            sum(
                s,
                "observer_tcp_connect_failures_total",
                &[("k8s_pod_uid", &pod.uid), ("reason", "refused")],
            ) >= 3.0
        })
        .unwrap();
    assert_eq!(
        sum(
            &s,
            "observer_tcp_connect_failures_total",
            &[("k8s_pod_uid", &pod.uid), ("reason", "refused")]
        ),
        3.0
    );

    let (status, ct, body) = obs.get("/metrics", None).unwrap();
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    for family in [
        "observer_syscalls_total",
        "observer_syscall_errors_total",
        "observer_syscall_duration_seconds_bucket",
        "observer_tcp_rtt_seconds_bucket",
        "observer_probe_up",
        "observer_build_info",
    ] {
        assert!(body.contains(&format!("\n{family}{{")), "{family} missing");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );

    // OpenMetrics for scrapers that ask for it.
    let (status, ct, om) = obs
        .get(
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0"),
        )
        .unwrap();
    assert_eq!(status, 200);
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE observer_syscalls counter"));

    for (path, code) in [("/healthz", 200), ("/readyz", 200), ("/nope", 404)] {
        assert_eq!(obs.get(path, None).unwrap().0, code, "{path}");
    }
    obs.stop().unwrap();
}

trait AddHost {
    fn add_host(&self, h: u8) -> String;
}
impl AddHost for String {
    fn add_host(&self, h: u8) -> String {
        format!("{self}.{h}")
    }
}

struct Prometheus {
    child: Child,
    dir: std::path::PathBuf,
    addr: String,
}

impl Prometheus {
    fn start(target: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("observer-prometheus-{}", random_hex(8)));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: observer\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )?;
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Prometheus { child, dir, addr })
    }

    /// Instant query; returns the first value, if any.
    fn query(&self, q: &str) -> Option<f64> {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, _, body) =
            http_get(&self.addr, &format!("/api/v1/query?query={enc}"), None).ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn prometheus_server_reads_a_pods_figures_back() {
    require_root();
    let bridge = Bridge::new().unwrap();
    let pod = Pod::new(&bridge).unwrap();
    let obs = Observer::start(&[]).unwrap();
    let prom = Prometheus::start(&obs.addr).unwrap();
    pod.python(GETPRIORITY, &["21"]).unwrap();
    pod.python(CONNECT, &[&bridge.prefix.add_host(1), "2"])
        .unwrap();
    let q_sys = format!(
        "sum(observer_syscalls_total{{k8s_pod_uid=\"{}\",syscall=\"getpriority\"}})",
        pod.uid
    );
    let q_tcp = format!(
        "sum(observer_tcp_connect_failures_total{{k8s_pod_uid=\"{}\",reason=\"refused\"}})",
        pod.uid
    );
    let q_up = "sum(observer_probe_up)".to_string();
    let deadline = Instant::now() + observer_tests::scaled(Duration::from_secs(60));
    let (mut sys, mut tcp, mut up) = (None, None, None);
    while Instant::now() < deadline {
        sys = prom.query(&q_sys);
        tcp = prom.query(&q_tcp);
        up = prom.query(&q_up);
        if sys == Some(21.0) && tcp == Some(2.0) && up.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(sys, Some(21.0), "syscalls of the pod through Prometheus");
    assert_eq!(
        tcp,
        Some(2.0),
        "refused connects of the pod through Prometheus"
    );
    assert_eq!(
        up,
        Some(12.0),
        "twelve probes up (syscalls, tcp_connections, tcp_retransmits, tcp_bytes, http, http2, redis, postgresql, mysql, memcached, tls, lifecycle)"
    );
    drop(prom);
    obs.stop().unwrap();
}

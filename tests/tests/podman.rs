//! Real containers as workloads: pods made by podman (`podman pod create`, whose infra container
//! holds the network namespace the pod's containers share, like a Kubernetes sandbox), their
//! containers started by runc, observed by the observer on the plain host. The HTTP server is
//! BusyBox's httpd and the client BusyBox's wget (a server and client no other test uses), each
//! in its own podman pod. The observer names both from podman's own metadata (container name,
//! pod name and id) and counts, against what the client did, the HTTP requests on both sides,
//! the TCP connections and the topology edge between the two.
//!
//! Host kernel only (the guests have no container runtime). Run as root by `cargo xtask test`.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use observer_tests::{
    metrics::{sum, Sample},
    observer::Observer,
    random_hex, require_root, scaled, TempDir,
};

const WAIT: Duration = Duration::from_secs(15);

/// The base image that `cargo xtask image` makes (Debian minbase): the containers run the
/// host's static BusyBox, mounted read-only.
const BASE: &str = "localhost/observer-base:bookworm";

/// podman as this machine needs it (see container.rs): runc, cgroupfs, and default ulimits the
/// sandbox grants, also for the pods' infra containers (containers.conf, as `--ulimit` cannot
/// reach them).
struct Podman {
    conf: TempDir,
}

impl Podman {
    fn new() -> Podman {
        let conf = TempDir::new("obs-podman").unwrap();
        conf.write(
            "containers.conf",
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n",
        )
        .unwrap();
        Podman { conf }
    }

    fn cmd(&self) -> Command {
        let mut c = observer_tests::podman::podman();
        c.env("CONTAINERS_CONF", self.conf.join("containers.conf"));
        c
    }

    /// Runs podman and returns its trimmed stdout; panics with its stderr on failure.
    fn run(&self, args: &[&str]) -> String {
        let out = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("podman");
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// A podman pod, removed with its containers when dropped.
struct PodmanPod<'a> {
    podman: &'a Podman,
    name: String,
    id: String,
}

impl<'a> PodmanPod<'a> {
    fn create(podman: &'a Podman, name: String) -> PodmanPod<'a> {
        let id = podman.run(&["pod", "create", "--name", &name]);
        PodmanPod { podman, name, id }
    }

    fn ip(&self) -> String {
        let infra = self.podman.run(&[
            "pod",
            "inspect",
            &self.name,
            "--format",
            "{{.InfraContainerID}}",
        ]);
        self.podman.run(&[
            "inspect",
            &infra,
            "--format",
            "{{.NetworkSettings.IPAddress}}",
        ])
    }
}

impl Drop for PodmanPod<'_> {
    fn drop(&mut self) {
        let _ = self
            .podman
            .cmd()
            .args(["pod", "rm", "-f", "-t", "0", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn edge(s: &[Sample], name: &str, client: &str, server: &str) -> f64 {
    sum(s, name, &[("client", client), ("server", server)])
}

#[test]
fn podman_pods_are_named_from_podmans_metadata_and_counted_exactly() {
    require_root();
    let podman = Podman::new();
    let tag = random_hex(6);
    let server = PodmanPod::create(&podman, format!("obs-{tag}-shop"));
    let client = PodmanPod::create(&podman, format!("obs-{tag}-buyer"));
    let web = format!("obs-{tag}-web");
    let wget = format!("obs-{tag}-wget");

    let obs = Observer::start(&[]).unwrap();

    let www = TempDir::new("obs-www").unwrap();
    www.write("index.html", "ok\n").unwrap();
    podman.run(&[
        "run",
        "-d",
        "--pod",
        &server.name,
        "--name",
        &web,
        "--volume=/bin/busybox:/bin/busybox:ro",
        &format!("--volume={}:/www:ro", www.path().display()),
        BASE,
        "/bin/busybox",
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    ]);
    let ip = server.ip();
    // K pages and E missing ones, each on its own connection (BusyBox wget closes after one);
    // the client waits for the server to listen first (nc -z is not in every BusyBox).
    let (k, e) = (17, 5);
    let script = format!(
        "for i in $(seq 100); do busybox wget -q -O /dev/null http://{ip}:8080/index.html && break; sleep 0.1; done; \
         ok=0; missing=0; \
         for i in $(seq {k}); do busybox wget -q -O /dev/null http://{ip}:8080/index.html && ok=$((ok+1)); done; \
         for i in $(seq {e}); do busybox wget -q -O /dev/null http://{ip}:8080/missing || missing=$((missing+1)); done; \
         echo done $ok $missing; exec busybox sleep 600"
    );
    // The client stays (asleep) until the end, so that its address still names it when the
    // topology is read. The first request of the wait loop answers 200 too: one more page
    // than K.
    podman.run(&[
        "run",
        "-d",
        "--pod",
        &client.name,
        "--name",
        &wget,
        "--volume=/bin/busybox:/bin/busybox:ro",
        BASE,
        "/bin/busybox",
        "sh",
        "-c",
        &script,
    ]);
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    let got = loop {
        let log = podman.run(&["logs", &wget]);
        if let Some(l) = log.lines().find_map(|l| l.strip_prefix("done ")) {
            break l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the client did not finish: {log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(got, format!("{k} {e}"));
    let (pages, total) = ((k + 1) as f64, (k + 1 + e) as f64);

    let server_pod = [("k8s_pod_name", server.name.as_str())];
    let client_pod = [("k8s_pod_name", client.name.as_str())];
    let s = obs
        .scrape_until(WAIT, |s| {
            sum(s, "http_server_request_duration_seconds_count", &server_pod) >= total
                && sum(s, "http_client_request_duration_seconds_count", &client_pod) >= total
                && sum(s, "observer_tcp_connections_closed_total", &client_pod) >= total
                && edge(s, "traces_service_graph_request_total", &wget, &web) >= total
        })
        .unwrap();

    // Named from podman's metadata: pod name and id, container name.
    let srv = |code: &str| {
        sum(
            &s,
            "http_server_request_duration_seconds_count",
            &[
                ("k8s_pod_name", server.name.as_str()),
                ("k8s_pod_uid", server.id.as_str()),
                ("k8s_container_name", web.as_str()),
                ("service_name", web.as_str()),
                ("http_response_status_code", code),
            ],
        )
    };
    assert_eq!(srv("200"), pages);
    assert_eq!(srv("404"), e as f64);
    assert_eq!(
        sum(
            &s,
            "http_server_request_duration_seconds_count",
            &server_pod
        ),
        total
    );
    let cli = |code: &str| {
        sum(
            &s,
            "http_client_request_duration_seconds_count",
            &[
                ("k8s_pod_name", client.name.as_str()),
                ("k8s_pod_uid", client.id.as_str()),
                ("k8s_container_name", wget.as_str()),
                ("http_response_status_code", code),
            ],
        )
    };
    assert_eq!(cli("200"), pages);
    assert_eq!(cli("404"), e as f64);

    // TCP: one connection per request, out of the client's pod into the server's.
    let opened = |pod: &[(&str, &str)], dir: &str| {
        let mut want = pod.to_vec();
        want.push(("direction", dir));
        sum(&s, "observer_tcp_connections_opened_total", &want)
    };
    assert_eq!(opened(&client_pod, "outbound"), total);
    assert_eq!(opened(&server_pod, "inbound"), total);
    assert_eq!(
        sum(&s, "observer_tcp_connections_closed_total", &client_pod),
        total
    );

    // The topology: one edge from the client's container to the server's, every connection
    // and request on it.
    assert_eq!(
        edge(&s, "traces_service_graph_request_total", &wget, &web),
        total
    );
    assert_eq!(
        edge(&s, "observer_tcp_edge_connections_total", &wget, &web),
        total
    );
    assert!(obs.stop().unwrap().success());
}

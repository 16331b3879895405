//! The database settings of the benchmark, pod to pod (the server in one simulated pod, its load
//! generator in another, both observed): Redis under `redis-benchmark -P 1` (one command per
//! round trip, 32 connections, saturated) and PostgreSQL under `pgbench -S` (select-only, 8
//! clients). Each round runs the load without the observer, with only empty syscall hooks (the
//! floor any syscall tracer pays), with the default probes, and with the default probes but the
//! syscall probe, in an order rotated per round; the report gives medians, the throughput ratios,
//! the observer's CPU, and the eBPF time per operation, per program, from a short extra run
//! with kernel.bpf_stats_enabled=1.
//!
//! The `h2` setting runs the same rounds with nginx serving HTTP/2 in cleartext (one worker,
//! a ~600-byte page) to `h2load -c 8 -m 10` (ten concurrent streams per connection), and the
//! `https` setting nginx serving the same page over TLS (a certificate made by `openssl req`)
//! to `wrk -c 8` over HTTPS with keep-alive: the TLS probe's uprobes on both sides' libssl.
//! The `go-https` setting puts a Go HTTPS server (`tests/src/gotls.go`: Go's own `crypto/tls`,
//! built with Debian's Go) in nginx's place: Go's uprobes on the server, libssl's on wrk.

use std::{
    collections::BTreeMap,
    fs,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};

use super::{
    bpf_programs, bpf_stats, check_interrupted, cpu_ticks, median, observer_programs, place::Pods,
    show, start_observer, stop, tail, Guard, SETUPS,
};

/// The throughput the default probes must keep, as a share of the run without the observer
/// (HTTPS: 0.85, each request also stopping at four uprobes).
const TARGET: f64 = 0.90;
const TARGET_HTTPS: f64 = 0.85;
/// The server's address in the pods (see `place.rs`).
const SERVER_IP: &str = "10.233.0.2";
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const H2_PORT: u16 = 8080;
const HTTPS_PORT: u16 = 8443;
const GO_PORT: u16 = 9443;

/// One load run: operations per second and how many operations it made.
struct Run {
    ops_per_sec: f64,
    ops: u64,
}

/// The pod-to-pod workloads of this file.
#[derive(Clone, Copy)]
pub enum Load {
    Redis,
    Postgres,
    /// nginx over HTTP/2 (cleartext) under h2load.
    H2,
    /// nginx over HTTPS (HTTP/1.1 on TLS) under wrk.
    Https,
    /// A Go HTTPS server (Go's `crypto/tls`) under wrk.
    GoHttps,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Redis => "redis",
            Load::Postgres => "postgresql",
            Load::H2 => "h2load",
            Load::Https => "https",
            Load::GoHttps => "go-https",
        }
    }

    fn target(self) -> f64 {
        match self {
            Load::Https | Load::GoHttps => TARGET_HTTPS,
            _ => TARGET,
        }
    }

    fn describe(self, secs: u64) -> String {
        match self {
            Load::Redis => format!(
                "redis-server at {SERVER_IP}:6379, redis-benchmark -P 1 -c 32 -t set,get (about {secs} s)"
            ),
            Load::Postgres => format!(
                "postgres 15 at {SERVER_IP}:5432, pgbench -S -c 8 -j 2 -T {secs} (scale 1)"
            ),
            Load::H2 => format!(
                "nginx (1 worker, HTTP/2 cleartext) at {SERVER_IP}:{H2_PORT}, h2load -c 8 -m 10 -D {secs}"
            ),
            Load::Https => format!(
                "nginx (1 worker, TLS 1.3, RSA 2048) at {SERVER_IP}:{HTTPS_PORT}, wrk -t1 -c8 -d{secs}s over HTTPS (keep-alive)"
            ),
            Load::GoHttps => format!(
                "a Go HTTPS server (crypto/tls, TLS 1.3, RSA 2048) at {SERVER_IP}:{GO_PORT}, wrk -t1 -c8 -d{secs}s over HTTPS (keep-alive)"
            ),
        }
    }

    /// Starts the server in pod 0 and prepares its data; its processes die with the pods.
    fn start(self, pods: &Pods, dir: &std::path::Path) -> Result<()> {
        match self {
            Load::H2 => nginx(
                pods,
                dir,
                &format!(
                    "listen {SERVER_IP}:{H2_PORT} http2;\n    http2_max_concurrent_streams 128;"
                ),
                H2_PORT,
            ),
            Load::GoHttps => {
                let (key, cert) = certificate(dir)?;
                let src = dir.join("gotls-src");
                fs::create_dir_all(&src)?;
                fs::copy(
                    concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/src/gotls.go"),
                    src.join("main.go"),
                )?;
                fs::write(src.join("go.mod"), "module gotls\n\ngo 1.19\n")?;
                let program = dir.join("gotls");
                sh(&format!(
                    "cd {} && CGO_ENABLED=0 GOCACHE=/var/tmp/observer-test-go-cache GOPATH=/var/tmp/observer-test-gopath GOFLAGS=-buildvcs=false go build -o {} .",
                    src.display(),
                    program.display()
                ))
                .context("building the Go server (is golang-go installed?)")?;
                let (program, cert, key) = (
                    program.display().to_string(),
                    cert.display().to_string(),
                    key.display().to_string(),
                );
                let log = dir.join("go.log").display().to_string();
                let addr = format!("{SERVER_IP}:{GO_PORT}");
                pods.command(0, &[&program, "serve", &addr, &cert, &key, &log])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting the Go server")?;
                wait_port(pods, GO_PORT)
            }
            Load::Https => {
                let (key, cert) = certificate(dir)?;
                nginx(
                    pods,
                    dir,
                    &format!(
                        "listen {SERVER_IP}:{HTTPS_PORT} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};",
                        cert.display(),
                        key.display()
                    ),
                    HTTPS_PORT,
                )
            }
            Load::Redis => {
                pods.command(
                    0,
                    &[
                        "redis-server",
                        "--bind",
                        SERVER_IP,
                        "--port",
                        "6379",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--protected-mode",
                        "no",
                    ],
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .context("starting redis-server (is it installed?)")?;
                wait_port(pods, 6379)
            }
            Load::Postgres => {
                let data = dir.join("pgdata");
                let data = data.display().to_string();
                sh(&format!(
                    "mkdir -p {data} && chown -R postgres:postgres {}",
                    dir.display()
                ))?;
                sh(&format!(
                    "setpriv --reuid postgres --regid postgres --init-groups {PG_BIN}/initdb -D {data} --auth=trust -U postgres >/dev/null && echo 'host all all 0.0.0.0/0 trust' >> {data}/pg_hba.conf"
                ))?;
                let postgres = format!("{PG_BIN}/postgres");
                let sockets = format!("unix_socket_directories={data}");
                pods.command(
                    0,
                    &[
                        "setpriv",
                        "--reuid",
                        "postgres",
                        "--regid",
                        "postgres",
                        "--init-groups",
                        &postgres,
                        "-D",
                        &data,
                        "-c",
                        "listen_addresses=*",
                        "-c",
                        &sockets,
                        "-c",
                        "ssl=off",
                        "-c",
                        "max_connections=50",
                    ],
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(dir.join("postgres.log"))?)
                .spawn()
                .context("starting postgres (is postgresql installed?)")?;
                wait_port(pods, 5432)?;
                client(
                    pods,
                    &[
                        "pgbench", "-h", SERVER_IP, "-U", "postgres", "-i", "-s", "1", "-q",
                        "postgres",
                    ],
                )?;
                Ok(())
            }
        }
    }

    /// One load run of about `secs` seconds.
    fn load(self, pods: &Pods, secs: u64) -> Result<Run> {
        match self {
            Load::H2 => {
                let url = format!("http://{SERVER_IP}:{H2_PORT}/");
                let d = secs.to_string();
                let text = client(pods, &["h2load", "-c", "8", "-m", "10", "-D", &d, &url])?;
                // "finished in 10.00s, 31234.50 req/s, ..." and "requests: N total, N started,
                // N done, N succeeded, 0 failed, ...".
                let rate = text
                    .lines()
                    .find_map(|l| l.strip_prefix("finished in "))
                    .and_then(|l| l.split(", ").nth(1)?.strip_suffix(" req/s")?.parse().ok())
                    .with_context(|| format!("no req/s in h2load's output:\n{text}"))?;
                let ok = text
                    .lines()
                    .find_map(|l| l.strip_prefix("requests: "))
                    .and_then(|l| {
                        l.split(", ")
                            .find_map(|f| f.strip_suffix(" succeeded"))?
                            .parse()
                            .ok()
                    })
                    .with_context(|| format!("no request count in h2load's output:\n{text}"))?;
                Ok(Run {
                    ops_per_sec: rate,
                    ops: ok,
                })
            }
            Load::Https | Load::GoHttps => {
                let url = match self {
                    Load::GoHttps => format!("https://{SERVER_IP}:{GO_PORT}/s/200"),
                    _ => format!("https://{SERVER_IP}:{HTTPS_PORT}/"),
                };
                let d = format!("-d{secs}s");
                let text = client(pods, &["wrk", "-t1", "-c8", &d, &url])?;
                let (rps, requests) = super::parse_wrk(&text)?;
                Ok(Run {
                    ops_per_sec: rps,
                    ops: requests,
                })
            }
            Load::Redis => {
                // -n per test, sized for about `secs` seconds at this machine's rate (two tests).
                let n = (secs * 25_000).to_string();
                let text = client(
                    pods,
                    &[
                        "redis-benchmark",
                        "-h",
                        SERVER_IP,
                        "-p",
                        "6379",
                        "-c",
                        "32",
                        "-P",
                        "1",
                        "-n",
                        &n,
                        "-t",
                        "set,get",
                        "--csv",
                    ],
                )?;
                // "SET","71428.57",... per test: the time of both is the sum of n / rate.
                let rates: Vec<f64> = text
                    .lines()
                    .filter(|l| l.starts_with("\"SET\"") || l.starts_with("\"GET\""))
                    .filter_map(|l| l.split(',').nth(1)?.trim_matches('"').parse().ok())
                    .collect();
                ensure!(rates.len() == 2, "no SET and GET rates in:\n{text}");
                let n: u64 = n.parse()?;
                let time: f64 = rates.iter().map(|r| n as f64 / r).sum();
                Ok(Run {
                    ops_per_sec: 2.0 * n as f64 / time,
                    ops: 2 * n,
                })
            }
            Load::Postgres => {
                let t = secs.to_string();
                let text = client(
                    pods,
                    &[
                        "pgbench", "-h", SERVER_IP, "-U", "postgres", "-S", "-c", "8", "-j", "2",
                        "-T", &t, "postgres",
                    ],
                )?;
                let tps = text
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("tps = "))
                    .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                    .with_context(|| format!("no tps in pgbench output:\n{text}"))?;
                let ops = text
                    .lines()
                    .find_map(|l| {
                        l.trim()
                            .strip_prefix("number of transactions actually processed: ")
                    })
                    .and_then(|v| v.split('/').next()?.trim().parse::<u64>().ok())
                    .with_context(|| format!("no transaction count in:\n{text}"))?;
                // -S: one SELECT per transaction.
                Ok(Run {
                    ops_per_sec: tps,
                    ops,
                })
            }
        }
    }
}

/// Figures of one run with the observer.
#[derive(Default)]
struct Sample {
    ops_per_sec: f64,
    cpu_pct: Option<f64>,
    /// eBPF nanoseconds per operation, all the observer's programs together.
    bpf_ns_per_op: Option<f64>,
    /// The same per program name, with its runs per operation.
    bpf_per_prog: BTreeMap<String, (f64, f64)>,
}

/// What each round runs: a name and the observer's `--probes` (none: no observer).
const DB_SETUPS: [(&str, Option<&str>); 4] = [
    ("none", None),
    ("empty-hooks", Some("empty-hooks")),
    ("observer", None),
    (
        "observer without syscalls",
        Some("tcp,http,http2,redis,postgresql,mysql,memcached,tls,lifecycle"),
    ),
];
const NONE: usize = 0;
const DEFAULT: usize = 2;

/// Runs the settings `loads`: `rounds` rounds of each, `secs` seconds per run.
pub fn run(
    g: &mut Guard,
    observer: &std::path::Path,
    loads: &[Load],
    rounds: usize,
    secs: u64,
) -> Result<()> {
    let default = SETUPS[super::OBSERVER].1.context("default probes")?;
    let probes = |i: usize| {
        if i == DEFAULT {
            Some(default)
        } else {
            DB_SETUPS[i].1
        }
    };
    for &db in loads {
        let pods = Pods::new()?;
        let dir = g.dir.join(db.name());
        fs::create_dir_all(&dir)?;
        db.start(&pods, &dir)?;
        println!(
            "\nbench [{}]: {}, {rounds} rounds",
            db.name(),
            db.describe(secs)
        );
        db.load(&pods, 2).context("warm-up run")?;
        let mut samples: Vec<Vec<Sample>> = DB_SETUPS.iter().map(|_| Vec::new()).collect();
        for r in 0..rounds {
            let mut line = Vec::new();
            for k in 0..DB_SETUPS.len() {
                let i = (k + r) % DB_SETUPS.len();
                check_interrupted()?;
                let s = match probes(i) {
                    Some(p) => observed_run(g, observer, p, db, &pods, secs)
                        .with_context(|| format!("round {}, {}", r + 1, DB_SETUPS[i].0))?,
                    None => Sample {
                        ops_per_sec: db.load(&pods, secs)?.ops_per_sec,
                        ..Sample::default()
                    },
                };
                line.push(format!(
                    "{} {:.0} ops/s{}",
                    DB_SETUPS[i].0,
                    s.ops_per_sec,
                    s.cpu_pct
                        .map(|c| format!(" (cpu {}%)", show(c, 2)))
                        .unwrap_or_default()
                ));
                samples[i].push(s);
            }
            println!("round {}/{rounds}: {}", r + 1, line.join(" | "));
        }
        let base = median(samples[NONE].iter().map(|s| s.ops_per_sec).collect());
        let mut parts = Vec::new();
        for (i, (name, _)) in DB_SETUPS.iter().enumerate().skip(1) {
            let v = &samples[i];
            let obs = median(v.iter().map(|s| s.ops_per_sec).collect());
            let paired = median(
                (samples[NONE].iter().zip(v))
                    .map(|(n, s)| s.ops_per_sec / n.ops_per_sec)
                    .collect(),
            );
            let cpu = median(v.iter().filter_map(|s| s.cpu_pct).collect());
            let ns = median(v.iter().filter_map(|s| s.bpf_ns_per_op).collect());
            parts.push(format!(
                "{name} {obs:.0} ops/s: ratio {:.3} (paired {paired:.3}), observer CPU {}%, eBPF {} ns per operation",
                obs / base,
                show(cpu, 2),
                show(ns, 0)
            ));
        }
        println!(
            "bench [{}]: none {base:.0} ops/s; {} (target for the default probes >= {})",
            db.name(),
            parts.join("; "),
            db.target()
        );
        let mut per_prog: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for s in &samples[DEFAULT] {
            for (p, &(ns, runs)) in &s.bpf_per_prog {
                let e = per_prog.entry(p).or_default();
                e.0.push(ns);
                e.1.push(runs);
            }
        }
        let progs: Vec<String> = (per_prog.into_iter())
            .map(|(p, (ns, runs))| {
                format!(
                    "{p} {} ({} runs)",
                    show(median(ns), 0),
                    show(median(runs), 1)
                )
            })
            .collect();
        println!(
            "bench [{}]: eBPF ns per operation with the default probes, per program (runs per operation): {}",
            db.name(),
            progs.join(", ")
        );
        drop(pods);
    }
    Ok(())
}

/// One run under the observer with `probes`, then a short one with BPF stats on.
fn observed_run(
    g: &mut Guard,
    bin: &std::path::Path,
    probes: &str,
    db: Load,
    pods: &Pods,
    secs: u64,
) -> Result<Sample> {
    let log = g.dir.join(format!("observer-{}.log", db.name()));
    let (pid, _addr) = start_observer(g, bin, probes, &log)?;
    thread::sleep(Duration::from_secs(1));
    let cpu_before = cpu_ticks(pid)?;
    let t0 = Instant::now();
    let run = db.load(pods, secs)?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid)? - cpu_before) as f64 / super::CLOCK_TICKS;

    let own = observer_programs(pid)?;
    let by_name = |v: &[super::Prog]| -> BTreeMap<String, (u64, u64)> {
        let mut m: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for p in v.iter().filter(|p| own.contains(&p.id)) {
            let e = m.entry(p.name.clone()).or_default();
            e.0 += p.run_time_ns;
            e.1 += p.run_cnt;
        }
        m
    };
    let before = by_name(&bpf_programs()?);
    bpf_stats(true)?;
    let stats_run = db.load(pods, secs.min(3));
    bpf_stats(false)?;
    let stats_run = stats_run?;
    let after = by_name(&bpf_programs()?);

    let status = stop(g.observer.take().context("observer gone")?)?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    ensure!(
        status.success(),
        "observer exited with {status}:\n{}",
        tail(&text)
    );
    let ops = stats_run.ops.max(1) as f64;
    let bpf_per_prog: BTreeMap<String, (f64, f64)> = (after.iter())
        .map(|(p, &(ns, n))| {
            let (b_ns, b_n) = before.get(p).copied().unwrap_or((0, 0));
            let ops_ns = ns.saturating_sub(b_ns) as f64 / ops;
            (p.clone(), (ops_ns, n.saturating_sub(b_n) as f64 / ops))
        })
        .filter(|(_, (ns, _))| *ns > 0.0)
        .collect();
    Ok(Sample {
        ops_per_sec: run.ops_per_sec,
        cpu_pct: Some(100.0 * cpu / wall),
        bpf_ns_per_op: Some(bpf_per_prog.values().map(|v| v.0).sum()),
        bpf_per_prog,
    })
}

/// Runs a load generator in the client pod (pod 1) to its end; its output, or its failure
/// with what it printed.
fn client(pods: &Pods, args: &[&str]) -> Result<String> {
    let out = pods
        .command(1, args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} (is it installed?)", args[0]))?;
    check_interrupted()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{}: {}{text}",
        args[0],
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text)
}

/// Starts nginx (one worker, no access log) in pod 0 serving a ~600-byte page on the server
/// block's `listen` lines, and waits for `port`.
fn nginx(pods: &Pods, dir: &std::path::Path, listen: &str, port: u16) -> Result<()> {
    let html = dir.join("html");
    fs::create_dir_all(&html)?;
    let p = "<p>A small static page, as many sites serve: about six hundred bytes in all.</p>\n";
    fs::write(
        html.join("index.html"),
        format!(
            "<!DOCTYPE html>\n<html><head><title>bench</title></head><body>\n{}</body></html>\n",
            p.repeat(7)
        ),
    )?;
    let conf = dir.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n  server {{\n    {listen}\n    keepalive_requests 1000000;\n    root {d}/html;\n  }}\n}}\n",
            d = dir.display()
        ),
    )?;
    let conf = conf.display().to_string();
    pods.command(0, &["nginx", "-c", &conf])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting nginx (is it installed?)")?;
    wait_port(pods, port)
}

/// A self-signed RSA 2048 certificate in `dir`, made by `openssl req`: (key, certificate).
fn certificate(dir: &std::path::Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    sh(&format!(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bench -keyout {} -out {} 2>/dev/null",
        key.display(),
        cert.display()
    ))
    .context("making the certificate (is openssl installed?)")?;
    Ok((key, cert))
}

/// Waits, 30 s at most, until the server's port answers from the client pod.
fn wait_port(pods: &Pods, port: u16) -> Result<()> {
    let probe = format!("exec 3<>/dev/tcp/{SERVER_IP}/{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        check_interrupted()?;
        let up = pods
            .command(1, &["bash", "-c", &probe])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if up {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "port {port} not up in the server pod within 30 s"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn sh(cmd: &str) -> Result<()> {
    let out = Command::new("sh").args(["-c", cmd]).output()?;
    ensure!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

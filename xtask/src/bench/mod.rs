//! `cargo xtask bench`: what the observer costs a busy server.
//!
//! Two settings (`place.rs`): nginx (one worker) pinned on loopback serving a ~600-byte page with
//! its access log on, and pod to pod: nginx `return 200 "ok\n"` in one simulated pod, the load
//! generator in another, both observed, so both ends of every request are captured. wrk loads
//! it under several setups: no observer, the observer with only empty syscall hooks (the floor
//! any syscall tracer pays), the observer with its default probes, with syscalls and TCP only,
//! and with each probe alone. Each round runs every setup once, in an order rotated per round; the report
//! gives medians. While the observer runs, one scrape of /metrics lands mid-run, as Prometheus
//! would. The run time of each program the observer holds (found from its file descriptors,
//! whatever the program's name) comes from a short extra wrk run with
//! kernel.bpf_stats_enabled=1, kept apart because the stats cost every program run two clock
//! reads, which would bias the throughput. `db.rs` adds the database settings: Redis under
//! `redis-benchmark -P 1` and PostgreSQL under `pgbench -S`, pod to pod.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

mod db;
mod place;

use place::{Place, Pods};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Rounds; each runs every setup once, in an order rotated per round.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Length of each wrk run, in seconds.
    #[arg(long, default_value_t = 8)]
    pub duration: u64,
    /// wrk connections (wrk runs one thread).
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
    /// Fixed-rate phase: requests per second (hey, 50 workers); 0 skips the phase.
    #[arg(long, default_value_t = 10_000)]
    pub fixed_rate: u32,
    /// Fixed-rate phase: seconds of each run (one without, one with the observer).
    #[arg(long, default_value_t = 60)]
    pub fixed_secs: u64,
    /// Second fixed rate (pod to pod), or the machine's saturation if lower; 0 skips it.
    #[arg(long, default_value_t = 50_000)]
    pub high_rate: u32,
    /// Settings: pinned (loopback, one CPU each), pods (pod to pod), both of these, db (Redis
    /// and PostgreSQL, pod to pod), h2 (nginx over HTTP/2 under h2load, pod to pod), https
    /// (nginx over TLS under wrk, pod to pod), go-https (a Go HTTPS server under wrk, pod to
    /// pod), or all.
    #[arg(long, default_value = "all", value_parser = ["pinned", "pods", "both", "db", "h2", "https", "go-https", "all"])]
    pub setting: String,
    /// Rounds of each database and h2 setting (each setup of the round once).
    #[arg(long, default_value_t = 5)]
    pub db_rounds: usize,
    /// Length of each database and h2 run, in seconds.
    #[arg(long, default_value_t = 8)]
    pub db_duration: u64,
}

const TARGET: f64 = 0.85;
const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// Length of the wrk run with BPF stats on, in seconds at most.
const STATS_SECS: u64 = 3;
/// USER_HZ, the unit of utime and stime in /proc/<pid>/stat (100 on every usual architecture).
const CLOCK_TICKS: f64 = 100.0;

/// Names and the observer's `--probes` (none: no observer); indexed by the constants below.
const SETUPS: [(&str, Option<&str>); NSETUPS] = [
    ("none", None),
    ("empty-hooks", Some("empty-hooks")),
    (
        "observer",
        Some("syscalls,tcp,http,http2,redis,postgresql,mysql,memcached,tls,lifecycle"),
    ),
    // The foundation's own scope (syscalls and TCP, without HTTP).
    ("syscalls,tcp", Some("syscalls,tcp")),
    // Each probe alone, for the cost per probe.
    ("syscalls", Some("syscalls")),
    ("tcp", Some("tcp")),
    ("http", Some("http")),
    ("lifecycle", Some("lifecycle")),
];
const NSETUPS: usize = 8;
const NONE: usize = 0;
const EMPTY: usize = 1;
const OBSERVER: usize = 2;
const SYSCALLS: usize = 4;
const HTTP: usize = 6;

/// One wrk run under one setup; the observer figures cover the wrk run only.
#[derive(Default)]
struct Sample {
    rps: f64,
    cpu_pct: Option<f64>,
    rss_mib: Option<f64>,
    /// Program name → (ns per run, runs per request).
    bpf: BTreeMap<String, (f64, f64)>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

extern "C" fn on_signal(_: i32) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

// std links libc already; these two calls do not justify a dependency.
extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn kill(pid: i32, sig: i32) -> i32;
}

fn send_signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { kill(child.id() as i32, sig) };
}

fn check_interrupted() -> Result<()> {
    ensure!(!INTERRUPTED.load(Ordering::SeqCst), "interrupted");
    Ok(())
}

/// What to undo at the end, on error or on Ctrl-C: children to stop, the sysctl to restore and
/// the temporary directory.
#[derive(Default)]
struct Guard {
    dir: PathBuf,
    nginx: Option<Child>,
    observer: Option<Child>,
    stats_before: Option<String>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for child in self.observer.take().into_iter().chain(self.nginx.take()) {
            let _ = stop(child);
        }
        if let Some(v) = &self.stats_before {
            let _ = fs::write(STATS_SYSCTL, v);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// SIGTERM, then SIGKILL if the child is still there after 10 s.
fn stop(mut child: Child) -> Result<ExitStatus> {
    send_signal(&child, SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(50));
    }
    send_signal(&child, SIGKILL);
    Ok(child.wait()?)
}

pub fn run(args: &BenchArgs) -> Result<()> {
    ensure!(
        args.rounds >= 1 && args.duration >= 1 && args.connections >= 1,
        "--rounds, --duration and --connections must be at least 1"
    );
    ensure!(
        proc_status("self", "Uid", 1)? == 0,
        "cargo xtask bench must run as root (it loads eBPF programs and sets \
         kernel.bpf_stats_enabled); try: sudo -E cargo xtask bench"
    );
    crate::install::install(crate::install::Scope::Bench)?;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "observer"])
        .current_dir(root)
        .status()
        .context("running cargo build")?;
    ensure!(status.success(), "cargo build --release -p observer failed");
    check_interrupted()?;
    let observer = root.join("target/release/observer");

    let mut g = Guard::default();
    g.dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
    fs::create_dir_all(g.dir.join("html"))?;
    let before = fs::read_to_string(STATS_SYSCTL).context(STATS_SYSCTL)?;
    g.stats_before = Some(before.trim().to_string());
    bpf_stats(false)?;

    let places: Vec<fn() -> Result<Place>> = match args.setting.as_str() {
        "pinned" => vec![pinned],
        "pods" => vec![pods],
        "db" | "h2" | "https" | "go-https" => vec![],
        _ => vec![pinned, pods],
    };
    for make in places {
        let place = make()?;
        start_nginx(&mut g, &place)?;
        let (c, d, n) = (args.connections, args.duration, args.rounds);
        println!(
            "\nbench [{}]: nginx (1 worker) at {}, wrk -t1 -c{c} -d{d}s, {n} rounds",
            place.name(),
            place.url()
        );
        wrk(&place, c, 2).context("warm-up run")?;
        let mut rounds = Vec::new();
        for r in 0..n {
            let mut samples: [Sample; NSETUPS] = Default::default();
            let mut line = Vec::new();
            for i in (0..SETUPS.len()).map(|k| (k + r) % SETUPS.len()) {
                check_interrupted()?;
                let s = run_setup(&mut g, &observer, i, args, &place)
                    .with_context(|| format!("round {}, {}", r + 1, SETUPS[i].0))?;
                let extra = match (s.cpu_pct, s.rss_mib) {
                    (Some(c), Some(m)) => format!(" (cpu {c:.2}%, rss {m:.1} MiB)"),
                    _ => String::new(),
                };
                line.push(format!("{} {:.0} req/s{extra}", SETUPS[i].0, s.rps));
                samples[i] = s;
            }
            println!("round {}/{n}: {}", r + 1, line.join(" | "));
            rounds.push(samples);
        }
        report(place.name(), &rounds);
        if args.fixed_rate > 0 {
            fixed_rate(&mut g, &observer, &place, args.fixed_rate, args.fixed_secs)?;
            if args.high_rate > 0 && matches!(place, Place::Pods(_)) {
                fixed_rate(&mut g, &observer, &place, args.high_rate, args.fixed_secs)?;
            }
        }
        if let Some(n) = g.nginx.take() {
            stop(n)?;
        }
    }
    let loads: &[db::Load] = match args.setting.as_str() {
        "db" => &[db::Load::Redis, db::Load::Postgres],
        "h2" => &[db::Load::H2],
        "https" => &[db::Load::Https],
        "go-https" => &[db::Load::GoHttps],
        "all" => &[
            db::Load::Redis,
            db::Load::Postgres,
            db::Load::H2,
            db::Load::Https,
            db::Load::GoHttps,
        ],
        _ => &[],
    };
    if !loads.is_empty() {
        ensure!(
            args.db_rounds >= 1 && args.db_duration >= 1,
            "--db-rounds and --db-duration must be at least 1"
        );
        db::run(&mut g, &observer, loads, args.db_rounds, args.db_duration)?;
    }
    Ok(())
}

fn pinned() -> Result<Place> {
    Ok(Place::Pinned { port: free_port()? })
}

fn pods() -> Result<Place> {
    Ok(Place::Pods(Pods::new()?))
}

/// How many results hey keeps for its report (`maxResult` in its source).
const HEY_LISTED: u64 = 1_000_000;

/// What one hey run at a fixed rate gave.
struct HeyRun {
    responses: u64,
    p99_s: f64,
    rps: f64,
}

/// Runs hey at `rate` requests/s (50 workers) for `secs`, where the setting runs its client.
fn hey(place: &Place, rate: u32, secs: u64) -> Result<HeyRun> {
    let workers = 50u32;
    let per_worker = format!("{}", (rate as f64 / workers as f64).max(1.0));
    // A request count, not a duration: hey then sends exactly that many (a multiple of its
    // workers), which is the ground truth; its status table keeps only the first million.
    let total = (rate as u64 * secs).div_ceil(workers as u64) * workers as u64;
    let (n, url) = (total.to_string(), place.url());
    let out = place
        .client(&[
            "hey",
            "-n",
            &n,
            "-c",
            &workers.to_string(),
            "-q",
            &per_worker,
            &url,
        ])
        .stdin(Stdio::null())
        .output()
        .context("running hey (is it installed?)")?;
    check_interrupted()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "hey failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rps = (text.lines())
        .find_map(|l| {
            l.trim()
                .strip_prefix("Requests/sec:")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .with_context(|| format!("no Requests/sec in hey output:\n{text}"))?;
    let p99_s = (text.lines())
        .find_map(|l| {
            l.trim()
                .strip_prefix("99% in ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("no 99% latency in hey output:\n{text}"))?;
    // "  [200]\t600000 responses"
    let listed: u64 = (text.lines())
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix('[')?;
            let (_, n) = rest.split_once(']')?;
            n.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    ensure!(
        !text.contains("Error distribution"),
        "hey saw errors:\n{text}"
    );
    ensure!(
        listed == total.min(HEY_LISTED),
        "hey lists {listed} responses of the {total} it sent:\n{text}"
    );
    Ok(HeyRun {
        responses: total,
        p99_s,
        rps,
    })
}

/// Sum of the samples of `family` whose labels contain every `want` pair.
fn metric_sum(text: &str, family: &str, want: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{'))
        .filter(|l| want.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn get_metrics(addr: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("scraping {addr}"))?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    Ok(reply)
}

/// A fixed request rate, without and with the observer (its default probes): the observer's
/// CPU, the p99 latency it adds, records lost, and its request counts against hey's on both
/// sides (exact, or short by exactly what the loss counters say).
fn fixed_rate(g: &mut Guard, bin: &Path, place: &Place, rate: u32, secs: u64) -> Result<()> {
    println!(
        "\nbench [{}]: fixed rate {rate} req/s for {secs} s (hey, 50 workers), without then with the observer",
        place.name()
    );
    fs::File::create(g.dir.join("access.log"))?;
    let base = hey(place, rate, secs).context("fixed rate, no observer")?;
    println!(
        "fixed none: {:.0} req/s, p99 {:.2} ms, {} responses",
        base.rps,
        base.p99_s * 1e3,
        base.responses
    );
    fs::File::create(g.dir.join("access.log"))?;
    let log = g.dir.join("observer-fixed.log");
    let (pid, addr) = start_observer(g, bin, SETUPS[OBSERVER].1.expect("probes"), &log)?;
    thread::sleep(Duration::from_secs(1));
    let cpu_before = cpu_ticks(pid)?;
    let t0 = Instant::now();
    let with = hey(place, rate, secs).context("fixed rate, observer")?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = 100.0 * (cpu_ticks(pid)? - cpu_before) as f64 / CLOCK_TICKS / wall;
    // Let the last requests reach the figures (drain period and the end of responses).
    thread::sleep(Duration::from_secs(2));
    let text = get_metrics(&addr)?;
    let rss = proc_status(pid, "VmHWM", 0)? as f64 / 1024.0;
    let _ = stop(g.observer.take().context("observer gone")?)?;
    let server = metric_sum(
        &text,
        "http_server_request_duration_seconds_count",
        &["http_route=\"/\"", "http_response_status_code=\"200\""],
    );
    let client = metric_sum(
        &text,
        "http_client_request_duration_seconds_count",
        &["http_response_status_code=\"200\""],
    );
    let lost = metric_sum(&text, "observer_events_lost_total", &["source=\"l7"]);
    println!(
        "fixed observer: {:.0} req/s, p99 {:.2} ms, {} responses",
        with.rps,
        with.p99_s * 1e3,
        with.responses
    );
    println!("\nfixed-rate figure                 value   target");
    println!("observer CPU, % of one core     {cpu:>7.2}   <= 3");
    println!("observer peak RSS, MiB          {rss:>7.1}");
    println!(
        "p99 with / without              {:>7.2}   <= 1.05  ({:.2} ms / {:.2} ms)",
        with.p99_s / base.p99_s,
        with.p99_s * 1e3,
        base.p99_s * 1e3
    );
    println!("L7 records lost                 {lost:>7.0}   0");
    println!(
        "server requests seen / hey's    {server:>7.0} / {}  (equal, or short by the records lost)",
        with.responses
    );
    println!(
        "client requests seen / hey's    {client:>7.0} / {}  (equal, or short by the records lost)",
        with.responses
    );
    Ok(())
}

/// One wrk run under setup `i`, then, when the observer runs, a short one with BPF stats on.
fn run_setup(
    g: &mut Guard,
    bin: &Path,
    i: usize,
    args: &BenchArgs,
    place: &Place,
) -> Result<Sample> {
    // Keep the access log from filling the disk; nginx appends, so truncating is safe.
    fs::File::create(g.dir.join("access.log"))?;
    let (c, secs) = (args.connections, args.duration);
    let (name, Some(probes)) = SETUPS[i] else {
        let (rps, _) = wrk(place, c, secs)?;
        return Ok(Sample {
            rps,
            ..Default::default()
        });
    };
    let log = g.dir.join(format!("observer-{name}.log"));
    let (pid, addr) = start_observer(g, bin, probes, &log)?;
    thread::sleep(Duration::from_secs(1));

    let cpu_before = cpu_ticks(pid)?;
    let t0 = Instant::now();
    let scrape = thread::spawn(move || {
        thread::sleep(Duration::from_millis(secs * 500));
        scrape(&addr)
    });
    let (rps, _) = wrk(place, c, secs)?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid)? - cpu_before) as f64 / CLOCK_TICKS;
    let rss_kib = proc_status(pid, "VmHWM", 0)?;
    scrape.join().expect("scrape thread")?;

    // Every program the observer holds, whatever its name (other programs, ours loaded by
    // another process included, are left out).
    let own = observer_programs(pid)?;
    let ours = |p: &Prog| own.contains(&p.id);
    let progs_before: Vec<Prog> = bpf_programs()?.into_iter().filter(ours).collect();
    bpf_stats(true)?;
    let requests = wrk(place, c, secs.min(STATS_SECS));
    bpf_stats(false)?;
    let (_, requests) = requests?;
    let progs_after: Vec<Prog> = bpf_programs()?.into_iter().filter(ours).collect();

    let status = stop(g.observer.take().context("observer gone")?)?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    ensure!(
        status.success(),
        "observer exited with {status}:\n{}",
        tail(&text)
    );
    for l in text.lines().filter(|l| l.contains("probe down")) {
        eprintln!("bench: warning: {name}: {l}");
    }
    ensure!(!progs_after.is_empty(), "no observer program in bpftool");

    let mut bpf: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for p in &progs_after {
        let b = progs_before.iter().find(|b| b.id == p.id);
        let e = bpf.entry(p.name.clone()).or_default();
        e.0 += p.run_time_ns - b.map_or(0, |b| b.run_time_ns);
        e.1 += p.run_cnt - b.map_or(0, |b| b.run_cnt);
    }
    let per_run = |(ns, n): (u64, u64)| (ns as f64 / n.max(1) as f64, n as f64 / requests as f64);
    Ok(Sample {
        rps,
        cpu_pct: Some(100.0 * cpu / wall),
        rss_mib: Some(rss_kib as f64 / 1024.0),
        bpf: bpf.into_iter().map(|(n, v)| (n, per_run(v))).collect(),
    })
}

fn bpf_stats(on: bool) -> Result<()> {
    let v = if on { "1" } else { "0" };
    fs::write(STATS_SYSCTL, v).with_context(|| format!("setting kernel.bpf_stats_enabled={v}"))
}

/// GET /metrics, as Prometheus would.
fn scrape(addr: &str) -> Result<()> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("scraping {addr}"))?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let head = reply.lines().next().unwrap_or_default();
    ensure!(head.contains(" 200 "), "scraping {addr}: {head}");
    Ok(())
}

fn start_nginx(g: &mut Guard, place: &Place) -> Result<()> {
    let p = "<p>A small static page, as many sites serve: about six hundred bytes in all.</p>\n";
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>bench</title></head><body>\n{}</body></html>\n",
        p.repeat(7)
    );
    fs::write(g.dir.join("html/index.html"), body)?;
    fs::write(g.dir.join("access.log"), "")?;
    let err = g.dir.join("error.log");
    let nginx = g.nginx.insert(place::spawn_nginx(place, &g.dir)?);
    let log = || tail(&fs::read_to_string(&err).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !place.server_up() {
        check_interrupted()?;
        if let Some(status) = nginx.try_wait()? {
            bail!("nginx exited with {status}:\n{}", log());
        }
        ensure!(
            Instant::now() < deadline,
            "nginx did not listen within 10 s:\n{}",
            log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Starts the observer (stderr to `log`) and waits, 60 s at most, for its "serving" line; a
/// thread keeps draining its stdout. Returns its pid and metrics address.
fn start_observer(g: &mut Guard, bin: &Path, probes: &str, log: &Path) -> Result<(u32, String)> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let child = Command::new(bin)
        .args(["--metrics-addr", &addr, "--probes", probes])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let child = g.observer.insert(child);
    let stdout = child.stdout.take().context("observer stdout")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let text = || tail(&fs::read_to_string(log).unwrap_or_default());
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        check_interrupted()?;
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains("observer: serving") => return Ok((child.id(), addr)),
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let status = child.wait()?;
                bail!("observer exited ({status}) before serving:\n{}", text())
            }
        }
        ensure!(Instant::now() < end, "observer not up in 60 s:\n{}", text());
    }
}

/// Runs wrk where the setting runs its client; returns requests/s and the number of requests.
fn wrk(place: &Place, connections: u32, secs: u64) -> Result<(f64, u64)> {
    let (c, d, url) = (
        format!("-c{connections}"),
        format!("-d{secs}s"),
        place.url(),
    );
    let out = place
        .client(&["wrk", "-t1", &c, &d, "--latency", &url])
        .stdin(Stdio::null())
        .output()
        .context("running wrk (is it installed?)")?;
    check_interrupted()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "wrk failed: {err}{text}");
    let (rps, requests) = parse_wrk(&text)?;
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("bench: warning: wrk reported errors:\n{text}");
    }
    Ok((rps, requests))
}

/// wrk's requests/s and request count from its report.
fn parse_wrk(text: &str) -> Result<(f64, u64)> {
    let rps = (text.lines())
        .filter_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .find_map(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let requests = (text.lines())
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .with_context(|| format!("no request count in wrk output:\n{text}"))?;
    ensure!(requests > 0, "wrk made no request:\n{text}");
    Ok((rps, requests))
}

struct Prog {
    id: u32,
    name: String,
    run_time_ns: u64,
    run_cnt: u64,
}

/// Loaded programs from `bpftool prog show`, whose first line per program reads
/// `ID: TYPE  name NAME  tag … [run_time_ns N run_cnt M]` (the counters only when non-zero).
fn bpf_programs() -> Result<Vec<Prog>> {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .context("running bpftool")?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "bpftool prog show: {err}");
    let text = String::from_utf8_lossy(&out.stdout);
    let prog = |line: &str| {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |key| Some(*words.get(words.iter().position(|w| *w == key)? + 1)?);
        let num = |key| after(key).and_then(|v| v.parse().ok()).unwrap_or(0);
        Some(Prog {
            id: words.first()?.strip_suffix(':')?.parse().ok()?,
            name: after("name")?.to_string(),
            run_time_ns: num("run_time_ns"),
            run_cnt: num("run_cnt"),
        })
    };
    Ok(text.lines().filter_map(prog).collect())
}

/// Ids of the BPF programs a process holds: its program and link file descriptors name them in
/// their fdinfo (`prog_id:`).
fn observer_programs(pid: u32) -> Result<HashSet<u32>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = HashSet::new();
    for entry in fs::read_dir(&dir).with_context(|| dir.clone())? {
        // An fd closed since the listing is not an error.
        let Ok(info) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        let id =
            (info.lines()).find_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u32>().ok());
        ids.extend(id);
    }
    Ok(ids)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command name (which may hold spaces) come fields 3 (state) onwards.
    let (_, rest) = stat.rsplit_once(')').context("/proc/pid/stat")?;
    let rest: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    ensure!(rest.len() > 12, "short /proc/{pid}/stat");
    Ok(rest[14 - 3] + rest[15 - 3])
}

/// The `nth` number of the `key:` line of /proc/<pid>/status.
fn proc_status(pid: impl std::fmt::Display, key: &str, nth: usize) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    (status.lines())
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().nth(nth)?.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `-` for NaN (no figure), else `digits` decimals.
fn show(v: f64, digits: usize) -> String {
    match v.is_nan() {
        true => "-".to_string(),
        false => format!("{v:.digits$}"),
    }
}

fn report(place: &str, rounds: &[[Sample; NSETUPS]]) {
    let per = |i: usize, f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<f64> {
        rounds.iter().filter_map(|r| f(&r[i])).collect()
    };
    let rps = |i| median(per(i, &|s| Some(s.rps)));
    let ratio = |i| rps(i) / rps(NONE);
    println!("\n[{place}] setup  req/s  ratio  paired  observer CPU %  peak RSS MiB");
    for (i, (name, _)) in SETUPS.iter().enumerate() {
        let paired = median(rounds.iter().map(|r| r[i].rps / r[NONE].rps).collect());
        let cpu = show(median(per(i, &|s| s.cpu_pct)), 2);
        let rss = show(
            per(i, &|s| s.rss_mib).into_iter().fold(f64::NAN, f64::max),
            1,
        );
        let (r, x) = (rps(i), ratio(i));
        println!("{name:<12} {r:>7.0}  {x:>5.3}  {paired:>6.3}  {cpu:>14}  {rss:>12}");
    }
    println!("(ratio: of medians; paired: median of per-round ratios; RSS: max of VmHWM)");
    println!("\nBPF programs, from the runs with kernel.bpf_stats_enabled=1 (medians)");
    println!("setup        program               ns/run  runs/request");
    for i in EMPTY..NSETUPS {
        let names: BTreeSet<&String> = rounds.iter().flat_map(|r| r[i].bpf.keys()).collect();
        for p in names {
            let ns = median(per(i, &|s| s.bpf.get(p).map(|b| b.0)));
            let runs = median(per(i, &|s| s.bpf.get(p).map(|b| b.1)));
            println!("{:<12} {p:<20} {ns:>7.1}  {runs:>12.2}", SETUPS[i].0);
        }
    }
    let (obs, empty) = (ratio(OBSERVER), ratio(EMPTY));
    let http = ratio(HTTP);
    let syscalls = ratio(SYSCALLS);
    print!("\nbench [{place}]: observer/none throughput ratio {obs:.2} (empty hooks {empty:.2}); ");
    println!("target >= {TARGET}");
    println!(
        "bench [{place}]: http alone {http:.2} (target >= 0.90); default set {obs:.2} vs syscalls alone {syscalls:.2} (at most 0.03 below)"
    );
    // The L7 path's eBPF time per request: the socket hooks of the http setup (every program
    // run there serves the L7 path).
    let l7: f64 = rounds
        .first()
        .map(|r| r[HTTP].bpf.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let ns = median(per(HTTP, &|s| s.bpf.get(p).map(|b| b.0)));
            let runs = median(per(HTTP, &|s| s.bpf.get(p).map(|b| b.1)));
            ns * runs
        })
        .sum();
    println!("bench [{place}]: L7 path eBPF time per request (both sides, all its programs) {l7:.0} ns (target <= 1000)");
}

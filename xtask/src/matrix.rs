//! The kernel matrix: the privileged tests on this machine's kernel and, in virtual machines
//! that see this machine's files (virtme-ng, qemu with software emulation), on Debian's stock
//! 6.1 and 6.12 kernels. Binaries are built once on the host; only the tests run in the guests.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::install::kernels::{self, GuestKernel, Suite};

/// A kernel the tests run on.
#[derive(Debug, Clone)]
pub enum Kernel {
    /// The running kernel.
    Host,
    /// A guest kernel image, unpacked in the kernel cache.
    Guest { release: String, image: PathBuf },
}

/// Outcome of the test binaries on one kernel.
#[derive(Debug, Default)]
pub struct Outcome {
    pub passed: u64,
    pub failed: u64,
    pub problems: Vec<String>,
    /// The script reached its end (a guest that crashed or was stopped did not).
    pub finished: bool,
    /// Things worth saying that are not failures (a guest that had to be run twice).
    pub notes: Vec<String>,
    /// Failed tests, as `binary: test`.
    pub failures: Vec<String>,
    /// How long the run took.
    pub took: std::time::Duration,
}

/// What `run` records when the script does not reach its end.
const STOPPED_EARLY: &str = "the run did not finish";

impl Outcome {
    /// The outcome of a rerun after `first` stopped early: what the first run already reported
    /// failing still fails (its tests keep their names, counted once when both runs failed them);
    /// only its early stop is forgiven, and noted.
    pub fn after_rerun(mut self, first: Outcome) -> Outcome {
        for name in &first.failures {
            if !self.failures.contains(name) {
                self.failures.push(format!("{name} (first run)"));
                self.failed += 1;
            }
        }
        let unnamed = first.failed.saturating_sub(first.failures.len() as u64);
        if unnamed > 0 {
            self.problems.push(format!(
                "first run: {unnamed} failed tests whose names were not seen"
            ));
        }
        let (stop, others): (Vec<String>, Vec<String>) =
            (first.problems.into_iter()).partition(|p| p.starts_with(STOPPED_EARLY));
        self.problems
            .extend(others.into_iter().map(|p| format!("first run: {p}")));
        self.notes.push(format!(
            "first run stopped early ({}); rerun",
            stop.join("; ")
        ));
        self
    }
}

/// Kernel console lines kept from a guest, shown when its run did not finish.
const CONSOLE_TAIL: usize = 150;

/// `[   12.345678] text`: a line of the guest kernel's console.
fn is_console_line(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let Some((stamp, _)) = rest.split_once(']') else {
        return false;
    };
    // The kernel prints `%5lu.%06lu`.
    let Some((secs, micros)) = stamp.trim().split_once('.') else {
        return false;
    };
    !secs.is_empty()
        && secs.chars().all(|c| c.is_ascii_digit())
        && micros.len() == 6
        && micros.chars().all(|c| c.is_ascii_digit())
}

/// Longest one kernel's run may take (the guests took 4.5 to 16 minutes in the last run).
const RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// How much slower the guests run (software emulation): the tests scale their waits by it.
const GUEST_SLOWDOWN: u32 = 8;

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The guest kernels of the matrix, oldest first.
pub const GUESTS: &[GuestKernel] = &[
    GuestKernel {
        series: "5.10",
        meta: "linux-image-amd64",
        suite: Suite::Bullseye,
    },
    GuestKernel {
        series: "6.1",
        meta: "linux-image-amd64",
        suite: Suite::System,
    },
    GuestKernel {
        series: "6.12",
        meta: "linux-image-6.12-amd64",
        suite: Suite::System,
    },
];

/// The kernels selected by `--kernel` (`all`, `host`, or a series such as `6.1`).
pub fn select(which: &str) -> Result<Vec<Kernel>> {
    let mut all = vec![Kernel::Host];
    let cached = kernels::cached();
    for g in GUESTS {
        let prefix = format!("{}.", g.series);
        match cached.iter().rev().find(|(r, _)| r.starts_with(&prefix)) {
            Some((release, image)) => all.push(Kernel::Guest {
                release: release.clone(),
                image: image.clone(),
            }),
            None => bail!(
                "no kernel {} in {} (cargo xtask install unpacks it)",
                g.series,
                kernels::CACHE
            ),
        }
    }
    let series: Vec<&str> = GUESTS.iter().map(|g| g.series).collect();
    let chosen: Vec<Kernel> = all
        .into_iter()
        .filter(|k| match (which, k) {
            ("all", _) => true,
            ("host", Kernel::Host) => true,
            (w, Kernel::Guest { release, .. }) => {
                release.starts_with(&format!("{w}.")) || release == w
            }
            _ => false,
        })
        .collect();
    if chosen.is_empty() {
        bail!(
            "--kernel {which}: expected all, host or one of {}",
            series.join(", ")
        );
    }
    Ok(chosen)
}

impl Kernel {
    pub fn release(&self) -> String {
        match self {
            Kernel::Host => host_release(),
            Kernel::Guest { release, .. } => release.clone(),
        }
    }
}

/// Runs every test binary on `kernel` (a guest with `cpus` virtual CPUs), streaming the output,
/// and counts the results.
pub fn run(
    kernel: &Kernel,
    binaries: &[PathBuf],
    observer_bin: &Path,
    cpus: usize,
) -> Result<Outcome> {
    let started = Instant::now();
    let mut cmd = match kernel {
        Kernel::Host => {
            let script = script(binaries, observer_bin, None);
            let mut c = Command::new("sh");
            c.arg("-c").arg(script);
            c
        }
        Kernel::Guest { image, .. } => {
            let script_path = script_path(&kernel.release());
            let release = kernel.release();
            std::fs::write(&script_path, script(binaries, observer_bin, Some(&release)))?;
            let mut c = crate::install::vng();
            // --verbose: the guest kernel's console comes on stderr, so that a guest that stops
            // early (panic, oops, out of memory) shows why.
            c.args([
                "--disable-kvm",
                "--verbose",
                "--memory",
                "3G",
                "--cpus",
                &cpus.to_string(),
                "-r",
            ])
            .arg(image)
            .arg("--")
            .arg(format!("sh {}", script_path.display()));
            c
        }
    };
    let label = kernel.release();
    // Its own process group, so that the watchdog stops qemu too, not just its launcher.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Piped, never inherited: qemu reopens an inherited output file and overwrites it.
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the tests on kernel {label}"))?;
    // A guest that hangs must not eat CI's time: stop it after RUN_LIMIT.
    let pid = child.id() as i32;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(RUN_LIMIT).is_err() {
            eprintln!(
                "matrix: no result after {} s: stopping the run",
                RUN_LIMIT.as_secs()
            );
            // SAFETY: kill(2) on the process group of our own child.
            unsafe { kill(-pid, 9) };
        }
    });
    let stderr = child.stderr.take().expect("piped");
    let err_label = label.clone();
    // Without udev in the guest, virtme-ng cannot name its script ports and the script's output
    // comes on the kernel console instead (stderr here): it is read there too.
    let err_thread = std::thread::spawn(move || {
        let mut console = std::collections::VecDeque::with_capacity(CONSOLE_TAIL);
        let mut tally = Tally::default();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if is_console_line(&line) {
                if console.len() == CONSOLE_TAIL {
                    console.pop_front();
                }
                console.push_back(line);
            } else {
                eprintln!("[{err_label}] {line}");
                tally.line(&line);
            }
        }
        (console, tally)
    });
    let mut tally = Tally::default();
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        println!("[{label}] {line}");
        tally.line(&line);
    }
    let status = child.wait()?;
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let (console, err_tally) = err_thread.join().unwrap_or_default();
    if let Kernel::Guest { .. } = kernel {
        let _ = std::fs::remove_file(script_path(&label));
    }
    let mut out = tally.merge(err_tally);
    if !out.finished {
        out.problems.push(format!("{STOPPED_EARLY} ({status})"));
        println!("[{label}] the run stopped early; the last lines of the kernel console:");
        for line in &console {
            println!("[{label}] console {line}");
        }
    }
    out.took = started.elapsed();
    println!("[{label}] took {:.0} s", out.took.as_secs_f64());
    Ok(out)
}

/// What the script's output says: results, failed tests, binaries that exited with an error,
/// and whether it reached its end.
#[derive(Debug, Default)]
struct Tally {
    out: Outcome,
    binary: String,
}

impl Tally {
    fn line(&mut self, line: &str) {
        let out = &mut self.out;
        if let Some(b) = line.strip_prefix("MATRIX-BINARY ") {
            self.binary = b.to_string();
        }
        if let Some(test) = failed_test(line) {
            out.failures.push(format!("{}: {test}", self.binary));
        }
        if let Some(rest) = line.trim().strip_prefix("test result: ") {
            let (p, f) = parse_result(rest);
            out.passed += p;
            out.failed += f;
        }
        if let Some(bin) = line.strip_prefix("MATRIX-FAILED ") {
            out.problems.push(format!("{bin} exited with an error"));
        }
        if line.starts_with("MATRIX-END") {
            out.finished = true;
        }
    }

    /// Both streams' tallies as one outcome.
    fn merge(self, other: Tally) -> Outcome {
        let (mut a, b) = (self.out, other.out);
        a.passed += b.passed;
        a.failed += b.failed;
        a.failures.extend(b.failures);
        a.problems.extend(b.problems);
        a.finished |= b.finished;
        a
    }
}

/// Where the script of the guest running `release` is written (the guests see this machine's
/// /tmp; guests side by side each have their own).
fn script_path(release: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "observer-matrix-{}-{release}.sh",
        std::process::id()
    ))
}

/// `test tcp_exact ... FAILED` → `tcp_exact` (libtest's line for a failed test).
fn failed_test(line: &str) -> Option<&str> {
    line.trim_end()
        .strip_prefix("test ")?
        .strip_suffix(" ... FAILED")
}

/// A test binary's name without cargo's hash: `/t/deps/kernel-0123abcd` → `kernel`.
fn binary_name(b: &Path) -> String {
    let name = b.file_name().unwrap_or_default().to_string_lossy();
    match name.rsplit_once('-') {
        Some((stem, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => stem.to_string(),
        _ => name.into_owned(),
    }
}

/// `ok. 7 passed; 0 failed; ...` → (7, 0)
fn parse_result(s: &str) -> (u64, u64) {
    let mut passed = 0;
    let mut failed = 0;
    for part in s.split([';', '.']) {
        let mut w = part.split_whitespace();
        if let (Some(n), Some(what)) = (w.next(), w.next()) {
            if let Ok(n) = n.parse::<u64>() {
                match what {
                    "passed" => passed = n,
                    "failed" => failed = n,
                    _ => {}
                }
            }
        }
    }
    (passed, failed)
}

/// Test binaries that run on the host kernel only: those that do not depend on the kernel
/// (manifests, rules, dashboards, Kubernetes metadata from the API stand-in: no probe of its
/// own), the container and podman-pod tests (the guests have no container runtime), and the
/// gRPC API's (its figures come from the same kernel capture that the http, kernel and hostile
/// tests check on every guest; run there too, it took 7 of a guest's minutes, which the
/// 60-minute budget of the whole matrix does not have), and the Prometheus server's and
/// promtool's reading of the exposition (the exposition is user space's).
const HOST_ONLY: [&str; 7] = [
    "prometheus-",
    "deploy-",
    "dashboard-",
    "kubernetes-",
    "container-",
    "podman-",
    "grpc-",
];

fn host_only(b: &Path) -> bool {
    let name = b.file_name().unwrap_or_default().to_string_lossy();
    HOST_ONLY.iter().any(|p| name.starts_with(p))
}

/// What a guest runs of a binary that is not host-only: its tests named here (exactly), or all
/// of them for a binary not named. The guests run the kernel's side of each probe and each
/// protocol's exact scenario with a small load: every default probe loading and working at
/// paranoid 3 and 4, TCP exact per pod, hostile closes and bytes, nginx under load and HTTP's
/// framing edge cases exact per status, each database's and cache's benchmark against the
/// server's own records, DNS over UDP (connected, unconnected, answers read by recvmmsg, Go's
/// and Node's resolvers) and TCP against the server's query log (fexit on UDP's functions
/// before 6.3), HTTP/2 under h2load, gRPC, and nginx's
/// refused pushes and table size updates to Node.js (34 s on 5.10, 17 s on 6.12), a container's
/// exit; the host runs every test (the raw tracepoint variants too; HTTP/2's joined, Node.js and
/// streams tests: their kernel parts load in every guest's default-probes test and run in the
/// h2load and gRPC ones, and with them the 5.10 guest went past 20 minutes). An
/// observer's start takes 10-20 s under emulation since the framers are global BPF functions
/// (before, 6.1's verifier went through 900,000 instructions per socket program: a minute and
/// a half per start).
const GUEST_TESTS: &[(&str, &[&str])] = &[
    (
        "capabilities-",
        &["every_default_probe_works_at_perf_event_paranoid_3_and_4"],
    ),
    (
        "dns-",
        &[
            "dig_and_glibc_lookups_equal_the_servers_query_log",
            "tcp_lookups_pipelined_or_one_per_connection_equal_the_servers_query_log",
            "lookups_from_an_unconnected_socket_are_followed",
            "answers_read_several_at_once_with_recvmmsg_are_each_counted",
            // Resolvers that read before the answer is there (EAGAIN): fexit's return slot.
            "go_and_node_resolvers_equal_the_servers_query_log",
        ],
    ),
    (
        "http2-",
        &[
            "nginx_under_h2load_is_counted_exactly_per_status_on_both_sides",
            "grpc_unary_and_streaming_calls_are_counted_per_method_and_status_on_both_sides",
            "refused_pushes_and_header_table_size_changes_leave_every_request_counted",
        ],
    ),
    (
        "http-",
        &[
            "nginx_under_wrk_and_hey_is_counted_exactly_per_status_on_both_sides",
            "edge_cases_of_framing_are_each_counted_once_with_their_status",
        ],
    ),
    (
        "kernel-",
        // TCP's hooks differ by kernel (fexit before 6.3); the syscall probe's do not, and the
        // capabilities test runs it on every guest.
        &["tcp_connections_bytes_and_failures_are_exact_per_pod"],
    ),
    // The task fields read at an exit, located by BTF per kernel; the OOM kill's tracepoint is
    // the same on every kernel (its probe runs in the default-probes test; under emulation the
    // memory pressure took minutes).
    ("lifecycle-", &["exit_code_and_signal_with_figures_before"]),
    ("memcached-", &["memcslap_counts_equal_the_servers_stats"]),
    (
        "mysql-",
        &["mysqlslap_counts_equal_the_servers_com_counters"],
    ),
    (
        "postgres-",
        &["pgbench_simple_counts_equal_pg_stat_statements"],
    ),
    (
        "redis-",
        &["redis_benchmark_pipelined_counts_equal_the_servers_commandstats"],
    ),
    // The TLS probe, from 6.1 on (see GUEST_FROM): nginx over TLS to wrk, curl (HTTP/1.1 and
    // HTTP/2), Python (TLS 1.2 and 1.3, resumed, a client certificate), Node.js (its own
    // OpenSSL, a memory BIO) and h2load; Python's and Node's servers; renegotiation refused and
    // a key update (85 s on 6.1, 78 s on 6.12); a Go HTTPS server and Go clients (Go's own
    // crypto/tls: 56 s on 6.1, 144 s on 6.12, the Go build included). The twenty processes
    // loading a copy of the library (user space's discovery) run on the host only: under
    // emulation the twenty clients' handshakes outlast their own timeouts.
    (
        "tls-",
        &[
            "https_to_nginx_is_counted_exactly_per_status_on_both_sides_for_every_client",
            "python_and_node_servers_over_tls_are_counted_exactly_on_both_sides",
            "renegotiation_refused_and_a_key_update_leave_the_counts_exact",
            "go_https_server_and_clients_are_counted_exactly_on_both_sides",
        ],
    ),
    // The service graph is user space's, from the requests the http tests check.
    ("topology-", &[]),
];

/// Binaries whose guest tests run only on guests from this kernel series on. The TLS tests on
/// 5.10 took 13 minutes under emulation (the verifier there is far slower on the uprobe
/// programs, which carry the L7 path; its last scrape timed out); the tls probe's start-up
/// check and its refusal at paranoid 3 still run there, in the default-probes test.
const GUEST_FROM: &[(&str, (u32, u32))] = &[("tls-", (6, 1))];

/// `6.12.118+deb12-amd64` → (6, 12).
fn series(release: &str) -> (u32, u32) {
    let mut it = release.split(['.', '-']).map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The test filters of a binary on the guest running `release` (`None`: all its tests), or
/// that it runs none.
fn guest_filter(b: &Path, release: &str) -> Option<Option<String>> {
    let name = b.file_name().unwrap_or_default().to_string_lossy();
    let too_old =
        (GUEST_FROM.iter()).any(|(bin, from)| name.starts_with(bin) && series(release) < *from);
    if too_old {
        return None;
    }
    match GUEST_TESTS.iter().find(|(bin, _)| name.starts_with(bin)) {
        None => Some(None),
        Some((_, [])) => None,
        Some((_, tests)) => Some(Some(format!(" --exact {}", tests.join(" ")))),
    }
}

/// A shell script that runs every test binary serially (each test starts its own observer and
/// pods) and marks failures and the end; `guest`: the release of the guest it runs in.
fn script(binaries: &[PathBuf], observer_bin: &Path, guest: Option<&str>) -> String {
    let slowdown = if guest.is_some() { GUEST_SLOWDOWN } else { 1 };
    let mut s = String::from("set -u\nuname -r\n");
    s.push_str(&format!("export OBSERVER_BIN={}\nexport OBSERVER_TEST_SLOWDOWN={slowdown}\nexport RUST_BACKTRACE=0\n", observer_bin.display()));
    for b in binaries
        .iter()
        .filter(|b| !(guest.is_some() && host_only(b)))
    {
        let filter = match guest {
            Some(release) => guest_filter(b, release),
            None => Some(None),
        };
        let Some(filter) = filter else {
            continue;
        };
        let skips = filter.unwrap_or_default();
        s.push_str(&format!(
            "echo MATRIX-BINARY {n}\n{b} --test-threads=1{skips} || echo MATRIX-FAILED {b}\n",
            n = binary_name(b),
            b = b.display()
        ));
    }
    s.push_str("echo MATRIX-END\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_console_lines_from_test_output() {
        assert!(is_console_line(
            "[   12.345678] Out of memory: Killed process 42"
        ));
        assert!(is_console_line("[0.000000] Linux version 6.12"));
        assert!(!is_console_line("[6.1] test x ... ok"));
        assert!(!is_console_line("thread 'main' panicked at src/lib.rs:1:1"));
        assert!(!is_console_line("[] nothing"));
    }

    #[test]
    fn kernel_independent_binaries_run_on_the_host_only() {
        let bins = [
            PathBuf::from("/t/deps/deploy-0123abcd"),
            PathBuf::from("/t/deps/http-4567"),
        ];
        let host = script(&bins, Path::new("/o"), None);
        let guest = script(&bins, Path::new("/o"), Some("6.1.0-57-amd64"));
        assert!(host.contains("deploy-0123abcd") && host.contains("http-4567"));
        assert!(!guest.contains("deploy-0123abcd") && guest.contains("http-4567"));
    }

    #[test]
    fn guests_run_each_protocols_exact_scenario_the_host_everything() {
        let bins = [
            PathBuf::from("/t/deps/redis-0123abcd"),
            PathBuf::from("/t/deps/cli-0123abcd"),
            PathBuf::from("/t/deps/topology-0123abcd"),
        ];
        let host = script(&bins, Path::new("/o"), None);
        let guest = script(&bins, Path::new("/o"), Some("6.12.118+deb12-amd64"));
        assert!(host.contains("redis-0123abcd --test-threads=1 ||"));
        assert!(host.contains("topology-0123abcd"));
        assert!(guest.contains(
            "redis-0123abcd --test-threads=1 --exact \
             redis_benchmark_pipelined_counts_equal_the_servers_commandstats ||"
        ));
        assert!(guest.contains("cli-0123abcd --test-threads=1 ||"));
        assert!(!guest.contains("topology-0123abcd"));
    }

    #[test]
    fn the_tls_test_runs_on_guests_from_6_1() {
        let bins = [PathBuf::from("/t/deps/tls-0123abcd")];
        let old = script(&bins, Path::new("/o"), Some("5.10.0-46-amd64"));
        let new = script(&bins, Path::new("/o"), Some("6.1.0-57-amd64"));
        assert!(!old.contains("tls-0123abcd"));
        assert!(new.contains(
            "tls-0123abcd --test-threads=1 --exact \
             https_to_nginx_is_counted_exactly_per_status_on_both_sides_for_every_client \
             python_and_node_servers_over_tls_are_counted_exactly_on_both_sides \
             renegotiation_refused_and_a_key_update_leave_the_counts_exact \
             go_https_server_and_clients_are_counted_exactly_on_both_sides ||"
        ));
        assert_eq!(series("6.12.118+deb12-amd64"), (6, 12));
        assert_eq!(series("5.10.0-46-amd64"), (5, 10));
    }

    #[test]
    fn names_failed_tests() {
        assert_eq!(failed_test("test tcp_exact ... FAILED"), Some("tcp_exact"));
        assert_eq!(failed_test("test tcp_exact ... ok"), None);
        assert_eq!(failed_test("test result: FAILED. 1 passed; 1 failed"), None);
        assert_eq!(binary_name(Path::new("/t/deps/kernel-0123abcd")), "kernel");
    }

    #[test]
    fn a_rerun_keeps_the_failures_of_the_first_run() {
        let first = Outcome {
            passed: 3,
            failed: 1,
            problems: vec![
                "/t/kernel-1 exited with an error".into(),
                format!("{STOPPED_EARLY} (signal: 9)"),
            ],
            finished: false,
            failures: vec!["kernel: a".into(), "http: b".into()],
            ..Default::default()
        };
        let rerun = Outcome {
            passed: 9,
            failed: 1,
            finished: true,
            failures: vec!["http: b".into()],
            ..Default::default()
        };
        let r = rerun.after_rerun(first);
        // "http: b" failed in both runs: once; "kernel: a" failed only in the first: still failed.
        assert_eq!(r.failed, 2);
        assert_eq!(r.failures, ["http: b", "kernel: a (first run)"]);
        assert_eq!(r.problems, ["first run: /t/kernel-1 exited with an error"]);
        assert_eq!(
            r.notes,
            ["first run stopped early (the run did not finish (signal: 9)); rerun"]
        );
        // A clean rerun after an early stop without failures passes.
        let first = Outcome {
            problems: vec![format!("{STOPPED_EARLY} (signal: 9)")],
            ..Default::default()
        };
        let clean = Outcome {
            passed: 9,
            finished: true,
            ..Default::default()
        }
        .after_rerun(first);
        assert_eq!((clean.failed, clean.problems.len()), (0, 0));
    }

    #[test]
    fn reads_the_script_on_either_stream() {
        // virtme-ng's script ports (stdout) and its console fallback (stderr, between the
        // kernel's lines) both carry the script's output.
        let mut ports = Tally::default();
        for l in [
            "MATRIX-BINARY redis",
            "test a ... ok",
            "test result: ok. 1 passed; 0 failed",
        ] {
            ports.line(l);
        }
        let mut console = Tally::default();
        for l in [
            "MATRIX-BINARY http",
            "test b ... FAILED",
            "test result: FAILED. 2 passed; 1 failed",
            "MATRIX-FAILED /t/http-1",
            "MATRIX-END",
        ] {
            console.line(l);
        }
        let out = ports.merge(console);
        assert_eq!((out.passed, out.failed, out.finished), (3, 1, true));
        assert_eq!(out.failures, ["http: b"]);
        assert_eq!(out.problems, ["/t/http-1 exited with an error"]);
        let mut cut = Tally::default();
        cut.line("MATRIX-BINARY http");
        assert!(!cut.merge(Tally::default()).finished);
    }

    #[test]
    fn parses_libtest_summaries() {
        assert_eq!(
            parse_result(
                "ok. 7 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 20.99s"
            ),
            (7, 0)
        );
        assert_eq!(
            parse_result("FAILED. 5 passed; 2 failed; 0 ignored"),
            (5, 2)
        );
    }
}

//! `cargo xtask run` and `cargo xtask test`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{hygiene, install, matrix};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn cargo(args: &[&str]) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root()).args(args);
    c
}

fn run(mut cmd: Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Builds everything (kernel programs included, through observer/build.rs) and runs the
/// observer with its defaults plus `args`.
pub fn run_observer(args: &[String]) -> Result<()> {
    install::install(install::Scope::Run)?;
    run(cargo(&["build", "--release", "-p", "observer"]))?;
    let bin = workspace_root().join("target/release/observer");
    println!("run: {} {}", bin.display(), args.join(" "));
    let err = exec(&bin, args);
    bail!("exec {}: {err}", bin.display())
}

fn exec(bin: &Path, args: &[String]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    Command::new(bin).args(args).exec()
}

/// Runs every test: unit tests of all crates, then the privileged kernel tests on each kernel of
/// the matrix (this machine's, and 6.1 and 6.12 in virtual machines).
pub fn test(kernel: &str) -> Result<()> {
    let started = Instant::now();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("cargo xtask test loads eBPF programs and makes namespaces: run it as root");
    }
    install::install(install::Scope::Test)?;
    hygiene::sweep();
    let kernels = matrix::select(kernel)?;
    // The tests run the release build: the one users run, and the one whose user-space side
    // keeps up with the request rates the tests drive.
    run(cargo(&["build", "--release", "-p", "observer", "--bins"]))?;
    let observer_bin = workspace_root().join("target/release/observer");
    if kernels.iter().any(|k| matches!(k, matrix::Kernel::Host)) {
        // The container tests run the Dockerfile's image with this build in it.
        println!("test: the image the container tests run");
        crate::image::image(true)?;
    }
    println!("test: formatting and lints");
    run(cargo(&["fmt", "--all", "--check"]))?;
    for manifest in ["observer-ebpf/Cargo.toml", "fuzz/Cargo.toml"] {
        run(cargo(&["fmt", "--check", "--manifest-path", manifest]))?;
    }
    run(cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))?;
    println!("test: unit tests");
    run(cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "observer-tests",
    ]))?;
    fuzz()?;
    let binaries = test_binaries()?;
    let mut results = Vec::new();
    // The host's kernel first, alone: its tests drive real loads and time them.
    for k in kernels.iter().filter(|k| matches!(k, matrix::Kernel::Host)) {
        println!("test: privileged tests on kernel {}", k.release());
        results.push((k.release(), matrix::run(k, &binaries, &observer_bin, 0)?));
    }
    let guests: Vec<matrix::Kernel> = (kernels.iter())
        .filter(|k| matches!(k, matrix::Kernel::Guest { .. }))
        .cloned()
        .collect();
    results.extend(guest_lanes(&guests, &binaries, &observer_bin, started)?);
    let mut ok = true;
    let (mut passed, mut failed) = (0, 0);
    println!();
    for (release, r) in &results {
        println!("kernel {release}: {} passed, {} failed", r.passed, r.failed);
        for f in &r.failures {
            println!("kernel {release}: FAILED {f}");
        }
        for p in &r.problems {
            println!("kernel {release}: {p}");
        }
        for n in &r.notes {
            println!("kernel {release}: note: {n}");
        }
        ok &= r.failed == 0 && r.problems.is_empty() && r.passed > 0;
        passed += r.passed;
        failed += r.failed;
    }
    println!("privileged: {passed} passed, {failed} failed");
    println!("test: took {:.0} s", started.elapsed().as_secs_f64());
    if !ok {
        bail!("privileged tests failed on at least one kernel");
    }
    Ok(())
}

/// Runs the guests in lanes, one per host CPU, each guest with one virtual CPU: a lane takes the
/// next guest (oldest kernel, the slowest, first) when its last one ends. Under software
/// emulation a guest's two virtual CPUs gained little over one (its tests' processes wait on
/// each other), so two guests side by side take about as long as one did with both CPUs.
fn guest_lanes(
    guests: &[matrix::Kernel],
    binaries: &[PathBuf],
    observer_bin: &Path,
    started: Instant,
) -> Result<Vec<(String, matrix::Outcome)>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lanes = cores.min(guests.len()).max(1);
    let cpus = (cores / lanes).max(1);
    let queue = std::sync::Mutex::new(guests.iter().collect::<std::collections::VecDeque<_>>());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..lanes {
            s.spawn(|| loop {
                let Some(k) = queue.lock().expect("queue").pop_front() else {
                    break;
                };
                let r = guest(k, binaries, observer_bin, cpus, started);
                results.lock().expect("results").push((k.release(), r));
            });
        }
    });
    let mut out = Vec::new();
    // In the matrix's order, whatever order they ended in.
    let mut done = results.into_inner().expect("results");
    for k in guests {
        if let Some(i) = done.iter().position(|(r, _)| *r == k.release()) {
            let (release, r) = done.swap_remove(i);
            out.push((release, r?));
        }
    }
    Ok(out)
}

/// One guest's run, run once more if it stopped early and a rerun still fits.
fn guest(
    k: &matrix::Kernel,
    binaries: &[PathBuf],
    observer_bin: &Path,
    cpus: usize,
    started: Instant,
) -> Result<matrix::Outcome> {
    println!(
        "test: privileged tests on kernel {} ({cpus} virtual CPU)",
        k.release()
    );
    let r = matrix::run(k, binaries, observer_bin, cpus)?;
    if r.finished {
        return Ok(r);
    }
    if started.elapsed() + r.took >= RERUN_BY {
        println!(
            "test: kernel {}: the guest stopped before the end; no time left to run it again",
            k.release()
        );
        return Ok(r);
    }
    // A guest under software emulation that stops before its script ends (its console tail is
    // printed above) is run once more; the first run's stop stays on record, and what it
    // reported failing still fails the run.
    println!(
        "test: kernel {}: the guest stopped before the end; running it once more",
        k.release()
    );
    Ok(matrix::run(k, binaries, observer_bin, cpus)?.after_rerun(r))
}

/// A guest that stopped early is run once more only if that rerun, taking as long as the first
/// run, ends before this much of the whole test run has passed (CI stops at 90 minutes).
const RERUN_BY: std::time::Duration = std::time::Duration::from_secs(70 * 60);

/// Seconds each parser's fuzz target runs (a regression check from the seeds on every run;
/// longer campaigns are `cargo fuzz run` by hand).
const FUZZ_SECONDS: u32 = 30;

/// Runs every parser's fuzz target (`fuzz/`) for [`FUZZ_SECONDS`] from its seed corpus, with
/// cargo-fuzz on the stable toolchain (`RUSTC_BOOTSTRAP=1`, no sanitizer: `-s none`); a crash
/// fails the run. The corpus is copied first, so the run never writes into the repository.
fn fuzz() -> Result<()> {
    let root = workspace_root();
    let targets = [
        ("http_parse", "observer/tests/http-seeds", "fuzz/http.dict"),
        (
            "resp_parse",
            "observer/tests/redis-seeds",
            "fuzz/redis.dict",
        ),
        (
            "pg_parse",
            "observer/tests/postgres-seeds",
            "fuzz/postgres.dict",
        ),
        (
            "mysql_parse",
            "observer/tests/mysql-seeds",
            "fuzz/mysql.dict",
        ),
        (
            "memcached_parse",
            "observer/tests/memcached-seeds",
            "fuzz/memcached.dict",
        ),
        ("dns_parse", "observer/tests/dns-seeds", "fuzz/dns.dict"),
        (
            "http2_frames",
            "observer/tests/http2-seeds",
            "fuzz/http2.dict",
        ),
    ];
    for (target, seeds, dict) in targets {
        let corpus =
            std::env::temp_dir().join(format!("observer-fuzz-{target}-{}", std::process::id()));
        std::fs::create_dir_all(&corpus)?;
        for e in std::fs::read_dir(root.join(seeds))? {
            let p = e?.path();
            std::fs::copy(&p, corpus.join(p.file_name().context("seed name")?))?;
        }
        println!("test: fuzzing {target} for {FUZZ_SECONDS} s from {seeds}");
        let mut c = cargo(&["fuzz", "run", "-s", "none", target]);
        c.current_dir(root.join("fuzz"))
            .env("RUSTC_BOOTSTRAP", "1")
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={FUZZ_SECONDS}"))
            .arg(format!("-dict={}", root.join(dict).display()))
            .arg("-print_final_stats=1");
        let r = run(c);
        let _ = std::fs::remove_dir_all(&corpus);
        r.with_context(|| format!("fuzz target {target} found a crash (see its output above)"))?;
    }
    Ok(())
}

/// Builds the privileged test binaries and returns their paths.
fn test_binaries() -> Result<Vec<PathBuf>> {
    let out = cargo(&[
        "test",
        "-p",
        "observer-tests",
        "--no-run",
        "--message-format=json",
    ])
    .stderr(std::process::Stdio::inherit())
    .output()
    .context("building the test binaries")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["profile"]["test"] == true {
            if let Some(exe) = v["executable"].as_str() {
                bins.push(PathBuf::from(exe));
            }
        }
    }
    if bins.is_empty() {
        bail!("no test binary was built");
    }
    bins.sort();
    Ok(bins)
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

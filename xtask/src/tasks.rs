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
    for k in &kernels {
        println!("test: privileged tests on kernel {}", k.release());
        let mut r = matrix::run(k, &binaries, &observer_bin)?;
        let rerun_fits = started.elapsed() + r.took < RERUN_BY;
        if !r.finished && matches!(k, matrix::Kernel::Guest { .. }) && !rerun_fits {
            println!(
                "test: kernel {}: the guest stopped before the end; no time left to run it again",
                k.release()
            );
        }
        if !r.finished && matches!(k, matrix::Kernel::Guest { .. }) && rerun_fits {
            // A guest under software emulation that stops before its script ends (its console
            // tail is printed above) is run once more; the first run's stop stays on record.
            println!(
                "test: kernel {}: the guest stopped before the end; running it once more",
                k.release()
            );
            // What the first run reported failing still fails the run.
            r = matrix::run(k, &binaries, &observer_bin)?.after_rerun(r);
        }
        results.push((k.release(), r));
    }
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

/// A guest that stopped early is run once more only if that rerun, taking as long as the first
/// run, ends before this much of the whole test run has passed (CI stops at 90 minutes).
const RERUN_BY: std::time::Duration = std::time::Duration::from_secs(70 * 60);

/// Seconds each parser's fuzz target runs.
const FUZZ_SECONDS: u32 = 60;

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

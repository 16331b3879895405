//! `cargo xtask run` and `cargo xtask test`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::install;

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
    install::install()?;
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

/// Runs every test: unit tests of all crates, then the privileged kernel tests (serially:
/// each starts its own observer and simulated pods).
pub fn test() -> Result<()> {
    let started = Instant::now();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("cargo xtask test loads eBPF programs and makes namespaces: run it as root");
    }
    install::install()?;
    run(cargo(&["build", "-p", "observer", "--bins"]))?;
    let bin = workspace_root().join("target/debug/observer");
    println!("test: unit tests");
    run(cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "observer-tests",
    ]))?;
    println!("test: privileged tests on the running kernel");
    let mut t = cargo(&["test", "-p", "observer-tests", "--", "--test-threads=1"]);
    t.env("OBSERVER_BIN", &bin);
    run(t)?;
    println!(
        "test: everything passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

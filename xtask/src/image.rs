//! `cargo xtask image`: the observer's image, built from the Dockerfile with podman. No registry
//! image is needed: the base is made from Debian's packages (`mmdebstrap --variant=minbase`,
//! then `podman import`) when it is not in podman's storage, and the Dockerfile takes it as its
//! `BASE` build argument. Reports the image's size.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{install, tasks::workspace_root};

/// The base image made here, and the image's name (the DaemonSet's `image:`, which podman
/// resolves to `localhost/...` in its own storage).
pub const BASE: &str = "localhost/observer-base:bookworm";

/// podman's options on this kind of machine: crun (its default) refuses the hybrid cgroup
/// hierarchy, and the default ulimits exceed what the sandbox grants.
pub const PODMAN_GLOBAL: &[&str] = &["--runtime", "runc", "--cgroup-manager", "cgroupfs"];
pub const PODMAN_ULIMITS: &[&str] = &[
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(PODMAN_GLOBAL);
    c
}

fn run(mut cmd: Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn version() -> Result<String> {
    let toml = std::fs::read_to_string(workspace_root().join("Cargo.toml"))?;
    toml.lines()
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim().trim_matches('"').to_string())
        .context("no version in Cargo.toml")
}

/// Makes the Debian base image unless podman has it.
pub fn ensure_base() -> Result<()> {
    let exists = podman()
        .args(["image", "exists", BASE])
        .status()
        .is_ok_and(|s| s.success());
    if exists {
        println!("image: base {BASE} present");
        return Ok(());
    }
    let dir = tempdir()?;
    let tar = dir.join("base.tar");
    println!("image: making the base {BASE} with mmdebstrap (Debian 12, minbase)");
    let mut c = Command::new("mmdebstrap");
    // Documentation, manual pages and translations are left out of the base.
    c.args(["--variant=minbase", "--quiet"])
        .args([
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/info/*",
        ])
        .arg("bookworm")
        .arg(&tar)
        .arg("deb http://deb.debian.org/debian bookworm main")
        .arg("deb http://deb.debian.org/debian bookworm-updates main")
        .arg("deb http://deb.debian.org/debian-security bookworm-security main");
    run(c)?;
    let mut c = podman();
    c.arg("import").arg(&tar).arg(BASE);
    let out = c.output()?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        bail!(
            "podman import: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("observer-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Builds the image (`prebuilt`: the host's release binary on the same runtime base, instead of
/// building the workspace in the image) and prints its size.
pub fn image(prebuilt: bool) -> Result<()> {
    install::install(install::Scope::Image)?;
    ensure_base()?;
    let root = workspace_root();
    let name = if prebuilt {
        let built = root.join("target/release/observer");
        if !built.exists() {
            bail!("--prebuilt packs target/release/observer: build it first (cargo build --release -p observer)");
        }
        // Without its debug sections, as the build stage leaves it.
        std::fs::create_dir_all(root.join("target/image"))?;
        let mut c = Command::new("objcopy");
        c.arg("--strip-debug")
            .arg(&built)
            .arg(root.join("target/image/observer"));
        run(c)?;
        format!("observer-prebuilt:{}", version()?)
    } else {
        format!("observer:{}", version()?)
    };
    let target = if prebuilt { "prebuilt" } else { "runtime" };
    println!("image: podman build --target {target} -t {name}");
    let mut c = podman();
    c.current_dir(&root)
        .arg("build")
        .args(PODMAN_ULIMITS)
        .args([
            "--build-arg",
            &format!("BASE={BASE}"),
            "--target",
            target,
            "-t",
            &name,
            ".",
        ]);
    run(c)?;
    let out = podman()
        .args(["image", "inspect", "--format", "{{.Size}}", &name])
        .output()?;
    let size: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    println!(
        "image: localhost/{name}: {:.1} MiB",
        size as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

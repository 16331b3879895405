//! Idempotent set-up of everything the build and the tests need on a fresh Debian 12 machine
//! of this kind: the eBPF toolchain (Debian's rustc with a prebuilt `core` for
//! bpfel-unknown-none, LLVM 22, bpf-linker) and the real servers, load generators and
//! Prometheus tools the tests drive. Says what it installs; installs nothing already there.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

/// Debian packages and why they are needed.
const PACKAGES: &[(&str, &str)] = &[
    (
        "rustc-web",
        "Debian rustc 1.96 that builds the kernel programs",
    ),
    (
        "libstd-rust-web-dev-bpf",
        "prebuilt core for bpfel-unknown-none",
    ),
    ("llvm-22-dev", "LLVM for bpf-linker"),
    ("libzstd-dev", "bpf-linker link dependency"),
    ("zlib1g-dev", "bpf-linker link dependency"),
    (
        "iproute2",
        "network namespaces and veths of the simulated pods",
    ),
    ("util-linux", "setpriv for the unprivileged-start test"),
    (
        "libcap2-bin",
        "capsh: the capabilities test runs the observer with only the DaemonSet's",
    ),
    ("python3", "test servers and clients"),
    ("curl", "HTTP client"),
    ("nginx", "benchmark and test server"),
    ("wrk", "load generator"),
    ("hey", "load generator"),
    (
        "prometheus",
        "Prometheus server and promtool for the exposition tests",
    ),
    ("bpftool", "BPF program statistics in the benchmark"),
    (
        "linux-image-amd64",
        "Debian's 6.1 kernel for the kernel matrix (runs in a VM)",
    ),
    (
        "linux-image-6.12-amd64",
        "Debian's 6.12 kernel for the kernel matrix (runs in a VM)",
    ),
    ("busybox-static", "initramfs of the matrix VMs (virtme-ng)"),
    ("python3-yaml", "YAML for Debian's python3 (manifest tests)"),
    (
        "protobuf-compiler",
        "protoc: builds the gRPC API (observer/build.rs) and the Python test client's stubs",
    ),
    (
        "python3-grpcio",
        "gRPC for Debian's python3 (the non-Rust gRPC client test)",
    ),
    (
        "python3-protobuf",
        "protobuf runtime for Debian's python3 (gRPC client test)",
    ),
    (
        "grpc-proto",
        "health and reflection .proto files (gRPC client test)",
    ),
];

/// The VM runner of the kernel matrix, from PyPI.
const VIRTME_NG: &str = "virtme-ng==1.42";

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Path of bpf-linker in cargo's bin directory.
pub fn bpf_linker() -> PathBuf {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo")
        });
    home.join("bin/bpf-linker")
}

pub fn install() -> Result<()> {
    let missing: Vec<&(&str, &str)> = PACKAGES.iter().filter(|(p, _)| !installed(p)).collect();
    if missing.is_empty() {
        println!("install: all {} Debian packages present", PACKAGES.len());
    } else {
        for (p, why) in &missing {
            println!("install: apt-get install {p} ({why})");
        }
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing.iter().map(|(p, _)| *p))
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    install_qemu()?;
    install_virtme()?;
    let linker = bpf_linker();
    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        println!("install: bpf-linker present ({})", linker.display());
    } else {
        println!("install: cargo install bpf-linker 0.13 (against LLVM 22)");
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                "0.13.0",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", path))?;
    }
    install_cargo_tool(
        "cargo-fuzz",
        "0.13.2",
        "runs the parsers' fuzz targets in the tests",
    )?;
    // Debian's nginx package starts a server on port 80 when installed; the tests start their
    // own, so stop the packaged one if it runs (harmless when it does not).
    if !missing.is_empty() && missing.iter().any(|(p, _)| *p == "nginx") {
        let _ = Command::new("nginx").args(["-s", "stop"]).output();
    }
    Ok(())
}

/// `cargo install`s a tool into cargo's bin directory unless it answers `--version` there.
fn install_cargo_tool(name: &str, version: &str, why: &str) -> Result<()> {
    let bin = bpf_linker().with_file_name(name);
    if Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        println!("install: {name} present ({})", bin.display());
        return Ok(());
    }
    println!("install: cargo install {name} {version} ({why})");
    run(Command::new("cargo").args(["install", "--locked", name, "--version", version]))
}

/// qemu-system-x86 for the matrix VMs. The image ships qemu-utils 10.0 from backports, which
/// blocks bookworm's qemu-system-x86 7.2: both are installed at the bookworm version together.
fn install_qemu() -> Result<()> {
    if installed("qemu-system-x86") {
        println!("install: qemu-system-x86 present");
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    let policy = Command::new("apt-cache")
        .args(["policy", "qemu-system-x86"])
        .output()?;
    let text = String::from_utf8_lossy(&policy.stdout).into_owned();
    let version = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Candidate:")
                .map(|v| v.trim().to_string())
        })
        .filter(|v| v != "(none)")
        .context("qemu-system-x86 has no installable version")?;
    println!("install: apt-get install qemu-system-x86={version} qemu-utils={version} (VMs of the kernel matrix)");
    run(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "--allow-downgrades",
        ])
        .arg(format!("qemu-system-x86={version}"))
        .arg(format!("qemu-utils={version}"))
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Runs virtme-ng's `vng` with `args` (through python3, wherever pip put the script).
pub fn vng() -> Command {
    let mut c = Command::new("python3");
    c.args([
        "-c",
        "import sys; from virtme_ng.run import main; sys.argv[0] = 'vng'; sys.exit(main())",
    ]);
    c
}

fn install_virtme() -> Result<()> {
    ensure_python_module("virtme_ng", VIRTME_NG, "runs the matrix kernels in VMs")?;
    ensure_python_module(
        "yaml",
        "pyyaml",
        "reads the rendered Kubernetes manifests in the tests",
    )
}

/// Makes `import module` work for the python3 on PATH, installing `spec` with pip if needed.
fn ensure_python_module(module: &str, spec: &str, why: &str) -> Result<()> {
    let present = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        println!("install: python module {module} present");
        return Ok(());
    }
    println!("install: pip install {spec} ({why})");
    let plain = Command::new("python3")
        .args(["-m", "pip", "install", "-q", spec])
        .status()?;
    if !plain.success() {
        // Debian's own python3 is externally managed.
        if !installed("python3-pip") {
            run(Command::new("apt-get")
                .args(["install", "-y", "-q", "python3-pip"])
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
        }
        run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "-q",
            "--break-system-packages",
            spec,
        ]))?;
    }
    Ok(())
}

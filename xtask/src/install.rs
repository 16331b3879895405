//! Idempotent set-up of everything the build and the tests need on a fresh Debian 12 machine
//! of this kind: the eBPF toolchain (Debian's rustc with a prebuilt `core` for
//! bpfel-unknown-none, LLVM 22, bpf-linker) and the real servers, load generators and
//! Prometheus tools the tests drive. Says what it installs; installs nothing already there.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub mod kernels;

use anyhow::{bail, Context, Result};

/// What to install for: building and running the observer (`cargo xtask run`); also the servers,
/// load generators and tools the benchmark drives; also the container tools of `cargo xtask
/// image`; or everything the tests need (all of the above, the kernel matrix's VM tool and
/// kernels, the fuzzer, the test clients' libraries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scope {
    Run,
    Bench,
    Image,
    Test,
}

impl Scope {
    /// Whether installing for `self` installs what `part` needs.
    fn includes(self, part: Scope) -> bool {
        part == Scope::Run || part == self || self == Scope::Test
    }
}

/// Debian packages, the scope that first needs each, and why.
const PACKAGES: &[(Scope, &str, &str)] = &[
    (Scope::Run, "gcc", "the linker cargo calls"),
    (Scope::Run, "libc6-dev", "the C library the binaries link"),
    (
        Scope::Run,
        "pkg-config",
        "finds the libraries bpf-linker links",
    ),
    (Scope::Run, "ca-certificates", "crates.io over TLS"),
    (
        Scope::Run,
        "rustc-web",
        "Debian rustc 1.96 that builds the kernel programs",
    ),
    (
        Scope::Run,
        "libstd-rust-web-dev-bpf",
        "prebuilt core for bpfel-unknown-none",
    ),
    (Scope::Run, "llvm-22-dev", "LLVM for bpf-linker"),
    (Scope::Run, "libzstd-dev", "bpf-linker link dependency"),
    (Scope::Run, "zlib1g-dev", "bpf-linker link dependency"),
    (
        Scope::Run,
        "protobuf-compiler",
        "protoc: builds the gRPC API (observer/build.rs) and the Python test client's stubs",
    ),
    (
        Scope::Bench,
        "iproute2",
        "network namespaces and veths of the simulated pods",
    ),
    (Scope::Bench, "python3", "test servers and clients"),
    (Scope::Bench, "curl", "HTTP client"),
    (Scope::Bench, "nginx", "benchmark and test server"),
    (Scope::Bench, "wrk", "load generator"),
    (Scope::Bench, "hey", "load generator"),
    (
        Scope::Bench,
        "bpftool",
        "BPF program statistics in the benchmark",
    ),
    (
        Scope::Image,
        "podman",
        "builds and runs the observer's image",
    ),
    (
        Scope::Image,
        "binutils",
        "objcopy: the tests' image packs the release binary without its debug sections",
    ),
    (
        Scope::Image,
        "cargo-web",
        "Debian's cargo 1.96, which the image's build stage uses (the Dockerfile's list)",
    ),
    (
        Scope::Image,
        "runc",
        "podman's runtime here (crun refuses this machine's hybrid cgroups)",
    ),
    (
        Scope::Image,
        "mmdebstrap",
        "the image's Debian base, made locally (no registry)",
    ),
    (
        Scope::Bench,
        "postgresql",
        "PostgreSQL server with pg_stat_statements, psql and pgbench (the PostgreSQL tests and benchmark)",
    ),
    (
        Scope::Test,
        "mariadb-server",
        "MariaDB server (the MySQL tests)",
    ),
    (
        Scope::Test,
        "mariadb-client",
        "mariadb and mysqlslap (the MySQL tests)",
    ),
    (
        Scope::Test,
        "python3-psycopg2",
        "psycopg2 (libpq), the Python client of the PostgreSQL tests",
    ),
    (
        Scope::Test,
        "python3-pymysql",
        "PyMySQL, the Python client of the MySQL tests",
    ),
    (
        Scope::Bench,
        "redis-server",
        "Redis server, redis-cli and redis-benchmark (the Redis tests and benchmark)",
    ),
    (
        Scope::Test,
        "memcached",
        "Memcached server (the Memcached tests)",
    ),
    (
        Scope::Test,
        "libmemcached-tools",
        "memcslap, the C load generator of the Memcached tests",
    ),
    (
        Scope::Test,
        "python3-pymemcache",
        "pymemcache, the Python client of the Memcached tests",
    ),
    (
        Scope::Test,
        "nghttp2-client",
        "h2load, the HTTP/2 load generator of the HTTP/2 tests",
    ),
    (
        Scope::Test,
        "nodejs",
        "Node.js, whose http2 module is the second HTTP/2 server and client of the HTTP/2 tests",
    ),
    (
        Scope::Bench,
        "golang-go",
        "Go, which builds the Go HTTPS server and client of the TLS tests and benchmark (Go's own crypto/tls)",
    ),
    (
        Scope::Test,
        "dnsmasq-base",
        "dnsmasq, the DNS server of the DNS tests",
    ),
    (
        Scope::Test,
        "bind9-dnsutils",
        "dig, the C client of the DNS tests",
    ),
    (
        Scope::Test,
        "catatonit",
        "the init of podman pods' infra containers (the podman-pod tests)",
    ),
    (
        Scope::Test,
        "util-linux",
        "setpriv for the unprivileged-start test",
    ),
    (
        Scope::Test,
        "libcap2-bin",
        "capsh: the capabilities test runs the observer with only the DaemonSet's",
    ),
    (
        Scope::Test,
        "prometheus",
        "Prometheus server and promtool for the exposition tests",
    ),
    (
        Scope::Test,
        "kmod",
        "depmod, which virtme-ng runs on the guest kernels' modules",
    ),
    (
        Scope::Test,
        "udev",
        "udevd in the matrix VMs: it names virtme-ng's virtio-serial ports, which carry the \
         tests' output (without it the output comes mixed into the guest's console)",
    ),
    (
        Scope::Test,
        "busybox-static",
        "initramfs of the matrix VMs (virtme-ng)",
    ),
    (
        Scope::Test,
        "python3-venv",
        "the project's virtual environment for virtme-ng",
    ),
    (
        Scope::Test,
        "python3-yaml",
        "YAML for Debian's python3 (manifest tests)",
    ),
    (
        Scope::Test,
        "python3-grpcio",
        "gRPC for Debian's python3 (the non-Rust gRPC client test)",
    ),
    (
        Scope::Test,
        "python3-protobuf",
        "protobuf runtime for Debian's python3 (gRPC client test)",
    ),
    (
        Scope::Test,
        "grpc-proto",
        "health and reflection .proto files (gRPC client test)",
    ),
];

/// The VM runner of the kernel matrix, from PyPI, into the project's virtual environment.
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

pub fn install(scope: Scope) -> Result<()> {
    let missing: Vec<&(Scope, &str, &str)> = PACKAGES
        .iter()
        .filter(|(s, p, _)| scope.includes(*s) && !installed(p))
        .collect();
    if missing.is_empty() {
        println!("install: the Debian packages of `{scope:?}` are present");
    } else {
        for (_, p, why) in &missing {
            println!("install: apt-get install {p} ({why})");
        }
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing.iter().map(|(_, p, _)| *p))
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
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
    // Debian's nginx package starts a server on port 80 when installed; the tests start their
    // own, so stop the packaged one if it runs (harmless when it does not).
    if missing.iter().any(|(_, p, _)| *p == "nginx") {
        let _ = Command::new("nginx").args(["-s", "stop"]).output();
    }
    if scope != Scope::Test {
        return Ok(());
    }
    install_qemu()?;
    install_virtme()?;
    for k in crate::matrix::GUESTS {
        kernels::ensure(k)?;
    }
    install_cargo_tool(
        "cargo-fuzz",
        "0.13.2",
        "runs the parsers' fuzz targets in the tests",
    )
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

/// The project's Python virtual environment (virtme-ng lives there, not in the system's
/// site-packages).
pub fn venv() -> PathBuf {
    crate::tasks::workspace_root().join(".venv")
}

/// Runs virtme-ng's `vng` from the project's virtual environment. `vng` starts its helpers
/// (`virtme-run`, ...) from the PATH and runs `depmod`: the environment's `bin` and the sbin
/// directories go first on it, whatever the caller's PATH holds.
pub fn vng() -> Command {
    let bin = venv().join("bin");
    let path = format!(
        "{}:/usr/local/sbin:/usr/sbin:/sbin:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new(bin.join("vng"));
    c.env("PATH", path);
    c
}

fn install_virtme() -> Result<()> {
    let vng = venv().join("bin/vng");
    let works = Command::new(&vng)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        println!("install: virtme-ng present ({})", vng.display());
    } else {
        println!(
            "install: {VIRTME_NG} into {} (runs the matrix kernels in VMs)",
            venv().display()
        );
        // Debian's own python3 (the one of python3-venv), whatever else is on PATH.
        let python = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        run(Command::new(python).arg("-m").arg("venv").arg(venv()))?;
        run(Command::new(venv().join("bin/pip")).args(["install", "-q", VIRTME_NG]))?;
    }
    let yaml = Command::new("python3")
        .args(["-c", "import yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !yaml {
        bail!(
            "the python3 on PATH cannot import yaml (the manifest tests need it): \
             Debian's python3 has it from python3-yaml; another python3 needs `pip install pyyaml`"
        );
    }
    Ok(())
}

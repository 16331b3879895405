//! Harness for the privileged integration tests: simulated pods (a cgroup at a realistic
//! kubepods path plus a network namespace with its own IP on a test bridge), the observer
//! process, and a Prometheus text parser. Every guard cleans up on drop, also when a test
//! panics.

pub mod db;
pub mod gotls;
pub mod grpc;
pub mod kubeapi;
pub mod manifest;
pub mod metrics;
pub mod net;
pub mod nginx;
pub mod observer;
pub mod pod;
pub mod podman;
pub mod workload;

use std::process::Command;

/// How much slower than native this machine runs (OBSERVER_TEST_SLOWDOWN, set by the kernel
/// matrix for guests under software emulation); every wait of the tests scales with it.
pub fn slowdown() -> u32 {
    std::env::var("OBSERVER_TEST_SLOWDOWN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// `d` scaled by [`slowdown`].
pub fn scaled(d: std::time::Duration) -> std::time::Duration {
    d * slowdown()
}

/// Runs a command, failing with its output when it fails.
pub fn sh(cmd: &str) -> anyhow::Result<String> {
    let out = Command::new("sh").arg("-c").arg(cmd).output()?;
    if !out.status.success() {
        anyhow::bail!(
            "`{cmd}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command and ignores failures (cleanup paths).
pub fn sh_quiet(cmd: &str) {
    let _ = Command::new("sh").arg("-c").arg(cmd).output();
}

/// Fails unless running as root: these tests load eBPF programs and make namespaces.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the privileged tests must run as root (cargo xtask test does)"
    );
}

/// A short random hex string (for unique names).
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n.div_ceil(2)];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut buf);
    }
    let s: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    s[..n].to_string()
}

/// A fresh directory under the temp dir, removed with its contents on drop. Processes in the
/// simulated pods see it too (they share the host's mount namespace).
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> anyhow::Result<TempDir> {
        let p = std::env::temp_dir().join(format!("{prefix}-{}", random_hex(8)));
        std::fs::create_dir(&p)?;
        Ok(TempDir(p))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// The path of `name` inside the directory, as a string (for command lines).
    pub fn join(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }

    /// Writes `contents` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> anyhow::Result<String> {
        let p = self.join(name);
        std::fs::write(&p, contents)?;
        Ok(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

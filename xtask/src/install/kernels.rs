//! The matrix's guest kernels: Debian's packages, downloaded (`apt-get download`) and unpacked
//! (`dpkg -x`) with their modules into a cache directory, where virtme-ng finds both (it takes
//! the modules from `<root>/lib/modules/<release>` beside `<root>/boot/vmlinuz-<release>`). They
//! are never installed: the machine's /boot, initramfs images and boot loader stay as they are.
//! Debian 11's kernel comes from its own suites through a sources list of the cache's own apt
//! state, never added to the machine's.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// Where the unpacked kernels live: outside the clone, so a fresh clone reuses them, and not
/// under /var/cache, which virtme-ng hides from its guests (a tmpfs over it), while the guests
/// must see the modules.
pub const CACHE: &str = "/var/lib/observer-test/kernels";

/// A Debian release whose kernel packages the matrix takes.
#[derive(Debug, Clone, Copy)]
pub enum Suite {
    /// This machine's own apt sources (Debian 12).
    System,
    /// Debian 11 (bullseye and its security suite), from the cache's own apt state.
    Bullseye,
}

/// A guest kernel of the matrix: `meta` is Debian's meta package whose dependency names the
/// newest kernel of the series (`linux-image-amd64` → `linux-image-6.1.0-57-amd64`).
#[derive(Debug, Clone, Copy)]
pub struct GuestKernel {
    /// Release prefix that `--kernel` selects, e.g. "6.1".
    pub series: &'static str,
    pub meta: &'static str,
    pub suite: Suite,
}

fn apt_state() -> PathBuf {
    Path::new(CACHE).join("apt-bullseye")
}

/// apt options that make apt-get and apt-cache use the cache's own sources and state.
fn apt_options(suite: Suite) -> Vec<String> {
    match suite {
        Suite::System => Vec::new(),
        Suite::Bullseye => {
            let s = apt_state();
            [
                format!("Dir::Etc::SourceList={}", s.join("sources.list").display()),
                format!(
                    "Dir::Etc::SourceParts={}",
                    s.join("sources.list.d").display()
                ),
                format!("Dir::State::Lists={}", s.join("lists").display()),
                format!("Dir::Cache={}", s.join("cache").display()),
                // Not the machine's installed packages: they would be candidates of their own.
                format!("Dir::State::status={}", s.join("status").display()),
            ]
            .into_iter()
            .flat_map(|o| ["-o".to_string(), o])
            .collect()
        }
    }
}

fn apt(tool: &str, suite: Suite) -> Command {
    let mut c = Command::new(tool);
    c.args(apt_options(suite))
        .env("DEBIAN_FRONTEND", "noninteractive");
    c
}

fn run(mut cmd: Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn update(suite: Suite) -> Result<()> {
    if let Suite::Bullseye = suite {
        let s = apt_state();
        for d in ["sources.list.d", "lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(s.join(d))?;
        }
        fs::write(s.join("status"), "")?;
        fs::write(
            s.join("sources.list"),
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://deb.debian.org/debian bullseye main\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://deb.debian.org/debian-security bullseye-security main\n",
        )?;
    }
    let mut c = apt("apt-get", suite);
    c.args(["update", "-q"]);
    run(c).map(|_| ())
}

/// The package the meta package depends on (`linux-image-6.1.0-57-amd64`).
fn resolve(k: &GuestKernel) -> Result<String> {
    let mut c = apt("apt-cache", k.suite);
    c.args(["depends", "--important", k.meta]);
    let text = run(c)?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .map(str::to_string)
        .with_context(|| format!("{} names no kernel package", k.meta))
}

/// The unpacked kernels of the cache: (release, image), newest last per series.
pub fn cached() -> Vec<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = fs::read_dir(CACHE)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(".complete").exists())
        .filter_map(|e| {
            let release = e.file_name().to_string_lossy().into_owned();
            let image = e.path().join(format!("boot/vmlinuz-{release}"));
            image.exists().then_some((release, image))
        })
        .collect();
    found.sort();
    found
}

/// Makes sure a kernel of `k`'s series is unpacked in the cache.
pub fn ensure(k: &GuestKernel) -> Result<()> {
    let prefix = format!("{}.", k.series);
    if let Some((release, _)) = cached().into_iter().find(|(r, _)| r.starts_with(&prefix)) {
        println!("install: kernel {release} present in {CACHE}");
        return Ok(());
    }
    if matches!(k.suite, Suite::Bullseye) || resolve(k).is_err() {
        update(k.suite)?;
    }
    let package = resolve(k)?;
    let release = package.trim_start_matches("linux-image-").to_string();
    println!(
        "install: {package} unpacked into {CACHE}/{release} (kernel {} of the matrix; not installed)",
        k.series
    );
    let downloads = Path::new(CACHE).join("debs");
    fs::create_dir_all(&downloads)?;
    let mut c = apt("apt-get", k.suite);
    c.args(["download", "-q", &package]).current_dir(&downloads);
    if run(c).is_err() {
        // The machine's package lists may name a version the mirror no longer has.
        update(k.suite)?;
        let mut c = apt("apt-get", k.suite);
        c.args(["download", "-q", &package]).current_dir(&downloads);
        run(c)?;
    }
    let deb = fs::read_dir(&downloads)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
        })
        .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
    let dir = Path::new(CACHE).join(&release);
    let _ = fs::remove_dir_all(&dir);
    let mut c = Command::new("dpkg");
    c.arg("-x").arg(&deb).arg(&dir);
    run(c)?;
    // virtme-ng runs depmod on the modules when it needs their index; do it once here.
    let mut c = Command::new("depmod");
    c.arg("-a").arg("-b").arg(&dir).arg(&release);
    if run(c).is_err() {
        println!("install: depmod for {release} failed; virtme-ng will try again at boot");
    }
    fs::write(dir.join(".complete"), &package)?;
    let _ = fs::remove_file(&deb);
    Ok(())
}

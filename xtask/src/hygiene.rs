//! Leftovers of an earlier test run that was killed before its tests could clean up: the test
//! network namespaces (`obs-*`) and the processes in them, the test bridges (`obr*`) and veths
//! (`ov*`), and the simulated pods' cgroups under `kubepods.slice`. Removed before the tests start,
//! so a killed run does not make the next one fail or count someone else's traffic.
//!
//! The cgroup sweep kills processes only on a machine that runs no kubelet (a test machine), and
//! removes only cgroups that are empty then; on a Kubernetes node it leaves `kubepods.slice` alone.

use std::{fs, path::Path, process::Command};

fn out(args: &[&str]) -> String {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn quiet(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// podman with the options this machine needs (xtask/src/image.rs).
fn podman_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    crate::image::PODMAN_GLOBAL
        .iter()
        .copied()
        .chain(args.iter().copied())
        .collect()
}

fn podman_out(args: &[&str]) -> String {
    let a = podman_args(args);
    out(&[&["podman"][..], &a].concat())
}

fn podman_quiet(args: &[&str]) -> bool {
    let a = podman_args(args);
    quiet(&[&["podman"][..], &a].concat())
}

fn kill(pid: &str) -> bool {
    pid.parse::<i32>().is_ok() && quiet(&["kill", "-9", pid])
}

/// Removes what an earlier, killed test run left; prints what it removed.
pub fn sweep() {
    let mut removed = Vec::new();
    // Pods and containers of the image and podman-pod tests (named obs-*), when podman is
    // there: pods first (their containers go with them), then lone containers.
    for (list, rm, what) in [
        (
            &["pod", "ps", "--format", "{{.Name}}"][..],
            &["pod", "rm"][..],
            "podman pod",
        ),
        (
            &["ps", "-a", "--format", "{{.Names}}"][..],
            &["rm"][..],
            "container",
        ),
    ] {
        for name in podman_out(list)
            .lines()
            .map(str::trim)
            .filter(|n| n.starts_with("obs-"))
        {
            let args: Vec<&str> = rm.iter().copied().chain(["-f", "-t", "0", name]).collect();
            if podman_quiet(&args) {
                removed.push(format!("{what} {name}"));
            }
        }
    }
    for line in out(&["ip", "netns", "list"]).lines() {
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        if !ns.starts_with("obs-") {
            continue;
        }
        let killed = out(&["ip", "netns", "pids", ns])
            .lines()
            .filter(|p| kill(p.trim()))
            .count();
        if quiet(&["ip", "netns", "del", ns]) {
            removed.push(format!("network namespace {ns} ({killed} processes)"));
        }
    }
    for line in out(&["ip", "-o", "link", "show"]).lines() {
        // "12: ovab12cd34@if11: <...> ..." or "13: obr0a1b2c3d: <...>"
        let Some(name) = line.split(':').nth(1).map(|n| n.trim()) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        let hex = |from: usize| name[from..].chars().all(|c| c.is_ascii_hexdigit());
        let bridge = name.starts_with("obr") && name.len() == 11 && hex(3);
        let veth = name.starts_with("ov") && name.len() == 10 && hex(2);
        if (bridge || veth) && quiet(&["ip", "link", "del", name]) {
            removed.push(format!("link {name}"));
        }
    }
    let root = Path::new("/sys/fs/cgroup");
    let kubelet = !out(&["pgrep", "-x", "kubelet"]).trim().is_empty();
    // cgroup v2 at the root, or at `unified` on a hybrid hierarchy (this machine's).
    for kubepods in [
        root.join("kubepods.slice"),
        root.join("unified/kubepods.slice"),
    ] {
        if !kubelet && kubepods.is_dir() {
            let mut n = 0;
            sweep_cgroup(&kubepods, &mut n);
            if n > 0 {
                removed.push(format!("{n} test cgroups under {}", kubepods.display()));
            }
        }
    }
    // The lifecycle tests' cgroup v1 memory groups, where that hierarchy is mounted.
    if let Ok(dir) = fs::read_dir(root.join("memory")) {
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with("obs-") {
                let mut n = 0;
                sweep_cgroup(&e.path(), &mut n);
                if n > 0 {
                    removed.push(format!("cgroup {}", e.path().display()));
                }
            }
        }
    }
    for r in &removed {
        println!("test: removed a leftover of an earlier run: {r}");
    }
}

/// Kills the processes of `dir` and its descendants and removes them, deepest first; counts the
/// cgroups removed. The top directory itself stays (`kubepods.slice` may be the machine's own).
fn sweep_cgroup(dir: &Path, removed: &mut usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if !p.is_dir() {
            continue;
        }
        sweep_cgroup(&p, removed);
        if let Ok(procs) = fs::read_to_string(p.join("cgroup.procs")) {
            for pid in procs.lines() {
                kill(pid.trim());
            }
        }
        // A killed process leaves its cgroup a moment later.
        for _ in 0..50 {
            if fs::remove_dir(&p).is_ok() {
                *removed += 1;
                break;
            }
            if !fs::read_to_string(p.join("cgroup.procs")).is_ok_and(|s| !s.trim().is_empty()) {
                // Not busy with processes (a child left, or no cgroup at all): give up on it.
                if fs::remove_dir(&p).is_ok() {
                    *removed += 1;
                }
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

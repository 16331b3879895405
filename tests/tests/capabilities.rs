//! The observer with only the capabilities the DaemonSet grants (read from the rendered manifest,
//! `kubectl kustomize deploy/base`, never repeated here), started under `capsh` with every other
//! capability dropped from its bounding set, as a container runtime does: every probe attaches and
//! a simulated pod's syscalls, TCP connections and HTTP requests are counted exactly. Without any
//! one of those capabilities the observer does not start, and says in one line which one is
//! missing and what for. Run as root by `cargo xtask test`.
//!
//! Debian's and Ubuntu's kernels refuse perf_event_open (classic tracepoints) to anything but
//! CAP_SYS_ADMIN when `kernel.perf_event_paranoid` is above 2, and Debian's default is 3: nodes with
//! such kernels need `kernel.perf_event_paranoid=2` (README, Deployment). The first test sets that
//! where it is higher, as such a node would have it; the last one shows that at 3 the observer's
//! start-up check says so exactly when the kernel enforces it.

use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    time::Duration,
};

use observer_tests::{
    manifest::{added_caps, capsh_keeping, container, daemonset, decode, for_this_kernel},
    observer::{binary, Observer},
    require_root,
    workload::{every_default_probe_is_up_but, pods_are_counted_exactly},
};

const WAIT: Duration = Duration::from_secs(10);

/// The tests of this file one at a time: one of them changes a sysctl of the whole machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const PARANOID: &str = "/proc/sys/kernel/perf_event_paranoid";

/// Sets `kernel.perf_event_paranoid` and puts the old value back when dropped.
struct Paranoid(String);

impl Paranoid {
    fn set(v: i32) -> Paranoid {
        let old = std::fs::read_to_string(PARANOID).unwrap();
        std::fs::write(PARANOID, v.to_string()).unwrap();
        Paranoid(old.trim().to_string())
    }
}

impl Drop for Paranoid {
    fn drop(&mut self) {
        let _ = std::fs::write(PARANOID, &self.0);
    }
}

fn paranoid() -> i32 {
    std::fs::read_to_string(PARANOID)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The capabilities the DaemonSet for this kernel adds, as capsh names them.
fn manifest_caps() -> BTreeSet<String> {
    added_caps(&container(&daemonset(for_this_kernel())))
}

#[test]
fn with_only_the_manifests_capabilities_everything_works() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    println!("kernel.perf_event_paranoid is {}", paranoid());
    exact_with_manifest_caps();
}

/// At `kernel.perf_event_paranoid` 3 and 4 (Debian's and Ubuntu's defaults, where their kernels
/// give `perf_event_open` only to CAP_SYS_ADMIN), with exactly the manifest's capabilities: every
/// figure exact, and every default probe up but, where the kernel enforces the level, the tls
/// probe, whose uprobes attach through `perf_event_open`: then the start-up log says, as an
/// info line, that it is refused and needed by the tls probe only, and the tls probe's line
/// says it is down and why.
#[test]
fn every_default_probe_works_at_perf_event_paranoid_3_and_4() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for level in [3, 4] {
        let _paranoid = Paranoid::set(level);
        println!("kernel.perf_event_paranoid {level}");
        let log = exact_with_manifest_caps();
        if log.contains("perf_event_open is refused") {
            assert!(
                log.contains(&format!("kernel.perf_event_paranoid is {level}")),
                "{log}"
            );
            assert!(log.contains("only the tls probe needs it"), "{log}");
            let down: Vec<&str> = log.lines().filter(|l| l.contains("probe down")).collect();
            assert_eq!(down.len(), 1, "{log}");
            assert!(
                down[0].contains("probe=\"tls\"")
                    && down[0].contains("uprobes attach through perf_event_open, which is refused")
                    && down[0].contains(&format!("kernel.perf_event_paranoid is {level}")),
                "{log}"
            );
        }
    }
}

/// The observer under capsh with exactly the manifest's capabilities: every default probe up,
/// a pod's syscalls, HTTP requests and TCP connections exact. Returns its log.
fn exact_with_manifest_caps() -> String {
    let keep = manifest_caps();
    let wrapper = capsh_keeping(&keep);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();

    let obs = Observer::start_wrapped(&wrapper, &[]).unwrap();

    // It runs with exactly the manifest's capabilities.
    let status = std::fs::read_to_string(format!("/proc/{}/status", obs.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(decode(&field("CapEff:")), keep, "effective");
    assert_eq!(decode(&field("CapBnd:")), keep, "bounding");

    // Uprobes (the tls probe) need perf_event_open, which kernels that enforce
    // `perf_event_paranoid` above 2 refuse here.
    let log = obs.stderr.lock().unwrap().clone();
    let refused = log.contains("perf_event_open is refused");
    let down: &[&str] = if refused { &["tls"] } else { &[] };
    every_default_probe_is_up_but(&obs.scrape().unwrap(), down);
    pods_are_counted_exactly(&|cond| obs.scrape_until(WAIT, cond).unwrap());

    // Nothing it does needs more than the manifest grants: no feature is named as degraded.
    let log = obs.stderr.lock().unwrap().clone();
    assert!(!log.contains(" missing"), "{log}");
    assert!(!log.contains("WARN"), "{log}");
    if !refused {
        assert!(!log.contains("probe down"), "{log}");
    }
    assert!(obs.stop().unwrap().success());
    log
}

#[test]
fn without_any_one_of_them_one_line_names_it_and_the_observer_exits() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let keep = manifest_caps();
    for missing in &keep {
        let mut fewer = keep.clone();
        fewer.remove(missing);
        let wrapper = capsh_keeping(&fewer);
        let out = Command::new(&wrapper[0])
            .args(&wrapper[1..])
            .arg(binary())
            .args([
                "--metrics-addr",
                "127.0.0.1:0",
                "--grpc-addr",
                "127.0.0.1:0",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "without {missing}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "without {missing}: {err}");
        let name = missing.to_ascii_uppercase();
        assert!(lines[0].contains(&format!("{name} (to ")), "{err}");
        for other in &fewer {
            assert!(
                !lines[0].contains(&other.to_ascii_uppercase()),
                "{other} is there: {err}"
            );
        }
    }
}

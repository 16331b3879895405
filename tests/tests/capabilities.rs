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
    collections::{BTreeMap, BTreeSet},
    process::{Command, Stdio},
    time::Duration,
};

use observer_tests::{
    gotls,
    manifest::{added_caps, capsh_keeping, container, daemonset, decode, for_this_kernel, kernel},
    metrics::{matching, Sample},
    net::Bridge,
    observer::{binary, Observer},
    pod::Pod,
    require_root,
    workload::{every_default_probe_is_up_but, pods_are_counted_exactly, uprobes_refused},
    TempDir,
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
    // `perf_event_paranoid` above 2 refuse here, and current kernels create them only for
    // CAP_SYS_ADMIN, which the base does not grant (deploy/overlays/tls does).
    let log = obs.stderr.lock().unwrap().clone();
    let refused = uprobes_refused(&log);
    let down: &[&str] = if refused { &["tls"] } else { &[] };
    every_default_probe_is_up_but(&obs.scrape().unwrap(), down);
    pods_are_counted_exactly(&|cond| obs.scrape_until(WAIT, cond).unwrap());

    // Nothing it does needs more than the manifest grants: no feature is named as degraded
    // but, on a kernel that creates uprobes for CAP_PERFMON, the tls probe's discovery
    // without CAP_SYS_PTRACE (which only deploy/overlays/tls grants).
    let log = obs.stderr.lock().unwrap().clone();
    assert!(!log.contains(" missing"), "{log}");
    let warnings: Vec<&str> = (log.lines())
        .filter(|l| l.contains("WARN") && !l.contains("CAP_SYS_PTRACE not held: the tls probe"))
        .collect();
    assert!(warnings.is_empty(), "{log}");
    if !refused {
        assert!(!log.contains("probe down"), "{log}");
    }
    assert!(obs.stop().unwrap().success());
    log
}

/// A Go HTTPS server started after the observer, as root with every capability (more than the
/// observer holds: its memory maps and files are readable only with CAP_SYS_PTRACE), is found
/// at its exec and probed, and a Go client's requests to it, in the same pod, are counted
/// exactly on both sides.
fn tls_is_decrypted(obs: &Observer) {
    let bridge = Bridge::new().unwrap();
    let dir = TempDir::new("observer-caps-go").unwrap();
    let go = gotls::build(&dir);
    let mut pod = Pod::new(&bridge).unwrap();
    let log = dir.join("go.log");
    let args = gotls::serve_args(&dir, 8443, &log);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    pod.spawn(&go, &args).unwrap();
    pod.wait_listening(8443).unwrap();
    gotls::wait_probed(obs, "gotls");
    let base = format!("https://{}:8443", pod.ip);
    let out = pod
        .run(&go, &["get", &base, "h1", "2", "3", "200,404,201"])
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"200":6,"201":6,"404":6}"#,
        "the client's own count"
    );
    let per_status = |s: &[Sample], side: &str| -> BTreeMap<String, u64> {
        let name = format!("http_{side}_request_duration_seconds_count");
        let mut t = BTreeMap::new();
        for x in matching(
            s,
            &name,
            &[("k8s_pod_uid", &pod.uid), ("url_scheme", "https")],
        ) {
            *t.entry(x.labels["http_response_status_code"].clone())
                .or_default() += x.value as u64;
        }
        t.retain(|_, v| *v > 0);
        t
    };
    let want: BTreeMap<String, u64> = [("200", 6), ("201", 6), ("404", 6)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    let s = obs
        .scrape_until(WAIT, |s| {
            per_status(s, "server").values().sum::<u64>() >= 18
                && per_status(s, "client").values().sum::<u64>() >= 18
        })
        .unwrap();
    assert_eq!(per_status(&s, "server"), want, "server side");
    assert_eq!(per_status(&s, "client"), want, "client side");
}

/// The capabilities of the DaemonSet variant for TLS (`deploy/overlays/tls`: the base plus
/// CAP_SYS_ADMIN and CAP_SYS_PTRACE), with CAP_SYS_RESOURCE before 5.11 as that kernel's
/// variant adds.
fn tls_variant_caps() -> BTreeSet<String> {
    let mut keep = added_caps(&container(&daemonset("overlays/tls")));
    if kernel() < (5, 11) {
        keep.insert("cap_sys_resource".into());
    }
    keep
}

/// With the TLS variant's capabilities every default probe is up, the tls probe included
/// (this kernel's `perf_event_paranoid` allowing), and a Go HTTPS server is decrypted.
#[test]
fn with_the_tls_variants_capabilities_the_tls_probe_decrypts() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let keep = tls_variant_caps();
    let wrapper = capsh_keeping(&keep);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let obs = Observer::start_wrapped(&wrapper, &[]).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", obs.pid())).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap();
    assert_eq!(decode(eff.trim()), keep, "effective");
    every_default_probe_is_up_but(&obs.scrape().unwrap(), &[]);
    tls_is_decrypted(&obs);
    let log = obs.stderr.lock().unwrap().clone();
    assert!(!log.contains("WARN"), "{log}");
    assert!(!log.contains("probe down"), "{log}");
    assert!(obs.stop().unwrap().success());
}

/// The TLS variant without CAP_SYS_PTRACE (a cluster that grants CAP_SYS_ADMIN only): the
/// observer runs, every default probe up, and one warning says what the tls probe loses.
#[test]
fn the_tls_variant_without_sys_ptrace_warns_about_the_tls_probe() {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut keep = tls_variant_caps();
    assert!(keep.remove("cap_sys_ptrace"), "the variant grants it");
    let wrapper = capsh_keeping(&keep);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let obs = Observer::start_wrapped(&wrapper, &[]).unwrap();
    every_default_probe_is_up_but(&obs.scrape().unwrap(), &[]);
    let log = obs.stderr.lock().unwrap().clone();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("CAP_SYS_PTRACE not held: the tls probe cannot read"),
        "{log}"
    );
    assert!(obs.stop().unwrap().success());
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

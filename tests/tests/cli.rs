//! The observer's behaviour on bad input and missing privileges.

use std::process::Command;

use observer_tests::{observer::binary, require_root};

#[test]
fn bad_flags_fail_with_a_clear_error() {
    for (args, needle) in [
        (vec!["--probes", "syscalls,bogus"], "bogus"),
        (vec!["--metrics-addr", "not-an-address"], "not-an-address"),
        (vec!["--cgroup-grace", "five minutes"], "five minutes"),
        (vec!["--conn-table-size", "3"], "between 64"),
    ] {
        let out = Command::new(binary()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn without_privileges_one_line_names_what_is_missing() {
    require_root();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(binary())
        .args(["--metrics-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("CAP_BPF") && lines[0].contains("CAP_PERFMON"),
        "{err}"
    );
}

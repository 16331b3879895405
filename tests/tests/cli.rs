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
        // A negative number is the flag's value, and the error names the flag.
        (vec!["--http-route-cap", "-1"], "--http-route-cap"),
        (vec!["--l7-table-size", "-5"], "--l7-table-size"),
        // A kubeconfig that is not there is a configuration error too, found before anything
        // is loaded.
        (
            vec![
                "--kubernetes",
                "on",
                "--kubeconfig",
                "/nonexistent/kubeconfig",
            ],
            "/nonexistent/kubeconfig",
        ),
    ] {
        let out = Command::new(binary())
            .args(&args)
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error:") || first.starts_with("observer:"),
            "{err}"
        );
        assert!(!err.contains("probe attached"), "nothing was loaded: {err}");
    }
}

#[test]
fn environment_variables_set_flags_as_the_flags_do() {
    // (subcommand, flag, its variable, a value it refuses): the same refusal, word for word,
    // whether the value comes from the flag or from the variable, for the daemon and the clients.
    for (sub, flag, var, value) in [
        (
            None,
            "--metrics-addr",
            "OBSERVER_METRICS_ADDR",
            "not-an-address",
        ),
        (None, "--hooks", "OBSERVER_HOOKS", "kprobe"),
        (Some("top"), "--window", "OBSERVER_WINDOW", "3"),
        (Some("topology"), "--output", "OBSERVER_OUTPUT", "yaml"),
        (Some("tail"), "--status", "OBSERVER_STATUS", "99"),
        (
            Some("tail"),
            "--min-latency-ms",
            "OBSERVER_MIN_LATENCY_MS",
            "soon",
        ),
        (Some("tail"), "--side", "OBSERVER_SIDE", "both"),
        (Some("tail"), "--count", "OBSERVER_COUNT", "many"),
    ] {
        let run = |args: &[&str], env: Option<(&str, &str)>| {
            let mut c = Command::new(binary());
            c.args(sub).args(args).env_remove(var);
            if let Some((k, v)) = env {
                c.env(k, v);
            }
            c.output().unwrap()
        };
        let by_flag = run(&[flag, value], None);
        let by_env = run(&[], Some((var, value)));
        let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(by_flag.status.code(), Some(2), "{flag} {value}");
        assert_eq!(
            by_env.status.code(),
            Some(2),
            "{var}={value}: {}",
            err(&by_env)
        );
        assert!(
            err(&by_env).contains(&format!("'{value}'")),
            "{var}: {}",
            err(&by_env)
        );
        assert_eq!(err(&by_env), err(&by_flag), "{var} against {flag}");
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

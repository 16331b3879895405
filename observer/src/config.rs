//! Command-line flags (each also read from an `OBSERVER_*` environment variable), validated once
//! into an immutable [`Config`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

use crate::error::StartError;

/// eBPF node observer: per-cgroup syscall and TCP figures with pod identity, served to
/// Prometheus. Needs root (or CAP_BPF, CAP_PERFMON, CAP_SYS_RESOURCE and CAP_SYS_ADMIN for
/// mounting tracefs).
#[derive(Debug, Parser)]
#[command(name = "observer", version, about)]
pub struct Args {
    /// Address of the HTTP endpoint serving /metrics, /healthz and /readyz.
    #[arg(long, env = "OBSERVER_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,

    /// Address of the gRPC query API (observer.v1.Observer, with health and reflection); the
    /// `top`, `topology` and `tail` subcommands connect to it too.
    #[arg(long, env = "OBSERVER_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Probes to run, comma-separated.
    #[arg(
        long,
        env = "OBSERVER_PROBES",
        value_delimiter = ',',
        default_value = "syscalls,tcp,http,http2,redis,postgresql,mysql,memcached,tls,lifecycle"
    )]
    pub probes: Vec<ProbeKind>,

    /// A request without response after this long is counted with error_type="timeout".
    #[arg(long, env = "OBSERVER_HTTP_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http_request_timeout: Duration,

    /// APDEX threshold T of every service (seconds, e.g. 0.5, or a duration like 200ms).
    #[arg(long, env = "OBSERVER_APDEX_THRESHOLD", default_value = "0.5", value_parser = parse_seconds)]
    pub apdex_threshold: f64,

    /// APDEX threshold of one service, SERVICE=T (repeat or comma-separate), e.g. checkout=0.2.
    #[arg(long = "apdex-threshold-for", env = "OBSERVER_APDEX_THRESHOLD_FOR", value_delimiter = ',', value_parser = parse_service_threshold)]
    pub apdex_threshold_for: Vec<(String, f64)>,

    /// Distinct http_route values (and targets of other protocols) per service; further ones
    /// are counted under /{overflow}.
    #[arg(
        long,
        env = "OBSERVER_HTTP_ROUTE_CAP",
        default_value_t = 500,
        allow_negative_numbers = true
    )]
    pub http_route_cap: usize,

    /// Restrict the syscall probe to these cgroup subtrees (paths under the cgroup v2 mount,
    /// e.g. kubepods.slice; comma-separated, at most 16). Default: every cgroup.
    #[arg(
        long = "syscalls-cgroup",
        env = "OBSERVER_SYSCALLS_CGROUPS",
        value_delimiter = ','
    )]
    pub syscalls_cgroups: Vec<PathBuf>,

    /// How long the series of a deleted cgroup stay before they are dropped (e.g. 30s, 5m).
    #[arg(long, env = "OBSERVER_CGROUP_GRACE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub cgroup_grace: Duration,

    /// Kernel BTF used to locate struct fields and BTF tracepoints.
    #[arg(long, env = "OBSERVER_BTF", default_value = "/sys/kernel/btf/vmlinux")]
    pub btf: PathBuf,

    /// Hook type for probes that can use either: auto picks BTF tracepoints when the kernel
    /// has them, raw tracepoints otherwise.
    #[arg(long, env = "OBSERVER_HOOKS", default_value = "auto")]
    pub hooks: HookPreference,

    /// Capacity of the in-kernel table of tracked TCP connections.
    #[arg(
        long,
        env = "OBSERVER_CONN_TABLE_SIZE",
        default_value_t = 65536,
        allow_negative_numbers = true
    )]
    pub conn_table_size: u32,

    /// Capacity of the in-kernel table of connections an L7 protocol follows (344 bytes each,
    /// preallocated).
    #[arg(
        long,
        env = "OBSERVER_L7_TABLE_SIZE",
        default_value_t = 16384,
        allow_negative_numbers = true
    )]
    pub l7_table_size: u32,

    /// Capacity of the in-kernel (cgroup, syscall) aggregation table.
    #[arg(
        long,
        env = "OBSERVER_SYSCALL_TABLE_SIZE",
        default_value_t = 16384,
        allow_negative_numbers = true
    )]
    pub syscall_table_size: u32,

    /// Log filter (tracing EnvFilter syntax), e.g. info or observer=debug.
    #[arg(long, env = "OBSERVER_LOG", default_value = "info")]
    pub log: String,

    /// Pod names, workloads and events from the Kubernetes API: auto = on inside a cluster
    /// (KUBERNETES_SERVICE_HOST set) or when --kubeconfig is given, off otherwise.
    #[arg(long, env = "OBSERVER_KUBERNETES", default_value = "auto")]
    pub kubernetes: KubernetesMode,

    /// Kubeconfig file to reach the API with (default: the in-cluster service account).
    #[arg(long, env = "OBSERVER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// This node's name, as the pods' spec.nodeName has it (set it from the downward API,
    /// fieldRef spec.nodeName). Default: the host name.
    #[arg(long, env = "OBSERVER_NODE_NAME")]
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KubernetesMode {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProbeKind {
    /// Every syscall: count, errors by errno, latency (per cgroup).
    Syscalls,
    /// TCP connections, failures, retransmits, bytes and RTT (per cgroup).
    Tcp,
    /// HTTP/1.x requests, server and client side: rate, status, route, duration, APDEX.
    Http,
    /// HTTP/2 requests (cleartext) and gRPC calls over them, server and client side.
    Http2,
    /// Redis commands (RESP2/RESP3), client and server side: rate, errors, duration.
    Redis,
    /// PostgreSQL statements (protocol v3, plaintext), client and server side.
    Postgresql,
    /// MySQL and MariaDB commands (client/server protocol, plaintext), client and server side.
    Mysql,
    /// Memcached commands (text protocol), client and server side.
    Memcached,
    /// DNS lookups over UDP (port 53), client and server side (not in the default set).
    Dns,
    /// The plaintext of TLS connections (OpenSSL-compatible libraries, by uprobes), parsed as
    /// the L7 probes that are on parse it.
    Tls,
    /// OOM kills and exits of main processes (exit code or signal), per container.
    Lifecycle,
    /// Empty programs on syscall entry and exit: the benchmark's cost floor.
    #[value(hide = true)]
    EmptyHooks,
    /// A program the verifier rejects: shows that a load failure is reported with the
    /// verifier log and turns off only its own probe.
    #[value(hide = true)]
    VerifierSelftest,
}

impl ProbeKind {
    /// The L7 protocol a probe turns on (its `Spec::name`).
    pub fn l7_name(self) -> Option<&'static str> {
        match self {
            ProbeKind::Http => Some("http"),
            ProbeKind::Http2 => Some("http2"),
            ProbeKind::Redis => Some("redis"),
            ProbeKind::Postgresql => Some("postgresql"),
            ProbeKind::Mysql => Some("mysql"),
            ProbeKind::Memcached => Some("memcached"),
            ProbeKind::Dns => Some("dns"),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HookPreference {
    Auto,
    Btf,
    Raw,
}

/// Seconds as a number (`0.5`) or a duration (`500ms`); positive and at most an hour.
fn parse_seconds(s: &str) -> Result<f64, String> {
    let secs = match s.trim().parse::<f64>() {
        Ok(v) => v,
        Err(_) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("{s:?}: not seconds or a duration ({e})"))?
            .as_secs_f64(),
    };
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!(
            "{s:?}: must be more than 0 and at most 3600 seconds"
        ));
    }
    Ok(secs)
}

/// `SERVICE=T`.
fn parse_service_threshold(s: &str) -> Result<(String, f64), String> {
    let (name, t) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected SERVICE=SECONDS"))?;
    if name.trim().is_empty() {
        return Err(format!("{s:?}: empty service name"));
    }
    Ok((name.trim().to_string(), parse_seconds(t)?))
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub metrics_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub syscalls: bool,
    pub tcp: bool,
    /// The L7 protocols to follow.
    pub l7: Vec<&'static crate::l7::Spec>,
    pub lifecycle: bool,
    /// TLS libraries' plaintext goes through the L7 path.
    pub tls: bool,
    pub http_request_timeout: Duration,
    pub apdex_threshold: f64,
    pub apdex_threshold_for: Vec<(String, f64)>,
    pub http_route_cap: usize,
    pub empty_hooks: bool,
    pub verifier_selftest: bool,
    pub syscalls_cgroups: Vec<PathBuf>,
    pub cgroup_grace: Duration,
    pub btf: PathBuf,
    pub hooks: HookPreference,
    pub conn_table_size: u32,
    pub l7_table_size: u32,
    pub syscall_table_size: u32,
    /// Kubernetes metadata, when on.
    pub kubernetes: Option<crate::identity::kube::KubeSettings>,
}

/// Whether and how to reach the Kubernetes API. `in_cluster`: KUBERNETES_SERVICE_HOST is set.
fn kubernetes_settings(
    a: &Args,
    in_cluster: bool,
    hostname: impl FnOnce() -> String,
) -> Result<Option<crate::identity::kube::KubeSettings>, StartError> {
    // KUBECONFIG as kubectl has it, unless the flag (or OBSERVER_KUBECONFIG) says otherwise.
    let kubeconfig = a.kubeconfig.clone().or_else(|| {
        std::env::var_os("KUBECONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    let on = match a.kubernetes {
        KubernetesMode::Off => false,
        KubernetesMode::On => true,
        KubernetesMode::Auto => in_cluster || a.kubeconfig.is_some(),
    };
    if !on {
        return Ok(None);
    }
    if kubeconfig.is_none() && !in_cluster {
        return Err(StartError::Config(
            "--kubernetes on needs --kubeconfig (or KUBECONFIG) outside a cluster".into(),
        ));
    }
    if let Some(k) = &kubeconfig {
        // A kubeconfig that cannot be read is a configuration error, found before anything
        // is loaded.
        if let Err(e) = std::fs::File::open(k) {
            return Err(StartError::Config(format!(
                "--kubeconfig {}: {e}",
                k.display()
            )));
        }
    }
    let node_name = a
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(hostname);
    Ok(Some(crate::identity::kube::KubeSettings {
        kubeconfig: if in_cluster && a.kubeconfig.is_none() {
            None
        } else {
            kubeconfig
        },
        node_name,
        // The names of a deleted pod's series are kept as long as the series are.
        keep_deleted: a.cgroup_grace + Duration::from_secs(30),
    }))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

impl TryFrom<Args> for Config {
    type Error = StartError;

    fn try_from(a: Args) -> Result<Self, StartError> {
        if a.syscalls_cgroups.len() > observer_common::MAX_CGROUP_FILTERS as usize {
            return Err(StartError::Config(format!(
                "--syscalls-cgroup takes at most {} cgroups, got {}",
                observer_common::MAX_CGROUP_FILTERS,
                a.syscalls_cgroups.len()
            )));
        }
        for (name, v) in [
            ("--conn-table-size", a.conn_table_size),
            ("--l7-table-size", a.l7_table_size),
            ("--syscall-table-size", a.syscall_table_size),
        ] {
            if !(64..=1 << 22).contains(&v) {
                return Err(StartError::Config(format!(
                    "{name} must be between 64 and 4194304, got {v}"
                )));
            }
        }
        if a.http_route_cap == 0 || a.http_route_cap > 100_000 {
            return Err(StartError::Config(format!(
                "--http-route-cap must be between 1 and 100000, got {}",
                a.http_route_cap
            )));
        }
        if a.http_request_timeout < Duration::from_millis(100) {
            return Err(StartError::Config(
                "--http-request-timeout must be at least 100ms".into(),
            ));
        }
        if a.probes.is_empty() {
            return Err(StartError::Config("--probes lists no probe".into()));
        }
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty());
        let kubernetes = kubernetes_settings(&a, in_cluster, hostname)?;
        Ok(Config {
            metrics_addr: a.metrics_addr,
            grpc_addr: a.grpc_addr,
            syscalls: a.probes.contains(&ProbeKind::Syscalls),
            tcp: a.probes.contains(&ProbeKind::Tcp),
            l7: crate::l7::SPECS
                .iter()
                .copied()
                .filter(|s| a.probes.iter().any(|p| p.l7_name() == Some(s.name)))
                .collect(),
            lifecycle: a.probes.contains(&ProbeKind::Lifecycle),
            tls: a.probes.contains(&ProbeKind::Tls),
            http_request_timeout: a.http_request_timeout,
            apdex_threshold: a.apdex_threshold,
            apdex_threshold_for: a.apdex_threshold_for,
            http_route_cap: a.http_route_cap,
            empty_hooks: a.probes.contains(&ProbeKind::EmptyHooks),
            verifier_selftest: a.probes.contains(&ProbeKind::VerifierSelftest),
            syscalls_cgroups: a.syscalls_cgroups,
            cgroup_grace: a.cgroup_grace,
            btf: a.btf,
            hooks: a.hooks,
            conn_table_size: a.conn_table_size,
            l7_table_size: a.l7_table_size,
            syscall_table_size: a.syscall_table_size,
            kubernetes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let a = Args::try_parse_from(std::iter::once("observer").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Config::try_from(a).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:9464");
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:50051");
        assert!(c.syscalls && c.tcp && c.lifecycle);
        assert_eq!(
            c.l7.iter().map(|s| s.name).collect::<Vec<_>>(),
            ["http", "redis", "postgresql", "mysql", "memcached", "http2"]
        );
        assert_eq!(c.apdex_threshold, 0.5);
        assert_eq!(c.http_request_timeout, Duration::from_secs(30));
        assert_eq!(c.cgroup_grace, Duration::from_secs(300));
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(&["--probes", "syscalls,bogus"])
            .unwrap_err()
            .contains("bogus"));
        assert!(parse(&["--metrics-addr", "nope"]).is_err());
        assert!(parse(&["--grpc-addr", "nope"]).is_err());
        assert!(parse(&["--cgroup-grace", "5 parsecs"]).is_err());
        assert!(parse(&["--conn-table-size", "1"])
            .unwrap_err()
            .contains("between"));
        let many: Vec<String> = (0..17).map(|i| format!("c{i}")).collect();
        let joined = many.join(",");
        assert!(parse(&["--syscalls-cgroup", &joined])
            .unwrap_err()
            .contains("at most 16"));
    }

    #[test]
    fn apdex_thresholds() {
        let c = parse(&[
            "--apdex-threshold",
            "200ms",
            "--apdex-threshold-for",
            "a=0.1,b=2s",
        ])
        .unwrap();
        assert_eq!(c.apdex_threshold, 0.2);
        assert_eq!(
            c.apdex_threshold_for,
            vec![("a".into(), 0.1), ("b".into(), 2.0)]
        );
        assert!(parse(&["--apdex-threshold", "0"]).is_err());
        assert!(parse(&["--apdex-threshold-for", "nameonly"])
            .unwrap_err()
            .contains("SERVICE=SECONDS"));
        assert!(parse(&["--http-route-cap", "0"])
            .unwrap_err()
            .contains("between"));
        // A negative number is a value of the flag, and its error names the flag.
        let e = parse(&["--http-route-cap", "-1"]).unwrap_err();
        assert!(e.contains("--http-route-cap"), "{e}");
        let e = parse(&["--l7-table-size", "-5"]).unwrap_err();
        assert!(e.contains("--l7-table-size"), "{e}");
    }

    #[test]
    fn kubernetes_modes() {
        let args = |v: &[&str]| {
            Args::try_parse_from(std::iter::once("observer").chain(v.iter().copied())).unwrap()
        };
        let host = || "node-a".to_string();
        assert!(
            kubernetes_settings(&args(&["--kubernetes", "off"]), true, host)
                .unwrap()
                .is_none()
        );
        let k = kubernetes_settings(&args(&[]), true, host)
            .unwrap()
            .unwrap();
        assert_eq!((k.kubeconfig, k.node_name.as_str()), (None, "node-a"));
        let file = std::env::temp_dir().join(format!("observer-kubeconfig-{}", std::process::id()));
        std::fs::write(&file, "apiVersion: v1\n").unwrap();
        let path = file.to_str().unwrap();
        let k = kubernetes_settings(
            &args(&["--kubeconfig", path, "--node-name", "n1"]),
            false,
            host,
        )
        .unwrap()
        .unwrap();
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            (k.kubeconfig.unwrap().to_str(), k.node_name.as_str()),
            (Some(path), "n1")
        );
        assert_eq!(k.keep_deleted, Duration::from_secs(330));
        if std::env::var_os("KUBECONFIG").is_none() {
            assert!(kubernetes_settings(&args(&[]), false, host)
                .unwrap()
                .is_none());
            assert!(kubernetes_settings(&args(&["--kubernetes", "on"]), false, host).is_err());
        }
        let e = kubernetes_settings(
            &args(&[
                "--kubernetes",
                "on",
                "--kubeconfig",
                "/nonexistent/kubeconfig",
            ]),
            false,
            host,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/kubeconfig"), "{e}");
    }

    #[test]
    fn probes_subset() {
        let c = parse(&["--probes", "tcp"]).unwrap();
        assert!(!c.syscalls && c.tcp);
    }
}

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

    /// Probes to run, comma-separated.
    #[arg(
        long,
        env = "OBSERVER_PROBES",
        value_delimiter = ',',
        default_value = "syscalls,tcp"
    )]
    pub probes: Vec<ProbeKind>,

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
    #[arg(long, env = "OBSERVER_CONN_TABLE_SIZE", default_value_t = 65536)]
    pub conn_table_size: u32,

    /// Capacity of the in-kernel (cgroup, syscall) aggregation table.
    #[arg(long, env = "OBSERVER_SYSCALL_TABLE_SIZE", default_value_t = 16384)]
    pub syscall_table_size: u32,

    /// Log filter (tracing EnvFilter syntax), e.g. info or observer=debug.
    #[arg(long, env = "OBSERVER_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProbeKind {
    /// Every syscall: count, errors by errno, latency (per cgroup).
    Syscalls,
    /// TCP connections, failures, retransmits, bytes and RTT (per cgroup).
    Tcp,
    /// Empty programs on syscall entry and exit: the benchmark's cost floor.
    #[value(hide = true)]
    EmptyHooks,
    /// A program the verifier rejects: shows that a load failure is reported with the
    /// verifier log and turns off only its own probe.
    #[value(hide = true)]
    VerifierSelftest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HookPreference {
    Auto,
    Btf,
    Raw,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub metrics_addr: SocketAddr,
    pub syscalls: bool,
    pub tcp: bool,
    pub empty_hooks: bool,
    pub verifier_selftest: bool,
    pub syscalls_cgroups: Vec<PathBuf>,
    pub cgroup_grace: Duration,
    pub btf: PathBuf,
    pub hooks: HookPreference,
    pub conn_table_size: u32,
    pub syscall_table_size: u32,
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
            ("--syscall-table-size", a.syscall_table_size),
        ] {
            if !(64..=1 << 22).contains(&v) {
                return Err(StartError::Config(format!(
                    "{name} must be between 64 and 4194304, got {v}"
                )));
            }
        }
        if a.probes.is_empty() {
            return Err(StartError::Config("--probes lists no probe".into()));
        }
        Ok(Config {
            metrics_addr: a.metrics_addr,
            syscalls: a.probes.contains(&ProbeKind::Syscalls),
            tcp: a.probes.contains(&ProbeKind::Tcp),
            empty_hooks: a.probes.contains(&ProbeKind::EmptyHooks),
            verifier_selftest: a.probes.contains(&ProbeKind::VerifierSelftest),
            syscalls_cgroups: a.syscalls_cgroups,
            cgroup_grace: a.cgroup_grace,
            btf: a.btf,
            hooks: a.hooks,
            conn_table_size: a.conn_table_size,
            syscall_table_size: a.syscall_table_size,
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
        assert!(c.syscalls && c.tcp);
        assert_eq!(c.cgroup_grace, Duration::from_secs(300));
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(&["--probes", "syscalls,bogus"])
            .unwrap_err()
            .contains("bogus"));
        assert!(parse(&["--metrics-addr", "nope"]).is_err());
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
    fn probes_subset() {
        let c = parse(&["--probes", "tcp"]).unwrap();
        assert!(!c.syscalls && c.tcp);
    }
}

//! Error types of the observer's subsystems.

use std::path::PathBuf;

/// Why a probe (or the data it needs) could not be set up. A probe error turns that probe off;
/// the others keep running.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("BTF: {what}: {reason}")]
    Btf { what: String, reason: String },
    #[error("tracefs: {0}")]
    Tracefs(String),
    /// aya's load error already carries the verifier output; `verifier_log` keeps it apart.
    #[error("program {program}: {source}")]
    Program {
        program: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
        verifier_log: Option<String>,
    },
    /// The node's own policy refuses what the probe needs (`perf_event_paranoid`, a seccomp
    /// profile): a choice of the node's, said at start, not a fault of the observer's.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Other(String),
}

/// Errors that stop the observer at start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the observer needs {missing} (run as root, or grant these capabilities)")]
    Privileges { missing: String },
    #[error("{0}")]
    Seccomp(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("cgroup {path}: {reason}")]
    Cgroup { path: PathBuf, reason: String },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("no probe could be attached: {0}")]
    NoProbe(String),
    #[error("serving on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

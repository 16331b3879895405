//! Reads the lifecycle probe's ring buffer (exits of main processes, OOM kills) and publishes
//! them as lifecycle events. The records are rare, so every one wakes this task at once: the
//! container's cgroup is still there to be named when the record is read.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use observer_common::{ExitRecord, EXIT_MAIN, EXIT_OOM_KILLED};

use super::{
    aggregate::Pipeline,
    events::{EventKind, LifecycleEvent},
    monotonic_ns,
};

/// How a process ended, decoded from the kernel's exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// exit() with this status.
    Exited(u8),
    /// Killed by this signal; true when it dumped core.
    Signaled(u8, bool),
}

impl Ending {
    /// `task->exit_code` is what wait(2) reports: status in bits 8-15, the signal in bits
    /// 0-6, the core-dump flag in bit 7.
    pub fn from_code(code: u32) -> Self {
        let sig = (code & 0x7f) as u8;
        if sig == 0 {
            Ending::Exited(((code >> 8) & 0xff) as u8)
        } else {
            Ending::Signaled(sig, code & 0x80 != 0)
        }
    }
}

/// The name of a signal number (x86_64/generic Linux numbering).
pub fn signal_name(sig: u8) -> String {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    NAMES
        .get(sig as usize)
        .filter(|n| !n.is_empty())
        .map(|n| n.to_string())
        .unwrap_or_else(|| format!("SIG{sig}"))
}

fn comm(c: &[u8; 16]) -> String {
    let end = c.iter().position(|b| *b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// The events one record stands for (an OOM kill and, for a main process, its exit).
pub fn events_of(
    rec: &ExitRecord,
    identity: Arc<crate::identity::Identity>,
) -> Vec<LifecycleEvent> {
    // The record's kernel timestamp, as wall-clock time.
    let age = Duration::from_nanos(monotonic_ns().saturating_sub(rec.ts_ns));
    let time = SystemTime::now() - age;
    let name = comm(&rec.comm);
    let ending = Ending::from_code(rec.exit_code);
    let oom = rec.flags & EXIT_OOM_KILLED != 0;
    let mut base = BTreeMap::from([
        ("pid".to_string(), rec.tgid.to_string()),
        ("ppid".to_string(), rec.ppid.to_string()),
        ("comm".to_string(), name.clone()),
    ]);
    let who = if identity.k8s_pod_name.is_empty() {
        if identity.k8s_pod_uid.is_empty() {
            identity.service_name.clone()
        } else {
            format!("pod {}", identity.k8s_pod_uid)
        }
    } else {
        format!("{}/{}", identity.k8s_namespace_name, identity.k8s_pod_name)
    };
    let mut out = Vec::new();
    if oom {
        out.push(LifecycleEvent {
            kind: EventKind::OomKill,
            time,
            identity: identity.clone(),
            fields: base.clone(),
            message: format!("{who}: OOM killer killed {name} (pid {})", rec.tgid),
        });
    }
    if rec.flags & EXIT_MAIN != 0 {
        let (reason, what) = match ending {
            _ if oom => ("oom_killed", "was killed by the OOM killer".to_string()),
            Ending::Exited(code) => {
                base.insert("code".into(), code.to_string());
                ("exited", format!("exited with code {code}"))
            }
            Ending::Signaled(sig, core) => {
                base.insert("signal".into(), sig.to_string());
                base.insert("signal_name".into(), signal_name(sig));
                base.insert("core_dumped".into(), core.to_string());
                let c = if core { " (core dumped)" } else { "" };
                ("signaled", format!("was killed by {}{c}", signal_name(sig)))
            }
        };
        if let Ending::Signaled(sig, _) = ending {
            base.entry("signal".into()).or_insert(sig.to_string());
        }
        base.insert("reason".into(), reason.into());
        out.push(LifecycleEvent {
            kind: EventKind::ProcessExit,
            time,
            identity,
            fields: base,
            message: format!("{who}: main process {name} (pid {}) {what}", rec.tgid),
        });
    }
    out
}

/// The reader of the lifecycle ring. The records are rare, so every one wakes it at once: the
/// container's cgroup is still there to be named when the record is read.
pub struct LifecycleReader {
    pipeline: Arc<Mutex<Pipeline>>,
}

impl LifecycleReader {
    pub fn new(pipeline: Arc<Mutex<Pipeline>>) -> Self {
        Self { pipeline }
    }
}

impl crate::ebpf::reader::Reader for LifecycleReader {
    type Fd = RingBuf<MapData>;

    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        let mut records = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<ExitRecord>() {
                // SAFETY: ExitRecord is plain integers written by the kernel with the same
                // #[repr(C)] layout; read_unaligned copies it out of the ring.
                records
                    .push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const ExitRecord) });
            }
        }
        if records.is_empty() {
            return;
        }
        let mut p = self.pipeline.lock().unwrap_or_else(|e| e.into_inner());
        for rec in &records {
            let id = p.identity_now(rec.cgroup_id, 0);
            for ev in events_of(rec, id) {
                tracing::info!(kind = ev.kind.as_str(), "{}", ev.message);
                p.lifecycle.publish(ev);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(code: u32, flags: u32) -> ExitRecord {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"java");
        ExitRecord {
            ts_ns: monotonic_ns(),
            cgroup_id: 7,
            tgid: 42,
            ppid: 1,
            exit_code: code,
            flags,
            comm,
        }
    }

    #[test]
    fn decodes_exit_codes() {
        assert_eq!(Ending::from_code(3 << 8), Ending::Exited(3));
        assert_eq!(Ending::from_code(0), Ending::Exited(0));
        assert_eq!(Ending::from_code(9), Ending::Signaled(9, false));
        assert_eq!(Ending::from_code(6 | 0x80), Ending::Signaled(6, true));
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(40), "SIG40");
    }

    #[test]
    fn oom_main_is_two_events_other_oom_one() {
        let id = Arc::new(crate::identity::Identity::default());
        let e = events_of(&rec(9, EXIT_OOM_KILLED | EXIT_MAIN), id.clone());
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].kind, EventKind::OomKill);
        assert_eq!(e[1].fields["reason"], "oom_killed");
        let e = events_of(&rec(9, EXIT_OOM_KILLED), id.clone());
        assert_eq!(e.len(), 1);
        let e = events_of(&rec(3 << 8, EXIT_MAIN), id.clone());
        assert_eq!(
            (e[0].fields["reason"].as_str(), e[0].fields["code"].as_str()),
            ("exited", "3")
        );
        let e = events_of(&rec(15, EXIT_MAIN), id);
        assert_eq!(e[0].fields["signal_name"], "SIGTERM");
        assert_eq!(e[0].fields["reason"], "signaled");
    }
}

//! What the process may do, checked before anything is loaded. Loading and attaching the
//! programs is essential: without it the observer stops with one line naming what is missing and
//! what for. Every other capability serves one feature; a missing one is a warning naming the
//! feature that degrades (or, when this kernel or node does not need it, an info line).
//!
//! The DaemonSet (`deploy/base/daemonset.yaml`) grants exactly the capabilities named here, each
//! with the same reason in a comment; `tests/tests/capabilities.rs` runs the observer with only
//! those.

use crate::error::StartError;

/// Capability numbers of linux/capability.h.
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What the check looks at, gathered once so that the decisions are a pure function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Effective capability set (bit N = capability N).
    pub effective: u64,
    /// Highest capability this kernel knows (`/proc/sys/kernel/cap_last_cap`): below 39 the
    /// kernel predates CAP_BPF and CAP_PERFMON (5.8).
    pub cap_last_cap: u32,
    /// Kernel release, major and minor.
    pub kernel: (u32, u32),
    /// Soft RLIMIT_MEMLOCK in bytes (`u64::MAX`: unlimited).
    pub memlock: u64,
    /// Whether this process may call perf_event_open, or the errno it got, and
    /// `kernel.perf_event_paranoid`: only the tls probe needs it (uprobes); every other one
    /// attaches through BPF links, BTF or raw tracepoints, which the start-up log says where it
    /// is refused.
    pub perf_event_open: Result<(), i32>,
    pub perf_event_paranoid: Option<i32>,
    /// Whether bpf(2) itself may be called (a one-entry map created and closed), or its errno,
    /// and whether a seccomp filter is on this process (`Seccomp: 2` in its status): a
    /// container runtime's default profile may refuse bpf(2) to all but CAP_SYS_ADMIN.
    pub bpf: Result<(), i32>,
    pub seccomp_filter: bool,
    /// The tls probe is asked for: it reads other processes' memory maps and files.
    pub tls: bool,
    /// Whether uprobes may be created (see [`try_uprobe`]).
    pub uprobe: Result<(), i32>,
}

/// A missing optional capability: what degrades, or a note that nothing does here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A feature is lost or at risk.
    Degraded(String),
    /// Not held, and not needed on this kernel or node.
    NotNeeded(String),
}

impl Host {
    /// This process on this kernel.
    pub fn current(tls: bool) -> Host {
        let status = procfs::process::Process::myself().and_then(|p| p.status());
        let effective = status.as_ref().map_or(0, |s| s.capeff);
        let seccomp_filter = status.as_ref().is_ok_and(|s| s.seccomp == Some(2));
        let cap_last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(CAP_BPF);
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut rlim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit fills the struct it is given.
        let memlock = if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rlim) } == 0 {
            if rlim.rlim_cur == libc::RLIM_INFINITY {
                u64::MAX
            } else {
                rlim.rlim_cur
            }
        } else {
            0
        };
        Host {
            effective,
            cap_last_cap,
            kernel: kernel_version(&release),
            memlock,
            perf_event_open: try_perf_event_open(),
            perf_event_paranoid: std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            bpf: try_bpf(),
            seccomp_filter,
            tls,
            uprobe: try_uprobe(),
        }
    }

    fn has(&self, cap: u32) -> bool {
        self.effective & (1u64 << cap) != 0
    }
}

/// Opens and closes a system-wide software perf event (PERF_COUNT_SW_DUMMY on CPU 0): the
/// permission checks of perf_event_open without measuring anything. CAP_PERFMON passes them,
/// except where a kernel patch (Debian's and Ubuntu's, at `kernel.perf_event_paranoid` 3 and
/// above) demands CAP_SYS_ADMIN for every perf_event_open.
pub(crate) fn try_perf_event_open() -> Result<(), i32> {
    // struct perf_event_attr, PERF_ATTR_SIZE_VER0 (64 bytes): type, size, config; the rest 0.
    let mut attr = [0u64; 8];
    attr[0] = 1 | (64u64 << 32); // type PERF_TYPE_SOFTWARE, size 64
    attr[1] = 9; // config PERF_COUNT_SW_DUMMY
    open_and_close(&attr)
}

/// perf_event_open of `attr` (a `struct perf_event_attr` whose size field matches its length)
/// system-wide on CPU 0, the descriptor closed at once: `Ok`, or the errno.
fn open_and_close(attr: &[u64]) -> Result<(), i32> {
    debug_assert_eq!((attr[0] >> 32) as usize, attr.len() * 8);
    // SAFETY: perf_event_open with a valid, fully initialised attr of the size it states
    // (pointers in it are the caller's, alive for the call).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            libc::c_ulong::from(8u32), // PERF_FLAG_FD_CLOEXEC
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: closing the descriptor just opened.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// Whether this process may create uprobes through perf_event_open, as the tls probe does: a
/// uprobe event on `/` is asked for, which the kernel refuses with `EACCES` before anything else
/// when the caller lacks the capability it wants for uprobes (CAP_SYS_ADMIN on current kernels;
/// CAP_PERFMON was enough on some), and otherwise with `EINVAL` (not a regular file): nothing is
/// ever registered. `Ok` also where the kernel has no uprobe PMU (the attach itself tells).
pub(crate) fn try_uprobe() -> Result<(), i32> {
    let Some(pmu) = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    else {
        return Ok(());
    };
    let path = c"/";
    // struct perf_event_attr, PERF_ATTR_SIZE_VER1 (72 bytes): type and size, config 0 (an entry
    // probe), flags `disabled`, uprobe_path (config1) and probe_offset (config2) 0.
    let mut attr = [0u64; 9];
    attr[0] = pmu | (72u64 << 32);
    attr[5] = 1; // disabled
    attr[7] = path.as_ptr() as u64;
    match open_and_close(&attr) {
        Err(e @ (libc::EACCES | libc::EPERM)) => Err(e),
        _ => Ok(()),
    }
}

/// Creates and closes a one-entry array map: whether this process may call bpf(2) at all.
fn try_bpf() -> Result<(), i32> {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries; the rest 0.
    let attr: [u32; 12] = [
        2, /* BPF_MAP_TYPE_ARRAY */
        4, 4, 1, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    // SAFETY: bpf(BPF_MAP_CREATE) with a fully initialised attr of the size it states.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0 as libc::c_int, // BPF_MAP_CREATE
            attr.as_ptr(),
            std::mem::size_of_val(&attr) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: closing the descriptor just created.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// The one line for a bpf(2) that a seccomp filter refuses although the capabilities are
/// held: podman's default profile (containers-common) and containerd's allow bpf(2) only with
/// CAP_SYS_ADMIN.
pub fn seccomp_refusal(host: &Host) -> Option<String> {
    (host.bpf == Err(libc::EPERM) && host.seccomp_filter).then(|| {
        "the bpf() system call is refused (EPERM) by this process's seccomp filter although \
         its capabilities allow it: container runtimes' default profiles (RuntimeDefault) allow \
         bpf() only with CAP_SYS_ADMIN; run it with seccomp Unconfined, as the DaemonSet does, \
         or a profile that allows bpf() (README, Deployment)"
            .to_string()
    })
}

/// `6.18.44-fc` → (6, 18); unparsable parts are 0.
fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The decisions. `Err` is the one line of what is missing to load programs at all; `Ok` lists
/// what each missing optional capability costs.
pub fn assess(host: &Host) -> Result<Vec<Finding>, String> {
    let admin = host.has(CAP_SYS_ADMIN);
    if host.cap_last_cap < CAP_BPF && !admin {
        return Err(
            "CAP_SYS_ADMIN to load and attach eBPF programs (this kernel predates CAP_BPF \
             and CAP_PERFMON, added in 5.8)"
                .into(),
        );
    }
    let mut missing = Vec::new();
    if host.cap_last_cap >= CAP_BPF && !admin {
        if !host.has(CAP_BPF) {
            missing.push("CAP_BPF (to load the programs and create their maps)".to_string());
        }
        if !host.has(CAP_PERFMON) {
            missing.push(
                "CAP_PERFMON (to attach tracepoints and read kernel and socket memory from them)"
                    .to_string(),
            );
        }
        if !missing.is_empty() {
            let last = missing.pop().expect("not empty");
            missing.push(format!("{last}, or CAP_SYS_ADMIN"));
        }
    }
    let mut findings = Vec::new();
    if !host.has(CAP_SYS_RESOURCE) {
        if host.kernel >= (5, 11) {
            findings.push(Finding::NotNeeded(
                "CAP_SYS_RESOURCE not held: raising RLIMIT_MEMLOCK for BPF maps is not needed \
                 on this kernel (5.11 and later charge them to the memory cgroup)"
                    .into(),
            ));
        } else if host.memlock != u64::MAX {
            // The maps (tens of MiB) do not fit a limit that only this capability can raise.
            missing.push(format!(
                "CAP_SYS_RESOURCE (to raise RLIMIT_MEMLOCK, {} KiB here, which this kernel ({}.{}) \
                 charges BPF maps to; 5.11 and later do not: the DaemonSet variant \
                 deploy/overlays/kernel-before-5.11 grants it)",
                host.memlock / 1024,
                host.kernel.0,
                host.kernel.1,
            ));
        }
    }
    if !missing.is_empty() {
        return Err(missing.join(" and "));
    }
    // Where uprobes cannot be created the tls probe is down and says why; else it needs to read
    // the other processes' maps.
    let uprobes = host.perf_event_open.is_ok() && host.uprobe.is_ok();
    if host.tls && uprobes && !host.has(CAP_SYS_PTRACE) {
        findings.push(Finding::Degraded(
            "CAP_SYS_PTRACE not held: the tls probe cannot read the memory maps and files \
             (/proc/<pid>/maps, /proc/<pid>/root) of processes holding a capability the \
             observer lacks, which is nearly every process: their TLS libraries and Go programs \
             are not found, and their TLS traffic is counted as TCP only"
                .into(),
        ));
    }
    if let Err(errno) = host.perf_event_open {
        let paranoid = host
            .perf_event_paranoid
            .map_or(String::from("unknown"), |p| p.to_string());
        findings.push(Finding::NotNeeded(format!(
            "perf_event_open is refused ({}; kernel.perf_event_paranoid is {paranoid}, and above \
             2 Debian's and Ubuntu's kernels allow it only with CAP_SYS_ADMIN): only the tls \
             probe needs it (uprobes attach through it), every other one attaches through BPF \
             links (BTF or raw tracepoints, fexit)",
            errno_name(errno)
        )));
    }
    Ok(findings)
}

/// `EACCES`, `EPERM`, or the error's text.
pub(crate) fn errno_name(errno: i32) -> String {
    match errno {
        libc::EACCES => "EACCES".to_string(),
        libc::EPERM => "EPERM".to_string(),
        e => std::io::Error::from_raw_os_error(e).to_string(),
    }
}

/// Fails with one clear line naming what is missing to load programs; logs what each missing
/// optional capability costs.
pub fn check(tls: bool) -> Result<(), StartError> {
    let host = Host::current(tls);
    let findings = assess(&host).map_err(|missing| StartError::Privileges { missing })?;
    if let Some(line) = seccomp_refusal(&host) {
        return Err(StartError::Seccomp(line));
    }
    for f in findings {
        match f {
            Finding::Degraded(m) => tracing::warn!("{m}"),
            Finding::NotNeeded(m) => tracing::info!("{m}"),
        }
    }
    Ok(())
}

/// Lifts RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF maps to.
pub fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(list: &[u32]) -> u64 {
        list.iter().fold(0, |a, c| a | 1u64 << c)
    }

    /// The DaemonSet's set on a current kernel.
    fn manifest_host() -> Host {
        Host {
            effective: caps(&[CAP_BPF, CAP_PERFMON, CAP_SYS_RESOURCE]),
            cap_last_cap: 40,
            kernel: (6, 18),
            memlock: 8 << 20,
            perf_event_open: Ok(()),
            perf_event_paranoid: Some(2),
            bpf: Ok(()),
            seccomp_filter: true,
            tls: true,
            uprobe: Err(libc::EACCES),
        }
    }

    #[test]
    fn a_seccomp_filter_that_refuses_bpf_is_named() {
        let mut h = manifest_host();
        assert_eq!(seccomp_refusal(&h), None);
        h.bpf = Err(libc::EPERM);
        let line = seccomp_refusal(&h).unwrap();
        assert!(
            line.contains("seccomp filter") && line.contains("Unconfined"),
            "{line}"
        );
        // Without a filter an EPERM is the capabilities' (or the sysctl's) doing, which the
        // capability check names.
        h.seccomp_filter = false;
        assert_eq!(seccomp_refusal(&h), None);
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v782"), (6, 18));
        assert_eq!(kernel_version("5.10.0-28-amd64\n"), (5, 10));
        assert_eq!(kernel_version("garbage"), (0, 0));
    }

    #[test]
    fn essential_capabilities_are_named_with_what_they_are_for() {
        let mut h = manifest_host();
        h.effective = caps(&[CAP_PERFMON]);
        let e = assess(&h).unwrap_err();
        assert!(e.starts_with("CAP_BPF (to load the programs"), "{e}");
        assert!(!e.contains("CAP_PERFMON"), "{e}");
        h.effective = 0;
        let e = assess(&h).unwrap_err();
        assert!(
            e.contains("CAP_BPF") && e.contains("CAP_PERFMON") && e.ends_with("or CAP_SYS_ADMIN")
        );
        // CAP_SYS_ADMIN covers both.
        h.effective = caps(&[CAP_SYS_ADMIN, CAP_SYS_PTRACE]);
        assert!(assess(&h).is_ok());
        // Before 5.8 only CAP_SYS_ADMIN loads programs.
        h.cap_last_cap = 37;
        h.effective = caps(&[CAP_BPF, CAP_PERFMON]);
        assert!(assess(&h).unwrap_err().contains("predates CAP_BPF"));
    }

    #[test]
    fn optional_capabilities_name_the_feature_that_degrades() {
        let f = assess(&manifest_host()).unwrap();
        // What the manifest grants is all it needs.
        assert_eq!(f, vec![]);

        let mut h = manifest_host();
        h.effective = caps(&[CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE]);
        let f = assess(&h).unwrap();
        assert!(
            matches!(&f[..], [Finding::NotNeeded(m)] if m.contains("CAP_SYS_RESOURCE")),
            "{f:?}"
        );
        // Before 5.11 the maps are charged to RLIMIT_MEMLOCK: without the capability that
        // raises it, the observer cannot start.
        h.kernel = (5, 10);
        let e = assess(&h).unwrap_err();
        assert!(
            e.starts_with("CAP_SYS_RESOURCE (to raise RLIMIT_MEMLOCK, 8192 KiB here")
                && e.contains("(5.10)")
                && !e.contains("CAP_SYS_ADMIN"),
            "{e}"
        );
        h.effective = 0;
        let e = assess(&h).unwrap_err();
        assert!(
            e.contains("or CAP_SYS_ADMIN and CAP_SYS_RESOURCE (to "),
            "{e}"
        );
        h.effective = caps(&[CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE]);
        h.memlock = u64::MAX;
        assert_eq!(assess(&h).unwrap(), vec![]);

        // Where uprobes can be created (CAP_SYS_ADMIN, deploy/overlays/tls), the tls probe
        // without CAP_SYS_PTRACE finds almost nothing: a warning says so; with the tls probe
        // off, or uprobes refused (the tls probe is down then, and says why), nothing is said.
        let mut h = manifest_host();
        assert_eq!(assess(&h).unwrap(), vec![]);
        h.uprobe = Ok(());
        let f = assess(&h).unwrap();
        assert!(
            matches!(&f[..], [Finding::Degraded(m)] if m.starts_with("CAP_SYS_PTRACE not held: the tls probe")),
            "{f:?}"
        );
        h.tls = false;
        assert_eq!(assess(&h).unwrap(), vec![]);

        // Debian's kernels at perf_event_paranoid 3: CAP_PERFMON is not enough for
        // perf_event_open, which only the tls probe needs.
        let mut h = manifest_host();
        h.effective |= caps(&[CAP_SYS_PTRACE]);
        h.perf_event_open = Err(libc::EACCES);
        h.perf_event_paranoid = Some(3);
        let f = assess(&h).unwrap();
        assert!(
            matches!(&f[..], [Finding::NotNeeded(m)] if m.starts_with("perf_event_open is refused (EACCES;")
                && m.contains("perf_event_paranoid is 3")
                && m.contains("only the tls probe needs it")),
            "{f:?}"
        );
    }
}

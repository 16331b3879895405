//! Loads the eBPF object with the offsets of the running kernel, and attaches each probe with
//! the best hook type the kernel offers. A probe that cannot be set up is reported down with
//! its reason (and verifier log); the others keep running.

use std::fmt;

use aya::{
    programs::{BtfTracePoint, FExit, ProgramError, RawTracePoint},
    Btf, Ebpf, EbpfLoader, Endianness,
};
use observer_common::{
    FileOffsets, KernelOffsets, LifecycleOffsets, WORK_ENTRY_SLOTS, WORK_L7, WORK_SYSCALLS,
    WORK_TASK_REGS, WORK_TCP, WORK_TLS,
};

use super::btf;
use crate::{
    config::{Config, HookPreference},
    error::{ProbeError, StartError},
    identity::cgroup::CgroupFs,
};

/// What serves one probe.
#[derive(Debug, Clone)]
pub struct ProbeStatus {
    pub probe: &'static str,
    /// Hook type that serves it (`tp_btf`, `raw_tp`, `tracepoint`, `fexit`), or `none`.
    pub hook: &'static str,
    pub up: bool,
    pub reason: Option<String>,
    /// Down because the node's policy refuses what it needs ([`ProbeError::Refused`]).
    pub refused: bool,
}

/// The loaded object and the state of every probe.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub probes: Vec<ProbeStatus>,
    /// The TLS probe's library files (when it is up).
    pub tls: Option<super::tls::Libraries>,
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("probes", &self.probes)
            .finish()
    }
}

/// How the tls probe's reason starts where the node refuses `perf_event_open` (its
/// `perf_event_paranoid`, or a seccomp profile): a choice of the node's, not a fault.
pub const UPROBES_REFUSED: &str = "uprobes attach through perf_event_open, which is refused";

impl ProbeStatus {
    /// Whether `/readyz` fails for it: every probe that is down, but one the node's policy
    /// refuses (the tls probe without `perf_event_open`; its line and `observer_probe_up`
    /// still say so).
    pub fn blocks_readiness(&self) -> bool {
        !self.up && !self.refused
    }
}

fn program_error(program: &str, e: ProgramError) -> ProbeError {
    let verifier_log = match &e {
        ProgramError::LoadError { verifier_log, .. } => Some(verifier_log.to_string()),
        _ => None,
    };
    ProbeError::Program {
        program: program.to_string(),
        source: Box::new(e),
        verifier_log,
    }
}

/// What the running kernel offers, found once before loading.
struct Kernel {
    offsets: Result<KernelOffsets, ProbeError>,
    lifecycle: Result<LifecycleOffsets, ProbeError>,
    /// From a descriptor to its socket (the TLS probe's Go programs).
    files: Result<FileOffsets, ProbeError>,
    /// Parameters of `tcp_recvmsg` (6 before 5.19, 5 since), for the fexit fallback.
    recvmsg_params: Result<usize, ProbeError>,
    /// The same of `udp_recvmsg` (DNS's fexit fallback; `udpv6_recvmsg` lost its `noblock` in
    /// the same change).
    udp_recvmsg_params: Result<usize, ProbeError>,
    /// The kernel has `bpf_get_current_task_btf` (5.11) and `bpf_task_pt_regs` (5.15): the L7
    /// path can find a syscall's buffer without a hook on the syscall.
    task_regs: bool,
    /// aya needs the BTF to find the attach targets of BTF tracepoints and fexit.
    btf: Option<Btf>,
}

impl Kernel {
    fn discover(cfg: &Config) -> Self {
        let kernel_btf = btf::KernelBtf::open(&cfg.btf);
        let offsets = kernel_btf
            .as_ref()
            .map_err(clone_err)
            .and_then(btf::tcp_offsets);
        // The lifecycle probe: task layout and what mark_victim passes, from BTF.
        let lifecycle = kernel_btf
            .as_ref()
            .map_err(clone_err)
            .and_then(btf::lifecycle_offsets);
        let files = kernel_btf
            .as_ref()
            .map_err(clone_err)
            .and_then(btf::file_offsets);
        let btf = match Btf::parse_file(&cfg.btf, Endianness::default()) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(
                    "{}: {e}; BTF tracepoints are unavailable",
                    cfg.btf.display()
                );
                None
            }
        };
        let recvmsg_params = kernel_btf
            .as_ref()
            .map_err(clone_err)
            .and_then(|b| b.func_param_count("tcp_recvmsg"));
        let udp_recvmsg_params = kernel_btf
            .as_ref()
            .map_err(clone_err)
            .and_then(|b| b.func_param_count("udp_recvmsg"));
        let task_regs = kernel_btf.as_ref().is_ok_and(|b| {
            b.enum_has("bpf_func_id", "BPF_FUNC_task_pt_regs")
                && b.enum_has("bpf_func_id", "BPF_FUNC_get_current_task_btf")
        });
        Kernel {
            offsets,
            lifecycle,
            files,
            recvmsg_params,
            udp_recvmsg_params,
            task_regs,
            btf,
        }
    }

    /// The socket offsets, or why they are missing (as a probe error).
    fn sockets(&self) -> Result<(), ProbeError> {
        self.offsets.as_ref().map(|_| ()).map_err(clone_err)
    }
}

/// Loads and attaches everything the configuration asks for.
pub fn load(cfg: &Config, cgroups: &CgroupFs, object: &[u8]) -> Result<Loaded, StartError> {
    let k = Kernel::discover(cfg);
    let filters = cgroup_filters(cfg, cgroups)?;
    let mut ebpf = load_object(cfg, &k, filters.len() as u32, object)?;
    if let Some(map) = ebpf.map_mut("CGROUP_FILTERS") {
        let mut arr =
            aya::maps::CgroupArray::try_from(map).map_err(|e| StartError::Config(e.to_string()))?;
        // The map holds the cgroups themselves: the directories may be closed after.
        for (i, dir) in filters.into_iter().enumerate() {
            arr.set(i as u32, dir, 0)
                .map_err(|e| StartError::Config(format!("--syscalls-cgroup: {e}")))?;
        }
    }
    let mut probes = Vec::new();
    let btf = k.btf.as_ref();
    let hooks = cfg.hooks;
    if cfg.syscalls {
        let r = attach_pair(&mut ebpf, hooks, btf, "sys_enter", "sys_exit");
        probes.push(status("syscalls", r));
    }
    if cfg.empty_hooks {
        let r = attach_pair_named(
            &mut ebpf,
            HookPreference::Btf,
            btf,
            ("empty_enter", "sys_enter"),
            ("empty_exit", "sys_exit"),
        );
        probes.push(status("empty_hooks", r));
    }
    if cfg.verifier_selftest {
        let r = match btf {
            Some(btf) => {
                attach_btf_prog(&mut ebpf, "selftest_btf", "sys_enter", btf).map(|()| "tp_btf")
            }
            None => Err(ProbeError::Other("no kernel BTF".into())),
        };
        probes.push(status("verifier_selftest", r));
    }
    if cfg.tcp || !cfg.l7.is_empty() {
        attach_sockets(&mut ebpf, cfg, &k, &mut probes);
    }
    let mut tls = None;
    if cfg.tls {
        let l7_up = probes
            .iter()
            .any(|p| p.up && cfg.l7.iter().any(|s| s.name == p.probe));
        let r = if l7_up {
            load_tls(&mut ebpf, hooks, btf, k.files.as_ref().err()).map(|libs| {
                tls = Some(libs);
                "uprobe"
            })
        } else {
            Err(ProbeError::Other(
                "no L7 probe is up to parse the plaintext".into(),
            ))
        };
        probes.push(status("tls", r));
    }
    if cfg.lifecycle {
        let r = k.lifecycle.as_ref().map_err(clone_err).and_then(|_| {
            attach_pair_named(
                &mut ebpf,
                hooks,
                btf,
                ("oom_mark_victim", "mark_victim"),
                ("process_exit", "sched_process_exit"),
            )
        });
        probes.push(status("lifecycle", r));
    }
    for p in &probes {
        match &p.reason {
            None => tracing::info!(probe = p.probe, hook = p.hook, "probe attached"),
            Some(r) => tracing::error!(probe = p.probe, "probe down: {r}"),
        }
    }
    if !probes.iter().any(|p| p.up) {
        let reasons: Vec<String> = probes
            .iter()
            .map(|p| format!("{}: {}", p.probe, p.reason.as_deref().unwrap_or("")))
            .collect();
        return Err(StartError::NoProbe(reasons.join("; ")));
    }
    Ok(Loaded { ebpf, probes, tls })
}

/// Loads the object with this kernel's offsets and the configuration's switches as globals.
fn load_object(
    cfg: &Config,
    k: &Kernel,
    filter_count: u32,
    object: &[u8],
) -> Result<Ebpf, aya::EbpfError> {
    let offsets = k.offsets.as_ref().copied().unwrap_or_default();
    let lifecycle = k.lifecycle.as_ref().copied().unwrap_or_default();
    let files = k.files.as_ref().copied().unwrap_or_default();
    let l7 = !cfg.l7.is_empty();
    let entry_slots = cfg.syscalls || (l7 && !k.task_regs);
    let work = (u32::from(cfg.syscalls) * WORK_SYSCALLS)
        | (u32::from(cfg.tcp) * WORK_TCP)
        | (u32::from(l7) * WORK_L7)
        | (u32::from(entry_slots) * WORK_ENTRY_SLOTS)
        | (u32::from(k.task_regs) * WORK_TASK_REGS)
        | (u32::from(l7 && cfg.tls) * WORK_TLS);
    let protocols = cfg.l7.iter().fold(0u32, |m, s| m | (1 << s.id));
    let mut loader = EbpfLoader::new();
    loader
        .override_global("OFFSETS", &offsets, true)
        .override_global("LIFECYCLE", &lifecycle, true)
        .override_global("FILES", &files, true)
        .override_global("CGROUP_FILTER_COUNT", &filter_count, true)
        .override_global("WORK", &work, true)
        .override_global("L7_PROTOCOLS", &protocols, true)
        .map_max_entries("CONNS", cfg.conn_table_size)
        .map_max_entries("L7_CONNS", cfg.l7_table_size)
        .map_max_entries("SYSCALL_STATS", cfg.syscall_table_size);
    loader.load(object)
}

/// The TLS probe: its uprobe programs loaded, the exec hook attached, and the TLS libraries of
/// the running processes probed. Down when a library was found but could not be probed (no
/// `perf_event_open` for uprobes: `perf_event_paranoid`, capabilities), with that reason.
fn load_tls(
    ebpf: &mut Ebpf,
    hooks: HookPreference,
    btf: Option<&Btf>,
    no_files: Option<&ProbeError>,
) -> Result<super::tls::Libraries, ProbeError> {
    if let Err(errno) = super::privileges::try_perf_event_open() {
        let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
            .map_or(String::from("unknown"), |s| s.trim().to_string());
        return Err(ProbeError::Refused(format!(
            "{UPROBES_REFUSED} ({}; kernel.perf_event_paranoid is {paranoid}, and above 2 \
             Debian's and Ubuntu's kernels allow it only with CAP_SYS_ADMIN; a seccomp profile \
             may refuse it too)",
            super::privileges::errno_name(errno)
        )));
    }
    if let Err(errno) = super::privileges::try_uprobe() {
        return Err(ProbeError::Refused(format!(
            "{UPROBES_REFUSED} for uprobes ({}): this kernel creates uprobes only for \
             CAP_SYS_ADMIN (CAP_PERFMON is not enough); the DaemonSet variant deploy/overlays/tls \
             grants it, with CAP_SYS_PTRACE to find other processes' libraries",
            super::privileges::errno_name(errno)
        )));
    }
    for prog in super::tls::PROGRAMS {
        let p: &mut aya::programs::UProbe = program(ebpf, prog)?;
        p.load().map_err(|e| program_error(prog, e))?;
    }
    // Go programs need the descriptor table's layout; without it (or should their programs
    // not load) the OpenSSL side runs alone and says so.
    let go = match no_files {
        Some(e) => Err(e.to_string()),
        None => super::tls::GO_PROGRAMS.iter().try_for_each(|prog| {
            let p: &mut aya::programs::UProbe = program(ebpf, prog).map_err(|e| e.to_string())?;
            p.load().map_err(|e| program_error(prog, e).to_string())
        }),
    };
    if let Err(e) = &go {
        tracing::warn!("Go crypto/tls not probed: {e}");
    }
    attach_one(ebpf, hooks, btf, "process_exec", "sched_process_exec")
        .map_err(|e| ProbeError::Other(format!("exec hook: {e}")))?;
    let mut libs = super::tls::Libraries::new(go.is_ok());
    libs.scan_all(ebpf)?;
    Ok(libs)
}

/// The TCP probes and the L7 path share the socket hooks: connection state changes, send and
/// receive calls, and the socket's destruction.
fn attach_sockets(ebpf: &mut Ebpf, cfg: &Config, k: &Kernel, probes: &mut Vec<ProbeStatus>) {
    let btf = k.btf.as_ref();
    let hooks = cfg.hooks;
    let conn = k.sockets().and_then(|()| {
        attach_one(
            ebpf,
            hooks,
            btf,
            "inet_sock_set_state",
            "inet_sock_set_state",
        )
    });
    let bytes = k.sockets().and_then(|()| {
        attach_pair_named(
            ebpf,
            hooks,
            btf,
            ("sock_send", "sock_send_length"),
            ("sock_recv", "sock_recv_length"),
        )
        // Kernels before 6.3 lack the sock_*_length tracepoints: fexit on the TCP functions.
        .or_else(|tp_err| match btf {
            Some(btf) => attach_fexit_bytes(ebpf, btf, k)
                .map_err(|e| ProbeError::Other(format!("{tp_err}; fexit fallback: {e}"))),
            None => Err(tp_err),
        })
    });
    if cfg.tcp {
        probes.push(status("tcp_connections", clone_result(&conn)));
        let retrans = k
            .sockets()
            .and_then(|()| attach_one(ebpf, hooks, btf, "tcp_retransmit", "tcp_retransmit_skb"));
        probes.push(status("tcp_retransmits", retrans));
        probes.push(status("tcp_bytes", clone_result(&bytes)));
    }
    if cfg.l7.is_empty() {
        return;
    }
    // Every L7 protocol needs all three: the calls, the connections' starts and closes, and
    // the sockets' ends.
    let destroy = k
        .sockets()
        .and_then(|()| attach_one(ebpf, hooks, btf, "tcp_destroy_sock", "tcp_destroy_sock"));
    // Without bpf_task_pt_regs (before 5.15) the buffers come only from the syscall entries
    // that sys_enter keeps: attached here when the syscall probe does not run.
    let entries = if cfg.syscalls || k.task_regs {
        Ok("")
    } else {
        attach_one(ebpf, hooks, btf, "sys_enter", "sys_enter")
    };
    let r = match (&conn, &bytes, &destroy) {
        _ if entries.is_err() => Err(ProbeError::Other(format!(
            "syscall entries (no bpf_task_pt_regs before 5.15): {}",
            entries
                .as_ref()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        ))),
        (Err(e), _, _) => Err(ProbeError::Other(format!("connection states: {e}"))),
        (_, Err(e), _) => Err(ProbeError::Other(format!("socket I/O: {e}"))),
        (_, _, Err(e)) => Err(ProbeError::Other(format!("socket destruction: {e}"))),
        (_, Ok(hook), Ok(_)) => Ok(*hook),
    };
    for spec in &cfg.l7 {
        let r = match &r {
            // UDP calls pass the sock_*_length tracepoints; the fexit fallback of older
            // kernels hooks TCP's functions, and UDP's for DNS.
            Ok("fexit") if spec.id == observer_common::L7_DNS => match btf {
                Some(btf) => attach_fexit_udp(ebpf, btf, k)
                    .map_err(|e| ProbeError::Other(format!("UDP calls (fexit): {e}"))),
                None => Err(ProbeError::Other("UDP calls (fexit): no kernel BTF".into())),
            },
            r => clone_result(r),
        };
        probes.push(status(spec.name, r));
    }
}

fn clone_result(r: &Result<&'static str, ProbeError>) -> Result<&'static str, ProbeError> {
    match r {
        Ok(h) => Ok(*h),
        Err(e) => Err(clone_err(e)),
    }
}

fn clone_err(e: &ProbeError) -> ProbeError {
    ProbeError::Other(e.to_string())
}

fn status(probe: &'static str, r: Result<&'static str, ProbeError>) -> ProbeStatus {
    match r {
        Ok(hook) => ProbeStatus {
            probe,
            hook,
            up: true,
            reason: None,
            refused: false,
        },
        Err(e) => ProbeStatus {
            probe,
            hook: "none",
            up: false,
            reason: Some(e.to_string()),
            refused: matches!(e, ProbeError::Refused(_)),
        },
    }
}

/// Opens the configured cgroup subtrees' directories (the kernel tests a task against them).
fn cgroup_filters(cfg: &Config, cgroups: &CgroupFs) -> Result<Vec<std::fs::File>, StartError> {
    let mut out = Vec::new();
    for p in &cfg.syscalls_cgroups {
        let rel = p.strip_prefix(cgroups.root()).unwrap_or(p);
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        let full = cgroups.root().join(rel);
        let dir = std::fs::File::open(&full).map_err(|e| StartError::Cgroup {
            path: full.clone(),
            reason: format!("--syscalls-cgroup: {e}"),
        })?;
        if !dir.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(StartError::Cgroup {
                path: full,
                reason: "--syscalls-cgroup: not a directory".into(),
            });
        }
        if rel.components().count() == 0 {
            // The root selects everything: no filter needed.
            return Ok(Vec::new());
        }
        out.push(dir);
    }
    Ok(out)
}

/// The program `prog` of the object as its concrete type.
fn program<'e, T>(ebpf: &'e mut Ebpf, prog: &str) -> Result<&'e mut T, ProbeError>
where
    &'e mut T: TryFrom<&'e mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(prog)
        .ok_or_else(|| ProbeError::Other(format!("program {prog} missing from the object")))?
        .try_into()
        .map_err(|e| program_error(prog, e))
}

/// How much work the verifier did for a program (kernels since 5.16 say): the figure that
/// decides its load time, and how close it is to older kernels' limit of a million.
fn log_verified(prog: &str, info: Result<aya::programs::ProgramInfo, ProgramError>) {
    if let Some(n) = info.ok().and_then(|i| i.verified_instruction_count()) {
        tracing::debug!(program = prog, verified_instructions = n, "program loaded");
    }
}

fn attach_btf_prog(ebpf: &mut Ebpf, prog: &str, target: &str, btf: &Btf) -> Result<(), ProbeError> {
    let p: &mut BtfTracePoint = program(ebpf, prog)?;
    p.load(target, btf).map_err(|e| program_error(prog, e))?;
    log_verified(prog, p.info());
    p.attach().map_err(|e| program_error(prog, e))?;
    Ok(())
}

fn attach_raw_prog(ebpf: &mut Ebpf, prog: &str, target: &str) -> Result<(), ProbeError> {
    let p: &mut RawTracePoint = program(ebpf, prog)?;
    p.load().map_err(|e| program_error(prog, e))?;
    log_verified(prog, p.info());
    p.attach(target).map_err(|e| program_error(prog, e))?;
    Ok(())
}

fn attach_fexit(ebpf: &mut Ebpf, prog: &str, target: &str, btf: &Btf) -> Result<(), ProbeError> {
    let p: &mut FExit = program(ebpf, prog)?;
    p.load(target, btf).map_err(|e| program_error(prog, e))?;
    log_verified(prog, p.info());
    p.attach().map_err(|e| program_error(prog, e))?;
    Ok(())
}

/// Byte counting through fexit on tcp_sendmsg/tcp_recvmsg (and tcp_sendpage where it exists,
/// which carries sendfile before 6.5), with the `tcp_recvmsg` program of this kernel's
/// parameter count (the return value follows the arguments in an fexit program's context).
fn attach_fexit_bytes(ebpf: &mut Ebpf, btf: &Btf, k: &Kernel) -> Result<&'static str, ProbeError> {
    let recvmsg = match k.recvmsg_params.as_ref().map_err(clone_err)? {
        5 => "tcp_recvmsg_fexit5",
        6 => "tcp_recvmsg_fexit6",
        n => {
            return Err(ProbeError::Other(format!(
                "tcp_recvmsg takes {n} parameters in this kernel (5 or 6 known)"
            )))
        }
    };
    attach_fexit(ebpf, "tcp_sendmsg_fexit", "tcp_sendmsg", btf)?;
    attach_fexit(ebpf, recvmsg, "tcp_recvmsg", btf)?;
    if let Err(e) = attach_fexit(ebpf, "tcp_sendpage_fexit", "tcp_sendpage", btf) {
        tracing::debug!("tcp_sendpage not hooked (absent since 6.5): {e}");
    }
    Ok("fexit")
}

/// DNS before 6.3: fexit on UDP's send and receive functions, IPv4's and IPv6's. An IPv6 pair
/// that cannot be hooked (IPv6 built as a module: its functions are not in the kernel's BTF)
/// leaves IPv4 followed, and says so.
fn attach_fexit_udp(ebpf: &mut Ebpf, btf: &Btf, k: &Kernel) -> Result<&'static str, ProbeError> {
    let (recv4, recv6) = match k.udp_recvmsg_params.as_ref().map_err(clone_err)? {
        5 => ("udp_recvmsg_fexit5", "udpv6_recvmsg_fexit5"),
        6 => ("udp_recvmsg_fexit6", "udpv6_recvmsg_fexit6"),
        n => {
            return Err(ProbeError::Other(format!(
                "udp_recvmsg takes {n} parameters in this kernel (5 or 6 known)"
            )))
        }
    };
    attach_fexit(ebpf, "udp_sendmsg_fexit", "udp_sendmsg", btf)?;
    if let Err(e) = attach_fexit(ebpf, recv4, "udp_recvmsg", btf) {
        unload(ebpf, "udp_sendmsg_fexit");
        return Err(e);
    }
    let v6 = attach_fexit(ebpf, "udpv6_sendmsg_fexit", "udpv6_sendmsg", btf)
        .and_then(|()| attach_fexit(ebpf, recv6, "udpv6_recvmsg", btf));
    if let Err(e) = v6 {
        unload(ebpf, "udpv6_sendmsg_fexit");
        tracing::warn!("DNS over IPv6 sockets is not followed: {e}");
    }
    Ok("fexit")
}

fn unload(ebpf: &mut Ebpf, prog: &str) {
    match ebpf.program_mut(prog) {
        Some(aya::programs::Program::BtfTracePoint(p)) => drop(p.unload()),
        Some(aya::programs::Program::RawTracePoint(p)) => drop(p.unload()),
        Some(aya::programs::Program::FExit(p)) => drop(p.unload()),
        _ => {}
    }
}

/// Attaches `<base>_btf` (or `<base>_raw`) to the tracepoint `target`.
fn attach_one(
    ebpf: &mut Ebpf,
    hooks: HookPreference,
    btf: Option<&Btf>,
    base: &str,
    target: &str,
) -> Result<&'static str, ProbeError> {
    attach_pair_inner(ebpf, hooks, btf, &[(base, target)])
}

/// Attaches `<name>_btf`/`<name>_raw` programs for two tracepoints named like the programs.
fn attach_pair(
    ebpf: &mut Ebpf,
    hooks: HookPreference,
    btf: Option<&Btf>,
    a: &str,
    b: &str,
) -> Result<&'static str, ProbeError> {
    attach_pair_inner(ebpf, hooks, btf, &[(a, a), (b, b)])
}

fn attach_pair_named(
    ebpf: &mut Ebpf,
    hooks: HookPreference,
    btf: Option<&Btf>,
    a: (&str, &str),
    b: (&str, &str),
) -> Result<&'static str, ProbeError> {
    attach_pair_inner(ebpf, hooks, btf, &[a, b])
}

/// Whether the kernel lacks tracepoint `name`, by its BTF: every tracepoint of a kernel's BTF
/// has its `btf_trace_<name>` typedef there. Only a BTF that describes tracepoints at all (it
/// has `sched_process_exit`'s, which every kernel has) can say so; another BTF (`--btf` naming
/// a file without them) says nothing, and the raw tracepoint is tried.
fn lacks_tracepoint(btf: &Btf, name: &str) -> bool {
    let has = |tp: &str| {
        btf.id_by_type_name_kind(&format!("btf_trace_{tp}"), aya_obj::btf::BtfKind::Typedef)
            .is_ok()
    };
    has("sched_process_exit") && !has(name)
}

/// Attaches every (program base, tracepoint) of a probe with one hook type, all or nothing:
/// BTF tracepoints first (cheapest, need kernel BTF), raw tracepoints as the fallback.
fn attach_pair_inner(
    ebpf: &mut Ebpf,
    hooks: HookPreference,
    btf: Option<&Btf>,
    progs: &[(&str, &str)],
) -> Result<&'static str, ProbeError> {
    let mut btf_err = None;
    if hooks != HookPreference::Raw {
        match btf {
            Some(btf) => {
                let mut done: Vec<String> = Vec::new();
                let mut failed = None;
                for (base, target) in progs {
                    let name = format!("{base}_btf");
                    match attach_btf_prog(ebpf, &name, target, btf) {
                        Ok(()) => done.push(name),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                match failed {
                    None => return Ok("tp_btf"),
                    Some(e) => {
                        for n in &done {
                            unload(ebpf, n);
                        }
                        tracing::debug!("BTF tracepoint failed, trying raw tracepoint: {e}");
                        btf_err = Some(e);
                    }
                }
            }
            None => btf_err = Some(ProbeError::Other("no kernel BTF".into())),
        }
        if hooks == HookPreference::Btf {
            return Err(btf_err.expect("set above"));
        }
        // A kernel whose BTF lacks a tracepoint's `btf_trace_` type has no such tracepoint: its
        // raw variant would only fail at attach, after its verification (half a minute for the
        // socket programs under emulation, the caller's fallback waiting behind it).
        if let (Some(btf), Some(e)) = (btf, &btf_err) {
            if let Some((_, target)) = progs.iter().find(|(_, t)| lacks_tracepoint(btf, t)) {
                return Err(ProbeError::Other(format!(
                    "{e}; no raw tracepoint either: this kernel has no tracepoint {target}"
                )));
            }
        }
    }
    let mut done: Vec<String> = Vec::new();
    for (base, target) in progs {
        let name = format!("{base}_raw");
        if let Err(e) = attach_raw_prog(ebpf, &name, target) {
            for n in &done {
                unload(ebpf, n);
            }
            return Err(match btf_err {
                Some(b) => ProbeError::Other(format!("{b}; raw tracepoint fallback: {e}")),
                None => e,
            });
        }
        done.push(name);
    }
    Ok("raw_tp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_probe_the_node_refuses_leaves_readiness_alone() {
        let refused = status("tls", Err(ProbeError::Refused(UPROBES_REFUSED.into())));
        let failed = status("tls", Err(ProbeError::Other("no L7 probe is up".into())));
        let up = status("tcp", Ok("tp_btf"));
        assert!(!refused.blocks_readiness());
        assert!(failed.blocks_readiness());
        assert!(!up.blocks_readiness());
        assert_eq!(refused.reason.as_deref(), Some(UPROBES_REFUSED));
    }
}

//! Loads the eBPF object with the offsets of the running kernel, and attaches each probe with
//! the best hook type the kernel offers. A probe that cannot be set up is reported down with
//! its reason (and verifier log); the others keep running.

use std::{fmt, os::unix::fs::MetadataExt};

use aya::{
    programs::{BtfTracePoint, FExit, ProgramError, RawTracePoint, TracePoint},
    Btf, Ebpf, EbpfLoader, Endianness,
};
use observer_common::{
    CgroupFilter, KernelOffsets, LifecycleOffsets, SetStateOffsets, SyscallTpOffsets, WORK_HTTP,
    WORK_HTTP_IN_SYS_ENTER, WORK_SYSCALLS, WORK_TCP,
};

use super::{btf, tracefs};
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
}

/// The loaded object and the state of every probe.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub probes: Vec<ProbeStatus>,
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("probes", &self.probes)
            .finish()
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

/// Loads and attaches everything the configuration asks for.
pub fn load(cfg: &Config, cgroups: &CgroupFs, object: &[u8]) -> Result<Loaded, StartError> {
    let tracefs = tracefs::ensure_mounted();
    if let Err(e) = &tracefs {
        tracing::warn!("{e}; classic tracepoints are unavailable");
    }
    let kernel_btf = btf::KernelBtf::open(&cfg.btf);
    let offsets: Result<KernelOffsets, ProbeError> = kernel_btf
        .as_ref()
        .map_err(clone_err)
        .and_then(btf::tcp_offsets);
    let set_state: Result<SetStateOffsets, ProbeError> = match &tracefs {
        Ok(dir) => tracefs::field_offsets(
            dir,
            "sock",
            "inet_sock_set_state",
            &["skaddr", "oldstate", "newstate", "protocol"],
        )
        .map(|f| SetStateOffsets {
            skaddr: f["skaddr"],
            oldstate: f["oldstate"],
            newstate: f["newstate"],
            protocol: f["protocol"],
        }),
        Err(e) => Err(clone_err(e)),
    };
    // aya needs the BTF to find the attach targets of BTF tracepoints.
    let aya_btf = match Btf::parse_file(&cfg.btf, Endianness::default()) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(
                "{}: {e}; BTF tracepoints are unavailable",
                cfg.btf.display()
            );
            None
        }
    };

    let filters = cgroup_filters(cfg, cgroups)?;
    let default_offsets = KernelOffsets::default();
    let default_set_state = SetStateOffsets::default();
    let filter_count = filters.len() as u32;
    let work = (cfg.syscalls as u32 * WORK_SYSCALLS)
        | (cfg.tcp as u32 * WORK_TCP)
        | (cfg.http as u32 * WORK_HTTP)
        | ((cfg.http && cfg.syscalls) as u32 * WORK_HTTP_IN_SYS_ENTER);
    // The syscall tracepoints' record layout (for the HTTP probe without sys_enter).
    let syscall_tp: Result<SyscallTpOffsets, ProbeError> = match &tracefs {
        Ok(dir) => tracefs::field_offsets(dir, "syscalls", "sys_enter_write", &["__syscall_nr", "buf"])
            .map(|f| SyscallTpOffsets { nr: f["__syscall_nr"], arg2: f["buf"] }),
        Err(e) => Err(clone_err(e)),
    };
    let default_syscall_tp = SyscallTpOffsets { nr: 8, arg2: 24 };
    // The lifecycle probe: task layout from BTF, the OOM victim's pid from tracefs.
    let lifecycle: Result<LifecycleOffsets, ProbeError> = match (&kernel_btf, &tracefs) {
        (Err(e), _) | (_, Err(e)) => Err(clone_err(e)),
        (Ok(kb), Ok(dir)) => btf::lifecycle_offsets(kb).and_then(|mut l| {
            let f = tracefs::field_offsets(dir, "oom", "mark_victim", &["pid"])?;
            l.mark_victim_pid = f["pid"];
            Ok(l)
        }),
    };
    let default_lifecycle = LifecycleOffsets::default();
    let mut loader = EbpfLoader::new();
    loader
        .override_global(
            "OFFSETS",
            offsets.as_ref().unwrap_or(&default_offsets),
            true,
        )
        .override_global(
            "SET_STATE",
            set_state.as_ref().unwrap_or(&default_set_state),
            true,
        )
        .override_global(
            "LIFECYCLE",
            lifecycle.as_ref().unwrap_or(&default_lifecycle),
            true,
        )
        .override_global("CGROUP_FILTER_COUNT", &filter_count, true)
        .override_global("WORK", &work, true)
        .override_global(
            "SYSCALL_TP",
            syscall_tp.as_ref().unwrap_or(&default_syscall_tp),
            true,
        )
        .map_max_entries("CONNS", cfg.conn_table_size)
        .map_max_entries("SYSCALL_STATS", cfg.syscall_table_size);
    let mut ebpf = loader.load(object)?;
    if let Some(map) = ebpf.map_mut("CGROUP_FILTERS") {
        let mut arr: aya::maps::Array<_, CgroupFilter> =
            aya::maps::Array::try_from(map).map_err(|e| StartError::Config(e.to_string()))?;
        for (i, f) in filters.iter().enumerate() {
            arr.set(i as u32, f, 0)
                .map_err(|e| StartError::Config(e.to_string()))?;
        }
    }

    let mut probes = Vec::new();
    let btf_ref = aya_btf.as_ref();
    let hooks = cfg.hooks;
    // The syscall and HTTP probes share sys_enter (HTTP needs only the entry).
    let enter = if cfg.syscalls {
        let r = attach_pair(&mut ebpf, hooks, btf_ref, "sys_enter", "sys_exit");
        probes.push(status("syscalls", clone_result(&r)));
        Some(r)
    } else if cfg.http {
        // Only the socket I/O syscalls, not every syscall of the host.
        Some(match &syscall_tp {
            Ok(_) => attach_io_syscalls(&mut ebpf),
            Err(e) => Err(clone_err(e)),
        })
    } else {
        None
    };
    if cfg.empty_hooks {
        probes.push(status(
            "empty_hooks",
            attach_pair_named(
                &mut ebpf,
                HookPreference::Btf,
                btf_ref,
                ("empty_enter", "sys_enter"),
                ("empty_exit", "sys_exit"),
            ),
        ));
    }
    if cfg.verifier_selftest {
        let r = match btf_ref {
            Some(btf) => {
                attach_btf_prog(&mut ebpf, "selftest_btf", "sys_enter", btf).map(|()| "tp_btf")
            }
            None => Err(ProbeError::Other("no kernel BTF".into())),
        };
        probes.push(status("verifier_selftest", r));
    }
    // The TCP and HTTP probes share the connection and socket I/O hooks.
    if cfg.tcp || cfg.http {
        let conn = match (&offsets, &set_state, &tracefs) {
            (Err(e), _, _) | (_, Err(e), _) => Err(clone_err(e)),
            _ => attach_tracepoint(
                &mut ebpf,
                "inet_sock_set_state",
                "sock",
                "inet_sock_set_state",
            ),
        };
        let bytes = match &offsets {
            Err(e) => Err(clone_err(e)),
            Ok(_) => attach_pair_named(
                &mut ebpf,
                hooks,
                btf_ref,
                ("sock_send", "sock_send_length"),
                ("sock_recv", "sock_recv_length"),
            ),
        };
        // Kernels before 6.3 lack the sock_*_length tracepoints: fexit on the TCP functions.
        let bytes = match bytes {
            Ok(hook) => Ok(hook),
            Err(tp_err) if offsets.is_ok() => match btf_ref {
                Some(btf) => attach_fexit_bytes(&mut ebpf, btf)
                    .map_err(|e| ProbeError::Other(format!("{tp_err}; fexit fallback: {e}"))),
                None => Err(tp_err),
            },
            Err(e) => Err(e),
        };
        if cfg.tcp {
            probes.push(status("tcp_connections", clone_result(&conn)));
            let retrans = match &offsets {
                Err(e) => Err(clone_err(e)),
                Ok(_) => attach_one(
                    &mut ebpf,
                    hooks,
                    btf_ref,
                    "tcp_retransmit",
                    "tcp_retransmit_skb",
                ),
            };
            probes.push(status("tcp_retransmits", retrans));
            probes.push(status("tcp_bytes", clone_result(&bytes)));
        }
        if cfg.http {
            // Needs all three: the buffers (sys_enter), the socket calls, the closes.
            let r = match (enter.as_ref(), &conn, &bytes) {
                (Some(Err(e)), _, _) => Err(ProbeError::Other(format!("sys_enter: {e}"))),
                (_, Err(e), _) => Err(ProbeError::Other(format!("connection closes: {e}"))),
                (_, _, Err(e)) => Err(ProbeError::Other(format!("socket I/O: {e}"))),
                (_, _, Ok(hook)) => Ok(*hook),
            };
            probes.push(status("http", r));
        }
    }
    if cfg.lifecycle {
        let r = match &lifecycle {
            Err(e) => Err(clone_err(e)),
            Ok(_) => attach_tracepoint(&mut ebpf, "oom_mark_victim", "oom", "mark_victim").and_then(
                |_| attach_tracepoint(&mut ebpf, "process_exit", "sched", "sched_process_exit"),
            ),
        };
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
    Ok(Loaded { ebpf, probes })
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
        },
        Err(e) => ProbeStatus {
            probe,
            hook: "none",
            up: false,
            reason: Some(e.to_string()),
        },
    }
}

/// Resolves the configured cgroup subtrees into (id, level) filters.
fn cgroup_filters(cfg: &Config, cgroups: &CgroupFs) -> Result<Vec<CgroupFilter>, StartError> {
    let mut out = Vec::new();
    for p in &cfg.syscalls_cgroups {
        let rel = p.strip_prefix(cgroups.root()).unwrap_or(p);
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        let full = cgroups.root().join(rel);
        let meta = std::fs::metadata(&full).map_err(|e| StartError::Cgroup {
            path: full.clone(),
            reason: format!("--syscalls-cgroup: {e}"),
        })?;
        let level = rel.components().count() as u32;
        if level == 0 {
            // The root selects everything: no filter needed.
            return Ok(Vec::new());
        }
        out.push(CgroupFilter {
            cgroup_id: meta.ino(),
            level,
            _pad: 0,
        });
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

fn attach_btf_prog(ebpf: &mut Ebpf, prog: &str, target: &str, btf: &Btf) -> Result<(), ProbeError> {
    let p: &mut BtfTracePoint = program(ebpf, prog)?;
    p.load(target, btf).map_err(|e| program_error(prog, e))?;
    p.attach().map_err(|e| program_error(prog, e))?;
    Ok(())
}

fn attach_raw_prog(ebpf: &mut Ebpf, prog: &str, target: &str) -> Result<(), ProbeError> {
    let p: &mut RawTracePoint = program(ebpf, prog)?;
    p.load().map_err(|e| program_error(prog, e))?;
    p.attach(target).map_err(|e| program_error(prog, e))?;
    Ok(())
}

fn attach_fexit(ebpf: &mut Ebpf, prog: &str, target: &str, btf: &Btf) -> Result<(), ProbeError> {
    let p: &mut FExit = program(ebpf, prog)?;
    p.load(target, btf).map_err(|e| program_error(prog, e))?;
    p.attach().map_err(|e| program_error(prog, e))?;
    Ok(())
}

/// Byte counting through fexit on tcp_sendmsg/tcp_recvmsg (and tcp_sendpage where it exists,
/// which carries sendfile before 6.5).
fn attach_fexit_bytes(ebpf: &mut Ebpf, btf: &Btf) -> Result<&'static str, ProbeError> {
    attach_fexit(ebpf, "tcp_sendmsg_fexit", "tcp_sendmsg", btf)?;
    attach_fexit(ebpf, "tcp_recvmsg_fexit", "tcp_recvmsg", btf)?;
    if let Err(e) = attach_fexit(ebpf, "tcp_sendpage_fexit", "tcp_sendpage", btf) {
        tracing::debug!("tcp_sendpage not hooked (absent since 6.5): {e}");
    }
    Ok("fexit")
}

/// The socket I/O syscalls whose buffers the HTTP probe reads.
const IO_SYSCALLS: [&str; 9] = [
    "read", "write", "readv", "writev", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendfile64",
];

/// `http_sys_enter` / `http_sys_exit` on `syscalls:sys_enter_<name>` / `sys_exit_<name>` of
/// every socket I/O syscall.
fn attach_io_syscalls(ebpf: &mut Ebpf) -> Result<&'static str, ProbeError> {
    for (prog, dir) in [("http_sys_enter", "sys_enter_"), ("http_sys_exit", "sys_exit_")] {
        let p: &mut TracePoint = program(ebpf, prog)?;
        p.load().map_err(|e| program_error(prog, e))?;
        for name in IO_SYSCALLS {
            p.attach("syscalls", &format!("{dir}{name}"))
                .map_err(|e| program_error(prog, e))?;
        }
    }
    Ok("tracepoint")
}

fn unload(ebpf: &mut Ebpf, prog: &str) {
    match ebpf.program_mut(prog) {
        Some(aya::programs::Program::BtfTracePoint(p)) => drop(p.unload()),
        Some(aya::programs::Program::RawTracePoint(p)) => drop(p.unload()),
        _ => {}
    }
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    prog: &str,
    category: &str,
    name: &str,
) -> Result<&'static str, ProbeError> {
    let p: &mut TracePoint = program(ebpf, prog)?;
    p.load().map_err(|e| program_error(prog, e))?;
    p.attach(category, name)
        .map_err(|e| program_error(prog, e))?;
    Ok("tracepoint")
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

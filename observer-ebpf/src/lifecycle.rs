//! Lifecycle probe: OOM kills and the exits of main processes, with exit code or signal.
//!
//! `oom:mark_victim` notes the pid the OOM killer chose; `sched:sched_process_exit` fires in the
//! exiting thread itself, so `bpf_get_current_cgroup_id()` is the process's own cgroup even
//! though the kernel's OOM killer ran in another task's context. A record goes to user space
//! only when the last thread of a process exits, and only for a main process (pid 1 of its pid
//! namespace, or a process whose parent lives in another cgroup) or an OOM victim: the short
//! commands a container runs come and go without a record. BTF or raw tracepoints (no
//! `perf_event_open`); the task layout, and what `mark_victim` passes, come from BTF.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use observer_common::{
    ExitRecord, EXIT_MAIN, EXIT_OOM_KILLED, LOST_LIFECYCLE_RINGBUF_FULL, LOST_OOM_VICTIM_MAP_FULL,
};

use crate::maps::{count_lost, LIFECYCLE, LIFECYCLE_EVENTS, OOM_VICTIMS};

#[inline(always)]
unsafe fn read_at<T: Copy>(base: u64, off: u32) -> Result<T, i64> {
    if base == 0 {
        return Err(0);
    }
    // SAFETY: bpf_probe_read_kernel tolerates bad addresses (returns an error).
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).map_err(|e| e as i64) }
}

#[btf_tracepoint(function = "mark_victim")]
pub fn oom_mark_victim_btf(ctx: BtfTracePointContext) -> i32 {
    on_mark_victim(ctx.arg::<u64>(0));
    0
}

#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn oom_mark_victim_raw(ctx: RawTracePointContext) -> i32 {
    on_mark_victim(ctx.arg::<u64>(0));
    0
}

/// The OOM killer chose a victim: its pid (the argument itself, or read from the victim's task
/// on kernels that pass the task) is kept until it exits.
#[inline(always)]
fn on_mark_victim(arg: u64) {
    let l = LIFECYCLE.load();
    let pid = if l.mark_victim_task != 0 {
        match unsafe { read_at::<i32>(arg, l.task_tgid) } {
            Ok(p) => p as u32,
            Err(_) => return,
        }
    } else {
        arg as u32
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if OOM_VICTIMS.insert(&pid, &now, 0).is_err() {
        count_lost(LOST_OOM_VICTIM_MAP_FULL);
    }
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn process_exit_btf(_ctx: BtfTracePointContext) -> i32 {
    match try_process_exit() {
        Ok(()) | Err(_) => 0,
    }
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn process_exit_raw(_ctx: RawTracePointContext) -> i32 {
    match try_process_exit() {
        Ok(()) | Err(_) => 0,
    }
}

fn try_process_exit() -> Result<(), i64> {
    let l = LIFECYCLE.load();
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = pid_tgid as u32;
    let tgid = (pid_tgid >> 32) as u32;
    let task = unsafe { bpf_get_current_task() };
    // Threads still alive in the process (decremented before this tracepoint fires): only
    // the last thread's exit ends the process.
    let signal: u64 = unsafe { read_at(task, l.task_signal)? };
    let live: i32 = unsafe { read_at(signal, l.signal_live)? };
    if live != 0 {
        return Ok(());
    }
    let mut flags = 0;
    // SAFETY: lookups of plain values; the entries are removed right after.
    if unsafe { OOM_VICTIMS.get(&tgid) }.is_some() {
        flags |= EXIT_OOM_KILLED;
        let _ = OOM_VICTIMS.remove(&tgid);
    } else if pid != tgid && unsafe { OOM_VICTIMS.get(&pid) }.is_some() {
        flags |= EXIT_OOM_KILLED;
        let _ = OOM_VICTIMS.remove(&pid);
    }
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let parent: u64 = unsafe { read_at(task, l.task_real_parent)? };
    if is_main(task, parent, cgroup_id) {
        flags |= EXIT_MAIN;
    }
    if flags == 0 {
        return Ok(());
    }
    let ppid: u32 = unsafe { read_at(parent, l.task_tgid) }.unwrap_or(0);
    let exit_code: i32 = unsafe { read_at(task, l.task_exit_code) }.unwrap_or(0);
    let rec = ExitRecord {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id,
        tgid,
        ppid,
        exit_code: exit_code as u32,
        flags,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if LIFECYCLE_EVENTS.output::<ExitRecord>(&rec, 0).is_err() {
        count_lost(LOST_LIFECYCLE_RINGBUF_FULL);
    }
    Ok(())
}

/// The main process of a container is pid 1 of its pid namespace. Without a pid namespace
/// (host services, hostPID pods) it is the process whose parent (systemd, the runtime's shim)
/// lives in another cgroup; the commands the main process starts share its cgroup.
#[inline(always)]
fn is_main(task: u64, parent: u64, cgroup_id: u64) -> bool {
    let l = LIFECYCLE.load();
    let Ok(pid) = (unsafe { read_at::<u64>(task, l.task_thread_pid) }) else {
        return false;
    };
    let level: u32 = unsafe { read_at(pid, l.pid_level) }.unwrap_or(0);
    if level > 0 {
        let off =
            l.pid_numbers as u64 + (level as u64 & 31) * l.upid_size as u64 + l.upid_nr as u64;
        let nr: i32 = unsafe { read_at(pid, off as u32) }.unwrap_or(0);
        return nr == 1;
    }
    parent_cgroup(parent).is_ok_and(|p| p != cgroup_id)
}

/// `parent->cgroups->dfl_cgrp->kn->id`: the parent's cgroup v2 id.
#[inline(always)]
fn parent_cgroup(parent: u64) -> Result<u64, i64> {
    let l = LIFECYCLE.load();
    unsafe {
        let css_set: u64 = read_at(parent, l.task_cgroups)?;
        let cgrp: u64 = read_at(css_set, l.css_set_dfl_cgrp)?;
        let kn: u64 = read_at(cgrp, l.cgroup_kn)?;
        read_at(kn, l.kernfs_node_id)
    }
}

//! Syscall probe: count, errors by errno and latency per cgroup and syscall, aggregated in the
//! kernel. Hooks `raw_syscalls:sys_enter` / `sys_exit` as BTF tracepoints (or raw tracepoints).
//!
//! Cost per syscall: on entry one helper for the thread id, one for the clock and an inlined
//! array store; on exit the same plus the cgroup id and one per-CPU hash lookup with in-place
//! increments. No event ever leaves the kernel.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use observer_common::{
    SyscallEntry, SyscallErrKey, SyscallKey, SyscallStats, LOST_SYSCALL_ERRNO_MAP_FULL,
    LOST_SYSCALL_MAP_FULL, LOST_SYSCALL_SLOT_COLLISION, MAX_CGROUP_FILTERS, SYSCALL_BUCKETS_NS,
    SYSCALL_NBUCKETS, SYSCALL_SLOTS, WORK_L7, WORK_SYSCALLS,
};

use crate::l7;
use crate::maps::{
    count_lost, CGROUP_FILTERS, CGROUP_FILTER_COUNT, SYSCALL_ENTRY, SYSCALL_ERRORS, SYSCALL_STATS,
    WORK,
};

const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter_btf(ctx: BtfTracePointContext) -> i32 {
    // sys_enter(struct pt_regs *regs, long id)
    on_enter(ctx.arg::<u64>(0), ctx.arg::<i64>(1));
    0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_raw(ctx: RawTracePointContext) -> i32 {
    on_enter(ctx.arg::<u64>(0), ctx.arg::<i64>(1));
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_btf(ctx: BtfTracePointContext) -> i32 {
    // sys_exit(struct pt_regs *regs, long ret)
    on_exit(ctx.arg::<i64>(1));
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_raw(ctx: RawTracePointContext) -> i32 {
    on_exit(ctx.arg::<i64>(1));
    0
}

#[inline(always)]
fn on_enter(regs: u64, nr: i64) {
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(slot) = SYSCALL_ENTRY.get_ptr_mut(tid & (SYSCALL_SLOTS - 1)) {
        let ts_ns = unsafe { bpf_ktime_get_ns() };
        let nr = nr as u32;
        // The L7 path needs the buffer of socket I/O syscalls: one read, only for those.
        let arg = if WORK.load() & WORK_L7 != 0 && l7::io_of(nr) != l7::Io::None {
            // SAFETY: bpf_probe_read_kernel tolerates bad addresses.
            unsafe { bpf_probe_read_kernel((regs + l7::PT_REGS_SI) as *const u64) }.unwrap_or(0)
        } else {
            0
        };
        // SAFETY: array slot pointer checked by the verifier.
        unsafe {
            *slot = SyscallEntry {
                ts_ns,
                tid,
                nr,
                arg,
            };
        }
    }
}

#[inline(always)]
fn on_exit(ret: i64) {
    if WORK.load() & WORK_SYSCALLS == 0 {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(slot) = SYSCALL_ENTRY.get_ptr_mut(tid & (SYSCALL_SLOTS - 1)) else {
        return;
    };
    // SAFETY: array slot pointer checked by the verifier.
    let entry = unsafe { *slot };
    if entry.tid != tid || entry.ts_ns == 0 {
        // Entered before we attached, or another thread with a colliding id overwrote it.
        count_lost(LOST_SYSCALL_SLOT_COLLISION);
        return;
    }
    // Consume the slot so that a missing sys_enter is never paired with a stale entry.
    unsafe { (*slot).ts_ns = 0 };
    let now = unsafe { bpf_ktime_get_ns() };
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if !cgroup_selected() {
        return;
    }
    let latency = now.wrapping_sub(entry.ts_ns);
    let key = SyscallKey {
        cgroup_id,
        nr: entry.nr,
        _pad: 0,
    };
    let is_err = (-4095..0).contains(&ret);
    record(&key, latency, is_err);
    if is_err {
        let ekey = SyscallErrKey {
            cgroup_id,
            nr: entry.nr,
            errno: (-ret) as u32,
        };
        match SYSCALL_ERRORS.get_ptr_mut(&ekey) {
            Some(p) => unsafe { *p += 1 },
            None => {
                if let Err(e) = SYSCALL_ERRORS.insert(&ekey, &1, BPF_NOEXIST) {
                    if e != -EEXIST {
                        count_lost(LOST_SYSCALL_ERRNO_MAP_FULL);
                    } else if let Some(p) = SYSCALL_ERRORS.get_ptr_mut(&ekey) {
                        unsafe { *p += 1 };
                    }
                }
            }
        }
    }
}

/// True when the syscall probe is not restricted, or the current task is inside one of the
/// configured cgroup subtrees.
#[inline(always)]
fn cgroup_selected() -> bool {
    let n = CGROUP_FILTER_COUNT.load();
    if n == 0 {
        return true;
    }
    let mut i = 0u32;
    while i < MAX_CGROUP_FILTERS {
        if i >= n {
            break;
        }
        if CGROUP_FILTERS.current_task_under_cgroup(i) == Ok(true) {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn bucket(latency_ns: u64) -> usize {
    let mut i = 0;
    while i < SYSCALL_BUCKETS_NS.len() {
        if latency_ns <= SYSCALL_BUCKETS_NS[i] {
            return i;
        }
        i += 1;
    }
    SYSCALL_NBUCKETS - 1
}

#[inline(always)]
fn record(key: &SyscallKey, latency: u64, is_err: bool) {
    let b = bucket(latency);
    if let Some(s) = SYSCALL_STATS.get_ptr_mut(key) {
        // SAFETY: per-CPU value of this CPU; `b` < SYSCALL_NBUCKETS.
        unsafe {
            (*s).count += 1;
            (*s).errors += is_err as u64;
            (*s).sum_ns += latency;
            if let Some(c) = (*s).buckets.get_mut(b) {
                *c += 1;
            }
        }
        return;
    }
    let mut v = SyscallStats {
        count: 1,
        errors: is_err as u64,
        sum_ns: latency,
        buckets: [0; SYSCALL_NBUCKETS],
    };
    if let Some(c) = v.buckets.get_mut(b) {
        *c = 1;
    }
    if let Err(e) = SYSCALL_STATS.insert(key, &v, BPF_NOEXIST) {
        if e == -EEXIST {
            // Another CPU created the key between our lookup and insert: add to ours.
            if let Some(s) = SYSCALL_STATS.get_ptr_mut(key) {
                unsafe {
                    (*s).count += 1;
                    (*s).errors += is_err as u64;
                    (*s).sum_ns += latency;
                    if let Some(c) = (*s).buckets.get_mut(b) {
                        *c += 1;
                    }
                }
            }
        } else {
            count_lost(LOST_SYSCALL_MAP_FULL);
        }
    }
}

//! A program the verifier must reject (it reads an argument `sys_enter` does not have). Loaded
//! only with `--probes verifier-selftest`, it proves on each kernel that a load failure keeps
//! the verifier log and turns off only its own probe.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext, EbpfContext};

#[btf_tracepoint(function = "sys_enter")]
pub fn selftest_btf(ctx: BtfTracePointContext) -> i32 {
    // sys_enter has two arguments; the eleventh does not exist. A volatile read, so that the
    // compiler keeps it.
    // SAFETY: never runs: the verifier rejects this access at load time.
    let v = unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u64).add(10)) };
    v as i32
}

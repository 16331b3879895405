//! Empty hooks on syscall entry and exit: the benchmark's floor (the cost of the hook alone).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

#[btf_tracepoint(function = "sys_enter")]
pub fn empty_enter_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn empty_exit_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

//! Kernel programs of the observer.
//!
//! Every hook family has its own module; all maps are in `maps.rs`. Each program is a thin
//! wrapper around a `try_` function. Programs exist in two flavours where the kernel may lack
//! BTF-typed tracepoints: `tp_btf` (cheapest) and `raw_tp` (same arguments, no BTF needed);
//! user space loads the first one the running kernel accepts.
#![no_std]
#![no_main]

mod empty;
mod l7;
mod lifecycle;
mod maps;
mod selftest;
mod sock;
mod syscalls;
mod tcp;
mod tls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a panic, so this is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

//! From kernel maps and records to figures per identity: the L7 ring's records through their
//! protocols into request figures (`capture`, `requests`), the kernel's aggregates read at
//! snapshot time (`aggregate`), the topology built from both, lifecycle events, the live view.

pub mod aggregate;
pub mod capture;
pub mod events;
pub mod lifecyclecapture;
pub mod live;
pub mod names;
pub mod requests;
pub mod topology;

/// The kernel's monotonic clock (`bpf_ktime_get_ns`), in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

//! Types shared by the kernel programs (`observer-ebpf`) and user space (`observer`).
//!
//! Every type is `#[repr(C)]` with explicit padding so that both sides agree on the layout
//! byte for byte; each has a compile-time size assert.
#![no_std]

/// Upper bounds (in nanoseconds) of the syscall latency histogram buckets; a last, implicit
/// bucket holds everything above the final bound. Few and wide on purpose: this histogram
/// exists per cgroup and syscall, so every bucket multiplies the series count.
pub const SYSCALL_BUCKETS_NS: [u64; 5] = [10_000, 100_000, 1_000_000, 10_000_000, 100_000_000];
/// Number of syscall latency buckets, including the overflow bucket.
pub const SYSCALL_NBUCKETS: usize = SYSCALL_BUCKETS_NS.len() + 1;

/// Upper bounds (in microseconds) of the TCP smoothed-RTT histogram buckets, plus overflow.
pub const RTT_BUCKETS_US: [u32; 7] = [100, 500, 1_000, 5_000, 20_000, 100_000, 500_000];
/// Number of RTT buckets, including the overflow bucket.
pub const RTT_NBUCKETS: usize = RTT_BUCKETS_US.len() + 1;

/// Slots of the thread-indexed table of syscall entry timestamps (power of two).
pub const SYSCALL_SLOTS: u32 = 1 << 16;

/// Maximum number of cgroup subtrees the syscall probe can be restricted to.
pub const MAX_CGROUP_FILTERS: u32 = 16;

/// Key of the per-cgroup, per-syscall aggregation map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SyscallKey {
    pub cgroup_id: u64,
    pub nr: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SyscallKey>() == 16);

/// Per-CPU value of the syscall aggregation map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallStats {
    /// Completed calls.
    pub count: u64,
    /// Calls that returned a negative value (errno).
    pub errors: u64,
    /// Sum of latencies, nanoseconds.
    pub sum_ns: u64,
    /// Latency histogram (not cumulative), see [`SYSCALL_BUCKETS_NS`].
    pub buckets: [u64; SYSCALL_NBUCKETS],
}
const _: () = assert!(core::mem::size_of::<SyscallStats>() == 8 * (3 + SYSCALL_NBUCKETS));

/// Key of the per-cgroup, per-syscall, per-errno error map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SyscallErrKey {
    pub cgroup_id: u64,
    pub nr: u32,
    pub errno: u32,
}
const _: () = assert!(core::mem::size_of::<SyscallErrKey>() == 16);

/// Entry of an in-flight syscall, in a table indexed by `tid % SYSCALL_SLOTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallEntry {
    pub ts_ns: u64,
    pub tid: u32,
    pub nr: u32,
    /// For the socket I/O syscalls of [`io_kind`]: the user buffer (`read`/`write`/`sendto`/
    /// `recvfrom`), the `struct iovec *` (`readv`/`writev`) or the `struct msghdr *`
    /// (`sendmsg`/`recvmsg`); 0 otherwise.
    pub buf: u64,
    /// `IO_*` kind of the syscall, `IO_NONE` for any other.
    pub io: u32,
    /// Socket send/receive calls seen inside this syscall so far (only the first one starts at
    /// the beginning of the user buffer).
    pub io_calls: u32,
}
const _: () = assert!(core::mem::size_of::<SyscallEntry>() == 32);

/// Kinds of socket I/O syscalls whose data the HTTP probe looks at.
pub const IO_NONE: u32 = 0;
/// One flat buffer (`read`, `write`, `recvfrom`, `sendto`).
pub const IO_BUF: u32 = 1;
/// A `struct iovec` array (`readv`, `writev`).
pub const IO_IOVEC: u32 = 2;
/// A `struct msghdr` (`recvmsg`, `sendmsg`).
pub const IO_MSGHDR: u32 = 3;
/// No user buffer (`sendfile`: the body comes from a file).
pub const IO_NOBUF: u32 = 4;

/// The I/O kind of syscall `nr` on x86_64 (the numbering of the only architecture built for).
#[inline(always)]
pub fn io_kind(nr: u32) -> u32 {
    match nr {
        0 | 1 | 44 | 45 => IO_BUF,      // read, write, sendto, recvfrom
        19 | 20 => IO_IOVEC,            // readv, writev
        46 | 47 => IO_MSGHDR,           // sendmsg, recvmsg
        40 => IO_NOBUF,                 // sendfile
        _ => IO_NONE,
    }
}

/// Bytes of the start of each HTTP message the kernel hands to user space.
pub const HTTP_PREFIX: usize = 512;

/// [`HttpEvent::kind`]: a message starts (request or response line at the start of the data).
pub const HTTP_EV_START: u8 = 0;
/// [`HttpEvent::kind`]: a connection with HTTP traffic closed.
pub const HTTP_EV_CLOSE: u8 = 1;
/// [`HttpEvent::dir`]: the process sent the data.
pub const HTTP_DIR_SEND: u8 = 0;
/// [`HttpEvent::dir`]: the process received the data.
pub const HTTP_DIR_RECV: u8 = 1;

/// Per-connection state of an HTTP connection (key: `struct sock *`): byte accounting of the
/// current message in each direction, and the socket's addresses (read once, when the
/// connection is entered). `*_bytes` counts from the start of the current message (the call
/// that started it included); `*_last_ns` is the time of the last call; `*_tail` the last up to
/// 8 bytes moved by calls whose data went beyond the captured prefix, right-aligned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpConn {
    pub out_bytes: u64,
    pub out_last_ns: u64,
    pub in_bytes: u64,
    pub in_last_ns: u64,
    pub out_tail: [u8; 8],
    pub in_tail: [u8; 8],
    pub cgroup_id: u64,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Local and remote port (host byte order).
    pub lport: u16,
    pub rport: u16,
    pub _pad: u16,
    /// Local and remote address (IPv4 in the first 4 bytes).
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<HttpConn>() == 96);

/// A record of the HTTP probe's ring buffer, sent cut after `prefix_len` bytes of `prefix`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HttpEvent {
    pub sk: u64,
    pub cgroup_id: u64,
    /// When the call that started the message moved its data (monotonic ns).
    pub ts_ns: u64,
    /// The connection's state just before this event: for a start, the previous message in
    /// the same direction ended with these counters; for a close, the last message of each
    /// direction.
    pub conn: HttpConn,
    /// Bytes moved by the starting call (`START`), 0 for `CLOSE`.
    pub len: u32,
    pub tgid: u32,
    pub kind: u8,
    pub dir: u8,
    pub prefix_len: u16,
    pub _pad0: u32,
    pub prefix: [u8; HTTP_PREFIX],
}
const _: () = assert!(core::mem::size_of::<HttpEvent>() == 24 + 96 + 8 + 8 + HTTP_PREFIX);

/// A cgroup subtree the syscall probe is restricted to: the ancestor of the current cgroup at
/// `level` must have id `cgroup_id`. `level == 0` marks an unused slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CgroupFilter {
    pub cgroup_id: u64,
    pub level: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<CgroupFilter>() == 16);

/// Connect failure reasons, index into [`TcpStats::connect_failures`].
pub const FAIL_REFUSED: usize = 0;
pub const FAIL_TIMEOUT: usize = 1;
pub const FAIL_RESET: usize = 2;
pub const FAIL_UNREACHABLE: usize = 3;
pub const FAIL_OTHER: usize = 4;
pub const FAIL_REASONS: usize = 5;

/// Per-CPU value of the per-cgroup TCP map (key: cgroup id, u64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpStats {
    /// Connections established by accept (index 0) and by connect (index 1).
    pub opened: [u64; 2],
    /// Openings that were entered in the connection table (the rest are counted as lost).
    pub tracked: [u64; 2],
    /// Closes of connections whose opening was seen, by the same direction index; the
    /// connections open now are `tracked - closed_tracked`.
    pub closed_tracked: [u64; 2],
    /// All closes of established connections, including those opened before the observer.
    pub closed: u64,
    pub connect_failures: [u64; FAIL_REASONS],
    pub retransmits: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub rtt_sum_us: u64,
    pub rtt_count: u64,
    pub rtt_buckets: [u64; RTT_NBUCKETS],
}
const _: () = assert!(
    core::mem::size_of::<TcpStats>() == 8 * (2 + 2 + 2 + 1 + FAIL_REASONS + 5 + RTT_NBUCKETS)
);

/// Direction index for [`TcpStats::opened`].
pub const DIR_INBOUND: usize = 0;
pub const DIR_OUTBOUND: usize = 1;

/// Key of the per-edge TCP map: a workload (cgroup) and its peer. For an outbound connection
/// the peer is the server's address and port; for an inbound one the client's address alone
/// (`port` 0: client ports are ephemeral and never become keys).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpEdgeKey {
    pub cgroup_id: u64,
    /// Peer address (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    pub port: u16,
    /// [`DIR_INBOUND`] or [`DIR_OUTBOUND`].
    pub dir: u8,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<TcpEdgeKey>() == 32);

/// Per-CPU value of the per-edge TCP map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpEdgeStats {
    pub connections: u64,
    pub connect_failures: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub retransmits: u64,
}
const _: () = assert!(core::mem::size_of::<TcpEdgeStats>() == 40);

/// Per-socket state of the connection table (key: `struct sock *` as u64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnInfo {
    pub cgroup_id: u64,
    /// Last time (ns, monotonic) an RTT sample was taken for this connection.
    pub last_rtt_ns: u64,
    /// [`DIR_INBOUND`] or [`DIR_OUTBOUND`]; `u32::MAX` while a connect is in progress.
    pub direction: u32,
    pub _pad: u32,
    /// The connection's edge (per-edge figures are added under it).
    pub edge: TcpEdgeKey,
}
const _: () = assert!(core::mem::size_of::<ConnInfo>() == 56);

/// Indexes of the per-CPU counters of records the kernel side could not keep.
pub const LOST_SYSCALL_MAP_FULL: u32 = 0;
pub const LOST_SYSCALL_ERRNO_MAP_FULL: u32 = 1;
pub const LOST_SYSCALL_SLOT_COLLISION: u32 = 2;
pub const LOST_TCP_MAP_FULL: u32 = 3;
pub const LOST_CONN_MAP_FULL: u32 = 4;
pub const LOST_SOCK_READ: u32 = 5;
/// An HTTP record found the ring buffer full.
pub const LOST_HTTP_RINGBUF_FULL: u32 = 6;
/// An HTTP connection found the HTTP connection table full.
pub const LOST_HTTP_CONN_MAP_FULL: u32 = 7;
/// The start of a message could not be read from user memory.
pub const LOST_HTTP_USER_READ: u32 = 8;
/// A per-edge TCP figure found the edge table full.
pub const LOST_TCP_EDGE_MAP_FULL: u32 = 9;
/// A lifecycle record (exit, OOM kill) found its ring buffer full.
pub const LOST_LIFECYCLE_RINGBUF_FULL: u32 = 10;
/// An OOM victim found the victim table full (its kill is then reported as a plain SIGKILL).
pub const LOST_OOM_VICTIM_MAP_FULL: u32 = 11;
pub const LOST_COUNTERS: u32 = 16;

/// Bits of the `WORK` global: what the shared hooks do.
pub const WORK_SYSCALLS: u32 = 1;
pub const WORK_TCP: u32 = 2;
pub const WORK_HTTP: u32 = 4;
/// The HTTP probe takes syscall buffers in `sys_enter` (set when the syscall probe runs it
/// anyway); otherwise it has its own `syscalls:sys_enter_*`/`sys_exit_*` tracepoints on the
/// socket I/O syscalls only.
pub const WORK_HTTP_IN_SYS_ENTER: u32 = 8;

/// Offsets in the `syscalls:sys_enter_*` records, from their format files: the syscall number
/// and the second argument (the buffer, iovec or msghdr of the I/O syscalls).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallTpOffsets {
    pub nr: u32,
    pub arg2: u32,
}
const _: () = assert!(core::mem::size_of::<SyscallTpOffsets>() == 8);

/// Kernel struct offsets located at start from BTF and handed to the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOffsets {
    /// `struct sock` -> `sk_cgrp_data` + `struct sock_cgroup_data` -> `cgroup`.
    pub sock_cgroup: u32,
    /// `struct cgroup` -> `kn`.
    pub cgroup_kn: u32,
    /// `struct kernfs_node` -> `id`.
    pub kernfs_node_id: u32,
    /// `struct sock` -> `__sk_common.skc_family`.
    pub sock_family: u32,
    /// `struct sock` -> `sk_protocol` (u16 since 5.6).
    pub sock_protocol: u32,
    /// `struct sock` -> `sk_err`.
    pub sock_err: u32,
    /// `struct tcp_sock` -> `srtt_us` (microseconds << 3).
    pub tcp_srtt_us: u32,
    /// `struct sock` -> `__sk_common.skc_state` (u8).
    pub sock_state: u32,
    /// `__sk_common.skc_daddr` / `skc_rcv_saddr` (IPv4, network order).
    pub sock_daddr: u32,
    pub sock_rcv_saddr: u32,
    /// `__sk_common.skc_dport` (network order) / `skc_num` (host order).
    pub sock_dport: u32,
    pub sock_num: u32,
    /// `__sk_common.skc_v6_daddr` / `skc_v6_rcv_saddr` (IPv6).
    pub sock_v6_daddr: u32,
    pub sock_v6_rcv_saddr: u32,
}
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 56);

/// Offsets in the `sock:inet_sock_set_state` tracepoint record, from its format file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SetStateOffsets {
    pub skaddr: u32,
    pub oldstate: u32,
    pub newstate: u32,
    pub protocol: u32,
}
const _: () = assert!(core::mem::size_of::<SetStateOffsets>() == 16);

/// Kernel layout the lifecycle probe reads from the exiting task, located from BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LifecycleOffsets {
    /// `task_struct` -> `signal` (pointer to `signal_struct`).
    pub task_signal: u32,
    /// `signal_struct` -> `live` (threads still alive, atomic_t).
    pub signal_live: u32,
    /// `task_struct` -> `exit_code` (status << 8 | signal, as wait(2) reports it).
    pub task_exit_code: u32,
    /// `task_struct` -> `real_parent`.
    pub task_real_parent: u32,
    /// `task_struct` -> `tgid`.
    pub task_tgid: u32,
    /// `task_struct` -> `cgroups` (pointer to `css_set`).
    pub task_cgroups: u32,
    /// `css_set` -> `dfl_cgrp` (the cgroup v2 cgroup).
    pub css_set_dfl_cgrp: u32,
    /// `task_struct` -> `thread_pid` (pointer to `struct pid`).
    pub task_thread_pid: u32,
    /// `struct pid` -> `level` (depth of the task's pid namespace).
    pub pid_level: u32,
    /// `struct pid` -> `numbers` (array of `struct upid`, one per level).
    pub pid_numbers: u32,
    /// Size of `struct upid`.
    pub upid_size: u32,
    /// `struct upid` -> `nr`.
    pub upid_nr: u32,
    /// `cgroup` -> `kn`, `kernfs_node` -> `id` (the cgroup id).
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// Offset of `pid` in the `oom:mark_victim` tracepoint record (tracefs format).
    pub mark_victim_pid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<LifecycleOffsets>() == 64);

/// The exiting process was chosen by the OOM killer.
pub const EXIT_OOM_KILLED: u32 = 1;
/// The exiting process is the main process of its container or service: pid 1 of its pid
/// namespace, or (without a pid namespace) a process whose parent lives in another cgroup.
pub const EXIT_MAIN: u32 = 2;

/// The end of a process, sent once when its last thread exits (main processes and OOM victims
/// only: other processes of a container come and go without a record).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitRecord {
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub tgid: u32,
    pub ppid: u32,
    /// As wait(2) reports it: exit status in bits 8-15, terminating signal in bits 0-6,
    /// core dump in bit 7.
    pub exit_code: u32,
    /// `EXIT_*` bits.
    pub flags: u32,
    pub comm: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<ExitRecord>() == 48);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all these types are #[repr(C)], contain only integers and have no implicit padding.
    unsafe impl aya::Pod for SyscallKey {}
    unsafe impl aya::Pod for SyscallStats {}
    unsafe impl aya::Pod for SyscallErrKey {}
    unsafe impl aya::Pod for SyscallEntry {}
    unsafe impl aya::Pod for CgroupFilter {}
    unsafe impl aya::Pod for TcpStats {}
    unsafe impl aya::Pod for ConnInfo {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for SetStateOffsets {}
    unsafe impl aya::Pod for HttpConn {}
    unsafe impl aya::Pod for SyscallTpOffsets {}
    unsafe impl aya::Pod for TcpEdgeKey {}
    unsafe impl aya::Pod for TcpEdgeStats {}
    unsafe impl aya::Pod for LifecycleOffsets {}
    unsafe impl aya::Pod for ExitRecord {}
}

//! Every map of the observer, with the default sizes; user space may resize them at load
//! time (`EbpfLoader::set_max_entries`).

use aya_ebpf::{
    btf_maps::CgroupArray,
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    Global,
};
use observer_common::{
    ConnInfo, KernelOffsets, L7Conn, L7Event, LifecycleOffsets, SyscallEntry, SyscallErrKey,
    SyscallKey, SyscallStats, TcpEdgeKey, TcpEdgeStats, TcpStats, LOST_COUNTERS,
    MAX_CGROUP_FILTERS, SYSCALL_SLOTS,
};

/// Kernel struct offsets, located from BTF by user space at load time.
#[unsafe(no_mangle)]
pub static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    sock_cgroup: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    sock_family: 0,
    sock_protocol: 0,
    sock_err: 0,
    tcp_srtt_us: 0,
    sock_state: 0,
    sock_daddr: 0,
    sock_rcv_saddr: 0,
    sock_dport: 0,
    sock_num: 0,
    sock_v6_daddr: 0,
    sock_v6_rcv_saddr: 0,
});

/// What the shared socket hooks do (`WORK_*` bits): the TCP probe and the L7 path share the
/// connection and socket I/O hooks, each attached once.
#[unsafe(no_mangle)]
pub static WORK: Global<u32> = Global::new(0);

/// The L7 protocols whose detectors run (bit `1 << id` per `L7_*` id).
#[unsafe(no_mangle)]
pub static L7_PROTOCOLS: Global<u32> = Global::new(0);

/// Bytes waiting in [`L7_EVENTS`] from which a record wakes the reader up at once.
#[unsafe(no_mangle)]
pub static RINGBUF_WAKEUP_BYTES: Global<u64> = Global::new(512 * 1024);

/// Task layout for the lifecycle probe, located from BTF by user space.
#[unsafe(no_mangle)]
pub static LIFECYCLE: Global<LifecycleOffsets> = Global::new(LifecycleOffsets {
    task_signal: 0,
    signal_live: 0,
    task_exit_code: 0,
    task_real_parent: 0,
    task_tgid: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    task_thread_pid: 0,
    pid_level: 0,
    pid_numbers: 0,
    upid_size: 0,
    upid_nr: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    mark_victim_task: 0,
    _pad: 0,
});

/// Kernel layout from a file descriptor to its socket, for the TLS probe's Go programs.
#[unsafe(no_mangle)]
pub static FILES: Global<observer_common::FileOffsets> =
    Global::new(observer_common::FileOffsets {
        task_files: 0,
        files_fdt: 0,
        fdtable_max_fds: 0,
        fdtable_fd: 0,
        file_private_data: 0,
        socket_file: 0,
        socket_sk: 0,
        valid: 0,
    });

/// Number of used entries in [`CGROUP_FILTERS`]; 0 means "trace every cgroup".
#[unsafe(no_mangle)]
pub static CGROUP_FILTER_COUNT: Global<u32> = Global::new(0);

/// Entry timestamp of the in-flight syscall of each thread, indexed by `tid % SYSCALL_SLOTS`.
/// An array (not a hash) because array lookups are inlined by the verifier: no helper call
/// and no hashing on the hottest path of the observer. Two threads whose ids collide in the
/// table and are both inside a syscall at the same moment lose one latency sample, which is
/// counted (`LOST_SYSCALL_SLOT_COLLISION`).
#[map]
pub static SYSCALL_ENTRY: Array<SyscallEntry> = Array::with_max_entries(SYSCALL_SLOTS, 0);

/// Per cgroup and syscall: count, errors, latency histogram.
#[map]
pub static SYSCALL_STATS: PerCpuHashMap<SyscallKey, SyscallStats> =
    PerCpuHashMap::with_max_entries(16384, 0);

/// Per cgroup, syscall and errno: failed calls.
#[map]
pub static SYSCALL_ERRORS: PerCpuHashMap<SyscallErrKey, u64> =
    PerCpuHashMap::with_max_entries(8192, 0);

/// Cgroup subtrees the syscall probe is restricted to (first `CGROUP_FILTER_COUNT` entries):
/// the subtrees' directories, tested with `bpf_current_task_under_cgroup`, which every tracing
/// program may call since 4.9 (`bpf_get_current_ancestor_cgroup_id` is refused to them before
/// 6.4).
#[btf_map]
pub static CGROUP_FILTERS: CgroupArray<{ MAX_CGROUP_FILTERS as usize }> = CgroupArray::new();

/// Per cgroup (v2 id): TCP connection, byte, retransmit and RTT figures.
#[map]
pub static TCP_STATS: PerCpuHashMap<u64, TcpStats> = PerCpuHashMap::with_max_entries(4096, 0);

/// Per (cgroup, peer): TCP connections, failed connects, bytes, retransmits.
#[map]
pub static TCP_EDGES: PerCpuHashMap<TcpEdgeKey, TcpEdgeStats> =
    PerCpuHashMap::with_max_entries(16384, 0);

/// The connection table, keyed by `struct sock *`: owner cgroup, direction, edge, and what
/// the L7 path decided about the connection. Entered at establishment (or at the first call of
/// a connection that predates the observer), removed at the close transition.
#[map]
pub static CONNS: HashMap<u64, ConnInfo> = HashMap::with_max_entries(65536, 0);

/// Connections an L7 protocol claimed, keyed by `struct sock *`: the framer's state. Removed
/// when the socket is destroyed (`tcp_destroy_sock`). Preallocated: tracing programs of older
/// kernels may not use allocating hash maps.
#[map]
pub static L7_CONNS: HashMap<u64, L7Conn> = HashMap::with_max_entries(16384, 0);

/// One record per exchange (and the rare request or close records), for user space.
#[map]
pub static L7_EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Per-CPU scratch: slot 0 holds a call's first bytes and the record built around them, slot 1
/// a connection state being entered.
#[map]
pub static L7_SCRATCH: PerCpuArray<L7Event> = PerCpuArray::with_max_entries(2, 0);

/// Per-CPU: the socket call a framer is to follow, handed from the socket hook to the
/// framer's global function (whose arguments may only be scalars).
#[map]
pub static L7_CALL: PerCpuArray<crate::l7::Call> = PerCpuArray::with_max_entries(1, 0);

/// A `DATA` record being built: the header, and room for twice a record's bytes, so that a
/// read of up to a record's bytes at any offset below a record's bytes stays inside (what the
/// verifier can check with two masked numbers).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct L7DataScratch {
    pub head: [u8; observer_common::L7_EVENT_HEADER],
    pub data: [u8; 2 * observer_common::L7_DATA_MAX],
}

/// Per-CPU scratch of the stream framer: a `DATA` record being built.
#[map]
pub static L7_DATA_SCRATCH: PerCpuArray<L7DataScratch> = PerCpuArray::with_max_entries(1, 0);

/// TLS library calls in flight, by `tid % TLS_SLOTS` (the TLS probe).
#[map]
pub static TLS_CALLS: Array<observer_common::TlsCall> =
    Array::with_max_entries(observer_common::TLS_SLOTS, 0);

/// Per thread, the socket it last received on and a TLS write waiting for its socket.
#[map]
pub static TLS_THREADS: Array<observer_common::TlsThread> =
    Array::with_max_entries(observer_common::TLS_SLOTS, 0);

/// TLS connections by (`SSL` object, process): the socket and the plaintext's protocol
/// decision.
#[map]
pub static TLS_CONNS: LruHashMap<[u64; 2], observer_common::TlsConn> =
    LruHashMap::with_max_entries(16384, 0);

/// Go `crypto/tls` calls in flight, by (goroutine, process): an LRU table, so a call whose
/// return was never seen (a panic unwinding through it) costs nothing.
#[map]
pub static GO_TLS_CALLS: LruHashMap<[u64; 2], observer_common::GoTlsCall> =
    LruHashMap::with_max_entries(16384, 0);

/// Pids of processes that exec'd a new program, for user space to probe their TLS libraries.
#[map]
pub static EXEC_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Records the kernel side could not keep, by `LOST_*` index.
/// Processes the OOM killer chose (`oom:mark_victim`), by pid, until they exit.
#[map]
pub static OOM_VICTIMS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(1024, 0);

/// Exits of main processes and OOM victims (rare: a few per second on a busy node).
#[map]
pub static LIFECYCLE_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_COUNTERS, 0);

/// Counts one lost record of the given kind.
#[inline(always)]
pub fn count_lost(kind: u32) {
    if let Some(p) = LOST.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot, pointer checked by the verifier.
        unsafe { *p += 1 };
    }
}

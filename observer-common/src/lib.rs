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
    /// The second argument of a socket I/O syscall (its buffer, iovec or msghdr), kept for the
    /// L7 path when both run: the socket hooks then read it here instead of from the task's
    /// saved registers.
    pub arg: u64,
}
const _: () = assert!(core::mem::size_of::<SyscallEntry>() == 24);

/// L7 protocol ids (`L7Conn::proto`, `L7Event::proto`). 0 is "not decided yet", [`L7_NONE`]
/// "no protocol wants this connection". Each id is also a bit (`1 << id`) of the
/// `L7_PROTOCOLS` global that says which detectors run.
pub const L7_UNDECIDED: u8 = 0;
/// HTTP/1.0 and HTTP/1.1.
pub const L7_HTTP1: u8 = 1;
/// Redis (RESP2 and RESP3), a stream protocol.
pub const L7_REDIS: u8 = 2;
/// PostgreSQL (frontend/backend protocol v3), a stream protocol.
pub const L7_POSTGRES: u8 = 3;
/// MySQL and MariaDB (client/server protocol), a stream protocol.
pub const L7_MYSQL: u8 = 4;
/// Memcached (text protocol), a stream protocol.
pub const L7_MEMCACHED: u8 = 5;
/// DNS over UDP: every datagram to or from port 53 as a `DATA` record (no connection state).
pub const L7_DNS: u8 = 6;
/// HTTP/2 (cleartext, prior knowledge), gRPC included.
pub const L7_HTTP2: u8 = 7;
/// gRPC calls: user space's own id for their metric families (the kernel claims the
/// connection as [`L7_HTTP2`]).
pub const L7_GRPC: u8 = 8;
/// No registered protocol matched the connection's first bytes.
pub const L7_NONE: u8 = 255;

/// Bytes of a request's first call kept per connection (and sent with its exchange).
pub const L7_REQ_MAX: usize = 256;
/// The most bytes of a message's start the kernel sends (a call's head is read under a mask
/// of 255): a request this long may go on past what user space sees.
pub const L7_SNIP_MAX: usize = 255;
/// Bytes of a response's first call sent with its exchange.
pub const L7_RESP_MAX: usize = 256;
/// Most bytes of a short request-direction call kept to be joined with the next
/// ([`L7Conn::carry`]).
pub const L7_CARRY_MAX: usize = 6;

/// Which end of an exchange the observed process is.
pub const L7_SIDE_UNKNOWN: u8 = 0;
pub const L7_SIDE_SERVER: u8 = 1;
pub const L7_SIDE_CLIENT: u8 = 2;

/// [`L7Event::kind`]: a response started (with the request it answers, when one was pending).
pub const L7_EV_EXCHANGE: u8 = 0;
/// [`L7Event::kind`]: a request whose response had not started when the next request started
/// (requests pipelined call by call); its response comes in a later `EXCHANGE` without request.
pub const L7_EV_REQUEST: u8 = 1;
/// [`L7Event::kind`]: the socket is gone while a request was pending or a response was still
/// being transferred.
pub const L7_EV_CLOSE: u8 = 2;
/// [`L7Event::kind`]: the bytes of one call of a stream protocol's connection (one whose
/// messages user space frames itself: pipelined, several in a call): `ts_ns` is when the call
/// ended, `req_ts` when its syscall began (else `ts_ns`), `resp_len` the call's bytes and
/// `resp_snip` those that follow the header (at most [`L7_DATA_MAX`]); `L7_EVF_SEND` says
/// the direction.
pub const L7_EV_DATA: u8 = 3;
/// [`L7Event::flags`] of a `DATA` record: the call sent (else it received).
pub const L7_EVF_SEND: u8 = 2;
/// [`L7Event::flags`] of a `DATA` record: a datagram (a whole message of a UDP socket), not a
/// piece of a connection's stream.
pub const L7_EVF_DGRAM: u8 = 4;
/// Bytes of a stream protocol's call sent in its `DATA` record (the rest is only counted).
pub const L7_DATA_MAX: usize = 4096;

/// [`L7Event::flags`] of a `REQUEST`: the request's answer already started (the record before,
/// an `EXCHANGE` without request, is it): its send hook ran only after the answer came back.
pub const L7_EVF_ANSWERED: u8 = 1;

/// The calls of one direction since its current message started: bytes, time of the last
/// call, and its last up to 8 bytes (right-aligned; for the end of a chunked body).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L7Dir {
    pub bytes: u64,
    pub last_ns: u64,
    pub tail: [u8; 8],
}
const _: () = assert!(core::mem::size_of::<L7Dir>() == 24);

/// The peer of a connection: family (`AF_INET`/`AF_INET6`), its port (host order) and
/// address (IPv4 in the first 4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L7Peer {
    pub family: u16,
    pub port: u16,
    pub _pad: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<L7Peer>() == 24);

/// Per-connection state of an L7 connection (key: `struct sock *`), made when a protocol's
/// detector claims the connection and removed when the socket is destroyed. The framer of the
/// protocol keeps here the request waiting for its response (time, first bytes) and the
/// counters of the response in flight.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct L7Conn {
    /// The socket's cgroup (v2 id).
    pub cgroup_id: u64,
    /// The socket's cgroup as a kernel pointer, compared with the socket's at every request
    /// start (one read instead of three).
    pub cgroup_ptr: u64,
    /// First byte of the pending request (0: none pending).
    pub req_ts: u64,
    /// When the last response started that had no request pending (0: none since): a client's
    /// request whose send hook runs only after its answer came back (a preempted sender) is
    /// paired with it.
    pub orphan_ts: u64,
    /// The response direction since the current response started.
    pub resp: L7Dir,
    pub peer: L7Peer,
    /// Bytes of the pending request's first call.
    pub req_len: u32,
    /// Bytes of the current response's first call.
    pub resp_first: u32,
    /// The process that made the pending request's call.
    pub tgid: u32,
    pub proto: u8,
    pub side: u8,
    /// `L7_F_*` bits the protocol's framer keeps.
    pub flags: u8,
    /// Bytes in `carry`.
    pub carry_len: u8,
    /// Bytes of `req` holding the pending request's first bytes.
    pub req_snip: u16,
    /// HTTP/1.x: a request-direction call too short to show a request line (Go's server reads
    /// one byte ahead while a handler runs), kept to be joined with the next call.
    pub carry: [u8; L7_CARRY_MAX],
    pub req: [u8; L7_REQ_MAX],
}
const _: () = assert!(core::mem::size_of::<L7Conn>() == 32 + 24 + 24 + 24 + L7_REQ_MAX);

/// [`L7Conn::flags`]: user space may hold an exchange of this connection open that only the
/// socket's end can finish (e.g. an interim HTTP response whose final one never came), so its
/// destruction sends a `CLOSE` record even with nothing pending here.
pub const L7_F_OPEN_AT_USER: u8 = 1;
/// [`L7Conn::flags`], HTTP/1.x: the pending request's head may go on in the next
/// request-direction calls (its calls so far were read whole and did not end it): they are
/// added to [`L7Conn::req`] until it ends or [`L7_HEAD_JOIN_MAX`] bytes are held.
pub const L7_F_HEAD_OPEN: u8 = 2;
/// How many of a request head's first bytes are joined from calls (a request line cut by a
/// client that writes it in pieces, or by a read that came too early).
pub const L7_HEAD_JOIN_MAX: usize = 128;

/// A record of the L7 ring: the exchange (or request, or close) of one connection, cut after
/// `L7_EVENT_HEADER + L7_RESP_MAX + req_snip` bytes. `data` holds the response's first bytes
/// (`resp_snip` of them, at 0, where the kernel read the call's data) and the request's
/// (`req_snip`, at `L7_RESP_MAX`: a fixed place, so the kernel copies them whole and aligned).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct L7Event {
    pub sk: u64,
    pub cgroup_id: u64,
    /// When the record's event happened: the response's first byte (`EXCHANGE`), the flushed
    /// request's first byte (`REQUEST`), the socket's end (`CLOSE`); monotonic ns.
    pub ts_ns: u64,
    /// First byte of the request this record carries (0: none).
    pub req_ts: u64,
    /// The response direction's counters just before this record: the previous response
    /// ended with them.
    pub prev: L7Dir,
    pub peer: L7Peer,
    /// Bytes of the response's first call (`EXCHANGE`).
    pub resp_len: u32,
    /// Bytes of the request's first call.
    pub req_len: u32,
    /// The process that made the request's call (else the response's).
    pub tgid: u32,
    pub proto: u8,
    pub kind: u8,
    pub side: u8,
    /// `L7_EVF_*` bits.
    pub flags: u8,
    pub req_snip: u16,
    pub resp_snip: u16,
    pub _pad2: u32,
    pub data: [u8; L7_REQ_MAX + L7_RESP_MAX],
}
/// Bytes of an [`L7Event`] before its data.
pub const L7_EVENT_HEADER: usize = 32 + 24 + 24 + 16 + 8;
const _: () =
    assert!(core::mem::size_of::<L7Event>() == L7_EVENT_HEADER + L7_REQ_MAX + L7_RESP_MAX);

/// A `DATA` record as the kernel builds it: an [`L7Event`]'s header and up to
/// [`L7_DATA_MAX`] bytes of the call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct L7Data {
    pub head: [u8; L7_EVENT_HEADER],
    pub data: [u8; L7_DATA_MAX],
}

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
/// [`ConnInfo::direction`] of a connection whose opening was not seen (it predates the
/// observer).
pub const DIR_UNKNOWN: u32 = 2;

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
    /// The connection's L7 protocol (`L7_*` id): [`L7_UNDECIDED`] until its first bytes were
    /// looked at, [`L7_NONE`] once no protocol wanted them.
    pub l7: u8,
    /// Calls whose bytes were looked at while undecided.
    pub l7_tries: u8,
    /// 1 once the connection passed through its close transition (counted then); the entry
    /// stays until the socket is destroyed, so data read after the close still belongs to it.
    pub closed: u8,
    pub _pad: u8,
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
/// An L7 record found the ring buffer full.
pub const LOST_L7_RINGBUF_FULL: u32 = 6;
/// An L7 connection found the L7 connection table full.
pub const LOST_L7_CONN_MAP_FULL: u32 = 7;
/// A call's data could not be read from user memory.
pub const LOST_L7_USER_READ: u32 = 8;
/// A per-edge TCP figure found the edge table full.
pub const LOST_TCP_EDGE_MAP_FULL: u32 = 9;
/// A lifecycle record (exit, OOM kill) found its ring buffer full.
pub const LOST_LIFECYCLE_RINGBUF_FULL: u32 = 10;
/// An OOM victim found the victim table full (its kill is then reported as a plain SIGKILL).
pub const LOST_OOM_VICTIM_MAP_FULL: u32 = 11;
/// A connection's L7 state was found changed under it (another cgroup at a request start:
/// the socket memory was reused without its destruction being seen); the state was reset.
pub const LOST_L7_STALE_STATE: u32 = 12;
/// A TLS library call found its thread's slot taken by another thread's call in flight (the
/// slots are indexed by thread id); the later call is not followed.
pub const LOST_TLS_SLOT_COLLISION: u32 = 13;
/// A TLS call's plaintext could not be tied to a socket (no socket call inside it, and none
/// seen before for its `SSL` object).
pub const LOST_TLS_NO_SOCKET: u32 = 14;
/// A TLS connection found the TLS connection table full.
pub const LOST_TLS_CONN_MAP_FULL: u32 = 15;
/// A Go `crypto/tls` call's connection was not found to sit on a TCP socket (a `net.Conn`
/// other than a `*net.TCPConn`, or a descriptor that is no TCP socket): not followed.
pub const LOST_TLS_GO_NO_SOCKET: u32 = 16;
/// A Go `crypto/tls` call in flight found the table of such calls full (an LRU table: the
/// call heard of longest ago gave way).
pub const LOST_TLS_GO_CALL_MAP_FULL: u32 = 17;
pub const LOST_COUNTERS: u32 = 24;

/// Bits of the `WORK` global: what the shared hooks do.
pub const WORK_SYSCALLS: u32 = 1;
pub const WORK_TCP: u32 = 2;
/// The L7 path runs (which protocols: the `L7_PROTOCOLS` global).
pub const WORK_L7: u32 = 4;
/// `sys_enter` keeps each thread's syscall entry in `SYSCALL_ENTRY` (the syscall probe runs, or
/// the L7 path needs it on a kernel without `bpf_task_pt_regs`).
pub const WORK_ENTRY_SLOTS: u32 = 8;
/// The kernel has `bpf_get_current_task_btf` and `bpf_task_pt_regs` (5.15).
pub const WORK_TASK_REGS: u32 = 16;
/// The TLS probe runs: the socket hooks note the socket under a TLS library call in flight.
pub const WORK_TLS: u32 = 32;

/// Bit set in the key (`L7Event::sk`, the `L7_CONNS` key) of a TLS connection's plaintext: its
/// own L7 state beside the socket's (whose ciphertext no protocol claims). Socket addresses
/// are aligned, so the bit is free; `key & !TLS_KEY` is the socket.
pub const TLS_KEY: u64 = 1;

/// Whether an L7 key is a TLS connection's plaintext.
#[inline(always)]
pub const fn is_tls_key(key: u64) -> bool {
    key & TLS_KEY != 0
}

/// Slots of TLS library calls in flight, indexed by `tid % TLS_SLOTS`.
pub const TLS_SLOTS: u32 = 1 << 12;

/// A TLS library call in flight (`SSL_read`, `SSL_write` and their `_ex` forms), from its entry
/// uprobe to its return uprobe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsCall {
    /// The `SSL` object.
    pub ssl: u64,
    /// The plaintext buffer.
    pub buf: u64,
    /// `_ex` forms: where the library writes the byte count (0 for the plain forms, whose
    /// return value is the count).
    pub count_ptr: u64,
    pub start_ns: u64,
    /// The socket the call read or wrote under it (0 if none: data the library had buffered).
    pub sk: u64,
    pub tid: u32,
    /// 1 for a write.
    pub send: u32,
}
const _: () = assert!(core::mem::size_of::<TlsCall>() == 48);

/// The TCP socket a thread last received on (`tid % TLS_SLOTS`), for libraries whose `SSL`
/// object reads and writes memory, not the socket (Node.js, Python's asyncio): a connection's
/// ciphertext is received, then handed to the library, on the same thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsThread {
    pub recv_sk: u64,
    pub tid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<TlsThread>() == 16);

/// A TLS connection (per `SSL` object): its socket and how far its plaintext's protocol is
/// decided.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsConn {
    pub sk: u64,
    /// [`L7_UNDECIDED`], [`L7_NONE`] or the protocol claimed.
    pub l7: u8,
    pub tries: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<TlsConn>() == 16);

/// A Go `crypto/tls` call in flight (`(*Conn).Read` / `(*Conn).Write`), by goroutine: a
/// goroutine parked in a read resumes on any thread, so the thread cannot key it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GoTlsCall {
    /// The `*tls.Conn`.
    pub conn: u64,
    /// The plaintext buffer.
    pub buf: u64,
    pub start_ns: u64,
    /// The TCP socket under the connection (from its descriptor, at entry).
    pub sk: u64,
    /// 1 for a write.
    pub send: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<GoTlsCall>() == 40);

/// Kernel layout the TLS probe reads to find the socket behind one of the current process's
/// file descriptors (Go's `crypto/tls` connections name theirs), located from BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FileOffsets {
    /// `task_struct` -> `files`.
    pub task_files: u32,
    /// `files_struct` -> `fdt`.
    pub files_fdt: u32,
    /// `fdtable` -> `max_fds` / `fd`.
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    /// `file` -> `private_data` (the `struct socket` of a socket's file).
    pub file_private_data: u32,
    /// `socket` -> `file` (back to the file: proves the private data is a socket) / `sk`.
    pub socket_file: u32,
    pub socket_sk: u32,
    /// 1 when located (the Go programs are attached only then).
    pub valid: u32,
}
const _: () = assert!(core::mem::size_of::<FileOffsets>() == 32);

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
    /// 1 when the `mark_victim` tracepoint's argument is the victim's `struct task_struct *`
    /// (newer kernels), 0 when it is its pid (`int`, 5.10 to 6.x).
    pub mark_victim_task: u32,
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
    unsafe impl aya::Pod for TcpStats {}
    unsafe impl aya::Pod for ConnInfo {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for FileOffsets {}
    unsafe impl aya::Pod for GoTlsCall {}
    unsafe impl aya::Pod for SetStateOffsets {}
    unsafe impl aya::Pod for L7Conn {}
    unsafe impl aya::Pod for L7Dir {}
    unsafe impl aya::Pod for TcpEdgeKey {}
    unsafe impl aya::Pod for TcpEdgeStats {}
    unsafe impl aya::Pod for LifecycleOffsets {}
    unsafe impl aya::Pod for ExitRecord {}
}

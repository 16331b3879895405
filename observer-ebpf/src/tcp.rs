//! TCP probe: connections opened/closed/failed, retransmits, payload bytes and RTT per cgroup.
//!
//! Hooks that fire per connection (`sock:inet_sock_set_state`, `tcp:tcp_retransmit_skb`) and per
//! socket I/O call (`sock:sock_send_length`, `sock:sock_recv_length`), never per packet. The
//! owning cgroup is read from the socket, so softirq-context events are attributed correctly.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, fexit, raw_tracepoint},
    programs::{BtfTracePointContext, FExitContext, RawTracePointContext},
    EbpfContext,
};
use aya_log_ebpf::warn;
use observer_common::{
    ConnInfo, TcpEdgeKey, TcpEdgeStats, TcpStats, DIR_INBOUND, DIR_OUTBOUND, DIR_UNKNOWN,
    FAIL_OTHER, FAIL_REFUSED, FAIL_RESET, FAIL_TIMEOUT, FAIL_UNREACHABLE, L7_NONE, L7_UNDECIDED,
    LOST_CONN_MAP_FULL, LOST_SOCK_READ, LOST_TCP_EDGE_MAP_FULL, LOST_TCP_MAP_FULL, RTT_BUCKETS_US,
    RTT_NBUCKETS, WORK_L7, WORK_TCP, WORK_TLS,
};

use crate::{
    l7::{self, Sock},
    maps::{count_lost, CONNS, TCP_EDGES, TCP_STATS, WORK},
    sock,
};

const BPF_NOEXIST: u64 = 1;

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_FIN_WAIT2: i32 = 5;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;
const TCP_CLOSING: i32 = 11;

const ECONNRESET: i32 = 104;
const ENETUNREACH: i32 = 101;
const ETIMEDOUT: i32 = 110;
const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;

/// Minimum interval between two RTT samples of one connection.
const RTT_SAMPLE_INTERVAL_NS: u64 = 1_000_000_000;

/// States of an established connection, each of which ends with a traced transition to CLOSE.
#[inline(always)]
fn is_open_state(state: i32) -> bool {
    matches!(
        state,
        TCP_ESTABLISHED
            | TCP_FIN_WAIT1
            | TCP_FIN_WAIT2
            | TCP_CLOSE_WAIT
            | TCP_LAST_ACK
            | TCP_CLOSING
    )
}

/// Applies `f` to this CPU's `TcpStats` of `cgroup_id`, creating the entry if needed.
#[inline(always)]
fn with_stats(cgroup_id: u64, f: impl Fn(&mut TcpStats)) {
    if let Some(s) = TCP_STATS.get_ptr_mut(&cgroup_id) {
        // SAFETY: this CPU's value, pointer checked by the verifier.
        f(unsafe { &mut *s });
        return;
    }
    let mut v = TcpStats::default();
    f(&mut v);
    if TCP_STATS.insert(&cgroup_id, &v, BPF_NOEXIST).is_err() {
        // Either created concurrently (then add to it) or the map is full.
        match TCP_STATS.get_ptr_mut(&cgroup_id) {
            Some(s) => f(unsafe { &mut *s }),
            None => count_lost(LOST_TCP_MAP_FULL),
        }
    }
}

/// Applies `f` to this CPU's figures of the edge `key`, creating the entry if needed.
#[inline(always)]
fn with_edge(key: &TcpEdgeKey, f: impl Fn(&mut TcpEdgeStats)) {
    if let Some(s) = TCP_EDGES.get_ptr_mut(key) {
        // SAFETY: this CPU's value, pointer checked by the verifier.
        f(unsafe { &mut *s });
        return;
    }
    let mut v = TcpEdgeStats::default();
    f(&mut v);
    if TCP_EDGES.insert(key, &v, BPF_NOEXIST).is_err() {
        match TCP_EDGES.get_ptr_mut(key) {
            Some(s) => f(unsafe { &mut *s }),
            None => count_lost(LOST_TCP_EDGE_MAP_FULL),
        }
    }
}

#[inline(always)]
fn edge_bytes(key: &TcpEdgeKey, ret: i32, send: bool) {
    with_edge(key, |e| {
        if send {
            e.sent_bytes += ret as u64;
        } else {
            e.received_bytes += ret as u64;
        }
    });
}

#[inline(always)]
fn rtt_bucket(us: u32) -> usize {
    let mut i = 0;
    while i < RTT_BUCKETS_US.len() {
        if us <= RTT_BUCKETS_US[i] {
            return i;
        }
        i += 1;
    }
    RTT_NBUCKETS - 1
}

#[inline(always)]
fn observe_rtt(s: &mut TcpStats, us: u32) {
    s.rtt_sum_us += us as u64;
    s.rtt_count += 1;
    if let Some(c) = s.rtt_buckets.get_mut(rtt_bucket(us)) {
        *c += 1;
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    // inet_sock_set_state(const struct sock *sk, const int oldstate, const int newstate)
    let _ = try_set_state(
        &ctx,
        ctx.arg::<u64>(0),
        ctx.arg::<i32>(1),
        ctx.arg::<i32>(2),
    );
    0
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_raw(ctx: RawTracePointContext) -> i32 {
    let _ = try_set_state(
        &ctx,
        ctx.arg::<u64>(0),
        ctx.arg::<i64>(1) as i32,
        ctx.arg::<i64>(2) as i32,
    );
    0
}

/// A socket is destroyed (after its close, once the process let go of it): the end of its L7
/// state.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock_btf(ctx: BtfTracePointContext) -> i32 {
    // tcp_destroy_sock(struct sock *sk)
    if WORK.load() & WORK_L7 != 0 {
        l7::on_destroy(ctx.arg::<u64>(0));
    }
    0
}

#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock_raw(ctx: RawTracePointContext) -> i32 {
    if WORK.load() & WORK_L7 != 0 {
        l7::on_destroy(ctx.arg::<u64>(0));
    }
    0
}

fn try_set_state<C: EbpfContext>(ctx: &C, sk: u64, old: i32, new: i32) -> Result<(), i64> {
    if !sock::is_tcp(sk) {
        return Ok(());
    }
    let work = WORK.load();
    let opened = match (old, new) {
        (TCP_SYN_SENT, TCP_ESTABLISHED) => Some(DIR_OUTBOUND),
        (TCP_SYN_RECV, TCP_ESTABLISHED) => Some(DIR_INBOUND),
        _ => None,
    };
    if let Some(dir) = opened {
        if work & WORK_L7 != 0 {
            // A new connection on this socket memory starts with no L7 state.
            l7::forget(sk);
        }
        let cgroup_id = sock::cgroup_id(sk).inspect_err(|_| count_lost(LOST_SOCK_READ))?;
        let now = unsafe { bpf_ktime_get_ns() };
        let edge = sock::edge_key(sk, cgroup_id, dir as u32);
        let info = ConnInfo {
            cgroup_id,
            last_rtt_ns: now,
            direction: dir as u32,
            l7: L7_UNDECIDED,
            l7_tries: 0,
            closed: 0,
            _pad: 0,
            edge,
        };
        let tracked = match CONNS.insert(&sk, &info, 0) {
            Ok(()) => true,
            Err(_) => {
                count_lost(LOST_CONN_MAP_FULL);
                false
            }
        };
        if work & WORK_TCP == 0 {
            return Ok(());
        }
        let rtt = sock::srtt_us(sk);
        with_edge(&edge, |e| e.connections += 1);
        if !tracked {
            // Rare (the table is full): worth a line in the observer's log.
            warn!(
                ctx,
                "connection table full: connection of cgroup {} not tracked", cgroup_id
            );
        }
        with_stats(cgroup_id, |s| {
            s.opened[dir] += 1;
            if tracked {
                s.tracked[dir] += 1;
            }
            if rtt > 0 {
                observe_rtt(s, rtt);
            }
        });
        return Ok(());
    }
    if new != TCP_CLOSE {
        return Ok(());
    }
    if old == TCP_SYN_SENT {
        if work & WORK_TCP == 0 {
            return Ok(());
        }
        let reason = match sock::error(sk) {
            ECONNREFUSED => FAIL_REFUSED,
            ETIMEDOUT => FAIL_TIMEOUT,
            ECONNRESET => FAIL_RESET,
            EHOSTUNREACH | ENETUNREACH => FAIL_UNREACHABLE,
            _ => FAIL_OTHER,
        };
        let cgroup_id = sock::cgroup_id(sk).inspect_err(|_| count_lost(LOST_SOCK_READ))?;
        with_stats(cgroup_id, |s| s.connect_failures[reason] += 1);
        let edge = sock::edge_key(sk, cgroup_id, DIR_OUTBOUND as u32);
        with_edge(&edge, |e| e.connect_failures += 1);
        return Ok(());
    }
    if !is_open_state(old) {
        return Ok(());
    }
    // A close of an established connection.
    let found = unsafe { CONNS.get(&sk) }.map(|c| (c.cgroup_id, c.direction));
    let _ = CONNS.remove(&sk);
    if work & WORK_TCP == 0 {
        return Ok(());
    }
    let (cgroup_id, dir) = match found {
        Some(f) => f,
        None => (
            sock::cgroup_id(sk).inspect_err(|_| count_lost(LOST_SOCK_READ))?,
            DIR_UNKNOWN,
        ),
    };
    with_stats(cgroup_id, |s| {
        s.closed += 1;
        if let Some(c) = s.closed_tracked.get_mut(dir as usize) {
            *c += 1;
        }
    });
    Ok(())
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_btf(ctx: BtfTracePointContext) -> i32 {
    // tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb)
    on_retransmit(ctx.arg::<u64>(0));
    0
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit_raw(ctx: RawTracePointContext) -> i32 {
    on_retransmit(ctx.arg::<u64>(0));
    0
}

#[inline(always)]
fn on_retransmit(sk: u64) {
    if WORK.load() & WORK_TCP == 0 {
        return;
    }
    let cgroup_id = match CONNS.get_ptr(&sk) {
        Some(c) => {
            // SAFETY: map value pointer checked by the verifier.
            let c = unsafe { &*c };
            with_edge(&c.edge, |e| e.retransmits += 1);
            c.cgroup_id
        }
        None => match sock::cgroup_id(sk) {
            Ok(id) => id,
            Err(_) => {
                count_lost(LOST_SOCK_READ);
                return;
            }
        },
    };
    with_stats(cgroup_id, |s| s.retransmits += 1);
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_btf(ctx: BtfTracePointContext) -> i32 {
    // sock_send_length(struct sock *sk, int ret, int flags)
    on_io(ctx.arg::<u64>(0), ctx.arg::<i32>(1), true);
    0
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_raw(ctx: RawTracePointContext) -> i32 {
    on_io(ctx.arg::<u64>(0), ctx.arg::<i64>(1) as i32, true);
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_btf(ctx: BtfTracePointContext) -> i32 {
    // sock_recv_length(struct sock *sk, int ret, int flags)
    if !peek(ctx.arg::<i32>(2) as i64) {
        on_io(ctx.arg::<u64>(0), ctx.arg::<i32>(1), false);
    }
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_raw(ctx: RawTracePointContext) -> i32 {
    if !peek(ctx.arg::<i64>(2)) {
        on_io(ctx.arg::<u64>(0), ctx.arg::<i64>(1) as i32, false);
    }
    0
}

/// `MSG_PEEK`: a receive that leaves its bytes in the socket for the next one (Envoy's
/// listener filters look at a connection's first bytes so, nginx checks a client and its idle
/// upstream connections that way); the bytes count, and are parsed, when they are read.
const MSG_PEEK: i64 = 0x2;
/// `MSG_ERRQUEUE`: a receive of the socket's error queue (zero-copy completions, timestamps),
/// not of its stream.
const MSG_ERRQUEUE: i64 = 0x2000;

/// Whether a receive's `flags` make it no read of the connection's bytes.
#[inline(always)]
pub fn peek(flags: i64) -> bool {
    flags & (MSG_PEEK | MSG_ERRQUEUE) != 0
}

/// One send or receive call. Known connections are found in `CONNS` (one lookup, shared by
/// the TCP figures and the L7 path); an open TCP socket not in it (opened before the observer
/// started) is entered on first sight, so the socket reads happen once per connection.
#[inline(always)]
fn on_io(sk: u64, ret: i32, send: bool) {
    if ret <= 0 {
        return;
    }
    let work = WORK.load();
    let now = unsafe { bpf_ktime_get_ns() };
    let s = match CONNS.get_ptr_mut(&sk) {
        Some(c) => Sock::known(c),
        None => enter(sk, now),
    };
    if work & WORK_TCP != 0 {
        if s.tcp {
            tcp_bytes(
                sk,
                s.conn,
                u64::from(ret as u32) | u64::from(send) << 32,
                now,
            );
        }
    }
    if work & WORK_L7 != 0 {
        // A TLS library's own socket call carries ciphertext: its plaintext comes from the
        // library's call (the TLS probe), and the connection's bytes are left alone.
        if work & WORK_TLS != 0 && s.tcp && crate::tls::on_socket_call(sk, send) {
            if !s.conn.is_null() {
                // SAFETY: map value pointer checked by the verifier.
                unsafe { (*s.conn).l7 = L7_NONE };
            }
            return;
        }
        l7::on_io(sk, s, ret as u32, send, now);
    }
}

/// Enters a TCP socket the table does not know. Only a connection that will still pass through
/// a traced close is entered (a socket the peer already closed is read from after its close
/// transition). Its first RTT sample is taken when it is entered.
#[inline(always)]
fn enter(sk: u64, now: u64) -> Sock {
    if !sock::is_tcp(sk) {
        return Sock::NOT_TCP;
    }
    if !is_open_state(sock::state(sk) as i32) {
        return Sock::LOOSE;
    }
    let Ok(cgroup_id) = sock::cgroup_id(sk) else {
        count_lost(LOST_SOCK_READ);
        return Sock::LOOSE;
    };
    let edge = sock::edge_key(sk, cgroup_id, DIR_UNKNOWN);
    let info = ConnInfo {
        cgroup_id,
        // An RTT sample is due at once.
        last_rtt_ns: now.wrapping_sub(RTT_SAMPLE_INTERVAL_NS),
        direction: DIR_UNKNOWN,
        l7: L7_UNDECIDED,
        l7_tries: 0,
        closed: 0,
        _pad: 0,
        edge,
    };
    if CONNS.insert(&sk, &info, BPF_NOEXIST).is_err() {
        count_lost(LOST_CONN_MAP_FULL);
    }
    match CONNS.get_ptr_mut(&sk) {
        Some(c) => Sock::known(c),
        None => Sock::LOOSE,
    }
}

/// The TCP figures of one call (`packed`: its byte count, and its direction in bit 32). A
/// function of its own in the program: its stack (a new cgroup's figures are built there) is
/// not part of the chain of calls that the L7 path makes from the hook, which the verifier
/// limits to 512 bytes in all.
#[inline(never)]
fn tcp_bytes(sk: u64, conn: *mut ConnInfo, packed: u64, now: u64) {
    let ret = packed as u32 as i32;
    let send = packed >> 32 != 0;
    let (cgroup_id, rtt) = if !conn.is_null() {
        {
            // SAFETY: map value pointer checked by the verifier.
            let c = unsafe { &mut *conn };
            let rtt = if now.wrapping_sub(c.last_rtt_ns) >= RTT_SAMPLE_INTERVAL_NS {
                c.last_rtt_ns = now;
                sock::srtt_us(sk)
            } else {
                0
            };
            edge_bytes(&c.edge, ret, send);
            (c.cgroup_id, rtt)
        }
    } else {
        match sock::cgroup_id(sk) {
            Ok(id) => (id, 0),
            Err(_) => {
                count_lost(LOST_SOCK_READ);
                return;
            }
        }
    };
    with_stats(cgroup_id, |s| {
        if send {
            s.sent_bytes += ret as u64;
        } else {
            s.received_bytes += ret as u64;
        }
        if rtt > 0 {
            observe_rtt(s, rtt);
        }
    });
}

// Fallback for kernels before 6.3, which lack `sock:sock_send_length` / `sock_recv_length`:
// fexit on the TCP functions themselves (fentry/fexit exist there since 5.5). An fexit program
// finds the return value in its context right after the arguments; `bpf_get_func_ret` (5.17)
// is not needed, but the position is: user space loads the program matching the function's
// parameter count in this kernel's BTF (`tcp_recvmsg` lost its `nonblock` in 5.19).

/// `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`
#[fexit(function = "tcp_sendmsg")]
pub fn tcp_sendmsg_fexit(ctx: FExitContext) -> i32 {
    on_io(ctx.arg::<u64>(0), ctx.arg::<i64>(3) as i32, true);
    0
}

/// `int tcp_sendpage(struct sock *sk, struct page *page, int offset, size_t size, int flags)`
#[fexit(function = "tcp_sendpage")]
pub fn tcp_sendpage_fexit(ctx: FExitContext) -> i32 {
    // sendfile/splice on kernels before 6.5 send through tcp_sendpage, not tcp_sendmsg.
    on_io(ctx.arg::<u64>(0), ctx.arg::<i64>(5) as i32, true);
    0
}

/// `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int flags, int *addr_len)`
/// (5.19 and later).
#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_fexit5(ctx: FExitContext) -> i32 {
    if !peek(ctx.arg::<i64>(3)) {
        on_io(ctx.arg::<u64>(0), ctx.arg::<i64>(5) as i32, false);
    }
    0
}

/// `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int nonblock, int flags,
/// int *addr_len)` (before 5.19).
#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_fexit6(ctx: FExitContext) -> i32 {
    if !peek(ctx.arg::<i64>(4)) {
        on_io(ctx.arg::<u64>(0), ctx.arg::<i64>(6) as i32, false);
    }
    0
}

//! TCP probe: connections opened/closed/failed, retransmits, payload bytes and RTT per cgroup.
//!
//! Hooks that fire per connection (`sock:inet_sock_set_state`, `tcp:tcp_retransmit_skb`) and per
//! socket I/O call (`sock:sock_send_length`, `sock:sock_recv_length`), never per packet. The
//! owning cgroup is read from the socket, so softirq-context events are attributed correctly.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, fexit, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, FExitContext, RawTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;
use observer_common::{
    ConnInfo, TcpStats, DIR_INBOUND, DIR_OUTBOUND, FAIL_OTHER, FAIL_REFUSED, FAIL_RESET,
    FAIL_TIMEOUT, FAIL_UNREACHABLE, LOST_CONN_MAP_FULL, LOST_SOCK_READ, LOST_TCP_MAP_FULL,
    RTT_BUCKETS_US, RTT_NBUCKETS, TcpEdgeKey, TcpEdgeStats, LOST_TCP_EDGE_MAP_FULL, WORK_HTTP,
    WORK_TCP,
};

use crate::{
    http,
    maps::{count_lost, CONNS, SET_STATE, TCP_EDGES, TCP_STATS, WORK},
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

/// Direction of a connection whose opening was not seen (it predates the observer).
const DIR_UNKNOWN: u32 = 2;
/// Minimum interval between two RTT samples of one connection.
const RTT_SAMPLE_INTERVAL_NS: u64 = 1_000_000_000;

/// States of an established connection, each of which ends with a traced transition to CLOSE.
#[inline(always)]
fn is_open_state(state: i32) -> bool {
    matches!(
        state,
        TCP_ESTABLISHED | TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING
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

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    match try_set_state(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_set_state(ctx: &TracePointContext) -> Result<(), i64> {
    let off = SET_STATE.load();
    // SAFETY: offsets come from this kernel's format file for this tracepoint.
    let protocol: u16 = unsafe { ctx.read_at(off.protocol as usize) }.map_err(|e| e as i64)?;
    if protocol != sock::IPPROTO_TCP {
        return Ok(());
    }
    let sk: u64 = unsafe { ctx.read_at(off.skaddr as usize) }.map_err(|e| e as i64)?;
    let old: i32 = unsafe { ctx.read_at(off.oldstate as usize) }.map_err(|e| e as i64)?;
    let new: i32 = unsafe { ctx.read_at(off.newstate as usize) }.map_err(|e| e as i64)?;

    let work = WORK.load();
    if work & WORK_HTTP != 0 && new == TCP_CLOSE && is_open_state(old) {
        http::on_close(sk);
    }
    if work & WORK_TCP == 0 {
        return Ok(());
    }
    let opened = match (old, new) {
        (TCP_SYN_SENT, TCP_ESTABLISHED) => Some(DIR_OUTBOUND),
        (TCP_SYN_RECV, TCP_ESTABLISHED) => Some(DIR_INBOUND),
        _ => None,
    };
    if let Some(dir) = opened {
        let cgroup_id = sock::cgroup_id(sk).inspect_err(|_| count_lost(LOST_SOCK_READ))?;
        let rtt = sock::srtt_us(sk);
        let now = unsafe { bpf_ktime_get_ns() };
        let edge = sock::edge_key(sk, cgroup_id, dir as u32);
        with_edge(&edge, |e| e.connections += 1);
        let info = ConnInfo { cgroup_id, last_rtt_ns: now, direction: dir as u32, _pad: 0, edge };
        let tracked = match CONNS.insert(&sk, &info, 0) {
            Ok(()) => true,
            Err(_) => {
                count_lost(LOST_CONN_MAP_FULL);
                // Rare (the table is full): worth a line in the observer's log.
                warn!(ctx, "connection table full: connection of cgroup {} not tracked", cgroup_id);
                false
            }
        };
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
    let (cgroup_id, dir) = match unsafe { CONNS.get(&sk) } {
        Some(c) => (c.cgroup_id, c.direction),
        None => (
            sock::cgroup_id(sk).inspect_err(|_| count_lost(LOST_SOCK_READ))?,
            DIR_UNKNOWN,
        ),
    };
    let _ = CONNS.remove(&sk);
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
    on_io(ctx.arg::<u64>(0), ctx.arg::<i32>(1), false);
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_raw(ctx: RawTracePointContext) -> i32 {
    on_io(ctx.arg::<u64>(0), ctx.arg::<i64>(1) as i32, false);
    0
}

/// Bytes of one send or receive call. Known connections are found in `CONNS` (one lookup);
/// a TCP socket not in it (opened before the observer started) is added on first sight, so
/// the socket reads happen once per connection, not per call.
#[inline(always)]
fn on_io(sk: u64, ret: i32, send: bool) {
    if ret <= 0 {
        return;
    }
    let work = WORK.load();
    if work & WORK_HTTP != 0 {
        http::on_io(sk, ret as u32, send);
    }
    if work & WORK_TCP != 0 {
        tcp_bytes(sk, ret, send);
    }
}

#[inline(always)]
fn tcp_bytes(sk: u64, ret: i32, send: bool) {
    let now = unsafe { bpf_ktime_get_ns() };
    let (cgroup_id, rtt) = match CONNS.get_ptr_mut(&sk) {
        Some(c) => {
            // SAFETY: map value pointer checked by the verifier.
            let c = unsafe { &mut *c };
            let rtt = if now.wrapping_sub(c.last_rtt_ns) >= RTT_SAMPLE_INTERVAL_NS {
                c.last_rtt_ns = now;
                sock::srtt_us(sk)
            } else {
                0
            };
            edge_bytes(&c.edge, ret, send);
            (c.cgroup_id, rtt)
        }
        None => {
            if !sock::is_tcp(sk) {
                return;
            }
            let Ok(cgroup_id) = sock::cgroup_id(sk) else {
                count_lost(LOST_SOCK_READ);
                return;
            };
            // Only a connection that will still pass through a traced close is entered (a
            // socket the peer already closed is read from after its close transition).
            // Its first RTT sample is taken when it is entered.
            let mut rtt = 0;
            if is_open_state(sock::state(sk) as i32) {
                let edge = sock::edge_key(sk, cgroup_id, DIR_UNKNOWN);
                edge_bytes(&edge, ret, send);
                let info =
                    ConnInfo { cgroup_id, last_rtt_ns: now, direction: DIR_UNKNOWN, _pad: 0, edge };
                if CONNS.insert(&sk, &info, BPF_NOEXIST).is_err() {
                    count_lost(LOST_CONN_MAP_FULL);
                } else {
                    rtt = sock::srtt_us(sk);
                }
            }
            (cgroup_id, rtt)
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
// fexit on the TCP functions themselves (fentry/fexit exist there since 5.5). `ret()` reads the
// return value with bpf_get_func_ret, so the parameter count of each version does not matter.

#[fexit(function = "tcp_sendmsg")]
pub fn tcp_sendmsg_fexit(ctx: FExitContext) -> i32 {
    if let Ok(ret) = ctx.ret::<i64>() {
        on_io(ctx.arg::<u64>(0), ret as i32, true);
    }
    0
}

#[fexit(function = "tcp_sendpage")]
pub fn tcp_sendpage_fexit(ctx: FExitContext) -> i32 {
    // sendfile/splice on kernels before 6.5 send through tcp_sendpage, not tcp_sendmsg.
    if let Ok(ret) = ctx.ret::<i64>() {
        on_io(ctx.arg::<u64>(0), ret as i32, true);
    }
    0
}

#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_fexit(ctx: FExitContext) -> i32 {
    if let Ok(ret) = ctx.ret::<i64>() {
        on_io(ctx.arg::<u64>(0), ret as i32, false);
    }
    0
}

//! DNS over UDP. A datagram is a whole message, so there is no connection state and no
//! framer of its own: every call of a UDP socket whose peer port (a client's connected socket)
//! or local port (a server's) is 53 goes out as one `DATA` record of the stream framer, built
//! from a state made for the call; user space pairs queries with responses by socket and
//! message id. `sendmmsg` (glibc's parallel A and AAAA queries) and `recvmmsg` make one socket
//! call per message, each followed in its own array entry.
//!
//! The datagrams come from the `sock_send_length`/`sock_recv_length` tracepoints (6.3+), which
//! every socket call passes, or before 6.3 from fexit on UDP's own send and receive functions
//! (below), attached with this probe only.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::fexit, programs::FExitContext};
use observer_common::{
    L7Conn, L7Dir, L7_DNS, L7_SIDE_CLIENT, L7_SIDE_SERVER, LOST_SOCK_READ, WORK_L7,
};

use super::{stream, syscall_io, Call, Io, Sock};
use crate::{
    maps::{count_lost, L7_SCRATCH, WORK},
    sock,
};

/// One datagram call seen by an fexit program below (`ret`: its byte count or an error).
#[inline(always)]
fn udp_call(sk: u64, ret: i64, send: bool) {
    if ret <= 0 || WORK.load() & WORK_L7 == 0 {
        return;
    }
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    super::on_io(sk, Sock::NOT_TCP, ret as u32, send, now);
}

// An fexit program finds the return value in its context right after the arguments; user
// space loads the receive programs of this kernel's parameter count (the `noblock` parameter
// went in 5.19).

/// `int udp_sendmsg(struct sock *sk, struct msghdr *msg, size_t len)`
#[fexit(function = "udp_sendmsg")]
pub fn udp_sendmsg_fexit(ctx: FExitContext) -> i32 {
    let sk = ctx.arg::<u64>(0);
    // An IPv6 socket's datagram to an IPv4-mapped address passes `udpv6_sendmsg`, which hands
    // it to this function: it is counted there, once.
    if sock::family(sk) != sock::AF_INET6 {
        udp_call(sk, ctx.arg::<i64>(3), true);
    }
    0
}

/// `int udpv6_sendmsg(struct sock *sk, struct msghdr *msg, size_t len)`
#[fexit(function = "udpv6_sendmsg")]
pub fn udpv6_sendmsg_fexit(ctx: FExitContext) -> i32 {
    udp_call(ctx.arg::<u64>(0), ctx.arg::<i64>(3), true);
    0
}

/// `int udp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int flags, int *addr_len)`
/// (5.19 and later; `udpv6_recvmsg` alike).
#[fexit(function = "udp_recvmsg")]
pub fn udp_recvmsg_fexit5(ctx: FExitContext) -> i32 {
    udp_call(ctx.arg::<u64>(0), ctx.arg::<i64>(5), false);
    0
}

#[fexit(function = "udpv6_recvmsg")]
pub fn udpv6_recvmsg_fexit5(ctx: FExitContext) -> i32 {
    udp_call(ctx.arg::<u64>(0), ctx.arg::<i64>(5), false);
    0
}

/// `int udp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int noblock, int flags,
/// int *addr_len)` (before 5.19; `udpv6_recvmsg` alike).
#[fexit(function = "udp_recvmsg")]
pub fn udp_recvmsg_fexit6(ctx: FExitContext) -> i32 {
    udp_call(ctx.arg::<u64>(0), ctx.arg::<i64>(6), false);
    0
}

#[fexit(function = "udpv6_recvmsg")]
pub fn udpv6_recvmsg_fexit6(ctx: FExitContext) -> i32 {
    udp_call(ctx.arg::<u64>(0), ctx.arg::<i64>(6), false);
    0
}

/// The DNS port.
const PORT: u16 = 53;

/// Prepares a datagram call for the stream framer; true when it is DNS and was handed over. A
/// function of its own in the program, so that its stack is not the hook's.
#[inline(never)]
pub fn on_datagram(sk: u64, ret: u32, send: bool, now: u64) -> bool {
    if !sock::is_udp(sk) {
        return false;
    }
    let peer = sock::peer(sk);
    let side = if peer.port == PORT {
        L7_SIDE_CLIENT
    } else if sock::local_port(sk) == PORT {
        L7_SIDE_SERVER
    } else {
        return false;
    };
    let (io, arg, start) = syscall_io();
    if io == Io::None {
        return false;
    }
    let Ok(cgroup_id) = sock::cgroup_id(sk) else {
        count_lost(LOST_SOCK_READ);
        return false;
    };
    let Some(tmp) = L7_SCRATCH.get_ptr_mut(1) else {
        return false;
    };
    let st = tmp as *mut L7Conn;
    // SAFETY: an L7Event (the scratch slot) holds an L7Conn; per-CPU slot, used by this hook
    // until the framer has sent the record.
    unsafe {
        (*st).cgroup_id = cgroup_id;
        (*st).cgroup_ptr = 0;
        (*st).req_ts = 0;
        (*st).orphan_ts = 0;
        (*st).resp = L7Dir::default();
        (*st).peer = peer;
        (*st).req_len = 0;
        (*st).resp_first = 0;
        (*st).tgid = 0;
        (*st).proto = L7_DNS;
        (*st).side = side;
        (*st).flags = 0;
    }
    stream::hand_over(&Call {
        sk,
        ret,
        send,
        now,
        start: if start == 0 { now } else { start },
        io,
        arg,
        dgram: true,
    })
}

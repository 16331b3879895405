//! DNS over UDP and TCP.
//!
//! A datagram is a whole message, so UDP has no connection state and no framer of its own:
//! every call of a UDP socket whose peer port (a client's connected socket) or local port (a
//! server's) is 53 goes out as one `DATA` record of the stream framer, built from a state made
//! for the call; user space pairs queries with responses by socket and message id. A client
//! that sends from an unconnected socket (`sendto`, as musl's resolver and dnsmasq's upstream
//! queries do) names the server in each call: a query to port 53 enters the socket in
//! [`DNS_PEERS`], and what the socket reads shortly after is its answer. `sendmmsg` (glibc's
//! parallel A and AAAA queries) and `recvmmsg` make one socket call per message, each followed
//! in its own array entry.
//!
//! The datagrams come from the `sock_send_length`/`sock_recv_length` tracepoints (6.3+), which
//! every socket call passes, or before 6.3 from fexit on UDP's own send and receive functions
//! (below), attached with this probe only.
//!
//! Over TCP, a connection to or from port 53 is claimed at its first call ([`tcp_ports`]; the
//! port, not the bytes: servers read a query's two-byte length a byte at a time) and its calls
//! go to the stream framer like any stream protocol's; user space frames the length-prefixed
//! messages.

use aya_ebpf::{
    helpers::{
        bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_task_pt_regs,
    },
    macros::{fexit, map},
    maps::LruHashMap,
    programs::FExitContext,
};
use observer_common::{
    L7Conn, L7Dir, L7Peer, L7_DNS, L7_SIDE_CLIENT, L7_SIDE_SERVER, LOST_SOCK_READ, WORK_L7,
    WORK_TASK_REGS,
};

use super::{read_user, stream, syscall_io, Call, Detected, Io, PT_REGS_SI};
use crate::{
    maps::{count_lost, L7_SCRATCH, WORK},
    sock,
};

/// The server an unconnected socket last sent a query to, and when.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct DnsPeer {
    pub peer: L7Peer,
    pub sent_ns: u64,
}

/// Unconnected sockets that sent a query to port 53, by `struct sock *`: what they read within
/// [`ANSWER_NS`] of it is taken for the answer. Least recently used entries give way (a
/// socket's entry outlives the socket until then; the time window keeps a later socket at the
/// same address from inheriting it for long).
#[map]
pub static DNS_PEERS: LruHashMap<u64, DnsPeer> = LruHashMap::with_max_entries(4096, 0);

/// How long after its last query an unconnected socket's reads are taken for answers.
const ANSWER_NS: u64 = 30_000_000_000;

/// One datagram call seen by an fexit program below (`ret`: its byte count or an error; `msg`
/// the kernel's `struct msghdr`).
#[inline(always)]
fn udp_call(sk: u64, msg: u64, ret: i64, send: bool) {
    // The functions return an `int`: the context's 64-bit slot holds it zero-extended, so an
    // error (`-EAGAIN` of a non-blocking read, as Go's and c-ares's resolvers make before they
    // wait) would read as a length of about 4 GiB; its low 32 bits are the value.
    let ret = ret as i32;
    if ret <= 0 || WORK.load() & WORK_L7 == 0 {
        return;
    }
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if on_datagram(sk, ret as u32, send, now, msg) {
        stream::l7_stream_call();
    }
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
        udp_call(sk, ctx.arg::<u64>(1), ctx.arg::<i64>(3), true);
    }
    0
}

/// `int udpv6_sendmsg(struct sock *sk, struct msghdr *msg, size_t len)`
#[fexit(function = "udpv6_sendmsg")]
pub fn udpv6_sendmsg_fexit(ctx: FExitContext) -> i32 {
    udp_call(
        ctx.arg::<u64>(0),
        ctx.arg::<u64>(1),
        ctx.arg::<i64>(3),
        true,
    );
    0
}

/// A receive's fexit: its `flags` parameter at `flags` (a peek is no read), its return value
/// two slots later (after `addr_len`).
#[inline(always)]
fn udp_recv(ctx: &FExitContext, flags: usize) {
    if !crate::tcp::peek(ctx.arg::<i64>(flags)) {
        udp_call(
            ctx.arg::<u64>(0),
            ctx.arg::<u64>(1),
            ctx.arg::<i64>(flags + 2),
            false,
        );
    }
}

/// `int udp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int flags, int *addr_len)`
/// (5.19 and later; `udpv6_recvmsg` alike).
#[fexit(function = "udp_recvmsg")]
pub fn udp_recvmsg_fexit5(ctx: FExitContext) -> i32 {
    udp_recv(&ctx, 3);
    0
}

#[fexit(function = "udpv6_recvmsg")]
pub fn udpv6_recvmsg_fexit5(ctx: FExitContext) -> i32 {
    udp_recv(&ctx, 3);
    0
}

/// `int udp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int noblock, int flags,
/// int *addr_len)` (before 5.19; `udpv6_recvmsg` alike).
#[fexit(function = "udp_recvmsg")]
pub fn udp_recvmsg_fexit6(ctx: FExitContext) -> i32 {
    udp_recv(&ctx, 4);
    0
}

#[fexit(function = "udpv6_recvmsg")]
pub fn udpv6_recvmsg_fexit6(ctx: FExitContext) -> i32 {
    udp_recv(&ctx, 4);
    0
}

/// The DNS port.
const PORT: u16 = 53;

/// What a TCP socket's ports say for DNS, handed to the detector: 0 when neither is 53; else
/// bit 0, with bit 1 for the client's end (the peer's port is 53) and bit 2 for a send.
#[inline(always)]
pub fn tcp_ports(sk: u64, send: bool) -> u32 {
    let client = sock::peer_port(sk) == PORT;
    if !client && sock::local_port(sk) != PORT {
        return 0;
    }
    1 | u32::from(client) << 1 | u32::from(send) << 2
}

/// The verdict on a TCP connection from [`tcp_ports`]: a client's send or a server's receive
/// is a request, the other calls a response (a connection joined mid-way).
#[inline(always)]
pub fn detect_tcp(ports: u32) -> Detected {
    if ports & 1 == 0 {
        Detected::No
    } else if (ports & 2 != 0) == (ports & 4 != 0) {
        Detected::Request
    } else {
        Detected::Response
    }
}

/// A `struct sockaddr_in` or `sockaddr_in6` at `addr`, in kernel memory (`kernel`) or the
/// caller's: the peer it names.
#[inline(always)]
fn sockaddr(addr: u64, kernel: bool) -> Option<L7Peer> {
    if addr == 0 {
        return None;
    }
    let head: [u8; 8] = if kernel {
        // SAFETY: the helper checks the address.
        unsafe { bpf_probe_read_kernel(addr as *const [u8; 8]) }.ok()?
    } else {
        read_user(addr)?
    };
    let mut p = L7Peer {
        family: u16::from_ne_bytes([head[0], head[1]]),
        port: u16::from_be_bytes([head[2], head[3]]),
        _pad: 0,
        addr: [0; 16],
    };
    if p.family == sock::AF_INET {
        p.addr[..4].copy_from_slice(&head[4..8]);
    } else if p.family == sock::AF_INET6 {
        p.addr = if kernel {
            // SAFETY: as above.
            unsafe { bpf_probe_read_kernel((addr + 8) as *const [u8; 16]) }.ok()?
        } else {
            read_user(addr + 8)?
        };
    } else {
        return None;
    }
    Some(p)
}

/// Where the current send of an unconnected socket goes: `msg_name` of the kernel's `struct
/// msghdr` (the fexit programs have it), else the syscall's own argument, found from the task's
/// saved registers (`sendto`'s fifth, `msg_name` of `sendmsg`'s message or of `sendmmsg`'s
/// current one).
#[inline(always)]
fn destination(msg: u64) -> Option<L7Peer> {
    if msg != 0 {
        // `msg_name` is the first field of `struct msghdr`.
        // SAFETY: the helper checks the address.
        let name: u64 = unsafe { bpf_probe_read_kernel(msg as *const u64) }.ok()?;
        return sockaddr(name, true);
    }
    // Before 5.15 the helper below does not exist (a constant of the read-only globals hides
    // it from the verifier); those kernels take the fexit path above.
    if WORK.load() & WORK_TASK_REGS == 0 {
        return None;
    }
    // SAFETY: helpers on the current task; the registers are read with a checked helper.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    if regs == 0 {
        return None;
    }
    // SAFETY: as above.
    let nr: u64 = unsafe { bpf_probe_read_kernel((regs + PT_REGS_ORIG_AX) as *const u64) }.ok()?;
    let si: u64 = unsafe { bpf_probe_read_kernel((regs + PT_REGS_SI) as *const u64) }.ok()?;
    let name = match nr {
        44 => unsafe { bpf_probe_read_kernel((regs + PT_REGS_R8) as *const u64) }.ok()?,
        46 => read_user(si)?,
        307 => {
            let call = Call {
                sk: 0,
                ret: 0,
                send: true,
                now: 0,
                start: 0,
                io: Io::Mmsg,
                arg: si,
                dgram: true,
            };
            read_user(call.mmsg_hdr()?)?
        }
        _ => return None,
    };
    sockaddr(name, false)
}

/// `r8` (`sendto`'s fifth argument) and `orig_ax` (the syscall number) in x86_64's `struct
/// pt_regs`.
const PT_REGS_R8: u64 = 72;
const PT_REGS_ORIG_AX: u64 = 120;

/// The server of an unconnected socket's call: a send to port 53 (entered in [`DNS_PEERS`]),
/// or a read shortly after one.
#[inline(always)]
fn unconnected(sk: u64, send: bool, now: u64, msg: u64) -> Option<L7Peer> {
    if send {
        let peer = destination(msg)?;
        if peer.port != PORT {
            return None;
        }
        let _ = DNS_PEERS.insert(&sk, &DnsPeer { peer, sent_ns: now }, 0);
        return Some(peer);
    }
    // SAFETY: a map value read at once.
    let e = unsafe { DNS_PEERS.get(&sk) }?;
    (now.saturating_sub(e.sent_ns) < ANSWER_NS).then_some(e.peer)
}

/// Prepares a datagram call for the stream framer; true when it is DNS and was handed over.
/// `msg` is the kernel's `struct msghdr` of the call where the hook has it (else 0). A
/// function of its own in the program, so that its stack is not the hook's.
#[inline(never)]
pub fn on_datagram(sk: u64, ret: u32, send: bool, now: u64, msg: u64) -> bool {
    if !sock::is_udp(sk) {
        return false;
    }
    let mut peer = sock::peer(sk);
    let side = if peer.port == PORT {
        L7_SIDE_CLIENT
    } else if sock::local_port(sk) == PORT {
        L7_SIDE_SERVER
    } else if peer.port != 0 {
        return false;
    } else {
        match unconnected(sk, send, now, msg) {
            Some(p) => {
                peer = p;
                L7_SIDE_CLIENT
            }
            None => return false,
        }
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

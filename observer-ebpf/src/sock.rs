//! Reading `struct sock` fields at offsets located from BTF by user space (no kernel layout is
//! compiled in). All reads go through `bpf_probe_read_kernel`, which works from every hook type.

use aya_ebpf::helpers::bpf_probe_read_kernel;

use crate::maps::OFFSETS;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_UDP: u16 = 17;

#[inline(always)]
unsafe fn read_at<T: Copy>(base: u64, off: u32) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel tolerates bad addresses (returns an error).
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).map_err(|e| e as i64) }
}

/// The cgroup v2 id of the cgroup owning the socket (`sk->sk_cgrp_data.cgroup->kn->id`): right
/// even in softirq context, where the current task is unrelated to the socket.
#[inline(always)]
pub fn cgroup_id(sk: u64) -> Result<u64, i64> {
    let o = OFFSETS.load();
    unsafe {
        let cgrp: u64 = read_at(sk, o.sock_cgroup)?;
        if cgrp == 0 {
            return Err(0);
        }
        let kn: u64 = read_at(cgrp, o.cgroup_kn)?;
        if kn == 0 {
            return Err(0);
        }
        read_at(kn, o.kernfs_node_id)
    }
}

/// The cgroup owning the socket, as a kernel pointer (`sk->sk_cgrp_data.cgroup`): one read, to
/// compare with a pointer read before.
#[inline(always)]
pub fn cgroup_ptr(sk: u64) -> u64 {
    let o = OFFSETS.load();
    unsafe { read_at(sk, o.sock_cgroup) }.unwrap_or(0)
}

/// True for an IPv4 or IPv6 TCP socket.
#[inline(always)]
pub fn is_tcp(sk: u64) -> bool {
    let o = OFFSETS.load();
    // Both fields read before deciding (an early return between the two reads made LLVM reuse
    // a helper's argument register after the call, which the verifier refuses).
    let family: u16 = unsafe { read_at(sk, o.sock_family) }.unwrap_or(0);
    let protocol: u16 = unsafe { read_at(sk, o.sock_protocol) }.unwrap_or(0);
    (family == AF_INET || family == AF_INET6) && protocol == IPPROTO_TCP
}

/// The socket's address family (`AF_INET`, `AF_INET6`), 0 if unreadable.
#[inline(always)]
pub fn family(sk: u64) -> u16 {
    let o = OFFSETS.load();
    unsafe { read_at(sk, o.sock_family) }.unwrap_or(0)
}

/// True for an IPv4 or IPv6 UDP socket.
#[inline(always)]
pub fn is_udp(sk: u64) -> bool {
    let o = OFFSETS.load();
    let family: u16 = unsafe { read_at(sk, o.sock_family) }.unwrap_or(0);
    let protocol: u16 = unsafe { read_at(sk, o.sock_protocol) }.unwrap_or(0);
    (family == AF_INET || family == AF_INET6) && protocol == IPPROTO_UDP
}

/// The socket's local port (`sk->sk_num`, host order), 0 if unreadable.
#[inline(always)]
pub fn local_port(sk: u64) -> u16 {
    let o = OFFSETS.load();
    unsafe { read_at(sk, o.sock_num) }.unwrap_or(0)
}

/// The peer's port (`sk->sk_dport`, host order): 0 for an unconnected datagram socket.
#[inline(always)]
pub fn peer_port(sk: u64) -> u16 {
    let o = OFFSETS.load();
    u16::from_be(unsafe { read_at::<u16>(sk, o.sock_dport) }.unwrap_or(0))
}

/// `sk->sk_err`: the error that ended a connection attempt.
#[inline(always)]
pub fn error(sk: u64) -> i32 {
    let o = OFFSETS.load();
    unsafe { read_at(sk, o.sock_err) }.unwrap_or(0)
}

/// Smoothed RTT in microseconds (`tcp_sock->srtt_us >> 3`), 0 if not measured yet.
#[inline(always)]
pub fn srtt_us(sk: u64) -> u32 {
    let o = OFFSETS.load();
    unsafe { read_at::<u32>(sk, o.tcp_srtt_us) }.unwrap_or(0) >> 3
}

/// TCP state of the socket (`sk->sk_state`), or 0 if unreadable.
#[inline(always)]
pub fn state(sk: u64) -> u8 {
    let o = OFFSETS.load();
    unsafe { read_at::<u8>(sk, o.sock_state) }.unwrap_or(0)
}

/// The peer of a socket: family, remote port (host order) and remote address.
#[inline(always)]
pub fn peer(sk: u64) -> observer_common::L7Peer {
    let o = OFFSETS.load();
    let mut p = observer_common::L7Peer::default();
    unsafe {
        let family: u16 = read_at(sk, o.sock_family).unwrap_or(0);
        let dport: u16 = read_at(sk, o.sock_dport).unwrap_or(0);
        p.family = family;
        p.port = u16::from_be(dport);
        if family == AF_INET6 {
            p.addr = read_at(sk, o.sock_v6_daddr).unwrap_or([0; 16]);
        } else {
            let r: [u8; 4] = read_at(sk, o.sock_daddr).unwrap_or([0; 4]);
            p.addr[..4].copy_from_slice(&r);
        }
    }
    p
}

/// Lowest port of Linux's default ephemeral range (`ip_local_port_range`).
const EPHEMERAL_LOW: u16 = 32768;

/// The edge key of a connection of `cgroup_id`: the peer's address, and its port when the peer
/// is the server. `dir` is DIR_INBOUND (0), DIR_OUTBOUND (1) or unknown (2, a connection that
/// predates the observer: a peer port in the ephemeral range and a local one outside it make
/// it inbound, anything else outbound).
#[inline(always)]
pub fn edge_key(sk: u64, cgroup_id: u64, dir: u32) -> observer_common::TcpEdgeKey {
    let o = OFFSETS.load();
    let mut k = observer_common::TcpEdgeKey {
        cgroup_id,
        ..Default::default()
    };
    unsafe {
        let family: u16 = read_at(sk, o.sock_family).unwrap_or(0);
        let rport = u16::from_be(read_at::<u16>(sk, o.sock_dport).unwrap_or(0));
        let lport: u16 = read_at(sk, o.sock_num).unwrap_or(0);
        k.family = family as u8;
        if family == AF_INET6 {
            k.addr = read_at(sk, o.sock_v6_daddr).unwrap_or([0; 16]);
        } else {
            let r: [u8; 4] = read_at(sk, o.sock_daddr).unwrap_or([0; 4]);
            k.addr[..4].copy_from_slice(&r);
        }
        let inbound = match dir {
            0 => true,
            1 => false,
            _ => rport >= EPHEMERAL_LOW && lport < EPHEMERAL_LOW,
        };
        if inbound {
            k.dir = 0;
            k.port = 0;
        } else {
            k.dir = 1;
            k.port = rport;
        }
    }
    k
}

//! DNS over UDP. A datagram is a whole message, so there is no connection state and no
//! framer of its own: every call of a UDP socket whose peer port (a client's connected socket)
//! or local port (a server's) is 53 goes out as one `DATA` record of the stream framer, built
//! from a state made for the call; user space pairs queries with responses by socket and
//! message id. `sendmmsg` (glibc's parallel A and AAAA queries) and `recvmmsg` make one socket
//! call per message, each followed in its own array entry.

use observer_common::{L7Conn, L7Dir, L7_DNS, L7_SIDE_CLIENT, L7_SIDE_SERVER, LOST_SOCK_READ};

use super::{stream, syscall_io, Call, Io};
use crate::{
    maps::{count_lost, L7_SCRATCH},
    sock,
};

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

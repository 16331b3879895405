//! The framer of stream protocols: those whose messages user space frames itself (Redis,
//! and the database protocols after it), because one call may carry many of them (a pipeline of
//! a hundred commands in one write) and a message's length sits in its own header.
//!
//! Each call of a claimed connection sends one `DATA` record: when the call began and ended,
//! its direction and byte count, the calling task's command name (in `prev`, which a `DATA`
//! record has no other use for), and its first [`L7_DATA_MAX`] bytes. That is at most one
//! record per call, and a call carries at least one message, so never more records than
//! requests; the pairing, the timing of each message and everything the protocol says are
//! user space's, which sees every call of the connection in order.

use aya_ebpf::helpers::{bpf_get_current_comm, generated::bpf_probe_read_user};
use observer_common::{
    L7Conn, L7Dir, L7Event, L7_DATA_MAX, L7_EVENT_HEADER, L7_EVF_DGRAM, L7_EVF_SEND, L7_EV_DATA,
    LOST_L7_RINGBUF_FULL, LOST_L7_USER_READ,
};

use super::{tgid, wakeup, Call, Io};
use crate::maps::{
    count_lost, L7DataScratch, L7_CALL, L7_CONNS, L7_DATA_SCRATCH, L7_EVENTS, L7_SCRATCH,
};

/// Mask of the bytes read from a call per record (one less than [`L7_DATA_MAX`]).
const DATA_MASK: u32 = L7_DATA_MAX as u32 - 1;
/// Records sent for one call at most: a call longer than `MAX_CHUNKS * DATA_MASK` bytes (a
/// large value) has only its first bytes sent, the rest counted; user space skips a payload
/// by its length and loses a connection's framing only when message headers fall beyond.
const MAX_CHUNKS: u32 = 16;
/// Segments of a vectored call (`writev`, `sendmsg`) followed at most (gRPC's C core writes a
/// request as two dozen of them, Node's HTTP/2 three per response: 60 for 20 streams); bytes
/// in later ones are a gap user space sees.
const MAX_SEGMENTS: u32 = 128;

/// Keeps a call of a claimed connection for its framer's global function
/// ([`l7_stream_call`], `http1::l7_http1_call`); false when the per-CPU slot is not there.
#[inline(always)]
pub fn hand_over(call: &Call) -> bool {
    match L7_CALL.get_ptr_mut(0) {
        Some(slot) => {
            // SAFETY: this CPU's slot; the hook that fills it runs to its end on this CPU.
            unsafe { *slot = *call };
            true
        }
        None => false,
    }
}

/// The framer as a global BPF function: the verifier checks it once, on its own, with the
/// call it reads from `L7_CALL` unknown, instead of once for every state the socket hooks
/// reach it in (as part of them, its loops over chunks and segments took 5.10's verifier past
/// its million instructions). A global function's arguments may only be scalars (the socket
/// is a pointer to the verifier), hence the hand-over through the map.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn l7_stream_call() -> u32 {
    let Some(slot) = L7_CALL.get_ptr(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, written by the hook that calls this function.
    let call = unsafe { *slot };
    let st = if call.dgram {
        // A datagram's state, built by the hook for this call only.
        match L7_SCRATCH.get_ptr_mut(1) {
            Some(p) => p as *mut L7Conn,
            None => return 0,
        }
    } else {
        match L7_CONNS.get_ptr_mut(&call.sk) {
            Some(p) => p,
            None => return 0,
        }
    };
    on_call(st, &call);
    0
}

/// One call of a stream protocol's connection: its bytes in `DATA` records of up to
/// [`DATA_MASK`] bytes each, in order; `req_len` is a record's offset in the call. A long first
/// segment goes in whole records; what is left of it starts the last record, and a vectored
/// call's next segments join that record while they fit (gRPC's many small ones make one
/// record), a segment that does not fit starting the next; of a segment longer than a record
/// only its first bytes are read, the rest is a gap user space skips.
#[inline(always)]
fn on_call(st: *mut L7Conn, call: &Call) {
    let Some(rec) = L7_DATA_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let ev = rec as *mut L7Event;
    // SAFETY: `ev` is this CPU's scratch record (whose header is an L7Event's); `st` a map
    // value pointer checked by the verifier.
    unsafe {
        (*ev).sk = call.sk;
        (*ev).cgroup_id = (*st).cgroup_id;
        (*ev).ts_ns = call.now;
        (*ev).req_ts = call.start;
        // The caller's command name, for user space to name a pod whose process may be gone
        // by the time the record is read (a short-lived client).
        let comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*ev).prev = L7Dir {
            bytes: u64::from_ne_bytes([
                comm[0], comm[1], comm[2], comm[3], comm[4], comm[5], comm[6], comm[7],
            ]),
            last_ns: u64::from_ne_bytes([
                comm[8], comm[9], comm[10], comm[11], comm[12], comm[13], comm[14], comm[15],
            ]),
            tail: [0; 8],
        };
        (*ev).peer = (*st).peer;
        (*ev).resp_len = call.ret;
        (*ev).req_len = 0;
        (*ev).tgid = tgid();
        (*ev).proto = (*st).proto;
        (*ev).kind = L7_EV_DATA;
        (*ev).side = (*st).side;
        (*ev).flags =
            if call.send { L7_EVF_SEND } else { 0 } | if call.dgram { L7_EVF_DGRAM } else { 0 };
        (*ev).req_snip = 0;
        (*ev).resp_snip = 0;
        (*ev)._pad2 = 0;
    }
    let (ptr, avail) = if call.io == Io::None {
        (0, 0)
    } else {
        call.first_segment().unwrap_or((0, 0))
    };
    // Whole records of the first segment while more than a record's bytes are left.
    let mut off = 0u32;
    let mut i = 0u32;
    while i < MAX_CHUNKS && avail.saturating_sub(off) > DATA_MASK {
        if !read(rec, 0, ptr + off as u64, DATA_MASK) || !send(rec, ev, DATA_MASK, off) {
            return;
        }
        off += DATA_MASK;
        i += 1;
    }
    let rest = avail.saturating_sub(off);
    if rest > DATA_MASK {
        // Chunks run out: the rest of the call is a gap.
        return;
    }
    // What is left of the first segment (its last bytes, or all of a short one).
    if !read(rec, 0, ptr + off as u64, rest) {
        return;
    }
    // The record's bytes, its offset in the call, and where the next segment starts: through
    // the record's header (map memory, unknown to the verifier), so that every round of the
    // loop below starts from one state the verifier checks once.
    // SAFETY: `ev` is the header of the scratch record.
    unsafe {
        (*ev).resp_snip = rest as u16;
        (*ev).req_len = off;
        (*ev)._pad2 = avail;
    }
    let iov = if avail < call.ret {
        call.iovecs()
    } else {
        None
    };
    if let Some(iov) = iov {
        let mut seg = 1u32;
        while seg < MAX_SEGMENTS {
            // SAFETY: as above.
            let (fill, start, pos) = unsafe {
                (
                    u32::from(core::ptr::read_volatile(&(*ev).resp_snip)) & DATA_MASK,
                    core::ptr::read_volatile(&(*ev).req_len),
                    core::ptr::read_volatile(&(*ev)._pad2),
                )
            };
            if pos >= call.ret {
                break;
            }
            let Some((p, l)) = call.segment(iov, seg, pos) else {
                break;
            };
            seg += 1;
            if l == 0 {
                continue;
            }
            let (mut fill, mut start) = (fill, start);
            if fill > 0 && l > DATA_MASK - fill {
                // It does not fit: the record goes, the segment starts the next.
                if !send(rec, ev, fill, start) {
                    return;
                }
                fill = 0;
                start = pos;
            }
            let n = min(l, DATA_MASK - fill);
            if !read(rec, fill, p, n) {
                return;
            }
            fill += n;
            if n < l {
                // Longer than a record: its first bytes, the rest a gap.
                if !send(rec, ev, fill, start) {
                    return;
                }
                fill = 0;
                start = pos + l;
            }
            // SAFETY: as above.
            unsafe {
                (*ev).resp_snip = fill as u16;
                (*ev).req_len = start;
                (*ev)._pad2 = pos + l;
            }
        }
    }
    // SAFETY: as above.
    let (fill, start, sent) = unsafe {
        (
            u32::from(core::ptr::read_volatile(&(*ev).resp_snip)) & DATA_MASK,
            core::ptr::read_volatile(&(*ev).req_len),
            core::ptr::read_volatile(&(*ev).req_snip) != 0,
        )
    };
    // The last record; an empty one still says the call happened (its bytes a gap).
    if fill > 0 || !sent {
        let _ = send(rec, ev, fill, start);
    }
}

#[inline(always)]
fn min(a: u32, b: u32) -> u32 {
    if a < b {
        a
    } else {
        b
    }
}

/// Reads `len` (at most DATA_MASK) bytes at user address `ptr` into the record's data at
/// `at` (below DATA_MASK). False when they could not be read (counted).
#[inline(always)]
fn read(rec: *mut L7DataScratch, at: u32, ptr: u64, len: u32) -> bool {
    let n = unsafe { core::ptr::read_volatile(&len) } & DATA_MASK;
    if n == 0 {
        return true;
    }
    let at = (at & DATA_MASK) as usize;
    // SAFETY: the scratch data holds 2 * L7_DATA_MAX bytes: at + n stays inside.
    let r = unsafe {
        bpf_probe_read_user(
            (*rec).data.as_mut_ptr().add(at) as *mut _,
            n,
            ptr as *const _,
        )
    };
    if r != 0 {
        count_lost(LOST_L7_USER_READ);
        return false;
    }
    true
}

/// Sends the record: its header with `off` (its offset in the call) and its first `n` bytes.
/// False when the ring was full (counted).
#[inline(always)]
fn send(rec: *mut L7DataScratch, ev: *mut L7Event, n: u32, off: u32) -> bool {
    let n = unsafe { core::ptr::read_volatile(&n) } & DATA_MASK;
    // SAFETY: `ev` is the header of the scratch record.
    unsafe {
        (*ev).req_len = off;
        (*ev).resp_snip = n as u16;
        (*ev)._pad2 = 0;
    }
    let size = n as usize + L7_EVENT_HEADER;
    if size > L7_EVENT_HEADER + L7_DATA_MAX {
        return false;
    }
    // SAFETY: `rec` is a valid scratch record and `size` is within it.
    let bytes = unsafe { core::slice::from_raw_parts(rec as *const u8, size) };
    if L7_EVENTS.output::<[u8]>(bytes, wakeup()).is_err() {
        count_lost(LOST_L7_RINGBUF_FULL);
        return false;
    }
    // A record of the call went (`req_snip` has no use in a `DATA` record otherwise).
    // SAFETY: as above.
    unsafe { (*ev).req_snip = 1 };
    true
}

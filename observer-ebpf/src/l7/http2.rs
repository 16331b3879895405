//! HTTP/2 detector. A connection is claimed at the client's preface (`PRI * HTTP/2.0\r\n`,
//! cleartext with prior knowledge, as gRPC and h2c clients start), read by the client's send
//! or the server's receive. A connection that predates the observer never shows its preface:
//! it is claimed at a call that is nothing but whole, valid HTTP/2 frames ([`detect_frames`]).
//! Its calls go to the stream framer; user space frames the connection and decodes its header
//! blocks (HPACK needs every block of a direction, in order, from the start; a connection
//! joined mid-way has names only where the blocks seen say them).

use observer_common::L7Event;

use super::{Detected, HEAD_MASK};

const PREFACE: &[u8; 16] = b"PRI * HTTP/2.0\r\n";
/// Frames a call may hold for [`detect_frames`] to follow it to its end.
const MAX_FRAMES: u32 = 8;
/// The largest frame payload a peer may send before it has seen a SETTINGS frame raising it
/// (RFC 9113 §4.2); larger frames are legal later but not taken as evidence.
const MAX_FRAME: u32 = 16384;

#[inline(always)]
pub fn detect(head: *const L7Event, n: u32) -> Detected {
    if n < 16 {
        return Detected::No;
    }
    let mut i = 0usize;
    while i < 16 {
        // SAFETY: `head` is the scratch record; `i` is below 16.
        if unsafe { (*head).data[i & 15] } != PREFACE[i & 15] {
            return Detected::No;
        }
        i += 1;
    }
    Detected::Request
}

/// A call of `ret` bytes on a connection that predates the observer, of which `n` are in
/// `head`: HTTP/2 when its bytes are a chain of frames whose headers are valid for their
/// types (RFC 9113 §6: stream 0 for connection frames, a stream for stream frames, the fixed
/// lengths of PING, WINDOW_UPDATE, RST_STREAM and PRIORITY) and whose last frame ends exactly
/// where the call does. The side is not in the bytes: `guess` is the caller's (by ports).
#[inline(always)]
pub fn detect_frames(head: *const L7Event, n: u32, ret: u32, guess: Detected) -> Detected {
    let mut off = 0u32;
    let mut k = 0u32;
    while k < MAX_FRAMES {
        if off + 9 > n {
            return Detected::No;
        }
        let at = |i: u32| -> u32 {
            // SAFETY: `head` is the scratch record; the index is masked to its data.
            u32::from(unsafe { (*head).data[((off + i) & HEAD_MASK) as usize] })
        };
        let len = at(0) << 16 | at(1) << 8 | at(2);
        let ty = at(3);
        let stream = at(5) << 24 | at(6) << 16 | at(7) << 8 | at(8);
        if len > MAX_FRAME || stream & 0x8000_0000 != 0 {
            return Detected::No;
        }
        let ok = match ty {
            // DATA, HEADERS, PUSH_PROMISE, CONTINUATION.
            0 | 1 | 5 | 9 => stream != 0,
            2 => stream != 0 && len == 5,
            3 => stream != 0 && len == 4,
            4 => stream == 0 && len % 6 == 0,
            6 => stream == 0 && len == 8,
            7 => stream == 0 && len >= 8,
            8 => len == 4,
            _ => false,
        };
        if !ok {
            return Detected::No;
        }
        off += 9 + len;
        if off == ret {
            return guess;
        }
        if off > ret {
            return Detected::No;
        }
        k += 1;
    }
    Detected::No
}

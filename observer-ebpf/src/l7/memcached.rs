//! Memcached (text protocol) detector: a command word the protocol has, then a space and a key's
//! first character (or `mn` and its line end): a connection is claimed at its next command, also
//! one opened before the observer. Its calls go to the stream framer; user space parses the
//! command lines, skips data blocks by their length and pairs replies in order.

use observer_common::L7Event;

use super::Detected;

#[inline(always)]
fn byte(head: *const L7Event, i: usize) -> u8 {
    // SAFETY: `head` is the scratch record; `i` is a constant index below 16.
    unsafe { (*head).data[i & 15] }
}

/// A command word as the little-endian value of its bytes (up to 8), compared with the call's
/// first 8 bytes under a mask: constant, straight-line code the verifier of every kernel accepts.
const fn pat(w: &[u8]) -> u64 {
    let mut v = 0u64;
    let mut i = 0;
    while i < w.len() {
        v |= (w[i] as u64) << (8 * i);
        i += 1;
    }
    v
}

const fn mask(len: usize) -> u64 {
    if len >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * len)) - 1
    }
}

/// The call starts with the word (its space included), then a key's first character (graphic
/// ASCII).
macro_rules! word {
    ($h8:expr, $head:expr, $n:expr, $w:literal) => {{
        const P: u64 = pat($w);
        const M: u64 = mask($w.len());
        const L: usize = $w.len();
        $n as usize > L && ($h8 & M) == P && byte($head, L).is_ascii_graphic()
    }};
}

/// The call starts with these bytes (up to 8): a command without a key, e.g. `stats\r`.
macro_rules! prefix {
    ($h8:expr, $n:expr, $w:literal) => {{
        const P: u64 = pat($w);
        const M: u64 = mask($w.len());
        $n as usize >= $w.len() && ($h8 & M) == P
    }};
}

#[inline(always)]
pub fn detect(head: *const L7Event, n: u32) -> Detected {
    if n < 4 {
        return Detected::No;
    }
    // SAFETY: `head` is the scratch record, whose data holds at least 16 bytes.
    let h8 = unsafe { core::ptr::read_unaligned((*head).data.as_ptr() as *const u64) };
    let hit = match byte(head, 0) {
        b'g' => {
            word!(h8, head, n, b"get ")
                || word!(h8, head, n, b"gets ")
                || word!(h8, head, n, b"gat ")
                || word!(h8, head, n, b"gats ")
        }
        // A health check's `stats` or `version` is often a connection's first command.
        b's' => {
            word!(h8, head, n, b"set ")
                || prefix!(h8, n, b"stats\r")
                || word!(h8, head, n, b"stats ")
        }
        b'v' => prefix!(h8, n, b"version\r") || prefix!(h8, n, b"verbosit"),
        b'f' => prefix!(h8, n, b"flush_al") && byte(head, 8) == b'l',
        b'a' => word!(h8, head, n, b"add ") || word!(h8, head, n, b"append "),
        b'c' => word!(h8, head, n, b"cas "),
        b'r' => word!(h8, head, n, b"replace "),
        b'p' => word!(h8, head, n, b"prepend "),
        b'd' => word!(h8, head, n, b"delete ") || word!(h8, head, n, b"decr "),
        b'i' => word!(h8, head, n, b"incr "),
        b't' => word!(h8, head, n, b"touch "),
        b'm' => {
            matches!(byte(head, 1), b'g' | b's' | b'd' | b'a')
                && byte(head, 2) == b' '
                && byte(head, 3).is_ascii_graphic()
                || (byte(head, 1) == b'n' && byte(head, 2) == b'\r' && byte(head, 3) == b'\n')
        }
        _ => false,
    };
    if hit {
        Detected::Request
    } else {
        Detected::No
    }
}

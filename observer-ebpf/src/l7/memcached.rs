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

/// The call starts with `w`, then a key's first character (graphic ASCII).
#[inline(always)]
fn word(head: *const L7Event, n: u32, w: &[u8]) -> bool {
    if (n as usize) < w.len() + 1 {
        return false;
    }
    let mut i = 0;
    while i < w.len() {
        if byte(head, i) != w[i] {
            return false;
        }
        i += 1;
    }
    byte(head, w.len()).is_ascii_graphic()
}

#[inline(always)]
pub fn detect(head: *const L7Event, n: u32) -> Detected {
    if n < 4 {
        return Detected::No;
    }
    let hit = match byte(head, 0) {
        b'g' => {
            word(head, n, b"get ")
                || word(head, n, b"gets ")
                || word(head, n, b"gat ")
                || word(head, n, b"gats ")
        }
        b's' => word(head, n, b"set "),
        b'a' => word(head, n, b"add ") || word(head, n, b"append "),
        b'c' => word(head, n, b"cas "),
        b'r' => word(head, n, b"replace "),
        b'p' => word(head, n, b"prepend "),
        b'd' => word(head, n, b"delete ") || word(head, n, b"decr "),
        b'i' => word(head, n, b"incr "),
        b't' => word(head, n, b"touch "),
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

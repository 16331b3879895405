//! Redis (RESP2 and RESP3) detector: a command is an array of bulk strings, `*<n>\r\n$`.
//! Replies are not detected (a `+OK` or `:1` starts too many other things); a connection is
//! claimed at its next command, also one opened before the observer. Its calls go to the
//! stream framer ([`super::stream`]); user space parses the commands and replies.

use observer_common::L7Event;

use super::Detected;

#[inline(always)]
fn byte(head: *const L7Event, i: usize) -> u8 {
    // SAFETY: `head` is the scratch record; `i` is a constant index below 16.
    unsafe { (*head).data[i & 15] }
}

/// `*` then 1 to 4 digits (not starting with 0), `\r\n$`.
#[inline(always)]
pub fn detect(head: *const L7Event, n: u32) -> Detected {
    if n < 6 || byte(head, 0) != b'*' || !matches!(byte(head, 1), b'1'..=b'9') {
        return Detected::No;
    }
    let mut i = 2usize;
    while i < 5 {
        if !byte(head, i).is_ascii_digit() {
            break;
        }
        i += 1;
    }
    if (i + 3) as u32 > n {
        return Detected::No;
    }
    if byte(head, i) == b'\r' && byte(head, i + 1) == b'\n' && byte(head, i + 2) == b'$' {
        Detected::Request
    } else {
        Detected::No
    }
}

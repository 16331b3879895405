//! MySQL/MariaDB detector: the server's greeting that opens a connection (protocol 10, a version
//! starting with a digit), or, for a connection opened before the observer, a command of
//! sequence 0: a query or a prepare with a plausible statement start, an execution of a
//! prepared statement (iteration count 1), a ping. Its calls go to the stream framer; user
//! space frames the packets and pairs commands with their results.

use observer_common::L7Event;

use super::Detected;

#[inline(always)]
fn byte(head: *const L7Event, i: usize) -> u8 {
    // SAFETY: `head` is the scratch record; `i` is a constant index below 16.
    unsafe { (*head).data[i & 15] }
}

/// `n`: the bytes of `head` read; `ret`: the call's bytes.
#[inline(always)]
pub fn detect(head: *const L7Event, n: u32, ret: u32) -> Detected {
    if n < 5 || byte(head, 3) != 0 {
        return Detected::No;
    }
    // A packet: a 3-byte little-endian length and the sequence number 0.
    let len = u32::from(byte(head, 0))
        | (u32::from(byte(head, 1)) << 8)
        | (u32::from(byte(head, 2)) << 16);
    let (cmd, first) = (byte(head, 4), byte(head, 5));
    // The greeting, alone in its call: protocol 10 and a version like `8.0.36` or
    // `5.5.5-10.11.6-MariaDB`.
    if cmd == 0x0a
        && n >= 7
        && (32..1024).contains(&len)
        && len + 4 == ret
        && first.is_ascii_digit()
        && byte(head, 6) == b'.'
    {
        return Detected::Response;
    }
    if len == 0 || len + 4 > ret {
        return Detected::No;
    }
    let sql_start =
        first.is_ascii_alphabetic() || matches!(first, b' ' | b'\n' | b'(' | b'/' | b'-');
    match cmd {
        // COM_QUERY, COM_STMT_PREPARE.
        0x03 | 0x16 if n >= 6 && sql_start && len >= 2 => Detected::Request,
        // COM_STMT_EXECUTE: statement id, flags, iteration count 1.
        0x17 if n >= 14
            && len >= 10
            && byte(head, 10) == 1
            && byte(head, 11) == 0
            && byte(head, 12) == 0
            && byte(head, 13) == 0 =>
        {
            Detected::Request
        }
        // COM_PING.
        0x0e if len == 1 && ret == 5 => Detected::Request,
        _ => Detected::No,
    }
}

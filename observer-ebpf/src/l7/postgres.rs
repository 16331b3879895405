//! PostgreSQL detector: a connection's start (`StartupMessage` of protocol 3.0, `SSLRequest`,
//! `GSSENCRequest`), or, for a connection opened before the observer, a simple query (`Q`) or a
//! parse (`P`) with a plausible length. Its calls go to the stream framer; user space frames and
//! pairs the messages.

use observer_common::L7Event;

use super::Detected;

#[inline(always)]
fn byte(head: *const L7Event, i: usize) -> u8 {
    // SAFETY: `head` is the scratch record; `i` is a constant index below 16.
    unsafe { (*head).data[i & 15] }
}

/// A 32-bit big-endian length below 16 MiB at `i`: its first byte is 0.
#[inline(always)]
fn small_len(head: *const L7Event, i: usize) -> u32 {
    if byte(head, i) != 0 {
        return 0;
    }
    (u32::from(byte(head, i + 1)) << 16)
        | (u32::from(byte(head, i + 2)) << 8)
        | u32::from(byte(head, i + 3))
}

#[inline(always)]
pub fn detect(head: *const L7Event, n: u32) -> Detected {
    if n < 8 {
        return Detected::No;
    }
    // Untyped: length, then the protocol version or a request code.
    let len = small_len(head, 0);
    let (a, b, c, d) = (byte(head, 4), byte(head, 5), byte(head, 6), byte(head, 7));
    let v3 = a == 0 && b == 3 && c == 0 && d == 0;
    let request = a == 0x04 && b == 0xd2 && c == 0x16 && (d == 0x2f || d == 0x30);
    if (v3 && (9..10_000).contains(&len)) || (request && len == 8) {
        return Detected::Request;
    }
    // Typed, mid-connection: `Q` and SQL text, or `P` and a statement name or text.
    let t = byte(head, 0);
    let len = small_len(head, 1);
    if len < 5 || len as u64 > (1 << 24) {
        return Detected::No;
    }
    let first = byte(head, 5);
    let sql_start =
        first.is_ascii_alphabetic() || matches!(first, b' ' | b'\n' | b'(' | b'/' | b'-');
    if t == b'Q' && sql_start {
        return Detected::Request;
    }
    // A parse holds a name, a statement and a parameter count: at least 12 bytes. (A MySQL
    // server's greeting of 80 bytes starts `P`, then its sequence and protocol bytes read as a
    // length of 10.)
    let name_start = first == 0 || first.is_ascii_alphanumeric() || first == b'_';
    if t == b'P' && name_start && len >= 12 && n >= 7 {
        return Detected::Request;
    }
    Detected::No
}

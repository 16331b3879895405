//! HTTP/2 detector: a connection is claimed at the client's preface (`PRI * HTTP/2.0\r\n`,
//! cleartext with prior knowledge, as gRPC and h2c clients start), read by the client's send
//! or the server's receive. Its calls go to the stream framer; user space frames the
//! connection and decodes its header blocks (HPACK needs every block of a direction, in order,
//! from the start).

use observer_common::L7Event;

use super::Detected;

const PREFACE: &[u8; 16] = b"PRI * HTTP/2.0\r\n";

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

//! The MySQL/MariaDB client/server protocol, framed incrementally: bytes are fed as the calls of
//! one direction bring them. A packet is a 3-byte little-endian length, a sequence number and
//! the payload; a payload of 2^24 - 1 bytes continues in the next packet, and the pieces make
//! one logical packet. Only a packet's first [`KEEP`] bytes are kept, the rest is skipped by its
//! length, also where the kernel did not send it. Pure functions over byte slices, shared with
//! the fuzz target.

/// Bytes kept of a packet: a query's beginning, an error's code, a result's status.
pub const KEEP: usize = 256;
/// A packet of this length continues in the next one.
pub const MAX_PIECE: u32 = 0xff_ffff;

/// A complete logical packet: the sequence numbers of its first and last pieces, its payload's
/// length and first [`KEEP`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub seq: u8,
    pub last_seq: u8,
    pub len: u64,
    pub body: Vec<u8>,
}

impl Packet {
    pub fn first(&self) -> Option<u8> {
        self.body.first().copied()
    }

    /// An `ERR` packet.
    pub fn is_err(&self) -> bool {
        self.first() == Some(0xff)
    }

    /// The `EOF` packet of the protocol before `CLIENT_DEPRECATE_EOF` (exactly 5 bytes: `0xfe`,
    /// warnings, status).
    pub fn is_eof(&self) -> bool {
        self.first() == Some(0xfe) && self.len == 5
    }

    /// What ends a result set's rows: an `EOF`, or the `OK` packet with an `0xfe` header that
    /// replaces it (a row starting `0xfe` is at least 2^24 bytes).
    pub fn ends_rows(&self) -> bool {
        self.first() == Some(0xfe) && self.len < u64::from(MAX_PIECE)
    }

    /// An `ERR` packet's error number.
    pub fn error_code(&self) -> Option<u16> {
        (self.is_err() && self.body.len() >= 3)
            .then(|| u16::from_le_bytes([self.body[1], self.body[2]]))
    }

    /// The status flags of an `OK` or `EOF` packet.
    pub fn status(&self) -> Option<u16> {
        let b = &self.body;
        if self.is_eof() {
            return (b.len() >= 5).then(|| u16::from_le_bytes([b[3], b[4]]));
        }
        if !matches!(b.first(), Some(0x00 | 0xfe)) {
            return None;
        }
        let (_, n1) = lenenc(b.get(1..)?)?;
        let (_, n2) = lenenc(b.get(1 + n1..)?)?;
        let at = 1 + n1 + n2;
        Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]))
    }

    /// Whether another result of the same command follows (`SERVER_MORE_RESULTS_EXISTS`).
    pub fn more_results(&self) -> bool {
        self.status().is_some_and(|s| s & 0x0008 != 0)
    }

    /// Whether a cursor was opened (`SERVER_STATUS_CURSOR_EXISTS`): its rows come by fetches.
    pub fn cursor(&self) -> bool {
        self.status().is_some_and(|s| s & 0x0040 != 0)
    }
}

/// A length-encoded integer at the start of `b`, and its size.
pub fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let le = |n: usize| -> Option<u64> {
        let s = b.get(1..1 + n)?;
        Some(s.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
    };
    match *b.first()? {
        x @ 0..=0xfa => Some((u64::from(x), 1)),
        0xfc => Some((le(2)?, 3)),
        0xfd => Some((le(3)?, 4)),
        0xfe => Some((le(8)?, 9)),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// In a packet header: `have` of its 4 bytes seen.
    #[default]
    Header,
    /// In a piece's payload: `left` bytes of it to come.
    Body,
}

/// One direction of a connection.
#[derive(Debug, Clone, Default)]
pub struct Framer {
    state: State,
    hdr: [u8; 4],
    have: usize,
    /// The piece being read is 2^24 - 1 bytes: the logical packet goes on.
    piece_full: bool,
    /// A logical packet is open (its first piece was read).
    open: bool,
    seq: u8,
    last_seq: u8,
    len: u64,
    left: u64,
    body: Vec<u8>,
    /// Framing lost to bytes the kernel did not send.
    broken: bool,
}

impl Framer {
    pub fn broken(&self) -> bool {
        self.broken
    }

    /// Starts over at a packet boundary (after a loss of framing).
    pub fn reset(&mut self) {
        *self = Framer::default();
    }

    /// Feeds bytes of the direction; complete packets go to `out`, in order.
    pub fn feed(&mut self, mut b: &[u8], out: &mut impl FnMut(Packet)) {
        while !b.is_empty() && !self.broken {
            match self.state {
                State::Header => {
                    let n = (4 - self.have).min(b.len());
                    self.hdr[self.have..self.have + n].copy_from_slice(&b[..n]);
                    self.have += n;
                    b = &b[n..];
                    if self.have == 4 {
                        self.start_piece(out);
                    }
                }
                State::Body => {
                    let n = (b.len() as u64).min(self.left) as usize;
                    let room = KEEP.saturating_sub(self.body.len());
                    self.body.extend_from_slice(&b[..n.min(room)]);
                    b = &b[n..];
                    self.left -= n as u64;
                    if self.left == 0 {
                        self.end_piece(out);
                    }
                }
            }
        }
    }

    /// `n` bytes the kernel did not send: skipped inside a payload, framing lost anywhere else.
    pub fn gap(&mut self, n: u64, out: &mut impl FnMut(Packet)) {
        if n == 0 || self.broken {
            return;
        }
        if self.state == State::Body && n <= self.left {
            self.left -= n;
            if self.left == 0 {
                self.end_piece(out);
            }
            return;
        }
        self.broken = true;
    }

    fn start_piece(&mut self, out: &mut impl FnMut(Packet)) {
        let len = u32::from_le_bytes([self.hdr[0], self.hdr[1], self.hdr[2], 0]);
        let seq = self.hdr[3];
        self.have = 0;
        if !self.open {
            self.open = true;
            self.seq = seq;
            self.len = 0;
            self.body.clear();
        }
        self.last_seq = seq;
        self.len += u64::from(len);
        self.piece_full = len == MAX_PIECE;
        self.left = u64::from(len);
        self.state = State::Body;
        if self.left == 0 {
            self.end_piece(out);
        }
    }

    fn end_piece(&mut self, out: &mut impl FnMut(Packet)) {
        self.state = State::Header;
        if self.piece_full {
            return;
        }
        self.open = false;
        out(Packet {
            seq: self.seq,
            last_seq: self.last_seq,
            len: self.len,
            body: std::mem::take(&mut self.body),
        });
    }
}

/// Every packet of `data` fed at once, and whether the framing broke (for tests and the fuzz
/// target).
pub fn parse_all(data: &[u8]) -> (Vec<Packet>, bool) {
    let mut f = Framer::default();
    let mut out = Vec::new();
    f.feed(data, &mut |p| out.push(p));
    (out, f.broken())
}

/// Whether a call's bytes start with a command packet (sequence 0, a command byte, a length
/// that fits the call's first bytes or goes past them).
pub fn starts_command(b: &[u8]) -> bool {
    b.len() >= 5 && b[3] == 0 && (b[0] | b[1] | b[2]) != 0 && command_name(b[4]).is_some()
}

/// The operation name of a command other than a query, a prepare or an execution (which are
/// named by their statements); `None` for a byte that is no command.
pub fn command_name(c: u8) -> Option<&'static str> {
    Some(match c {
        0x01 => "QUIT",
        0x02 => "INIT_DB",
        0x03 => "QUERY",
        0x04 => "FIELD_LIST",
        0x05 => "CREATE_DB",
        0x06 => "DROP_DB",
        0x07 => "REFRESH",
        0x09 => "STATISTICS",
        0x0a => "PROCESS_INFO",
        0x0c => "PROCESS_KILL",
        0x0d => "DEBUG",
        0x0e => "PING",
        0x11 => "CHANGE_USER",
        0x12 => "BINLOG_DUMP",
        0x16 => "PREPARE",
        0x17 => "EXECUTE",
        0x18 => "STMT_SEND_LONG_DATA",
        0x19 => "STMT_CLOSE",
        0x1a => "STMT_RESET",
        0x1b => "SET_OPTION",
        0x1c => "STMT_FETCH",
        0x1f => "RESET_CONNECTION",
        0xfa => "STMT_BULK_EXECUTE",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let n = payload.len() as u32;
        let mut v = vec![n as u8, (n >> 8) as u8, (n >> 16) as u8, seq];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn packets_split_anywhere_frame_the_same() {
        let mut data = packet(0, b"\x03SELECT 1");
        data.extend(packet(1, b"\x01"));
        data.extend(packet(2, b"\xfe\x00\x00\x02\x00"));
        let (whole, broken) = parse_all(&data);
        assert!(!broken);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].body, b"\x03SELECT 1");
        assert!(whole[2].is_eof() && whole[2].ends_rows());
        assert_eq!(whole[2].status(), Some(2));
        for cut in 0..data.len() {
            let mut f = Framer::default();
            let mut out = Vec::new();
            f.feed(&data[..cut], &mut |p| out.push(p));
            f.feed(&data[cut..], &mut |p| out.push(p));
            assert_eq!(out, whole, "cut at {cut}");
        }
    }

    #[test]
    fn a_payload_of_two_to_the_24_continues_in_the_next_packet() {
        let mut f = Framer::default();
        let mut out = Vec::new();
        f.feed(&[0xff, 0xff, 0xff, 0, 0x03, b'I'], &mut |p| out.push(p));
        // The rest of the first piece was never sent by the kernel.
        f.gap(u64::from(MAX_PIECE) - 2, &mut |p| out.push(p));
        assert!(out.is_empty());
        f.feed(&packet(1, b"xyz"), &mut |p| out.push(p));
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].seq, out[0].last_seq), (0, 1));
        assert_eq!(out[0].len, u64::from(MAX_PIECE) + 3);
        assert_eq!(&out[0].body[..2], b"\x03I");
        // A gap across a header loses the framing.
        f.gap(10, &mut |p| out.push(p));
        assert!(f.broken());
    }

    #[test]
    fn ok_err_and_eof_packets_read() {
        let (p, _) = parse_all(&packet(1, b"\xff\x7a\x04#42S02Table 'x' doesn't exist"));
        assert_eq!(p[0].error_code(), Some(1146));
        // OK: affected rows 1, insert id 300 (0xfc, 2 bytes), status 0x000a.
        let (p, _) = parse_all(&packet(1, b"\x00\x01\xfc\x2c\x01\x0a\x00\x00\x00"));
        assert_eq!(p[0].status(), Some(0x000a));
        assert!(p[0].more_results());
        // The OK that ends rows with CLIENT_DEPRECATE_EOF.
        let (p, _) = parse_all(&packet(5, b"\xfe\x00\x00\x22\x00\x00\x00"));
        assert!(p[0].ends_rows() && !p[0].is_eof());
        assert_eq!(p[0].status(), Some(0x22));
        assert_eq!(lenenc(b"\xfd\x01\x02\x03"), Some((0x030201, 4)));
        assert_eq!(lenenc(b"\xfc\x01"), None);
        assert!(starts_command(&packet(0, b"\x0e")));
        assert!(!starts_command(&packet(1, b"\x0e")));
        assert!(!starts_command(&packet(0, b"\x55")));
    }
}

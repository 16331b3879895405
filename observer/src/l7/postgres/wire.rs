//! The PostgreSQL frontend/backend protocol (v3), framed incrementally: bytes are fed as the
//! calls of one direction bring them. A message is a type byte and a 32-bit length (the
//! startup-class messages of a connection's start have no type byte); only the first bytes of
//! the messages the tracker reads are kept, every other body is skipped by its length, also
//! where the kernel did not send it. Pure functions over byte slices, shared with the fuzz target.

/// Bytes kept of a message's body: a query's beginning, an error's fields, a command tag.
pub const KEEP: usize = 256;
/// Largest message accepted (PostgreSQL's own limit is 1 GB).
const MAX_LEN: u32 = 1 << 30;

/// `StartupMessage` protocol 3.0, and the request codes sent in its place.
pub const PROTOCOL_3: u32 = 196_608;
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;

/// A complete message: its type (0 for a startup-class message, whose code is then the body's
/// first 4 bytes), its body length and the body's first [`KEEP`] bytes (all of it if shorter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub ty: u8,
    pub len: u32,
    pub body: Vec<u8>,
}

/// Why a direction's framing was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// A type byte the protocol does not have, or a length that cannot be.
    Invalid,
    /// A message header in bytes the kernel did not send.
    Gap,
    /// The connection turned to TLS (`SSLRequest` answered `S`): its bytes are ciphertext.
    Encrypted,
}

/// Frontend message types (client to server).
fn frontend_type(t: u8) -> bool {
    matches!(
        t,
        b'Q' | b'P'
            | b'B'
            | b'E'
            | b'S'
            | b'D'
            | b'C'
            | b'H'
            | b'X'
            | b'd'
            | b'c'
            | b'f'
            | b'F'
            | b'p'
    )
}

/// Backend message types (server to client).
fn backend_type(t: u8) -> bool {
    matches!(
        t,
        b'R' | b'S'
            | b'K'
            | b'Z'
            | b'T'
            | b'D'
            | b'C'
            | b'E'
            | b'N'
            | b'1'
            | b'2'
            | b'3'
            | b'n'
            | b's'
            | b'I'
            | b'G'
            | b'H'
            | b'W'
            | b'd'
            | b'c'
            | b'A'
            | b't'
            | b'V'
            | b'v'
    )
}

/// Whether the tracker reads a message type's body (others are only skipped).
fn kept(frontend: bool, t: u8) -> bool {
    if frontend {
        matches!(t, 0 | b'Q' | b'P' | b'B' | b'E')
    } else {
        matches!(t, b'C' | b'E' | b'Z')
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// In a message header: `have` of its bytes seen.
    #[default]
    Header,
    /// In a body: `left` bytes of it to come.
    Body,
}

/// One direction of a connection.
#[derive(Debug, Clone, Default)]
pub struct Framer {
    frontend: bool,
    /// The next frontend message is untyped (a connection's start).
    startup: bool,
    /// The next backend byte is the one-byte answer to an `SSLRequest`/`GSSENCRequest`.
    answer_byte: bool,
    state: State,
    hdr: [u8; 5],
    have: usize,
    ty: u8,
    len: u32,
    left: u64,
    body: Vec<u8>,
    broken: Option<Broken>,
}

impl Framer {
    /// The client's direction; `from_start`: the connection's first bytes are its next ones.
    pub fn frontend(from_start: bool) -> Self {
        Framer {
            frontend: true,
            startup: from_start,
            ..Default::default()
        }
    }

    /// The server's direction.
    pub fn backend() -> Self {
        Framer::default()
    }

    pub fn broken(&self) -> Option<Broken> {
        self.broken
    }

    /// Between two messages (framing intact).
    pub fn at_boundary(&self) -> bool {
        self.broken.is_none() && self.state == State::Header && self.have == 0
    }

    /// The frontend asked for TLS or GSS encryption: the backend's next byte answers it.
    pub fn expect_answer_byte(&mut self) {
        self.answer_byte = true;
    }

    /// Starts over at a message boundary (after a loss of framing); typed messages from now on.
    pub fn reset(&mut self) {
        *self = Framer {
            frontend: self.frontend,
            ..Default::default()
        };
    }

    fn header_len(&self) -> usize {
        if self.frontend && self.startup {
            4
        } else {
            5
        }
    }

    /// Feeds bytes of the direction; complete messages go to `out`, in order. A one-byte
    /// answer to an encryption request comes out as a message of type `N` or `S` with no body.
    pub fn feed(&mut self, mut b: &[u8], out: &mut impl FnMut(Message)) {
        while !b.is_empty() && self.broken.is_none() {
            if self.answer_byte && !self.frontend && self.state == State::Header && self.have == 0 {
                self.answer_byte = false;
                let a = b[0];
                b = &b[1..];
                match a {
                    b'N' => out(Message {
                        ty: b'N',
                        len: 0,
                        body: Vec::new(),
                    }),
                    b'S' | b'G' => {
                        out(Message {
                            ty: a,
                            len: 0,
                            body: Vec::new(),
                        });
                        self.broken = Some(Broken::Encrypted);
                    }
                    // An error response instead (an old server): framed as usual.
                    b'E' => {
                        self.hdr[0] = a;
                        self.have = 1;
                    }
                    _ => self.broken = Some(Broken::Invalid),
                }
                continue;
            }
            match self.state {
                State::Header => {
                    let need = self.header_len();
                    let n = (need - self.have).min(b.len());
                    self.hdr[self.have..self.have + n].copy_from_slice(&b[..n]);
                    self.have += n;
                    b = &b[n..];
                    if self.have == need {
                        self.start_body(out);
                    }
                }
                State::Body => {
                    let n = (b.len() as u64).min(self.left) as usize;
                    if kept(self.frontend, self.ty) {
                        let room = KEEP.saturating_sub(self.body.len());
                        self.body.extend_from_slice(&b[..n.min(room)]);
                    }
                    b = &b[n..];
                    self.left -= n as u64;
                    if self.left == 0 {
                        self.finish(out);
                    }
                }
            }
        }
    }

    /// `n` bytes the kernel did not send: skipped inside a body, framing lost anywhere else.
    pub fn gap(&mut self, n: u64, out: &mut impl FnMut(Message)) {
        if n == 0 || self.broken.is_some() {
            return;
        }
        if self.state == State::Body && n <= self.left {
            self.left -= n;
            if self.left == 0 {
                self.finish(out);
            }
            return;
        }
        self.broken = Some(Broken::Gap);
    }

    fn start_body(&mut self, out: &mut impl FnMut(Message)) {
        let (ty, len_bytes) = if self.frontend && self.startup {
            (0, [self.hdr[0], self.hdr[1], self.hdr[2], self.hdr[3]])
        } else {
            (
                self.hdr[0],
                [self.hdr[1], self.hdr[2], self.hdr[3], self.hdr[4]],
            )
        };
        let len = u32::from_be_bytes(len_bytes);
        let valid_type = ty == 0
            || if self.frontend {
                frontend_type(ty)
            } else {
                backend_type(ty)
            };
        let min = if ty == 0 { 8 } else { 4 };
        if !valid_type || len < min || len > MAX_LEN {
            self.broken = Some(Broken::Invalid);
            return;
        }
        self.ty = ty;
        self.len = len - 4;
        self.left = u64::from(self.len);
        self.body.clear();
        self.have = 0;
        self.state = State::Body;
        if self.left == 0 {
            self.finish(out);
        }
    }

    fn finish(&mut self, out: &mut impl FnMut(Message)) {
        self.state = State::Header;
        self.have = 0;
        let m = Message {
            ty: self.ty,
            len: self.len,
            body: std::mem::take(&mut self.body),
        };
        if m.ty == 0 {
            // A startup-class message: after an SSLRequest or GSSENCRequest the client sends
            // its real startup message (untyped too) once the answer was `N`.
            let code = m
                .body
                .get(..4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .unwrap_or(0);
            self.startup = matches!(code, SSL_REQUEST | GSSENC_REQUEST);
        }
        out(m);
    }
}

/// The code of a startup-class message (its body's first 4 bytes).
pub fn startup_code(m: &Message) -> Option<u32> {
    (m.ty == 0 && m.body.len() >= 4)
        .then(|| u32::from_be_bytes([m.body[0], m.body[1], m.body[2], m.body[3]]))
}

/// Whether a connection's first client bytes are a startup-class message (else it was joined
/// mid-way and its messages are typed).
pub fn starts_untyped(b: &[u8]) -> bool {
    b.len() >= 8
        && matches!(
            u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            PROTOCOL_3 | SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST
        )
}

/// A NUL-terminated string at the start of `b`, and the rest after it.
pub fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == 0)?;
    Some((&b[..i], &b[i + 1..]))
}

/// The SQLSTATE of an `ErrorResponse` body (its `C` field).
pub fn sqlstate(body: &[u8]) -> Option<&[u8]> {
    let mut b = body;
    while let Some((&code, rest)) = b.split_first() {
        if code == 0 {
            return None;
        }
        let (value, rest) = cstr(rest)?;
        if code == b'C' {
            return Some(value);
        }
        b = rest;
    }
    None
}

/// Messages of `b` fed at once (tests and the fuzz target).
pub fn parse_all(b: &[u8], frontend: bool, from_start: bool) -> (Vec<Message>, Option<Broken>) {
    let mut f = if frontend {
        Framer::frontend(from_start)
    } else {
        Framer::backend()
    };
    let mut out = Vec::new();
    f.feed(b, &mut |m| out.push(m));
    (out, f.broken())
}

/// Builders of messages as clients and servers write them (tests).
#[cfg(test)]
pub mod build {
    pub fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![ty];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    pub fn startup() -> Vec<u8> {
        let body = b"user\0bench\0database\0bench\0\0";
        let mut v = (body.len() as u32 + 8).to_be_bytes().to_vec();
        v.extend_from_slice(&super::PROTOCOL_3.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    pub fn ssl_request() -> Vec<u8> {
        let mut v = 8u32.to_be_bytes().to_vec();
        v.extend_from_slice(&super::SSL_REQUEST.to_be_bytes());
        v
    }

    pub fn query(sql: &str) -> Vec<u8> {
        msg(b'Q', &[sql.as_bytes(), b"\0"].concat())
    }

    pub fn parse(name: &str, sql: &str) -> Vec<u8> {
        msg(
            b'P',
            &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"].concat(),
        )
    }

    pub fn bind(portal: &str, stmt: &str) -> Vec<u8> {
        msg(
            b'B',
            &[portal.as_bytes(), b"\0", stmt.as_bytes(), b"\0\0\0\0\0\0\0"].concat(),
        )
    }

    pub fn execute(portal: &str) -> Vec<u8> {
        msg(b'E', &[portal.as_bytes(), b"\0\0\0\0\0"].concat())
    }

    pub fn sync() -> Vec<u8> {
        msg(b'S', b"")
    }

    pub fn complete(tag: &str) -> Vec<u8> {
        msg(b'C', &[tag.as_bytes(), b"\0"].concat())
    }

    pub fn error(sqlstate: &str) -> Vec<u8> {
        msg(
            b'E',
            &[b"SERROR\0VERROR\0C", sqlstate.as_bytes(), b"\0Mboom\0\0"].concat(),
        )
    }

    pub fn ready() -> Vec<u8> {
        msg(b'Z', b"I")
    }
}

#[cfg(test)]
mod tests {
    use super::{build::*, *};

    #[test]
    fn a_connections_start_and_its_queries() {
        let mut b = startup();
        b.extend(query("SELECT 1"));
        b.extend(parse("s1", "UPDATE t SET a = $1"));
        b.extend(bind("", "s1"));
        b.extend(execute(""));
        b.extend(sync());
        let (m, broken) = parse_all(&b, true, true);
        assert_eq!(broken, None);
        let types: Vec<u8> = m.iter().map(|m| m.ty).collect();
        assert_eq!(types, [0, b'Q', b'P', b'B', b'E', b'S']);
        assert_eq!(startup_code(&m[0]), Some(PROTOCOL_3));
        assert_eq!(m[1].body, b"SELECT 1\0");
        for cut in 0..b.len() {
            let mut f = Framer::frontend(true);
            let mut got = Vec::new();
            f.feed(&b[..cut], &mut |x| got.push(x));
            f.feed(&b[cut..], &mut |x| got.push(x));
            assert_eq!(got, m, "cut at {cut}");
            assert!(f.at_boundary());
        }
    }

    #[test]
    fn ssl_refused_then_plaintext_and_ssl_accepted_is_encrypted() {
        let mut fe = ssl_request();
        fe.extend(startup());
        fe.extend(query("SELECT 1"));
        let (m, broken) = parse_all(&fe, true, true);
        assert_eq!(broken, None);
        assert_eq!(
            m.iter()
                .map(|m| (m.ty, startup_code(m)))
                .collect::<Vec<_>>(),
            [(0, Some(SSL_REQUEST)), (0, Some(PROTOCOL_3)), (b'Q', None)]
        );
        let mut be = Framer::backend();
        be.expect_answer_byte();
        let mut got = Vec::new();
        be.feed(
            &[b"N".as_slice(), &msg(b'R', &[0, 0, 0, 0])].concat(),
            &mut |x| got.push(x),
        );
        assert_eq!(got.iter().map(|m| m.ty).collect::<Vec<_>>(), [b'N', b'R']);
        let mut be = Framer::backend();
        be.expect_answer_byte();
        be.feed(b"S\x16\x03\x01", &mut |_| {});
        assert_eq!(be.broken(), Some(Broken::Encrypted));
    }

    #[test]
    fn errors_and_bodies_beyond_what_was_read() {
        let e = error("42P01");
        let (m, _) = parse_all(&e, false, false);
        assert_eq!(sqlstate(&m[0].body), Some(&b"42P01"[..]));
        // A data row of 100 kB: its body is skipped, also across a gap.
        let row = msg(b'D', &vec![b'x'; 100_000]);
        let mut f = Framer::backend();
        let mut got = Vec::new();
        f.feed(&row[..4095], &mut |x| got.push(x));
        f.gap((row.len() - 4095) as u64, &mut |x| got.push(x));
        f.feed(&complete("SELECT 1"), &mut |x| got.push(x));
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].body, b"SELECT 1\0");
        // A header in a gap loses the framing.
        let mut f = Framer::backend();
        f.feed(&complete("SELECT 1")[..3], &mut |_| {});
        f.gap(10, &mut |_| {});
        assert_eq!(f.broken(), Some(Broken::Gap));
    }

    /// The fuzz target's seeds (first byte: direction, start, split point), split everywhere.
    #[test]
    fn the_fuzz_seeds_frame_the_same_however_split() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/postgres-seeds");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let b = std::fs::read(e.unwrap().path()).unwrap();
            let (&ctl, data) = b.split_first().unwrap();
            let (frontend, from_start) = (ctl & 1 == 1, ctl & 2 == 2);
            let whole = parse_all(data, frontend, from_start);
            for cut in 0..data.len() {
                let mut f = if frontend {
                    Framer::frontend(from_start)
                } else {
                    Framer::backend()
                };
                let mut got = Vec::new();
                f.feed(&data[..cut], &mut |m| got.push(m));
                f.feed(&data[cut..], &mut |m| got.push(m));
                assert_eq!((got, f.broken()), whole);
            }
            n += 1;
        }
        assert!(n >= 6, "seeds found: {n}");
    }

    #[test]
    fn hostile_bytes_break_the_framing() {
        for b in [&b"Q\0\0\0\x02"[..], b"?\0\0\0\x05x", b"Q\x7f\xff\xff\xffx"] {
            assert_eq!(parse_all(b, true, false).1, Some(Broken::Invalid), "{b:?}");
        }
        assert_eq!(
            parse_all(b"\0\0\0\x04abcd", true, true).1,
            Some(Broken::Invalid)
        );
        assert!(starts_untyped(&startup()));
        assert!(!starts_untyped(&query("SELECT 1")));
    }
}

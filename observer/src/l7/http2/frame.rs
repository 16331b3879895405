//! HTTP/2 frames (RFC 9113 §4 and §6), all the observer reads of a connection: each
//! direction's bytes framed incrementally, DATA payloads skipped by their length, header blocks
//! (HEADERS or PUSH_PROMISE and their CONTINUATIONs) put together up to a bound. Pure functions
//! over byte slices, shared with the fuzz target.

/// What a client sends first.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes of a frame header.
const HEADER: usize = 9;
/// A header block longer than this is not kept (its names are lost, and with them the HPACK
/// table of its direction).
pub const MAX_BLOCK: usize = 16384;
/// Payload bytes kept of the control frames read (SETTINGS: 6 per setting, a few in use).
const MAX_CONTROL: usize = 256;

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PUSH_PROMISE: u8 = 5;
pub const GOAWAY: u8 = 7;
pub const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// SETTINGS_HEADER_TABLE_SIZE.
const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;

/// What a direction says, frame by frame, as far as the observer needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A header block, whole: a request's or response's headers, or trailers. `block` is `None`
    /// when it was longer than [`MAX_BLOCK`] or partly not read.
    Headers {
        stream: u32,
        block: Option<&'a [u8]>,
        end_stream: bool,
    },
    /// A server's promise of a pushed stream: its block changes the HPACK table too.
    Promise {
        block: Option<&'a [u8]>,
    },
    Data {
        stream: u32,
        end_stream: bool,
    },
    /// Content of a DATA frame (its padding off), piece by piece as it comes, before the
    /// frame's [`Frame::Data`]; `None`: bytes of it that were not seen.
    Body {
        stream: u32,
        bytes: Option<&'a [u8]>,
    },
    Reset {
        stream: u32,
        code: u32,
    },
    GoAway {
        last_stream: u32,
        code: u32,
    },
    /// The sender's settings (not an acknowledgement): the largest HPACK table it lets the
    /// other end's encoder use, where it says one.
    Settings {
        header_table_size: Option<u32>,
    },
}

/// Whether a call of `len` bytes, of which `b` are its first, is whole HTTP/2 frames: each
/// header valid for its type (stream 0 for connection frames, a stream for stream frames,
/// the fixed lengths of PRIORITY, RST_STREAM, PING and WINDOW_UPDATE, payloads within the
/// default maximum of 16 KiB) and the last frame ending where the call does. What a
/// direction joined mid-way waits for before it is framed (the kernel claims such a
/// connection at a call like this; the other direction may start in the middle of a frame).
pub fn whole_frames(b: &[u8], len: usize) -> bool {
    let mut off = 0usize;
    while off + HEADER <= b.len() {
        let h = &b[off..off + HEADER];
        let n = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
        let ok = n <= 16384
            && stream & 0x8000_0000 == 0
            && match h[3] {
                0 | 1 | 5 | 9 => stream != 0,
                2 => stream != 0 && n == 5,
                3 => stream != 0 && n == 4,
                4 => stream == 0 && n % 6 == 0,
                6 => stream == 0 && n == 8,
                7 => stream == 0 && n >= 8,
                8 => n == 4,
                _ => false,
            };
        if !ok {
            return false;
        }
        off += HEADER + n;
        if off == len {
            return true;
        }
    }
    false
}

/// Why a direction is no longer framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// Bytes that are no HTTP/2: a wrong preface, a CONTINUATION out of place, a control frame
    /// of the wrong length.
    Invalid,
    /// A frame header fell in bytes the kernel did not send.
    Gap,
}

/// One direction of a connection.
#[derive(Debug)]
pub struct Framer {
    /// Bytes of the preface still expected (the client's direction, from its start).
    preface: usize,
    head: [u8; HEADER],
    head_len: usize,
    /// The current frame's header, once complete.
    ty: u8,
    flags: u8,
    stream: u32,
    /// Payload bytes of the current frame still to come.
    left: usize,
    /// The current frame's payload as kept (header blocks and control frames).
    payload: Vec<u8>,
    /// A header block being put together: its stream, END_STREAM, whether a promise, bytes.
    block: Option<Block>,
    /// Bytes of the current frame's payload or block that were not kept.
    holed: bool,
    /// The current frame's payload length, and (DATA) its padding once read (`None` while
    /// the pad length byte of a padded frame has not come).
    len: usize,
    pad: Option<usize>,
    broken: Option<Broken>,
}

#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    promise: bool,
    bytes: Vec<u8>,
    lost: bool,
}

impl Framer {
    /// The client's direction from the connection's start: the preface first.
    pub fn client() -> Framer {
        Framer::with_preface(PREFACE.len())
    }

    /// The server's direction, or a direction joined after its preface.
    pub fn server() -> Framer {
        Framer::with_preface(0)
    }

    fn with_preface(preface: usize) -> Framer {
        Framer {
            preface,
            head: [0; HEADER],
            head_len: 0,
            ty: 0,
            flags: 0,
            stream: 0,
            left: 0,
            payload: Vec::new(),
            block: None,
            holed: false,
            len: 0,
            pad: None,
            broken: None,
        }
    }

    pub fn broken(&self) -> Option<Broken> {
        self.broken
    }

    /// Whether a frame's payload is being read (else the next byte starts a frame header).
    fn in_payload(&self) -> bool {
        self.head_len == HEADER
    }

    /// Bytes of the direction, in order.
    pub fn feed(&mut self, mut b: &[u8], out: &mut impl FnMut(Frame<'_>)) {
        while !b.is_empty() && self.broken.is_none() {
            if self.preface > 0 {
                let at = PREFACE.len() - self.preface;
                let n = self.preface.min(b.len());
                if b[..n] != PREFACE[at..at + n] {
                    self.broken = Some(Broken::Invalid);
                    return;
                }
                self.preface -= n;
                b = &b[n..];
                continue;
            }
            if !self.in_payload() {
                let n = (HEADER - self.head_len).min(b.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&b[..n]);
                self.head_len += n;
                b = &b[n..];
                if self.in_payload() {
                    self.start_frame(out);
                }
                continue;
            }
            let n = self.left.min(b.len());
            if self.ty == DATA {
                self.body(&b[..n], out);
            }
            if self.keeps() {
                let room = self.room();
                if n > room {
                    self.holed = true;
                }
                self.payload.extend_from_slice(&b[..n.min(room)]);
            }
            self.left -= n;
            b = &b[n..];
            if self.left == 0 {
                self.end_frame(out);
            }
        }
    }

    /// `n` bytes of the direction that will never be seen.
    pub fn gap(&mut self, n: u64, out: &mut impl FnMut(Frame<'_>)) {
        if self.broken.is_some() || n == 0 {
            return;
        }
        if self.preface > 0 || !self.in_payload() || n > self.left as u64 {
            self.broken = Some(Broken::Gap);
            return;
        }
        if self.keeps() {
            self.holed = true;
        }
        if self.ty == DATA {
            out(Frame::Body {
                stream: self.stream,
                bytes: None,
            });
            // A lost pad length byte: what follows is content or padding, unknown which
            // (the content is already lost to its reader).
            self.pad.get_or_insert(0);
        }
        self.left -= n as usize;
        if self.left == 0 {
            self.end_frame(out);
        }
    }

    /// Bytes `b` of a DATA frame's payload, from where it stands (`left` not yet reduced):
    /// the content among them, without the pad length byte and the padding.
    fn body(&mut self, b: &[u8], out: &mut impl FnMut(Frame<'_>)) {
        let at = self.len - self.left;
        let mut b = b;
        let mut at = at;
        if self.pad.is_none() {
            // A padded frame's first byte: the pad length.
            let Some((&n, rest)) = b.split_first() else {
                return;
            };
            self.pad = Some(usize::from(n));
            b = rest;
            at += 1;
        }
        let end = self.len.saturating_sub(self.pad.unwrap_or(0));
        let keep = end.saturating_sub(at).min(b.len());
        if keep > 0 {
            out(Frame::Body {
                stream: self.stream,
                bytes: Some(&b[..keep]),
            });
        }
    }

    /// Whether the current frame's payload is kept.
    fn keeps(&self) -> bool {
        matches!(
            self.ty,
            HEADERS | CONTINUATION | PUSH_PROMISE | RST_STREAM | GOAWAY | SETTINGS
        )
    }

    /// Payload bytes the current frame may still keep.
    fn room(&self) -> usize {
        let max = match self.ty {
            HEADERS | CONTINUATION | PUSH_PROMISE => {
                MAX_BLOCK.saturating_sub(self.block.as_ref().map_or(0, |b| b.bytes.len()))
            }
            _ => MAX_CONTROL,
        };
        max.saturating_sub(self.payload.len())
    }

    fn start_frame(&mut self, out: &mut impl FnMut(Frame<'_>)) {
        let h = self.head;
        self.left = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        self.ty = h[3];
        self.flags = h[4];
        self.stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        self.payload.clear();
        self.holed = false;
        self.len = self.left;
        self.pad = (self.flags & PADDED == 0).then_some(0);
        // Between a header block's frames nothing else may come (RFC 9113 §6.10).
        if self.block.is_some() && self.ty != CONTINUATION
            || self.block.is_none() && self.ty == CONTINUATION
        {
            self.broken = Some(Broken::Invalid);
            return;
        }
        if self.left == 0 {
            self.end_frame(out);
        }
    }

    fn end_frame(&mut self, out: &mut impl FnMut(Frame<'_>)) {
        self.head_len = 0;
        let (ty, flags, stream) = (self.ty, self.flags, self.stream);
        let holed = std::mem::take(&mut self.holed);
        match ty {
            DATA => out(Frame::Data {
                stream,
                end_stream: flags & END_STREAM != 0,
            }),
            HEADERS | PUSH_PROMISE => {
                let skip = if ty == PUSH_PROMISE { 4 } else { 0 };
                let fragment = (!holed)
                    .then(|| fragment(&self.payload, flags, skip))
                    .flatten();
                self.block = Some(Block {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    promise: ty == PUSH_PROMISE,
                    bytes: fragment.map(<[u8]>::to_vec).unwrap_or_default(),
                    lost: fragment.is_none(),
                });
                self.end_block(out);
            }
            CONTINUATION => {
                if let Some(b) = self.block.as_mut() {
                    if b.stream != stream {
                        self.broken = Some(Broken::Invalid);
                        return;
                    }
                    b.lost |= holed;
                    b.bytes.extend_from_slice(&self.payload);
                }
                self.end_block(out);
            }
            RST_STREAM if !holed => match self.payload[..] {
                [a, b, c, d] => out(Frame::Reset {
                    stream,
                    code: u32::from_be_bytes([a, b, c, d]),
                }),
                _ => self.broken = Some(Broken::Invalid),
            },
            GOAWAY if !holed || self.payload.len() >= 8 => match self.payload.get(..8) {
                Some(p) => out(Frame::GoAway {
                    last_stream: u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff,
                    code: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
                }),
                None => self.broken = Some(Broken::Invalid),
            },
            SETTINGS if flags & ACK == 0 => {
                if !self.payload.len().is_multiple_of(6) && !holed {
                    self.broken = Some(Broken::Invalid);
                    return;
                }
                let header_table_size = (self.payload.chunks_exact(6))
                    .filter(|s| u16::from_be_bytes([s[0], s[1]]) == SETTINGS_HEADER_TABLE_SIZE)
                    .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
                    .next_back();
                out(Frame::Settings { header_table_size });
            }
            _ => {}
        }
    }

    /// Hands out the header block when its last frame came (END_HEADERS).
    fn end_block(&mut self, out: &mut impl FnMut(Frame<'_>)) {
        if self.flags & END_HEADERS == 0 {
            return;
        }
        let Some(b) = self.block.take() else { return };
        let block = (!b.lost).then_some(&b.bytes[..]);
        if b.promise {
            out(Frame::Promise { block });
        } else {
            out(Frame::Headers {
                stream: b.stream,
                block,
                end_stream: b.end_stream,
            });
        }
    }
}

/// The header block fragment of a HEADERS (`skip` 0) or PUSH_PROMISE (`skip` 4: the promised
/// stream) frame's payload: padding and priority taken off. `None`: lengths that do not fit.
fn fragment(p: &[u8], flags: u8, skip: usize) -> Option<&[u8]> {
    let (pad, p) = if flags & PADDED != 0 {
        let (&n, rest) = p.split_first()?;
        (usize::from(n), rest)
    } else {
        (0, p)
    };
    let p = if flags & PRIORITY != 0 && skip == 0 {
        p.get(5..)?
    } else {
        p.get(skip..)?
    };
    p.get(..p.len().checked_sub(pad)?)
}

/// A frame as a peer writes it, for tests and seeds.
#[cfg(test)]
pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut b = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, ty, flags];
    b.extend_from_slice(&stream.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames but DATA's content (the body test below reads that).
    fn frames(f: &mut Framer, pieces: &[&[u8]]) -> Vec<String> {
        let mut v = Vec::new();
        for p in pieces {
            f.feed(p, &mut |x| keep(&mut v, x));
        }
        v
    }

    fn keep(v: &mut Vec<String>, x: Frame<'_>) {
        if !matches!(x, Frame::Body { .. }) {
            v.push(format!("{x:?}"));
        }
    }

    #[test]
    fn data_content_comes_without_padding_piece_by_piece() {
        let mut padded = vec![3];
        padded.extend(b"hello");
        padded.extend([0; 3]);
        let mut all = frame(DATA, PADDED, 1, &padded);
        all.extend(frame(DATA, END_STREAM, 1, b"world"));
        for cut in 0..all.len() {
            let mut f = Framer::server();
            let mut body = Vec::new();
            for p in [&all[..cut], &all[cut..]] {
                f.feed(p, &mut |x| {
                    if let Frame::Body { stream: 1, bytes } = x {
                        body.extend_from_slice(bytes.expect("no gap"));
                    }
                });
            }
            assert_eq!(body, b"helloworld", "cut at {cut}");
        }
    }

    #[test]
    fn a_clients_preface_settings_headers_and_data_split_anywhere() {
        let mut all = PREFACE.to_vec();
        all.extend(frame(
            SETTINGS,
            0,
            0,
            &[0, 1, 0, 0, 0x10, 0, 0, 3, 0, 0, 0, 100],
        ));
        all.extend(frame(HEADERS, END_HEADERS, 1, b"\x82\x86\x84"));
        all.extend(frame(DATA, END_STREAM, 1, &[7; 3000]));
        all.extend(frame(RST_STREAM, 0, 3, &[0, 0, 0, 8]));
        let want = vec![
            "Settings { header_table_size: Some(4096) }".to_string(),
            "Headers { stream: 1, block: Some([130, 134, 132]), end_stream: false }".into(),
            "Data { stream: 1, end_stream: true }".into(),
            "Reset { stream: 3, code: 8 }".into(),
        ];
        assert_eq!(frames(&mut Framer::client(), &[&all]), want);
        for cut in (0..all.len()).step_by(7) {
            let (a, b) = all.split_at(cut);
            assert_eq!(frames(&mut Framer::client(), &[a, b]), want, "cut {cut}");
        }
    }

    #[test]
    fn continuation_padding_priority_and_a_promise() {
        let mut f = Framer::server();
        // HEADERS padded (2 bytes) with priority, then a CONTINUATION ending the block.
        let mut p = vec![2, 0, 0, 0, 1, 16];
        p.extend_from_slice(b"ab");
        p.extend_from_slice(&[0, 0]);
        let mut all = frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &p);
        all.extend(frame(CONTINUATION, END_HEADERS, 5, b"cd"));
        all.extend(frame(PUSH_PROMISE, END_HEADERS, 5, &[0, 0, 0, 2, b'x']));
        assert_eq!(
            frames(&mut f, &[&all]),
            [
                "Headers { stream: 5, block: Some([97, 98, 99, 100]), end_stream: true }",
                "Promise { block: Some([120]) }"
            ]
        );
        // A frame between a block's frames breaks the direction.
        let mut f = Framer::server();
        let mut bad = frame(HEADERS, 0, 1, b"a");
        bad.extend(frame(DATA, 0, 1, b"b"));
        assert!(frames(&mut f, &[&bad]).is_empty());
        assert_eq!(f.broken(), Some(Broken::Invalid));
    }

    #[test]
    fn gaps_skip_payloads_and_lose_blocks_or_the_framing() {
        let mut f = Framer::server();
        let data = frame(DATA, END_STREAM, 1, &[0; 5000]);
        let mut v = Vec::new();
        f.feed(&data[..100], &mut |x| keep(&mut v, x));
        f.gap(4909, &mut |x| keep(&mut v, x));
        assert_eq!(v, ["Data { stream: 1, end_stream: true }"]);
        // A header block partly not read is handed out without bytes.
        let h = frame(HEADERS, END_HEADERS, 3, &[1; 50]);
        f.feed(&h[..20], &mut |x| keep(&mut v, x));
        f.gap(39, &mut |x| keep(&mut v, x));
        assert_eq!(
            v[1],
            "Headers { stream: 3, block: None, end_stream: false }"
        );
        // A gap over a frame header: framing lost.
        f.gap(3, &mut |_| panic!("no frame"));
        assert_eq!(f.broken(), Some(Broken::Gap));
        // A wrong preface.
        let mut c = Framer::client();
        c.feed(b"GET / HTTP/1.1\r\n", &mut |_| panic!("no frame"));
        assert_eq!(c.broken(), Some(Broken::Invalid));
    }

    #[test]
    fn a_block_too_long_is_handed_out_without_bytes() {
        let mut f = Framer::server();
        let mut all = frame(HEADERS, 0, 1, &vec![1; MAX_BLOCK]);
        all.extend(frame(CONTINUATION, END_HEADERS, 1, b"more"));
        assert_eq!(
            frames(&mut f, &[&all]),
            ["Headers { stream: 1, block: None, end_stream: false }"]
        );
        assert_eq!(f.broken(), None);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for n in 0..3000usize {
            let mut b = PREFACE.to_vec();
            for _ in 0..(n % 7) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let len = (x % 40) as usize;
                b.extend(frame(
                    (x >> 8) as u8 % 11,
                    (x >> 16) as u8,
                    (x >> 24) as u32,
                    &vec![(x >> 32) as u8; len],
                ));
            }
            let cut = (x as usize >> 5) % (b.len() + 1);
            let mut f = Framer::client();
            f.feed(&b[..cut], &mut |_| {});
            f.gap(x % 50, &mut |_| {});
            f.feed(&b[cut..], &mut |_| {});
        }
    }
}

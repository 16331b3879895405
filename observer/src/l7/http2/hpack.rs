//! HPACK for the HTTP/2 tracker: one decoder per connection and direction (`httlib-hpack`,
//! its table bounded), the placeholders of a direction joined mid-way, and the walk that checks
//! a block's structure and prunes it of what the tracker neither reads nor needs for the table
//! before the decoder sees it. Also built into the `http2_frames` fuzz target.

use std::collections::HashMap;

/// The largest HPACK table a peer may make the decoder keep (4096 is every usual default).
pub const MAX_TABLE: usize = 65536;

/// A direction's HPACK decoder (`httlib-hpack`: its Huffman decoding is table-driven; the
/// `hpack` family of crates builds a hash map for every Huffman-coded string, which took
/// four fifths of the observer's time under h2load); `None` once its table is unknown.
pub struct Decoder(pub Option<httlib_hpack::Decoder<'static>>);

/// Placeholders a joined decoder starts with: as many entries as a table of the default size
/// (4096 bytes) can hold, each of the smallest size (32: an empty name and value).
const PLACEHOLDERS: usize = 4096 / 32;

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Decoder"
        } else {
            "Unsynced"
        })
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        // The protocol's initial table size; a peer's size update may raise it to the bound.
        let mut d = httlib_hpack::Decoder::with_dynamic_size(4096);
        d.set_max_dynamic_size(MAX_TABLE as u32);
        Decoder(Some(d))
    }

    /// Decodes a header block into `on` (name, value per field), its Huffman-coded strings
    /// looked up in `strings` first; false when it could not be (the table is then unknown:
    /// fields before the failing one may have changed it). A decoder that panics on some
    /// input (a library's bug) must not take the observer down: the block is then
    /// unreadable like any other.
    pub fn decode(
        &mut self,
        strings: &mut Strings,
        block: &[u8],
        mut on: impl FnMut(&[u8], &[u8]),
    ) -> bool {
        let Some(dec) = self.0.as_mut() else {
            return false;
        };
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let Some(mut buf) = pruned(block, strings) else {
                return false;
            };
            let mut fields = Vec::new();
            let ok = dec.decode(&mut buf, &mut fields).is_ok();
            for (name, value, _) in &fields {
                on(name, value);
            }
            ok
        }))
        .unwrap_or(false);
        if !ok {
            self.0 = None;
        }
        ok
    }

    /// The decoder of a direction joined mid-way: its table holds an unknown entry (an empty
    /// name, which no encoder sends) where every entry from before the join may be. Entries
    /// are added at the front and evicted from the back, so the `k` newest are the `k` added
    /// since the join wherever the peer's table holds them; the encoder refers to nothing
    /// beyond its table, which the default size lets hold at most [`PLACEHOLDERS`] entries.
    /// A reference beyond the placeholders (a peer that raised the size before the join) is
    /// a decoding error: the table is then unknown, as after a lost block.
    pub fn joined() -> Decoder {
        let mut d = Decoder::new();
        // Literal with incremental indexing, a new name of 0 bytes and a value of 0 bytes.
        let block = [0x40u8, 0, 0].repeat(PLACEHOLDERS);
        d.decode(&mut Strings::default(), &block, |_, _| {});
        d
    }
}

/// Static-table indices (RFC 7541 Appendix A) of the names the tracker reads: the request
/// pseudo-headers (1-7), `:status` (8-14) and `content-type` (31).
fn read_name(index: usize) -> bool {
    matches!(index, 1..=14 | 31)
}

/// The names the tracker reads, spelled out (a literal's new name), and the empty name of a
/// joined decoder's placeholders.
const READ_NAMES: [&[u8]; 8] = [
    b":method",
    b":path",
    b":scheme",
    b":authority",
    b":status",
    b"content-type",
    b"grpc-status",
    b"",
];

/// Huffman-coded strings already decoded, by their coded bytes, shared by the tracker's
/// decoders. Servers send the same coded values on every response: nginx adds `server`,
/// `date`, `content-type`, `content-length` and `last-modified` to the table anew each time,
/// Huffman-coded, and decoding them was most of the observer's time under h2load (the decoder
/// must see them: they change its table). Bounded: emptied when full.
#[derive(Default)]
pub struct Strings(HashMap<Box<[u8]>, Box<[u8]>, foldhash::fast::RandomState>);

impl std::fmt::Debug for Strings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Strings({})", self.0.len())
    }
}

/// Strings kept at most, and the longest coded string kept (a value that changes on every
/// message, an id or a token, is longer and not looked up).
const MAX_STRINGS: usize = 4096;
const MAX_CODED: usize = 96;

impl Strings {
    /// Hands `f` the plain bytes of the HPACK string at `at` in `b` (its length's prefix and
    /// its bytes, which end at `end`): a plain string's own, a Huffman-coded one's decoded
    /// (looked up, else decoded with `httlib-huffman` and kept); `None` for a coded string
    /// longer than [`MAX_CODED`] or one that does not decode (the decoder finds the same
    /// fault).
    fn with_plain<R>(
        &mut self,
        b: &[u8],
        at: usize,
        end: usize,
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> R {
        let Some((len, start)) = integer(b, at, 7) else {
            return f(None);
        };
        let bytes = &b[start..end];
        if b[at] & 0x80 == 0 {
            return f(Some(bytes));
        }
        if len > MAX_CODED {
            return f(None);
        }
        if let Some(plain) = self.0.get(bytes) {
            return f(Some(plain));
        }
        let mut plain = Vec::with_capacity(bytes.len() * 8 / 5);
        if httlib_huffman::decode(bytes, &mut plain, httlib_huffman::DecoderSpeed::FiveBits)
            .is_err()
        {
            return f(None);
        }
        let r = f(Some(&plain));
        if self.0.len() >= MAX_STRINGS {
            self.0.clear();
        }
        self.0.insert(bytes.into(), plain.into());
        r
    }

    /// Appends the HPACK string at `at` in `b` (ending at `end`) to `out` as a plain string,
    /// or as it is where [`Strings::with_plain`] has no plain bytes for it.
    fn put(&mut self, b: &[u8], at: usize, end: usize, out: &mut Vec<u8>) {
        self.with_plain(b, at, end, |p| match p {
            Some(p) => put_plain(p, out),
            None => out.extend_from_slice(&b[at..end]),
        })
    }

    /// Whether the HPACK string at `at` in `b` (ending at `end`), a literal's new name, may
    /// be one the tracker reads ([`READ_NAMES`]): a name without plain bytes here is kept
    /// for the decoder.
    fn read(&mut self, b: &[u8], at: usize, end: usize) -> bool {
        self.with_plain(b, at, end, |p| p.is_none_or(|p| READ_NAMES.contains(&p)))
    }
}

/// A plain HPACK string: its length (7-bit prefix, the Huffman bit clear), then its bytes.
fn put_plain(plain: &[u8], out: &mut Vec<u8>) {
    let mut n = plain.len();
    if n < 0x7f {
        out.push(n as u8);
    } else {
        out.push(0x7f);
        n -= 0x7f;
        while n >= 0x80 {
            out.push((n & 0x7f) as u8 | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(plain);
}

/// A header block without the fields that neither change the decoder's table nor carry a
/// name the tracker reads: literals without indexing (or never indexed) whose name is a
/// static-table entry it does not read (`date`, `server`, `content-length`, `etag`, ... as
/// servers send them on every response), or a new name it does not read (nginx's `etag` and
/// `accept-ranges`). The strings of the fields kept are plain: their Huffman codes decoded
/// through `strings`. Everything else stays, in order, for the decoder. `None`: a block this
/// walk cannot follow (an integer or a string cut short), which is not handed to the decoder
/// at all (`httlib-hpack` indexes past the end of such input and panics).
pub fn pruned(block: &[u8], strings: &mut Strings) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len() * 3 / 2);
    let mut at = 0;
    while at < block.len() {
        let b = block[at];
        let (prefix, droppable) = match b {
            0x80.. => (7, false),
            0x40.. => (6, false),
            0x20.. => (5, false),
            _ => (4, true),
        };
        let (index, end) = integer(block, at, prefix)?;
        let literal = prefix == 6 || prefix == 4;
        if !literal {
            out.extend_from_slice(&block[at..end]);
            at = end;
            continue;
        }
        let name = (index == 0).then_some(end);
        let value = match name {
            Some(n) => string_end(block, n)?,
            None => end,
        };
        let last = string_end(block, value)?;
        // A name from the static table (1-61) the tracker does not read, or a new one; a
        // dynamic one (62 on) may be any name.
        let unread = match name {
            Some(n) => !strings.read(block, n, value),
            None => (1..=61).contains(&index) && !read_name(index),
        };
        if !(droppable && unread) {
            out.extend_from_slice(&block[at..end]);
            if let Some(n) = name {
                strings.put(block, n, value, &mut out);
            }
            strings.put(block, value, last, &mut out);
        }
        at = last;
    }
    Some(out)
}

/// An HPACK integer with an `n`-bit prefix at `at`: its value and where it ends.
fn integer(b: &[u8], at: usize, n: u32) -> Option<(usize, usize)> {
    let mask = (1usize << n) - 1;
    let mut v = usize::from(*b.get(at)?) & mask;
    let mut i = at + 1;
    if v < mask {
        return Some((v, i));
    }
    let mut shift = 0;
    loop {
        let x = *b.get(i)?;
        i += 1;
        v = v.checked_add(usize::from(x & 0x7f).checked_shl(shift)?)?;
        if x & 0x80 == 0 {
            return Some((v, i));
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

/// Where an HPACK string literal starting at `at` ends.
fn string_end(b: &[u8], at: usize) -> Option<usize> {
    let (len, start) = integer(b, at, 7)?;
    let end = start.checked_add(len)?;
    (end <= b.len()).then_some(end)
}

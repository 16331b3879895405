//! The DNS message header and question (RFC 1035 §4.1), all the observer reads of a message.
//! Pure functions over byte slices, shared with the fuzz target.

/// Bytes of the fixed header.
pub const HEADER: usize = 12;
/// Longest name (RFC 1035 §2.3.4: 255 bytes on the wire).
const MAX_NAME: usize = 255;
/// Compression pointers followed in one name at most.
const MAX_JUMPS: usize = 16;

/// What a message says that the observer uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    /// QR: a response (else a query).
    pub response: bool,
    pub opcode: u8,
    pub rcode: u8,
    /// The first question, where there is one (a response to a malformed query may have none).
    pub question: Option<Question>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Lower case, labels joined by `.`, no trailing dot (`.` for the root); a byte that is no
    /// letter, digit, `-`, `_` or `*` is `?`.
    pub name: String,
    pub qtype: u16,
}

/// Why bytes are no DNS message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Shorter than a header.
    Short,
    /// A question that runs past the end, a label longer than 63, a name longer than 255, a
    /// compression loop.
    BadQuestion,
}

/// Parses a message's header and first question.
pub fn parse(b: &[u8]) -> Result<Message, Invalid> {
    if b.len() < HEADER {
        return Err(Invalid::Short);
    }
    let id = u16::from_be_bytes([b[0], b[1]]);
    let qdcount = u16::from_be_bytes([b[4], b[5]]);
    let question = if qdcount == 0 {
        None
    } else {
        let (name, end) = name(b, HEADER)?;
        let t = b.get(end..end + 4).ok_or(Invalid::BadQuestion)?;
        Some(Question {
            name,
            qtype: u16::from_be_bytes([t[0], t[1]]),
        })
    };
    Ok(Message {
        id,
        response: b[2] & 0x80 != 0,
        opcode: (b[2] >> 3) & 0x0f,
        rcode: b[3] & 0x0f,
        question,
    })
}

/// The name at `at`, and where the bytes after it start.
fn name(b: &[u8], at: usize) -> Result<(String, usize), Invalid> {
    let mut out = String::new();
    let mut pos = at;
    let mut end = None;
    let mut jumps = 0;
    let mut wire = 0usize;
    loop {
        let len = *b.get(pos).ok_or(Invalid::BadQuestion)? as usize;
        match len & 0xc0 {
            0x00 => {}
            0xc0 => {
                let lo = *b.get(pos + 1).ok_or(Invalid::BadQuestion)? as usize;
                let target = ((len & 0x3f) << 8) | lo;
                jumps += 1;
                // Only backwards: a pointer forward or to itself could loop.
                if jumps > MAX_JUMPS || target >= pos {
                    return Err(Invalid::BadQuestion);
                }
                end.get_or_insert(pos + 2);
                pos = target;
                continue;
            }
            _ => return Err(Invalid::BadQuestion),
        }
        if len == 0 {
            let end = end.unwrap_or(pos + 1);
            if out.is_empty() {
                out.push('.');
            }
            return Ok((out, end));
        }
        let label = b.get(pos + 1..pos + 1 + len).ok_or(Invalid::BadQuestion)?;
        wire += len + 1;
        if wire > MAX_NAME {
            return Err(Invalid::BadQuestion);
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.extend(label.iter().map(|&c| match c.to_ascii_lowercase() {
            c @ (b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'*') => c as char,
            _ => '?',
        }));
        pos += 1 + len;
    }
}

/// The name of a query type (`dns.question.type`), `_OTHER` for one not listed.
pub fn qtype_name(t: u16) -> &'static str {
    match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        13 => "HINFO",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        43 => "DS",
        46 => "RRSIG",
        48 => "DNSKEY",
        64 => "SVCB",
        65 => "HTTPS",
        99 => "SPF",
        252 => "AXFR",
        255 => "ANY",
        257 => "CAA",
        _ => "_OTHER",
    }
}

/// The name of a response code (RFC 1035, 2136), `_OTHER` for one not listed.
pub fn rcode_name(r: u8) -> &'static str {
    match r {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        _ => "_OTHER",
    }
}

/// A message's bytes kept over TCP: its header and question fit (12 + 255 + 4).
pub const KEEP: usize = 512;

/// A message framed over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framed<'a> {
    /// Its first bytes (all of it up to [`KEEP`]).
    Message(&'a [u8]),
    /// A message whose first bytes were partly not seen (a gap).
    Holed,
}

/// DNS over TCP (RFC 1035 §4.2.2): each message follows its length in two bytes, big-endian.
/// Fed a direction's bytes in order and the counts of bytes never seen, it hands out each
/// message's first bytes and skips the rest by its length. A gap that hides a length loses the
/// framing until [`Framer::resync`] (a call that starts anew).
#[derive(Debug, Default)]
pub struct Framer {
    /// The current message's length prefix and first bytes (up to `2 + KEEP`).
    head: Vec<u8>,
    /// Bytes of the current message still to come once its prefix is complete.
    left: usize,
    /// A gap fell in the current message's kept bytes.
    holed: bool,
    lost: bool,
}

impl Framer {
    /// Bytes of the direction, in order.
    pub fn feed(&mut self, mut b: &[u8], out: &mut impl FnMut(Framed<'_>)) {
        if self.lost {
            return;
        }
        while !b.is_empty() {
            if self.head.len() < 2 {
                let take = (2 - self.head.len()).min(b.len());
                self.head.extend_from_slice(&b[..take]);
                b = &b[take..];
                if self.head.len() == 2 {
                    self.left = usize::from(u16::from_be_bytes([self.head[0], self.head[1]]));
                    if self.left == 0 {
                        self.finish(out);
                    }
                }
                continue;
            }
            let take = self.left.min(b.len());
            let keep = take.min((2 + KEEP).saturating_sub(self.head.len()));
            self.head.extend_from_slice(&b[..keep]);
            self.left -= take;
            b = &b[take..];
            if self.left == 0 {
                self.finish(out);
            }
        }
    }

    /// `n` bytes of the direction that will never be seen. False when they hid a length: the
    /// framing is lost with the message in progress, and nothing more is framed until
    /// [`Framer::resync`].
    pub fn gap(&mut self, n: u64, out: &mut impl FnMut(Framed<'_>)) -> bool {
        if self.lost || n == 0 {
            return !self.lost;
        }
        if self.head.len() < 2 || n > self.left as u64 {
            // The message in progress goes with the framing.
            self.lost = true;
            return false;
        }
        let kept = self.head.len() - 2;
        if kept < KEEP && self.left > 0 {
            // The gap is where the kept bytes would go on.
            self.holed = true;
        }
        self.left -= n as usize;
        if self.left == 0 {
            self.finish(out);
        }
        true
    }

    /// A call that starts anew: after lost framing, its first bytes are taken for a length.
    pub fn resync(&mut self) {
        if self.lost {
            *self = Framer::default();
        }
    }

    pub fn lost(&self) -> bool {
        self.lost
    }

    fn finish(&mut self, out: &mut impl FnMut(Framed<'_>)) {
        if self.holed {
            out(Framed::Holed);
        } else {
            out(Framed::Message(&self.head[2..]));
        }
        self.head.clear();
        self.holed = false;
    }
}

#[cfg(test)]
/// A query for `name` of type `qtype` with id `id`, as a resolver sends it.
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut b = vec![
        (id >> 8) as u8,
        id as u8,
        0x01,
        0x00,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    for l in name.split('.').filter(|l| !l.is_empty()) {
        b.push(l.len() as u8);
        b.extend_from_slice(l.as_bytes());
    }
    b.push(0);
    b.extend_from_slice(&qtype.to_be_bytes());
    b.extend_from_slice(&[0, 1]);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_and_its_response() {
        let q = query(0xbeef, "Api.Example.COM", 28);
        let m = parse(&q).unwrap();
        assert_eq!(
            m,
            Message {
                id: 0xbeef,
                response: false,
                opcode: 0,
                rcode: 0,
                question: Some(Question {
                    name: "api.example.com".into(),
                    qtype: 28
                }),
            }
        );
        let mut r = q.clone();
        r[2] |= 0x80;
        r[3] = 0x83;
        // An answer with a pointer to the question's name.
        r.extend_from_slice(&[0xc0, 12, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16]);
        r.extend_from_slice(&[0; 16]);
        let m = parse(&r).unwrap();
        assert!(m.response);
        assert_eq!(rcode_name(m.rcode), "NXDOMAIN");
        assert_eq!(qtype_name(m.question.unwrap().qtype), "AAAA");
    }

    #[test]
    fn compression_in_the_question_and_odd_bytes() {
        // A question whose name points at itself: refused, never a loop.
        let mut b = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
        assert_eq!(parse(&b), Err(Invalid::BadQuestion));
        b.truncate(12);
        b.extend_from_slice(&[3, b'a', b' ', b'B', 0, 0, 1, 0, 1]);
        assert_eq!(parse(&b).unwrap().question.unwrap().name, "a?b");
        assert_eq!(parse(&b[..16]), Err(Invalid::BadQuestion));
        assert_eq!(parse(&[0; 5]), Err(Invalid::Short));
        let root = [0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1];
        assert_eq!(parse(&root).unwrap().question.unwrap().name, ".");
    }

    #[test]
    fn a_name_too_long_is_refused() {
        let long = vec!["a".repeat(63); 5].join(".");
        assert_eq!(parse(&query(1, &long, 1)), Err(Invalid::BadQuestion));
        let ok = vec!["a".repeat(63); 3].join(".");
        assert!(parse(&query(1, &ok, 1)).is_ok());
    }

    /// The messages a framer hands out, as bytes (`None`: holed).
    fn framed(f: &mut Framer, pieces: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
        let mut v = Vec::new();
        for p in pieces {
            f.feed(p, &mut |m| {
                v.push(match m {
                    Framed::Message(b) => Some(b.to_vec()),
                    Framed::Holed => None,
                })
            });
        }
        v
    }

    fn prefixed(m: &[u8]) -> Vec<u8> {
        let mut b = (m.len() as u16).to_be_bytes().to_vec();
        b.extend_from_slice(m);
        b
    }

    #[test]
    fn tcp_messages_split_anywhere_or_pipelined_frame_the_same() {
        let (a, b) = (query(1, "a.example", 1), query(2, "b.example", 28));
        let mut all = prefixed(&a);
        all.extend(prefixed(&b));
        let want = vec![Some(a.clone()), Some(b.clone())];
        assert_eq!(framed(&mut Framer::default(), &[&all]), want);
        // A server reading the length a byte at a time, then the message.
        for cut in 0..all.len() {
            let (x, y) = all.split_at(cut);
            assert_eq!(framed(&mut Framer::default(), &[x, y]), want, "cut {cut}");
        }
        let bytes: Vec<&[u8]> = all.chunks(1).collect();
        assert_eq!(framed(&mut Framer::default(), &bytes), want);
    }

    #[test]
    fn a_long_message_keeps_its_head_and_gaps_past_it_keep_the_framing() {
        let mut big = query(3, "big.example", 16);
        big.resize(3000, 7);
        let next = query(4, "n.example", 1);
        let mut f = Framer::default();
        let p = prefixed(&big);
        let mut seen = Vec::new();
        f.feed(&p[..1000], &mut |m| seen.push(m == Framed::Holed));
        assert!(f.gap(2002, &mut |m| seen.push(m == Framed::Holed)));
        assert_eq!(seen, [false]);
        assert_eq!(framed(&mut f, &[&prefixed(&next)]), [Some(next.clone())]);
        // A gap inside the kept bytes: the message is holed, the next one whole.
        let mut f = Framer::default();
        let mut seen = Vec::new();
        f.feed(&p[..10], &mut |m| seen.push(m == Framed::Holed));
        assert!(f.gap(2992, &mut |m| seen.push(m == Framed::Holed)));
        assert_eq!(seen, [true]);
        assert_eq!(framed(&mut f, &[&prefixed(&next)]), [Some(next.clone())]);
        // A gap over the next length: lost until a call starts anew.
        assert!(!f.gap(p.len() as u64 + 1, &mut |_| panic!(
            "nothing was in progress"
        )));
        assert!(f.lost());
        assert_eq!(framed(&mut f, &[&prefixed(&next)]), []);
        f.resync();
        assert_eq!(framed(&mut f, &[&prefixed(&next)]), [Some(next)]);
        // An empty message is handed out empty (no DNS message: the tracker counts it).
        assert_eq!(framed(&mut Framer::default(), &[&[0, 0]]), [Some(vec![])]);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for n in 0..5000usize {
            let mut b = query(n as u16, "x.y", 1);
            for _ in 0..(x % 8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % b.len();
                b[i] = (x >> 32) as u8;
            }
            b.truncate((x as usize >> 8) % (b.len() + 1));
            let _ = parse(&b);
        }
    }
}

//! RESP2 and RESP3, parsed incrementally: bytes are fed as the calls of one direction bring
//! them, a message may span calls and one call may hold many messages. Nothing is buffered
//! beyond a header line's first bytes: bulk payloads are skipped by their length (also when
//! the kernel did not send them), aggregates are followed by a stack of element counts. Pure
//! functions over byte slices, shared with the fuzz target.

/// Bytes kept of a header line (type byte excluded): enough for any length and for an error's
/// prefix or an inline command's name.
const LINE_KEEP: usize = 48;
/// Bytes kept of a message's first string (a command's name, a push's kind).
const FIRST_KEEP: usize = 24;
/// Deepest nesting followed; deeper is treated as hostile.
const MAX_DEPTH: usize = 32;
/// Largest element count or bulk length accepted (Redis's own limits are 2^31 elements and
/// 512 MB per bulk string by default).
const MAX_LEN: i64 = 1 << 32;

/// A complete top-level message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A command: its first string (the command's name as sent, at most [`FIRST_KEEP`] bytes).
    /// An inline command (`PING\r\n`) too.
    Command(Vec<u8>),
    /// A reply: an error's first word (`ERR`, `WRONGTYPE`), or `None`; for an array its first
    /// string (a pub/sub message is an array starting with `message`).
    Reply {
        error: Option<Vec<u8>>,
        first: Option<Vec<u8>>,
    },
    /// A RESP3 push (`>`): out of band, with its kind (`message`, `invalidate`, ...); never a
    /// reply but for the confirmation of a (un)subscription, which RESP3 sends as a push.
    Push { kind: Option<Vec<u8>> },
}

/// Why a direction's framing was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// Bytes that are not RESP (a bad type byte, a length that is not a number).
    Invalid,
    /// Bytes the kernel did not send where a header was due.
    Gap,
    /// Nesting deeper than followed.
    TooDeep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// At a value's type byte.
    #[default]
    Type,
    /// In a header line (after its type byte) until `\n`.
    Line,
    /// In a bulk payload and its `\r\n`: `skip` bytes left.
    Bulk,
}

/// One direction of a connection.
#[derive(Debug, Clone, Default)]
pub struct Stream {
    /// The direction of commands (else of replies).
    requests: bool,
    state: State,
    /// The current line's type byte (0 for an inline command).
    ty: u8,
    line: Vec<u8>,
    skip: u64,
    /// Whether the bulk being skipped is the message's first string (kept in `first`).
    keep: bool,
    /// Elements left per open aggregate, outermost first.
    stack: Vec<i64>,
    /// The current top-level message: its type, first string, error prefix; whether an
    /// attribute (`|`) is being read before the value it annotates.
    top: u8,
    first: Option<Vec<u8>>,
    error: Option<Vec<u8>>,
    broken: Option<Broken>,
}

impl Stream {
    /// The direction of commands (client to server).
    pub fn requests() -> Self {
        Stream {
            requests: true,
            ..Default::default()
        }
    }

    /// The direction of replies (server to client).
    pub fn replies() -> Self {
        Stream::default()
    }

    /// Whether framing was lost (then every later byte is ignored until [`Stream::reset`]).
    pub fn broken(&self) -> Option<Broken> {
        self.broken
    }

    /// Whether the stream stands between two messages.
    pub fn at_boundary(&self) -> bool {
        self.broken.is_none() && self.state == State::Type && self.stack.is_empty()
    }

    /// Starts over at a message boundary.
    pub fn reset(&mut self) {
        *self = Stream {
            requests: self.requests,
            ..Default::default()
        };
    }

    /// Feeds bytes of the direction; complete messages go to `out`, in order.
    pub fn feed(&mut self, mut b: &[u8], out: &mut impl FnMut(Message)) {
        while !b.is_empty() && self.broken.is_none() {
            match self.state {
                State::Type => {
                    let t = b[0];
                    if self.requests && self.stack.is_empty() && !is_type(t) {
                        // An inline command (`PING\r\n`): its line is the message.
                        self.ty = 0;
                    } else {
                        self.ty = t;
                        b = &b[1..];
                    }
                    self.line.clear();
                    self.state = State::Line;
                }
                State::Line => match b.iter().position(|&c| c == b'\n') {
                    Some(i) => {
                        self.keep_line(&b[..i]);
                        b = &b[i + 1..];
                        self.end_line(out);
                    }
                    None => {
                        self.keep_line(b);
                        b = &[];
                    }
                },
                State::Bulk => {
                    let n = (b.len() as u64).min(self.skip) as usize;
                    if self.keep {
                        // The payload, not its closing `\r\n`.
                        let payload = self.skip.saturating_sub(2).min(n as u64) as usize;
                        let first = self.first.get_or_insert_with(Vec::new);
                        let room = FIRST_KEEP.saturating_sub(first.len());
                        first.extend_from_slice(&b[..payload.min(room)]);
                    }
                    b = &b[n..];
                    self.skip -= n as u64;
                    if self.skip == 0 {
                        self.keep = false;
                        self.state = State::Type;
                        self.value_done(out);
                    }
                }
            }
        }
    }

    /// `n` bytes of the direction that the kernel did not send: skipped inside a payload,
    /// framing lost anywhere else.
    pub fn gap(&mut self, n: u64, out: &mut impl FnMut(Message)) {
        if n == 0 || self.broken.is_some() {
            return;
        }
        if self.state == State::Bulk && n <= self.skip {
            if self.keep && self.first.is_none() {
                self.first = Some(Vec::new());
            }
            self.skip -= n;
            if self.skip == 0 {
                self.keep = false;
                self.state = State::Type;
                self.value_done(out);
            }
            return;
        }
        self.broken = Some(Broken::Gap);
    }

    fn keep_line(&mut self, b: &[u8]) {
        let room = LINE_KEEP.saturating_sub(self.line.len());
        self.line.extend_from_slice(&b[..b.len().min(room)]);
    }

    fn end_line(&mut self, out: &mut impl FnMut(Message)) {
        let line = std::mem::take(&mut self.line);
        let text = line.strip_suffix(b"\r").unwrap_or(&line);
        let top_level = self.stack.is_empty();
        if top_level {
            self.top = self.ty;
            self.first = None;
            self.error = None;
        }
        self.state = State::Type;
        match self.ty {
            0 => {
                // Inline command: its first word.
                let word = text.split(|&c| c == b' ').find(|w| !w.is_empty());
                // An empty line is nothing (Redis ignores it too).
                if let Some(w) = word {
                    out(Message::Command(w[..w.len().min(FIRST_KEEP)].to_vec()));
                }
            }
            b'+' | b'-' => {
                if self.ty == b'-' && top_level {
                    self.error = Some(prefix(text));
                }
                if self.depth_one() && self.first.is_none() {
                    self.first = Some(text[..text.len().min(FIRST_KEEP)].to_vec());
                }
                self.value_done(out);
            }
            b':' | b'_' | b',' | b'#' | b'(' => self.value_done(out),
            b'$' | b'!' | b'=' => match number(text) {
                Some(-1) if self.ty == b'$' => self.value_done(out),
                Some(n) if (0..MAX_LEN).contains(&n) => {
                    self.skip = n as u64 + 2;
                    self.keep = self.depth_one() && self.first.is_none();
                    if self.ty == b'!' && top_level {
                        // A blob error: its first word is the prefix, kept like a first string.
                        self.keep = true;
                    }
                    self.state = State::Bulk;
                }
                _ => self.broken = Some(Broken::Invalid),
            },
            b'*' | b'~' | b'>' | b'%' | b'|' => match number(text) {
                Some(-1) if self.ty == b'*' => self.value_done(out),
                Some(0) => self.value_done(out),
                Some(n) if (1..MAX_LEN).contains(&n) => {
                    if self.stack.len() >= MAX_DEPTH {
                        self.broken = Some(Broken::TooDeep);
                        return;
                    }
                    let n = if matches!(self.ty, b'%' | b'|') {
                        2 * n
                    } else {
                        n
                    };
                    self.stack.push(n);
                }
                _ => self.broken = Some(Broken::Invalid),
            },
            _ => self.broken = Some(Broken::Invalid),
        }
    }

    /// Whether the value being read is an element of the top-level aggregate (or the top-level
    /// value itself): where a command's name or a push's kind is.
    fn depth_one(&self) -> bool {
        self.stack.len() <= 1
    }

    /// A value is complete: close the aggregates it completes; a top-level one is a message.
    fn value_done(&mut self, out: &mut impl FnMut(Message)) {
        while let Some(left) = self.stack.last_mut() {
            *left -= 1;
            if *left > 0 {
                return;
            }
            self.stack.pop();
        }
        let top = std::mem::take(&mut self.top);
        if self.requests {
            // A command is an array of strings (an empty one is skipped, as Redis does).
            match (top, self.first.take()) {
                (b'*', Some(name)) => out(Message::Command(name)),
                (b'*', None) => {}
                _ => self.broken = Some(Broken::Invalid),
            }
            return;
        }
        match top {
            // An attribute annotates the value after it, which is the message.
            b'|' => {}
            b'>' => out(Message::Push {
                kind: self.first.take(),
            }),
            b'!' => {
                let error = self.first.take().map(|f| prefix(&f));
                out(Message::Reply { error, first: None })
            }
            _ => {
                let first = self.first.take();
                let error = self.error.take();
                out(Message::Reply { error, first })
            }
        }
    }
}

/// A type byte of RESP2 or RESP3.
fn is_type(t: u8) -> bool {
    matches!(
        t,
        b'+' | b'-'
            | b':'
            | b'$'
            | b'*'
            | b'_'
            | b','
            | b'#'
            | b'!'
            | b'='
            | b'('
            | b'%'
            | b'~'
            | b'>'
            | b'|'
    )
}

/// A length or count: optional `-`, decimal digits.
fn number(t: &[u8]) -> Option<i64> {
    let (neg, digits) = match t.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, t),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = digits
        .iter()
        .fold(0i64, |v, d| v * 10 + i64::from(d - b'0'));
    Some(if neg { -v } else { v })
}

/// An error's first word (`ERR`, `WRONGTYPE`, `NOSCRIPT`), at most 32 bytes.
fn prefix(t: &[u8]) -> Vec<u8> {
    let w = t.split(|&c| c == b' ').next().unwrap_or_default();
    w[..w.len().min(32)].to_vec()
}

/// The messages of `b` fed at once, as commands or as replies (tests and the fuzz target).
pub fn parse_all(b: &[u8], requests: bool) -> (Vec<Message>, Option<Broken>) {
    let mut s = if requests {
        Stream::requests()
    } else {
        Stream::replies()
    };
    let mut out = Vec::new();
    s.feed(b, &mut |m| out.push(m));
    (out, s.broken())
}

/// A command as clients write it: an array of bulk strings.
#[cfg(test)]
pub fn command(args: &[&str]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(name: &str) -> Message {
        Message::Command(name.as_bytes().to_vec())
    }

    fn ok(first: Option<&str>) -> Message {
        Message::Reply {
            error: None,
            first: first.map(|f| f.as_bytes().to_vec()),
        }
    }

    #[test]
    fn commands_pipelined_in_one_call() {
        let mut b = Vec::new();
        for _ in 0..100 {
            b.extend(command(&["SET", "key:1", "value"]));
        }
        b.extend(command(&["GET", "key:1"]));
        let (m, broken) = parse_all(&b, true);
        assert_eq!(broken, None);
        assert_eq!(m.len(), 101);
        assert!(m[..100]
            .iter()
            .all(|x| *x == Message::Command(b"SET".to_vec())));
        assert_eq!(m[100], Message::Command(b"GET".to_vec()));
    }

    #[test]
    fn messages_split_at_every_byte() {
        let mut b = command(&["LPUSH", "list", "a", "b"]);
        b.extend(command(&["PING"]));
        let want = parse_all(&b, true).0;
        assert_eq!(want, vec![cmd("LPUSH"), cmd("PING")]);
        for cut in 0..b.len() {
            let mut s = Stream::requests();
            let mut got = Vec::new();
            s.feed(&b[..cut], &mut |m| got.push(m));
            s.feed(&b[cut..], &mut |m| got.push(m));
            assert_eq!(got, want, "cut at {cut}");
            assert!(s.at_boundary());
        }
    }

    #[test]
    fn replies_of_every_type() {
        let b = b"+OK\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*2\r\n$7\r\nmessage\r\n$2\r\nch\r\n*-1\r\n*0\r\n_\r\n,3.14\r\n#t\r\n(12345678901234567890\r\n%2\r\n+a\r\n:1\r\n+b\r\n:2\r\n~1\r\n+x\r\n=8\r\ntxt:abcd\r\n!8\r\nERR blob\r\n>3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n|1\r\n+ttl\r\n:3\r\n+after-attribute\r\n";
        let (m, broken) = parse_all(b, false);
        assert_eq!(broken, None, "{m:?}");
        let want = vec![
            ok(Some("OK")),
            Message::Reply {
                error: Some(b"WRONGTYPE".to_vec()),
                first: Some(b"WRONGTYPE Operation against a key hol".to_vec()[..24].to_vec()),
            },
            ok(None),
            ok(Some("hello")),
            ok(None),
            ok(Some("message")),
            ok(None),
            ok(None),
            ok(None),
            ok(None),
            ok(None),
            ok(None),
            ok(Some("a")),
            ok(Some("x")),
            ok(Some("txt:abcd")),
            Message::Reply {
                error: Some(b"ERR".to_vec()),
                first: None,
            },
            Message::Push {
                kind: Some(b"message".to_vec()),
            },
            ok(Some("after-attribute")),
        ];
        assert_eq!(m, want);
        // Split anywhere, the same.
        for cut in 0..b.len() {
            let mut s = Stream::replies();
            let mut got = Vec::new();
            s.feed(&b[..cut], &mut |m| got.push(m));
            s.feed(&b[cut..], &mut |m| got.push(m));
            assert_eq!(got, want, "cut at {cut}");
        }
    }

    #[test]
    fn nested_arrays_end_once() {
        // EXEC's reply: an array of replies, one of them an array.
        let b = b"*3\r\n+OK\r\n*2\r\n:1\r\n:2\r\n-ERR inner\r\n+PONG\r\n";
        let (m, broken) = parse_all(b, false);
        assert_eq!(broken, None);
        assert_eq!(m, vec![ok(Some("OK")), ok(Some("PONG"))]);
    }

    #[test]
    fn inline_commands() {
        let (m, broken) = parse_all(b"PING\r\n\r\nset a b\r\n*0\r\n", true);
        assert_eq!(broken, None);
        assert_eq!(m, vec![cmd("PING"), cmd("set")]);
    }

    #[test]
    fn payload_beyond_what_the_kernel_sent_is_skipped() {
        let value = "v".repeat(10_000);
        let b = command(&["SET", "k", &value]);
        let mut s = Stream::requests();
        let mut got = Vec::new();
        s.feed(&b[..4095], &mut |m| got.push(m));
        s.gap((b.len() - 4095 - 10) as u64, &mut |m| got.push(m));
        s.feed(&b[b.len() - 10..], &mut |m| got.push(m));
        assert_eq!(got, vec![cmd("SET")]);
        assert!(s.at_boundary());
        // A message ending in the gap still ends.
        let mut s = Stream::replies();
        let mut got = Vec::new();
        s.feed(b"$10000\r\nvv", &mut |m| got.push(m));
        s.gap(10000, &mut |m| got.push(m));
        assert_eq!(got, vec![ok(Some("vv"))]);
        assert!(s.at_boundary());
        // A header in the gap loses the framing.
        let mut s = Stream::requests();
        s.feed(&b"*2\r\n$3\r\nGET\r\n"[..], &mut |_| {});
        s.gap(20, &mut |_| {});
        assert_eq!(s.broken(), Some(Broken::Gap));
    }

    /// The fuzz target's seeds (first byte: direction and split point), split everywhere.
    #[test]
    fn the_fuzz_seeds_parse_the_same_however_split() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/redis-seeds");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let b = std::fs::read(e.unwrap().path()).unwrap();
            let (&ctl, data) = b.split_first().unwrap();
            let requests = ctl & 1 == 1;
            let whole = parse_all(data, requests);
            for cut in 0..data.len() {
                let mut s = if requests {
                    Stream::requests()
                } else {
                    Stream::replies()
                };
                let mut got = Vec::new();
                s.feed(&data[..cut], &mut |m| got.push(m));
                s.feed(&data[cut..], &mut |m| got.push(m));
                assert_eq!((got, s.broken()), whole);
            }
            n += 1;
        }
        assert!(n >= 6, "seeds found: {n}");
    }

    #[test]
    fn hostile_bytes_break_the_framing_and_nothing_else() {
        for b in [
            &b"*x\r\n"[..],
            b"$abc\r\n",
            b"*99999999999999999999\r\n",
            b"$-5\r\n",
            b"*2\r\n?\r\n",
        ] {
            assert_eq!(parse_all(b, true).1, Some(Broken::Invalid), "{b:?}");
            assert_eq!(parse_all(b, false).1, Some(Broken::Invalid), "{b:?}");
        }
        assert_eq!(parse_all(b"+OK\r\n", true).1, Some(Broken::Invalid));
        assert_eq!(parse_all(b"PING\r\n", false).1, Some(Broken::Invalid));
        let deep = "*1\r\n".repeat(100);
        assert_eq!(parse_all(deep.as_bytes(), false).1, Some(Broken::TooDeep));
    }
}

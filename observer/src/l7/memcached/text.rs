//! The Memcached text protocol, framed incrementally: bytes are fed as the calls of one
//! direction bring them. Both directions are lines ending in `\r\n`; a storage command and a
//! value in a reply are followed by a data block whose length the line gives, which is skipped
//! (also where the kernel did not send it). Pure functions over byte slices, shared with the
//! fuzz target.

/// Longest line kept (a key is at most 250 bytes; a `get` of many keys may be longer: only its
/// first bytes matter, the rest is skipped up to [`MAX_LINE`]).
const KEEP: usize = 512;
/// Longest line accepted before the framing is given up.
pub const MAX_LINE: usize = 64 * 1024;
/// Largest data block accepted (memcached's item size limit is 1 MiB by default, at most 1 GiB).
const MAX_DATA: u64 = 1 << 30;

/// Command names: the protocol's own (classic and meta). Anything else is `_OTHER`.
const COMMANDS: &[&str] = &[
    "add",
    "append",
    "cache_memlimit",
    "cas",
    "decr",
    "delete",
    "flush_all",
    "gat",
    "gats",
    "get",
    "gets",
    "incr",
    "lru_crawler",
    "ma",
    "md",
    "me",
    "mg",
    "mn",
    "ms",
    "prepend",
    "quit",
    "replace",
    "set",
    "shutdown",
    "slabs",
    "stats",
    "touch",
    "verbosity",
    "version",
    "watch",
];

/// What a request line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The command's name from [`COMMANDS`], else `_OTHER`.
    pub name: &'static str,
    /// Keys it names (a `get` may name many).
    pub keys: u32,
    /// No reply will come (`noreply`; a meta command's `q` flag replies only on some outcomes).
    pub noreply: bool,
    pub quiet: bool,
}

/// What a reply is: its first word (`STORED`, `END`, `VA`, `MN`, a number, ...), whether it
/// reports an error (`ERROR`, `CLIENT_ERROR`, `SERVER_ERROR`), and how many values it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub word: &'static str,
    pub error: Option<&'static str>,
    pub values: u32,
}

/// Why a direction's framing was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// A line longer than [`MAX_LINE`], or a data length that cannot be.
    Invalid,
    /// A line in bytes the kernel did not send.
    Gap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Line,
    /// A data block and its `\r\n`: `left` bytes to skip; `then_ends` says the reply ends after
    /// it (a meta `VA`).
    Data { left: u64, then_ends: bool },
}

/// What comes out of a direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Command(Command),
    Reply(Reply),
}

/// One direction of a connection.
#[derive(Debug, Clone, Default)]
pub struct Framer {
    requests: bool,
    state: State,
    line: Vec<u8>,
    line_len: usize,
    /// Values of the reply being read (`VALUE` lines before its `END`).
    values: u32,
    broken: Option<Broken>,
}

impl Framer {
    pub fn requests() -> Self {
        Framer {
            requests: true,
            ..Default::default()
        }
    }

    pub fn replies() -> Self {
        Framer::default()
    }

    pub fn broken(&self) -> Option<Broken> {
        self.broken
    }

    /// Starts over at a line's start (after a loss of framing).
    pub fn reset(&mut self) {
        *self = Framer {
            requests: self.requests,
            ..Default::default()
        };
    }

    /// Feeds bytes of the direction; complete commands or replies go to `out`, in order.
    pub fn feed(&mut self, mut b: &[u8], out: &mut impl FnMut(Frame)) {
        while !b.is_empty() && self.broken.is_none() {
            match self.state {
                State::Data { left, then_ends } => {
                    let n = (b.len() as u64).min(left);
                    b = &b[n as usize..];
                    self.skip(n, then_ends, out);
                }
                State::Line => match b.iter().position(|&c| c == b'\n') {
                    Some(i) => {
                        self.take(&b[..i]);
                        b = &b[i + 1..];
                        if self.broken.is_none() {
                            self.line_done(out);
                        }
                    }
                    None => {
                        self.take(b);
                        b = &[];
                    }
                },
            }
        }
    }

    /// `n` bytes the kernel did not send: skipped inside a data block, framing lost anywhere
    /// else.
    pub fn gap(&mut self, n: u64, out: &mut impl FnMut(Frame)) {
        if n == 0 || self.broken.is_some() {
            return;
        }
        match self.state {
            State::Data { left, then_ends } if n <= left => self.skip(n, then_ends, out),
            _ => self.broken = Some(Broken::Gap),
        }
    }

    fn skip(&mut self, n: u64, then_ends: bool, out: &mut impl FnMut(Frame)) {
        let State::Data { left, .. } = self.state else {
            return;
        };
        let left = left - n;
        if left > 0 {
            self.state = State::Data { left, then_ends };
            return;
        }
        self.state = State::Line;
        if then_ends {
            let values = std::mem::take(&mut self.values);
            out(Frame::Reply(Reply {
                word: "VA",
                error: None,
                values,
            }));
        }
    }

    fn take(&mut self, b: &[u8]) {
        self.line_len += b.len();
        if self.line_len > MAX_LINE {
            self.broken = Some(Broken::Invalid);
            return;
        }
        let room = KEEP.saturating_sub(self.line.len());
        self.line.extend_from_slice(&b[..b.len().min(room)]);
    }

    fn line_done(&mut self, out: &mut impl FnMut(Frame)) {
        let mut line = std::mem::take(&mut self.line);
        self.line_len = 0;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if self.requests {
            self.command(&line, out);
        } else {
            self.reply(&line, out);
        }
        self.line = line;
        self.line.clear();
    }

    fn data(&mut self, len: Option<u64>, then_ends: bool) -> bool {
        match len {
            Some(n) if n <= MAX_DATA => {
                self.state = State::Data {
                    left: n + 2,
                    then_ends,
                };
                true
            }
            _ => {
                self.broken = Some(Broken::Invalid);
                false
            }
        }
    }

    fn command(&mut self, line: &[u8], out: &mut impl FnMut(Frame)) {
        let words: Vec<&[u8]> = line
            .split(|&c| c == b' ')
            .filter(|w| !w.is_empty())
            .collect();
        let Some(first) = words.first() else {
            // An empty line: memcached answers `ERROR`.
            out(Frame::Command(Command {
                name: "_OTHER",
                keys: 0,
                noreply: false,
                quiet: false,
            }));
            return;
        };
        let name = command_name(first);
        let last_is = |w: &[u8]| words.len() > 1 && words.last() == Some(&w);
        let number =
            |i: usize| -> Option<u64> { std::str::from_utf8(words.get(i)?).ok()?.parse().ok() };
        let mut quiet = false;
        let (keys, noreply) = match name {
            "get" | "gets" => (words.len() as u32 - 1, false),
            "gat" | "gats" => (words.len().saturating_sub(2) as u32, false),
            "set" | "add" | "replace" | "append" | "prepend" | "cas" => {
                if !self.data(number(4), false) {
                    return;
                }
                (1, last_is(b"noreply"))
            }
            "ms" | "mg" | "md" | "ma" => {
                // Meta flags after the key (and, for `ms`, the data length); `q` is quiet.
                let flags_from = if name == "ms" { 3 } else { 2 };
                quiet = words.iter().skip(flags_from).any(|w| w == b"q");
                if name == "ms" && !self.data(number(2), false) {
                    return;
                }
                (1, false)
            }
            "delete" | "incr" | "decr" | "touch" => (1, last_is(b"noreply")),
            "flush_all" | "verbosity" => (0, last_is(b"noreply")),
            "quit" => (0, true),
            _ => (0, false),
        };
        out(Frame::Command(Command {
            name,
            keys,
            noreply,
            quiet,
        }));
    }

    fn reply(&mut self, line: &[u8], out: &mut impl FnMut(Frame)) {
        let mut words = line.split(|&c| c == b' ').filter(|w| !w.is_empty());
        let first = words.next().unwrap_or_default();
        let number =
            |w: Option<&[u8]>| -> Option<u64> { std::str::from_utf8(w?).ok()?.parse().ok() };
        match first {
            // A value of a `get`: its data block, then more values or `END`.
            b"VALUE" => {
                let len = number(words.nth(2));
                self.values += 1;
                self.data(len, false);
            }
            // A line of `stats` or `stats cachedump`: the reply goes on.
            b"STAT" | b"ITEM" => {}
            // A meta get's value: its data block ends the reply.
            b"VA" => {
                let len = number(words.next());
                self.values += 1;
                self.data(len, true);
            }
            _ => {
                let word = reply_word(first);
                let error = match word {
                    "ERROR" | "CLIENT_ERROR" | "SERVER_ERROR" => Some(word),
                    _ => None,
                };
                let values = std::mem::take(&mut self.values);
                out(Frame::Reply(Reply {
                    word,
                    error,
                    values,
                }));
            }
        }
    }
}

/// A command word's name, from the bounded list.
pub fn command_name(w: &[u8]) -> &'static str {
    let Ok(s) = std::str::from_utf8(w) else {
        return "_OTHER";
    };
    COMMANDS
        .binary_search(&s)
        .map(|i| COMMANDS[i])
        .unwrap_or("_OTHER")
}

/// A reply's first word, from the bounded list (a number: `NUMBER`).
fn reply_word(w: &[u8]) -> &'static str {
    const WORDS: &[&str] = &[
        "BUSY",
        "CLIENT_ERROR",
        "DELETED",
        "EN",
        "END",
        "ERROR",
        "EX",
        "EXISTS",
        "HD",
        "ME",
        "MN",
        "NF",
        "NOT_FOUND",
        "NOT_STORED",
        "NS",
        "OK",
        "RESET",
        "SERVER_ERROR",
        "STORED",
        "TOUCHED",
        "VERSION",
    ];
    if !w.is_empty() && w.iter().all(u8::is_ascii_digit) {
        return "NUMBER";
    }
    let Ok(s) = std::str::from_utf8(w) else {
        return "_OTHER";
    };
    WORDS
        .binary_search(&s)
        .map(|i| WORDS[i])
        .unwrap_or("_OTHER")
}

/// Everything of `data` fed at once in one direction, and whether the framing broke (for tests
/// and the fuzz target).
pub fn parse_all(data: &[u8], requests: bool) -> (Vec<Frame>, Option<Broken>) {
    let mut f = if requests {
        Framer::requests()
    } else {
        Framer::replies()
    };
    let mut out = Vec::new();
    f.feed(data, &mut |x| out.push(x));
    (out, f.broken())
}

/// Whether a call's bytes start a command the detector would claim (for a resync).
pub fn starts_command(b: &[u8]) -> bool {
    let end = b
        .iter()
        .position(|&c| c == b' ' || c == b'\r')
        .unwrap_or(b.len());
    end < b.len() && command_name(&b[..end]) != "_OTHER"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(name: &'static str, keys: u32, noreply: bool, quiet: bool) -> Frame {
        Frame::Command(Command {
            name,
            keys,
            noreply,
            quiet,
        })
    }

    fn reply(word: &'static str, values: u32) -> Frame {
        let error = matches!(word, "ERROR" | "CLIENT_ERROR" | "SERVER_ERROR").then_some(word);
        Frame::Reply(Reply {
            word,
            error,
            values,
        })
    }

    #[test]
    fn commands_with_data_blocks_and_flags() {
        let data = b"set k 0 0 5\r\nhel\r\n\r\nget a b c\r\nincr n 1 noreply\r\nms k 2 T0 q\r\nhi\r\nmn\r\nfoo bar\r\n\r\n";
        let (frames, broken) = parse_all(data, true);
        assert_eq!(broken, None);
        assert_eq!(
            frames,
            [
                cmd("set", 1, false, false),
                cmd("get", 3, false, false),
                cmd("incr", 1, true, false),
                cmd("ms", 1, false, true),
                cmd("mn", 0, false, false),
                cmd("_OTHER", 0, false, false),
                cmd("_OTHER", 0, false, false),
            ]
        );
        for cut in 0..data.len() {
            let mut f = Framer::requests();
            let mut out = Vec::new();
            f.feed(&data[..cut], &mut |x| out.push(x));
            f.feed(&data[cut..], &mut |x| out.push(x));
            assert_eq!(out, frames, "cut at {cut}");
        }
    }

    #[test]
    fn replies_with_values_and_errors() {
        let data = b"VALUE a 0 3\r\nabc\r\nEND\r\nVALUE c 0 2 9\r\nxy\r\nEND\r\nSTORED\r\n42\r\nSTAT pid 1\r\nEND\r\nVA 2 t\r\nhi\r\nEN\r\nCLIENT_ERROR bad data chunk\r\nSERVER_ERROR out of memory\r\n";
        let (frames, broken) = parse_all(data, false);
        assert_eq!(broken, None);
        assert_eq!(
            frames,
            [
                reply("END", 1),
                reply("END", 1),
                reply("STORED", 0),
                reply("NUMBER", 0),
                reply("END", 0),
                reply("VA", 1),
                reply("EN", 0),
                reply("CLIENT_ERROR", 0),
                reply("SERVER_ERROR", 0),
            ]
        );
        // A value's data the kernel did not send is skipped; a gap in a line loses the framing.
        let mut f = Framer::replies();
        let mut out = Vec::new();
        f.feed(b"VALUE big 0 100000\r\n", &mut |x| out.push(x));
        f.gap(100_000, &mut |x| out.push(x));
        f.feed(b"\r\nEND\r\n", &mut |x| out.push(x));
        assert_eq!(out, [reply("END", 1)]);
        f.feed(b"STO", &mut |x| out.push(x));
        f.gap(3, &mut |x| out.push(x));
        assert_eq!(f.broken(), Some(Broken::Gap));
        assert_eq!(parse_all(b"set k 0 0 x\r\n", true).1, Some(Broken::Invalid));
        assert!(COMMANDS.windows(2).all(|w| w[0] < w[1]));
        assert!(starts_command(b"get k\r\n") && !starts_command(b"GET / HTTP/1.1\r\n"));
    }
}

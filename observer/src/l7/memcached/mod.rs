//! Memcached, the text protocol: the framer ([`text`]) and the tracker that pairs each command
//! with its reply per connection, in order.
//!
//! - Every command is one operation named after itself (`get`, `set`, `delete`, `incr`, `mg`,
//!   ...); a `get` of many keys is one operation.
//! - A command with `noreply` gets no reply: it is an operation of no measurable duration.
//! - Meta commands in quiet mode (`q`) reply only on some outcomes; the `mn` that ends a quiet
//!   batch ends every command before it that had no reply of its own. Within such a batch a
//!   reply is paired with the oldest command waiting, so counts stay exact and only the
//!   attribution of a reply inside the batch may shift.
//! - `ERROR`, `CLIENT_ERROR` and `SERVER_ERROR` are the status; a miss (`END` without value,
//!   `NOT_FOUND`, `EN`) is no error.

pub mod text;

use std::{collections::VecDeque, sync::Arc};

use observer_common::L7_MEMCACHED;

use super::{
    event::Kind,
    stream::{tracked, CallPos, Calls, Conns, Ends, Input, Op, Unparsed},
    ConnTable, Event, Protocol, Request, Settings, Side, Spec, Status,
};
use text::{Broken, Frame, Framer};

/// Memcached as the exporters see it: OpenTelemetry's database client family.
pub static SPEC: Spec = Spec::database(
    L7_MEMCACHED,
    "memcached",
    &[("db_system_name", "memcached")],
    true,
    super::failed_on_text_status,
);

/// Commands waiting for a reply per connection before the oldest are given up.
const MAX_PENDING: usize = 4096;

#[derive(Debug)]
struct Pending {
    name: &'static str,
    start_ns: u64,
    tgid: u32,
}

#[derive(Debug)]
struct Conn {
    ends: Ends,
    requests: Framer,
    replies: Framer,
    calls: Calls,
    counted: [bool; 2],
    pending: VecDeque<Pending>,
    last_ns: u64,
}

tracked!(Conn);

/// The Memcached protocol of the L7 path.
#[derive(Debug)]
pub struct Memcached {
    conns: Conns<Conn>,
    timeout_ns: u64,
    ok: Arc<str>,
    errors: [Arc<str>; 3],
    pub unparsed: Unparsed,
}

impl Memcached {
    pub fn new(settings: &Settings) -> Self {
        Self {
            conns: Conns::default(),
            timeout_ns: settings.request_timeout_ns,
            ok: Arc::from(""),
            errors: [
                Arc::from("ERROR"),
                Arc::from("CLIENT_ERROR"),
                Arc::from("SERVER_ERROR"),
            ],
            unparsed: Unparsed::default(),
        }
    }

    fn status(&self, error: Option<&'static str>) -> Status {
        let s = match error {
            Some("ERROR") => &self.errors[0],
            Some("CLIENT_ERROR") => &self.errors[1],
            Some(_) => &self.errors[2],
            None => &self.ok,
        };
        Status::Text(s.clone())
    }

    fn emit(
        &self,
        c: &Conn,
        p: &Pending,
        end_ns: u64,
        status: Option<Status>,
        error_type: Option<&'static str>,
        out: &mut Vec<Request>,
    ) {
        let op = Op {
            name: p.name,
            target: self.ok.clone(),
            start_ns: p.start_ns,
            tgid: p.tgid,
        };
        out.push(c.ends.request(op, end_ns, status, error_type));
    }

    fn on_data(&mut self, ev: &Event<'_>, out: &mut Vec<Request>) {
        let Some(d) = ev.data else { return };
        if let Some(old) = self.conns.make_room(ev.sk) {
            self.close(old, out);
        }
        let requests = d.send == (ev.side == Side::Client);
        let mut c = self.conns.take(ev.sk, d.end_ns, || Conn {
            ends: Ends::of(&SPEC, ev),
            requests: Framer::requests(),
            replies: Framer::replies(),
            calls: Calls::default(),
            counted: [false; 2],
            pending: VecDeque::new(),
            last_ns: d.end_ns,
        });
        let mut calls = c.calls;
        calls.record(usize::from(!requests), &d, ev.tgid, |dir, input, call| {
            let mut frames = Vec::new();
            match input {
                Input::Gap(n) => {
                    let f = if dir == 0 {
                        &mut c.requests
                    } else {
                        &mut c.replies
                    };
                    f.gap(n, &mut |x| frames.push(x));
                }
                Input::Bytes(b) => {
                    let lost = c.requests.broken().is_some() || c.replies.broken().is_some();
                    let call_start = call.seen as usize == b.len();
                    if dir == 0 && lost && call_start && text::starts_command(b) {
                        // Framing lost: start over at a call that starts a command.
                        self.unparsed.lost_in_resync += c.pending.len() as u64;
                        c.pending.clear();
                        c.requests.reset();
                        c.replies.reset();
                        c.counted = [false; 2];
                    }
                    let f = if dir == 0 {
                        &mut c.requests
                    } else {
                        &mut c.replies
                    };
                    f.feed(b, &mut |x| frames.push(x));
                }
            }
            for f in frames {
                match f {
                    Frame::Command(cmd) => self.on_command(&mut c, cmd, call, out),
                    Frame::Reply(r) => self.on_reply(&mut c, r, call, out),
                }
            }
            let f = if dir == 0 { &c.requests } else { &c.replies };
            if let Some(b) = f.broken() {
                if !c.counted[dir] {
                    c.counted[dir] = true;
                    match b {
                        Broken::Invalid => self.unparsed.invalid += 1,
                        Broken::Gap => self.unparsed.gap += 1,
                    }
                }
            }
        });
        c.calls = calls;
        self.conns.put(ev.sk, c);
    }

    fn on_command(
        &mut self,
        c: &mut Conn,
        cmd: text::Command,
        call: CallPos,
        out: &mut Vec<Request>,
    ) {
        // A client's command left when its call began; a server's arrived when its call ended.
        let start_ns = if c.ends.side == Side::Client {
            call.start_ns
        } else {
            call.end_ns
        };
        let p = Pending {
            name: cmd.name,
            start_ns,
            tgid: call.tgid,
        };
        if cmd.noreply {
            if cmd.name != "quit" {
                self.emit(c, &p, start_ns, Some(self.status(None)), None, out);
            }
            return;
        }
        if c.pending.len() >= MAX_PENDING {
            c.pending.pop_front();
            self.unparsed.pending_overflow += 1;
        }
        c.pending.push_back(p);
    }

    fn on_reply(&mut self, c: &mut Conn, r: text::Reply, call: CallPos, out: &mut Vec<Request>) {
        let end_ns = call.end_ns;
        if r.word == "MN" {
            // The end of a quiet batch: every command up to its `mn` is answered.
            if let Some(i) = c.pending.iter().position(|p| p.name == "mn") {
                for p in c.pending.drain(..=i).collect::<Vec<_>>() {
                    self.emit(c, &p, end_ns, Some(self.status(None)), None, out);
                }
                return;
            }
        }
        let Some(p) = c.pending.pop_front() else {
            self.unparsed.response_without_request += 1;
            return;
        };
        self.emit(c, &p, end_ns, Some(self.status(r.error)), None, out);
    }

    /// The connection is gone: commands still waiting end without reply.
    fn close(&mut self, mut c: Box<Conn>, out: &mut Vec<Request>) {
        let end = c.last_ns;
        let pending: Vec<Pending> = c.pending.drain(..).collect();
        for p in pending {
            self.emit(&c, &p, end, None, Some("connection_closed"), out);
        }
    }
}

impl Protocol for Memcached {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn on_event(&mut self, ev: &Event<'_>, out: &mut Vec<Request>) {
        match ev.kind {
            Kind::Data => self.on_data(ev, out),
            Kind::Close => {
                if let Some(c) = self.conns.closed(ev.sk, ev.ts_ns) {
                    self.close(c, out);
                }
            }
            Kind::Exchange | Kind::Request => self.unparsed.invalid += 1,
        }
    }

    fn poll(&mut self, now_ns: u64, conns: &dyn ConnTable, out: &mut Vec<Request>) {
        // The oldest command of a connection unanswered for too long times out, and so do those
        // behind it.
        let timeout = self.timeout_ns;
        let late = self.conns.picked(|c| {
            (c.pending.front()).is_some_and(|p| now_ns.saturating_sub(p.start_ns) >= timeout)
        });
        for sk in late {
            let Some(mut c) = self.conns.remove(sk) else {
                continue;
            };
            let pending: Vec<Pending> = c.pending.drain(..).collect();
            for p in pending {
                self.emit(&c, &p, now_ns, None, Some("timeout"), out);
            }
            self.conns.put(sk, c);
        }
        for c in self.conns.sweep(now_ns, conns) {
            self.close(c, out);
        }
    }

    fn unparsed(&self) -> Vec<(&'static str, u64)> {
        self.unparsed.list(self.conns.evicted, &[])
    }

    fn conns(&self) -> usize {
        self.conns.len()
    }
}

#[cfg(test)]
impl Memcached {
    fn pending_total(&self) -> usize {
        self.conns.values().map(|c| c.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::stream::testing::whole;

    fn settings() -> Settings {
        Settings {
            request_timeout_ns: 30_000_000_000,
        }
    }

    fn names(out: &[Request]) -> Vec<(&'static str, String, u64)> {
        out.iter()
            .map(|r| {
                (
                    r.operation,
                    r.status.as_ref().map(|s| s.label()).unwrap_or_default(),
                    r.duration_ns / 1_000_000,
                )
            })
            .collect()
    }

    #[test]
    fn commands_pair_with_replies_in_order_and_noreply_is_immediate() {
        let mut m = Memcached::new(&settings());
        let sent = b"set a 0 0 2\r\nhi\r\nget a b\r\ndelete x noreply\r\nincr n 1\r\nbogus\r\n";
        let out = whole(&mut m, Side::Client, true, 10, 10, sent);
        assert_eq!(names(&out), [("delete", "".into(), 0)]);
        let got = b"STORED\r\nVALUE a 0 2\r\nhi\r\nEND\r\nNOT_FOUND\r\nERROR\r\n";
        let out = whole(&mut m, Side::Client, false, 12, 15, got);
        assert_eq!(
            names(&out),
            [
                ("set", "".into(), 5),
                ("get", "".into(), 5),
                ("incr", "".into(), 5),
                ("_OTHER", "ERROR".into(), 5),
            ]
        );
        assert!(out[3].failed() && !out[2].failed());
        assert_eq!(m.unparsed.response_without_request, 0);
    }

    #[test]
    fn a_quiet_meta_batch_ends_at_its_mn() {
        let mut m = Memcached::new(&settings());
        // Server side: three quiet gets (one hit), then mn.
        let sent = b"mg a v q\r\nmg b v q\r\nmg c v q\r\nmn\r\n";
        assert!(whole(&mut m, Side::Server, false, 1, 1, sent).is_empty());
        let out = whole(&mut m, Side::Server, true, 3, 3, b"VA 1\r\nx\r\nMN\r\n");
        assert_eq!(
            names(&out),
            [
                ("mg", "".into(), 2),
                ("mg", "".into(), 2),
                ("mg", "".into(), 2),
                ("mn", "".into(), 2),
            ]
        );
        assert!(m.pending_total() == 0);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut m = Memcached::new(&settings());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..2000u64 {
            let mut b = Vec::new();
            for _ in 0..(x % 64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push(if x.is_multiple_of(3) { b'\n' } else { x as u8 });
            }
            let _ = whole(&mut m, Side::Client, i % 2 == 0, i, i, &b);
        }
    }
}

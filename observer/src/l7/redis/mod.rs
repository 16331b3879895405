//! Redis, RESP2 and RESP3: the parser ([`resp`], pure, shared with the fuzz target) and the
//! tracker that pairs commands and replies per connection, in order (Redis answers every
//! command of a connection in the order sent, pipelined or not).
//!
//! The kernel sends every call of a Redis connection (the stream framer), so a write carrying a
//! hundred commands is a hundred operations: each starts when its call did and ends when the
//! call that completed its reply did. Pub/sub messages (RESP2 arrays `message`, `pmessage`,
//! `smessage` on a subscribed connection, RESP3 pushes) are not replies and not operations; a
//! `SUBSCRIBE` of several channels is one operation, its further confirmations are not (RESP2
//! confirms with arrays, RESP3 with pushes: either ends the command).

pub mod commands;
pub mod resp;

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use observer_common::L7_REDIS;

use super::{
    event::Kind,
    stream::{tracked, CallPos, Calls, Conns, Ends, Input, Op, Unparsed},
    ConnTable, Event, Protocol, Request, Settings, Side, Spec, Status,
};
use resp::{Broken, Message, Stream};

/// Redis as the exporters see it: OpenTelemetry's database client family.
pub static SPEC: Spec = Spec::database(
    L7_REDIS,
    "redis",
    &[("db_system_name", "redis")],
    false,
    super::failed_on_text_status,
);

/// Commands waiting for their replies per connection before the oldest are given up.
const MAX_PENDING: usize = 4096;
/// Distinct error prefixes kept as label values; further ones are `_OTHER`.
const MAX_PREFIXES: usize = 64;

#[derive(Debug)]
struct Pending {
    op: &'static str,
    start_ns: u64,
    tgid: u32,
}

#[derive(Debug)]
struct Conn {
    ends: Ends,
    commands: Stream,
    replies: Stream,
    /// The current call of each direction (commands, replies).
    calls: Calls,
    /// Whether each direction's lost framing was counted.
    counted: [bool; 2],
    pending: VecDeque<Pending>,
    /// A `SUBSCRIBE` family command was sent: arrays of `message` are pushes from then on.
    subscribed: bool,
    last_ns: u64,
}

tracked!(Conn);

/// The Redis protocol of the L7 path.
#[derive(Debug)]
pub struct Redis {
    conns: Conns<Conn>,
    timeout_ns: u64,
    prefixes: HashMap<Vec<u8>, Arc<str>, foldhash::fast::RandomState>,
    ok: Arc<str>,
    other: Arc<str>,
    no_target: Arc<str>,
    pub unparsed: Unparsed,
    /// Nesting deeper than followed.
    pub too_deep: u64,
}

impl Redis {
    pub fn new(settings: &Settings) -> Self {
        Self {
            conns: Conns::default(),
            timeout_ns: settings.request_timeout_ns,
            prefixes: HashMap::default(),
            ok: Arc::from(""),
            other: Arc::from("_OTHER"),
            no_target: Arc::from(""),
            unparsed: Unparsed::default(),
            too_deep: 0,
        }
    }

    /// The label value of an error prefix: upper-case words only, a bounded set.
    fn status(&mut self, error: Option<Vec<u8>>) -> Status {
        let Some(p) = error else {
            return Status::Text(self.ok.clone());
        };
        if let Some(s) = self.prefixes.get(&p) {
            return Status::Text(s.clone());
        }
        let word = !p.is_empty()
            && p.iter()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_');
        if !word || self.prefixes.len() >= MAX_PREFIXES {
            return Status::Text(self.other.clone());
        }
        let s: Arc<str> = Arc::from(String::from_utf8_lossy(&p).as_ref());
        self.prefixes.insert(p, s.clone());
        Status::Text(s)
    }

    fn finish(
        &mut self,
        c: &Conn,
        p: Pending,
        end_ns: u64,
        status: Option<Status>,
        out: &mut Vec<Request>,
    ) {
        let error_type = status.is_none().then_some("connection_closed");
        out.push(c.ends.request(self.op(p), end_ns, status, error_type));
    }

    fn op(&self, p: Pending) -> Op {
        Op {
            name: p.op,
            target: self.no_target.clone(),
            start_ns: p.start_ns,
            tgid: p.tgid,
        }
    }

    fn on_data(&mut self, ev: &Event<'_>, out: &mut Vec<Request>) {
        let Some(d) = ev.data else { return };
        if let Some(old) = self.conns.make_room(ev.sk) {
            self.close(old, out);
        }
        let mut c = self.conns.take(ev.sk, d.end_ns, || Conn {
            ends: Ends::of(&SPEC, ev),
            commands: Stream::requests(),
            replies: Stream::replies(),
            calls: Calls::default(),
            counted: [false; 2],
            pending: VecDeque::new(),
            subscribed: false,
            last_ns: d.end_ns,
        });
        let commands = d.send == (c.ends.side == Side::Client);
        let mut calls = c.calls;
        calls.record(usize::from(!commands), &d, ev.tgid, |dir, input, call| {
            let mut msgs = Vec::new();
            match input {
                Input::Gap(n) => stream(&mut c, dir).gap(n, &mut |m| msgs.push(m)),
                Input::Bytes(b) => {
                    let broken = c.commands.broken().is_some() || c.replies.broken().is_some();
                    let call_start = call.seen as usize == b.len();
                    if dir == 0 && broken && call_start && starts_command(b) {
                        // Framing lost: start over at a call that starts a command. Whatever
                        // waited cannot be paired any more.
                        self.unparsed.lost_in_resync += c.pending.len() as u64;
                        c.pending.clear();
                        c.commands.reset();
                        c.replies.reset();
                        c.counted = [false; 2];
                    }
                    stream(&mut c, dir).feed(b, &mut |m| msgs.push(m));
                }
            }
            self.handle(&mut c, dir, call, msgs, out);
        });
        c.calls = calls;
        self.conns.put(ev.sk, c);
    }

    /// The messages of direction `dir`'s current call.
    fn handle(
        &mut self,
        c: &mut Conn,
        dir: usize,
        call: CallPos,
        msgs: Vec<Message>,
        out: &mut Vec<Request>,
    ) {
        for m in msgs {
            match m {
                Message::Command(name) => {
                    let op = commands::name(&name);
                    if commands::subscribes(op) {
                        c.subscribed = true;
                    }
                    if c.pending.len() >= MAX_PENDING {
                        c.pending.pop_front();
                        self.unparsed.pending_overflow += 1;
                    }
                    // A client's command left when its call began; a server's arrived when
                    // its call ended.
                    let start_ns = if c.ends.side == Side::Client {
                        call.start_ns
                    } else {
                        call.end_ns
                    };
                    c.pending.push_back(Pending {
                        op,
                        start_ns,
                        tgid: call.tgid,
                    });
                }
                Message::Push { kind } => {
                    // RESP3 confirms a (un)subscription with a push: the first is the reply of
                    // the command that asked (a command of several channels gets one each).
                    let confirms = kind.as_deref().and_then(commands::pubsub_kind)
                        == Some(commands::PubSub::Confirmation);
                    let asked = c
                        .pending
                        .front()
                        .is_some_and(|p| commands::subscribes(p.op));
                    if confirms && asked {
                        if let Some(p) = c.pending.pop_front() {
                            let status = self.status(None);
                            self.finish(c, p, call.end_ns, Some(status), out);
                        }
                    }
                }
                Message::Reply { error, first } => {
                    if c.subscribed {
                        if let Some(kind) = first.as_deref().and_then(commands::pubsub_kind) {
                            let front_subscribes = c
                                .pending
                                .front()
                                .is_some_and(|p| commands::subscribes(p.op));
                            if kind == commands::PubSub::Message || !front_subscribes {
                                continue;
                            }
                        }
                    }
                    let Some(p) = c.pending.pop_front() else {
                        self.unparsed.response_without_request += 1;
                        continue;
                    };
                    let status = self.status(error);
                    self.finish(c, p, call.end_ns, Some(status), out);
                }
            }
        }
        if let Some(b) = stream(c, dir).broken() {
            if !c.counted[dir] {
                c.counted[dir] = true;
                match b {
                    Broken::Invalid => self.unparsed.invalid += 1,
                    Broken::Gap => self.unparsed.gap += 1,
                    Broken::TooDeep => self.too_deep += 1,
                }
            }
        }
    }

    /// The connection is gone: commands still waiting end without reply.
    fn close(&mut self, mut c: Box<Conn>, out: &mut Vec<Request>) {
        let end = c.last_ns;
        while let Some(p) = c.pending.pop_front() {
            self.finish(&c, p, end, None, out);
        }
    }
}

/// The parser of a direction (0: commands, 1: replies).
fn stream(c: &mut Conn, dir: usize) -> &mut Stream {
    if dir == 0 {
        &mut c.commands
    } else {
        &mut c.replies
    }
}

/// Whether a call's bytes start with a command's header (`*<digits>\r\n$`).
fn starts_command(b: &[u8]) -> bool {
    let Some(rest) = b.strip_prefix(b"*") else {
        return false;
    };
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    digits > 0 && rest[digits..].starts_with(b"\r\n$")
}

impl Protocol for Redis {
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
            // Only the HTTP/1 framer sends these.
            Kind::Exchange | Kind::Request => self.unparsed.invalid += 1,
        }
    }

    fn poll(&mut self, now_ns: u64, conns: &dyn ConnTable, out: &mut Vec<Request>) {
        // Commands unanswered for too long (not those that block by design) end as timeouts;
        // those behind a blocking one wait with it.
        let timeout = self.timeout_ns;
        let mut ended = Vec::new();
        for c in self.conns.values_mut() {
            while c.pending.front().is_some_and(|p| {
                now_ns.saturating_sub(p.start_ns) >= timeout && !commands::blocks(p.op)
            }) {
                let p = c.pending.pop_front().expect("checked");
                ended.push((c.ends.clone(), p));
            }
        }
        for (ends, p) in ended {
            out.push(ends.request(self.op(p), now_ns, None, Some("timeout")));
        }
        for c in self.conns.sweep(now_ns, conns) {
            self.close(c, out);
        }
    }

    fn unparsed(&self) -> Vec<(&'static str, u64)> {
        self.unparsed
            .list(self.conns.evicted, &[("too_deep", self.too_deep)])
    }

    fn conns(&self) -> usize {
        self.conns.len()
    }
}

#[cfg(test)]
mod tests;

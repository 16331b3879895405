//! PostgreSQL, the frontend/backend protocol v3 (plaintext; `SSLRequest` answered `S` ends the
//! following of a connection): the framer ([`wire`]), what a statement is ([`sql`]), and the
//! tracker that pairs statements with their completions per connection, in order.
//!
//! - A simple query (`Q`) is one operation per statement it holds: each `CommandComplete` or
//!   `ErrorResponse` until its `ReadyForQuery`, named by the command tag (PostgreSQL's own word
//!   for what ran) or, for an error, by the statement's first keyword.
//! - The extended protocol: `Parse` statements are remembered per connection by name (the
//!   unnamed one too), `Bind` ties a portal to one, and each `Execute` is one operation ending at
//!   its completion, so a prepared statement executed 1,000 times is 1,000 operations with its
//!   statement's name. Pipelined batches are paired in order; after an error the server skips to
//!   `Sync`, and the executions it skipped are no operations.
//! - `COPY` is the statement's operation, ending at its `CommandComplete`.

pub mod wire;

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use observer_common::L7_POSTGRES;

use super::{
    event::Kind,
    sql::{self, Stmt},
    stream::{tracked, CallPos, Calls, Conns, Ends, Input, Op, Unparsed},
    ConnTable, Event, Protocol, Request, Settings, Side, Spec, Status,
};
use wire::{Broken, Framer, Message};

/// PostgreSQL as the exporters see it: OpenTelemetry's database client family.
pub static SPEC: Spec = Spec::database(
    L7_POSTGRES,
    "postgresql",
    &[("db_system_name", "postgresql")],
    true,
    super::failed_on_text_status,
);

/// Units waiting for the server per connection before the oldest are given up.
const MAX_PENDING: usize = 4096;
/// Prepared statements and portals remembered per connection.
const MAX_NAMED: usize = 1024;
/// Distinct SQLSTATEs kept as label values; further ones are `_OTHER`.
const MAX_STATES: usize = 256;

#[derive(Debug)]
enum Unit {
    /// A simple query: every completion until `ReadyForQuery` is an operation.
    Query {
        stmt: Stmt,
        start_ns: u64,
        tgid: u32,
        done: u32,
    },
    /// One execution of a bound statement.
    Execute {
        stmt: Stmt,
        start_ns: u64,
        tgid: u32,
    },
    /// A `Sync`: its `ReadyForQuery` ends the batch.
    Sync,
}

#[derive(Debug)]
struct Conn {
    ends: Ends,
    frontend: Framer,
    backend: Framer,
    calls: Calls,
    counted: [bool; 2],
    units: VecDeque<Unit>,
    statements: HashMap<Vec<u8>, Stmt>,
    portals: HashMap<Vec<u8>, Stmt>,
    /// The last statement parsed: an error of its `Parse` or `Bind` without an `Execute`.
    last_parsed: Option<Stmt>,
    last_ns: u64,
}

tracked!(Conn);

/// The PostgreSQL protocol of the L7 path.
#[derive(Debug)]
pub struct Postgres {
    conns: Conns<Conn>,
    timeout_ns: u64,
    states: HashMap<Vec<u8>, Arc<str>, foldhash::fast::RandomState>,
    ok: Arc<str>,
    other: Arc<str>,
    statements: sql::Statements,
    pub unparsed: Unparsed,
    /// Connections that turned to TLS: followed no further.
    pub encrypted: u64,
}

impl Postgres {
    pub fn new(settings: &Settings) -> Self {
        Self {
            conns: Conns::default(),
            timeout_ns: settings.request_timeout_ns,
            states: HashMap::default(),
            ok: Arc::from(""),
            other: Arc::from("_OTHER"),
            statements: sql::Statements::new(sql::Dialect::Postgres),
            unparsed: Unparsed::default(),
            encrypted: 0,
        }
    }

    /// The label value of a SQLSTATE: five digits or upper-case letters, a bounded set.
    fn status(&mut self, state: Option<&[u8]>) -> Status {
        let Some(s) = state else {
            return Status::Text(self.ok.clone());
        };
        if let Some(v) = self.states.get(s) {
            return Status::Text(v.clone());
        }
        let valid = s.len() == 5
            && s.iter()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase());
        if !valid || self.states.len() >= MAX_STATES {
            return Status::Text(self.other.clone());
        }
        let v: Arc<str> = Arc::from(String::from_utf8_lossy(s).as_ref());
        self.states.insert(s.to_vec(), v.clone());
        Status::Text(v)
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &self,
        c: &Conn,
        op: &'static str,
        table: Arc<str>,
        start_ns: u64,
        tgid: u32,
        end_ns: u64,
        status: Option<Status>,
        error_type: Option<&'static str>,
        out: &mut Vec<Request>,
    ) {
        let op = Op {
            name: op,
            target: table,
            start_ns,
            tgid,
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
            // A connection followed from its start begins with an untyped startup message.
            frontend: Framer::frontend(requests && wire::starts_untyped(d.bytes)),
            backend: Framer::backend(),
            calls: Calls::default(),
            counted: [false; 2],
            units: VecDeque::new(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            last_parsed: None,
            last_ns: d.end_ns,
        });
        let mut calls = c.calls;
        calls.record(usize::from(!requests), &d, ev.tgid, |dir, input, call| {
            if c.backend.broken() == Some(Broken::Encrypted) {
                // TLS from here on: nothing to read.
                return;
            }
            let mut msgs = Vec::new();
            match input {
                Input::Gap(n) => {
                    let framer = if dir == 0 {
                        &mut c.frontend
                    } else {
                        &mut c.backend
                    };
                    framer.gap(n, &mut |m| msgs.push(m));
                }
                Input::Bytes(b) => {
                    let lost = matches!(c.frontend.broken(), Some(Broken::Invalid | Broken::Gap))
                        || matches!(c.backend.broken(), Some(Broken::Invalid | Broken::Gap));
                    let call_start = call.seen as usize == b.len();
                    if dir == 0 && lost && call_start && starts_statement(b) {
                        // Framing lost: start over at a call that starts a query or a parse.
                        self.unparsed.lost_in_resync += c.units.len() as u64;
                        c.units.clear();
                        c.frontend.reset();
                        c.backend.reset();
                        c.counted = [false; 2];
                    }
                    let framer = if dir == 0 {
                        &mut c.frontend
                    } else {
                        &mut c.backend
                    };
                    framer.feed(b, &mut |m| msgs.push(m));
                }
            }
            for m in msgs {
                if dir == 0 {
                    self.on_frontend(&mut c, m, call);
                } else {
                    self.on_backend(&mut c, m, call, out);
                }
            }
            let framer = if dir == 0 { &c.frontend } else { &c.backend };
            if let Some(b) = framer.broken() {
                if !c.counted[dir] {
                    c.counted[dir] = true;
                    match b {
                        Broken::Invalid => self.unparsed.invalid += 1,
                        Broken::Gap => self.unparsed.gap += 1,
                        Broken::Encrypted => self.encrypted += 1,
                    }
                }
            }
        });
        c.calls = calls;
        self.conns.put(ev.sk, c);
    }

    fn push(&mut self, c: &mut Conn, u: Unit) {
        if c.units.len() >= MAX_PENDING {
            c.units.pop_front();
            self.unparsed.pending_overflow += 1;
        }
        c.units.push_back(u);
    }

    fn on_frontend(&mut self, c: &mut Conn, m: Message, call: CallPos) {
        // A client's message left when its call began; a server's arrived when its call ended.
        let start_ns = if c.ends.side == Side::Client {
            call.start_ns
        } else {
            call.end_ns
        };
        let tgid = call.tgid;
        match m.ty {
            0 => {
                if matches!(
                    wire::startup_code(&m),
                    Some(wire::SSL_REQUEST | wire::GSSENC_REQUEST)
                ) {
                    c.backend.expect_answer_byte();
                }
            }
            b'Q' => {
                let text = wire::cstr(&m.body).map_or(&m.body[..], |(t, _)| t);
                let stmt = self.statements.stmt(text);
                self.push(
                    c,
                    Unit::Query {
                        stmt,
                        start_ns,
                        tgid,
                        done: 0,
                    },
                );
            }
            b'P' => {
                if let Some((name, rest)) = wire::cstr(&m.body) {
                    let text = wire::cstr(rest).map_or(rest, |(t, _)| t);
                    let stmt = self.statements.stmt(text);
                    if c.statements.len() >= MAX_NAMED && !c.statements.contains_key(name) {
                        c.statements.clear();
                    }
                    c.statements.insert(name.to_vec(), stmt.clone());
                    c.last_parsed = Some(stmt);
                }
            }
            b'B' => {
                if let Some((portal, rest)) = wire::cstr(&m.body) {
                    let name = wire::cstr(rest).map_or(rest, |(n, _)| n);
                    let stmt = c
                        .statements
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| self.statements.other());
                    if c.portals.len() >= MAX_NAMED && !c.portals.contains_key(portal) {
                        c.portals.clear();
                    }
                    c.portals.insert(portal.to_vec(), stmt);
                }
            }
            b'E' => {
                let portal = wire::cstr(&m.body).map_or(&m.body[..], |(p, _)| p);
                let stmt = c
                    .portals
                    .get(portal)
                    .cloned()
                    .unwrap_or_else(|| self.statements.other());
                self.push(
                    c,
                    Unit::Execute {
                        stmt,
                        start_ns,
                        tgid,
                    },
                );
            }
            b'S' => self.push(c, Unit::Sync),
            _ => {}
        }
    }

    fn on_backend(&mut self, c: &mut Conn, m: Message, call: CallPos, out: &mut Vec<Request>) {
        let end_ns = call.end_ns;
        match m.ty {
            b'C' | b'E' | b's' => {
                let error = m.ty == b'E';
                let state = if error { wire::sqlstate(&m.body) } else { None };
                let tag_op = (m.ty == b'C').then(|| sql::tag_operation(&m.body));
                let status = self.status(state);
                match c.units.front_mut() {
                    Some(Unit::Query {
                        stmt,
                        start_ns,
                        tgid,
                        done,
                    }) => {
                        // Statements after the first of a query are named by their tags only.
                        let first = *done == 0;
                        *done += 1;
                        let op = tag_op.unwrap_or(if first { stmt.op } else { "_OTHER" });
                        let table = if first {
                            stmt.table.clone()
                        } else {
                            self.ok.clone()
                        };
                        let (start, tgid) = (*start_ns, *tgid);
                        self.emit(c, op, table, start, tgid, end_ns, Some(status), None, out);
                    }
                    Some(Unit::Execute { .. }) => {
                        let Some(Unit::Execute {
                            stmt,
                            start_ns,
                            tgid,
                        }) = c.units.pop_front()
                        else {
                            unreachable!("checked");
                        };
                        let op = tag_op.unwrap_or(stmt.op);
                        self.emit(
                            c,
                            op,
                            stmt.table,
                            start_ns,
                            tgid,
                            end_ns,
                            Some(status),
                            None,
                            out,
                        );
                    }
                    Some(Unit::Sync) if error => {
                        // A Parse or Bind failed with no Execute sent.
                        let stmt = c
                            .last_parsed
                            .clone()
                            .unwrap_or_else(|| self.statements.other());
                        self.emit(
                            c,
                            stmt.op,
                            stmt.table,
                            end_ns,
                            call.tgid,
                            end_ns,
                            Some(status),
                            None,
                            out,
                        );
                    }
                    // A server's error outside any statement (a failed startup, a terminated
                    // session) is no operation.
                    _ => {
                        if !error {
                            self.unparsed.response_without_request += 1;
                        }
                    }
                }
            }
            b'I' => {
                // An empty query: no operation; an Execute of one is done.
                if matches!(c.units.front(), Some(Unit::Execute { .. })) {
                    c.units.pop_front();
                }
            }
            b'Z' => {
                // The batch or query is over: what the server skipped after an error ends here
                // without being an operation.
                while let Some(u) = c.units.pop_front() {
                    if matches!(u, Unit::Query { .. } | Unit::Sync) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }

    /// The connection is gone: statements still waiting end without reply.
    fn close(&mut self, mut c: Box<Conn>, out: &mut Vec<Request>) {
        let end = c.last_ns;
        while let Some(u) = c.units.pop_front() {
            match u {
                Unit::Query {
                    stmt,
                    start_ns,
                    tgid,
                    done: 0,
                }
                | Unit::Execute {
                    stmt,
                    start_ns,
                    tgid,
                } => self.emit(
                    &c,
                    stmt.op,
                    stmt.table,
                    start_ns,
                    tgid,
                    end,
                    None,
                    Some("connection_closed"),
                    out,
                ),
                _ => {}
            }
        }
    }
}

/// Whether a call's bytes start with a simple query or a parse (`Q`/`P` and a plausible
/// length).
fn starts_statement(b: &[u8]) -> bool {
    b.len() >= 5
        && matches!(b[0], b'Q' | b'P')
        && (5..1 << 30).contains(&u32::from_be_bytes([b[1], b[2], b[3], b[4]]))
}

impl Protocol for Postgres {
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
        // The oldest statement of a connection unanswered for too long times out, and so do
        // those behind it.
        let timeout = self.timeout_ns;
        let ended = self.conns.picked(|c| {
            let first_start = c.units.iter().find_map(|u| match u {
                Unit::Query { start_ns, .. } | Unit::Execute { start_ns, .. } => Some(*start_ns),
                Unit::Sync => None,
            });
            first_start.is_some_and(|s| now_ns.saturating_sub(s) >= timeout)
        });
        for sk in ended {
            let Some(mut c) = self.conns.remove(sk) else {
                continue;
            };
            let units: Vec<Unit> = c.units.drain(..).collect();
            for u in units {
                if let Unit::Query {
                    stmt,
                    start_ns,
                    tgid,
                    done: 0,
                }
                | Unit::Execute {
                    stmt,
                    start_ns,
                    tgid,
                } = u
                {
                    self.emit(
                        &c,
                        stmt.op,
                        stmt.table,
                        start_ns,
                        tgid,
                        now_ns,
                        None,
                        Some("timeout"),
                        out,
                    );
                }
            }
            self.conns.put(sk, c);
        }
        for c in self.conns.sweep(now_ns, conns) {
            self.close(c, out);
        }
    }

    fn unparsed(&self) -> Vec<(&'static str, u64)> {
        self.unparsed
            .list(self.conns.evicted, &[("encrypted", self.encrypted)])
    }

    fn conns(&self) -> usize {
        self.conns.len()
    }
}

#[cfg(test)]
mod tests;

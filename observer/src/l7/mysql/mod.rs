//! MySQL and MariaDB, the client/server protocol (plaintext; a client's `SSLRequest` ends the
//! following of a connection): the framer ([`wire`]) and the tracker that pairs each command with
//! its response per connection, in order.
//!
//! - `COM_QUERY` is one operation per statement of its text (a multi-statement query has one
//!   result per statement; a `CALL`'s several results are one operation), named by the
//!   statement's first keyword(s), with its main table.
//! - `COM_STMT_PREPARE` is a `PREPARE` operation; its answer gives the statement's id, which is
//!   remembered per connection, so each `COM_STMT_EXECUTE` is one operation named after the
//!   statement it executes. `COM_STMT_CLOSE` forgets it.
//! - Other commands with a response (`COM_PING`, `COM_INIT_DB`, `COM_STMT_RESET`, ...) are
//!   operations named after the command.
//! - A response ends at its `OK`, at its `ERR` (the error number is the status), or after the
//!   rows of its result sets: column count, definitions, rows, and the `EOF` (or, with
//!   `CLIENT_DEPRECATE_EOF`, the `OK`) that ends them; a 5-byte `EOF` is the old protocol's, a
//!   longer one the new `OK`, so a connection joined mid-way needs no capabilities. Sequence
//!   numbers check that a packet belongs to the response; a mismatch loses the framing, which
//!   comes back at the next call that starts with a command.
//! - The server's greeting says whether it is MariaDB (`db_system_name="mariadb"`).

pub mod wire;

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use observer_common::L7_MYSQL;

use super::{
    event::Kind,
    sql::{self, Stmt},
    stream::{tracked, CallPos, Calls, Conns, Ends, Input, Op, Unparsed},
    ConnTable, Event, Protocol, Request, Settings, Side, Spec, Status,
};
use wire::{Framer, Packet};

/// MySQL as the exporters see it: OpenTelemetry's database client family.
pub static SPEC: Spec = Spec::database(
    L7_MYSQL,
    "mysql",
    &[("db_system_name", "mysql")],
    true,
    failed,
);

/// The same protocol spoken by a MariaDB server (its greeting says so). Not a probe of its own:
/// its id only tells its series apart.
pub static SPEC_MARIADB: Spec = Spec::database(
    L7_MYSQL | 0x80,
    "mysql",
    &[("db_system_name", "mariadb")],
    true,
    failed,
);

/// An error response (an error number), or none at all.
fn failed(status: Option<&Status>, error: Option<&'static str>) -> bool {
    error.is_some() || matches!(status, Some(Status::Code(_)))
}

/// Commands waiting for the server per connection before the oldest are given up.
const MAX_PENDING: usize = 1024;
/// Prepared statements remembered per connection.
const MAX_NAMED: usize = 1024;
/// Statements of one query text told apart.
const MAX_STATEMENTS: usize = 16;

/// `CLIENT_SSL` and `CLIENT_COMPRESS` in a client's capabilities.
const CLIENT_SSL: u32 = 0x0800;
const CLIENT_COMPRESS: u32 = 0x0020;

#[derive(Debug)]
enum What {
    /// The statements of a query's text still to be answered.
    Query(VecDeque<Stmt>),
    Prepare(Stmt),
    Execute(Stmt),
    /// A command answered by rows only (`COM_STMT_FETCH`).
    Fetch,
    /// A command answered by column definitions and an `EOF` (`COM_FIELD_LIST`).
    FieldList,
    /// A command answered by one string (`COM_STATISTICS`).
    OnePacket(&'static str),
    /// Any other command: an `OK` or an `ERR`.
    Simple(&'static str),
}

#[derive(Debug)]
struct Unit {
    what: What,
    start_ns: u64,
    tgid: u32,
}

/// Where the response of the oldest pending command stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Resp {
    /// Its first packet is next.
    #[default]
    Start,
    /// `left` column definitions to come.
    Columns {
        left: u64,
    },
    /// The definitions are read: an `EOF` (old protocol), a row or the end.
    AfterColumns,
    Rows,
    /// A prepare's parameter and column definitions to come.
    PrepareDefs {
        params: u64,
        cols: u64,
    },
    /// A `LOCAL INFILE` request: the client sends the file, then the server's `OK`/`ERR`.
    Infile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The greeting was seen: authentication until the server's `OK` or `ERR`.
    Auth,
    Commands,
    /// TLS or compression from here on: nothing to read.
    Unreadable,
}

#[derive(Debug)]
struct Conn {
    /// Its protocol is MariaDB's once the greeting says so.
    ends: Ends,
    phase: Phase,
    client: Framer,
    server: Framer,
    calls: Calls,
    /// Framing lost (a gap, a sequence out of order): waiting for a call that starts a command.
    lost: bool,
    units: VecDeque<Unit>,
    resp: Resp,
    /// The sequence number the next packet of the response must have.
    next_seq: u8,
    /// After a prepare's definitions: the old protocol's `EOF` may follow, with this sequence.
    trailing_eof: Option<u8>,
    statements: HashMap<u32, Stmt>,
    last_prepared: Option<u32>,
    last_ns: u64,
}

tracked!(Conn);

/// The MySQL protocol of the L7 path.
#[derive(Debug)]
pub struct Mysql {
    conns: Conns<Conn>,
    timeout_ns: u64,
    ok: Arc<str>,
    statements: sql::Statements,
    pub unparsed: Unparsed,
    /// Connections that turned to TLS or compression: followed no further.
    pub encrypted: u64,
}

impl Mysql {
    pub fn new(settings: &Settings) -> Self {
        Self {
            conns: Conns::default(),
            timeout_ns: settings.request_timeout_ns,
            ok: Arc::from(""),
            statements: sql::Statements::new(sql::Dialect::Mysql),
            unparsed: Unparsed::default(),
            encrypted: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
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
            self.close(old, out, "connection_closed");
        }
        let requests = d.send == (ev.side == Side::Client);
        let mut c = self.conns.take(ev.sk, d.end_ns, || Conn {
            ends: Ends::of(&SPEC, ev),
            // Joined mid-way unless the server's greeting comes first.
            phase: Phase::Commands,
            client: Framer::default(),
            server: Framer::default(),
            calls: Calls::default(),
            lost: false,
            units: VecDeque::new(),
            resp: Resp::Start,
            next_seq: 1,
            trailing_eof: None,
            statements: HashMap::new(),
            last_prepared: None,
            last_ns: d.end_ns,
        });
        let mut calls = c.calls;
        calls.record(usize::from(!requests), &d, ev.tgid, |dir, input, call| {
            if c.phase == Phase::Unreadable {
                return;
            }
            let mut packets = Vec::new();
            let call_start = matches!(input, Input::Bytes(b) if call.seen as usize == b.len());
            match input {
                Input::Gap(n) => {
                    let f = if dir == 0 {
                        &mut c.client
                    } else {
                        &mut c.server
                    };
                    f.gap(n, &mut |p| packets.push(p));
                    if f.broken() && !c.lost {
                        c.lost = true;
                        self.unparsed.gap += 1;
                    }
                }
                Input::Bytes(b) => {
                    if dir == 0 && c.lost && call_start && wire::starts_command(b) {
                        // Framing lost: start over at a call that starts a command.
                        self.unparsed.lost_in_resync += c.units.len() as u64;
                        c.units.clear();
                        c.client.reset();
                        c.server.reset();
                        c.resp = Resp::Start;
                        c.trailing_eof = None;
                        c.lost = false;
                    }
                    if c.lost {
                        return;
                    }
                    let f = if dir == 0 {
                        &mut c.client
                    } else {
                        &mut c.server
                    };
                    f.feed(b, &mut |p| packets.push(p));
                }
            }
            for p in packets {
                if c.lost || c.phase == Phase::Unreadable {
                    break;
                }
                if dir == 0 {
                    self.on_client(&mut c, p, call);
                } else {
                    self.on_server(&mut c, p, call, out);
                }
            }
        });
        c.calls = calls;
        self.conns.put(ev.sk, c);
    }

    fn push(&mut self, c: &mut Conn, u: Unit) {
        if c.units.len() >= MAX_PENDING {
            c.units.pop_front();
            c.resp = Resp::Start;
            self.unparsed.pending_overflow += 1;
        }
        if c.units.is_empty() {
            c.resp = Resp::Start;
            c.next_seq = 1;
        }
        c.units.push_back(u);
    }

    fn on_client(&mut self, c: &mut Conn, p: Packet, call: CallPos) {
        if c.phase == Phase::Auth {
            // The handshake response: TLS or compression asked for ends the following.
            if p.seq == 1 && p.body.len() >= 4 {
                let caps = u32::from_le_bytes([p.body[0], p.body[1], p.body[2], p.body[3]]);
                if caps & (CLIENT_SSL | CLIENT_COMPRESS) != 0 {
                    c.phase = Phase::Unreadable;
                    self.encrypted += 1;
                }
            }
            return;
        }
        if p.seq != 0 {
            // A `LOCAL INFILE` file, or an authentication answer after `COM_CHANGE_USER`.
            return;
        }
        // A client's command left when its call began; a server's arrived when its call ended.
        let start_ns = if c.ends.side == Side::Client {
            call.start_ns
        } else {
            call.end_ns
        };
        let Some(&cmd) = p.body.first() else {
            self.unparsed.invalid += 1;
            return;
        };
        let text = p.body.get(1..).unwrap_or_default();
        let what = match cmd {
            0x03 => {
                let mut stmts: VecDeque<Stmt> = sql::split_statements(text, MAX_STATEMENTS)
                    .into_iter()
                    .map(|s| self.statements.stmt(s))
                    .collect();
                if stmts.is_empty() {
                    stmts.push_back(self.statements.other());
                }
                What::Query(stmts)
            }
            0x16 => What::Prepare(self.statements.stmt(text)),
            0x17 => {
                let id = text
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0);
                // MariaDB's "the statement just prepared".
                let id = if id == u32::MAX {
                    c.last_prepared.unwrap_or(id)
                } else {
                    id
                };
                What::Execute(
                    c.statements
                        .get(&id)
                        .cloned()
                        .unwrap_or_else(|| self.statements.other()),
                )
            }
            0x19 => {
                if let Some(b) = text.get(..4) {
                    c.statements
                        .remove(&u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                }
                return;
            }
            // No response.
            0x01 | 0x18 => return,
            0x1c => What::Fetch,
            0x04 => What::FieldList,
            0x09 => What::OnePacket("STATISTICS"),
            0x11 => {
                // Authentication again: its end is the operation's.
                c.phase = Phase::Auth;
                What::Simple("CHANGE_USER")
            }
            _ => match wire::command_name(cmd) {
                Some(name) => What::Simple(name),
                None => {
                    self.unparsed.invalid += 1;
                    return;
                }
            },
        };
        let tgid = call.tgid;
        self.push(
            c,
            Unit {
                what,
                start_ns,
                tgid,
            },
        );
    }

    fn on_server(&mut self, c: &mut Conn, p: Packet, call: CallPos, out: &mut Vec<Request>) {
        let end_ns = call.end_ns;
        if c.phase == Phase::Auth || (c.units.is_empty() && p.seq == 0 && p.first() == Some(0x0a)) {
            self.on_auth(c, &p, end_ns, out);
            return;
        }
        if let Some(s) = c.trailing_eof.take() {
            if p.seq == s && p.is_eof() {
                return;
            }
        }
        if c.units.is_empty() {
            if p.seq == 1 {
                self.unparsed.response_without_request += 1;
            }
            return;
        }
        if p.seq != c.next_seq {
            // Not the packet the response needs next: the framing is lost.
            self.unparsed.invalid += 1;
            c.lost = true;
            return;
        }
        c.next_seq = p.last_seq.wrapping_add(1);
        let first = p.first().unwrap_or(0);
        let is_err = p.is_err();
        // Whether a result ends here, with the packet that ends it.
        let mut ended = false;
        match c.resp {
            Resp::Start => {
                let what = &c.units.front().expect("checked").what;
                match what {
                    What::OnePacket(_) => ended = true,
                    _ if is_err || first == 0x00 => {
                        if let (What::Prepare(stmt), false) = (what, is_err) {
                            self.prepared(c, stmt.clone(), &p, end_ns, out);
                            return;
                        }
                        ended = true;
                    }
                    What::Fetch => c.resp = Resp::Rows,
                    What::FieldList => c.resp = Resp::Columns { left: u64::MAX },
                    _ if first == 0xfb => c.resp = Resp::Infile,
                    _ if first == 0xfe => ended = true,
                    _ => match wire::lenenc(&p.body) {
                        Some((0, _)) | None => ended = true,
                        Some((n, _)) => c.resp = Resp::Columns { left: n },
                    },
                }
            }
            Resp::Columns { left } => {
                if left == u64::MAX {
                    // A field list: definitions until the `EOF`/`OK`.
                    ended = p.ends_rows() || is_err;
                } else if left <= 1 {
                    c.resp = Resp::AfterColumns;
                } else {
                    c.resp = Resp::Columns { left: left - 1 };
                }
            }
            Resp::AfterColumns => {
                if p.is_eof() {
                    // The old protocol's end of definitions; a cursor's rows come by fetches.
                    if p.cursor() {
                        ended = true;
                    } else {
                        c.resp = Resp::Rows;
                    }
                } else if p.ends_rows() || is_err {
                    ended = true;
                } else {
                    c.resp = Resp::Rows;
                }
            }
            Resp::Rows => ended = p.ends_rows() || is_err,
            Resp::Infile => ended = true,
            Resp::PrepareDefs { params, cols } => {
                self.prepare_def(c, (params, cols), &p, end_ns, out);
                return;
            }
        }
        if ended {
            self.result_end(c, &p, end_ns, out);
        }
    }

    /// The authentication's end (`OK` or `ERR`) starts the commands; a greeting names the
    /// server, and a client that goes on without reading the end is seen from its command.
    fn on_auth(&mut self, c: &mut Conn, p: &Packet, end_ns: u64, out: &mut Vec<Request>) {
        if p.seq == 0 && p.first() == Some(0x0a) {
            c.phase = Phase::Auth;
            let version = p.body[1..].split(|&b| b == 0).next().unwrap_or_default();
            if version.windows(7).any(|w| w == b"MariaDB") {
                c.ends.protocol = &SPEC_MARIADB;
            }
            return;
        }
        if let Some(0x00 | 0xff) = p.first() {
            c.phase = Phase::Commands;
            // The end of a `COM_CHANGE_USER`.
            if let Some(u) = c.units.pop_front() {
                let status = p.error_code().map(|e| Status::Code(u32::from(e)));
                let op = if let What::Simple(op) = u.what {
                    op
                } else {
                    "_OTHER"
                };
                Self::emit(
                    c,
                    op,
                    self.ok.clone(),
                    u.start_ns,
                    u.tgid,
                    end_ns,
                    Some(status.unwrap_or_else(|| Status::Text(self.ok.clone()))),
                    None,
                    out,
                );
            }
            c.resp = Resp::Start;
            c.next_seq = 1;
        }
    }

    /// A prepare's `OK`: the statement's id is remembered; its definitions follow.
    fn prepared(
        &mut self,
        c: &mut Conn,
        stmt: Stmt,
        p: &Packet,
        end_ns: u64,
        out: &mut Vec<Request>,
    ) {
        let b = &p.body;
        if b.len() >= 9 {
            let id = u32::from_le_bytes([b[1], b[2], b[3], b[4]]);
            let cols = u64::from(u16::from_le_bytes([b[5], b[6]]));
            let params = u64::from(u16::from_le_bytes([b[7], b[8]]));
            if c.statements.len() >= MAX_NAMED && !c.statements.contains_key(&id) {
                c.statements.clear();
            }
            c.statements.insert(id, stmt);
            c.last_prepared = Some(id);
            if params + cols > 0 {
                c.resp = Resp::PrepareDefs { params, cols };
                // The operation ends with its definitions.
                return;
            }
        }
        self.result_end(c, p, end_ns, out);
    }

    /// One packet of a prepare's definitions: parameters (and the old protocol's `EOF`), then
    /// columns (and its `EOF`, which may follow after the operation ended: the next packet of
    /// that sequence is skipped if it is one).
    fn prepare_def(
        &mut self,
        c: &mut Conn,
        (params, cols): (u64, u64),
        p: &Packet,
        end_ns: u64,
        out: &mut Vec<Request>,
    ) {
        if params == 0 && p.is_eof() {
            // The `EOF` after the parameters.
            return;
        }
        let (params, cols) = if params > 0 {
            (params - 1, cols)
        } else {
            (0, cols.saturating_sub(1))
        };
        c.resp = Resp::PrepareDefs { params, cols };
        if params == 0 && cols == 0 {
            c.trailing_eof = Some(c.next_seq);
            self.result_end(c, p, end_ns, out);
        }
    }

    /// A result ended with packet `p`: the operation it completes, if any.
    fn result_end(&mut self, c: &mut Conn, p: &Packet, end_ns: u64, out: &mut Vec<Request>) {
        let more = !p.is_err() && p.more_results();
        let status = match p.error_code() {
            Some(e) => Status::Code(u32::from(e)),
            None => Status::Text(self.ok.clone()),
        };
        c.resp = Resp::Start;
        let Some(u) = c.units.front_mut() else {
            return;
        };
        let (start_ns, tgid) = (u.start_ns, u.tgid);
        if more {
            // Another result of the same command: a statement of a multi-statement query ends
            // here; a procedure's results go on to its last.
            if let What::Query(stmts) = &mut u.what {
                if stmts.len() > 1 {
                    let s = stmts.pop_front().expect("checked");
                    Self::emit(
                        c,
                        s.op,
                        s.table,
                        start_ns,
                        tgid,
                        end_ns,
                        Some(status),
                        None,
                        out,
                    );
                }
            }
            return;
        }
        let u = c.units.pop_front().expect("checked");
        c.next_seq = 1;
        let (op, table) = self.name(u.what);
        Self::emit(
            c,
            op,
            table,
            start_ns,
            tgid,
            end_ns,
            Some(status),
            None,
            out,
        );
    }

    /// The connection is gone (or waited too long): commands still waiting end without reply.
    fn close(&mut self, mut c: Box<Conn>, out: &mut Vec<Request>, error: &'static str) {
        let end = c.last_ns;
        while let Some(u) = c.units.pop_front() {
            let (op, table) = self.name(u.what);
            Self::emit(
                &c,
                op,
                table,
                u.start_ns,
                u.tgid,
                end,
                None,
                Some(error),
                out,
            );
        }
    }

    fn name(&self, what: What) -> (&'static str, Arc<str>) {
        match what {
            What::Query(mut stmts) => {
                let s = stmts.pop_front().unwrap_or_else(|| self.statements.other());
                (s.op, s.table)
            }
            What::Prepare(s) => ("PREPARE", s.table),
            What::Execute(s) => (s.op, s.table),
            What::Fetch => ("STMT_FETCH", self.ok.clone()),
            What::FieldList => ("FIELD_LIST", self.ok.clone()),
            What::OnePacket(op) | What::Simple(op) => (op, self.ok.clone()),
        }
    }
}

impl Protocol for Mysql {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn on_event(&mut self, ev: &Event<'_>, out: &mut Vec<Request>) {
        match ev.kind {
            Kind::Data => self.on_data(ev, out),
            Kind::Close => {
                if let Some(c) = self.conns.closed(ev.sk, ev.ts_ns) {
                    self.close(c, out, "connection_closed");
                }
            }
            Kind::Exchange | Kind::Request => self.unparsed.invalid += 1,
        }
    }

    fn poll(&mut self, now_ns: u64, conns: &dyn ConnTable, out: &mut Vec<Request>) {
        // The oldest command of a connection unanswered for too long times out, and so do
        // those behind it.
        let timeout = self.timeout_ns;
        let late = self.conns.picked(|c| {
            (c.units.front()).is_some_and(|u| now_ns.saturating_sub(u.start_ns) >= timeout)
        });
        for sk in late {
            let Some(mut c) = self.conns.remove(sk) else {
                continue;
            };
            let units: Vec<Unit> = c.units.drain(..).collect();
            c.resp = Resp::Start;
            for u in units {
                let (op, table) = self.name(u.what);
                Self::emit(
                    &c,
                    op,
                    table,
                    u.start_ns,
                    u.tgid,
                    now_ns,
                    None,
                    Some("timeout"),
                    out,
                );
            }
            self.conns.put(sk, c);
        }
        for c in self.conns.sweep(now_ns, conns) {
            self.close(c, out, "connection_closed");
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

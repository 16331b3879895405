//! HTTP/2 (cleartext, prior knowledge) and gRPC over it: the framer ([`frame`]), one HPACK
//! decoder per connection and direction (`httlib-hpack`, its dynamic table bounded), and the
//! tracker that pairs each stream's request with its response.
//!
//! - A request starts at its HEADERS (`:method`, `:path`, `content-type`) and ends at the
//!   END_STREAM of its response (the last DATA frame, or the trailers) or at a RST_STREAM
//!   (`error_type="stream_reset"`, with the status if one came); streams a GOAWAY says the
//!   server never processed end as `goaway`, and those open when the connection goes as
//!   `connection_closed`. Informational responses (1xx) do not end anything.
//! - `application/grpc*` requests are gRPC calls, exported in OpenTelemetry's RPC families
//!   with `rpc_method` (the path, `/package.Service/Method`) and `rpc_grpc_status_code` (from
//!   the trailers or a trailers-only response; without one, mapped from the HTTP status as
//!   gRPC clients do); a streaming call is one call, ended by its trailers. The rest are HTTP
//!   requests in the HTTP families with `network_protocol_version="2"`.
//! - A header block the decoder could not read (lost bytes, a block longer than the framer
//!   keeps, a decoding error) leaves its direction's table unknown: from then on the
//!   direction's names are `_unknown` (never a wrong one), its streams still counted, and
//!   `observer_http2_header_table_unsynced_total{reason="undecodable"}` counts it.
//! - A connection joined mid-way (opened before the observer; the kernel claims it at a call
//!   of whole frames) has tables whose older entries were never seen. Its decoders start with
//!   placeholders for them ([`Decoder::joined`]): a field from the static table, a literal, or
//!   an entry added since the join decodes as itself, one from before as `_unknown`. Which
//!   end serves is read from the first block that says it (request or response
//!   pseudo-headers); a request whose `content-type` is unknown is a gRPC call when its
//!   response ends with trailers. `observer_http2_header_table_unsynced_total{reason="joined"}`
//!   counts the directions joined. Each direction is framed from its first call of whole
//!   frames ([`frame::whole_frames`]; the kernel claims at such a call, but the other
//!   direction may go on in the middle of a frame).

pub mod frame;
mod hpack;

use std::{collections::HashMap, sync::Arc};

use observer_common::{L7_GRPC, L7_HTTP2};

use super::{
    event::Kind,
    http1::{parse::Method, Routes},
    stream::{tracked, CallPos, Calls, Conns, Ends, Input, Op, Unparsed},
    ConnTable, Event, Protocol, Request, Settings, Side, Spec, Status,
};
use frame::{Broken, Frame, Framer};
use hpack::{Decoder, Strings, MAX_TABLE};

/// HTTP/2 requests, in the HTTP families.
pub static SPEC: Spec = Spec {
    id: L7_HTTP2,
    name: "http2",
    constant_labels: &[("network_protocol_version", "2")],
    ..super::http1::BASE
};

/// gRPC calls (over HTTP/2): OpenTelemetry's RPC families, as OBI/Beyla export them.
pub static GRPC_SPEC: Spec = Spec {
    id: L7_GRPC,
    name: "grpc",
    server: super::Family {
        name: "rpc_server_duration_seconds",
        help: "Duration of RPCs answered, from the request's headers read to the response's end written",
    },
    client: super::Family {
        name: "rpc_client_duration_seconds",
        help: "Duration of RPCs made, from the request's headers written to the response's end read",
    },
    operation_label: "rpc_system",
    server_target_label: "rpc_method",
    client_target_label: Some("rpc_method"),
    status_label: "rpc_grpc_status_code",
    constant_labels: &[],
    apdex: false,
    connection_type: "",
    failed: grpc_failed,
    messages: Some(["rpc_server_messages", "rpc_client_messages"]),
    url_scheme: false,
};

/// Any status but OK, or none at all; not an unknown one (a connection joined mid-way).
fn grpc_failed(status: Option<&Status>, error: Option<&'static str>) -> bool {
    match status {
        _ if error.is_some() => true,
        Some(Status::Code(c)) => *c != 0,
        Some(Status::Text(_)) => false,
        None => true,
    }
}

/// Streams open per connection before new ones are not followed (counted).
const MAX_STREAMS: usize = 1024;
/// Distinct gRPC method names shared as label values before further ones are `_OTHER` (the
/// per-service cap of targets applies after).
const MAX_METHODS: usize = 4096;
/// The name of what a header block that could not be read asked for.
const UNKNOWN: &str = "_unknown";

/// One stream: what its request asked, when, and what its response said so far.
#[derive(Debug)]
struct H2Stream {
    method: &'static str,
    target: Arc<str>,
    /// `None`: the `content-type` is unknown (joined mid-way); then `rpc` is the target as a
    /// gRPC method, should the response end with trailers.
    grpc: Option<bool>,
    rpc: Option<Arc<str>>,
    start_ns: u64,
    tgid: u32,
    /// 0: a response came whose status could not be read.
    status: Option<u16>,
    grpc_status: Option<u32>,
    /// A response block had fields of unknown names (the gRPC status may be among them).
    unknown: bool,
    /// Response header blocks after the informational ones (2: trailers came).
    blocks: u8,
    /// gRPC messages of the request (0) and the response (1).
    messages: [Messages; 2],
}

/// The gRPC messages of one direction of a call, counted from the bodies' length prefixes
/// (a flag byte and a 4-byte length before each message).
#[derive(Debug, Default, Clone, Copy)]
struct Messages {
    count: u32,
    /// Bytes of the current message still to come.
    left: u32,
    /// Prefix bytes read of the next message, and its length as far as read.
    prefix: u8,
    len: u32,
    /// Body bytes were lost: the count is unknown.
    lost: bool,
}

impl Messages {
    fn feed(&mut self, bytes: Option<&[u8]>) {
        let Some(mut b) = bytes else {
            self.lost = true;
            return;
        };
        while !b.is_empty() && !self.lost {
            if self.left > 0 {
                let k = (self.left as usize).min(b.len());
                self.left -= k as u32;
                b = &b[k..];
                continue;
            }
            if self.prefix == 0 {
                self.count = self.count.saturating_add(1);
                self.len = 0;
            } else {
                self.len = self.len << 8 | u32::from(b[0]);
            }
            self.prefix += 1;
            b = &b[1..];
            if self.prefix == 5 {
                self.left = self.len;
                self.prefix = 0;
            }
        }
    }

    /// The count, if every message was seen whole (its prefix and its bytes).
    fn counted(&self) -> Option<u32> {
        (!self.lost && self.left == 0 && self.prefix == 0).then_some(self.count)
    }
}

/// The fields of a header block the tracker reads.
#[derive(Debug, Default)]
struct Fields {
    method: Option<Method>,
    path: Option<String>,
    /// From `content-type`; `None` without one.
    grpc: Option<bool>,
    status: Option<u16>,
    grpc_status: Option<u32>,
    /// A request pseudo-header (`:method`, `:path`, `:scheme`, `:authority`) came.
    request: bool,
    /// A field from before a mid-way join came, whose name is unknown.
    unknown: bool,
}

/// How a connection's bytes began, decided at its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Fresh,
    /// With the client's preface: both tables known from their start.
    Preface,
    /// Mid-way: `sided` once a block said which end serves.
    Joined {
        sided: bool,
    },
}

#[derive(Debug)]
struct Conn {
    ends: Ends,
    start: Start,
    /// The kernel's guess of the side was wrong (joined mid-way): direction 0 of the
    /// records carries responses.
    flip: bool,
    framers: [Framer; 2],
    /// Per direction: framed (joined mid-way, from its first call of whole frames).
    aligned: [bool; 2],
    decoders: [Decoder; 2],
    calls: Calls,
    streams: HashMap<u32, H2Stream, foldhash::fast::RandomState>,
    counted: [bool; 2],
    /// Whether the connection's last stream whose kind was known was a gRPC call: the kind
    /// of those whose `content-type` is unknown (joined mid-way) and whose response does not
    /// say it (a trailers-only response).
    grpc: Option<bool>,
    last_ns: u64,
}

tracked!(Conn);

/// The HTTP/2 protocol of the L7 path.
#[derive(Debug)]
pub struct Http2 {
    conns: Conns<Conn>,
    routes: Routes,
    methods: HashMap<String, Arc<str>, foldhash::fast::RandomState>,
    unknown: Arc<str>,
    other: Arc<str>,
    pub unparsed: Unparsed,
    /// Header blocks that left their direction's table unknown.
    pub unsynced: u64,
    /// Directions joined mid-way, their tables' older entries unknown.
    pub joined: u64,
    /// Huffman-coded strings decoded, for every connection's decoders.
    strings: Strings,
}

impl Http2 {
    pub fn new(_settings: &Settings) -> Self {
        Self {
            conns: Conns::default(),
            routes: Routes::default(),
            methods: HashMap::default(),
            unknown: Arc::from(UNKNOWN),
            other: Arc::from("_OTHER"),
            unparsed: Unparsed::default(),
            unsynced: 0,
            joined: 0,
            strings: Strings::default(),
        }
    }

    fn on_data(&mut self, ev: &Event<'_>, out: &mut Vec<Request>) {
        let Some(d) = ev.data else { return };
        let _ = self.conns.make_room(ev.sk);
        let requests = d.send == (ev.side == Side::Client);
        let mut c = self.conns.take(ev.sk, d.end_ns, || Conn {
            ends: Ends::of(&SPEC, ev),
            start: Start::Fresh,
            flip: false,
            // The kernel claims a connection at the client's preface, or mid-way.
            framers: [Framer::client(), Framer::server()],
            aligned: [true; 2],
            decoders: [Decoder::new(), Decoder::new()],
            calls: Calls::default(),
            streams: HashMap::default(),
            counted: [false; 2],
            grpc: None,
            last_ns: d.end_ns,
        });
        let mut calls = c.calls;
        calls.record(usize::from(!requests), &d, ev.tgid, |dir, input, call| {
            if c.start == Start::Fresh {
                self.begin(&mut c, dir, input);
            }
            if !c.aligned[dir] {
                match input {
                    Input::Bytes(b)
                        if call.seen as usize == b.len()
                            && frame::whole_frames(b, call.len as usize) =>
                    {
                        c.aligned[dir] = true;
                    }
                    _ => return,
                }
            }
            // The framer out of the connection while it hands frames to the tracker, which
            // reads them in place (header blocks are not copied).
            let mut framer = std::mem::replace(&mut c.framers[dir], Framer::server());
            let mut on = |f: Frame<'_>| self.on_frame(&mut c, dir, f, call, out);
            match input {
                Input::Gap(n) => framer.gap(n, &mut on),
                Input::Bytes(b) => framer.feed(b, &mut on),
            }
            c.framers[dir] = framer;
            if let Some(b) = c.framers[dir].broken() {
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

    /// The connection's first input, in direction `dir`: the client's preface, or a
    /// connection joined mid-way.
    fn begin(&mut self, c: &mut Conn, dir: usize, input: Input<'_>) {
        let preface = match input {
            // Lost: as from the start (the framer waits for the preface it cannot see).
            Input::Gap(_) => true,
            Input::Bytes(b) => {
                let n = b.len().min(frame::PREFACE.len());
                dir == 0 && b[..n] == frame::PREFACE[..n]
            }
        };
        if preface {
            c.start = Start::Preface;
            return;
        }
        c.start = Start::Joined { sided: false };
        c.framers = [Framer::server(), Framer::server()];
        c.aligned = [false; 2];
        c.decoders = [Decoder::joined(), Decoder::joined()];
        self.joined += 2;
    }

    /// Joined mid-way: the first block that says whether it is a request or a response
    /// fixes which end serves, the kernel's guess (by ports) corrected if it was wrong.
    fn side_from(&mut self, c: &mut Conn, dir: usize, f: &Fields) {
        if c.start != (Start::Joined { sided: false }) {
            return;
        }
        let requests = if f.request {
            dir
        } else if f.status.is_some() {
            1 - dir
        } else {
            return;
        };
        c.start = Start::Joined { sided: true };
        if requests != 0 {
            c.flip = true;
            c.ends.side = match c.ends.side {
                Side::Client => Side::Server,
                Side::Server => Side::Client,
            };
        }
    }

    /// Reads a header block with direction `dir`'s decoder.
    fn decode(&mut self, c: &mut Conn, dir: usize, block: Option<&[u8]>) -> Option<Fields> {
        let dec = &mut c.decoders[dir];
        dec.0.as_ref()?;
        let mut f = Fields::default();
        let ok = match block {
            Some(b) => dec.decode(&mut self.strings, b, |name, value| match name {
                b"" => f.unknown = true,
                b":method" => {
                    f.request = true;
                    f.method = Some(Method::from_token(value));
                }
                b":path" => {
                    f.request = true;
                    f.path = Some(String::from_utf8_lossy(value).into_owned());
                }
                b":scheme" | b":authority" => f.request = true,
                b":status" => {
                    f.status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok())
                }
                b"content-type" => f.grpc = Some(value.starts_with(b"application/grpc")),
                b"grpc-status" => {
                    f.grpc_status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok())
                }
                _ => {}
            }),
            None => {
                dec.0 = None;
                false
            }
        };
        if ok {
            Some(f)
        } else {
            self.unsynced += 1;
            None
        }
    }

    fn on_frame(
        &mut self,
        c: &mut Conn,
        dir: usize,
        f: Frame<'_>,
        call: CallPos,
        out: &mut Vec<Request>,
    ) {
        let client = c.ends.side == Side::Client;
        match f {
            Frame::Headers {
                stream,
                block,
                end_stream,
            } => {
                let fields = self.decode(c, dir, block);
                if let Some(f) = &fields {
                    self.side_from(c, dir, f);
                }
                let role = dir ^ usize::from(c.flip);
                if role == 0 {
                    if c.streams.contains_key(&stream) {
                        // A request's trailers.
                        return;
                    }
                    if c.streams.len() >= MAX_STREAMS {
                        self.unparsed.pending_overflow += 1;
                        return;
                    }
                    let s = self.request(
                        fields,
                        if client { call.start_ns } else { call.end_ns },
                        call.tgid,
                    );
                    c.grpc = s.grpc.or(c.grpc);
                    c.streams.insert(stream, s);
                    return;
                }
                let Some(s) = c.streams.get_mut(&stream) else {
                    // A pushed stream (even id) is not a request of this client; joined
                    // mid-way, streams requested before the join end unseen.
                    if stream % 2 == 1 && c.start == Start::Preface {
                        self.unparsed.response_without_request += 1;
                    }
                    return;
                };
                match fields {
                    Some(f) => {
                        if let Some(code) = f.status {
                            if (100..200).contains(&code) {
                                return;
                            }
                            s.status = Some(code);
                        } else if s.status.is_none() {
                            // Unknown names: a response all the same.
                            s.status = Some(0);
                        }
                        s.grpc_status = f.grpc_status.or(s.grpc_status);
                        s.unknown |= f.unknown;
                    }
                    None => {
                        s.status = s.status.or(Some(0));
                        s.unknown = true;
                    }
                }
                s.blocks = s.blocks.saturating_add(1);
                if end_stream {
                    self.end(c, stream, call, None, out);
                }
            }
            Frame::Promise { block } => {
                // Pushed streams are not requests of this client; the block keeps the table.
                let _ = self.decode(c, dir, block);
            }
            Frame::Body { stream, bytes } => {
                let role = dir ^ usize::from(c.flip);
                if let Some(s) = c.streams.get_mut(&stream) {
                    if s.grpc != Some(false) {
                        s.messages[role].feed(bytes);
                    }
                }
            }
            Frame::Data { stream, end_stream } => {
                if dir ^ usize::from(c.flip) == 1 && end_stream {
                    self.end(c, stream, call, None, out);
                }
            }
            Frame::Reset { stream, .. } => self.end(c, stream, call, Some("stream_reset"), out),
            Frame::GoAway { last_stream, .. } => {
                let never: Vec<u32> = c
                    .streams
                    .keys()
                    .copied()
                    .filter(|&s| s > last_stream)
                    .collect();
                for s in never {
                    self.end(c, s, call, Some("goaway"), out);
                }
            }
            Frame::Settings { header_table_size } => {
                // The size this end lets the other end's encoder use, hence the other
                // direction's decoder; a size beyond the bound leaves that table unknowable.
                if let Some(n) = header_table_size {
                    if n as usize > MAX_TABLE && c.decoders[1 - dir].0.take().is_some() {
                        self.unsynced += 1;
                    }
                }
            }
        }
    }

    /// A request stream begins with what its header block said (`None`: unreadable).
    fn request(&mut self, fields: Option<Fields>, start_ns: u64, tgid: u32) -> H2Stream {
        let f = fields.unwrap_or(Fields {
            unknown: true,
            ..Fields::default()
        });
        // Without `content-type`: not gRPC, unless its name may be among the unknown ones.
        let grpc = f.grpc.or((!f.unknown).then_some(false));
        let (target, rpc) = match (f.path, grpc) {
            (None, _) if f.unknown => (self.unknown.clone(), None),
            (path, Some(true)) => (self.rpc_method(&path.unwrap_or_default()), None),
            (path, Some(false)) => (self.routes.of(&path.unwrap_or_default()), None),
            (Some(path), None) => (self.routes.of(&path), Some(self.rpc_method(&path))),
            (None, None) => (self.unknown.clone(), None),
        };
        let method = match f.method {
            Some(m) => m.as_str(),
            None if f.unknown => UNKNOWN,
            None => "_OTHER",
        };
        H2Stream {
            method,
            target,
            grpc,
            rpc,
            start_ns,
            tgid,
            status: None,
            grpc_status: None,
            unknown: false,
            blocks: 0,
            messages: [Messages::default(); 2],
        }
    }

    /// A gRPC method's label value (its path, without query or fragment), capped.
    fn rpc_method(&mut self, path: &str) -> Arc<str> {
        let name = path.split(['?', '#']).next().unwrap_or_default();
        match self.methods.get(name) {
            Some(m) => m.clone(),
            None if self.methods.len() < MAX_METHODS => {
                let m: Arc<str> = Arc::from(name);
                self.methods.insert(name.to_string(), m.clone());
                m
            }
            None => self.other.clone(),
        }
    }

    /// Stream `id` ends in this call (its response's end, a reset, the connection's end).
    fn end(
        &mut self,
        c: &mut Conn,
        id: u32,
        call: CallPos,
        error: Option<&'static str>,
        out: &mut Vec<Request>,
    ) {
        let client = c.ends.side == Side::Client;
        let end_ns = if client { call.end_ns } else { call.start_ns };
        if let Some(s) = c.streams.remove(&id) {
            let grpc = kind(&s, c.grpc);
            c.grpc = Some(grpc);
            out.push(finished(&c.ends, s, grpc, end_ns, error));
        }
    }

    fn close(&mut self, mut c: Box<Conn>, out: &mut Vec<Request>) {
        let end = c.last_ns;
        for (_, s) in c.streams.drain() {
            let grpc = kind(&s, c.grpc);
            out.push(finished(&c.ends, s, grpc, end, Some("connection_closed")));
        }
    }
}

/// Whether a stream is a gRPC call: by its `content-type`; without one known (joined
/// mid-way), when its response ended with trailers, else as the connection's last call.
fn kind(s: &H2Stream, conn: Option<bool>) -> bool {
    s.grpc
        .or((s.blocks >= 2).then_some(true))
        .or(conn)
        .unwrap_or(false)
}

/// The request a stream was (a gRPC call if `grpc`), ended at `end_ns`.
fn finished(
    ends: &Ends,
    s: H2Stream,
    grpc: bool,
    end_ns: u64,
    error: Option<&'static str>,
) -> Request {
    let unknown = || Status::Text(Arc::from(UNKNOWN));
    let (spec, op, status, target) = if grpc {
        // Without `grpc-status`, a client maps the HTTP status; not when the status may be
        // among the unknown names.
        let code = match (s.grpc_status, s.status) {
            (Some(g), _) => Some(Status::Code(g)),
            (None, _) if s.unknown => Some(unknown()),
            (None, Some(0)) => Some(unknown()),
            (None, http) => http.map(|c| Status::Code(grpc_of_http(c))),
        };
        let target = s.rpc.unwrap_or(s.target);
        (&GRPC_SPEC, "grpc", code, target)
    } else {
        let status = s.status.map(|c| {
            if c == 0 {
                unknown()
            } else {
                Status::Code(u32::from(c))
            }
        });
        (&SPEC, s.method, status, s.target)
    };
    let mut ends = ends.clone();
    ends.protocol = spec;
    let mut r = ends.request(
        Op {
            name: op,
            target,
            start_ns: s.start_ns,
            tgid: s.tgid,
        },
        end_ns,
        status,
        error,
    );
    if grpc {
        r.messages = s.messages[0]
            .counted()
            .zip(s.messages[1].counted())
            .map(|(a, b)| [a, b]);
    }
    r
}

/// The gRPC status a client reads from an HTTP status without `grpc-status` (gRPC's
/// "HTTP to gRPC status code mapping").
fn grpc_of_http(http: u16) -> u32 {
    match http {
        200 => 2,
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

impl Protocol for Http2 {
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
        for c in self.conns.sweep(now_ns, conns) {
            self.close(c, out);
        }
    }

    fn unparsed(&self) -> Vec<(&'static str, u64)> {
        self.unparsed.list(
            self.conns.evicted,
            &[
                ("header_table_undecodable", self.unsynced),
                ("header_table_joined", self.joined),
            ],
        )
    }

    fn conns(&self) -> usize {
        self.conns.len()
    }
}

#[cfg(test)]
mod tests;

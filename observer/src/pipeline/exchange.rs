//! HTTP exchanges from the kernel's message starts: pairs each request with its response per
//! connection and decides when a response ended, for the server side (a process answering) and
//! the client side (a process calling).
//!
//! The kernel sends one record per message start (with the first bytes of the message) and one
//! per close of a connection that carried HTTP; bodies never leave the kernel, which instead
//! keeps per-connection counters of the current message in each direction (bytes since its
//! start, time of the last call, last bytes). A message ends:
//! - within the call that started it, when that call moved all of it (the common case);
//! - at the last call of its direction before the next message start in that direction (the
//!   start record carries those counters), or before the close;
//! - when the counters, polled, show all its bytes (`Content-Length`) or the end of a chunked
//!   body; a message whose framing is unknown ends at its last call once nothing has moved for
//!   [`IDLE_END`].
//!
//! Latency: server side from the first byte of the request read to the last byte of the
//! response written; client side from the request written to the response's last byte read.
//! A request whose response never comes (close or reset first, or older than the timeout) is
//! still an exchange, with `error_type` and no status.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use observer_common::{
    HttpConn, HttpEvent, HTTP_DIR_SEND, HTTP_EV_CLOSE, HTTP_EV_START,
};

use super::http::{parse_request, parse_request_line, parse_response, parse_status_line, Method, Parsed};

/// A message of unknown framing ends this long after its last call.
pub const IDLE_END_NS: u64 = 1_000_000_000;
/// Requests waiting for a response, per connection (more are pipelined than any client does).
const MAX_PENDING: usize = 64;
/// Connections tracked; beyond, the longest idle one is dropped (counted).
pub const MAX_CONNS: usize = 65536;
/// A connection with nothing in flight is forgotten after this long without a record.
const IDLE_CONN_NS: u64 = 600_000_000_000;

/// Which end of the exchange the observed process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Server,
    Client,
}

/// A finished exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    pub side: Side,
    pub cgroup_id: u64,
    pub method: Method,
    /// Templated route (not yet capped).
    pub route: String,
    pub status: Option<u16>,
    /// OpenTelemetry `error.type` when no response came.
    pub error_type: Option<&'static str>,
    pub duration_ns: u64,
    /// The peer: the client (server side) or the server (client side).
    pub peer: IpAddr,
    pub peer_port: u16,
    /// A process that took part (the one that read or wrote the request), 0 if unknown.
    pub tgid: u32,
}

/// Messages the tracker could not use, by reason (the `reason` label).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unparsed {
    /// A start record whose bytes are no valid HTTP/1.x head.
    pub invalid: u64,
    /// A response with no request waiting for it (its request predates the observer).
    pub response_without_request: u64,
    /// Requests beyond [`MAX_PENDING`] on one connection.
    pub pending_overflow: u64,
    /// Connections dropped because [`MAX_CONNS`] were tracked.
    pub conns_evicted: u64,
}

#[derive(Debug, Clone)]
struct Request {
    method: Method,
    route: String,
    start_ns: u64,
    tgid: u32,
}

/// How the body of a response in flight ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Total bytes of the message (head + body).
    Length(u64),
    Chunked,
    /// Unknown (no framing headers within the prefix, or read-until-close).
    Unknown,
}

#[derive(Debug, Clone)]
struct InFlight {
    req: Request,
    status: u16,
    end: End,
}

#[derive(Debug, Default)]
struct Conn {
    cgroup_id: u64,
    peer: Option<(IpAddr, u16)>,
    pending: VecDeque<Request>,
    /// Side of the pending requests and the response in flight.
    side: Option<Side>,
    responding: Option<InFlight>,
    last_ns: u64,
}

/// The per-connection counters of one direction, as the kernel keeps them.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirCounters {
    pub bytes: u64,
    pub last_ns: u64,
    pub tail: [u8; 8],
}

impl DirCounters {
    fn out(c: &HttpConn) -> Self {
        Self { bytes: c.out_bytes, last_ns: c.out_last_ns, tail: c.out_tail }
    }
    fn inn(c: &HttpConn) -> Self {
        Self { bytes: c.in_bytes, last_ns: c.in_last_ns, tail: c.in_tail }
    }
}

/// Pairs requests and responses of every HTTP connection on the node.
#[derive(Debug)]
pub struct Tracker {
    conns: HashMap<u64, Conn, foldhash::fast::RandomState>,
    timeout_ns: u64,
    pub unparsed: Unparsed,
}

fn addr(family: u8, a: &[u8; 16]) -> IpAddr {
    if family == 10 {
        let v6 = Ipv6Addr::from(*a);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    } else {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    }
}

/// Where a head starts after the empty lines a client may send between messages.
fn skip_crlf(p: &[u8]) -> usize {
    p.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(p.len())
}

impl Tracker {
    pub fn new(timeout_ns: u64) -> Self {
        Self { conns: HashMap::default(), timeout_ns, unparsed: Unparsed::default() }
    }

    /// Connections tracked now.
    pub fn conns(&self) -> usize {
        self.conns.len()
    }

    /// Takes one kernel record; finished exchanges go to `out`.
    pub fn on_event(&mut self, ev: &HttpEvent, out: &mut Vec<Exchange>) {
        match ev.kind {
            HTTP_EV_START => self.on_start(ev, out),
            HTTP_EV_CLOSE => self.on_close(ev, out),
            _ => {}
        }
    }

    fn conn(&mut self, ev: &HttpEvent) -> &mut Conn {
        if !self.conns.contains_key(&ev.sk) && self.conns.len() >= MAX_CONNS {
            // Drop the longest idle connection to stay bounded.
            if let Some((&victim, _)) = self.conns.iter().min_by_key(|(_, c)| c.last_ns) {
                self.conns.remove(&victim);
                self.unparsed.conns_evicted += 1;
            }
        }
        let c = self.conns.entry(ev.sk).or_default();
        c.cgroup_id = ev.cgroup_id;
        c.last_ns = ev.ts_ns;
        c
    }

    fn on_start(&mut self, ev: &HttpEvent, out: &mut Vec<Exchange>) {
        let n = (ev.prefix_len as usize).min(ev.prefix.len());
        let prefix = &ev.prefix[..n];
        let send = ev.dir == HTTP_DIR_SEND;
        let is_response = prefix[skip_crlf(prefix)..].starts_with(b"HTTP/");
        tracing::trace!(
            sk = ev.sk,
            send,
            len = ev.len,
            tgid = ev.tgid,
            start = %String::from_utf8_lossy(&prefix[..prefix.len().min(24)]).escape_debug(),
            "message start"
        );
        let c = self.conn(ev);
        // Server side: requests are received, responses sent; client side the reverse.
        let side = match (is_response, send) {
            (false, false) | (true, true) => Side::Server,
            _ => Side::Client,
        };
        if c.side != Some(side) {
            // A connection changing roles (or first seen): nothing in flight carries over.
            c.pending.clear();
            c.responding = None;
            c.side = Some(side);
        }
        c.peer = Some((addr(ev.conn.family as u8, &ev.conn.raddr), ev.conn.rport));
        // The previous message in the response direction ended with the counters before this
        // record (a start in that direction) — or is still in flight.
        let resp_dir = if side == Side::Server { DirCounters::out(&ev.conn) } else { DirCounters::inn(&ev.conn) };
        if is_response {
            if let Some(f) = c.responding.take() {
                finish(c, f, resp_dir.last_ns, out);
            }
            let mut unparsed = 0;
            let mut orphan = 0;
            Self::responses(c, prefix, ev, out, &mut unparsed, &mut orphan);
            self.unparsed.invalid += unparsed;
            self.unparsed.response_without_request += orphan;
        } else {
            if let Some(f) = &c.responding {
                // A new request while a response is in flight: it may have ended already.
                if done(f.end, &resp_dir) {
                    let f = c.responding.take().expect("checked");
                    finish(c, f, resp_dir.last_ns, out);
                }
            }
            let mut overflow = 0;
            let ok = Self::requests(c, prefix, ev.ts_ns, ev.tgid, &mut overflow);
            self.unparsed.pending_overflow += overflow;
            if !ok {
                self.unparsed.invalid += 1;
            }
        }
    }

    /// Requests at the start of `prefix` (several when pipelined and within the prefix).
    fn requests(c: &mut Conn, prefix: &[u8], ts: u64, tgid: u32, overflow: &mut u64) -> bool {
        let mut at = 0;
        let mut any = false;
        loop {
            at += skip_crlf(&prefix[at..]);
            let rest = &prefix[at..];
            if rest.is_empty() {
                break;
            }
            let (req, next) = match parse_request(rest) {
                Parsed::Complete { head, head_len } => {
                    let body = head.framing.content_length.unwrap_or(0);
                    let next = if head.framing.chunked || head.framing.expect_continue {
                        None
                    } else {
                        Some(at + head_len + body as usize)
                    };
                    (Request { method: head.method, route: head.route, start_ns: ts, tgid }, next)
                }
                Parsed::Partial | Parsed::Invalid => match parse_request_line(rest) {
                    Some((method, route, _)) => (Request { method, route, start_ns: ts, tgid }, None),
                    None => break,
                },
            };
            any = true;
            if c.pending.len() >= MAX_PENDING {
                *overflow += 1;
            } else {
                c.pending.push_back(req);
            }
            match next {
                Some(n) if n < prefix.len() && n > at => at = n,
                _ => break,
            }
        }
        any
    }

    /// Responses at the start of `prefix`: each takes the oldest pending request.
    fn responses(
        c: &mut Conn,
        prefix: &[u8],
        ev: &HttpEvent,
        out: &mut Vec<Exchange>,
        unparsed: &mut u64,
        orphan: &mut u64,
    ) {
        let mut at = 0;
        loop {
            at += skip_crlf(&prefix[at..]);
            let rest = &prefix[at..];
            if rest.is_empty() {
                return;
            }
            let (status, head_len, framing) = match parse_response(rest) {
                Parsed::Complete { head, head_len } => (head.status, Some(head_len), Some(head.framing)),
                Parsed::Partial | Parsed::Invalid => match parse_status_line(rest) {
                    Some((status, _)) => (status, None, None),
                    None => {
                        if at == 0 {
                            *unparsed += 1;
                        }
                        return;
                    }
                },
            };
            if (100..200).contains(&status) && status != 101 {
                // Interim response (100 Continue, 103 Early Hints): the final one follows.
                match head_len {
                    Some(h) if at + h < prefix.len() => {
                        at += h;
                        continue;
                    }
                    _ => return,
                }
            }
            let Some(req) = c.pending.pop_front() else {
                *orphan += 1;
                return;
            };
            let bodyless = req.method == Method::Head || status == 204 || status == 304 || status == 101;
            let end = match (head_len, framing) {
                (Some(h), _) if bodyless => End::Length((at + h) as u64),
                (Some(h), Some(f)) => match (f.chunked, f.content_length) {
                    (true, _) => End::Chunked,
                    (false, Some(len)) => End::Length((at + h) as u64 + len),
                    (false, None) => End::Unknown,
                },
                _ => End::Unknown,
            };
            let f = InFlight { req, status, end };
            // Ended within the starting call? (A chunked body whose last chunk is within the
            // prefix, the call's data all in it.)
            let chunked_done = end == End::Chunked
                && ev.len as usize == prefix.len()
                && prefix.ends_with(b"0\r\n\r\n");
            if chunked_done {
                finish(c, f, ev.ts_ns, out);
                return;
            }
            match end {
                End::Length(total) if total <= ev.len as u64 => {
                    finish(c, f, ev.ts_ns, out);
                    // A further pipelined response may follow within the prefix.
                    let next = total as usize;
                    if next > at && next < prefix.len() {
                        at = next;
                        continue;
                    }
                    return;
                }
                _ => {
                    c.responding = Some(f);
                    return;
                }
            }
        }
    }

    fn on_close(&mut self, ev: &HttpEvent, out: &mut Vec<Exchange>) {
        let Some(mut c) = self.conns.remove(&ev.sk) else {
            return;
        };
        let resp_dir = match c.side {
            Some(Side::Server) => DirCounters::out(&ev.conn),
            _ => DirCounters::inn(&ev.conn),
        };
        if let Some(f) = c.responding.take() {
            finish(&mut c, f, resp_dir.last_ns, out);
        }
        while let Some(req) = c.pending.pop_front() {
            let d = ev.ts_ns.saturating_sub(req.start_ns);
            unanswered(&c, req, "connection_closed", d, out);
        }
    }

    /// Connections with a response in flight whose end the kernel counters can tell, and the
    /// counters' key: the caller looks each up in the kernel table.
    pub fn in_flight(&self) -> Vec<(u64, Side)> {
        self.conns
            .iter()
            .filter(|(_, c)| c.responding.is_some())
            .filter_map(|(&sk, c)| c.side.map(|s| (sk, s)))
            .collect()
    }

    /// Ends in-flight responses from the kernel's counters (`lookup` gives a connection's
    /// current counters, `None` when it is gone), times out requests that waited longer than
    /// the timeout, and forgets idle connections. `now_ns` is the kernel's monotonic clock.
    pub fn poll(
        &mut self,
        now_ns: u64,
        mut lookup: impl FnMut(u64) -> Option<HttpConn>,
        out: &mut Vec<Exchange>,
    ) {
        let timeout = self.timeout_ns;
        let mut forget = Vec::new();
        for (&sk, c) in self.conns.iter_mut() {
            if let Some(f) = &c.responding {
                let counters = lookup(sk).map(|k| match c.side {
                    Some(Side::Server) => DirCounters::out(&k),
                    _ => DirCounters::inn(&k),
                });
                if let Some(d) = counters {
                    let idle = now_ns.saturating_sub(d.last_ns);
                    // Unknown framing, or a chunked body whose end the counters cannot show
                    // (its last bytes were within a vectored or prefix-only call).
                    let stale = matches!(f.end, End::Unknown | End::Chunked) && idle >= IDLE_END_NS;
                    let too_long = now_ns.saturating_sub(f.req.start_ns) >= timeout && idle >= IDLE_END_NS;
                    if done(f.end, &d) || stale || too_long {
                        let f = c.responding.take().expect("checked");
                        finish(c, f, d.last_ns, out);
                    }
                }
            }
            while c.pending.front().is_some_and(|r| now_ns.saturating_sub(r.start_ns) >= timeout)
                && c.responding.is_none()
            {
                let req = c.pending.pop_front().expect("checked");
                unanswered(c, req, "timeout", timeout, out);
            }
            if c.pending.is_empty()
                && c.responding.is_none()
                && now_ns.saturating_sub(c.last_ns) >= IDLE_CONN_NS
            {
                forget.push(sk);
            }
        }
        for sk in forget {
            self.conns.remove(&sk);
        }
    }
}

/// Whether the counters of the response direction show the message complete.
fn done(end: End, d: &DirCounters) -> bool {
    match end {
        End::Length(total) => d.bytes >= total,
        End::Chunked => d.tail[3..] == *b"0\r\n\r\n" || d.tail.ends_with(b"\r\n0\r\n\r\n"),
        End::Unknown => false,
    }
}

fn finish(c: &Conn, f: InFlight, end_ns: u64, out: &mut Vec<Exchange>) {
    let (peer, peer_port) = c.peer.unwrap_or((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    out.push(Exchange {
        side: c.side.unwrap_or(Side::Server),
        cgroup_id: c.cgroup_id,
        method: f.req.method,
        route: f.req.route,
        status: Some(f.status),
        error_type: None,
        duration_ns: end_ns.saturating_sub(f.req.start_ns),
        peer,
        peer_port,
        tgid: f.req.tgid,
    });
}

fn unanswered(c: &Conn, req: Request, error: &'static str, d: u64, out: &mut Vec<Exchange>) {
    let (peer, peer_port) = c.peer.unwrap_or((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    out.push(Exchange {
        side: c.side.unwrap_or(Side::Server),
        cgroup_id: c.cgroup_id,
        method: req.method,
        route: req.route,
        status: None,
        error_type: Some(error),
        duration_ns: d,
        peer,
        peer_port,
        tgid: req.tgid,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use observer_common::{HTTP_DIR_RECV, HTTP_PREFIX};

    const SK: u64 = 0xffff_0000_1234;

    fn ev(kind: u8, dir: u8, ts: u64, len: u32, data: &[u8], conn: HttpConn) -> HttpEvent {
        let mut prefix = [0u8; HTTP_PREFIX];
        let n = data.len().min(HTTP_PREFIX);
        prefix[..n].copy_from_slice(&data[..n]);
        let conn = HttpConn {
            family: 2,
            lport: 80,
            rport: 40000,
            laddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            raddr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..conn
        };
        HttpEvent {
            sk: SK,
            cgroup_id: 7,
            ts_ns: ts,
            conn,
            len,
            tgid: 1,
            kind,
            dir,
            prefix_len: n as u16,
            _pad0: 0,
            prefix,
        }
    }

    fn start(dir: u8, ts: u64, data: &[u8]) -> HttpEvent {
        ev(HTTP_EV_START, dir, ts, data.len() as u32, data, HttpConn::default())
    }

    const GET: &[u8] = b"GET /users/42?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    #[test]
    fn server_keep_alive_exchanges_end_in_the_writing_call() {
        let mut t = Tracker::new(30_000_000_000);
        let mut out = Vec::new();
        for i in 0..3u64 {
            t.on_event(&start(HTTP_DIR_RECV, 1000 + i * 100, GET), &mut out);
            t.on_event(&start(HTTP_DIR_SEND, 1050 + i * 100, OK), &mut out);
        }
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|e| e.side == Side::Server
            && e.status == Some(200)
            && e.duration_ns == 50
            && e.route == "/users/{id}"
            && e.method == Method::Get
            && e.peer == IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))));
    }

    #[test]
    fn client_side_and_large_body_ends_by_counters() {
        let mut t = Tracker::new(30_000_000_000);
        let mut out = Vec::new();
        t.on_event(&start(HTTP_DIR_SEND, 1000, GET), &mut out);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
        let mut e = start(HTTP_DIR_RECV, 2000, head);
        e.len = 65536;
        t.on_event(&e, &mut out);
        assert!(out.is_empty());
        // Not all there yet.
        let partial = HttpConn { in_bytes: 500_000, in_last_ns: 3000, ..Default::default() };
        t.poll(3500, |_| Some(partial), &mut out);
        assert!(out.is_empty());
        let all = HttpConn {
            in_bytes: head.len() as u64 + 1_048_576,
            in_last_ns: 9000,
            ..Default::default()
        };
        t.poll(9500, |_| Some(all), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].side, Side::Client);
        assert_eq!(out[0].duration_ns, 8000);
    }

    #[test]
    fn pipelined_requests_and_responses() {
        let mut t = Tracker::new(30_000_000_000);
        let mut out = Vec::new();
        let three = [GET, GET, b"HEAD /x HTTP/1.1\r\n\r\n".as_slice()].concat();
        t.on_event(&start(HTTP_DIR_RECV, 100, &three), &mut out);
        let head_resp = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n";
        let resp = [OK, OK, head_resp.as_slice()].concat();
        t.on_event(&start(HTTP_DIR_SEND, 300, &resp), &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].method, Method::Head);
    }

    #[test]
    fn chunked_and_continue() {
        let mut t = Tracker::new(30_000_000_000);
        let mut out = Vec::new();
        t.on_event(
            &start(HTTP_DIR_RECV, 100, b"POST /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n"),
            &mut out,
        );
        t.on_event(&start(HTTP_DIR_SEND, 150, b"HTTP/1.1 100 Continue\r\n\r\n"), &mut out);
        assert!(out.is_empty());
        t.on_event(
            &start(HTTP_DIR_SEND, 400, b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
            &mut out,
        );
        assert!(out.is_empty());
        let mut tail = [0u8; 8];
        tail.copy_from_slice(b"\r\n0\r\n\r\n".as_slice().rchunks(8).next().map(|c| {
            let mut t = [b'x'; 8];
            t[8 - c.len()..].copy_from_slice(c);
            t
        }).unwrap().as_slice());
        let c = HttpConn { out_bytes: 100, out_last_ns: 700, out_tail: tail, ..Default::default() };
        t.poll(800, |_| Some(c), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].status, out[0].duration_ns), (Some(201), 600));
    }

    #[test]
    fn unanswered_requests_are_counted_with_error_type() {
        let mut t = Tracker::new(1_000);
        let mut out = Vec::new();
        t.on_event(&start(HTTP_DIR_SEND, 100, GET), &mut out);
        t.poll(2000, |_| None, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].status, out[0].error_type), (None, Some("timeout")));
        t.on_event(&start(HTTP_DIR_SEND, 3000, GET), &mut out);
        t.on_event(&ev(HTTP_EV_CLOSE, 0, 3500, 0, b"", HttpConn::default()), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[1].error_type, out[1].duration_ns), (Some("connection_closed"), 500));
    }

    #[test]
    fn junk_is_counted_not_tracked() {
        let mut t = Tracker::new(1_000);
        let mut out = Vec::new();
        t.on_event(&start(HTTP_DIR_RECV, 100, b"GET \x00\x01\x02 junk"), &mut out);
        t.on_event(&start(HTTP_DIR_SEND, 200, OK), &mut out);
        assert!(out.is_empty());
        assert_eq!(t.unparsed.invalid, 1);
        assert_eq!(t.unparsed.response_without_request, 1);
    }
}

//! HTTP/1.x exchanges from the kernel's records: for the server side (a process answering) and
//! the client side (a process calling).
//!
//! The kernel pairs the common case itself: at each response start it sends one record with
//! the request still pending on the connection (its first call's time and first bytes) and the
//! response's first bytes. What it cannot see is done here, per connection: several requests
//! in one call (pipelining) queue up and each response start, or each response within one
//! call's bytes, takes the oldest; interim responses (`100 Continue`) are skipped; a response
//! whose body outlasts its first call stays in flight until the kernel's counters of the
//! response direction show it complete (`Content-Length` bytes, or the end of a chunked body),
//! which the next record of the connection carries or a lookup of its kernel state shows; one
//! of unknown framing ends at its last call once nothing has moved for [`IDLE_END_NS`].
//!
//! Latency: server side from the first byte of the request read to the last byte of the
//! response written; client side from the request written to the response's last byte read.
//! A request whose response never comes (the socket ends first, or it is older than the
//! timeout) is still a request, with `error_type` and no status. A request the kernel still
//! holds (no record yet) is found by a slow scan of the kernel's table.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use observer_common::{L7Conn, L7Dir, L7_HTTP1, L7_SNIP_MAX};

use super::{
    parse::{
        cut_request_line, parse_request, parse_response, parse_status_line, quick_request_line,
        quick_response, request_line, Method, Parsed, ResponseHead,
    },
    Routes, SPEC, SPEC_10,
};
use crate::l7::{
    event::{Kind, Part},
    ConnTable, Event, Request, Side, Status,
};

/// A message of unknown framing ends this long after its last call.
pub const IDLE_END_NS: u64 = 1_000_000_000;
/// Requests waiting for a response, per connection (more are pipelined than any client does).
const MAX_PENDING: usize = 64;
/// Connections tracked; beyond, the longest idle one is dropped (counted).
pub const MAX_CONNS: usize = 65536;
/// A connection with nothing in flight is forgotten after this long without a record.
const IDLE_CONN_NS: u64 = 600_000_000_000;
/// A connection whose kernel state is gone while a response was in flight ends it after this
/// long (the kernel's close record, if it sent one, arrives first).
const GONE_GRACE_NS: u64 = 300_000_000;

/// Records the tracker could not use, by reason (the `reason` label).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unparsed {
    /// A record whose bytes are no valid HTTP/1.x head.
    pub invalid: u64,
    /// A response with no request waiting for it (its request predates the observer, or timed
    /// out before the response came).
    pub response_without_request: u64,
    /// Requests beyond [`MAX_PENDING`] on one connection.
    pub pending_overflow: u64,
    /// Connections dropped because [`MAX_CONNS`] were tracked.
    pub conns_evicted: u64,
}

#[derive(Debug, Clone)]
struct Req {
    method: Method,
    route: Arc<str>,
    start_ns: u64,
    tgid: u32,
    /// The request line's minor version (HTTP/1.0 or 1.1).
    minor: u8,
}

/// How the body of a response in flight ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Total bytes of the message (head + body) from its first call on.
    Length(u64),
    Chunked,
    /// Unknown (no framing headers within the captured bytes, or read-until-close).
    Unknown,
}

#[derive(Debug, Clone)]
struct InFlight {
    req: Req,
    status: u16,
    end: End,
    /// When the response's first call ended (its end if no other call follows).
    first_ns: u64,
    /// When its connection's kernel state was first found gone.
    gone_ns: Option<u64>,
}

/// A complete response that found no request: held until the connection's next record, which
/// may be its request, sent before it but seen after it (`Event::answered`).
#[derive(Debug, Clone, Copy)]
struct Held {
    status: u16,
    end_ns: u64,
}

/// A held response not claimed within this long is a response without request.
const HELD_NS: u64 = 1_000_000_000;

#[derive(Debug, Default)]
struct Conn {
    cgroup_id: u64,
    held: Option<Held>,
    /// Held responses given up (counted by the tracker as responses without request).
    orphaned: u64,
    peer: Option<(IpAddr, u16)>,
    pending: VecDeque<Req>,
    side: Option<Side>,
    responding: Option<InFlight>,
    last_ns: u64,
    /// The kernel-held request (its first byte's time) already counted as a timeout.
    timed_out: Option<u64>,
    /// Its plaintext came from its TLS library.
    tls: bool,
}

/// Pairs requests and responses of every HTTP/1.x connection on the node.
#[derive(Debug)]
pub struct Tracker {
    conns: Conns,
    timeout_ns: u64,
    /// Kernel-held requests are scanned for timeouts this often.
    scan_every_ns: u64,
    last_scan_ns: u64,
    routes: Routes,
    pub unparsed: Unparsed,
}

/// Where a head starts after the empty lines a client may send between messages.
fn skip_crlf(p: &[u8]) -> usize {
    p.iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(p.len())
}

impl Tracker {
    pub fn new(timeout_ns: u64) -> Self {
        Self {
            conns: HashMap::default(),
            timeout_ns,
            scan_every_ns: (timeout_ns / 4).clamp(1_000_000_000, 10_000_000_000),
            last_scan_ns: 0,
            routes: Routes::default(),
            unparsed: Unparsed::default(),
        }
    }

    /// Connections tracked now.
    pub fn conns(&self) -> usize {
        self.conns.len()
    }

    /// Takes one kernel record; finished requests go to `out`.
    pub fn on_event(&mut self, ev: &Event<'_>, out: &mut Vec<Request>) {
        tracing::trace!(sk = ev.sk, kind = ?ev.kind, side = ?ev.side, "http1 record");
        if ev.answered {
            return self.on_answered(ev, out);
        }
        match ev.kind {
            Kind::Close => self.on_close(ev, out),
            Kind::Request => {
                let mut c = take(&mut self.conns, ev, out);
                if let Some(req) = take_request(&mut c, ev.request) {
                    let (ok, overflow) =
                        requests(&mut c, &mut self.routes, req.bytes, req.ts_ns, ev.tgid);
                    self.unparsed.pending_overflow += overflow;
                    self.unparsed.invalid += u64::from(!ok);
                }
                put(&mut self.conns, &mut self.unparsed, ev.sk, c);
            }
            Kind::Exchange => self.on_exchange(ev, out),
            // Only stream protocols send these.
            Kind::Data => self.unparsed.invalid += 1,
        }
    }

    fn on_exchange(&mut self, ev: &Event<'_>, out: &mut Vec<Request>) {
        let mut c = take(&mut self.conns, ev, out);
        // A response starts: the previous one in flight ended with the counters before it.
        if let Some(f) = c.responding.take() {
            finish(&c, f, ev.prev.last_ns, out);
        }
        if let Some(req) = take_request(&mut c, ev.request) {
            let (ok, overflow) = requests(&mut c, &mut self.routes, req.bytes, req.ts_ns, ev.tgid);
            self.unparsed.pending_overflow += overflow;
            self.unparsed.invalid += u64::from(!ok);
        }
        if let Some(resp) = ev.response {
            let mut unparsed = 0;
            let mut orphan = 0;
            responses(&mut c, resp, out, &mut unparsed, &mut orphan);
            self.unparsed.invalid += unparsed;
            self.unparsed.response_without_request += orphan;
        }
        put(&mut self.conns, &mut self.unparsed, ev.sk, c);
    }

    /// The request of the response held on its connection: one exchange.
    fn on_answered(&mut self, ev: &Event<'_>, out: &mut Vec<Request>) {
        let mut c = take(&mut self.conns, ev, out);
        let held = c.held.take();
        if let (Some(h), Some(req)) = (held, ev.request) {
            let mut one = Conn {
                side: c.side,
                cgroup_id: c.cgroup_id,
                peer: c.peer,
                ..Default::default()
            };
            let (ok, _) = requests(&mut one, &mut self.routes, req.bytes, req.ts_ns, ev.tgid);
            match one.pending.pop_front() {
                Some(r) => {
                    let d = h.end_ns.saturating_sub(r.start_ns);
                    out.push(request(&c, r, Some(h.status), None, d));
                }
                None => self.unparsed.response_without_request += 1,
            }
            self.unparsed.invalid += u64::from(!ok);
        } else if held.is_some() {
            self.unparsed.response_without_request += 1;
        }
        put(&mut self.conns, &mut self.unparsed, ev.sk, c);
    }

    fn on_close(&mut self, ev: &Event<'_>, out: &mut Vec<Request>) {
        let mut c = take(&mut self.conns, ev, out);
        self.unparsed.response_without_request += std::mem::take(&mut c.orphaned);
        if let Some(f) = c.responding.take() {
            finish(&c, f, ev.prev.last_ns, out);
        }
        if let Some(req) = take_request(&mut c, ev.request) {
            let (ok, overflow) = requests(&mut c, &mut self.routes, req.bytes, req.ts_ns, ev.tgid);
            self.unparsed.pending_overflow += overflow;
            self.unparsed.invalid += u64::from(!ok);
        }
        close_pending(&mut c, ev.ts_ns, out);
    }

    /// Ends in-flight responses from the kernel's counters, times out requests that waited
    /// longer than the timeout (queued here, or still held by the kernel), and forgets idle
    /// connections. `now_ns` is the kernel's monotonic clock.
    pub fn poll(&mut self, now_ns: u64, conns: &dyn ConnTable, out: &mut Vec<Request>) {
        let timeout = self.timeout_ns;
        let mut forget = Vec::new();
        let mut orphaned = 0;
        for (&sk, c) in self.conns.iter_mut() {
            if c.responding.is_some() {
                match conns.get(sk) {
                    Some(k) => {
                        let f = c.responding.as_ref().expect("checked");
                        let d = k.resp;
                        let idle = now_ns.saturating_sub(d.last_ns);
                        // Unknown framing, or a chunked body whose end the counters cannot show
                        // (its last bytes were within a vectored call's middle).
                        let stale =
                            matches!(f.end, End::Unknown | End::Chunked) && idle >= IDLE_END_NS;
                        let too_long =
                            now_ns.saturating_sub(f.req.start_ns) >= timeout && idle >= IDLE_END_NS;
                        if done(f.end, &d) || stale || too_long {
                            let f = c.responding.take().expect("checked");
                            finish(c, f, d.last_ns, out);
                        }
                    }
                    None => {
                        // The socket is gone; its close record (if the kernel had anything
                        // pending) comes first, else the response ended in its first call.
                        let f = c.responding.as_mut().expect("checked");
                        let gone = *f.gone_ns.get_or_insert(now_ns);
                        if now_ns.saturating_sub(gone) >= GONE_GRACE_NS {
                            let f = c.responding.take().expect("checked");
                            let end = f.first_ns;
                            finish(c, f, end, out);
                        }
                    }
                }
            }
            if c.held
                .is_some_and(|h| now_ns.saturating_sub(h.end_ns) >= HELD_NS)
            {
                c.held = None;
                orphaned += 1;
            }
            while c
                .pending
                .front()
                .is_some_and(|r| now_ns.saturating_sub(r.start_ns) >= timeout)
                && c.responding.is_none()
            {
                let req = c.pending.pop_front().expect("checked");
                unanswered(c, req, "timeout", timeout, out);
            }
            // Nothing pending: forgotten (a request counted as a timeout waits for its late
            // response or the socket's end, at most IDLE_CONN_NS).
            if c.pending.is_empty()
                && c.responding.is_none()
                && c.held.is_none()
                && (c.timed_out.is_none() || now_ns.saturating_sub(c.last_ns) >= IDLE_CONN_NS)
            {
                forget.push(sk);
            }
        }
        for sk in forget {
            self.conns.remove(&sk);
        }
        self.unparsed.response_without_request += orphaned;
        if now_ns.saturating_sub(self.last_scan_ns) >= self.scan_every_ns {
            self.last_scan_ns = now_ns;
            self.scan_kernel(now_ns, conns, out);
        }
    }

    /// Requests the kernel still holds (no response started) that waited past the timeout:
    /// counted once as `timeout`; their late response, if any, finds no request.
    fn scan_kernel(&mut self, now_ns: u64, conns: &dyn ConnTable, out: &mut Vec<Request>) {
        let timeout = self.timeout_ns;
        let routes = &mut self.routes;
        let tracked = &mut self.conns;
        let mut evicted = 0;
        conns.scan(&mut |sk, k: &L7Conn| {
            if k.proto != L7_HTTP1 || k.req_ts == 0 || now_ns.saturating_sub(k.req_ts) < timeout {
                return;
            }
            if !tracked.contains_key(&sk) && tracked.len() >= MAX_CONNS {
                evicted += 1;
                return;
            }
            let c = tracked.entry(sk).or_default();
            if c.timed_out == Some(k.req_ts) {
                return;
            }
            let side = if k.side == observer_common::L7_SIDE_CLIENT {
                Side::Client
            } else {
                Side::Server
            };
            if c.side != Some(side) || c.cgroup_id != k.cgroup_id {
                c.pending.clear();
                c.responding = None;
                c.side = Some(side);
                c.cgroup_id = k.cgroup_id;
            }
            c.peer = Some((
                crate::l7::peer_addr(k.peer.family, &k.peer.addr),
                k.peer.port,
            ));
            c.last_ns = now_ns;
            c.timed_out = Some(k.req_ts);
            let n = usize::from(k.req_snip).min(k.req.len());
            let mut one = Conn {
                side: c.side,
                cgroup_id: c.cgroup_id,
                peer: c.peer,
                ..Default::default()
            };
            let _ = requests(&mut one, routes, &k.req[..n], k.req_ts, k.tgid);
            for req in one.pending.drain(..) {
                unanswered(c, req, "timeout", timeout, out);
            }
        });
        self.unparsed.conns_evicted += evicted;
    }
}

type Conns = HashMap<u64, Conn, foldhash::fast::RandomState>;

/// The connection of a record, out of the table (or new): most exchanges leave nothing behind,
/// so a connection is kept only while something is pending ([`put`]).
fn take(conns: &mut Conns, ev: &Event<'_>, out: &mut Vec<Request>) -> Conn {
    let mut c = conns.remove(&ev.sk).unwrap_or_default();
    if c.held.is_some() && !ev.answered {
        // Another record came first: the held response had no request after all.
        c.held = None;
        c.orphaned += 1;
    }
    let other_peer = c.peer.is_some_and(|p| p != (ev.peer, ev.peer_port));
    if c.side != Some(ev.side) || c.cgroup_id != ev.cgroup_id || other_peer {
        // Another connection on this socket's memory (another owner, side or peer): the one
        // followed here ended, its socket destroyed with nothing pending in the kernel (a
        // client that left without reading a response's body, say). What it had ends now, as
        // its socket's end would have ended it.
        if let Some(f) = c.responding.take() {
            let end = f.first_ns;
            finish(&c, f, end, out);
        }
        let end = c.last_ns;
        close_pending(&mut c, end, out);
        c.timed_out = None;
        c.side = Some(ev.side);
        c.cgroup_id = ev.cgroup_id;
    }
    c.peer = Some((ev.peer, ev.peer_port));
    c.tls = observer_common::is_tls_key(ev.sk);
    c.last_ns = ev.ts_ns;
    c
}

/// Keeps a connection that still waits for something (the longest idle one goes when full).
fn put(conns: &mut Conns, unparsed: &mut Unparsed, sk: u64, mut c: Conn) {
    unparsed.response_without_request += std::mem::take(&mut c.orphaned);
    if c.pending.is_empty() && c.responding.is_none() && c.timed_out.is_none() && c.held.is_none() {
        return;
    }
    if conns.len() >= MAX_CONNS {
        if let Some((&victim, _)) = conns.iter().min_by_key(|(_, c)| c.last_ns) {
            conns.remove(&victim);
            unparsed.conns_evicted += 1;
        }
    }
    conns.insert(sk, c);
}

/// The request a record carries, unless it is the kernel-held one already counted as a
/// timeout (then its response, if this is one, finds no request).
fn take_request<'a>(c: &mut Conn, req: Option<Part<'a>>) -> Option<Part<'a>> {
    let req = req?;
    if c.timed_out == Some(req.ts_ns) {
        c.timed_out = None;
        return None;
    }
    Some(req)
}

/// Queues the requests at the start of `bytes` (several when pipelined within them); returns
/// whether any was found and how many did not fit the queue.
fn requests(c: &mut Conn, routes: &mut Routes, bytes: &[u8], ts: u64, tgid: u32) -> (bool, u64) {
    let mut at = 0;
    let mut any = false;
    let mut overflow = 0;
    loop {
        at += skip_crlf(&bytes[at..]);
        let rest = &bytes[at..];
        if rest.is_empty() {
            break;
        }
        // The common case: one head and nothing after it, so no framing is needed to find a
        // next request: the request line alone.
        let alone = memchr::memmem::find(rest, b"\r\n\r\n").is_some_and(|i| i + 4 == rest.len());
        let (req, next) = match if alone {
            Parsed::Invalid
        } else {
            parse_request(rest)
        } {
            Parsed::Complete { head, head_len } => {
                let body = head.framing.content_length.unwrap_or(0);
                let next = if head.framing.chunked || head.framing.expect_continue {
                    None
                } else {
                    Some(at + head_len + body as usize)
                };
                let route = routes.templated(head.route);
                (
                    Req {
                        method: head.method,
                        route,
                        start_ns: ts,
                        tgid,
                        minor: head.minor_version,
                    },
                    next,
                )
            }
            Parsed::Partial | Parsed::Invalid => {
                let line = quick_request_line(rest)
                    .or_else(|| request_line(rest))
                    .map(|(method, target, minor)| (method, routes.of(target), minor))
                    // A request line longer than the kernel's snippet.
                    .or_else(|| {
                        (bytes.len() >= L7_SNIP_MAX)
                            .then(|| cut_request_line(rest))
                            .flatten()
                            .map(|(method, target, minor)| (method, routes.of(&target), minor))
                    });
                match line {
                    Some((method, route, minor)) => (
                        Req {
                            method,
                            route,
                            start_ns: ts,
                            tgid,
                            minor,
                        },
                        None,
                    ),
                    None => break,
                }
            }
        };
        any = true;
        if c.pending.len() >= MAX_PENDING {
            overflow += 1;
        } else {
            c.pending.push_back(req);
        }
        match next {
            Some(n) if n < bytes.len() && n > at => at = n,
            _ => break,
        }
    }
    (any, overflow)
}

/// Responses at the start of a response's first call: each takes the oldest pending request.
fn responses(
    c: &mut Conn,
    resp: Part<'_>,
    out: &mut Vec<Request>,
    unparsed: &mut u64,
    orphan: &mut u64,
) {
    let prefix = resp.bytes;
    let mut at = 0;
    loop {
        at += skip_crlf(&prefix[at..]);
        let rest = &prefix[at..];
        if rest.is_empty() {
            return;
        }
        let parsed = match quick_response(rest) {
            Some((status, head_len, framing)) => Parsed::Complete {
                head: ResponseHead {
                    status,
                    minor_version: rest[7] - b'0',
                    framing,
                },
                head_len,
            },
            None => parse_response(rest),
        };
        let (status, head_len, framing) = match parsed {
            Parsed::Complete { head, head_len } => {
                (head.status, Some(head_len), Some(head.framing))
            }
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
            // Its request may come next, sent before it but seen after it: held if it is
            // complete here and the first of the call (else a response without request).
            let whole = match (head_len, framing) {
                (Some(h), Some(f)) if !f.chunked => {
                    let total = (at + h) as u64 + f.content_length.unwrap_or(0);
                    (f.content_length.is_some() || matches!(status, 204 | 304))
                        && total <= u64::from(resp.len)
                }
                _ => false,
            };
            if at == 0 && whole && c.held.is_none() {
                c.held = Some(Held {
                    status,
                    end_ns: resp.ts_ns,
                });
            } else {
                *orphan += 1;
            }
            return;
        };
        let bodyless =
            req.method == Method::Head || status == 204 || status == 304 || status == 101;
        let end = match (head_len, framing) {
            (Some(h), _) if bodyless => End::Length((at + h) as u64),
            (Some(h), Some(f)) => match (f.chunked, f.content_length) {
                (true, _) => End::Chunked,
                (false, Some(len)) => End::Length((at + h) as u64 + len),
                (false, None) => End::Unknown,
            },
            _ => End::Unknown,
        };
        let f = InFlight {
            req,
            status,
            end,
            first_ns: resp.ts_ns,
            gone_ns: None,
        };
        // Ended within the starting call? (A chunked body whose last chunk is within the
        // captured bytes, the call's data all in them.)
        let chunked_done = end == End::Chunked
            && resp.len as usize == prefix.len()
            && prefix.ends_with(b"0\r\n\r\n");
        if chunked_done {
            finish(c, f, resp.ts_ns, out);
            return;
        }
        match end {
            End::Length(total) if total <= u64::from(resp.len) => {
                finish(c, f, resp.ts_ns, out);
                // A further pipelined response may follow within the captured bytes.
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

/// Whether the counters of the response direction show the message complete.
fn done(end: End, d: &L7Dir) -> bool {
    match end {
        End::Length(total) => d.bytes >= total,
        End::Chunked => d.tail[3..] == *b"0\r\n\r\n" || d.tail.ends_with(b"\r\n0\r\n\r\n"),
        End::Unknown => false,
    }
}

fn request(
    c: &Conn,
    req: Req,
    status: Option<u16>,
    error: Option<&'static str>,
    d: u64,
) -> Request {
    let (peer, peer_port) = c.peer.unwrap_or((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    Request {
        protocol: if req.minor == 0 { &SPEC_10 } else { &SPEC },
        side: c.side.unwrap_or(Side::Server),
        cgroup_id: c.cgroup_id,
        tgid: req.tgid,
        peer,
        peer_port,
        operation: req.method.as_str(),
        target: req.route,
        status: status.map(|s| Status::Code(u32::from(s))),
        error_type: error,
        duration_ns: d,
        messages: None,
        tls: c.tls,
    }
}

fn finish(c: &Conn, f: InFlight, end_ns: u64, out: &mut Vec<Request>) {
    let d = end_ns.saturating_sub(f.req.start_ns);
    out.push(request(c, f.req, Some(f.status), None, d));
}

fn unanswered(c: &Conn, req: Req, error: &'static str, d: u64, out: &mut Vec<Request>) {
    out.push(request(c, req, None, Some(error), d));
}

/// Every request still waiting on a connection that ended.
fn close_pending(c: &mut Conn, end_ns: u64, out: &mut Vec<Request>) {
    while let Some(req) = c.pending.pop_front() {
        let d = end_ns.saturating_sub(req.start_ns);
        unanswered(c, req, "connection_closed", d, out);
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, collections::HashMap, net::IpAddr};

    use observer_common::{L7Peer, L7_REQ_MAX, L7_SIDE_CLIENT, L7_SIDE_SERVER};

    use super::*;

    const SK: u64 = 0xffff_0000_1234;
    const T: u64 = 30_000_000_000;
    const GET: &[u8] = b"GET /users/42?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    fn peer() -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))
    }

    fn ev<'a>(
        kind: Kind,
        side: Side,
        ts: u64,
        req: Option<(u64, &'a [u8])>,
        resp: Option<&'a [u8]>,
    ) -> Event<'a> {
        Event {
            sk: SK,
            cgroup_id: 7,
            kind,
            proto: L7_HTTP1,
            side,
            ts_ns: ts,
            request: req.map(|(t, b)| Part {
                ts_ns: t,
                len: b.len() as u32,
                bytes: b,
            }),
            response: resp.map(|b| Part {
                ts_ns: ts,
                len: b.len() as u32,
                bytes: b,
            }),
            prev: L7Dir::default(),
            peer: peer(),
            peer_port: 40000,
            tgid: 1,
            answered: false,
            data: None,
        }
    }

    /// A response start carrying the request it answers.
    fn exchange<'a>(side: Side, req_ts: u64, req: &'a [u8], ts: u64, resp: &'a [u8]) -> Event<'a> {
        ev(Kind::Exchange, side, ts, Some((req_ts, req)), Some(resp))
    }

    /// The kernel's table, as a test sets it.
    #[derive(Default)]
    struct Table(RefCell<HashMap<u64, L7Conn>>);

    impl ConnTable for Table {
        fn get(&self, sk: u64) -> Option<L7Conn> {
            self.0.borrow().get(&sk).copied()
        }
        fn scan(&self, f: &mut dyn FnMut(u64, &L7Conn)) {
            for (sk, c) in self.0.borrow().iter() {
                f(*sk, c);
            }
        }
    }

    fn state(resp: L7Dir) -> L7Conn {
        L7Conn {
            cgroup_id: 7,
            cgroup_ptr: 0,
            req_ts: 0,
            orphan_ts: 0,
            resp,
            peer: L7Peer {
                family: 2,
                port: 40000,
                _pad: 0,
                addr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            },
            req_len: 0,
            resp_first: 0,
            tgid: 1,
            proto: L7_HTTP1,
            side: L7_SIDE_SERVER,
            flags: 0,
            carry_len: 0,
            req_snip: 0,
            carry: [0; observer_common::L7_CARRY_MAX],
            req: [0; L7_REQ_MAX],
        }
    }

    fn statuses(out: &[Request]) -> Vec<Option<u32>> {
        out.iter()
            .map(|r| r.status.as_ref().and_then(Status::code))
            .collect()
    }

    /// A client leaves without reading a response's body (BusyBox wget on a 404): its socket
    /// goes with nothing pending in the kernel, and the socket's memory serves another owner's
    /// connection before the response was found ended. The response ends then, counted once.
    #[test]
    fn a_response_in_flight_ends_when_its_socket_memory_serves_another_connection() {
        const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n<HTML>";
        for change in ["cgroup", "side", "peer"] {
            let mut t = Tracker::new(T);
            let mut out = Vec::new();
            t.on_event(&exchange(Side::Client, 100, GET, 150, NOT_FOUND), &mut out);
            assert!(out.is_empty(), "its body is still due");
            let mut next = exchange(Side::Client, 300, GET, 350, OK);
            match change {
                "cgroup" => next.cgroup_id = 9,
                "side" => next.side = Side::Server,
                _ => next.peer_port = 40001,
            }
            t.on_event(&next, &mut out);
            assert_eq!(statuses(&out), [Some(404), Some(200)], "{change}");
            assert_eq!(out[0].duration_ns, 50, "{change}");
            assert_eq!(out[0].cgroup_id, 7, "{change}");
        }
    }

    /// The request line's version is the series' `network_protocol_version`: HTTP/1.0 and 1.1
    /// requests are told apart, whatever version the answer's status line says (nginx answers
    /// 1.0 requests with `HTTP/1.1`), the whole head or only its request line read.
    #[test]
    fn the_request_lines_version_names_the_series() {
        let mut t = Tracker::new(T);
        let mut out = Vec::new();
        let heads: [&[u8]; 4] = [
            b"GET /a HTTP/1.0\r\nHost: x\r\n\r\n",
            GET,
            b"GET /b HTTP/1.0\r\nHost: x\r\nX-Cut: ",
            b"GET /c HTTP/1.1\r\nHost: x\r\nX-Cut: ",
        ];
        for (i, req) in heads.into_iter().enumerate() {
            let at = 1000 + i as u64 * 100;
            t.on_event(&exchange(Side::Server, at, req, at + 50, OK), &mut out);
        }
        let versions: Vec<_> = (out.iter()).map(|r| r.protocol.constant_labels).collect();
        let (v10, v11) = (
            &[("network_protocol_version", "1.0")],
            &[("network_protocol_version", "1.1")],
        );
        assert_eq!(versions, [v10, v11, v10, v11]);
        assert!(out[0].protocol != out[1].protocol, "apart in the totals");
        assert_eq!(out[0].protocol.name, "http");
    }

    /// A request line longer than the kernel keeps (a long query string: search forms, OAuth
    /// redirects, tracking parameters) is still a request: its method and the route of its
    /// path. A line cut short anywhere else is not.
    #[test]
    fn a_request_line_longer_than_the_snippet_is_a_request() {
        let mut t = Tracker::new(T);
        let mut out = Vec::new();
        let long = format!(
            "GET /search?q={} HTTP/1.1\r\nHost: x\r\n\r\n",
            "a".repeat(400)
        );
        let snip = &long.as_bytes()[..L7_SNIP_MAX];
        t.on_event(&exchange(Side::Server, 1000, snip, 1050, OK), &mut out);
        let long_path = format!("POST /{} HTTP/1.1\r\n\r\n", "b".repeat(300));
        let snip = &long_path.as_bytes()[..L7_SNIP_MAX];
        t.on_event(&exchange(Side::Server, 2000, snip, 2050, OK), &mut out);
        let got: Vec<_> = (out.iter())
            .map(|r| {
                (
                    r.operation,
                    &*r.target,
                    r.status.as_ref().and_then(Status::code),
                )
            })
            .collect();
        assert_eq!(got[0], ("GET", "/search", Some(200)));
        assert_eq!(got[1], ("POST", "/...", Some(200)));
        assert_eq!(out.len(), 2);
        assert_eq!(t.unparsed, Unparsed::default());
        // Cut before the snippet's end: no request line.
        t.on_event(
            &exchange(Side::Server, 3000, b"GET /metrics", 3050, OK),
            &mut out,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(t.unparsed.invalid, 1);
    }

    #[test]
    fn server_keep_alive_exchanges_end_in_the_writing_call() {
        let mut t = Tracker::new(T);
        let mut out = Vec::new();
        for i in 0..3u64 {
            t.on_event(
                &exchange(Side::Server, 1000 + i * 100, GET, 1050 + i * 100, OK),
                &mut out,
            );
        }
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|e| e.side == Side::Server
            && e.status == Some(Status::Code(200))
            && e.duration_ns == 50
            && &*e.target == "/users/{id}"
            && e.operation == "GET"
            && e.peer == peer()));
        assert_eq!(t.conns(), 0, "nothing pending, nothing kept");
    }

    #[test]
    fn client_side_large_body_ends_by_counters() {
        let mut t = Tracker::new(T);
        let mut out = Vec::new();
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
        let mut e = exchange(Side::Client, 1000, GET, 2000, head);
        e.response.as_mut().unwrap().len = 65536;
        t.on_event(&e, &mut out);
        assert!(out.is_empty());
        let table = Table::default();
        // Not all there yet.
        table.0.borrow_mut().insert(
            SK,
            state(L7Dir {
                bytes: 500_000,
                last_ns: 3000,
                tail: [0; 8],
            }),
        );
        t.poll(3500, &table, &mut out);
        assert!(out.is_empty());
        let all = L7Dir {
            bytes: head.len() as u64 + 1_048_576,
            last_ns: 9000,
            tail: [0; 8],
        };
        table.0.borrow_mut().insert(SK, state(all));
        t.poll(9500, &table, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].side, out[0].duration_ns), (Side::Client, 8000));
        assert_eq!(t.conns(), 0);
    }

    #[test]
    fn a_response_in_flight_ends_with_the_counters_of_the_next_record() {
        let mut t = Tracker::new(T);
        let mut out = Vec::new();
        let head = b"HTTP/1.1 203 OK\r\nContent-Length: 1000\r\n\r\n";
        t.on_event(&exchange(Side::Server, 100, GET, 200, head), &mut out);
        assert!(out.is_empty());
        let mut next = exchange(Side::Server, 900, GET, 950, OK);
        next.prev = L7Dir {
            bytes: head.len() as u64 + 1000,
            last_ns: 700,
            tail: [0; 8],
        };
        t.on_event(&next, &mut out);
        assert_eq!(statuses(&out), [Some(203), Some(200)]);
        assert_eq!((out[0].duration_ns, out[1].duration_ns), (600, 50));
    }

    #[test]
    fn pipelined_requests_and_responses_in_one_call_or_several() {
        let three = [GET, GET, b"HEAD /x HTTP/1.1\r\n\r\n".as_slice()].concat();
        let head_resp = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n";
        // All three responses in one call.
        let mut t = Tracker::new(T);
        let mut out = Vec::new();
        let resp = [OK, OK, head_resp.as_slice()].concat();
        t.on_event(&exchange(Side::Server, 100, &three, 300, &resp), &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].operation, "HEAD");
        // One response per call: the second and third records carry no request.
        let mut t = Tracker::new(T);
        let mut out = Vec::new();
        t.on_event(&exchange(Side::Server, 100, &three, 300, OK), &mut out);
        t.on_event(
            &ev(Kind::Exchange, Side::Server, 310, None, Some(OK)),
            &mut out,
        );
        t.on_event(
            &ev(Kind::Exchange, Side::Server, 320, None, Some(head_resp)),
            &mut out,
        );
        assert_eq!(statuses(&out), [Some(200); 3]);
        assert_eq!(
            out.iter().map(|r| r.duration_ns).collect::<Vec<_>>(),
            [200, 210, 220]
        );
        assert_eq!(t.conns(), 0);
    }

    #[test]
    fn requests_pipelined_call_by_call_queue_up() {
        let mut t = Tracker::new(T);
        let mut out = Vec::new();
        // The kernel sent the first request on its own when the second started.
        t.on_event(
            &ev(Kind::Request, Side::Client, 100, Some((100, GET)), None),
            &mut out,
        );
        t.on_event(
            &exchange(
                Side::Client,
                150,
                b"POST /b HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                400,
                OK,
            ),
            &mut out,
        );
        t.on_event(
            &ev(
                Kind::Exchange,
                Side::Client,
                500,
                None,
                Some(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
            ),
            &mut out,
        );
        assert_eq!(
            out.iter()
                .map(|r| (r.operation, r.status.clone(), r.duration_ns))
                .collect::<Vec<_>>(),
            [
                ("GET", Some(Status::Code(200)), 300),
                ("POST", Some(Status::Code(201)), 350)
            ]
        );
    }

    #[test]
    fn chunked_and_continue() {
        let mut t = Tracker::new(T);
        let mut out = Vec::new();
        let post = b"POST /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n";
        t.on_event(
            &exchange(
                Side::Server,
                100,
                post,
                150,
                b"HTTP/1.1 100 Continue\r\n\r\n",
            ),
            &mut out,
        );
        assert!(out.is_empty());
        let head = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
        t.on_event(
            &ev(Kind::Exchange, Side::Server, 400, None, Some(head)),
            &mut out,
        );
        assert!(out.is_empty());
        let mut tail = [b'x'; 8];
        tail[1..].copy_from_slice(b"\r\n0\r\n\r\n".as_slice().get(..7).unwrap());
        let table = Table::default();
        table.0.borrow_mut().insert(
            SK,
            state(L7Dir {
                bytes: 100,
                last_ns: 700,
                tail,
            }),
        );
        t.poll(800, &table, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].status.clone(), out[0].duration_ns),
            (Some(Status::Code(201)), 600)
        );
    }

    #[test]
    fn unanswered_requests_are_counted_with_error_type() {
        let mut t = Tracker::new(1_000);
        let mut out = Vec::new();
        let table = Table::default();
        t.on_event(
            &ev(Kind::Request, Side::Client, 100, Some((100, GET)), None),
            &mut out,
        );
        t.poll(2000, &table, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].status.clone(), out[0].error_type),
            (None, Some("timeout"))
        );
        // The socket ends while the kernel held a request.
        let mut close = ev(Kind::Close, Side::Client, 3500, Some((3000, GET)), None);
        close.response = None;
        t.on_event(&close, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[1].error_type, out[1].duration_ns),
            (Some("connection_closed"), 500)
        );
    }

    #[test]
    fn a_request_the_kernel_holds_times_out_once_and_its_late_response_finds_none() {
        let mut t = Tracker::new(1_000_000_000);
        let mut out = Vec::new();
        let table = Table::default();
        let mut held = state(L7Dir::default());
        held.req_ts = 500;
        held.req[..GET.len()].copy_from_slice(GET);
        held.req_snip = GET.len() as u16;
        held.side = L7_SIDE_CLIENT;
        table.0.borrow_mut().insert(SK, held);
        t.poll(2_000_000_000, &table, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (
                out[0].side,
                out[0].error_type,
                &*out[0].target,
                out[0].duration_ns
            ),
            (Side::Client, Some("timeout"), "/users/{id}", 1_000_000_000)
        );
        // Scanned again: not counted twice.
        t.poll(5_000_000_000, &table, &mut out);
        assert_eq!(out.len(), 1);
        // The response comes late: no second count, an orphan (once no request claims it).
        t.on_event(
            &exchange(Side::Client, 500, GET, 6_000_000_000, OK),
            &mut out,
        );
        // (In the kernel the response start took the request.)
        table.0.borrow_mut().get_mut(&SK).unwrap().req_ts = 0;
        t.poll(6_000_000_000 + HELD_NS, &table, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(t.unparsed.response_without_request, 1);
    }

    #[test]
    fn junk_is_counted_not_tracked() {
        let mut t = Tracker::new(1_000);
        let mut out = Vec::new();
        t.on_event(
            &exchange(Side::Server, 100, b"GET \x00\x01\x02 junk", 200, OK),
            &mut out,
        );
        t.poll(200 + HELD_NS, &Table::default(), &mut out);
        assert!(out.is_empty());
        assert_eq!(t.unparsed.invalid, 1);
        assert_eq!(t.unparsed.response_without_request, 1);
    }

    #[test]
    fn a_request_seen_after_its_answer_is_paired_with_it() {
        let mut t = Tracker::new(T);
        let mut out = Vec::new();
        // The answer first (no request pending in the kernel), then the request, marked answered.
        t.on_event(
            &ev(Kind::Exchange, Side::Client, 500, None, Some(OK)),
            &mut out,
        );
        assert!(out.is_empty());
        assert_eq!(t.conns(), 1, "the response is held");
        let mut late = ev(Kind::Request, Side::Client, 100, Some((100, GET)), None);
        late.answered = true;
        t.on_event(&late, &mut out);
        assert_eq!(statuses(&out), [Some(200)]);
        assert_eq!(
            (
                out[0].duration_ns,
                t.unparsed.response_without_request,
                t.conns()
            ),
            (400, 0, 0)
        );
        // An answer whose request never comes is a response without request: by the next
        // record of its connection, or after a while.
        t.on_event(
            &ev(Kind::Exchange, Side::Client, 900, None, Some(OK)),
            &mut out,
        );
        t.on_event(&exchange(Side::Client, 950, GET, 990, OK), &mut out);
        assert_eq!((out.len(), t.unparsed.response_without_request), (2, 1));
        t.on_event(
            &ev(Kind::Exchange, Side::Client, 1000, None, Some(OK)),
            &mut out,
        );
        t.poll(1000 + HELD_NS, &Table::default(), &mut out);
        assert_eq!(
            (out.len(), t.unparsed.response_without_request, t.conns()),
            (2, 2, 0)
        );
    }

    #[test]
    fn junk_that_only_a_close_carries_is_counted() {
        let mut t = Tracker::new(1_000);
        let mut out = Vec::new();
        let close = ev(
            Kind::Close,
            Side::Server,
            500,
            Some((100, b"GET /a\x01b HTTP/1.1\r\n\r\n")),
            None,
        );
        t.on_event(&close, &mut out);
        assert!(out.is_empty());
        assert_eq!(t.unparsed.invalid, 1);
    }

    #[test]
    fn a_vanished_connection_ends_its_response_at_its_first_call() {
        let mut t = Tracker::new(T);
        let mut out = Vec::new();
        // Read until close (no framing), the kernel's state gone without a close record.
        t.on_event(
            &exchange(Side::Client, 100, GET, 300, b"HTTP/1.0 200 OK\r\n\r\nbody"),
            &mut out,
        );
        let table = Table::default();
        t.poll(1_000, &table, &mut out);
        assert!(out.is_empty(), "the close record may still be on its way");
        t.poll(1_000 + GONE_GRACE_NS, &table, &mut out);
        assert_eq!((out.len(), out[0].duration_ns), (1, 200));
    }
}

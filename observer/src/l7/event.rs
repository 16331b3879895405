//! The records of the kernel's L7 ring, read in place: a fixed header, the first bytes of the
//! response (in a fixed area of `L7_RESP_MAX` bytes) and of the request, cut to what the kernel
//! had.

use std::net::IpAddr;

use observer_common::{
    L7Dir, L7Event, L7_DATA_MAX, L7_EVENT_HEADER, L7_EVF_ANSWERED, L7_EVF_DGRAM, L7_EVF_SEND,
    L7_EV_CLOSE, L7_EV_DATA, L7_EV_EXCHANGE, L7_EV_REQUEST, L7_REQ_MAX, L7_RESP_MAX,
    L7_SIDE_CLIENT,
};

use super::{peer_addr, Side};

/// What a record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A response started (with the request it answers, if that was still pending).
    Exchange,
    /// A request whose response had not started when the next request did.
    Request,
    /// The socket is gone while something was pending.
    Close,
    /// One call of a stream protocol's connection ([`Event::data`]).
    Data,
}

/// A piece of one call of a stream protocol's connection: the call's direction, when it began
/// and ended, its byte count, and `bytes` of it from `offset` (a long call comes in several
/// records, in order; an empty piece says the rest of the call was not read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Data<'a> {
    pub send: bool,
    /// A datagram: a whole message of a connectionless socket (UDP), not a piece of a
    /// connection's stream.
    pub dgram: bool,
    pub start_ns: u64,
    pub end_ns: u64,
    pub len: u32,
    pub offset: u32,
    pub bytes: &'a [u8],
    /// The calling task's command name (NUL-padded; all zero: unknown).
    pub comm: [u8; 16],
}

/// A `DATA` record carries the caller's command name in its `prev` field.
fn comm_of(prev: &L7Dir) -> [u8; 16] {
    let mut c = [0; 16];
    c[..8].copy_from_slice(&prev.bytes.to_ne_bytes());
    c[8..].copy_from_slice(&prev.last_ns.to_ne_bytes());
    c
}

/// One record of the L7 ring.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub sk: u64,
    pub cgroup_id: u64,
    pub kind: Kind,
    pub proto: u8,
    pub side: Side,
    /// When it happened (monotonic ns): the response's first byte, the request's, the end.
    pub ts_ns: u64,
    /// The request it carries: its first call's time, length and first bytes.
    pub request: Option<Part<'a>>,
    /// The response it starts: its first call's length and first bytes (`Exchange` only).
    pub response: Option<Part<'a>>,
    /// The response direction's counters before this record: the previous response ended
    /// with them.
    pub prev: L7Dir,
    pub peer: IpAddr,
    pub peer_port: u16,
    pub tgid: u32,
    /// A `Request` whose answer already started: the `Exchange` without request just before it
    /// on this connection (its send hook ran after the answer came back).
    pub answered: bool,
    /// The call of a `Data` record.
    pub data: Option<Data<'a>>,
}

/// A message's first call: when, how many bytes, and the first of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part<'a> {
    pub ts_ns: u64,
    pub len: u32,
    pub bytes: &'a [u8],
}

impl<'a> Event<'a> {
    /// Reads a record as the kernel sent it (`None` when it is shorter than its header says).
    pub fn parse(b: &'a [u8]) -> Option<Event<'a>> {
        if b.len() < L7_EVENT_HEADER {
            return None;
        }
        let mut h = std::mem::MaybeUninit::<L7Event>::zeroed();
        // SAFETY: L7Event is plain integers (all-zero is valid); the header's bytes are
        // copied, the data is read through `b` below.
        let h = unsafe {
            std::ptr::copy_nonoverlapping(b.as_ptr(), h.as_mut_ptr() as *mut u8, L7_EVENT_HEADER);
            h.assume_init()
        };
        let data = &b[L7_EVENT_HEADER..];
        let side = if h.side == L7_SIDE_CLIENT {
            Side::Client
        } else {
            Side::Server
        };
        let peer = peer_addr(h.peer.family, &h.peer.addr);
        if h.kind == L7_EV_DATA {
            let n = usize::from(h.resp_snip);
            let end = u64::from(h.req_len) + n as u64;
            if n > L7_DATA_MAX || n > data.len() || end > u64::from(h.resp_len) {
                return None;
            }
            return Some(Event {
                sk: h.sk,
                cgroup_id: h.cgroup_id,
                kind: Kind::Data,
                proto: h.proto,
                side,
                ts_ns: h.ts_ns,
                request: None,
                response: None,
                prev: h.prev,
                peer,
                peer_port: h.peer.port,
                tgid: h.tgid,
                answered: false,
                data: Some(Data {
                    send: h.flags & L7_EVF_SEND != 0,
                    dgram: h.flags & L7_EVF_DGRAM != 0,
                    start_ns: if h.req_ts == 0 { h.ts_ns } else { h.req_ts },
                    end_ns: h.ts_ns,
                    len: h.resp_len,
                    offset: h.req_len,
                    bytes: &data[..n],
                    comm: comm_of(&h.prev),
                }),
            });
        }
        let resp_n = usize::from(h.resp_snip);
        let req_n = usize::from(h.req_snip);
        if resp_n > L7_RESP_MAX || req_n > L7_REQ_MAX || L7_RESP_MAX + req_n > data.len() {
            return None;
        }
        let kind = match h.kind {
            L7_EV_EXCHANGE => Kind::Exchange,
            L7_EV_REQUEST => Kind::Request,
            L7_EV_CLOSE => Kind::Close,
            _ => return None,
        };
        let request = (h.req_ts != 0).then(|| Part {
            ts_ns: h.req_ts,
            len: h.req_len,
            bytes: &data[L7_RESP_MAX..L7_RESP_MAX + req_n],
        });
        let response = (kind == Kind::Exchange).then(|| Part {
            ts_ns: h.ts_ns,
            len: h.resp_len,
            bytes: &data[..resp_n],
        });
        Some(Event {
            sk: h.sk,
            cgroup_id: h.cgroup_id,
            kind,
            proto: h.proto,
            side,
            ts_ns: h.ts_ns,
            request,
            response,
            prev: h.prev,
            peer,
            peer_port: h.peer.port,
            tgid: h.tgid,
            answered: kind == Kind::Request && h.flags & L7_EVF_ANSWERED != 0,
            data: None,
        })
    }
}

/// Builds a record's bytes as the kernel would (for tests of every protocol).
#[cfg(test)]
pub fn record(e: &Event<'_>) -> Vec<u8> {
    use observer_common::{L7Peer, L7_EV_CLOSE, L7_SIDE_SERVER};
    let resp = e
        .data
        .map(|d| d.bytes)
        .unwrap_or_else(|| e.response.map_or(&[][..], |p| p.bytes));
    let req = e.request.map_or(&[][..], |p| p.bytes);
    let (family, addr) = match e.peer {
        IpAddr::V4(v4) => {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&v4.octets());
            (2, a)
        }
        IpAddr::V6(v6) => (10, v6.octets()),
    };
    let h = L7Event {
        sk: e.sk,
        cgroup_id: e.cgroup_id,
        ts_ns: e.ts_ns,
        req_ts: match e.data {
            Some(d) => d.start_ns,
            None => e.request.map_or(0, |p| p.ts_ns),
        },
        prev: match e.data {
            Some(d) => L7Dir {
                bytes: u64::from_ne_bytes(d.comm[..8].try_into().expect("8 bytes")),
                last_ns: u64::from_ne_bytes(d.comm[8..].try_into().expect("8 bytes")),
                tail: [0; 8],
            },
            None => e.prev,
        },
        peer: L7Peer {
            family,
            port: e.peer_port,
            _pad: 0,
            addr,
        },
        resp_len: match e.data {
            Some(d) => d.len,
            None => e.response.map_or(0, |p| p.len),
        },
        req_len: match e.data {
            Some(d) => d.offset,
            None => e.request.map_or(0, |p| p.len),
        },
        tgid: e.tgid,
        proto: e.proto,
        kind: match e.kind {
            Kind::Exchange => L7_EV_EXCHANGE,
            Kind::Request => L7_EV_REQUEST,
            Kind::Close => L7_EV_CLOSE,
            Kind::Data => observer_common::L7_EV_DATA,
        },
        side: if e.side == Side::Client {
            L7_SIDE_CLIENT
        } else {
            L7_SIDE_SERVER
        },
        flags: match e.data {
            Some(d) => {
                (if d.send { L7_EVF_SEND } else { 0 }) | if d.dgram { L7_EVF_DGRAM } else { 0 }
            }
            None if e.answered => L7_EVF_ANSWERED,
            None => 0,
        },
        req_snip: req.len() as u16,
        resp_snip: resp.len() as u16,
        _pad2: 0,
        data: [0; observer_common::L7_REQ_MAX + observer_common::L7_RESP_MAX],
    };
    // SAFETY: L7Event is plain old data without padding.
    let head =
        unsafe { std::slice::from_raw_parts(&h as *const L7Event as *const u8, L7_EVENT_HEADER) };
    if e.data.is_some() {
        return [head, resp].concat();
    }
    let mut area = resp.to_vec();
    area.resize(L7_RESP_MAX, 0);
    [head, &area, req].concat()
}

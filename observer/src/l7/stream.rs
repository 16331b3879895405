//! What every stream protocol's tracker shares: the calls of a connection (`DATA` records,
//! see the kernel's `l7/stream.rs`) as its parsers want them (per direction, in order, each
//! call's bytes and the bytes the kernel did not send as gaps, with the call's times and
//! process), the bounded table of the connections it follows, and who their operations
//! belong to.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use super::{event::Data, ConnTable, Event, Request, Side, Spec, Status};

/// Connections one protocol follows at most (each holds two small parsers and its pending
/// operations); a new one beyond makes the one heard of longest ago give way.
pub const MAX_CONNS: usize = 65536;
/// How often connections idle that long are checked against the kernel's table.
const SWEEP_NS: u64 = 5_000_000_000;

/// Whose operations a connection's are: the protocol (its metric family), the observed end
/// and the other one.
#[derive(Debug, Clone)]
pub struct Ends {
    pub protocol: &'static Spec,
    pub side: Side,
    pub cgroup_id: u64,
    pub peer: IpAddr,
    pub peer_port: u16,
    /// The connection's plaintext came from its TLS library.
    pub tls: bool,
}

/// An operation as it began: what, on what, when, and by which process.
#[derive(Debug)]
pub struct Op {
    pub name: &'static str,
    pub target: Arc<str>,
    pub start_ns: u64,
    pub tgid: u32,
}

impl Ends {
    /// The ends of the connection a record is of.
    pub fn of(protocol: &'static Spec, ev: &Event<'_>) -> Ends {
        Ends {
            protocol,
            side: ev.side,
            cgroup_id: ev.cgroup_id,
            peer: ev.peer,
            peer_port: ev.peer_port,
            tls: observer_common::is_tls_key(ev.sk),
        }
    }

    /// Operation `op` of this connection, ended at `end_ns` with `status`, or without one for
    /// the reason `error_type` (`timeout`, `connection_closed`).
    pub fn request(
        &self,
        op: Op,
        end_ns: u64,
        status: Option<Status>,
        error_type: Option<&'static str>,
    ) -> Request {
        Request {
            protocol: self.protocol,
            side: self.side,
            cgroup_id: self.cgroup_id,
            tgid: op.tgid,
            peer: self.peer,
            peer_port: self.peer_port,
            operation: op.name,
            target: op.target,
            status,
            error_type,
            duration_ns: end_ns.saturating_sub(op.start_ns),
            messages: None,
            tls: self.tls,
        }
    }
}

/// A connection's state as [`Conns`] keeps it.
pub trait Tracked {
    /// When the connection was last heard of (the end of its last call, or its close).
    fn last_ns(&self) -> u64;
    fn set_last_ns(&mut self, ns: u64);
}

/// Implements [`Tracked`] for a connection state with a `last_ns: u64` field.
macro_rules! tracked {
    ($t:ty) => {
        impl $crate::l7::stream::Tracked for $t {
            fn last_ns(&self) -> u64 {
                self.last_ns
            }
            fn set_last_ns(&mut self, ns: u64) {
                self.last_ns = ns;
            }
        }
    };
}
pub(crate) use tracked;

/// What a stream protocol's tracker could not use, by the reasons they share (a protocol counts
/// its own reasons beside, and lists them with these).
#[derive(Debug, Default)]
pub struct Unparsed {
    /// Bytes that are not the protocol: the connection's framing is lost until it is found
    /// again.
    pub invalid: u64,
    /// Message headers in bytes the kernel did not send (a call beyond what it reads), or a
    /// message whose bytes it could not read.
    pub gap: u64,
    /// A response with no request waiting (the connection joined mid-way).
    pub response_without_request: u64,
    /// Requests given up because too many waited.
    pub pending_overflow: u64,
    /// Requests waiting when the framing was lost: not counted as operations.
    pub lost_in_resync: u64,
}

impl Unparsed {
    /// Every reason with its count, for `observer_l7_messages_unparsed_total`: these, the
    /// connections evicted from the protocol's table, and the protocol's `own`.
    pub fn list(&self, evicted: u64, own: &[(&'static str, u64)]) -> Vec<(&'static str, u64)> {
        let mut v = vec![
            ("invalid", self.invalid),
            ("gap", self.gap),
            ("response_without_request", self.response_without_request),
            ("pending_overflow", self.pending_overflow),
            ("connection_evicted", evicted),
            ("lost_in_resync", self.lost_in_resync),
        ];
        v.extend_from_slice(own);
        v
    }
}

/// The connections a stream protocol follows, by socket: bounded, and swept of those whose
/// socket the kernel's table no longer holds (their `CLOSE` record was lost). A connection's
/// state is taken out while a record of it is handled and put back after, so that the tracker
/// can use the rest of itself meanwhile.
#[derive(Debug)]
pub struct Conns<C> {
    /// Boxed: a state is taken out and put back at every record, a pointer's move.
    map: HashMap<u64, Box<C>, foldhash::fast::RandomState>,
    last_sweep_ns: u64,
    /// Connections dropped because too many were followed.
    pub evicted: u64,
}

impl<C> Default for Conns<C> {
    fn default() -> Self {
        Conns {
            map: HashMap::default(),
            last_sweep_ns: 0,
            evicted: 0,
        }
    }
}

impl<C: Tracked> Conns<C> {
    /// When `sk` is not followed yet and the table is full: the connection heard of longest
    /// ago, taken out (counted as evicted) for the caller to close.
    pub fn make_room(&mut self, sk: u64) -> Option<Box<C>> {
        if self.map.len() < MAX_CONNS || self.map.contains_key(&sk) {
            return None;
        }
        let (&oldest, _) = self.map.iter().min_by_key(|(_, c)| c.last_ns())?;
        self.evicted += 1;
        self.map.remove(&oldest)
    }

    /// `sk`'s state, taken out (back with [`Conns::put`]); made by `new` when `sk` is not
    /// followed yet. Heard of at `now_ns`.
    pub fn take(&mut self, sk: u64, now_ns: u64, new: impl FnOnce() -> C) -> Box<C> {
        let mut c = self.map.remove(&sk).unwrap_or_else(|| Box::new(new()));
        c.set_last_ns(now_ns);
        c
    }

    /// `sk`'s state taken out if followed (back with [`Conns::put`]).
    pub fn remove(&mut self, sk: u64) -> Option<Box<C>> {
        self.map.remove(&sk)
    }

    pub fn put(&mut self, sk: u64, c: Box<C>) {
        self.map.insert(sk, c);
    }

    /// The socket is gone (its `CLOSE` record at `ts_ns`): its state, for the caller to close.
    pub fn closed(&mut self, sk: u64, ts_ns: u64) -> Option<Box<C>> {
        let mut c = self.map.remove(&sk)?;
        c.set_last_ns(c.last_ns().max(ts_ns));
        Some(c)
    }

    /// The sockets whose connection `pred` picks (one with an operation waiting too long).
    pub fn picked(&self, pred: impl Fn(&C) -> bool) -> Vec<u64> {
        (self.map.iter())
            .filter(|(_, c)| pred(c))
            .map(|(&sk, _)| sk)
            .collect()
    }

    /// Every few seconds: the connections idle that long whose socket the kernel's table no
    /// longer holds, taken out for the caller to close.
    pub fn sweep(&mut self, now_ns: u64, table: &dyn ConnTable) -> Vec<Box<C>> {
        if now_ns.saturating_sub(self.last_sweep_ns) < SWEEP_NS {
            return Vec::new();
        }
        self.last_sweep_ns = now_ns;
        let gone = self.picked(|c| now_ns.saturating_sub(c.last_ns()) >= SWEEP_NS);
        (gone.into_iter())
            .filter(|&sk| table.get(sk).is_none())
            .filter_map(|sk| self.map.remove(&sk))
            .collect()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut C> {
        self.map.values_mut().map(|c| &mut **c)
    }

    #[cfg(test)]
    pub fn values(&self) -> impl Iterator<Item = &C> {
        self.map.values().map(|c| &**c)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Where a direction's current call stands: its length, the bytes seen of it, its times and
/// process.
#[derive(Debug, Default, Clone, Copy)]
pub struct CallPos {
    pub len: u32,
    pub seen: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub tgid: u32,
}

/// What a direction's parser gets: bytes, or a count of bytes it will never see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    Bytes(&'a [u8]),
    Gap(u64),
}

/// Both directions of a connection (index 0: requests, 1: responses).
#[derive(Debug, Default, Clone, Copy)]
pub struct Calls {
    pub pos: [CallPos; 2],
}

impl Calls {
    /// One record of direction `dir`. `feed` gets, in order: the gap that ends the other
    /// direction's last call (it is over, since this one speaks), the gap that ends this
    /// direction's previous call (a new call starts) or that a lost record left, then the
    /// record's bytes; each with the direction and the call it belongs to (whose `seen`
    /// includes the bytes given: a call's first piece has `seen == bytes.len()`).
    pub fn record(
        &mut self,
        dir: usize,
        d: &Data<'_>,
        tgid: u32,
        mut feed: impl FnMut(usize, Input<'_>, CallPos),
    ) {
        self.settle(1 - dir, &mut feed);
        if d.offset == 0 {
            self.settle(dir, &mut feed);
            self.pos[dir] = CallPos {
                len: d.len,
                seen: 0,
                start_ns: d.start_ns,
                end_ns: d.end_ns,
                tgid,
            };
        } else if d.offset > self.pos[dir].seen {
            // A piece of this call was lost (the ring was full).
            let missing = u64::from(d.offset - self.pos[dir].seen);
            self.pos[dir].seen = d.offset;
            feed(dir, Input::Gap(missing), self.pos[dir]);
        }
        self.pos[dir].seen = d.offset.saturating_add(d.bytes.len() as u32);
        feed(dir, Input::Bytes(d.bytes), self.pos[dir]);
    }

    /// Ends a direction's last call: bytes of it the kernel did not send are a gap.
    fn settle(&mut self, dir: usize, feed: &mut impl FnMut(usize, Input<'_>, CallPos)) {
        let p = self.pos[dir];
        if p.seen >= p.len {
            return;
        }
        self.pos[dir].seen = p.len;
        feed(dir, Input::Gap(u64::from(p.len - p.seen)), p);
    }
}

/// Records of stream protocols built as the kernel builds them, for the protocols' tests.
#[cfg(test)]
pub mod testing {
    use std::net::{IpAddr, Ipv4Addr};

    use observer_common::L7Dir;

    use crate::l7::{
        event::{record, Data, Event, Kind},
        ConnTable, Protocol, Request, Side,
    };

    pub const SK: u64 = 0xffff_8880_0000_1000;
    pub const MS: u64 = 1_000_000;

    /// The kernel's table with no socket in it.
    pub struct NoConns;
    impl ConnTable for NoConns {
        fn get(&self, _sk: u64) -> Option<observer_common::L7Conn> {
            None
        }
        fn scan(&self, _f: &mut dyn FnMut(u64, &observer_common::L7Conn)) {}
    }

    /// Every socket still there.
    pub struct Live;
    impl ConnTable for Live {
        fn get(&self, _sk: u64) -> Option<observer_common::L7Conn> {
            // SAFETY: L7Conn is plain integers; all-zero is valid.
            Some(unsafe { std::mem::zeroed() })
        }
        fn scan(&self, _f: &mut dyn FnMut(u64, &observer_common::L7Conn)) {}
    }

    fn event(proto: u8, side: Side, kind: Kind, ts_ns: u64, data: Option<Data<'_>>) -> Event<'_> {
        Event {
            sk: SK,
            cgroup_id: 7,
            kind,
            proto,
            side,
            ts_ns,
            request: None,
            response: None,
            prev: L7Dir::default(),
            peer: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
            peer_port: 5432,
            tgid: 42,
            answered: false,
            data,
        }
    }

    /// A piece of a call: `bytes` sent or received at [start, end] ms, of a call of `len` bytes,
    /// from `offset`.
    #[allow(clippy::too_many_arguments)]
    pub fn piece(
        proto: u8,
        side: Side,
        send: bool,
        start: u64,
        end: u64,
        len: u32,
        offset: u32,
        bytes: &[u8],
    ) -> Vec<u8> {
        data_record(proto, side, send, false, (start, end), len, offset, bytes)
    }

    /// `bytes` as one datagram (a UDP socket's call).
    pub fn datagram(
        p: &mut dyn Protocol,
        side: Side,
        send: bool,
        start: u64,
        end: u64,
        bytes: &[u8],
    ) -> Vec<Request> {
        let len = bytes.len() as u32;
        let rec = data_record(p.spec().id, side, send, true, (start, end), len, 0, bytes);
        feed(p, &rec)
    }

    /// A `DATA` record as the kernel builds it; times in ms.
    #[allow(clippy::too_many_arguments)]
    fn data_record(
        proto: u8,
        side: Side,
        send: bool,
        dgram: bool,
        (start, end): (u64, u64),
        len: u32,
        offset: u32,
        bytes: &[u8],
    ) -> Vec<u8> {
        let data = Data {
            send,
            dgram,
            start_ns: start * MS,
            end_ns: end * MS,
            len,
            offset,
            bytes,
            comm: *b"test-client\0\0\0\0\0",
        };
        record(&event(proto, side, Kind::Data, end * MS, Some(data)))
    }

    /// The socket's end, at `at` ms.
    pub fn close(proto: u8, side: Side, at: u64) -> Vec<u8> {
        record(&event(proto, side, Kind::Close, at * MS, None))
    }

    /// Hands one record to the protocol; what it finished.
    pub fn feed(p: &mut dyn Protocol, rec: &[u8]) -> Vec<Request> {
        let ev = Event::parse(rec).expect("a valid record");
        let mut out = Vec::new();
        p.on_event(&ev, &mut out);
        out
    }

    /// `bytes` as one whole call.
    pub fn whole(
        p: &mut dyn Protocol,
        side: Side,
        send: bool,
        start: u64,
        end: u64,
        bytes: &[u8],
    ) -> Vec<Request> {
        let proto = p.spec().id;
        feed(
            p,
            &piece(proto, side, send, start, end, bytes.len() as u32, 0, bytes),
        )
    }
}

//! The calls of a stream protocol's connection (`DATA` records, see the kernel's
//! `l7/stream.rs`), as its parsers want them: per direction, in order, each call's bytes and
//! the bytes the kernel did not send as gaps, with the call's times and process.

use super::event::Data;

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
        let data = Data {
            send,
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

//! Reads the kernel's L7 ring: each record goes to its protocol, the finished requests to the
//! pipeline. The kernel wakes the reader only when a batch is waiting; it is also drained every
//! [`DRAIN_INTERVAL`], so a lone request reaches the figures within that period (plus, for a
//! response whose end is read from the connection's counters, one more interval).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::{HashMap as AyaHashMap, MapData, RingBuf};
use observer_common::L7Conn;

use super::{aggregate::Pipeline, monotonic_ns};
use crate::{
    ebpf::reader::Reader,
    l7::{ConnTable, Event, Protocol, Request},
};

/// Longest a record waits in the ring before it is read.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(100);
/// Records taken per drain before the figures are updated (bounds the time the lock is held).
const BATCH: usize = 65536;

/// The kernel's table of L7 connections (absent: every lookup finds nothing).
pub struct KernelConns(pub Option<AyaHashMap<MapData, u64, L7Conn>>);

impl ConnTable for KernelConns {
    fn get(&self, sk: u64) -> Option<L7Conn> {
        self.0.as_ref()?.get(&sk, 0).ok()
    }

    fn scan(&self, f: &mut dyn FnMut(u64, &L7Conn)) {
        if let Some(m) = &self.0 {
            for (sk, c) in m.iter().flatten() {
                f(sk, &c);
            }
        }
    }
}

/// Counters of the user-space L7 path, for the exposition.
#[derive(Debug, Default, Clone)]
pub struct L7Health {
    /// (protocol, reason, records): what a protocol could not use.
    pub unparsed: Vec<(&'static str, &'static str, u64)>,
    /// Records no protocol or no valid layout claimed.
    pub malformed: u64,
    /// Connections the protocols follow.
    pub conns: u64,
}

/// Hands each record of the ring to its protocol.
pub struct Dispatch {
    protocols: Vec<Box<dyn Protocol>>,
    /// Protocol id → index in `protocols`.
    by_id: [Option<u8>; 256],
    malformed: u64,
}

impl Dispatch {
    pub fn new(protocols: Vec<Box<dyn Protocol>>) -> Self {
        let mut by_id = [None; 256];
        for (i, p) in protocols.iter().enumerate() {
            by_id[usize::from(p.spec().id)] = Some(i as u8);
        }
        Self {
            protocols,
            by_id,
            malformed: 0,
        }
    }

    /// One record as the kernel wrote it; finished requests go to `out`.
    pub fn record(&mut self, bytes: &[u8], out: &mut Vec<Request>) {
        let Some(ev) = Event::parse(bytes) else {
            self.malformed += 1;
            return;
        };
        match self.by_id[usize::from(ev.proto)] {
            Some(i) => self.protocols[usize::from(i)].on_event(&ev, out),
            None => self.malformed += 1,
        }
    }

    /// Every protocol's periodic work.
    pub fn poll(&mut self, now_ns: u64, table: &dyn ConnTable, out: &mut Vec<Request>) {
        for p in &mut self.protocols {
            p.poll(now_ns, table, out);
        }
    }

    pub fn health(&self) -> L7Health {
        L7Health {
            unparsed: self
                .protocols
                .iter()
                .flat_map(|pr| {
                    let name = pr.spec().name;
                    pr.unparsed().into_iter().map(move |(r, n)| (name, r, n))
                })
                .collect(),
            malformed: self.malformed,
            conns: self.protocols.iter().map(|p| p.conns() as u64).sum(),
        }
    }
}

/// The reader of the L7 ring.
pub struct L7Reader {
    dispatch: Dispatch,
    table: KernelConns,
    pipeline: Arc<Mutex<Pipeline>>,
    out: Vec<Request>,
}

impl L7Reader {
    pub fn new(dispatch: Dispatch, table: KernelConns, pipeline: Arc<Mutex<Pipeline>>) -> Self {
        Self {
            dispatch,
            table,
            pipeline,
            out: Vec::new(),
        }
    }

    /// Sends the finished requests to the pipeline (and, with `health`, the counters).
    fn flush(&mut self, health: bool) {
        if self.out.is_empty() && !health {
            return;
        }
        let mut p = self.pipeline.lock().unwrap_or_else(|e| e.into_inner());
        if !self.out.is_empty() {
            p.record_requests(&self.out, monotonic_ns());
            self.out.clear();
        }
        if health {
            p.l7_health = self.dispatch.health();
        }
    }
}

impl Reader for L7Reader {
    type Fd = RingBuf<MapData>;

    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        let mut n = 0;
        while let Some(item) = ring.next() {
            self.dispatch.record(&item, &mut self.out);
            n += 1;
            if n >= BATCH {
                break;
            }
        }
        self.flush(false);
    }

    fn tick(&mut self, _ring: &mut RingBuf<MapData>) {
        self.dispatch
            .poll(monotonic_ns(), &self.table, &mut self.out);
        self.flush(true);
    }
}

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
    pub comms: Comms,
}

/// The command names the kernel gave with `DATA` records, per (cgroup, process): a pod whose
/// process has exited by the time its requests are recorded (a short-lived client) is named
/// from them instead of `/proc`. Bounded; a run of records of one process costs one compare.
#[derive(Debug, Default)]
pub struct Comms {
    map: std::collections::HashMap<(u64, u32), [u8; 16], foldhash::fast::RandomState>,
    last: (u64, u32, [u8; 16]),
}

/// Processes whose names are kept at most (the map starts over when full).
const MAX_COMMS: usize = 16384;

impl Comms {
    pub fn learn(&mut self, cgroup_id: u64, tgid: u32, comm: [u8; 16]) {
        if comm[0] == 0 || self.last == (cgroup_id, tgid, comm) {
            return;
        }
        self.last = (cgroup_id, tgid, comm);
        if self.map.len() >= MAX_COMMS {
            self.map.clear();
        }
        self.map.insert((cgroup_id, tgid), comm);
    }

    /// The command name of a process of a cgroup, if a record gave it.
    pub fn get(&self, cgroup_id: u64, tgid: u32) -> Option<String> {
        let c = self.map.get(&(cgroup_id, tgid))?;
        let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
        Some(String::from_utf8_lossy(&c[..end]).into_owned())
    }
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
            comms: Comms::default(),
        }
    }

    /// One record as the kernel wrote it; finished requests go to `out`.
    pub fn record(&mut self, bytes: &[u8], out: &mut Vec<Request>) {
        let Some(ev) = Event::parse(bytes) else {
            self.malformed += 1;
            return;
        };
        if let Some(d) = &ev.data {
            self.comms.learn(ev.cgroup_id, ev.tgid, d.comm);
        }
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
            p.record_requests(&self.out, monotonic_ns(), &self.dispatch.comms);
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

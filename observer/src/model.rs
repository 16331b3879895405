//! Types every part of the pipeline and the exporters share: latency histograms, the peer of a
//! TCP edge, addresses as the kernel hands them over.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use observer_common::TcpEdgeKey;

/// A histogram with its own bounds (seconds); `counts` are per bucket, the last is +Inf.
#[derive(Debug, Clone)]
pub struct Hist {
    pub bounds: Arc<Vec<f64>>,
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Hist {
    pub fn new(bounds: Arc<Vec<f64>>) -> Self {
        let n = bounds.len() + 1;
        Self {
            bounds,
            counts: vec![0; n],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, secs: f64) {
        let i = self.bounds.partition_point(|b| *b < secs);
        self.counts[i] += 1;
        self.sum += secs;
        self.count += 1;
    }

    /// Adds `o` (same bounds; otherwise only sum and count are added).
    pub fn merge(&mut self, o: &Hist) {
        if self.bounds == o.bounds {
            for (a, b) in self.counts.iter_mut().zip(&o.counts) {
                *a += b;
            }
        }
        self.sum += o.sum;
        self.count += o.count;
    }

    /// (upper bound, count) per bucket, the last one +Inf (not cumulative).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
            .collect()
    }
}

/// An address as the kernel stores it: IPv4 in the first 4 bytes for `AF_INET`; IPv4-mapped
/// IPv6 addresses come out as IPv4.
pub fn addr(family: u16, a: &[u8; 16]) -> IpAddr {
    if family == 10 {
        let v6 = Ipv6Addr::from(*a);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    } else {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    }
}

/// The peer of a per-edge TCP entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgePeer {
    pub addr: IpAddr,
    /// The server's port for an outbound connection, 0 for an inbound one.
    pub port: u16,
    /// True when the workload connected (client side), false when it accepted.
    pub outbound: bool,
}

impl EdgePeer {
    pub fn from_key(k: &TcpEdgeKey) -> Self {
        Self {
            addr: addr(u16::from(k.family), &k.addr),
            port: k.port,
            outbound: k.dir == 1,
        }
    }
}

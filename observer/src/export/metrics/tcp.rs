//! TCP families per workload: connections, failures, bytes, retransmits, RTT.

use std::fmt;

use observer_common::{
    TcpStats, DIR_INBOUND, DIR_OUTBOUND, FAIL_OTHER, FAIL_REFUSED, FAIL_RESET, FAIL_TIMEOUT,
    FAIL_UNREACHABLE, RTT_BUCKETS_US,
};
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::MetricType,
    registry::Unit,
};

use super::{counter, gauge, with, RawHistogram};
use crate::pipeline::aggregate::Totals;

const FAIL_NAMES: [(usize, &str); 5] = [
    (FAIL_REFUSED, "refused"),
    (FAIL_TIMEOUT, "timeout"),
    (FAIL_RESET, "reset"),
    (FAIL_UNREACHABLE, "unreachable"),
    (FAIL_OTHER, "other"),
];
const DIRECTIONS: [(usize, &str); 2] = [(DIR_INBOUND, "inbound"), (DIR_OUTBOUND, "outbound")];

fn rtt_histogram(s: &TcpStats) -> Vec<(f64, u64)> {
    let mut b: Vec<(f64, u64)> = RTT_BUCKETS_US
        .iter()
        .zip(s.rtt_buckets.iter())
        .map(|(us, c)| (*us as f64 / 1e6, *c))
        .collect();
    b.push((f64::INFINITY, s.rtt_buckets[RTT_BUCKETS_US.len()]));
    b
}

pub fn encode(enc: &mut DescriptorEncoder, totals: &Totals) -> fmt::Result {
    let tcp = &totals.tcp;
    counter(
        enc,
        "observer_tcp_connections_opened",
        "TCP connections established: inbound by accept, outbound by connect",
        None,
        tcp.iter().flat_map(|(id, s)| {
            DIRECTIONS
                .iter()
                .map(move |(i, d)| (with(id, &[("direction", *d)]), s.opened[*i]))
        }),
    )?;
    counter(
        enc,
        "observer_tcp_connections_closed",
        "Established TCP connections closed (including those opened before the observer started)",
        None,
        tcp.iter().map(|(id, s)| (with(id, &[]), s.closed)),
    )?;
    counter(
        enc,
        "observer_tcp_connect_failures",
        "Outbound connects that failed, by reason",
        None,
        tcp.iter().flat_map(|(id, s)| {
            FAIL_NAMES
                .iter()
                .map(move |(i, r)| (with(id, &[("reason", *r)]), s.connect_failures[*i]))
        }),
    )?;
    gauge(
        enc,
        "observer_tcp_connections_active",
        "TCP connections open now that were established while the observer ran",
        tcp.iter().flat_map(|(id, s)| {
            DIRECTIONS.iter().map(move |(i, d)| {
                (
                    with(id, &[("direction", *d)]),
                    s.tracked[*i] as i64 - s.closed_tracked[*i] as i64,
                )
            })
        }),
    )?;
    counter(
        enc,
        "observer_tcp_retransmits",
        "TCP segments retransmitted",
        None,
        tcp.iter().map(|(id, s)| (with(id, &[]), s.retransmits)),
    )?;
    counter(
        enc,
        "observer_tcp_sent_bytes",
        "TCP payload bytes sent (as returned by the send calls)",
        None,
        tcp.iter().map(|(id, s)| (with(id, &[]), s.sent_bytes)),
    )?;
    counter(
        enc,
        "observer_tcp_received_bytes",
        "TCP payload bytes received (as returned by the receive calls)",
        None,
        tcp.iter().map(|(id, s)| (with(id, &[]), s.received_bytes)),
    )?;
    if !tcp.is_empty() {
        let mut m = enc.encode_descriptor(
                "observer_tcp_rtt",
                "Smoothed RTT of TCP connections, sampled when established and at most once a second while active",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
        for (id, s) in tcp {
            let l = with(id, &[]);
            let buckets = rtt_histogram(s);
            RawHistogram {
                sum: s.rtt_sum_us as f64 / 1e6,
                count: s.rtt_count,
                buckets: &buckets,
            }
            .encode(m.encode_family(&l)?)?;
        }
    }
    Ok(())
}

//! Prometheus metrics, encoded at scrape time from the in-kernel aggregates (a `Collector`):
//! nothing is copied into user space between scrapes.

use std::{
    fmt,
    sync::{Arc, Mutex},
};

use observer_common::{
    SyscallStats, TcpStats, DIR_INBOUND, DIR_OUTBOUND, FAIL_OTHER, FAIL_REFUSED, FAIL_RESET,
    FAIL_TIMEOUT, FAIL_UNREACHABLE, LOST_CONN_MAP_FULL, LOST_SOCK_READ,
    LOST_SYSCALL_ERRNO_MAP_FULL, LOST_SYSCALL_MAP_FULL, LOST_SYSCALL_SLOT_COLLISION,
    LOST_TCP_MAP_FULL, RTT_BUCKETS_US, SYSCALL_BUCKETS_NS,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::MetricType,
    registry::Unit,
};

use crate::{
    ebpf::load::ProbeStatus,
    identity::Identity,
    pipeline::{
        aggregate::Pipeline,
        names::{errno_name, syscall_name},
    },
};

/// Names of the `LOST_*` counters, as the `source` label of `observer_events_lost_total`.
pub const LOST_SOURCES: [(u32, &str); 6] = [
    (LOST_SYSCALL_MAP_FULL, "syscall_table_full"),
    (LOST_SYSCALL_ERRNO_MAP_FULL, "syscall_errno_table_full"),
    (LOST_SYSCALL_SLOT_COLLISION, "syscall_entry_unmatched"),
    (LOST_TCP_MAP_FULL, "tcp_table_full"),
    (LOST_CONN_MAP_FULL, "connection_table_full"),
    (LOST_SOCK_READ, "socket_read_failed"),
];

const FAIL_NAMES: [(usize, &str); 5] = [
    (FAIL_REFUSED, "refused"),
    (FAIL_TIMEOUT, "timeout"),
    (FAIL_RESET, "reset"),
    (FAIL_UNREACHABLE, "unreachable"),
    (FAIL_OTHER, "other"),
];
const DIRECTIONS: [(usize, &str); 2] = [(DIR_INBOUND, "inbound"), (DIR_OUTBOUND, "outbound")];

/// Collects everything the observer exports.
pub struct ObserverCollector {
    pipeline: Arc<Mutex<Pipeline>>,
    probes: Vec<ProbeStatus>,
}

impl fmt::Debug for ObserverCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserverCollector").finish_non_exhaustive()
    }
}

impl ObserverCollector {
    pub fn new(pipeline: Arc<Mutex<Pipeline>>, probes: Vec<ProbeStatus>) -> Self {
        Self { pipeline, probes }
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn with<'a>(id: &'a Identity, extra: &[(&'static str, &'a str)]) -> Labels<'a> {
    let mut l: Labels<'a> = id.labels().to_vec();
    l.extend_from_slice(extra);
    l
}

/// A histogram from pre-aggregated bucket counts (not cumulative; last is +Inf).
struct RawHistogram<'a> {
    sum: f64,
    count: u64,
    buckets: &'a [(f64, u64)],
}

impl EncodeMetric for RawHistogram<'_> {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, self.buckets, None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn syscall_histogram(s: &SyscallStats) -> Vec<(f64, u64)> {
    let mut b: Vec<(f64, u64)> =
        SYSCALL_BUCKETS_NS.iter().zip(s.buckets.iter()).map(|(ns, c)| (*ns as f64 / 1e9, *c)).collect();
    b.push((f64::INFINITY, s.buckets[SYSCALL_BUCKETS_NS.len()]));
    b
}

fn rtt_histogram(s: &TcpStats) -> Vec<(f64, u64)> {
    let mut b: Vec<(f64, u64)> =
        RTT_BUCKETS_US.iter().zip(s.rtt_buckets.iter()).map(|(us, c)| (*us as f64 / 1e6, *c)).collect();
    b.push((f64::INFINITY, s.rtt_buckets[RTT_BUCKETS_US.len()]));
    b
}

fn counter<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl Iterator<Item = (Labels<'a>, u64)>,
) -> fmt::Result {
    let mut rows = rows.peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in rows {
        m.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
    }
    Ok(())
}

fn gauge<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Labels<'a>, i64)>,
) -> fmt::Result {
    let mut rows = rows.peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        m.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

impl Collector for ObserverCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let (totals, health) = {
            let mut p = self.pipeline.lock().unwrap_or_else(|e| e.into_inner());
            (p.snapshot(), p.health())
        };

        // Self-observation.
        {
            let mut m = enc.encode_descriptor(
                "observer_probe_up",
                "1 when the probe is attached, 0 when it failed (the log says why); hook is the hook type serving it",
                None,
                MetricType::Gauge,
            )?;
            for p in &self.probes {
                let l: Labels = vec![("probe", p.probe), ("hook", p.hook)];
                m.encode_family(&l)?.encode_gauge(&(p.up as i64))?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "observer_events_lost",
                "Records the kernel side could not keep, by reason",
                None,
                MetricType::Counter,
            )?;
            for (i, name) in LOST_SOURCES {
                let l: Labels = vec![("source", name)];
                m.encode_family(&l)?.encode_counter::<NoLabelSet, _, u64>(&health.lost[i as usize], None)?;
            }
        }
        gauge(
            &mut enc,
            "observer_map_entries",
            "Entries in an in-kernel table",
            health.fill.iter().map(|(n, e, _)| (vec![("map", *n)], *e as i64)),
        )?;
        gauge(
            &mut enc,
            "observer_map_capacity",
            "Capacity of an in-kernel table",
            health.fill.iter().map(|(n, _, c)| (vec![("map", *n)], *c as i64)),
        )?;
        {
            let mut m = enc.encode_descriptor(
                "observer_build",
                "Build information of the observer",
                None,
                MetricType::Info,
            )?;
            let l: Labels = vec![("version", env!("CARGO_PKG_VERSION"))];
            m.encode_info(&l)?;
        }

        // Syscalls.
        let names: std::collections::HashMap<u32, String> = totals
            .syscalls
            .keys()
            .map(|(_, nr)| *nr)
            .chain(totals.errors.keys().map(|(_, nr, _)| *nr))
            .map(|nr| (nr, syscall_name(nr)))
            .collect();
        let errnos: std::collections::HashMap<u32, String> =
            totals.errors.keys().map(|(_, _, e)| (*e, errno_name(*e))).collect();
        counter(
            &mut enc,
            "observer_syscalls",
            "Completed syscalls per cgroup",
            None,
            totals.syscalls.iter().map(|((id, nr), s)| (with(id, &[("syscall", names[nr].as_str())]), s.count)),
        )?;
        counter(
            &mut enc,
            "observer_syscall_errors",
            "Syscalls that returned an error, by errno",
            None,
            totals.errors.iter().map(|((id, nr, e), v)| {
                (with(id, &[("syscall", names[nr].as_str()), ("errno", errnos[e].as_str())]), *v)
            }),
        )?;
        if !totals.syscalls.is_empty() {
            let mut m = enc.encode_descriptor(
                "observer_syscall_duration",
                "Syscall latency, entry to exit",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for ((id, nr), s) in &totals.syscalls {
                let l = with(id, &[("syscall", names[nr].as_str())]);
                let buckets = syscall_histogram(s);
                RawHistogram { sum: s.sum_ns as f64 / 1e9, count: s.count, buckets: &buckets }
                    .encode(m.encode_family(&l)?)?;
            }
        }

        // TCP.
        let tcp = &totals.tcp;
        counter(
            &mut enc,
            "observer_tcp_connections_opened",
            "TCP connections established: inbound by accept, outbound by connect",
            None,
            tcp.iter().flat_map(|(id, s)| {
                DIRECTIONS.iter().map(move |(i, d)| (with(id, &[("direction", *d)]), s.opened[*i]))
            }),
        )?;
        counter(
            &mut enc,
            "observer_tcp_connections_closed",
            "Established TCP connections closed (including those opened before the observer started)",
            None,
            tcp.iter().map(|(id, s)| (with(id, &[]), s.closed)),
        )?;
        counter(
            &mut enc,
            "observer_tcp_connect_failures",
            "Outbound connects that failed, by reason",
            None,
            tcp.iter().flat_map(|(id, s)| {
                FAIL_NAMES.iter().map(move |(i, r)| (with(id, &[("reason", *r)]), s.connect_failures[*i]))
            }),
        )?;
        gauge(
            &mut enc,
            "observer_tcp_connections_active",
            "TCP connections open now that were established while the observer ran",
            tcp.iter().flat_map(|(id, s)| {
                DIRECTIONS.iter().map(move |(i, d)| {
                    (with(id, &[("direction", *d)]), s.tracked[*i] as i64 - s.closed_tracked[*i] as i64)
                })
            }),
        )?;
        counter(
            &mut enc,
            "observer_tcp_retransmits",
            "TCP segments retransmitted",
            None,
            tcp.iter().map(|(id, s)| (with(id, &[]), s.retransmits)),
        )?;
        counter(
            &mut enc,
            "observer_tcp_sent_bytes",
            "TCP payload bytes sent (as returned by the send calls)",
            None,
            tcp.iter().map(|(id, s)| (with(id, &[]), s.sent_bytes)),
        )?;
        counter(
            &mut enc,
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
                RawHistogram { sum: s.rtt_sum_us as f64 / 1e6, count: s.rtt_count, buckets: &buckets }
                    .encode(m.encode_family(&l)?)?;
            }
        }
        Ok(())
    }
}

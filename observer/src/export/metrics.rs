//! Prometheus metrics, encoded at scrape time from the in-kernel aggregates (a `Collector`):
//! nothing is copied into user space between scrapes.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex},
};

use observer_common::{
    SyscallStats, TcpStats, DIR_INBOUND, DIR_OUTBOUND, FAIL_OTHER, FAIL_REFUSED, FAIL_RESET,
    FAIL_TIMEOUT, FAIL_UNREACHABLE, LOST_CONN_MAP_FULL, LOST_SOCK_READ,
    LOST_SYSCALL_ERRNO_MAP_FULL, LOST_SYSCALL_MAP_FULL, LOST_SYSCALL_SLOT_COLLISION,
    LOST_TCP_MAP_FULL, RTT_BUCKETS_US, LOST_HTTP_CONN_MAP_FULL, LOST_HTTP_RINGBUF_FULL,
    LOST_HTTP_USER_READ, LOST_TCP_EDGE_MAP_FULL, LOST_LIFECYCLE_RINGBUF_FULL, LOST_OOM_VICTIM_MAP_FULL, SYSCALL_BUCKETS_NS,
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
        aggregate::{add_syscall, KernelHealth, Pipeline, Totals},
        httpagg::{Hist, APDEX_LEVELS},
        events::LifecycleCounts,
        topology::{Edge, Node, Topology},
        names::{errno_name, syscall_name},
    },
};

/// Names of the `LOST_*` counters, as the `source` label of `observer_events_lost_total`.
pub const LOST_SOURCES: [(u32, &str); 12] = [
    (LOST_SYSCALL_MAP_FULL, "syscall_table_full"),
    (LOST_SYSCALL_ERRNO_MAP_FULL, "syscall_errno_table_full"),
    (LOST_SYSCALL_SLOT_COLLISION, "syscall_entry_unmatched"),
    (LOST_TCP_MAP_FULL, "tcp_table_full"),
    (LOST_CONN_MAP_FULL, "connection_table_full"),
    (LOST_SOCK_READ, "socket_read_failed"),
    (LOST_HTTP_RINGBUF_FULL, "http_ringbuf_full"),
    (LOST_HTTP_CONN_MAP_FULL, "http_connection_table_full"),
    (LOST_HTTP_USER_READ, "http_user_read_failed"),
    (LOST_TCP_EDGE_MAP_FULL, "tcp_edge_table_full"),
    (LOST_LIFECYCLE_RINGBUF_FULL, "lifecycle_ringbuf_full"),
    (LOST_OOM_VICTIM_MAP_FULL, "oom_victim_table_full"),
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
    let mut b: Vec<(f64, u64)> = SYSCALL_BUCKETS_NS
        .iter()
        .zip(s.buckets.iter())
        .map(|(ns, c)| (*ns as f64 / 1e9, *c))
        .collect();
    b.push((f64::INFINITY, s.buckets[SYSCALL_BUCKETS_NS.len()]));
    b
}

fn rtt_histogram(s: &TcpStats) -> Vec<(f64, u64)> {
    let mut b: Vec<(f64, u64)> = RTT_BUCKETS_US
        .iter()
        .zip(s.rtt_buckets.iter())
        .map(|(us, c)| (*us as f64 / 1e6, *c))
        .collect();
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
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
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
    fn encode(&self, enc: DescriptorEncoder) -> fmt::Result {
        let (totals, health, topology) = {
            let mut p = self.pipeline.lock().unwrap_or_else(|e| e.into_inner());
            let totals = p.snapshot();
            let topology = p.topology(&totals);
            (totals, p.health(), topology)
        };
        encode_all(enc, &totals, &health, &self.probes, &topology)
    }
}

/// Encodes every family from one snapshot of the figures.
pub fn encode_all(
    mut enc: DescriptorEncoder,
    totals: &Totals,
    health: &KernelHealth,
    probes: &[ProbeStatus],
    topology: &Topology,
) -> fmt::Result {
    // Self-observation.
    {
        let mut m = enc.encode_descriptor(
                "observer_probe_up",
                "1 when the probe is attached, 0 when it failed (the log says why); hook is the hook type serving it",
                None,
                MetricType::Gauge,
            )?;
        for p in probes {
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
            m.encode_family(&l)?
                .encode_counter::<NoLabelSet, _, u64>(&health.lost[i as usize], None)?;
        }
    }
    gauge(
        &mut enc,
        "observer_map_entries",
        "Entries in an in-kernel table",
        health
            .fill
            .iter()
            .map(|(n, e, _)| (vec![("map", *n)], *e as i64)),
    )?;
    gauge(
        &mut enc,
        "observer_map_capacity",
        "Capacity of an in-kernel table",
        health
            .fill
            .iter()
            .map(|(n, _, c)| (vec![("map", *n)], *c as i64)),
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
    let errnos: std::collections::HashMap<u32, String> = totals
        .errors
        .keys()
        .map(|(_, _, e)| (*e, errno_name(*e)))
        .collect();
    counter(
        &mut enc,
        "observer_syscalls",
        "Completed syscalls per cgroup",
        None,
        totals
            .syscalls
            .iter()
            .map(|((id, nr), s)| (with(id, &[("syscall", names[nr].as_str())]), s.count)),
    )?;
    counter(
        &mut enc,
        "observer_syscall_errors",
        "Syscalls that returned an error, by errno",
        None,
        totals.errors.iter().map(|((id, nr, e), v)| {
            (
                with(
                    id,
                    &[
                        ("syscall", names[nr].as_str()),
                        ("errno", errnos[e].as_str()),
                    ],
                ),
                *v,
            )
        }),
    )?;
    // Latency per identity (not per syscall: the histogram multiplies series by its buckets,
    // so it carries only the identity labels; counts per syscall are above).
    let mut latency: BTreeMap<&Arc<Identity>, SyscallStats> = BTreeMap::new();
    for ((id, _), st) in &totals.syscalls {
        add_syscall(latency.entry(id).or_default(), st);
    }
    if !latency.is_empty() {
        let mut m = enc.encode_descriptor(
            "observer_syscall_duration",
            "Syscall latency, entry to exit, all syscalls of the workload",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (id, st) in &latency {
            let l = with(id, &[]);
            let buckets = syscall_histogram(st);
            RawHistogram {
                sum: st.sum_ns as f64 / 1e9,
                count: st.count,
                buckets: &buckets,
            }
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
            DIRECTIONS
                .iter()
                .map(move |(i, d)| (with(id, &[("direction", *d)]), s.opened[*i]))
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
            FAIL_NAMES
                .iter()
                .map(move |(i, r)| (with(id, &[("reason", *r)]), s.connect_failures[*i]))
        }),
    )?;
    gauge(
        &mut enc,
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
            RawHistogram {
                sum: s.rtt_sum_us as f64 / 1e6,
                count: s.rtt_count,
                buckets: &buckets,
            }
            .encode(m.encode_family(&l)?)?;
        }
    }
    encode_http(&mut enc, totals, health)?;
    encode_topology(&mut enc, topology)
}

/// Service-graph label values of an edge: client, client_namespace, server, server_namespace,
/// connection_type.
type GraphLabels = (String, String, String, String, &'static str);

/// The topology with Tempo's service-graph names, so Grafana's node graph works unchanged.
/// Edges whose ends carry the same names (two pods of one service) are summed.
fn encode_topology(enc: &mut DescriptorEncoder, topology: &Topology) -> fmt::Result {
    let mut graph: BTreeMap<GraphLabels, Edge> = BTreeMap::new();
    for (k, e) in &topology.edges {
        let labels = (
            k.client.name().to_string(),
            k.client.namespace().to_string(),
            k.server.name().to_string(),
            k.server.namespace().to_string(),
            Node::connection_type(&k.client, &k.server),
        );
        let g = graph.entry(labels).or_default();
        g.requests += e.requests;
        g.failed += e.failed;
        g.tcp.connections += e.tcp.connections;
        g.tcp.connect_failures += e.tcp.connect_failures;
        g.tcp.bytes_client_to_server += e.tcp.bytes_client_to_server;
        g.tcp.bytes_server_to_client += e.tcp.bytes_server_to_client;
        g.tcp.retransmits += e.tcp.retransmits;
        for (into, from) in [
            (&mut g.server_seconds, &e.server_seconds),
            (&mut g.client_seconds, &e.client_seconds),
        ] {
            if let Some(h) = from {
                match into {
                    Some(x) => x.merge(h),
                    None => *into = Some(h.clone()),
                }
            }
        }
    }
    let label_set = |l: &GraphLabels| -> Vec<(&'static str, String)> {
        vec![
            ("client", l.0.clone()),
            ("client_namespace", l.1.clone()),
            ("server", l.2.clone()),
            ("server_namespace", l.3.clone()),
            ("connection_type", l.4.to_string()),
        ]
    };
    if graph.is_empty() {
        return Ok(());
    }
    // TCP per edge (every connection, HTTP or not).
    type TcpField = fn(&Edge) -> u64;
    let tcp_families: [(&str, &str, TcpField); 4] = [
        ("observer_tcp_edge_connections", "TCP connections established between two nodes of the service graph", |e| e.tcp.connections),
        ("observer_tcp_edge_connect_failures", "Failed TCP connects from the client node to the server node", |e| e.tcp.connect_failures),
        ("observer_tcp_edge_retransmits", "TCP retransmits on the connections of an edge (either end)", |e| e.tcp.retransmits),
        ("observer_tcp_edge_bytes_client_to_server", "Payload bytes the client sent to the server", |e| e.tcp.bytes_client_to_server),
    ];
    for (name, help, field) in tcp_families {
        let rows: Vec<_> = graph.iter().filter(|(_, e)| e.tcp != Default::default()).collect();
        if rows.is_empty() {
            continue;
        }
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (l, e) in rows {
            m.encode_family(&label_set(l))?
                .encode_counter::<NoLabelSet, _, u64>(&field(e), None)?;
        }
    }
    {
        let rows: Vec<_> = graph.iter().filter(|(_, e)| e.tcp != Default::default()).collect();
        if !rows.is_empty() {
            let mut m = enc.encode_descriptor(
                "observer_tcp_edge_bytes_server_to_client",
                "Payload bytes the server sent to the client",
                None,
                MetricType::Counter,
            )?;
            for (l, e) in rows {
                m.encode_family(&label_set(l))?
                    .encode_counter::<NoLabelSet, _, u64>(&e.tcp.bytes_server_to_client, None)?;
            }
        }
    }
    for (name, help, failed) in [
        ("traces_service_graph_request", "Requests between two nodes of the service graph", false),
        ("traces_service_graph_request_failed", "Failed requests (5xx or no response) between two nodes", true),
    ] {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        let http_edges = graph
            .iter()
            .filter(|(_, e)| e.requests > 0 || e.client_seconds.is_some() || e.server_seconds.is_some());
        for (l, e) in http_edges {
            let v = if failed { e.failed } else { e.requests };
            m.encode_family(&label_set(l))?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
    }
    for (name, help, server) in [
        ("traces_service_graph_request_server", "Request duration as the server measured it", true),
        ("traces_service_graph_request_client", "Request duration as the client measured it", false),
    ] {
        let rows: Vec<(&GraphLabels, &Hist)> = graph
            .iter()
            .filter_map(|(l, e)| {
                let h = if server { e.server_seconds.as_ref() } else { e.client_seconds.as_ref() };
                h.map(|h| (l, h))
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        let mut m = enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
        for (l, h) in rows {
            let buckets = hist_buckets(h);
            RawHistogram { sum: h.sum, count: h.count, buckets: &buckets }
                .encode(m.encode_family(&label_set(l))?)?;
        }
    }
    Ok(())
}

fn status_label(s: Option<u16>) -> String {
    s.map(|s| s.to_string()).unwrap_or_default()
}

fn hist_buckets(h: &Hist) -> Vec<(f64, u64)> {
    let mut b: Vec<(f64, u64)> = h.bounds.iter().copied().zip(h.counts.iter().copied()).collect();
    b.push((f64::INFINITY, h.counts.last().copied().unwrap_or(0)));
    b
}

/// HTTP families (OpenTelemetry semantic-convention names, as Beyla exports them).
fn encode_http(enc: &mut DescriptorEncoder, totals: &Totals, health: &KernelHealth) -> fmt::Result {
    let http = &totals.http;
    if !http.server.is_empty() {
        let mut m = enc.encode_descriptor(
            "http_server_request_duration",
            "Duration of HTTP requests a workload answered: first byte of the request read to last byte of the response written",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for ((id, k), h) in &http.server {
            let status = status_label(k.status);
            let l = with(
                id,
                &[
                    ("http_request_method", k.method),
                    ("http_response_status_code", &status),
                    ("http_route", &k.route),
                    ("error_type", k.error_type.unwrap_or("")),
                ],
            );
            let buckets = hist_buckets(h);
            RawHistogram { sum: h.sum, count: h.count, buckets: &buckets }
                .encode(m.encode_family(&l)?)?;
        }
    }
    if !http.client.is_empty() {
        let mut m = enc.encode_descriptor(
            "http_client_request_duration",
            "Duration of HTTP requests a workload made: request written to last byte of the response read",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for ((id, k), h) in &http.client {
            let status = status_label(k.status);
            let port = k.server_port.to_string();
            let address = k.server_address.to_string();
            let l = with(
                id,
                &[
                    ("http_request_method", k.method),
                    ("http_response_status_code", &status),
                    ("server_address", &address),
                    ("server_port", &port),
                    ("error_type", k.error_type.unwrap_or("")),
                ],
            );
            let buckets = hist_buckets(h);
            RawHistogram { sum: h.sum, count: h.count, buckets: &buckets }
                .encode(m.encode_family(&l)?)?;
        }
    }
    counter(
        enc,
        "http_server_request_apdex",
        "Requests answered by APDEX level against the service's threshold T: satisfied <= T, tolerating <= 4T, frustrated above or failed (5xx, no response)",
        None,
        http.apdex.iter().flat_map(|(id, a)| {
            APDEX_LEVELS
                .iter()
                .enumerate()
                .map(move |(i, lvl)| (with(id, &[("apdex_level", lvl)]), a[i]))
        }),
    )?;
    if !http.threshold.is_empty() {
        let mut m = enc.encode_descriptor(
            "http_server_apdex_threshold",
            "APDEX threshold T of the service",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for (id, t) in &http.threshold {
            m.encode_family(&with(id, &[]))?.encode_gauge(t)?;
        }
    }
    gauge(
        enc,
        "http_server_active_clients",
        "Distinct client addresses that made a request in the last 60 s",
        http.active_clients.iter().map(|(id, n)| (with(id, &[]), *n as i64)),
    )?;
    counter(
        enc,
        "observer_http_messages_unparsed",
        "HTTP message starts the observer could not use, by reason",
        None,
        health.http.unparsed.iter().map(|(r, n)| (vec![("reason", *r)], *n)),
    )?;
    counter(
        enc,
        "observer_http_routes_overflow",
        "Requests whose route went to /{overflow} because the service reached its route cap",
        None,
        health
            .http
            .routes_overflow
            .iter()
            .map(|(svc, n)| (vec![("service_name", svc.as_str())], *n)),
    )?;
    encode_lifecycle(enc, &totals.lifecycle)
}

/// OOM kills, exits, restarts, Kubernetes Warning events and replica counts.
fn encode_lifecycle(enc: &mut DescriptorEncoder, l: &LifecycleCounts) -> fmt::Result {
    counter(
        enc,
        "observer_container_oom_kills",
        "Processes of the container the kernel's OOM killer killed",
        None,
        l.oom_kills.iter().map(|(id, n)| (with(id, &[]), *n)),
    )?;
    counter(
        enc,
        "observer_container_exits",
        "Exits of a container's (or host service's) main process: exited (with a code), signaled, oom_killed",
        None,
        l.exits
            .iter()
            .map(|((id, r), n)| (with(id, &[("reason", r.as_str())]), *n)),
    )?;
    counter(
        enc,
        "observer_container_restarts",
        "Container restarts, with the reason Kubernetes gives (OOMKilled, Error, CrashLoopBackOff, ...)",
        None,
        l.restarts
            .iter()
            .map(|((id, r), n)| (with(id, &[("reason", r.as_str())]), *n)),
    )?;
    counter(
        enc,
        "observer_kubernetes_events",
        "Kubernetes Warning events of this node's pods, by reason",
        None,
        l.kube_events.iter().map(|(k, n)| {
            let labels: Labels = vec![
                ("type", k.event_type.as_str()),
                ("reason", k.reason.as_str()),
                ("k8s_namespace_name", k.namespace.as_str()),
                ("k8s_pod_name", k.pod.as_str()),
            ];
            (labels, *n)
        }),
    )?;
    gauge(
        enc,
        "observer_workload_replicas",
        "Replicas of a workload: desired (spec), ready, hpa_desired (when an HPA targets it)",
        l.replicas.iter().flat_map(|(k, r)| {
            let base = [
                ("k8s_namespace_name", k.namespace.as_str()),
                ("kind", k.kind.as_str()),
                ("workload", k.name.as_str()),
            ];
            let mut rows = vec![
                (state_labels(&base, "desired"), r.desired),
                (state_labels(&base, "ready"), r.ready),
            ];
            if let Some(h) = r.hpa_desired {
                rows.push((state_labels(&base, "hpa_desired"), h));
            }
            rows
        }),
    )
}

fn state_labels<'a>(base: &[(&'static str, &'a str); 3], state: &'static str) -> Labels<'a> {
    let mut l = base.to_vec();
    l.push(("state", state));
    l
}

#[cfg(test)]
mod tests {
    use observer_common::SYSCALL_NBUCKETS;
    use prometheus_client::{encoding::prometheus_text, registry::Registry};

    use super::*;

    #[derive(Debug)]
    struct Fixed(Totals, KernelHealth, Vec<ProbeStatus>);
    impl Collector for Fixed {
        fn encode(&self, enc: DescriptorEncoder) -> fmt::Result {
            encode_all(enc, &self.0, &self.1, &self.2, &Topology::default())
        }
    }

    fn encode(t: Totals) -> String {
        let probes = vec![ProbeStatus {
            probe: "syscalls",
            hook: "tp_btf",
            up: true,
            reason: None,
        }];
        let mut r = Registry::default();
        r.register_collector(Box::new(Fixed(t, KernelHealth::default(), probes)));
        let mut out = String::new();
        prometheus_text::encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn syscalls_encode_with_names_and_one_histogram_per_identity() {
        let id = Arc::new(Identity {
            k8s_pod_uid: "u-1".into(),
            service_name: "nginx".into(),
            ..Default::default()
        });
        let mut t = Totals::default();
        let mut read = SyscallStats {
            count: 3,
            errors: 1,
            sum_ns: 3_000,
            buckets: [0; SYSCALL_NBUCKETS],
        };
        read.buckets[0] = 3;
        let mut write = SyscallStats {
            count: 2,
            errors: 0,
            sum_ns: 2_000_000_000,
            buckets: [0; SYSCALL_NBUCKETS],
        };
        write.buckets[SYSCALL_NBUCKETS - 1] = 2;
        #[cfg(target_arch = "x86_64")]
        let (nr_read, nr_write) = (0, 1);
        #[cfg(not(target_arch = "x86_64"))]
        let (nr_read, nr_write) = (63, 64);
        t.syscalls.insert((id.clone(), nr_read), read);
        t.syscalls.insert((id.clone(), nr_write), write);
        t.errors.insert((id.clone(), nr_read, 11), 1);
        let out = encode(t);
        let labels = "k8s_namespace_name=\"\",k8s_pod_name=\"\",k8s_pod_uid=\"u-1\",k8s_container_name=\"\",service_name=\"nginx\"";
        assert!(
            out.contains(&format!(
                "observer_syscalls_total{{{labels},syscall=\"read\"}} 3\n"
            )),
            "{out}"
        );
        assert!(out.contains(&format!(
            "observer_syscalls_total{{{labels},syscall=\"write\"}} 2\n"
        )));
        assert!(out.contains(&format!(
            "observer_syscall_errors_total{{{labels},syscall=\"read\",errno=\"EAGAIN\"}} 1\n"
        )));
        // One histogram for the identity, cumulative buckets, seconds.
        assert!(
            out.contains(&format!(
                "observer_syscall_duration_seconds_count{{{labels}}} 5\n"
            )),
            "{out}"
        );
        assert!(out.contains(&format!(
            "observer_syscall_duration_seconds_sum{{{labels}}} 2.000003\n"
        )));
        assert!(
            out.contains(&format!(
                "observer_syscall_duration_seconds_bucket{{{labels},le=\"1e-05\"}} 3\n"
            )) || out.contains(&format!(
                "observer_syscall_duration_seconds_bucket{{{labels},le=\"0.00001\"}} 3\n"
            )),
            "{out}"
        );
        assert!(out.contains(&format!(
            "observer_syscall_duration_seconds_bucket{{{labels},le=\"0.1\"}} 3\n"
        )));
        assert!(out.contains(&format!(
            "observer_syscall_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 5\n"
        )));
        assert!(out.contains("observer_probe_up{probe=\"syscalls\",hook=\"tp_btf\"} 1\n"));
        assert!(out.contains("observer_build_info{version="));
        assert!(
            !out.contains("observer_tcp_"),
            "no TCP figures, no TCP families"
        );
    }

    #[test]
    fn tcp_active_is_tracked_opens_minus_tracked_closes() {
        let id = Arc::new(Identity {
            service_name: "/".into(),
            ..Default::default()
        });
        let mut t = Totals::default();
        let s = TcpStats {
            opened: [5, 7],
            tracked: [5, 6],
            closed_tracked: [2, 6],
            closed: 9,
            ..Default::default()
        };
        t.tcp.insert(id, s);
        let out = encode(t);
        assert!(
            out.contains("service_name=\"/\",direction=\"inbound\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("observer_tcp_connections_active{k8s_namespace_name=\"\",k8s_pod_name=\"\",k8s_pod_uid=\"\",k8s_container_name=\"\",service_name=\"/\",direction=\"outbound\"} 0\n"));
        assert!(out.contains("observer_tcp_connections_opened_total{k8s_namespace_name=\"\",k8s_pod_name=\"\",k8s_pod_uid=\"\",k8s_container_name=\"\",service_name=\"/\",direction=\"outbound\"} 7\n"));
        assert!(out.contains("observer_tcp_connections_closed_total{k8s_namespace_name=\"\",k8s_pod_name=\"\",k8s_pod_uid=\"\",k8s_container_name=\"\",service_name=\"/\"} 9\n"));
    }
}

//! The observer's own families: probes, lost records, table fill, what the L7 path could not
//! use, targets capped, build.

use std::fmt;

use observer_common::{
    LOST_CONN_MAP_FULL, LOST_L7_CONN_MAP_FULL, LOST_L7_RINGBUF_FULL, LOST_L7_STALE_STATE,
    LOST_L7_USER_READ, LOST_LIFECYCLE_RINGBUF_FULL, LOST_OOM_VICTIM_MAP_FULL, LOST_SOCK_READ,
    LOST_SYSCALL_ERRNO_MAP_FULL, LOST_SYSCALL_MAP_FULL, LOST_SYSCALL_SLOT_COLLISION,
    LOST_TCP_EDGE_MAP_FULL, LOST_TCP_MAP_FULL, LOST_TLS_CONN_MAP_FULL, LOST_TLS_GO_CALL_MAP_FULL,
    LOST_TLS_GO_NO_SOCKET, LOST_TLS_NO_SOCKET, LOST_TLS_SLOT_COLLISION,
};
use prometheus_client::{
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
};

use super::{counter, gauge, Labels};
use crate::{ebpf::load::ProbeStatus, pipeline::aggregate::KernelHealth};

/// The prefix of the HTTP/2 tracker's reasons that are table states, not lost records.
const HEADER_TABLE: &str = "header_table_";

/// Names of the `LOST_*` counters, as the `source` label of `observer_events_lost_total`.
pub const LOST_SOURCES: [(u32, &str); 18] = [
    (LOST_SYSCALL_MAP_FULL, "syscall_table_full"),
    (LOST_SYSCALL_ERRNO_MAP_FULL, "syscall_errno_table_full"),
    (LOST_SYSCALL_SLOT_COLLISION, "syscall_entry_unmatched"),
    (LOST_TCP_MAP_FULL, "tcp_table_full"),
    (LOST_CONN_MAP_FULL, "connection_table_full"),
    (LOST_SOCK_READ, "socket_read_failed"),
    (LOST_L7_RINGBUF_FULL, "l7_ringbuf_full"),
    (LOST_L7_CONN_MAP_FULL, "l7_connection_table_full"),
    (LOST_L7_USER_READ, "l7_user_read_failed"),
    (LOST_TCP_EDGE_MAP_FULL, "tcp_edge_table_full"),
    (LOST_LIFECYCLE_RINGBUF_FULL, "lifecycle_ringbuf_full"),
    (LOST_OOM_VICTIM_MAP_FULL, "oom_victim_table_full"),
    (LOST_L7_STALE_STATE, "l7_stale_state"),
    (LOST_TLS_SLOT_COLLISION, "tls_call_slot_taken"),
    (LOST_TLS_NO_SOCKET, "tls_call_without_socket"),
    (LOST_TLS_CONN_MAP_FULL, "tls_connection_table_full"),
    (LOST_TLS_GO_NO_SOCKET, "tls_go_no_socket"),
    (LOST_TLS_GO_CALL_MAP_FULL, "tls_go_call_table_full"),
];

pub fn encode(
    enc: &mut DescriptorEncoder,
    health: &KernelHealth,
    probes: &[ProbeStatus],
) -> fmt::Result {
    {
        let mut m = enc.encode_descriptor(
            "observer_probe_up",
            "1 when the probe is attached, 0 when it failed (the log says why); hook is the hook type serving it",
            None,
            MetricType::Gauge,
        )?;
        for p in probes {
            let l: Labels = vec![("probe", p.probe), ("hook", p.hook)];
            m.encode_family(&l)?.encode_gauge(&i64::from(p.up))?;
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
        enc,
        "observer_map_entries",
        "Entries in an in-kernel table",
        health
            .fill
            .iter()
            .map(|(n, e, _)| (vec![("map", *n)], *e as i64)),
    )?;
    gauge(
        enc,
        "observer_map_capacity",
        "Capacity of an in-kernel table",
        health
            .fill
            .iter()
            .map(|(n, _, c)| (vec![("map", *n)], *c as i64)),
    )?;
    if probes.iter().any(|p| p.probe == "tls") {
        let t = crate::ebpf::tls::figures();
        gauge(
            enc,
            "observer_tls_libraries_probed",
            "TLS library files (shared libraries or programs with their own copy) whose calls are probed",
            std::iter::once((vec![], t.libraries as i64)),
        )?;
        counter(
            enc,
            "observer_tls_attach_failures",
            "TLS library files found but not probed (the log says why)",
            None,
            std::iter::once((vec![], t.attach_failures)),
        )?;
    }
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
    let malformed = [("l7", "malformed_record", health.l7.malformed)];
    // HTTP/2's HPACK tables known only in part: a family of their own (OBI's name), not
    // records lost.
    let (tables, unparsed): (Vec<_>, Vec<_>) = (health.l7.unparsed.iter())
        .partition(|(p, r, _)| *p == "http2" && r.starts_with(HEADER_TABLE));
    counter(
        enc,
        "observer_l7_messages_unparsed",
        "Kernel records of an L7 protocol the observer could not use, by protocol and reason",
        None,
        (unparsed.into_iter())
            .chain(malformed.iter().filter(|m| m.2 > 0))
            .map(|(p, r, n)| (vec![("protocol", *p), ("reason", *r)], *n)),
    )?;
    counter(
        enc,
        "observer_http2_header_table_unsynced",
        "HTTP/2 connection directions whose HPACK table is known only in part: joined mid-way \
         (entries from before the observer), or a header block that could not be read \
         (undecodable); their streams are counted with _unknown names, never wrong ones",
        None,
        (tables.into_iter()).map(|(_, r, n)| (vec![("reason", &r[HEADER_TABLE.len()..])], *n)),
    )?;
    counter(
        enc,
        "observer_l7_targets_overflow",
        "Requests whose target (route) went to /{overflow} because the service reached its cap",
        None,
        health
            .targets_overflow
            .iter()
            .map(|(p, svc, n)| (vec![("protocol", *p), ("service_name", svc.as_str())], *n)),
    )?;
    gauge(
        enc,
        "observer_l7_connections_tracked",
        "Connections the user-space L7 protocols follow (pipelined or in-flight exchanges)",
        std::iter::once((vec![], health.l7.conns as i64)),
    )
}

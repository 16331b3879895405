//! The topology with Tempo's service-graph names, so Grafana's node graph works unchanged, and
//! the TCP figures of each edge.

use std::{collections::BTreeMap, fmt};

use prometheus_client::{
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Unit,
};

use super::histogram;
use crate::{
    model::Hist,
    pipeline::topology::{Edge, Node, Topology},
};

/// Service-graph label values of an edge: client, client_namespace, server, server_namespace,
/// connection_type.
type GraphLabels = (String, String, String, String, &'static str);

/// The topology with Tempo's service-graph names, so Grafana's node graph works unchanged.
/// Edges whose ends carry the same names (two pods of one service) are summed.
pub fn encode(enc: &mut DescriptorEncoder, topology: &Topology) -> fmt::Result {
    let mut graph: BTreeMap<GraphLabels, Edge> = BTreeMap::new();
    for (k, e) in &topology.edges {
        let labels = (
            k.client.name().to_string(),
            k.client.namespace().to_string(),
            k.server.name().to_string(),
            k.server.namespace().to_string(),
            Node::connection_type(&k.client, &k.server, e),
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
        (
            "observer_tcp_edge_connections",
            "TCP connections established between two nodes of the service graph",
            |e| e.tcp.connections,
        ),
        (
            "observer_tcp_edge_connect_failures",
            "Failed TCP connects from the client node to the server node",
            |e| e.tcp.connect_failures,
        ),
        (
            "observer_tcp_edge_retransmits",
            "TCP retransmits on the connections of an edge (either end)",
            |e| e.tcp.retransmits,
        ),
        (
            "observer_tcp_edge_bytes_client_to_server",
            "Payload bytes the client sent to the server",
            |e| e.tcp.bytes_client_to_server,
        ),
    ];
    for (name, help, field) in tcp_families {
        let rows: Vec<_> = graph
            .iter()
            .filter(|(_, e)| e.tcp != Default::default())
            .collect();
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
        let rows: Vec<_> = graph
            .iter()
            .filter(|(_, e)| e.tcp != Default::default())
            .collect();
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
        (
            "traces_service_graph_request",
            "Requests between two nodes of the service graph",
            false,
        ),
        (
            "traces_service_graph_request_failed",
            "Failed requests (5xx or no response) between two nodes",
            true,
        ),
    ] {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        let http_edges = graph.iter().filter(|(_, e)| {
            e.requests > 0 || e.client_seconds.is_some() || e.server_seconds.is_some()
        });
        for (l, e) in http_edges {
            let v = if failed { e.failed } else { e.requests };
            m.encode_family(&label_set(l))?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
    }
    for (name, help, server) in [
        (
            "traces_service_graph_request_server",
            "Request duration as the server measured it",
            true,
        ),
        (
            "traces_service_graph_request_client",
            "Request duration as the client measured it",
            false,
        ),
    ] {
        let rows: Vec<(&GraphLabels, &Hist)> = graph
            .iter()
            .filter_map(|(l, e)| {
                let h = if server {
                    e.server_seconds.as_ref()
                } else {
                    e.client_seconds.as_ref()
                };
                h.map(|h| (l, h))
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        let mut m =
            enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
        for (l, h) in rows {
            histogram(&mut m, &label_set(l), h)?;
        }
    }
    Ok(())
}

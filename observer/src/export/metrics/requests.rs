//! The request families of every L7 protocol, named by its `Spec` (OpenTelemetry's semantic
//! conventions: `http_server_request_duration_seconds`, ...), and the service-level APDEX and
//! active clients of the protocols that keep them.

use std::{collections::BTreeMap, fmt};

use prometheus_client::{encoding::DescriptorEncoder, metrics::MetricType, registry::Unit};

use super::{counter, gauge, histogram, with, Labels};
use crate::{
    l7::Status,
    pipeline::requests::{ClientKey, RequestTotals, ServerKey, APDEX_LEVELS},
};

/// A server series' labels beyond the identity (`status` is its status's label value).
/// `url_scheme`'s value of a series over TLS or not.
fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

fn server_labels<'a>(k: &'a ServerKey, status: &'a str) -> Labels<'a> {
    let spec = k.protocol;
    let mut extra: Labels = spec.constant_labels.to_vec();
    if spec.url_scheme {
        extra.push(("url_scheme", scheme(k.tls)));
    }
    extra.extend([
        (spec.operation_label, k.operation),
        (spec.status_label, status),
        (spec.server_target_label, &*k.target),
        ("error_type", k.error_type.unwrap_or("")),
    ]);
    extra
}

/// A client series' labels beyond the identity (`status`, `address` and `port`: its label
/// values).
fn client_labels<'a>(
    k: &'a ClientKey,
    status: &'a str,
    address: &'a str,
    port: &'a str,
) -> Labels<'a> {
    let spec = k.protocol;
    let mut extra: Labels = spec.constant_labels.to_vec();
    if spec.url_scheme {
        extra.push(("url_scheme", scheme(k.tls)));
    }
    extra.extend([
        (spec.operation_label, k.operation),
        (spec.status_label, status),
    ]);
    if let (Some(label), Some(t)) = (spec.client_target_label, &k.target) {
        extra.push((label, t));
    }
    extra.extend([
        ("server_address", address),
        ("server_port", port),
        ("error_type", k.error_type.unwrap_or("")),
    ]);
    extra
}

/// `rpc_message_type` values of a series' message counts (received, sent).
const MESSAGE_TYPES: [&str; 2] = ["RECEIVED", "SENT"];

fn status_label(s: Option<&Status>) -> String {
    s.map(Status::label).unwrap_or_default()
}

/// A family's name without the unit suffix prometheus-client adds.
fn base(name: &str) -> &str {
    name.strip_suffix("_seconds").unwrap_or(name)
}

pub fn encode(enc: &mut DescriptorEncoder, r: &RequestTotals) -> fmt::Result {
    // The families with figures, each once, though several protocols share it (the database
    // protocols' `db_client_operation_duration_seconds`, told apart by their constant labels).
    let mut server_families: BTreeMap<&'static str, &'static str> = BTreeMap::new();
    let mut client_families: BTreeMap<&'static str, &'static str> = BTreeMap::new();
    for (_, k) in r.server.keys() {
        server_families.insert(k.protocol.server.name, k.protocol.server.help);
    }
    for (_, k) in r.client.keys() {
        client_families.insert(k.protocol.client.name, k.protocol.client.help);
    }
    for (name, help) in server_families {
        let mut m = enc.encode_descriptor(
            base(name),
            help,
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for ((id, k), h) in r
            .server
            .iter()
            .filter(|((_, k), _)| k.protocol.server.name == name)
        {
            let status = status_label(k.status.as_ref());
            histogram(&mut m, &with(id, &server_labels(k, &status)), h)?;
        }
    }
    for (name, help) in client_families {
        let mut m = enc.encode_descriptor(
            base(name),
            help,
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for ((id, k), h) in r
            .client
            .iter()
            .filter(|((_, k), _)| k.protocol.client.name == name)
        {
            let status = status_label(k.status.as_ref());
            let port = k.server_port.to_string();
            let address = k.server_address.to_string();
            let extra = client_labels(k, &status, &address, &port);
            histogram(&mut m, &with(id, &extra), h)?;
        }
    }
    // Message counts (gRPC), per family the protocols name.
    let mut message_families: BTreeMap<&'static str, ()> = BTreeMap::new();
    for (_, k) in r.server_messages.keys() {
        if let Some([name, _]) = k.protocol.messages {
            message_families.insert(name, ());
        }
    }
    for name in message_families.keys() {
        let rows: Vec<_> = (r.server_messages.iter())
            .filter(|((_, k), _)| k.protocol.messages.is_some_and(|m| m[0] == *name))
            .map(|((id, k), m)| (status_label(k.status.as_ref()), k, &**id, *m))
            .collect();
        counter(
            enc,
            name,
            "Messages of the calls answered (streaming calls carry several), received and sent",
            None,
            rows.iter().flat_map(|(status, k, id, m)| {
                (0..2).map(move |i| {
                    let mut l = with(id, &server_labels(k, status));
                    l.push(("rpc_message_type", MESSAGE_TYPES[i]));
                    (l, m[i])
                })
            }),
        )?;
    }
    let mut message_families: BTreeMap<&'static str, ()> = BTreeMap::new();
    for (_, k) in r.client_messages.keys() {
        if let Some([_, name]) = k.protocol.messages {
            message_families.insert(name, ());
        }
    }
    for name in message_families.keys() {
        let rows: Vec<_> = (r.client_messages.iter())
            .filter(|((_, k), _)| k.protocol.messages.is_some_and(|m| m[1] == *name))
            .map(|((id, k), m)| {
                let labels = (
                    status_label(k.status.as_ref()),
                    k.server_address.to_string(),
                    k.server_port.to_string(),
                );
                (labels, k, &**id, *m)
            })
            .collect();
        counter(
            enc,
            name,
            "Messages of the calls made (streaming calls carry several), received and sent",
            None,
            rows.iter().flat_map(|((status, address, port), k, id, m)| {
                (0..2).map(move |i| {
                    let mut l = with(id, &client_labels(k, status, address, port));
                    l.push(("rpc_message_type", MESSAGE_TYPES[i]));
                    (l, m[i])
                })
            }),
        )?;
    }
    counter(
        enc,
        "http_server_request_apdex",
        "Requests answered by APDEX level against the service's threshold T: satisfied <= T, tolerating <= 4T, frustrated above or failed (5xx, no response)",
        None,
        r.apdex.iter().flat_map(|(id, a)| {
            APDEX_LEVELS
                .iter()
                .enumerate()
                .map(move |(i, lvl)| (with(id, &[("apdex_level", lvl)]), a[i]))
        }),
    )?;
    if !r.threshold.is_empty() {
        let mut m = enc.encode_descriptor(
            "http_server_apdex_threshold",
            "APDEX threshold T of the service",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for (id, t) in &r.threshold {
            m.encode_family(&with(id, &[]))?.encode_gauge(t)?;
        }
    }
    gauge(
        enc,
        "http_server_active_clients",
        "Distinct client addresses that made a request in the last 60 s",
        r.active_clients
            .iter()
            .map(|(id, n)| (with(id, &[]), *n as i64)),
    )
}

//! The request families of every L7 protocol, named by its `Spec` (OpenTelemetry's semantic
//! conventions: `http_server_request_duration_seconds`, ...), and the service-level APDEX and
//! active clients of the protocols that keep them.

use std::{collections::BTreeSet, fmt};

use prometheus_client::{encoding::DescriptorEncoder, metrics::MetricType, registry::Unit};

use super::{counter, gauge, histogram, with, Labels};
use crate::{
    l7::{Spec, Status},
    pipeline::requests::{RequestTotals, APDEX_LEVELS},
};

fn status_label(s: Option<&Status>) -> String {
    s.map(Status::label).unwrap_or_default()
}

/// A family's name without the unit suffix prometheus-client adds.
fn base(name: &str) -> &str {
    name.strip_suffix("_seconds").unwrap_or(name)
}

pub fn encode(enc: &mut DescriptorEncoder, r: &RequestTotals) -> fmt::Result {
    // The protocols with figures, in id order: every family once.
    let specs: BTreeSet<&'static Spec> = r
        .server
        .keys()
        .map(|(_, k)| k.protocol)
        .chain(r.client.keys().map(|(_, k)| k.protocol))
        .collect();
    for spec in specs {
        let server: Vec<_> = r
            .server
            .iter()
            .filter(|((_, k), _)| k.protocol == spec)
            .collect();
        if !server.is_empty() {
            let mut m = enc.encode_descriptor(
                base(spec.server.name),
                spec.server.help,
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for ((id, k), h) in server {
                let status = status_label(k.status.as_ref());
                let l = with(
                    id,
                    &[
                        (spec.operation_label, k.operation),
                        (spec.status_label, &status),
                        (spec.server_target_label, &k.target),
                        ("error_type", k.error_type.unwrap_or("")),
                    ],
                );
                histogram(&mut m, &l, h)?;
            }
        }
        let client: Vec<_> = r
            .client
            .iter()
            .filter(|((_, k), _)| k.protocol == spec)
            .collect();
        if !client.is_empty() {
            let mut m = enc.encode_descriptor(
                base(spec.client.name),
                spec.client.help,
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for ((id, k), h) in client {
                let status = status_label(k.status.as_ref());
                let port = k.server_port.to_string();
                let address = k.server_address.to_string();
                let mut extra: Labels = vec![
                    (spec.operation_label, k.operation),
                    (spec.status_label, &status),
                ];
                if let (Some(label), Some(t)) = (spec.client_target_label, &k.target) {
                    extra.push((label, t));
                }
                extra.extend([
                    ("server_address", address.as_str()),
                    ("server_port", port.as_str()),
                    ("error_type", k.error_type.unwrap_or("")),
                ]);
                histogram(&mut m, &with(id, &extra), h)?;
            }
        }
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

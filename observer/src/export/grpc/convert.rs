//! From the pipeline's types to the generated `observer.v1` messages: identities, histograms
//! and their quantiles, TCP figures, live requests. The domain types never see prost.

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use observer_common::{
    TcpStats, DIR_INBOUND, DIR_OUTBOUND, FAIL_OTHER, FAIL_REFUSED, FAIL_RESET, FAIL_TIMEOUT,
    FAIL_UNREACHABLE, RTT_BUCKETS_US,
};

use super::pb;
use crate::{
    identity::Identity,
    l7::{Side, Spec},
    model::Hist,
    pipeline::{live::LiveRequest, requests::APDEX_LEVELS, topology::Node},
};

pub fn workload(id: &Identity) -> pb::Workload {
    pb::Workload {
        namespace: id.k8s_namespace_name.clone(),
        pod_name: id.k8s_pod_name.clone(),
        pod_uid: id.k8s_pod_uid.clone(),
        container_name: id.k8s_container_name.clone(),
        service_name: id.service_name.clone(),
    }
}

/// Unix nanoseconds (0 before 1970, which a wall clock never is here).
pub fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

/// Cumulative buckets from per-bucket counts (the last one is +Inf).
pub fn cumulative(bounds: &[f64], counts: &[u64]) -> Vec<pb::Bucket> {
    let mut acc = 0;
    counts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            acc += c;
            pb::Bucket {
                le: bounds.get(i).copied().unwrap_or(f64::INFINITY),
                cumulative_count: acc,
            }
        })
        .collect()
}

/// The `q` quantile of a histogram with cumulative buckets, as Prometheus' histogram_quantile
/// computes it: linear interpolation inside the bucket that holds the rank (from 0 for the
/// first bucket); a rank in the +Inf bucket gives the highest finite bound. NaN when empty.
pub fn quantile(q: f64, buckets: &[pb::Bucket]) -> f64 {
    let Some(last) = buckets.last() else {
        return f64::NAN;
    };
    let total = last.cumulative_count as f64;
    if total == 0.0 || buckets.len() < 2 {
        return f64::NAN;
    }
    let rank = q * total;
    let finite = &buckets[..buckets.len() - 1];
    let b = finite
        .iter()
        .position(|x| x.cumulative_count as f64 >= rank)
        .unwrap_or(finite.len());
    if b == finite.len() {
        return finite[finite.len() - 1].le;
    }
    if b == 0 && buckets[0].le <= 0.0 {
        return buckets[0].le;
    }
    let (start, below) = if b == 0 {
        (0.0, 0.0)
    } else {
        (buckets[b - 1].le, buckets[b - 1].cumulative_count as f64)
    };
    let end = buckets[b].le;
    let count = buckets[b].cumulative_count as f64 - below;
    start + (end - start) * ((rank - below) / count)
}

fn finite_or_zero(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

/// Mean and quantiles of a histogram (zeros when it is empty or absent).
pub fn summary(h: Option<&Hist>) -> pb::LatencySummary {
    let Some(h) = h.filter(|h| h.count > 0) else {
        return pb::LatencySummary::default();
    };
    let b = cumulative(&h.bounds, &h.counts);
    pb::LatencySummary {
        count: h.count,
        mean_seconds: h.sum / h.count as f64,
        p50_seconds: finite_or_zero(quantile(0.5, &b)),
        p95_seconds: finite_or_zero(quantile(0.95, &b)),
        p99_seconds: finite_or_zero(quantile(0.99, &b)),
    }
}

pub fn histogram(h: &Hist) -> pb::Histogram {
    pb::Histogram {
        buckets: cumulative(&h.bounds, &h.counts),
        sum_seconds: h.sum,
        count: h.count,
    }
}

/// Requests and errors over `seconds` (0: figures since start, no rate).
pub fn figures(
    requests: u64,
    errors: u64,
    hist: Option<&Hist>,
    seconds: f64,
) -> pb::RequestFigures {
    let rate = |n: u64| {
        if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        }
    };
    pb::RequestFigures {
        requests,
        errors,
        requests_per_second: rate(requests),
        error_rate: if requests > 0 {
            errors as f64 / requests as f64
        } else {
            0.0
        },
        latency: Some(summary(hist)),
    }
}

pub fn apdex(counts: [u64; 3], t: f64) -> pb::Apdex {
    let all: u64 = counts.iter().sum();
    let [satisfied, tolerating, frustrated] = counts;
    debug_assert_eq!(APDEX_LEVELS.len(), 3);
    pb::Apdex {
        satisfied,
        tolerating,
        frustrated,
        threshold_seconds: t,
        score: if all > 0 {
            (satisfied as f64 + tolerating as f64 / 2.0) / all as f64
        } else {
            0.0
        },
    }
}

pub fn tcp(s: &TcpStats) -> pb::TcpFigures {
    let dir = |v: [u64; 2]| pb::DirectionCounts {
        inbound: v[DIR_INBOUND],
        outbound: v[DIR_OUTBOUND],
    };
    let active = [
        s.tracked[DIR_INBOUND].saturating_sub(s.closed_tracked[DIR_INBOUND]),
        s.tracked[DIR_OUTBOUND].saturating_sub(s.closed_tracked[DIR_OUTBOUND]),
    ];
    let mut bounds: Vec<f64> = RTT_BUCKETS_US.iter().map(|us| *us as f64 / 1e6).collect();
    bounds.push(f64::INFINITY);
    let buckets = cumulative(&bounds, &s.rtt_buckets);
    pb::TcpFigures {
        opened: Some(dir(s.opened)),
        closed: s.closed,
        active: Some(dir(active)),
        connect_failures: Some(pb::ConnectFailures {
            refused: s.connect_failures[FAIL_REFUSED],
            timeout: s.connect_failures[FAIL_TIMEOUT],
            reset: s.connect_failures[FAIL_RESET],
            unreachable: s.connect_failures[FAIL_UNREACHABLE],
            other: s.connect_failures[FAIL_OTHER],
        }),
        retransmits: s.retransmits,
        sent_bytes: s.sent_bytes,
        received_bytes: s.received_bytes,
        rtt_mean_seconds: if s.rtt_count > 0 {
            s.rtt_sum_us as f64 / 1e6 / s.rtt_count as f64
        } else {
            0.0
        },
        rtt: Some(pb::Histogram {
            buckets,
            sum_seconds: s.rtt_sum_us as f64 / 1e6,
            count: s.rtt_count,
        }),
    }
}

/// The stable id of a topology node.
pub fn node_id(n: &Node) -> String {
    match n {
        Node::Workload(id) => format!(
            "workload:{}/{}/{}/{}",
            id.k8s_namespace_name, id.k8s_pod_uid, id.k8s_container_name, id.service_name
        ),
        Node::External(a) => format!("address:{a}"),
    }
}

pub fn node(n: &Node) -> pb::Node {
    pb::Node {
        id: node_id(n),
        name: n.name().to_string(),
        namespace: n.namespace().to_string(),
        workload: match n {
            Node::Workload(id) => Some(workload(id)),
            Node::External(_) => None,
        },
        address: match n {
            Node::Workload(_) => String::new(),
            Node::External(a) => a.clone(),
        },
    }
}

pub fn side(s: Side) -> pb::Side {
    match s {
        Side::Server => pb::Side::Server,
        Side::Client => pb::Side::Client,
    }
}

pub fn request(r: &LiveRequest) -> pb::Request {
    let q = &r.request;
    let (status, status_code) = super::query::status_fields(q.status.as_ref());
    pb::Request {
        time_unix_nano: unix_nanos(r.time),
        side: side(q.side) as i32,
        workload: Some(workload(&r.identity)),
        peer_address: q.peer.to_string(),
        peer_port: u32::from(q.peer_port),
        method: q.operation.to_string(),
        route: r.target.to_string(),
        status,
        error_type: q.error_type.unwrap_or_default().to_string(),
        duration_seconds: q.duration_ns as f64 / 1e9,
        protocol: q.protocol.name.to_string(),
        status_code,
        attributes: attributes(q.protocol),
    }
}

/// A protocol's constant labels, which tell its variants apart (`LatencySeries.attributes`).
pub fn attributes(spec: &Spec) -> HashMap<String, String> {
    (spec.constant_labels.iter())
        .map(|&(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether an identity is selected by a pod UID (dashes or underscores, any case).
pub fn pod_matches(id: &Arc<Identity>, pod_uid: &str) -> bool {
    !id.k8s_pod_uid.is_empty() && id.k8s_pod_uid == normalize_uid(pod_uid)
}

pub fn normalize_uid(uid: &str) -> String {
    uid.trim().replace('_', "-").to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(pairs: &[(f64, u64)]) -> Vec<pb::Bucket> {
        pairs
            .iter()
            .map(|&(le, c)| pb::Bucket {
                le,
                cumulative_count: c,
            })
            .collect()
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        // 10 observations: 4 in (0, 1], 4 in (1, 2], 2 in (2, +Inf).
        let h = b(&[(1.0, 4), (2.0, 8), (f64::INFINITY, 10)]);
        assert!((quantile(0.2, &h) - 0.5).abs() < 1e-12); // rank 2 of 4 in the first bucket
        assert!((quantile(0.5, &h) - 1.25).abs() < 1e-12); // rank 5: 1 of 4 in (1, 2]
        assert_eq!(quantile(0.99, &h), 2.0); // +Inf bucket: highest finite bound
        assert!(quantile(0.5, &b(&[(1.0, 0), (f64::INFINITY, 0)])).is_nan());
    }

    #[test]
    fn cumulative_buckets_end_with_inf() {
        let c = cumulative(&[0.1, 0.2], &[1, 0, 2]);
        assert_eq!(
            c.iter().map(|x| x.cumulative_count).collect::<Vec<_>>(),
            vec![1, 1, 3]
        );
        assert!(c[2].le.is_infinite());
    }

    #[test]
    fn apdex_score() {
        let a = apdex([6, 2, 2], 0.5);
        assert!((a.score - 0.7).abs() < 1e-12);
        assert_eq!(apdex([0, 0, 0], 0.5).score, 0.0);
    }
}

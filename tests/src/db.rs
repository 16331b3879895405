//! What the database and cache tests share: a pod's operations, their latency buckets and the
//! records left unparsed, read from a scrape; counter deltas of a server's own statistics.

use std::collections::BTreeMap;

use crate::{
    metrics::{matching, Sample},
    pod::Pod,
};

/// Operations a pod made (`_count` of the client histogram).
pub const CLIENT: &str = "db_client_operation_duration_seconds_count";
/// Operations a pod answered.
pub const SERVER: &str = "db_server_operation_duration_seconds_count";

/// A pod's operations of `system` in `family`, per `db_operation_name`, only the series with
/// the `extra` labels too; names counted zero left out.
pub fn ops(
    s: &[Sample],
    family: &str,
    pod: &Pod,
    system: &str,
    extra: &[(&str, &str)],
) -> BTreeMap<String, u64> {
    let mut want = vec![
        ("k8s_pod_uid", pod.uid.as_str()),
        ("db_system_name", system),
    ];
    want.extend_from_slice(extra);
    let mut m = BTreeMap::new();
    for x in matching(s, family, &want) {
        *m.entry(x.labels["db_operation_name"].clone()).or_default() += x.value as u64;
    }
    m.retain(|_, v| *v > 0);
    m
}

/// A pod's client operations named `op` that took at most `le` seconds (its histogram bucket).
pub fn client_bucket(s: &[Sample], pod: &Pod, op: &str, le: &str) -> u64 {
    matching(
        s,
        "db_client_operation_duration_seconds_bucket",
        &[
            ("k8s_pod_uid", pod.uid.as_str()),
            ("db_operation_name", op),
            ("le", le),
        ],
    )
    .map(|x| x.value as u64)
    .sum()
}

/// Records of `protocol` the observer could not parse, for every reason.
pub fn unparsed(s: &[Sample], protocol: &str) -> f64 {
    matching(
        s,
        "observer_l7_messages_unparsed_total",
        &[("protocol", protocol)],
    )
    .map(|x| x.value)
    .sum()
}

/// How much each counter grew from `before` to `after`; those that did not, left out.
pub fn delta(
    after: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

//! Syscall families: counts, errors by errno, latency per workload.

use std::{collections::BTreeMap, fmt, sync::Arc};

use observer_common::{SyscallStats, SYSCALL_BUCKETS_NS};
use prometheus_client::{encoding::DescriptorEncoder, metrics::MetricType, registry::Unit};

use super::{counter, with, RawHistogram};
use crate::{
    identity::Identity,
    pipeline::{
        aggregate::{add_syscall, Totals},
        names::{errno_name, syscall_name},
    },
};
use prometheus_client::encoding::EncodeMetric;

fn syscall_histogram(s: &SyscallStats) -> Vec<(f64, u64)> {
    let mut b: Vec<(f64, u64)> = SYSCALL_BUCKETS_NS
        .iter()
        .zip(s.buckets.iter())
        .map(|(ns, c)| (*ns as f64 / 1e9, *c))
        .collect();
    b.push((f64::INFINITY, s.buckets[SYSCALL_BUCKETS_NS.len()]));
    b
}

pub fn encode(enc: &mut DescriptorEncoder, totals: &Totals) -> fmt::Result {
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
        enc,
        "observer_syscalls",
        "Completed syscalls per cgroup",
        None,
        totals
            .syscalls
            .iter()
            .map(|((id, nr), s)| (with(id, &[("syscall", names[nr].as_str())]), s.count)),
    )?;
    counter(
        enc,
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

    Ok(())
}

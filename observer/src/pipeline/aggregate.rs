//! Reads the in-kernel per-cgroup aggregates, sums them per identity, and keeps counters
//! monotonic across cgroup churn: when a deleted cgroup's grace period ends, its last figures
//! move into a retired total of its identity (so a restarted container's counters don't go
//! back), its kernel entries are deleted, and an identity with no cgroup left is dropped.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use aya::maps::{
    HashMap as AyaHashMap, IterableMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues,
};
use observer_common::{
    ConnInfo, L7Conn, SyscallErrKey, SyscallKey, SyscallStats, TcpEdgeKey, TcpEdgeStats, TcpStats,
    LOST_COUNTERS,
};

use super::{
    capture::L7Health,
    requests::{RequestAgg, RequestTotals},
};
use crate::{
    identity::{cgroup::Resolver, Identity},
    l7::Request,
    model::EdgePeer,
};

/// The kernel maps the pipeline reads (each optional: absent when its probe is off).
pub struct KernelMaps {
    pub syscall_stats: Option<PerCpuHashMap<MapData, SyscallKey, SyscallStats>>,
    pub syscall_errors: Option<PerCpuHashMap<MapData, SyscallErrKey, u64>>,
    pub tcp_stats: Option<PerCpuHashMap<MapData, u64, TcpStats>>,
    pub tcp_edges: Option<PerCpuHashMap<MapData, TcpEdgeKey, TcpEdgeStats>>,
    pub conns: Option<AyaHashMap<MapData, u64, ConnInfo>>,
    /// A second handle on L7_CONNS (the L7 reader owns the first), for its fill level.
    pub l7_conns: Option<AyaHashMap<MapData, u64, L7Conn>>,
    pub lost: Option<PerCpuArray<MapData, u64>>,
    pub syscall_capacity: u32,
    pub conn_capacity: u32,
}

impl KernelMaps {
    pub fn take(ebpf: &mut aya::Ebpf, syscall_capacity: u32, conn_capacity: u32) -> Self {
        fn take<T: TryFrom<aya::maps::Map>>(ebpf: &mut aya::Ebpf, name: &str) -> Option<T> {
            ebpf.take_map(name).and_then(|m| T::try_from(m).ok())
        }
        Self {
            syscall_stats: take(ebpf, "SYSCALL_STATS"),
            syscall_errors: take(ebpf, "SYSCALL_ERRORS"),
            tcp_stats: take(ebpf, "TCP_STATS"),
            tcp_edges: take(ebpf, "TCP_EDGES"),
            conns: take(ebpf, "CONNS"),
            l7_conns: second_handle(ebpf, "L7_CONNS"),
            lost: take(ebpf, "LOST"),
            syscall_capacity,
            conn_capacity,
        }
    }
}

/// A handle of its own on a hash map someone else takes: a duplicate of the map's fd (no
/// CAP_SYS_ADMIN needed, unlike opening it by id).
fn second_handle<K: aya::Pod, V: aya::Pod>(
    ebpf: &aya::Ebpf,
    name: &str,
) -> Option<AyaHashMap<MapData, K, V>> {
    let map = ebpf.map(name)?;
    let first: AyaHashMap<&MapData, K, V> = AyaHashMap::try_from(map).ok()?;
    let fd = std::os::fd::AsFd::as_fd(first.map().fd())
        .try_clone_to_owned()
        .ok()?;
    let data = MapData::from_fd(fd).ok()?;
    let map = match map {
        aya::maps::Map::LruHashMap(_) => aya::maps::Map::LruHashMap(data),
        _ => aya::maps::Map::HashMap(data),
    };
    AyaHashMap::try_from(map).ok()
}

/// The capacity the kernel gave a map (0 when it cannot be read).
fn capacity(map: &MapData) -> u64 {
    map.info().map_or(0, |i| u64::from(i.max_entries()))
}

fn sum_syscall(v: &PerCpuValues<SyscallStats>) -> SyscallStats {
    let mut s = SyscallStats::default();
    for c in v.iter() {
        add_syscall(&mut s, c);
    }
    s
}

pub fn add_syscall(a: &mut SyscallStats, b: &SyscallStats) {
    a.count += b.count;
    a.errors += b.errors;
    a.sum_ns += b.sum_ns;
    for (x, y) in a.buckets.iter_mut().zip(b.buckets.iter()) {
        *x += y;
    }
}

pub fn add_tcp(a: &mut TcpStats, b: &TcpStats) {
    for i in 0..2 {
        a.opened[i] += b.opened[i];
        a.tracked[i] += b.tracked[i];
        a.closed_tracked[i] += b.closed_tracked[i];
    }
    a.closed += b.closed;
    for (x, y) in a.connect_failures.iter_mut().zip(b.connect_failures.iter()) {
        *x += y;
    }
    a.retransmits += b.retransmits;
    a.sent_bytes += b.sent_bytes;
    a.received_bytes += b.received_bytes;
    a.rtt_sum_us += b.rtt_sum_us;
    a.rtt_count += b.rtt_count;
    for (x, y) in a.rtt_buckets.iter_mut().zip(b.rtt_buckets.iter()) {
        *x += y;
    }
}

pub fn add_edge(a: &mut TcpEdgeStats, b: &TcpEdgeStats) {
    a.connections += b.connections;
    a.connect_failures += b.connect_failures;
    a.sent_bytes += b.sent_bytes;
    a.received_bytes += b.received_bytes;
    a.retransmits += b.retransmits;
}

/// Removes the entries of dead cgroups from a per-CPU kernel map, handing each entry's values
/// to `retire` first (which adds them to the retired figures of its identity).
fn retire_entries<K: aya::Pod, V: aya::Pod>(
    map: &mut Option<PerCpuHashMap<MapData, K, V>>,
    cgroup_of: impl Fn(&K) -> u64,
    dead: &HashSet<u64>,
    mut retire: impl FnMut(&K, &PerCpuValues<V>),
) {
    let Some(m) = map else { return };
    let keys: Vec<K> = m
        .keys()
        .flatten()
        .filter(|k| dead.contains(&cgroup_of(k)))
        .collect();
    for k in keys {
        if let Ok(v) = m.get(&k, 0) {
            retire(&k, &v);
        }
        let _ = m.remove(&k);
    }
}

/// Figures per identity (ordered, so the exposition is stable).
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub syscalls: BTreeMap<(Arc<Identity>, u32), SyscallStats>,
    pub errors: BTreeMap<(Arc<Identity>, u32, u32), u64>,
    pub tcp: BTreeMap<Arc<Identity>, TcpStats>,
    /// TCP figures per (workload, peer).
    pub tcp_edges: BTreeMap<(Arc<Identity>, EdgePeer), TcpEdgeStats>,
    /// Request figures of every L7 protocol.
    pub requests: RequestTotals,
    /// Lifecycle counters (filled by `snapshot`, not retired: they are kept by identity).
    pub lifecycle: super::events::LifecycleCounts,
}

/// Fill levels and loss counters of the kernel side.
#[derive(Debug, Default, Clone)]
pub struct KernelHealth {
    /// Records lost, by `LOST_*` index.
    pub lost: [u64; LOST_COUNTERS as usize],
    /// (map, entries, capacity).
    pub fill: Vec<(&'static str, u64, u64)>,
    pub l7: L7Health,
    /// (protocol, service, target observations that went to the overflow target).
    pub targets_overflow: Vec<(&'static str, String, u64)>,
}

/// The aggregation state behind the metrics endpoint.
pub struct Pipeline {
    maps: KernelMaps,
    resolver: Resolver,
    retired: Totals,
    grace: Duration,
    pub requests: RequestAgg,
    pub l7_health: L7Health,
    /// Finished exchanges for live subscribers.
    pub live: super::live::Live,
    /// Local pods by address (topology peers).
    pub peers: crate::identity::netns::PeerMap,
    /// Lifecycle events (OOM kills, exits, restarts, Kubernetes events, replica changes).
    pub lifecycle: super::events::Lifecycle,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    pub fn new(
        maps: KernelMaps,
        resolver: Resolver,
        grace: Duration,
        requests: RequestAgg,
    ) -> Self {
        Self {
            maps,
            resolver,
            retired: Totals::default(),
            grace,
            requests,
            l7_health: L7Health::default(),
            live: super::live::Live::new(),
            peers: crate::identity::netns::PeerMap::default(),
            lifecycle: super::events::Lifecycle::default(),
        }
    }

    /// Names pods from Kubernetes metadata (see `identity::kube`).
    pub fn set_metadata(
        &mut self,
        meta: Arc<std::sync::RwLock<crate::identity::kube::store::MetaStore>>,
    ) {
        self.resolver.set_metadata(meta);
    }

    /// Records finished requests (at most one hierarchy walk per batch for new cgroups).
    pub fn record_requests(
        &mut self,
        requests: &[Request],
        now_ns: u64,
        comms: &super::capture::Comms,
    ) {
        self.resolver.begin_round();
        let live = self.live.has_subscribers();
        let wall = std::time::SystemTime::now();
        for r in requests {
            let id = self
                .resolver
                .identity_hinted(r.cgroup_id, r.tgid, || comms.get(r.cgroup_id, r.tgid));
            self.peers.learn(r.cgroup_id, &id, r.tgid);
            let target = self.requests.record(r, &id, now_ns);
            if live {
                self.live.send(super::live::LiveRequest {
                    time: wall,
                    identity: id,
                    target,
                    request: r.clone(),
                });
            }
        }
    }

    /// Current figures: retired totals plus every live kernel entry.
    pub fn snapshot(&mut self) -> Totals {
        self.resolver.begin_round();
        let mut t = self.retired.clone();
        if let Some(m) = &self.maps.syscall_stats {
            for (k, v) in m.iter().flatten() {
                let id = self.resolver.identity(k.cgroup_id);
                add_syscall(t.syscalls.entry((id, k.nr)).or_default(), &sum_syscall(&v));
            }
        }
        if let Some(m) = &self.maps.syscall_errors {
            for (k, v) in m.iter().flatten() {
                let id = self.resolver.identity(k.cgroup_id);
                *t.errors.entry((id, k.nr, k.errno)).or_default() += v.iter().sum::<u64>();
            }
        }
        if let Some(m) = &self.maps.tcp_stats {
            for (k, v) in m.iter().flatten() {
                let id = self.resolver.identity(k);
                let e = t.tcp.entry(id).or_default();
                for c in v.iter() {
                    add_tcp(e, c);
                }
            }
        }
        if let Some(m) = &self.maps.tcp_edges {
            for (k, v) in m.iter().flatten() {
                let id = self.resolver.identity(k.cgroup_id);
                let e = t.tcp_edges.entry((id, EdgePeer::from_key(&k))).or_default();
                for c in v.iter() {
                    add_edge(e, c);
                }
            }
        }
        let now = super::monotonic_ns();
        let cgroups: Vec<u64> = self.requests.cgroups.keys().copied().collect();
        for cg in cgroups {
            let id = self.resolver.identity(cg);
            let tt = self.requests.settings.threshold(&id.service_name);
            if let Some(c) = self.requests.cgroups.get(&cg) {
                t.requests.add(&id, c, now, tt);
            }
        }
        t.lifecycle = self.lifecycle.counts();
        // Replica gauges only for workloads with a pod on this node: every observer of the
        // cluster watches every workload, and a gauge per workload per node would multiply the
        // series by the node count (scale events, rare and not series, stay on every node).
        let local: HashSet<(&str, &str)> = self
            .resolver
            .known_identities_ref()
            .filter(|i| !i.k8s_pod_name.is_empty())
            .map(|i| (i.k8s_namespace_name.as_str(), i.service_name.as_str()))
            .collect();
        t.lifecycle
            .replicas
            .retain(|k, _| local.contains(&(k.namespace.as_str(), k.name.as_str())));
        t
    }

    /// The identity of a cgroup an event just came from (walks the hierarchy for a new one).
    pub fn identity_now(&mut self, cgroup_id: u64, tgid: u32) -> Arc<Identity> {
        self.resolver.begin_round();
        self.resolver.identity_hinted(cgroup_id, tgid, || None)
    }

    /// The kernel side's lost-record counters, summed over the CPUs (cheap: one lookup each).
    pub fn lost(&self) -> [u64; LOST_COUNTERS as usize] {
        let mut lost = [0; LOST_COUNTERS as usize];
        if let Some(l) = &self.maps.lost {
            for i in 0..LOST_COUNTERS {
                if let Ok(v) = l.get(&i, 0) {
                    lost[i as usize] = v.iter().sum();
                }
            }
        }
        lost
    }

    /// Loss counters and fill levels. Counting a table's entries costs one syscall per entry,
    /// so this runs per scrape only (every 15-60 s), never on a short timer.
    pub fn health(&self) -> KernelHealth {
        let mut h = KernelHealth {
            l7: self.l7_health.clone(),
            targets_overflow: self.requests.overflow_counts(),
            lost: self.lost(),
            ..Default::default()
        };
        if let Some(m) = &self.maps.syscall_stats {
            h.fill.push((
                "SYSCALL_STATS",
                m.keys().count() as u64,
                self.maps.syscall_capacity as u64,
            ));
        }
        if let Some(m) = &self.maps.conns {
            h.fill.push((
                "CONNS",
                m.keys().count() as u64,
                self.maps.conn_capacity as u64,
            ));
        }
        let maps = &self.maps;
        let mut fill = |name, entries: usize, map: &MapData| {
            h.fill.push((name, entries as u64, capacity(map)));
        };
        if let Some(m) = &maps.syscall_errors {
            fill("SYSCALL_ERRORS", m.keys().count(), m.map());
        }
        if let Some(m) = &maps.tcp_stats {
            fill("TCP_STATS", m.keys().count(), m.map());
        }
        if let Some(m) = &maps.tcp_edges {
            fill("TCP_EDGES", m.keys().count(), m.map());
        }
        if let Some(m) = &maps.l7_conns {
            fill("L7_CONNS", m.keys().count(), m.map());
        }
        h
    }

    /// The topology from current figures (see `topology.rs`).
    pub fn topology(&self, totals: &Totals) -> super::topology::Topology {
        let mut t = super::topology::Topology::build(&totals.requests, &self.peers);
        t.add_tcp(&totals.tcp_edges, &self.peers);
        t
    }

    /// Walks the cgroup hierarchy and retires cgroups whose grace period is over.
    pub fn collect_garbage(&mut self) {
        self.resolver.rescan();
        self.peers.refresh(&self.resolver.pod_dirs());
        if let Some(meta) = self.resolver.metadata() {
            self.peers
                .refresh_cluster(&meta.read().unwrap_or_else(|e| e.into_inner()));
        }
        let expired = self.resolver.expired(self.grace);
        if expired.is_empty() {
            return;
        }
        let dead: HashSet<u64> = expired.iter().copied().collect();
        let mut identities: HashMap<u64, Arc<Identity>> = HashMap::new();
        for id in &expired {
            identities.insert(*id, self.resolver.identity(*id));
        }
        let retired = &mut self.retired;
        let by_cgroup = |id: &u64| identities[id].clone();
        retire_entries(
            &mut self.maps.syscall_stats,
            |k| k.cgroup_id,
            &dead,
            |k, v| {
                let e = retired.syscalls.entry((by_cgroup(&k.cgroup_id), k.nr));
                add_syscall(e.or_default(), &sum_syscall(v));
            },
        );
        retire_entries(
            &mut self.maps.syscall_errors,
            |k| k.cgroup_id,
            &dead,
            |k, v| {
                let e = retired
                    .errors
                    .entry((by_cgroup(&k.cgroup_id), k.nr, k.errno));
                *e.or_default() += v.iter().sum::<u64>();
            },
        );
        retire_entries(
            &mut self.maps.tcp_stats,
            |k| *k,
            &dead,
            |k, v| {
                let e = retired.tcp.entry(by_cgroup(k)).or_default();
                v.iter().for_each(|c| add_tcp(e, c));
            },
        );
        retire_entries(
            &mut self.maps.tcp_edges,
            |k| k.cgroup_id,
            &dead,
            |k, v| {
                let key = (by_cgroup(&k.cgroup_id), EdgePeer::from_key(k));
                let e = retired.tcp_edges.entry(key).or_default();
                v.iter().for_each(|c| add_edge(e, c));
            },
        );
        for cg in &expired {
            if let Some(c) = self.requests.cgroups.remove(cg) {
                let id = &identities[cg];
                let tt = self.requests.settings.threshold(&id.service_name);
                let mut one = RequestTotals::default();
                // Gone: no client is active any more.
                one.add(id, &c, u64::MAX, tt);
                one.active_clients.clear();
                self.retired.requests.merge(&one);
            }
        }
        self.resolver.forget(&expired);
        // An identity that no known cgroup has any more is gone for good: drop its series.
        let alive = self.resolver.known_identities();
        self.retired
            .syscalls
            .retain(|(id, _), _| alive.contains(id));
        self.retired
            .errors
            .retain(|(id, _, _), _| alive.contains(id));
        self.retired.tcp.retain(|id, _| alive.contains(id));
        self.retired.requests.retain(&alive);
        self.retired
            .tcp_edges
            .retain(|(id, _), _| alive.contains(id));
        let live_pods: Vec<(String, String, String)> = match self.resolver.metadata() {
            Some(meta) => {
                let m = meta.read().unwrap_or_else(|e| e.into_inner());
                m.live_pods()
                    .into_iter()
                    .filter_map(|uid| {
                        let p = m.pod(&uid)?;
                        Some((uid.clone(), p.namespace.clone(), p.name.clone()))
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        self.lifecycle.retain(&alive, &live_pods);
        tracing::debug!(cgroups = expired.len(), "retired deleted cgroups");
    }
}

#[cfg(test)]
mod tests {
    use observer_common::SYSCALL_NBUCKETS;

    use super::*;

    #[test]
    fn adding_is_field_wise() {
        let mut a = SyscallStats {
            count: 1,
            errors: 1,
            sum_ns: 10,
            buckets: [1; SYSCALL_NBUCKETS],
        };
        add_syscall(
            &mut a,
            &SyscallStats {
                count: 2,
                errors: 0,
                sum_ns: 5,
                buckets: [2; SYSCALL_NBUCKETS],
            },
        );
        assert_eq!(
            (a.count, a.errors, a.sum_ns, a.buckets),
            (3, 1, 15, [3; SYSCALL_NBUCKETS])
        );
        let mut t = TcpStats {
            opened: [1, 2],
            retransmits: 3,
            ..Default::default()
        };
        let u = TcpStats {
            opened: [10, 20],
            closed: 4,
            connect_failures: [1, 0, 0, 0, 2],
            rtt_count: 1,
            ..Default::default()
        };
        add_tcp(&mut t, &u);
        assert_eq!(t.opened, [11, 22]);
        assert_eq!(t.retransmits, 3);
        assert_eq!(t.closed, 4);
        assert_eq!(t.connect_failures, [1, 0, 0, 0, 2]);
        assert_eq!(t.rtt_count, 1);
    }

    /// Entries of dead cgroups go to `retire` with every CPU's value and leave the map; the
    /// others stay untouched. On a real (standalone) per-CPU hash map, so as root only.
    #[test]
    fn retiring_takes_out_exactly_the_dead_cgroups_entries() {
        let map = PerCpuHashMap::<MapData, SyscallErrKey, u64>::create(64, 0);
        // SAFETY (geteuid): no preconditions.
        let mut map = match map {
            Err(e) if unsafe { libc::geteuid() } != 0 => {
                eprintln!("skipped: creating a BPF map needs root ({e})");
                return;
            }
            m => Some(m.expect("a standalone per-CPU hash map")),
        };
        let cpus = aya::util::nr_cpus().expect("possible CPUs");
        let key = |cgroup_id, nr| SyscallErrKey {
            cgroup_id,
            nr,
            errno: 2,
        };
        // Cgroup c, syscall nr: value c * 100 + nr + cpu on each CPU.
        let entries = [(1, 0), (2, 0), (2, 1), (3, 5)];
        for (c, nr) in entries {
            let v: Vec<u64> = (0..cpus as u64)
                .map(|cpu| c * 100 + nr as u64 + cpu)
                .collect();
            let m = map.as_mut().unwrap();
            m.insert(key(c, nr), PerCpuValues::try_from(v).unwrap(), 0)
                .unwrap();
        }
        let dead: HashSet<u64> = [2, 4].into_iter().collect();
        let mut retired = BTreeMap::new();
        retire_entries(
            &mut map,
            |k| k.cgroup_id,
            &dead,
            |k, v| {
                retired.insert((k.cgroup_id, k.nr), v.iter().copied().collect::<Vec<u64>>());
            },
        );
        let per_cpu = |base: u64| (0..cpus as u64).map(|cpu| base + cpu).collect::<Vec<_>>();
        assert_eq!(
            retired,
            BTreeMap::from([((2, 0), per_cpu(200)), ((2, 1), per_cpu(201))])
        );
        let mut left: Vec<(u64, u32)> = (map.as_ref().unwrap().keys())
            .map(|k| k.map(|k| (k.cgroup_id, k.nr)).unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [(1, 0), (3, 5)]);
        // Nothing dead: nothing retired, nothing removed; no map: nothing to do.
        retire_entries(
            &mut map,
            |k| k.cgroup_id,
            &HashSet::new(),
            |_, _| panic!("retired"),
        );
        assert_eq!(map.as_ref().unwrap().keys().count(), 2);
        let mut none: Option<PerCpuHashMap<MapData, SyscallErrKey, u64>> = None;
        retire_entries(&mut none, |k| k.cgroup_id, &dead, |_, _| panic!("retired"));
    }
}

//! Request figures per cgroup, from finished requests of every protocol: duration histograms
//! per (protocol, operation, status, target, error) on the server side and per (protocol,
//! operation, status, [target,] server, error) on the client side, APDEX counts and active
//! clients of the services that answer, and per client address the figures the topology
//! needs. Identity labels are applied at scrape, like the kernel figures.
//!
//! Histogram buckets span 100 µs to 10 s (fine enough for a response-time heatmap) and always
//! have edges at the service's APDEX threshold T and at 4T, so that the APDEX computed from the
//! buckets and the one computed here from each request agree.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use crate::{
    identity::Identity,
    l7::{cap::TargetCap, Request, Side, Spec, Status},
    model::Hist,
};

/// Buckets of the request duration histograms (seconds), before T and 4T are added.
pub const BASE_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
    2.5, 5.0, 10.0,
];
/// A client counts as active this long after its last request.
pub const ACTIVE_WINDOW_NS: u64 = 60_000_000_000;
/// Client addresses remembered per cgroup.
const MAX_CLIENTS: usize = 65536;
/// Client addresses with their own topology figures per cgroup; further clients share the
/// entry of the unspecified address.
pub const MAX_PEERS: usize = 1024;

/// Server-side figures from one client address (the topology's incoming edges).
#[derive(Debug, Clone)]
pub struct PeerStats {
    pub hist: Hist,
    /// Failed requests, by the protocol's rule.
    pub failed: u64,
}

/// APDEX levels, index into [`CgroupRequests::apdex`].
pub const APDEX_LEVELS: [&str; 3] = ["satisfied", "tolerating", "frustrated"];

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerKey {
    pub protocol: &'static Spec,
    pub operation: &'static str,
    pub status: Option<Status>,
    pub target: Arc<str>,
    pub error_type: Option<&'static str>,
    /// Over TLS (only for protocols whose series say so: `url_scheme`).
    pub tls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey {
    pub protocol: &'static Spec,
    pub operation: &'static str,
    pub status: Option<Status>,
    /// Only for protocols whose client series name a target (a collection).
    pub target: Option<Arc<str>>,
    pub server_address: IpAddr,
    pub server_port: u16,
    pub error_type: Option<&'static str>,
    /// As [`ServerKey::tls`].
    pub tls: bool,
}

/// Request figures of one cgroup.
#[derive(Debug, Clone, Default)]
pub struct CgroupRequests {
    pub server: HashMap<ServerKey, Hist, Fast>,
    pub client: HashMap<ClientKey, Hist, Fast>,
    /// Requests answered by APDEX level (protocols with APDEX).
    pub apdex: [u64; 3],
    /// Last request time (ns) per client address, server side (protocols with APDEX).
    pub clients: HashMap<IpAddr, u64, Fast>,
    /// Server-side figures per protocol and client address.
    pub peers: HashMap<(&'static Spec, IpAddr), PeerStats, Fast>,
    /// Messages received and sent per series, for protocols that count them.
    pub server_messages: HashMap<ServerKey, [u64; 2], Fast>,
    pub client_messages: HashMap<ClientKey, [u64; 2], Fast>,
}

/// A fast hasher for maps keyed by what the kernel reported (targets are templated and
/// capped before they are keys).
type Fast = foldhash::fast::RandomState;

/// Figures per identity, ready for the exposition.
#[derive(Debug, Default, Clone)]
pub struct RequestTotals {
    pub server: BTreeMap<(Arc<Identity>, ServerKey), Hist>,
    pub client: BTreeMap<(Arc<Identity>, ClientKey), Hist>,
    pub apdex: BTreeMap<Arc<Identity>, [u64; 3]>,
    pub active_clients: BTreeMap<Arc<Identity>, u64>,
    pub threshold: BTreeMap<Arc<Identity>, f64>,
    /// Server-side figures per (server identity, protocol, client address).
    pub server_peers: BTreeMap<(Arc<Identity>, &'static Spec, IpAddr), PeerStats>,
    /// Messages received and sent per series.
    pub server_messages: BTreeMap<(Arc<Identity>, ServerKey), [u64; 2]>,
    pub client_messages: BTreeMap<(Arc<Identity>, ClientKey), [u64; 2]>,
}

fn add_messages<K: Ord + Clone>(into: &mut BTreeMap<K, [u64; 2]>, k: &K, m: [u64; 2]) {
    match into.get_mut(k) {
        Some(x) => {
            x[0] += m[0];
            x[1] += m[1];
        }
        None => {
            into.insert(k.clone(), m);
        }
    }
}

fn merge_into<K: Ord + Clone>(into: &mut BTreeMap<K, Hist>, k: &K, h: &Hist) {
    match into.get_mut(k) {
        Some(x) => x.merge(h),
        None => {
            into.insert(k.clone(), h.clone());
        }
    }
}

fn merge_peer<K: Ord + Clone>(into: &mut BTreeMap<K, PeerStats>, k: K, p: &PeerStats) {
    match into.get_mut(&k) {
        Some(x) => {
            x.hist.merge(&p.hist);
            x.failed += p.failed;
        }
        None => {
            into.insert(k, p.clone());
        }
    }
}

impl RequestTotals {
    /// Adds the figures of one cgroup of `id`.
    pub fn add(&mut self, id: &Arc<Identity>, c: &CgroupRequests, now_ns: u64, t: f64) {
        for (k, h) in &c.server {
            merge_into(&mut self.server, &(id.clone(), k.clone()), h);
        }
        for (k, h) in &c.client {
            merge_into(&mut self.client, &(id.clone(), k.clone()), h);
        }
        for (k, m) in &c.server_messages {
            add_messages(&mut self.server_messages, &(id.clone(), k.clone()), *m);
        }
        for (k, m) in &c.client_messages {
            add_messages(&mut self.client_messages, &(id.clone(), k.clone()), *m);
        }
        if c.apdex.iter().any(|&v| v > 0) {
            let a = self.apdex.entry(id.clone()).or_default();
            for (x, y) in a.iter_mut().zip(c.apdex) {
                *x += y;
            }
            self.threshold.insert(id.clone(), t);
        }
        for ((spec, ip), p) in &c.peers {
            merge_peer(&mut self.server_peers, (id.clone(), *spec, *ip), p);
        }
        let active = c
            .clients
            .values()
            .filter(|&&ts| now_ns.saturating_sub(ts) < ACTIVE_WINDOW_NS)
            .count();
        if c.apdex.iter().any(|&v| v > 0) {
            *self.active_clients.entry(id.clone()).or_default() += active as u64;
        }
    }

    /// Adds retired figures (no active clients: the cgroup is gone).
    pub fn merge(&mut self, o: &RequestTotals) {
        for (k, h) in &o.server {
            merge_into(&mut self.server, k, h);
        }
        for (k, h) in &o.client {
            merge_into(&mut self.client, k, h);
        }
        for (k, m) in &o.server_messages {
            add_messages(&mut self.server_messages, k, *m);
        }
        for (k, m) in &o.client_messages {
            add_messages(&mut self.client_messages, k, *m);
        }
        for (id, a) in &o.apdex {
            let e = self.apdex.entry(id.clone()).or_default();
            for i in 0..3 {
                e[i] += a[i];
            }
        }
        for (id, t) in &o.threshold {
            self.threshold.insert(id.clone(), *t);
        }
        for (k, p) in &o.server_peers {
            merge_peer(&mut self.server_peers, k.clone(), p);
        }
    }

    pub fn retain(&mut self, alive: &std::collections::HashSet<Arc<Identity>>) {
        self.server.retain(|(id, _), _| alive.contains(id));
        self.client.retain(|(id, _), _| alive.contains(id));
        self.apdex.retain(|id, _| alive.contains(id));
        self.threshold.retain(|id, _| alive.contains(id));
        self.active_clients.retain(|id, _| alive.contains(id));
        self.server_peers.retain(|(id, _, _), _| alive.contains(id));
        self.server_messages.retain(|(id, _), _| alive.contains(id));
        self.client_messages.retain(|(id, _), _| alive.contains(id));
    }
}

/// APDEX and target settings.
#[derive(Debug, Clone)]
pub struct RequestSettings {
    /// Default APDEX threshold T, seconds.
    pub apdex_t: f64,
    /// T per service name.
    pub apdex_for: HashMap<String, f64>,
    /// Distinct targets (routes) per service.
    pub target_cap: usize,
}

impl RequestSettings {
    pub fn threshold(&self, service: &str) -> f64 {
        self.apdex_for.get(service).copied().unwrap_or(self.apdex_t)
    }
}

/// The request aggregation state.
#[derive(Debug)]
pub struct RequestAgg {
    pub settings: RequestSettings,
    pub cgroups: HashMap<u64, CgroupRequests, Fast>,
    /// Distinct targets per (protocol, service), by the protocol's name: the variants one
    /// probe's series are told apart by (HTTP/1.0 and 1.1, MySQL and MariaDB) share one cap.
    pub targets: HashMap<&'static str, TargetCap, Fast>,
    bounds: HashMap<u64, Arc<Vec<f64>>, Fast>,
}

/// `BASE_BUCKETS` with T and 4T added.
pub fn bounds_for(t: f64) -> Vec<f64> {
    let mut b: Vec<f64> = BASE_BUCKETS.to_vec();
    for x in [t, 4.0 * t] {
        if x.is_finite() && x > 0.0 && !b.iter().any(|y| (y - x).abs() < 1e-12) {
            b.push(x);
        }
    }
    b.sort_by(|a, b| a.total_cmp(b));
    b
}

impl RequestAgg {
    pub fn new(settings: RequestSettings) -> Self {
        Self {
            settings,
            cgroups: HashMap::default(),
            targets: HashMap::default(),
            bounds: HashMap::default(),
        }
    }

    fn bounds(&mut self, t: f64) -> Arc<Vec<f64>> {
        self.bounds
            .entry(t.to_bits())
            .or_insert_with(|| Arc::new(bounds_for(t)))
            .clone()
    }

    /// Distinct targets a protocol's services overflowed, per service (for the exposition).
    pub fn overflow_counts(&self) -> Vec<(&'static str, String, u64)> {
        let mut v: Vec<_> = self
            .targets
            .iter()
            .flat_map(|(&name, cap)| {
                cap.overflow_counts()
                    .into_iter()
                    .map(move |(s, n)| (name, s, n))
            })
            .collect();
        v.sort();
        v
    }

    /// The target a request is counted under: its own while the service has fewer distinct ones
    /// than the cap (per protocol, both sides together), else the overflow value.
    fn admit(&mut self, spec: &'static Spec, service: &str, target: &Arc<str>) -> Arc<str> {
        let cap_per = self.settings.target_cap;
        self.targets
            .entry(spec.name)
            .or_insert_with(|| TargetCap::new(cap_per))
            .admit(service, target)
    }

    /// Records one request of a cgroup whose identity is `id`; `now_ns` is the kernel clock.
    /// Returns the target it was counted under (capped on the server side).
    pub fn record(&mut self, r: &Request, id: &Identity, now_ns: u64) -> Arc<str> {
        let t = self.settings.threshold(&id.service_name);
        let bounds = self.bounds(t);
        let secs = r.duration_ns as f64 / 1e9;
        let spec = r.protocol;
        let failed = r.failed();
        match r.side {
            Side::Server => {
                let target = self.admit(spec, &id.service_name, &r.target);
                let key = ServerKey {
                    protocol: spec,
                    operation: r.operation,
                    status: r.status.clone(),
                    target: target.clone(),
                    error_type: r.error_type,
                    tls: spec.url_scheme && r.tls,
                };
                let c = self.cgroups.entry(r.cgroup_id).or_default();
                if let Some([req, resp]) = r.messages {
                    // The server receives the requests' messages and sends the responses'.
                    let m = c.server_messages.entry(key.clone()).or_default();
                    m[0] += u64::from(req);
                    m[1] += u64::from(resp);
                }
                c.server
                    .entry(key)
                    .or_insert_with(|| Hist::new(bounds.clone()))
                    .observe(secs);
                let peer = if c.peers.len() < MAX_PEERS || c.peers.contains_key(&(spec, r.peer)) {
                    r.peer
                } else {
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                };
                let p = c.peers.entry((spec, peer)).or_insert_with(|| PeerStats {
                    hist: Hist::new(bounds),
                    failed: 0,
                });
                p.hist.observe(secs);
                p.failed += u64::from(failed);
                if spec.apdex {
                    let level = if failed {
                        2
                    } else if secs <= t {
                        0
                    } else if secs <= 4.0 * t {
                        1
                    } else {
                        2
                    };
                    c.apdex[level] += 1;
                    if c.clients.len() < MAX_CLIENTS || c.clients.contains_key(&r.peer) {
                        c.clients.insert(r.peer, now_ns);
                    } else {
                        c.clients
                            .retain(|_, ts| now_ns.saturating_sub(*ts) < ACTIVE_WINDOW_NS);
                    }
                }
                target
            }
            Side::Client => {
                let key = ClientKey {
                    protocol: spec,
                    operation: r.operation,
                    status: r.status.clone(),
                    target: spec
                        .client_target_label
                        .map(|_| self.admit(spec, &id.service_name, &r.target)),
                    server_address: r.peer,
                    server_port: r.peer_port,
                    error_type: r.error_type,
                    tls: spec.url_scheme && r.tls,
                };
                let c = self.cgroups.entry(r.cgroup_id).or_default();
                if let Some([req, resp]) = r.messages {
                    // The client receives the responses' messages and sends the requests'.
                    let m = c.client_messages.entry(key.clone()).or_default();
                    m[0] += u64::from(resp);
                    m[1] += u64::from(req);
                }
                c.client
                    .entry(key)
                    .or_insert_with(|| Hist::new(bounds))
                    .observe(secs);
                r.target.clone()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::l7::http1::SPEC;

    fn req(secs: f64, status: Option<u32>) -> Request {
        Request {
            protocol: &SPEC,
            side: Side::Server,
            cgroup_id: 1,
            tgid: 0,
            peer: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            peer_port: 1,
            operation: "GET",
            target: "/a".into(),
            status: status.map(Status::Code),
            error_type: status.is_none().then_some("timeout"),
            duration_ns: (secs * 1e9) as u64,
            messages: None,
            tls: false,
        }
    }

    #[test]
    fn apdex_levels_follow_t_and_errors_are_frustrated() {
        let mut a = RequestAgg::new(RequestSettings {
            apdex_t: 0.5,
            apdex_for: [("api".to_string(), 0.2)].into(),
            target_cap: 10,
        });
        let id = Identity {
            service_name: "api".into(),
            ..Default::default()
        };
        for (s, st) in [
            (0.005, Some(200)),
            (0.05, Some(200)),
            (0.5, Some(200)),
            (0.9, Some(200)),
            (0.01, Some(503)),
            (0.01, None),
        ] {
            a.record(&req(s, st), &id, 0);
        }
        let c = &a.cgroups[&1];
        assert_eq!(c.apdex, [2, 1, 3]);
        let h = c.server.values().next().unwrap();
        assert!(h.bounds.contains(&0.2) && h.bounds.contains(&0.8));
        assert_eq!(bounds_for(0.5).len(), BASE_BUCKETS.len());
    }
}

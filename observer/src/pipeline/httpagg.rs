//! HTTP figures per cgroup, from finished exchanges: duration histograms per (method, status,
//! route, error) on the server side and per (method, status, server, error) on the client side,
//! APDEX counts, active clients. Identity labels are applied at scrape, like the kernel figures.
//!
//! Histogram buckets span 100 µs to 10 s (fine enough for a response-time heatmap) and always
//! have edges at the service's APDEX threshold T and at 4T, so that the APDEX computed from the
//! buckets and the one computed here from each request agree.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use super::{
    exchange::{Exchange, Side},
    http::RouteCap,
};
use crate::identity::Identity;

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
    /// 5xx or no response.
    pub failed: u64,
}

/// APDEX levels, index into [`CgroupHttp::apdex`].
pub const APDEX_LEVELS: [&str; 3] = ["satisfied", "tolerating", "frustrated"];

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerKey {
    pub method: &'static str,
    pub status: Option<u16>,
    pub route: String,
    pub error_type: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey {
    pub method: &'static str,
    pub status: Option<u16>,
    pub server_address: IpAddr,
    pub server_port: u16,
    pub error_type: Option<&'static str>,
}

/// A histogram with its own bounds (seconds); `counts` are per bucket, the last is +Inf.
#[derive(Debug, Clone)]
pub struct Hist {
    pub bounds: Arc<Vec<f64>>,
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Hist {
    fn new(bounds: Arc<Vec<f64>>) -> Self {
        let n = bounds.len() + 1;
        Self { bounds, counts: vec![0; n], sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, secs: f64) {
        let i = self.bounds.iter().position(|b| secs <= *b).unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += secs;
        self.count += 1;
    }

    /// Adds `o` (same bounds; otherwise only sum and count are added).
    pub fn merge(&mut self, o: &Hist) {
        if self.bounds == o.bounds {
            for (a, b) in self.counts.iter_mut().zip(&o.counts) {
                *a += b;
            }
        }
        self.sum += o.sum;
        self.count += o.count;
    }
}

/// HTTP figures of one cgroup.
#[derive(Debug, Clone, Default)]
pub struct CgroupHttp {
    pub server: HashMap<ServerKey, Hist, Fast>,
    pub client: HashMap<ClientKey, Hist, Fast>,
    pub apdex: [u64; 3],
    /// Last request time (ns) per client address, server side.
    pub clients: HashMap<IpAddr, u64, Fast>,
    /// Server-side figures per client address.
    pub peers: HashMap<IpAddr, PeerStats, Fast>,
}

/// A fast hasher for maps keyed by what the kernel reported (not attacker-chosen strings alone:
/// routes are templated and capped before they are keys).
type Fast = foldhash::fast::RandomState;

/// Figures per identity, ready for the exposition.
#[derive(Debug, Default, Clone)]
pub struct HttpTotals {
    pub server: BTreeMap<(Arc<Identity>, ServerKey), Hist>,
    pub client: BTreeMap<(Arc<Identity>, ClientKey), Hist>,
    pub apdex: BTreeMap<Arc<Identity>, [u64; 3]>,
    pub active_clients: BTreeMap<Arc<Identity>, u64>,
    pub threshold: BTreeMap<Arc<Identity>, f64>,
    /// Server-side figures per (server identity, client address).
    pub server_peers: BTreeMap<(Arc<Identity>, IpAddr), PeerStats>,
}

fn merge_peer(into: &mut BTreeMap<(Arc<Identity>, IpAddr), PeerStats>, k: (Arc<Identity>, IpAddr), p: &PeerStats) {
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

impl HttpTotals {
    /// Adds the figures of one cgroup of `id`.
    pub fn add(&mut self, id: &Arc<Identity>, c: &CgroupHttp, now_ns: u64, t: f64) {
        for (k, h) in &c.server {
            match self.server.get_mut(&(id.clone(), k.clone())) {
                Some(x) => x.merge(h),
                None => {
                    self.server.insert((id.clone(), k.clone()), h.clone());
                }
            }
        }
        for (k, h) in &c.client {
            match self.client.get_mut(&(id.clone(), k.clone())) {
                Some(x) => x.merge(h),
                None => {
                    self.client.insert((id.clone(), k.clone()), h.clone());
                }
            }
        }
        if c.apdex.iter().any(|&v| v > 0) {
            let a = self.apdex.entry(id.clone()).or_default();
            for i in 0..3 {
                a[i] += c.apdex[i];
            }
            self.threshold.insert(id.clone(), t);
        }
        for (ip, p) in &c.peers {
            merge_peer(&mut self.server_peers, (id.clone(), *ip), p);
        }
        let active = c.clients.values().filter(|&&ts| now_ns.saturating_sub(ts) < ACTIVE_WINDOW_NS).count();
        if !c.server.is_empty() {
            *self.active_clients.entry(id.clone()).or_default() += active as u64;
        }
    }

    /// Adds retired figures (no active clients: the cgroup is gone).
    pub fn merge(&mut self, o: &HttpTotals) {
        for (k, h) in &o.server {
            match self.server.get_mut(k) {
                Some(x) => x.merge(h),
                None => {
                    self.server.insert(k.clone(), h.clone());
                }
            }
        }
        for (k, h) in &o.client {
            match self.client.get_mut(k) {
                Some(x) => x.merge(h),
                None => {
                    self.client.insert(k.clone(), h.clone());
                }
            }
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
        self.server_peers.retain(|(id, _), _| alive.contains(id));
    }
}

/// APDEX and route settings.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Default APDEX threshold T, seconds.
    pub apdex_t: f64,
    /// T per service name.
    pub apdex_for: HashMap<String, f64>,
    /// Distinct routes per service.
    pub route_cap: usize,
}

impl HttpSettings {
    pub fn threshold(&self, service: &str) -> f64 {
        self.apdex_for.get(service).copied().unwrap_or(self.apdex_t)
    }
}

/// The HTTP aggregation state.
#[derive(Debug)]
pub struct HttpAgg {
    pub settings: HttpSettings,
    pub cgroups: HashMap<u64, CgroupHttp, Fast>,
    pub routes: RouteCap,
    bounds: HashMap<u64, Arc<Vec<f64>>>,
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

impl HttpAgg {
    pub fn new(settings: HttpSettings) -> Self {
        let routes = RouteCap::new(settings.route_cap);
        Self { settings, cgroups: HashMap::default(), routes, bounds: HashMap::new() }
    }

    fn bounds(&mut self, t: f64) -> Arc<Vec<f64>> {
        self.bounds.entry(t.to_bits()).or_insert_with(|| Arc::new(bounds_for(t))).clone()
    }

    /// Records one exchange of a cgroup whose identity is `id`; `now_ns` is the kernel clock.
    /// Returns the route label it was counted under.
    pub fn record(&mut self, ex: &Exchange, id: &Identity, now_ns: u64) -> String {
        let t = self.settings.threshold(&id.service_name);
        let bounds = self.bounds(t);
        let secs = ex.duration_ns as f64 / 1e9;
        match ex.side {
            Side::Server => {
                let route = self.routes.admit(&id.service_name, ex.route.clone());
                let route = route.as_str().to_string();
                let key = ServerKey {
                    method: ex.method.as_str(),
                    status: ex.status,
                    route: route.clone(),
                    error_type: ex.error_type,
                };
                let c = self.cgroups.entry(ex.cgroup_id).or_default();
                c.server.entry(key).or_insert_with(|| Hist::new(bounds.clone())).observe(secs);
                let error = ex.error_type.is_some() || ex.status.is_some_and(|s| s >= 500);
                let peer = if c.peers.len() < MAX_PEERS || c.peers.contains_key(&ex.peer) {
                    ex.peer
                } else {
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                };
                let p = c
                    .peers
                    .entry(peer)
                    .or_insert_with(|| PeerStats { hist: Hist::new(bounds), failed: 0 });
                p.hist.observe(secs);
                p.failed += error as u64;
                let level = if error {
                    2
                } else if secs <= t {
                    0
                } else if secs <= 4.0 * t {
                    1
                } else {
                    2
                };
                c.apdex[level] += 1;
                if c.clients.len() < MAX_CLIENTS || c.clients.contains_key(&ex.peer) {
                    c.clients.insert(ex.peer, now_ns);
                } else {
                    c.clients.retain(|_, ts| now_ns.saturating_sub(*ts) < ACTIVE_WINDOW_NS);
                }
                route
            }
            Side::Client => {
                let key = ClientKey {
                    method: ex.method.as_str(),
                    status: ex.status,
                    server_address: ex.peer,
                    server_port: ex.peer_port,
                    error_type: ex.error_type,
                };
                let c = self.cgroups.entry(ex.cgroup_id).or_default();
                c.client.entry(key).or_insert_with(|| Hist::new(bounds)).observe(secs);
                ex.route.clone()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::pipeline::http::Method;

    fn ex(secs: f64, status: Option<u16>) -> Exchange {
        Exchange {
            side: Side::Server,
            cgroup_id: 1,
            method: Method::Get,
            route: "/a".into(),
            status,
            error_type: status.is_none().then_some("timeout"),
            duration_ns: (secs * 1e9) as u64,
            peer: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            peer_port: 1,
            tgid: 0,
        }
    }

    #[test]
    fn apdex_levels_follow_t_and_errors_are_frustrated() {
        let mut a = HttpAgg::new(HttpSettings {
            apdex_t: 0.5,
            apdex_for: [("api".to_string(), 0.2)].into(),
            route_cap: 10,
        });
        let id = Identity { service_name: "api".into(), ..Default::default() };
        for (s, st) in [(0.005, Some(200)), (0.05, Some(200)), (0.5, Some(200)), (0.9, Some(200)), (0.01, Some(503)), (0.01, None)] {
            a.record(&ex(s, st), &id, 0);
        }
        let c = &a.cgroups[&1];
        assert_eq!(c.apdex, [2, 1, 3]);
        let h = c.server.values().next().unwrap();
        assert!(h.bounds.contains(&0.2) && h.bounds.contains(&0.8));
        assert_eq!(bounds_for(0.5).len(), BASE_BUCKETS.len());
    }
}

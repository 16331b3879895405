//! The unary calls: selecting workloads, and the figures since start and over a window.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use super::{
    convert::{self, figures},
    lock, pb,
    window::{series_hash, Agg, EdgeAgg, Figures, SeriesSide, Snapshot},
    ApiError, Shared,
};
use crate::{
    export::snapshot::Snapshot as Current,
    identity::Identity,
    l7::Status,
    model::Hist,
    pipeline::{
        aggregate::Totals,
        topology::{EdgeKey, Node},
    },
};

/// Which workloads a call is about.
#[derive(Debug)]
pub enum Selector {
    Pod(String),
    Service { name: String, namespace: String },
}

impl Selector {
    fn new(
        pod: Option<String>,
        service: Option<String>,
        namespace: String,
    ) -> Result<Self, ApiError> {
        match (pod, service) {
            (Some(p), _) if !p.trim().is_empty() => Ok(Selector::Pod(convert::normalize_uid(&p))),
            (_, Some(s)) if !s.trim().is_empty() => Ok(Selector::Service {
                name: s.trim().to_string(),
                namespace: namespace.trim().to_string(),
            }),
            _ => Err(ApiError::InvalidArgument(
                "set pod_uid or service_name to select workloads".into(),
            )),
        }
    }

    pub fn from_network(
        s: Option<pb::get_network_request::Selector>,
        namespace: String,
    ) -> Result<Self, ApiError> {
        use pb::get_network_request::Selector as S;
        match s {
            Some(S::PodUid(p)) => Self::new(Some(p), None, namespace),
            Some(S::ServiceName(n)) => Self::new(None, Some(n), namespace),
            None => Self::new(None, None, namespace),
        }
    }

    pub fn from_latency(
        s: Option<pb::get_latency_request::Selector>,
        namespace: String,
    ) -> Result<Self, ApiError> {
        use pb::get_latency_request::Selector as S;
        match s {
            Some(S::PodUid(p)) => Self::new(Some(p), None, namespace),
            Some(S::ServiceName(n)) => Self::new(None, Some(n), namespace),
            None => Self::new(None, None, namespace),
        }
    }

    fn matches(&self, id: &Arc<Identity>) -> bool {
        match self {
            Selector::Pod(uid) => convert::pod_matches(id, uid),
            Selector::Service { name, namespace } => {
                id.service_name == *name
                    && (namespace.is_empty() || id.k8s_namespace_name == *namespace)
            }
        }
    }

    /// The workloads with any figures that match, or NOT_FOUND naming what was asked for.
    fn select(&self, t: &Totals) -> Result<Vec<Arc<Identity>>, ApiError> {
        let known: BTreeSet<&Arc<Identity>> = t
            .syscalls
            .keys()
            .map(|(id, _)| id)
            .chain(t.errors.keys().map(|(id, _, _)| id))
            .chain(t.tcp.keys())
            .chain(t.requests.server.keys().map(|(id, _)| id))
            .chain(t.requests.client.keys().map(|(id, _)| id))
            .collect();
        let found: Vec<Arc<Identity>> = known
            .into_iter()
            .filter(|id| self.matches(id))
            .cloned()
            .collect();
        if found.is_empty() {
            return Err(ApiError::NotFound(match self {
                Selector::Pod(uid) => format!("no workload of pod {uid} on this node"),
                Selector::Service { name, namespace } if namespace.is_empty() => {
                    format!("no workload with service name {name:?} on this node")
                }
                Selector::Service { name, namespace } => format!(
                    "no workload with service name {name:?} in namespace {namespace:?} on this node"
                ),
            }));
        }
        Ok(found)
    }
}

/// The now-figures and the snapshot a window starts at.
pub struct Win {
    now: Figures,
    then: Option<Arc<Snapshot>>,
    requested: u32,
    covered: f64,
}

impl Win {
    pub fn new(shared: &Shared, cur: &Current, seconds: u32) -> Win {
        let then =
            lock(&shared.ring).start_of(cur.at, std::time::Duration::from_secs(seconds.into()));
        let covered = then
            .as_ref()
            .map(|s| cur.at.saturating_duration_since(s.at).as_secs_f64())
            .unwrap_or(0.0);
        Win {
            now: Figures::from_totals(&cur.totals.requests, &cur.topology),
            then,
            requested: seconds,
            covered,
        }
    }

    fn window(&self) -> pb::Window {
        pb::Window {
            requested_seconds: self.requested,
            covered_seconds: self.covered,
        }
    }

    fn then(&self) -> Option<&Figures> {
        self.then.as_ref().map(|s| &s.figures)
    }

    /// Total and window figures of one workload side.
    fn side(&self, id: &Arc<Identity>, server: bool) -> (pb::RequestFigures, pb::RequestFigures) {
        self.figures_of(|f: &Figures| {
            if server {
                f.server.get(id).cloned()
            } else {
                f.client.get(id).cloned()
            }
        })
    }

    /// Total and window figures of a workload's database and cache operations.
    fn db_client(&self, id: &Arc<Identity>) -> (pb::RequestFigures, pb::RequestFigures) {
        self.figures_of(|f: &Figures| f.db_client.get(id).cloned())
    }

    fn figures_of(
        &self,
        pick: impl Fn(&Figures) -> Option<Agg>,
    ) -> (pb::RequestFigures, pb::RequestFigures) {
        let now = pick(&self.now).unwrap_or_default();
        let then = self.then().and_then(pick);
        // Without a snapshot there is no window: nothing happened in it as far as we know.
        let w = if self.then.is_some() {
            now.since(then.as_ref())
        } else {
            Agg::default()
        };
        (
            figures(now.requests, now.errors, now.hist.as_ref(), 0.0),
            figures(w.requests, w.errors, w.hist.as_ref(), self.covered),
        )
    }

    fn apdex(&self, t: &Totals, id: &Arc<Identity>) -> (pb::Apdex, pb::Apdex) {
        let threshold = t.requests.threshold.get(id).copied().unwrap_or(0.0);
        let now = self.now.apdex.get(id).copied().unwrap_or_default();
        let then = self.then().and_then(|f| f.apdex.get(id).copied());
        let w = match then {
            Some(b) if b.iter().zip(&now).all(|(b, a)| b <= a) => {
                [now[0] - b[0], now[1] - b[1], now[2] - b[2]]
            }
            _ if self.then.is_none() => [0; 3],
            _ => now,
        };
        (convert::apdex(now, threshold), convert::apdex(w, threshold))
    }

    /// Requests per second of one series over the window.
    fn series_rate(&self, hash: u64, count: u64) -> f64 {
        if self.then.is_none() || self.covered <= 0.0 {
            return 0.0;
        }
        let before = self.then().and_then(|f| f.series_count(hash)).unwrap_or(0);
        let n = if before <= count {
            count - before
        } else {
            count
        };
        n as f64 / self.covered
    }
}

/// The numeric status (0 when it is none or not a number) and its text.
pub fn status_fields(s: Option<&Status>) -> (u32, String) {
    (
        s.and_then(Status::code).unwrap_or(0),
        s.map(Status::label).unwrap_or_default(),
    )
}

fn series(win: &Win, hash: u64, h: &Hist, fail: bool) -> pb::LatencySeries {
    let rps = win.series_rate(hash, h.count);
    pb::LatencySeries {
        count: h.count,
        errors: if fail { h.count } else { 0 },
        latency: Some(convert::summary(Some(h))),
        histogram: Some(convert::histogram(h)),
        requests_per_second: rps,
        errors_per_second: if fail { rps } else { 0.0 },
        ..Default::default()
    }
}

pub fn latency(cur: &Current, win: &Win, sel: &Selector) -> Result<pb::Latency, ApiError> {
    let t = &cur.totals;
    let mut out = Vec::new();
    for id in sel.select(t)? {
        let mut server = Vec::new();
        for ((i, k), h) in &t.requests.server {
            if *i != id {
                continue;
            }
            let hash = series_hash(&id, SeriesSide::Server, k);
            let mut s = series(
                win,
                hash,
                h,
                (k.protocol.failed)(k.status.as_ref(), k.error_type),
            );
            s.protocol = k.protocol.name.to_string();
            s.attributes = convert::attributes(k.protocol);
            s.method = k.operation.to_string();
            (s.status, s.status_code) = status_fields(k.status.as_ref());
            s.route = k.target.to_string();
            s.error_type = k.error_type.unwrap_or_default().to_string();
            server.push(s);
        }
        let mut client = Vec::new();
        for ((i, k), h) in &t.requests.client {
            if *i != id {
                continue;
            }
            let hash = series_hash(&id, SeriesSide::Client, k);
            let mut s = series(
                win,
                hash,
                h,
                (k.protocol.failed)(k.status.as_ref(), k.error_type),
            );
            s.protocol = k.protocol.name.to_string();
            s.attributes = convert::attributes(k.protocol);
            s.method = k.operation.to_string();
            (s.status, s.status_code) = status_fields(k.status.as_ref());
            s.route = k.target.as_deref().unwrap_or_default().to_string();
            s.server_address = k.server_address.to_string();
            s.server_port = k.server_port.into();
            s.error_type = k.error_type.unwrap_or_default().to_string();
            client.push(s);
        }
        let (total, window) = win.side(&id, true);
        let (client_total, client_window) = win.side(&id, false);
        let (db_client_total, db_client_window) = win.db_client(&id);
        let (apdex, window_apdex) = win.apdex(t, &id);
        out.push(pb::WorkloadLatency {
            workload: Some(convert::workload(&id)),
            server,
            client,
            total: Some(total),
            window: Some(window),
            client_total: Some(client_total),
            client_window: Some(client_window),
            db_client_total: Some(db_client_total),
            db_client_window: Some(db_client_window),
            apdex: Some(apdex),
            window_apdex: Some(window_apdex),
            active_clients: t.requests.active_clients.get(&id).copied().unwrap_or(0),
        });
    }
    Ok(pb::Latency {
        window: Some(win.window()),
        workloads: out,
    })
}

fn edge(
    k: &EdgeKey,
    e: &crate::pipeline::topology::Edge,
    total: &EdgeAgg,
    window: Option<(&EdgeAgg, f64)>,
) -> pb::Edge {
    let hist = |a: &EdgeAgg| a.client.clone().or_else(|| a.server.clone());
    let t_hist = hist(total);
    let (w, w_hist, seconds) = match window {
        Some((w, s)) => (w.clone(), hist(w), s),
        None => (EdgeAgg::default(), None, 0.0),
    };
    pb::Edge {
        client: convert::node_id(&k.client),
        server: convert::node_id(&k.server),
        connection_type: Node::connection_type(&k.client, &k.server, e).to_string(),
        total: Some(figures(total.requests, total.failed, t_hist.as_ref(), 0.0)),
        window: window.map(|_| figures(w.requests, w.failed, w_hist.as_ref(), seconds)),
        client_latency: Some(convert::summary(total.client.as_ref())),
        server_latency: Some(convert::summary(total.server.as_ref())),
        window_client_latency: window.map(|_| convert::summary(w.client.as_ref())),
        window_server_latency: window.map(|_| convert::summary(w.server.as_ref())),
        tcp: Some(pb::EdgeTcp {
            connections: e.tcp.connections,
            connect_failures: e.tcp.connect_failures,
            bytes_client_to_server: e.tcp.bytes_client_to_server,
            bytes_server_to_client: e.tcp.bytes_server_to_client,
            retransmits: e.tcp.retransmits,
        }),
    }
}

fn edge_totals(e: &crate::pipeline::topology::Edge) -> EdgeAgg {
    EdgeAgg {
        requests: e.requests,
        failed: e.failed,
        client: e.client_seconds.clone(),
        server: e.server_seconds.clone(),
    }
}

pub fn network(cur: &Current, sel: &Selector) -> Result<pb::Network, ApiError> {
    let t = &cur.totals;
    let mut out = Vec::new();
    for id in sel.select(t)? {
        // Outbound calls by server address and port.
        let mut peers: BTreeMap<(IpAddr, u16), Agg> = BTreeMap::new();
        for ((i, k), h) in &t.requests.client {
            if *i == id {
                let a = peers.entry((k.server_address, k.server_port)).or_default();
                a.requests += h.count;
                if (k.protocol.failed)(k.status.as_ref(), k.error_type) {
                    a.errors += h.count;
                }
                match &mut a.hist {
                    Some(x) => x.merge(h),
                    None => a.hist = Some(h.clone()),
                }
            }
        }
        let http_peers = peers
            .into_iter()
            .map(|((ip, port), a)| pb::HttpPeer {
                server_address: ip.to_string(),
                server_port: port.into(),
                requests: a.requests,
                errors: a.errors,
                latency: Some(convert::summary(a.hist.as_ref())),
            })
            .collect();
        let me = Node::Workload(id.clone());
        let mut edges = Vec::new();
        let mut nodes = BTreeMap::new();
        for (k, e) in &cur.topology.edges {
            if k.client == me || k.server == me {
                edges.push(edge(k, e, &edge_totals(e), None));
                for n in [&k.client, &k.server] {
                    nodes
                        .entry(convert::node_id(n))
                        .or_insert_with(|| convert::node(n));
                }
            }
        }
        out.push(pb::WorkloadNetwork {
            workload: Some(convert::workload(&id)),
            tcp: t.tcp.get(&id).map(convert::tcp),
            http_peers,
            edges,
            nodes: nodes.into_values().collect(),
        });
    }
    Ok(pb::Network { workloads: out })
}

pub fn topology(cur: &Current, win: &Win) -> pb::Topology {
    let mut nodes = BTreeMap::new();
    let mut edges = Vec::new();
    for (k, e) in &cur.topology.edges {
        let total = edge_totals(e);
        // Without a snapshot there is no window: nothing happened in it as far as we know.
        let w = match &win.then {
            Some(s) => total.since(s.figures.edges.get(k)),
            None => EdgeAgg::default(),
        };
        edges.push(edge(k, e, &total, Some((&w, win.covered))));
        for n in [&k.client, &k.server] {
            nodes
                .entry(convert::node_id(n))
                .or_insert_with(|| convert::node(n));
        }
    }
    pb::Topology {
        window: Some(win.window()),
        nodes: nodes.into_values().collect(),
        edges,
    }
}

pub fn workloads(cur: &Current, win: &Win) -> pb::Workloads {
    let t = &cur.totals;
    let ids: BTreeSet<&Arc<Identity>> =
        win.now.server.keys().chain(win.now.client.keys()).collect();
    let workloads = ids
        .into_iter()
        .map(|id| {
            let (total, window) = win.side(id, true);
            let (client_total, client_window) = win.side(id, false);
            let (db_client_total, db_client_window) = win.db_client(id);
            let (apdex, window_apdex) = win.apdex(t, id);
            pb::WorkloadSummary {
                workload: Some(convert::workload(id)),
                total: Some(total),
                window: Some(window),
                apdex: Some(apdex),
                window_apdex: Some(window_apdex),
                active_clients: t.requests.active_clients.get(id).copied().unwrap_or(0),
                client_total: Some(client_total),
                client_window: Some(client_window),
                db_client_total: Some(db_client_total),
                db_client_window: Some(db_client_window),
            }
        })
        .collect();
    pb::Workloads {
        window: Some(win.window()),
        workloads,
    }
}

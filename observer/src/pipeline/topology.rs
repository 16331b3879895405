//! The service topology: who calls whom, from the requests of every workload on the node,
//! whatever their protocol, and the TCP connections under them.
//!
//! An edge goes from a client node to a server node. A node is a workload of this node (pod or
//! host service, by identity) or an address no local workload owns (a server as `ip:port`, a
//! client as its `ip` alone: client ports are ephemeral and never become nodes or labels).
//!
//! When both ends are on this node the exchange is seen twice (the client's call and the
//! server's answer): it is one edge, its requests counted once from the client side, and both
//! latencies are kept (client minus server is network and queueing time). A server-side request
//! from a client that is not on this node makes the edge from that client's address.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use observer_common::TcpEdgeStats;

use super::requests::RequestTotals;
use crate::{
    identity::Identity,
    model::{EdgePeer, Hist},
};

/// One end of an edge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    /// A workload of this node.
    Workload(Arc<Identity>),
    /// An address no local workload owns: `ip:port` for a server, `ip` for a client.
    External(String),
}

impl Node {
    /// Name for the service-graph labels (`client`, `server`).
    pub fn name(&self) -> &str {
        match self {
            Node::Workload(id) => &id.service_name,
            Node::External(a) => a,
        }
    }

    /// Namespace for the service-graph labels (empty for external addresses).
    pub fn namespace(&self) -> &str {
        match self {
            Node::Workload(id) => &id.k8s_namespace_name,
            Node::External(_) => "",
        }
    }

    /// Tempo's `connection_type` of an edge: what its protocols say (`database`), else empty
    /// between workloads and `virtual_node` towards an unresolved peer.
    pub fn connection_type(client: &Node, server: &Node, edge: &Edge) -> &'static str {
        if !edge.connection_type.is_empty() {
            return edge.connection_type;
        }
        match (client, server) {
            (Node::Workload(_), Node::Workload(_)) => "",
            _ => "virtual_node",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeKey {
    pub client: Node,
    pub server: Node,
}

/// Figures of one edge.
#[derive(Debug, Clone, Default)]
pub struct Edge {
    /// Requests (counted once per exchange).
    pub requests: u64,
    /// Requests that failed: 5xx or no response.
    pub failed: u64,
    /// Durations as the server measured them (when the server is on this node).
    pub server_seconds: Option<Hist>,
    /// Durations as the client measured them (when the client is on this node).
    pub client_seconds: Option<Hist>,
    /// TCP figures of the edge's connections.
    pub tcp: EdgeTcp,
    /// The `connection_type` its protocols give it (`database`), empty if none does.
    pub connection_type: &'static str,
}

/// TCP figures of an edge (all its connections, HTTP or not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EdgeTcp {
    pub connections: u64,
    pub connect_failures: u64,
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
    pub retransmits: u64,
}

/// Local workloads by the addresses they own (learned from their network namespaces).
pub trait PeerLookup {
    fn workload(&self, ip: &IpAddr) -> Option<Arc<Identity>>;

    /// A workload elsewhere in the cluster owning `ip` (a pod on another node, a Service's
    /// ClusterIP): it names the node, but its requests are not seen from its side here.
    fn remote(&self, _ip: &IpAddr) -> Option<Arc<Identity>> {
        None
    }
}

impl PeerLookup for crate::identity::netns::PeerMap {
    fn workload(&self, ip: &IpAddr) -> Option<Arc<Identity>> {
        self.get(ip)
    }

    fn remote(&self, ip: &IpAddr) -> Option<Arc<Identity>> {
        self.cluster(ip)
    }
}

/// A peer that no local workload owns: a cluster workload by name, or its address.
fn elsewhere(peers: &dyn PeerLookup, ip: &IpAddr, text: impl FnOnce() -> String) -> Node {
    match peers.remote(ip) {
        Some(w) => Node::Workload(w),
        None => Node::External(text()),
    }
}

impl PeerLookup for HashMap<IpAddr, Arc<Identity>> {
    fn workload(&self, ip: &IpAddr) -> Option<Arc<Identity>> {
        self.get(ip).cloned()
    }
}

/// The topology at one moment (cumulative counters, like the rest of the figures).
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub edges: BTreeMap<EdgeKey, Edge>,
}

fn add_hist(slot: &mut Option<Hist>, h: &Hist) {
    match slot {
        Some(x) => x.merge(h),
        None => *slot = Some(h.clone()),
    }
}

impl Topology {
    /// Builds the edges from the request figures; `peers` resolves addresses to local
    /// workloads.
    pub fn build(requests: &RequestTotals, peers: &dyn PeerLookup) -> Topology {
        let mut t = Topology::default();
        // Client side: every call a local workload made.
        for ((id, k), h) in &requests.client {
            let server = match peers.workload(&k.server_address) {
                Some(w) => Node::Workload(w),
                None => elsewhere(peers, &k.server_address, || {
                    socket(&k.server_address, k.server_port)
                }),
            };
            let key = EdgeKey {
                client: Node::Workload(id.clone()),
                server,
            };
            let e = t.edges.entry(key).or_default();
            e.requests += h.count;
            if (k.protocol.failed)(k.status.as_ref(), k.error_type) {
                e.failed += h.count;
            }
            add_hist(&mut e.client_seconds, h);
            if !k.protocol.connection_type.is_empty() {
                e.connection_type = k.protocol.connection_type;
            }
        }
        // Server side: answers, by client address.
        for ((id, spec, client_ip), p) in &requests.server_peers {
            let (client, local) = match peers.workload(client_ip) {
                Some(w) => (Node::Workload(w), true),
                None => (elsewhere(peers, client_ip, || client_ip.to_string()), false),
            };
            let key = EdgeKey {
                client,
                server: Node::Workload(id.clone()),
            };
            if local {
                // Counted from the client side; keep the server's view of the same requests.
                // (A local client that reached this server through an address no pod owns, a
                // host address say, has its edge to that address: no second edge here.)
                if let Some(e) = t.edges.get_mut(&key) {
                    add_hist(&mut e.server_seconds, &p.hist);
                }
                continue;
            }
            // Not seen from the client side: the requests are counted here.
            let e = t.edges.entry(key).or_default();
            e.requests += p.hist.count;
            e.failed += p.failed;
            add_hist(&mut e.server_seconds, &p.hist);
            if !spec.connection_type.is_empty() {
                e.connection_type = spec.connection_type;
            }
        }
        t
    }
}

impl Topology {
    /// Adds the per-edge TCP figures. A connection between two local workloads is counted from
    /// the client's side (its connect); the server's side adds only its own retransmits.
    pub fn add_tcp(
        &mut self,
        edges: &BTreeMap<(Arc<Identity>, EdgePeer), TcpEdgeStats>,
        peers: &dyn PeerLookup,
    ) {
        for ((id, peer), s) in edges {
            let local = peers.workload(&peer.addr);
            if peer.outbound {
                let server = match local {
                    Some(w) => Node::Workload(w),
                    None => elsewhere(peers, &peer.addr, || socket(&peer.addr, peer.port)),
                };
                let e = self
                    .edges
                    .entry(EdgeKey {
                        client: Node::Workload(id.clone()),
                        server,
                    })
                    .or_default();
                e.tcp.connections += s.connections;
                e.tcp.connect_failures += s.connect_failures;
                e.tcp.bytes_client_to_server += s.sent_bytes;
                e.tcp.bytes_server_to_client += s.received_bytes;
                e.tcp.retransmits += s.retransmits;
            } else {
                let (client, is_local) = match local {
                    Some(w) => (Node::Workload(w), true),
                    None => (
                        elsewhere(peers, &peer.addr, || peer.addr.to_string()),
                        false,
                    ),
                };
                let key = EdgeKey {
                    client,
                    server: Node::Workload(id.clone()),
                };
                if is_local {
                    if let Some(e) = self.edges.get_mut(&key) {
                        e.tcp.retransmits += s.retransmits;
                    }
                    continue;
                }
                let e = self.edges.entry(key).or_default();
                e.tcp.connections += s.connections;
                e.tcp.bytes_client_to_server += s.received_bytes;
                e.tcp.bytes_server_to_client += s.sent_bytes;
                e.tcp.retransmits += s.retransmits;
            }
        }
    }
}

/// `ip:port`, with brackets for IPv6.
pub fn socket(ip: &IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

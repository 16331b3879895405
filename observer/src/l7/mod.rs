//! The L7 path, user space: the kernel's records of every protocol come through one ring
//! ([`event`]), each protocol turns its own into finished [`Request`]s, and everything
//! downstream (aggregation, topology, the live stream, the gRPC API, the exporters) consumes
//! only those, without knowing the protocol.
//!
//! A protocol is a module of its own (`http1/`): a pure parser over byte slices, a tracker that
//! pairs requests and responses per connection, and a [`Spec`] that names its metric families
//! and labels. It is registered once, in [`registry`], next to its kernel detector
//! (`observer-ebpf/src/l7/`).

pub mod cap;
pub mod dns;
pub mod event;
pub mod http1;
pub mod http2;
pub mod memcached;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sql;
pub mod stream;
#[cfg(test)]
mod tests;

use std::{net::IpAddr, sync::Arc};

use observer_common::L7Conn;

pub use event::Event;

/// Which end of the exchange the observed process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Server,
    Client,
}

/// The outcome a response reports: a number (HTTP status, MySQL error number, gRPC status) or
/// a short code (SQLSTATE, a Redis error prefix).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Code(u32),
    Text(Arc<str>),
}

impl Status {
    /// The label value.
    pub fn label(&self) -> String {
        match self {
            Status::Code(c) => c.to_string(),
            Status::Text(t) => t.to_string(),
        }
    }

    /// The numeric code, if it is one.
    pub fn code(&self) -> Option<u32> {
        match self {
            Status::Code(c) => Some(*c),
            Status::Text(_) => None,
        }
    }
}

/// One finished request, whatever the protocol: the normalized record every consumer reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub protocol: &'static Spec,
    pub side: Side,
    /// The cgroup of the observed process's socket.
    pub cgroup_id: u64,
    /// A process that took part (the one that made the request's call), 0 if unknown.
    pub tgid: u32,
    /// The other end: the client (server side) or the server (client side).
    pub peer: IpAddr,
    pub peer_port: u16,
    /// What was asked: the HTTP method, the SQL operation, the command.
    pub operation: &'static str,
    /// What it was asked of, templated by the protocol (not yet capped): the HTTP route, the
    /// collection.
    pub target: Arc<str>,
    /// `None` when no response came.
    pub status: Option<Status>,
    /// OpenTelemetry `error.type` when no response came (`timeout`, `connection_closed`).
    pub error_type: Option<&'static str>,
    pub duration_ns: u64,
    /// Messages of the request and of the response, for protocols that carry several per
    /// exchange (gRPC's streaming calls); `None` when not counted (or not known whole).
    pub messages: Option<[u32; 2]>,
    /// It went over TLS: its bytes are the plaintext the TLS library read or wrote (HTTP's
    /// `url_scheme="https"`).
    pub tls: bool,
}

impl Request {
    /// Whether the request failed, by the protocol's rule.
    pub fn failed(&self) -> bool {
        (self.protocol.failed)(self.status.as_ref(), self.error_type)
    }
}

/// A metric family of a protocol (one per side).
#[derive(Debug, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
}

/// What a protocol is called and how its requests are exported. Compared, ordered and hashed
/// by its id.
#[derive(Debug)]
pub struct Spec {
    /// The kernel's protocol id (`observer_common::L7_*`).
    pub id: u8,
    /// The probe that turns it on (`--probes`), also its name in the API.
    pub name: &'static str,
    /// The histograms of requests answered and made.
    pub server: Family,
    pub client: Family,
    /// Label names: the operation, the server side's target, the client side's target (`None`:
    /// the client series carry the server's address instead of a target), the status.
    pub operation_label: &'static str,
    pub server_target_label: &'static str,
    pub client_target_label: Option<&'static str>,
    pub status_label: &'static str,
    /// Labels every series of the protocol carries (`db_system_name="redis"`): protocols
    /// sharing a family are told apart by them.
    pub constant_labels: &'static [(&'static str, &'static str)],
    /// Server side: APDEX and active clients are kept.
    pub apdex: bool,
    /// The service graph's `connection_type` of its edges ("" between services, "database").
    pub connection_type: &'static str,
    /// Whether a request failed, from its status and error type.
    pub failed: fn(Option<&Status>, Option<&'static str>) -> bool,
    /// Counters of the messages of exchanges that carry several (server side, client side;
    /// gRPC's streaming calls), labelled `rpc_message_type` `RECEIVED` or `SENT`.
    pub messages: Option<[&'static str; 2]>,
    /// Series carry `url_scheme` (`http`, or `https` for requests over TLS).
    pub url_scheme: bool,
}

impl Spec {
    /// A database's or cache's protocol: OpenTelemetry's database families, told apart by
    /// `db_system_name`; `client_target` says whether client series carry the collection (else
    /// the server's address).
    pub const fn database(
        id: u8,
        name: &'static str,
        system: &'static [(&'static str, &'static str)],
        client_target: bool,
        failed: fn(Option<&Status>, Option<&'static str>) -> bool,
    ) -> Spec {
        Spec {
            id,
            name,
            server: Family {
                name: "db_server_operation_duration_seconds",
                help: "Duration of database operations answered, from the command read to its \
                       reply written",
            },
            client: Family {
                name: "db_client_operation_duration_seconds",
                help: "Duration of database operations made, from the command written to its \
                       reply read",
            },
            operation_label: "db_operation_name",
            server_target_label: "db_collection_name",
            client_target_label: if client_target {
                Some("db_collection_name")
            } else {
                None
            },
            status_label: "db_response_status_code",
            constant_labels: system,
            apdex: false,
            connection_type: "database",
            failed,
            messages: None,
            url_scheme: false,
        }
    }
}

/// A request failed when it got an error reply (a text status: an error message or code) or
/// none at all.
pub fn failed_on_text_status(status: Option<&Status>, error: Option<&'static str>) -> bool {
    error.is_some() || matches!(status, Some(Status::Text(t)) if !t.is_empty())
}

impl PartialEq for Spec {
    fn eq(&self, o: &Self) -> bool {
        self.id == o.id
    }
}
impl Eq for Spec {}
impl std::hash::Hash for Spec {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.id.hash(h);
    }
}
impl PartialOrd for Spec {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Spec {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.id.cmp(&o.id)
    }
}

/// The kernel table of L7 connections, as a protocol's tracker may ask it.
pub trait ConnTable {
    /// The current state of one connection (`None`: the socket is gone).
    fn get(&self, sk: u64) -> Option<L7Conn>;
    /// Every connection (one read per entry: for rare, slow scans only).
    fn scan(&self, f: &mut dyn FnMut(u64, &L7Conn));
}

/// What a protocol's user-space side does with the records of its connections.
pub trait Protocol: Send {
    fn spec(&self) -> &'static Spec;
    /// Takes one kernel record; finished requests go to `out`.
    fn on_event(&mut self, ev: &Event<'_>, out: &mut Vec<Request>);
    /// Called every `pipeline::capture::DRAIN_INTERVAL`: ends what the kernel's counters show ended,
    /// times out what waited too long. `now_ns` is the kernel's monotonic clock.
    fn poll(&mut self, now_ns: u64, conns: &dyn ConnTable, out: &mut Vec<Request>);
    /// Records it could not use, by reason (the `reason` label of
    /// `observer_l7_messages_unparsed_total`).
    fn unparsed(&self) -> Vec<(&'static str, u64)>;
    /// Connections it follows now.
    fn conns(&self) -> usize;
}

/// Settings every protocol may read.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A request without response counts as `timeout` after this long.
    pub request_timeout_ns: u64,
}

/// Every protocol the observer knows, with the probe name that turns it on. Adding a protocol
/// is one line here (and its kernel detector's).
pub fn registry(settings: &Settings) -> Vec<Box<dyn Protocol>> {
    vec![
        Box::new(http1::Http1::new(settings)),
        Box::new(redis::Redis::new(settings)),
        Box::new(postgres::Postgres::new(settings)),
        Box::new(mysql::Mysql::new(settings)),
        Box::new(memcached::Memcached::new(settings)),
        Box::new(dns::Dns::new(settings)),
        Box::new(http2::Http2::new(settings)),
    ]
}

/// The specs of every known protocol.
pub const SPECS: &[&Spec] = &[
    &http1::SPEC,
    &redis::SPEC,
    &postgres::SPEC,
    &mysql::SPEC,
    &memcached::SPEC,
    &dns::SPEC,
    &http2::SPEC,
    // Its requests come from HTTP/2's tracker; no probe of its own.
    &http2::GRPC_SPEC,
];

/// The spec of a probe name (`--probes`).
pub fn spec_by_name(name: &str) -> Option<&'static Spec> {
    SPECS.iter().copied().find(|s| s.name == name)
}

pub use crate::model::addr as peer_addr;

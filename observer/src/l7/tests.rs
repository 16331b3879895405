//! The generic L7 path with a second, fake protocol registered beside HTTP/1: records of both
//! protocols interleaved in one ring's byte stream, on one connection table, through one
//! dispatch, one aggregation and one exposition, never mix.

use std::{
    cell::RefCell,
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use observer_common::{L7Conn, L7Dir, L7_HTTP1};
use prometheus_client::{collector::Collector, encoding::DescriptorEncoder, registry::Registry};

use super::{
    event::{record, Kind, Part},
    http1, ConnTable, Event, Family, Protocol, Request, Settings, Side, Spec, Status,
};
use crate::{
    identity::Identity,
    pipeline::{
        aggregate::{KernelHealth, Totals},
        capture::Dispatch,
        requests::{RequestAgg, RequestSettings, RequestTotals},
        topology::Topology,
    },
};

const ECHO_ID: u8 = 200;

/// A protocol only tests know: a request is `Q <op>`, a response `A <code>`; every response
/// answers the connection's last request.
static ECHO: Spec = Spec {
    id: ECHO_ID,
    name: "echo",
    server: Family {
        name: "echo_server_duration_seconds",
        help: "echo answered",
    },
    client: Family {
        name: "echo_client_operation_duration_seconds",
        help: "echo asked",
    },
    operation_label: "echo_op",
    server_target_label: "echo_target",
    client_target_label: Some("echo_target"),
    status_label: "echo_code",
    constant_labels: &[],
    apdex: false,
    connection_type: "database",
    failed: |s, e| e.is_some() || s.and_then(Status::code).is_some_and(|c| c != 0),
    messages: None,
    url_scheme: false,
};

#[derive(Default)]
struct Echo {
    pending: HashMap<u64, (u64, &'static str)>,
    unparsed: u64,
}

fn op(b: &[u8]) -> Option<&'static str> {
    ["get", "put", "del"]
        .into_iter()
        .find(|o| b.strip_prefix(b"Q ") == Some(o.as_bytes()))
}

impl Protocol for Echo {
    fn spec(&self) -> &'static Spec {
        &ECHO
    }

    fn on_event(&mut self, ev: &Event<'_>, out: &mut Vec<Request>) {
        if let Some(q) = ev.request {
            match op(q.bytes) {
                Some(o) => {
                    self.pending.insert(ev.sk, (q.ts_ns, o));
                }
                None => self.unparsed += 1,
            }
        }
        let Some(a) = ev.response else { return };
        let code = a
            .bytes
            .strip_prefix(b"A ")
            .and_then(|c| std::str::from_utf8(c).ok()?.parse().ok());
        match (self.pending.remove(&ev.sk), code) {
            (Some((start, o)), Some(c)) => out.push(Request {
                protocol: &ECHO,
                side: ev.side,
                cgroup_id: ev.cgroup_id,
                tgid: ev.tgid,
                peer: ev.peer,
                peer_port: ev.peer_port,
                operation: o,
                target: Arc::from("t"),
                status: Some(Status::Code(c)),
                error_type: None,
                duration_ns: a.ts_ns - start,
                messages: None,
                tls: false,
            }),
            _ => self.unparsed += 1,
        }
    }

    fn poll(&mut self, _now_ns: u64, conns: &dyn ConnTable, _out: &mut Vec<Request>) {
        // A request whose socket is gone is forgotten (the table is shared with HTTP's).
        self.pending
            .retain(|sk, _| conns.get(*sk).is_some_and(|c| c.proto == ECHO_ID));
    }

    fn unparsed(&self) -> Vec<(&'static str, u64)> {
        vec![("invalid", self.unparsed)]
    }

    fn conns(&self) -> usize {
        self.pending.len()
    }
}

#[derive(Default)]
struct Table(RefCell<HashMap<u64, L7Conn>>);

impl ConnTable for Table {
    fn get(&self, sk: u64) -> Option<L7Conn> {
        self.0.borrow().get(&sk).copied()
    }
    fn scan(&self, f: &mut dyn FnMut(u64, &L7Conn)) {
        for (sk, c) in self.0.borrow().iter() {
            f(*sk, c);
        }
    }
}

fn conn(proto: u8) -> L7Conn {
    L7Conn {
        cgroup_id: 7,
        cgroup_ptr: 0,
        req_ts: 0,
        orphan_ts: 0,
        resp: L7Dir::default(),
        peer: Default::default(),
        req_len: 0,
        resp_first: 0,
        tgid: 0,
        proto,
        side: 1,
        flags: 0,
        carry_len: 0,
        req_snip: 0,
        carry: [0; observer_common::L7_CARRY_MAX],
        req: [0; observer_common::L7_REQ_MAX],
    }
}

/// One exchange record as the kernel writes it.
fn bytes(
    proto: u8,
    sk: u64,
    cgroup_id: u64,
    side: Side,
    t: u64,
    req: &[u8],
    resp: &[u8],
) -> Vec<u8> {
    record(&Event {
        sk,
        cgroup_id,
        kind: Kind::Exchange,
        proto,
        side,
        ts_ns: t + 40,
        request: Some(Part {
            ts_ns: t,
            len: req.len() as u32,
            bytes: req,
        }),
        response: Some(Part {
            ts_ns: t + 40,
            len: resp.len() as u32,
            bytes: resp,
        }),
        prev: L7Dir::default(),
        peer: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
        peer_port: if side == Side::Client { 5432 } else { 40000 },
        tgid: 1,
        answered: false,
        data: None,
    })
}

fn dispatch() -> Dispatch {
    let settings = Settings {
        request_timeout_ns: 30_000_000_000,
    };
    Dispatch::new(vec![
        Box::new(http1::Http1::new(&settings)),
        Box::new(Echo::default()),
    ])
}

#[test]
fn records_round_trip_through_the_ring_layout() {
    let b = bytes(
        L7_HTTP1,
        9,
        7,
        Side::Client,
        100,
        b"GET / HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 204 No\r\n\r\n",
    );
    let e = Event::parse(&b).unwrap();
    assert_eq!(
        (e.sk, e.cgroup_id, e.proto, e.side, e.kind),
        (9, 7, L7_HTTP1, Side::Client, Kind::Exchange)
    );
    assert_eq!(e.request.unwrap().bytes, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(
        (e.response.unwrap().bytes, e.response.unwrap().ts_ns),
        (&b"HTTP/1.1 204 No\r\n\r\n"[..], 140)
    );
    assert_eq!(
        (e.peer, e.peer_port),
        (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)), 5432)
    );
    // Cut short, or lengths that lie: no record.
    assert!(Event::parse(&b[..50]).is_none());
    let mut lie = b.clone();
    lie.truncate(b.len() - 1);
    assert!(Event::parse(&lie).is_none());
}

#[test]
fn two_protocols_on_one_table_ring_and_aggregation_do_not_mix() {
    let mut d = dispatch();
    let table = Table::default();
    let mut out = Vec::new();
    // Interleaved on one "ring": HTTP on sockets 8 and 16, echo on 24 and 32, one cgroup each
    // side (socket addresses are aligned: an odd one is a TLS connection's plaintext key).
    let http = |sk, t| {
        bytes(
            L7_HTTP1,
            sk,
            7,
            Side::Server,
            t,
            b"GET /items/5 HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 500 E\r\nContent-Length: 0\r\n\r\n",
        )
    };
    let echo = |sk, t, q: &[u8], a: &[u8]| bytes(ECHO_ID, sk, 7, Side::Client, t, q, a);
    for sk in [8, 24, 16, 32] {
        table
            .0
            .borrow_mut()
            .insert(sk, conn(if sk < 24 { L7_HTTP1 } else { ECHO_ID }));
    }
    let ring = [
        http(8, 100),
        echo(24, 110, b"Q get", b"A 0"),
        http(16, 120),
        echo(32, 130, b"Q put", b"A 7"),
        echo(24, 140, b"Q del", b"A 0"),
        http(8, 150),
        // Each protocol's junk stays its own.
        bytes(ECHO_ID, 32, 7, Side::Client, 160, b"Q nope", b"A 0"),
        bytes(
            L7_HTTP1,
            16,
            7,
            Side::Server,
            170,
            b"\x01\x02",
            b"HTTP/1.1 200 OK\r\n\r\n",
        ),
        // A protocol nobody registered.
        bytes(99, 40, 7, Side::Server, 180, b"x", b"y"),
    ];
    for r in &ring {
        d.record(r, &mut out);
    }
    d.poll(1_000, &table, &mut out);
    let http_reqs: Vec<&Request> = out.iter().filter(|r| r.protocol == &http1::SPEC).collect();
    let echo_reqs: Vec<&Request> = out.iter().filter(|r| r.protocol == &ECHO).collect();
    assert_eq!(http_reqs.len(), 3);
    assert!(http_reqs.iter().all(|r| r.operation == "GET"
        && &*r.target == "/items/{id}"
        && r.status == Some(Status::Code(500))
        && r.side == Side::Server
        && r.failed()));
    assert_eq!(
        echo_reqs
            .iter()
            .map(|r| (r.operation, r.status.clone(), r.failed()))
            .collect::<Vec<_>>(),
        [
            ("get", Some(Status::Code(0)), false),
            ("put", Some(Status::Code(7)), true),
            ("del", Some(Status::Code(0)), false)
        ]
    );
    let h = d.health();
    assert_eq!(h.malformed, 1);
    // The bad request and the answer that then had no request.
    assert!(
        h.unparsed.contains(&("echo", "invalid", 2)),
        "{:?}",
        h.unparsed
    );
    assert!(
        h.unparsed.contains(&("http", "invalid", 1)),
        "{:?}",
        h.unparsed
    );
    assert!(
        h.unparsed
            .contains(&("http", "response_without_request", 1)),
        "{:?}",
        h.unparsed
    );

    // One aggregation: each protocol's series under its own key and family.
    let mut agg = RequestAgg::new(RequestSettings {
        apdex_t: 0.5,
        apdex_for: HashMap::new(),
        target_cap: 10,
    });
    let id = Arc::new(Identity {
        service_name: "svc".into(),
        ..Default::default()
    });
    for r in &out {
        agg.record(r, &id, 0);
    }
    let mut totals = RequestTotals::default();
    totals.add(&id, &agg.cgroups[&7], 0, 0.5);
    let count = |f: &dyn Fn(&'static Spec) -> bool| -> (u64, u64) {
        let s = totals
            .server
            .iter()
            .filter(|((_, k), _)| f(k.protocol))
            .map(|(_, h)| h.count)
            .sum();
        let c = totals
            .client
            .iter()
            .filter(|((_, k), _)| f(k.protocol))
            .map(|(_, h)| h.count)
            .sum();
        (s, c)
    };
    assert_eq!(count(&|p| p == &http1::SPEC), (3, 0));
    assert_eq!(count(&|p| p == &ECHO), (0, 3));
    // APDEX only counts the protocol that keeps it.
    assert_eq!(totals.apdex[&id], [0, 0, 3]);

    // One exposition: each family named by its protocol, with its own labels.
    let text = expose(totals);
    let lines = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(
        lines("http_server_request_duration_seconds_count{"),
        1,
        "{text}"
    );
    assert_eq!(
        lines("echo_client_operation_duration_seconds_count{"),
        3,
        "{text}"
    );
    assert!(text.contains("echo_op=\"put\",echo_code=\"7\",echo_target=\"t\",server_address=\"10.0.0.9\",server_port=\"5432\""), "{text}");
    assert!(
        !text.contains("echo_server"),
        "no echo server series: {text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("http_") && l.contains("echo_")),
        "{text}"
    );
}

fn expose(requests: RequestTotals) -> String {
    #[derive(Debug)]
    struct Fixed(Totals);
    impl Collector for Fixed {
        fn encode(&self, enc: DescriptorEncoder) -> std::fmt::Result {
            crate::export::metrics::encode_all(
                enc,
                &self.0,
                &KernelHealth::default(),
                &[],
                &Topology::default(),
            )
        }
    }
    let totals = Totals {
        requests,
        ..Default::default()
    };
    let mut r = Registry::default();
    r.register_collector(Box::new(Fixed(totals)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
    out
}

#[test]
fn the_topology_takes_its_edge_kind_from_the_protocol() {
    let mut d = dispatch();
    let mut out = Vec::new();
    d.record(
        &bytes(ECHO_ID, 3, 7, Side::Client, 100, b"Q get", b"A 0"),
        &mut out,
    );
    d.record(
        &bytes(
            L7_HTTP1,
            1,
            8,
            Side::Client,
            100,
            b"GET / HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ),
        &mut out,
    );
    let mut agg = RequestAgg::new(RequestSettings {
        apdex_t: 0.5,
        apdex_for: HashMap::new(),
        target_cap: 10,
    });
    let app = Arc::new(Identity {
        service_name: "app".into(),
        ..Default::default()
    });
    let web = Arc::new(Identity {
        service_name: "web".into(),
        ..Default::default()
    });
    let mut totals = RequestTotals::default();
    for r in &out {
        agg.record(r, if r.cgroup_id == 7 { &app } else { &web }, 0);
    }
    totals.add(&app, &agg.cgroups[&7], 0, 0.5);
    totals.add(&web, &agg.cgroups[&8], 0, 0.5);
    let no_peers: HashMap<IpAddr, Arc<Identity>> = HashMap::new();
    let t = Topology::build(&totals, &no_peers);
    let kinds: Vec<(&str, &str)> = t
        .edges
        .iter()
        .map(|(k, e)| {
            (
                k.client.name(),
                crate::pipeline::topology::Node::connection_type(&k.client, &k.server, e),
            )
        })
        .collect();
    assert_eq!(kinds, [("app", "database"), ("web", "virtual_node")]);
}

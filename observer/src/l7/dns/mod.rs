//! DNS over UDP and TCP: the kernel sends every datagram to or from port 53 as a `DATA`
//! record, and every call of a TCP connection to or from port 53 (see the kernel's
//! `l7/dns.rs`); this tracker frames TCP's length-prefixed messages ([`wire::Framer`]) and pairs
//! each query with its response by socket and message id (over TCP, pipelined queries are
//! answered in any order). A lookup is named by its question type (`A`, `AAAA`, ...), its
//! target is the question's name, its status the response code. A query with no response
//! within the request timeout counts as `timeout`, and so does one whose id the client sends
//! again (a resolver's retry: the first try went unanswered); the retry is a lookup of its
//! own. A TCP connection that ends with queries unanswered ends them as `connection_closed`.
//!
//! NXDOMAIN is an answer, not a failure: in Kubernetes every lookup of an outside name walks
//! the search domains and gets a few (`ndots:5`). Failed are SERVFAIL, REFUSED, the other error
//! codes, and lookups without a response.

pub mod wire;

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use observer_common::L7_DNS;

use super::{
    event::{Data, Kind},
    stream::{tracked, Calls, Conns, Ends, Input, Op, Unparsed},
    ConnTable, Event, Protocol, Request, Settings, Side, Spec, Status,
};
use wire::{Framed, Framer};

pub static SPEC: Spec = Spec {
    id: L7_DNS,
    name: "dns",
    server: super::Family {
        name: "dns_server_duration_seconds",
        help: "Duration of DNS queries answered, from the query read to its response sent",
    },
    client: super::Family {
        name: "dns_lookup_duration_seconds",
        help: "Duration of DNS lookups made, from the query sent to its response read",
    },
    operation_label: "dns_question_type",
    server_target_label: "dns_question_name",
    client_target_label: Some("dns_question_name"),
    status_label: "dns_response_code",
    constant_labels: &[],
    apdex: false,
    connection_type: "",
    failed,
    messages: None,
    url_scheme: false,
};

/// No response, or a response code other than NOERROR and NXDOMAIN.
fn failed(status: Option<&Status>, error: Option<&'static str>) -> bool {
    error.is_some()
        || !matches!(status, Some(Status::Text(t)) if &**t == "NOERROR" || &**t == "NXDOMAIN")
}

/// Queries waiting for their responses, all sockets together, before new ones are not
/// followed (counted).
const MAX_PENDING: usize = 65536;
/// Distinct question names shared as label values before they are not interned any more (the
/// per-service cap of targets applies after).
const MAX_NAMES: usize = 4096;

#[derive(Debug)]
struct Pending {
    ends: Ends,
    op: &'static str,
    name: Arc<str>,
    start_ns: u64,
    tgid: u32,
}

/// Queries of one TCP connection remembered for its end, before the oldest are forgotten
/// (those still waiting then end by the timeout).
const MAX_CONN_IDS: usize = 1024;

/// A TCP connection: each direction's framer, and the ids of its queries not answered yet.
#[derive(Debug)]
struct Conn {
    sk: u64,
    ends: Ends,
    framers: [Framer; 2],
    calls: Calls,
    ids: VecDeque<u16>,
    last_ns: u64,
}

tracked!(Conn);

/// What a message was to the pairing.
enum Seen {
    Query(u16),
    Answer(u16),
    Nothing,
}

/// The DNS protocol of the L7 path.
#[derive(Debug)]
pub struct Dns {
    /// By socket and message id.
    pending: HashMap<(u64, u16), Pending, foldhash::fast::RandomState>,
    /// TCP connections.
    conns: Conns<Conn>,
    /// Queries in the order they were sent, for the timeouts (an entry whose query is gone or
    /// was replaced is skipped).
    order: VecDeque<(u64, (u64, u16))>,
    names: HashMap<String, Arc<str>, foldhash::fast::RandomState>,
    no_name: Arc<str>,
    timeout_ns: u64,
    pub unparsed: Unparsed,
}

impl Dns {
    pub fn new(settings: &Settings) -> Self {
        Self {
            pending: HashMap::default(),
            conns: Conns::default(),
            order: VecDeque::new(),
            names: HashMap::default(),
            no_name: Arc::from(""),
            timeout_ns: settings.request_timeout_ns,
            unparsed: Unparsed::default(),
        }
    }

    fn name(&mut self, q: Option<&wire::Question>) -> Arc<str> {
        let Some(q) = q else {
            return self.no_name.clone();
        };
        if let Some(n) = self.names.get(&q.name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(q.name.as_str());
        if self.names.len() < MAX_NAMES {
            self.names.insert(q.name.clone(), n.clone());
        }
        n
    }

    fn ended(
        p: Pending,
        end_ns: u64,
        status: Option<Status>,
        error: Option<&'static str>,
    ) -> Request {
        let op = Op {
            name: p.op,
            target: p.name,
            start_ns: p.start_ns,
            tgid: p.tgid,
        };
        p.ends.request(op, end_ns, status, error)
    }

    fn on_data(&mut self, ev: &Event<'_>, out: &mut Vec<Request>) {
        let Some(d) = ev.data else { return };
        if !d.dgram {
            self.on_stream(ev, &d, out);
            return;
        }
        if d.offset != 0 {
            // The rest of a datagram longer than a record: nothing more to read in it.
            return;
        }
        if d.bytes.is_empty() {
            self.unparsed.gap += 1;
            return;
        }
        let ends = || Ends::of(&SPEC, ev);
        let times = (d.start_ns, d.end_ns, ev.tgid);
        self.on_message(ev.sk, ev.side, ends, d.bytes, d.send, times, out);
    }

    /// One call of a TCP connection: its messages, framed per direction.
    fn on_stream(&mut self, ev: &Event<'_>, d: &Data<'_>, out: &mut Vec<Request>) {
        // An evicted connection's queries stay for their answers (read as another
        // connection's) or the timeout.
        let _ = self.conns.make_room(ev.sk);
        let mut c = self.conns.take(ev.sk, d.end_ns, || Conn {
            sk: ev.sk,
            ends: Ends::of(&SPEC, ev),
            framers: [Framer::default(), Framer::default()],
            calls: Calls::default(),
            ids: VecDeque::new(),
            last_ns: d.end_ns,
        });
        let queries = d.send == (ev.side == Side::Client);
        let mut calls = c.calls;
        calls.record(usize::from(!queries), d, ev.tgid, |dir, input, call| {
            let mut msgs: Vec<Option<Vec<u8>>> = Vec::new();
            let mut keep = |m: Framed<'_>| {
                msgs.push(match m {
                    Framed::Message(b) => Some(b.to_vec()),
                    Framed::Holed => None,
                })
            };
            let f = &mut c.framers[dir];
            match input {
                Input::Gap(n) => {
                    if !f.gap(n, &mut keep) {
                        self.unparsed.gap += 1;
                    }
                }
                Input::Bytes(b) => {
                    if call.seen as usize == b.len() {
                        f.resync();
                    }
                    f.feed(b, &mut keep);
                }
            }
            // Sent by a client or a server: the direction's own.
            let send = (dir == 0) == (ev.side == Side::Client);
            for m in msgs {
                let Some(m) = m else {
                    self.unparsed.gap += 1;
                    continue;
                };
                let times = (call.start_ns, call.end_ns, call.tgid);
                let ends = || c.ends.clone();
                match self.on_message(ev.sk, ev.side, ends, &m, send, times, out) {
                    Seen::Query(id) => {
                        if c.ids.len() >= MAX_CONN_IDS {
                            c.ids.pop_front();
                        }
                        c.ids.push_back(id);
                    }
                    Seen::Answer(id) => c.ids.retain(|&x| x != id),
                    Seen::Nothing => {}
                }
            }
        });
        c.calls = calls;
        self.conns.put(ev.sk, c);
    }

    /// A TCP connection ended at `ts_ns`: its queries still waiting end as
    /// `connection_closed`.
    fn close(&mut self, c: Box<Conn>, ts_ns: u64, out: &mut Vec<Request>) {
        for id in c.ids {
            if let Some(p) = self.pending.remove(&(c.sk, id)) {
                out.push(Self::ended(p, ts_ns, None, Some("connection_closed")));
            }
        }
    }

    /// One whole message (`bytes`, at least its header and question) of socket `sk`, sent or
    /// received in a call of `times` (start, end, process).
    #[allow(clippy::too_many_arguments)]
    fn on_message(
        &mut self,
        sk: u64,
        side: Side,
        ends: impl FnOnce() -> Ends,
        bytes: &[u8],
        send: bool,
        (call_start, call_end, tgid): (u64, u64, u32),
        out: &mut Vec<Request>,
    ) -> Seen {
        let Ok(m) = wire::parse(bytes) else {
            self.unparsed.invalid += 1;
            return Seen::Nothing;
        };
        // A client sends queries and reads responses; a server the other way round.
        let query_dir = send == (side == Side::Client);
        if m.response == query_dir {
            self.unparsed.invalid += 1;
            return Seen::Nothing;
        }
        let key = (sk, m.id);
        if !m.response {
            // A client's query left when its call began; a server's arrived when its call ended.
            let start_ns = if side == Side::Client {
                call_start
            } else {
                call_end
            };
            if let Some(earlier) = self.pending.remove(&key) {
                out.push(Self::ended(earlier, start_ns, None, Some("timeout")));
            } else if self.pending.len() >= MAX_PENDING {
                self.unparsed.pending_overflow += 1;
                return Seen::Nothing;
            }
            let p = Pending {
                ends: ends(),
                op: m
                    .question
                    .as_ref()
                    .map_or("_OTHER", |q| wire::qtype_name(q.qtype)),
                name: self.name(m.question.as_ref()),
                start_ns,
                tgid,
            };
            self.pending.insert(key, p);
            self.order.push_back((start_ns, key));
            return Seen::Query(m.id);
        }
        let Some(p) = self.pending.remove(&key) else {
            self.unparsed.response_without_request += 1;
            return Seen::Nothing;
        };
        // A server's response left when its call began; a client's arrived when its call ended.
        let end_ns = if side == Side::Client {
            call_end
        } else {
            call_start
        };
        let status = Status::Text(Arc::from(wire::rcode_name(m.rcode)));
        out.push(Self::ended(p, end_ns, Some(status), None));
        Seen::Answer(m.id)
    }
}

impl Protocol for Dns {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn on_event(&mut self, ev: &Event<'_>, out: &mut Vec<Request>) {
        match ev.kind {
            Kind::Data => self.on_data(ev, out),
            Kind::Close => {
                if let Some(c) = self.conns.closed(ev.sk, ev.ts_ns) {
                    self.close(c, ev.ts_ns, out);
                }
            }
            // Only the HTTP/1 framer sends the rest.
            Kind::Exchange | Kind::Request => self.unparsed.invalid += 1,
        }
    }

    fn poll(&mut self, now_ns: u64, conns: &dyn ConnTable, out: &mut Vec<Request>) {
        for c in self.conns.sweep(now_ns, conns) {
            let end = c.last_ns;
            self.close(c, end, out);
        }
        while let Some(&(start_ns, key)) = self.order.front() {
            if now_ns.saturating_sub(start_ns) < self.timeout_ns {
                break;
            }
            self.order.pop_front();
            if self
                .pending
                .get(&key)
                .is_some_and(|p| p.start_ns == start_ns)
            {
                let p = self.pending.remove(&key).expect("checked");
                out.push(Self::ended(p, now_ns, None, Some("timeout")));
            }
        }
        // Answered queries leave their entries behind: drop them once they outnumber the
        // waiting ones by far.
        if self.order.len() > 4 * self.pending.len() + 1024 {
            let pending = &self.pending;
            self.order
                .retain(|(s, k)| pending.get(k).is_some_and(|p| p.start_ns == *s));
        }
    }

    fn unparsed(&self) -> Vec<(&'static str, u64)> {
        self.unparsed.list(self.conns.evicted, &[])
    }

    fn conns(&self) -> usize {
        self.pending.len() + self.conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::stream::testing::{
        close, datagram as whole, feed, piece, whole as call, Live, NoConns, MS,
    };

    fn settings() -> Settings {
        Settings {
            request_timeout_ns: 5_000 * MS,
        }
    }

    fn response(q: &[u8], rcode: u8) -> Vec<u8> {
        let mut r = q.to_vec();
        r[2] |= 0x80;
        r[3] = 0x80 | rcode;
        r
    }

    fn seen(out: &[Request]) -> Vec<(&'static str, String, String, Option<&'static str>, u64)> {
        out.iter()
            .map(|r| {
                (
                    r.operation,
                    r.target.to_string(),
                    r.status.as_ref().map(|s| s.label()).unwrap_or_default(),
                    r.error_type,
                    r.duration_ns / MS,
                )
            })
            .collect()
    }

    #[test]
    fn parallel_a_and_aaaa_pair_by_id() {
        let mut t = Dns::new(&settings());
        let a = wire::query(7, "svc.test", 1);
        let aaaa = wire::query(8, "svc.test", 28);
        assert!(whole(&mut t, Side::Client, true, 10, 10, &a).is_empty());
        assert!(whole(&mut t, Side::Client, true, 10, 10, &aaaa).is_empty());
        let out = whole(&mut t, Side::Client, false, 12, 13, &response(&aaaa, 0));
        let out2 = whole(&mut t, Side::Client, false, 14, 15, &response(&a, 3));
        assert_eq!(
            seen(&out),
            [("AAAA", "svc.test".into(), "NOERROR".into(), None, 3)]
        );
        assert_eq!(
            seen(&out2),
            [("A", "svc.test".into(), "NXDOMAIN".into(), None, 5)]
        );
        assert!(!out[0].failed() && !out2[0].failed());
        assert_eq!(t.conns(), 0);
    }

    #[test]
    fn server_side_and_failures() {
        let mut t = Dns::new(&settings());
        let q = wire::query(1, "x.example", 16);
        assert!(whole(&mut t, Side::Server, false, 1, 2, &q).is_empty());
        let out = whole(&mut t, Side::Server, true, 4, 4, &response(&q, 2));
        assert_eq!(
            seen(&out),
            [("TXT", "x.example".into(), "SERVFAIL".into(), None, 2)]
        );
        assert!(out[0].failed());
    }

    #[test]
    fn no_answer_is_a_timeout_and_a_retry_ends_the_first_try() {
        let mut t = Dns::new(&settings());
        let q = wire::query(9, "slow.example", 1);
        assert!(whole(&mut t, Side::Client, true, 0, 0, &q).is_empty());
        // The resolver tries again with the same id after 1 s.
        let out = whole(&mut t, Side::Client, true, 1000, 1000, &q);
        assert_eq!(
            seen(&out),
            [("A", "slow.example".into(), "".into(), Some("timeout"), 1000)]
        );
        let mut out = Vec::new();
        t.poll(5_999 * MS, &NoConns, &mut out);
        assert!(out.is_empty());
        t.poll(6_000 * MS, &NoConns, &mut out);
        assert_eq!(
            seen(&out),
            [("A", "slow.example".into(), "".into(), Some("timeout"), 5000)]
        );
        assert!(out[0].failed());
        assert_eq!(t.conns(), 0);
        // A late answer pairs with nothing.
        assert!(whole(&mut t, Side::Client, false, 6001, 6001, &response(&q, 0)).is_empty());
        assert_eq!(t.unparsed.response_without_request, 1);
    }

    #[test]
    fn bad_datagrams_are_counted() {
        let mut t = Dns::new(&settings());
        assert!(whole(&mut t, Side::Client, true, 0, 0, b"hello").is_empty());
        let q = wire::query(3, "a", 1);
        // A query read by a client: the wrong direction.
        assert!(whole(&mut t, Side::Client, false, 0, 0, &q).is_empty());
        assert!(whole(&mut t, Side::Client, true, 0, 0, b"").is_empty());
        assert_eq!(t.unparsed.invalid, 2);
        assert_eq!(t.unparsed.gap, 1);
    }

    fn prefixed(m: &[u8]) -> Vec<u8> {
        let mut b = (m.len() as u16).to_be_bytes().to_vec();
        b.extend_from_slice(m);
        b
    }

    #[test]
    fn tcp_pipelined_queries_answered_out_of_order() {
        let mut t = Dns::new(&settings());
        let (a, aaaa) = (
            wire::query(1, "svc.test", 1),
            wire::query(2, "svc.test", 28),
        );
        let mut both = prefixed(&a);
        both.extend(prefixed(&aaaa));
        assert!(call(&mut t, Side::Client, true, 10, 10, &both).is_empty());
        // The answers in one call, the second query's first.
        let mut answers = prefixed(&response(&aaaa, 0));
        answers.extend(prefixed(&response(&a, 3)));
        let out = call(&mut t, Side::Client, false, 12, 14, &answers);
        assert_eq!(
            seen(&out),
            [
                ("AAAA", "svc.test".into(), "NOERROR".into(), None, 4),
                ("A", "svc.test".into(), "NXDOMAIN".into(), None, 4)
            ]
        );
        assert_eq!(t.conns(), 1, "the connection, nothing pending");
        assert!(feed(&mut t, &close(L7_DNS, Side::Client, 20)).is_empty());
        assert_eq!(t.conns(), 0);
        assert_eq!(t.unparsed.invalid + t.unparsed.gap, 0);
    }

    #[test]
    fn tcp_server_reading_the_length_byte_by_byte() {
        let mut t = Dns::new(&settings());
        let q = prefixed(&wire::query(5, "x.test", 16));
        assert!(call(&mut t, Side::Server, false, 1, 1, &q[..1]).is_empty());
        assert!(call(&mut t, Side::Server, false, 1, 1, &q[1..2]).is_empty());
        assert!(call(&mut t, Side::Server, false, 2, 2, &q[2..]).is_empty());
        let r = prefixed(&response(&wire::query(5, "x.test", 16), 2));
        let out = call(&mut t, Side::Server, true, 7, 7, &r);
        assert_eq!(
            seen(&out),
            [("TXT", "x.test".into(), "SERVFAIL".into(), None, 5)]
        );
    }

    #[test]
    fn tcp_close_ends_unanswered_queries_and_a_lost_length_resyncs_at_a_call() {
        let mut t = Dns::new(&settings());
        let q = prefixed(&wire::query(9, "gone.test", 1));
        assert!(call(&mut t, Side::Client, true, 0, 0, &q).is_empty());
        // The kernel read only 3 bytes of a 9000-byte call: the rest hides the next length.
        let mut long = response(&wire::query(9, "gone.test", 1), 0);
        long.resize(4000, 0);
        let long = prefixed(&long);
        let rec = piece(L7_DNS, Side::Client, false, 1, 1, 9000, 0, &long[..3]);
        assert!(feed(&mut t, &rec).is_empty());
        let q2 = prefixed(&wire::query(10, "next.test", 1));
        assert!(call(&mut t, Side::Client, true, 2, 2, &q2).is_empty());
        assert_eq!(t.unparsed.gap, 1, "the answer's length hid");
        let out = feed(&mut t, &close(L7_DNS, Side::Client, 5));
        let mut names: Vec<String> = out.iter().map(|r| r.target.to_string()).collect();
        names.sort();
        assert_eq!(names, ["gone.test", "next.test"]);
        assert!(out
            .iter()
            .all(|r| r.error_type == Some("connection_closed")));
        let mut none = Vec::new();
        t.poll(10_000 * MS, &Live, &mut none);
        assert!(none.is_empty());
        assert_eq!(t.conns(), 0);
    }
}

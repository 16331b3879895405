//! DNS over UDP: the kernel sends every datagram to or from port 53 as a `DATA` record (see the
//! kernel's `l7/dns.rs`); this tracker pairs each query with its response by socket and message
//! id. A lookup is named by its question type (`A`, `AAAA`, ...), its target is the question's
//! name, its status the response code. A query with no response within the request timeout
//! counts as `timeout`, and so does one whose id the client sends again (a resolver's retry:
//! the first try went unanswered); the retry is a lookup of its own.
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
    event::Kind,
    stream::{Ends, Op},
    ConnTable, Event, Protocol, Request, Settings, Side, Spec, Status,
};

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

/// Records the tracker could not use.
#[derive(Debug, Default)]
pub struct Unparsed {
    /// Bytes that are no DNS message, or a query where a response should be (and back).
    pub invalid: u64,
    /// A datagram whose bytes the kernel could not read (no user buffer).
    pub gap: u64,
    pub response_without_request: u64,
    pub pending_overflow: u64,
}

/// The DNS protocol of the L7 path.
#[derive(Debug)]
pub struct Dns {
    /// By socket and message id.
    pending: HashMap<(u64, u16), Pending, foldhash::fast::RandomState>,
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
        if d.offset != 0 {
            // The rest of a datagram longer than a record: nothing more to read in it.
            return;
        }
        if d.bytes.is_empty() {
            self.unparsed.gap += 1;
            return;
        }
        let Ok(m) = wire::parse(d.bytes) else {
            self.unparsed.invalid += 1;
            return;
        };
        // A client sends queries and reads responses; a server the other way round.
        let query_dir = d.send == (ev.side == Side::Client);
        if m.response == query_dir {
            self.unparsed.invalid += 1;
            return;
        }
        let key = (ev.sk, m.id);
        if !m.response {
            // A client's query left when its call began; a server's arrived when its call ended.
            let start_ns = if ev.side == Side::Client {
                d.start_ns
            } else {
                d.end_ns
            };
            if let Some(earlier) = self.pending.remove(&key) {
                out.push(Self::ended(earlier, start_ns, None, Some("timeout")));
            } else if self.pending.len() >= MAX_PENDING {
                self.unparsed.pending_overflow += 1;
                return;
            }
            let p = Pending {
                ends: Ends::of(&SPEC, ev),
                op: m
                    .question
                    .as_ref()
                    .map_or("_OTHER", |q| wire::qtype_name(q.qtype)),
                name: self.name(m.question.as_ref()),
                start_ns,
                tgid: ev.tgid,
            };
            self.pending.insert(key, p);
            self.order.push_back((start_ns, key));
            return;
        }
        let Some(p) = self.pending.remove(&key) else {
            self.unparsed.response_without_request += 1;
            return;
        };
        // A server's response left when its call began; a client's arrived when its call ended.
        let end_ns = if ev.side == Side::Client {
            d.end_ns
        } else {
            d.start_ns
        };
        let status = Status::Text(Arc::from(wire::rcode_name(m.rcode)));
        out.push(Self::ended(p, end_ns, Some(status), None));
    }
}

impl Protocol for Dns {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn on_event(&mut self, ev: &Event<'_>, out: &mut Vec<Request>) {
        match ev.kind {
            Kind::Data => self.on_data(ev, out),
            // UDP sockets have no connection to close; only the HTTP/1 framer sends the rest.
            Kind::Close | Kind::Exchange | Kind::Request => self.unparsed.invalid += 1,
        }
    }

    fn poll(&mut self, now_ns: u64, _conns: &dyn ConnTable, out: &mut Vec<Request>) {
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
        let u = &self.unparsed;
        vec![
            ("invalid", u.invalid),
            ("gap", u.gap),
            ("response_without_request", u.response_without_request),
            ("pending_overflow", u.pending_overflow),
        ]
    }

    fn conns(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::stream::testing::{whole, NoConns, MS};

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
}

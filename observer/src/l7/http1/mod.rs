//! HTTP/1.0 and 1.1: the parser ([`parse`], pure functions over bytes, shared with the fuzz
//! target), the tracker that pairs requests and responses ([`tracker`]), and how its requests
//! are exported (OpenTelemetry's HTTP names, as Beyla exports them).

pub mod parse;
pub mod tracker;

use std::{collections::HashMap, sync::Arc};

use observer_common::L7_HTTP1;

use super::{ConnTable, Event, Protocol, Request, Settings, Spec, Status};

/// HTTP/1.1 as the exporters see it (the request line's version; OpenTelemetry's
/// `network.protocol.version`).
pub static SPEC: Spec = Spec {
    constant_labels: &[("network_protocol_version", "1.1")],
    ..BASE
};

/// HTTP/1.0 requests. Not a probe of its own: its id only tells its series apart.
pub static SPEC_10: Spec = Spec {
    id: L7_HTTP1 | 0x80,
    constant_labels: &[("network_protocol_version", "1.0")],
    ..BASE
};

/// The HTTP families and labels, which every version shares (each with its version label).
pub const BASE: Spec = Spec {
    id: L7_HTTP1,
    name: "http",
    server: super::Family {
        name: "http_server_request_duration_seconds",
        help: "Duration of HTTP requests answered, from the first byte of the request read to the last byte of the response written",
    },
    client: super::Family {
        name: "http_client_request_duration_seconds",
        help: "Duration of HTTP requests made, from the request written to the last byte of the response read",
    },
    operation_label: "http_request_method",
    server_target_label: "http_route",
    client_target_label: None,
    status_label: "http_response_status_code",
    constant_labels: &[],
    apdex: true,
    connection_type: "",
    failed,
    messages: None,
    url_scheme: true,
};

/// A 5xx response, or none at all.
fn failed(status: Option<&Status>, error: Option<&'static str>) -> bool {
    error.is_some() || status.and_then(Status::code).is_some_and(|s| s >= 500)
}

/// Route templates by raw target (its path, without query or fragment): a request whose path
/// was seen costs one lookup, no templating and no allocation. Bounded: a full table starts
/// over.
#[derive(Debug, Default)]
pub struct Routes {
    known: HashMap<Box<str>, Arc<str>, foldhash::fast::RandomState>,
    /// Distinct templates, so that paths with ids share one `Arc`.
    templates: HashMap<Box<str>, Arc<str>, foldhash::fast::RandomState>,
}

/// Paths remembered before the table starts over.
const MAX_KNOWN: usize = 16384;

impl Routes {
    /// The `http_route` of a request target.
    pub fn of(&mut self, target: &str) -> Arc<str> {
        let path = target.split(['?', '#']).next().unwrap_or_default();
        if let Some(r) = self.known.get(path) {
            return r.clone();
        }
        if self.known.len() >= MAX_KNOWN {
            self.known.clear();
            self.templates.clear();
        }
        let t = parse::route_template(target);
        let r = match self.templates.get(t.as_str()) {
            Some(r) => r.clone(),
            None => {
                let r: Arc<str> = Arc::from(t.as_str());
                self.templates.insert(t.into_boxed_str(), r.clone());
                r
            }
        };
        self.known.insert(path.into(), r.clone());
        r
    }

    /// The shared `Arc` of a route already templated.
    pub fn templated(&mut self, route: String) -> Arc<str> {
        if let Some(r) = self.templates.get(route.as_str()) {
            return r.clone();
        }
        if self.templates.len() >= MAX_KNOWN {
            self.known.clear();
            self.templates.clear();
        }
        let r: Arc<str> = Arc::from(route.as_str());
        self.templates.insert(route.into_boxed_str(), r.clone());
        r
    }
}

/// The HTTP/1.x protocol of the L7 path.
#[derive(Debug)]
pub struct Http1 {
    tracker: tracker::Tracker,
}

impl Http1 {
    pub fn new(settings: &Settings) -> Self {
        Self {
            tracker: tracker::Tracker::new(settings.request_timeout_ns),
        }
    }
}

impl Protocol for Http1 {
    fn spec(&self) -> &'static Spec {
        &SPEC
    }

    fn on_event(&mut self, ev: &Event<'_>, out: &mut Vec<Request>) {
        self.tracker.on_event(ev, out);
    }

    fn poll(&mut self, now_ns: u64, conns: &dyn ConnTable, out: &mut Vec<Request>) {
        self.tracker.poll(now_ns, conns, out);
    }

    fn unparsed(&self) -> Vec<(&'static str, u64)> {
        let u = &self.tracker.unparsed;
        vec![
            ("invalid", u.invalid),
            ("response_without_request", u.response_without_request),
            ("pending_overflow", u.pending_overflow),
            ("connection_evicted", u.conns_evicted),
        ]
    }

    fn conns(&self) -> usize {
        self.tracker.conns()
    }
}

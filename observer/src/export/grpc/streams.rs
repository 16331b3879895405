//! The server-streaming calls. Each stream has its own task between a broadcast receiver and a
//! small bounded channel to the connection: when the reader stops reading, that task waits,
//! the broadcast ring overwrites the records it has not taken, and once it takes again it is
//! told how many it lost (`Missed`). The pipeline's send never waits for a reader.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{convert, lock, pb, ApiError};
use crate::{
    ebpf::load::ProbeStatus,
    export::metrics::LOST_SOURCES,
    l7::Side,
    pipeline::{aggregate::Pipeline, live::LiveRequest},
    shutdown::Shutdown,
};

/// Messages queued per stream before its task waits for the reader.
const STREAM_BUFFER: usize = 64;
/// Observer events a slow reader may fall behind by.
pub const EVENTS_CAPACITY: usize = 1024;
/// How often the lost-record counters are compared.
const LOST_POLL: Duration = Duration::from_secs(1);

/// The server-side filter of `StreamRequests`, validated.
#[derive(Debug, Default)]
pub struct RequestFilter {
    pod_uid: Option<String>,
    service: Option<String>,
    route: Option<String>,
    status: Option<u16>,
    min_duration_ns: u64,
    side: Option<Side>,
    protocol: Option<String>,
}

fn non_empty(s: String) -> Option<String> {
    let s = s.trim().to_string();
    (!s.is_empty()).then_some(s)
}

impl TryFrom<pb::StreamRequestsRequest> for RequestFilter {
    type Error = ApiError;

    fn try_from(r: pb::StreamRequestsRequest) -> Result<Self, ApiError> {
        let bad = |m: String| Err(ApiError::InvalidArgument(m));
        let status = match r.status {
            0 => None,
            s @ 100..=599 => Some(s as u16),
            s => return bad(format!("status must be 100 to 599 (or 0 for any), got {s}")),
        };
        if !(r.min_latency_ms.is_finite() && r.min_latency_ms >= 0.0) {
            return bad(format!(
                "min_latency_ms must be 0 or more, got {}",
                r.min_latency_ms
            ));
        }
        let route = non_empty(r.route);
        if let Some(route) = &route {
            if !route.starts_with('/') {
                return bad(format!("route must start with '/', got {route:?}"));
            }
        }
        let protocol = non_empty(r.protocol);
        if let Some(p) = &protocol {
            if crate::l7::spec_by_name(p).is_none() {
                let known: Vec<&str> = crate::l7::SPECS.iter().map(|s| s.name).collect();
                return bad(format!(
                    "protocol must be one of {}, got {p:?}",
                    known.join(", ")
                ));
            }
        }
        let side = match pb::Side::try_from(r.side) {
            Ok(pb::Side::Unspecified) => None,
            Ok(pb::Side::Server) => Some(Side::Server),
            Ok(pb::Side::Client) => Some(Side::Client),
            Err(_) => return bad(format!("side {} is not a Side", r.side)),
        };
        Ok(RequestFilter {
            pod_uid: non_empty(r.pod_uid).map(|u| convert::normalize_uid(&u)),
            service: non_empty(r.service_name),
            route,
            status,
            min_duration_ns: (r.min_latency_ms * 1e6).min(u64::MAX as f64) as u64,
            side,
            protocol,
        })
    }
}

impl RequestFilter {
    pub fn matches(&self, r: &LiveRequest) -> bool {
        let q = &r.request;
        self.pod_uid
            .as_ref()
            .is_none_or(|u| r.identity.k8s_pod_uid == *u)
            && self
                .service
                .as_ref()
                .is_none_or(|s| r.identity.service_name == *s)
            && self.route.as_ref().is_none_or(|x| *r.target == **x)
            && self.status.is_none_or(|s| {
                q.status.as_ref().and_then(crate::l7::Status::code) == Some(u32::from(s))
            })
            && q.duration_ns >= self.min_duration_ns
            && self.side.is_none_or(|s| q.side == s)
            && self.protocol.as_ref().is_none_or(|p| q.protocol.name == p)
    }
}

/// Sends unless the reader went away or the observer stops; false when the stream is over.
async fn send<T>(tx: &mpsc::Sender<Result<T, Status>>, item: T, shutdown: &Shutdown) -> bool {
    tokio::select! {
        r = tx.send(Ok(item)) => r.is_ok(),
        _ = shutdown.clone().wait() => false,
    }
}

/// The `StreamRequests` stream of one reader.
pub fn requests(
    mut rx: broadcast::Receiver<LiveRequest>,
    filter: RequestFilter,
    shutdown: Shutdown,
) -> ReceiverStream<Result<pb::RequestEvent, Status>> {
    use pb::request_event::Event;
    let (tx, out) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        loop {
            let got = tokio::select! {
                r = rx.recv() => r,
                _ = tx.closed() => return,
                _ = shutdown.clone().wait() => return,
            };
            let event = match got {
                Ok(r) if filter.matches(&r) => Event::Request(convert::request(&r)),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    Event::Missed(pb::Missed { count: n })
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let msg = pb::RequestEvent { event: Some(event) };
            if !send(&tx, msg, &shutdown).await {
                return;
            }
        }
    });
    ReceiverStream::new(out)
}

fn event(kind: &str, message: String, fields: HashMap<String, String>) -> pb::Event {
    pb::Event {
        kind: kind.to_string(),
        time_unix_nano: convert::unix_nanos(SystemTime::now()),
        workload: None,
        fields,
        message,
        figures_before: None,
        figures_window: None,
    }
}

fn probe_event(p: &ProbeStatus) -> pb::Event {
    let mut fields = HashMap::from([
        ("probe".to_string(), p.probe.to_string()),
        ("hook".to_string(), p.hook.to_string()),
        ("up".to_string(), p.up.to_string()),
    ]);
    if let Some(r) = &p.reason {
        fields.insert("reason".to_string(), r.clone());
    }
    let message = match (&p.up, &p.reason) {
        (true, _) => format!("probe {} attached ({})", p.probe, p.hook),
        (false, Some(r)) => format!("probe {} failed: {r}", p.probe),
        (false, None) => format!("probe {} is off", p.probe),
    };
    event("probe_status", message, fields)
}

/// The `StreamEvents` stream of one reader: probe states, then what the poller broadcasts.
pub fn events(
    probes: &[ProbeStatus],
    replay: Vec<pb::Event>,
    mut rx: broadcast::Receiver<pb::Event>,
    shutdown: Shutdown,
) -> ReceiverStream<Result<pb::Event, Status>> {
    let mut first: Vec<pb::Event> = probes.iter().map(probe_event).collect();
    first.extend(replay);
    let (tx, out) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        for e in first {
            if !send(&tx, e, &shutdown).await {
                return;
            }
        }
        loop {
            let got = tokio::select! {
                r = rx.recv() => r,
                _ = tx.closed() => return,
                _ = shutdown.clone().wait() => return,
            };
            let e = match got {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => event(
                    "events_missed",
                    format!("{n} events missed (the reader fell behind)"),
                    HashMap::from([("count".to_string(), n.to_string())]),
                ),
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if !send(&tx, e, &shutdown).await {
                return;
            }
        }
    });
    ReceiverStream::new(out)
}

/// Compares the kernel side's lost-record counters every second while anyone listens, and
/// broadcasts an event per counter that went up.
pub async fn poll_lost(
    pipeline: std::sync::Arc<std::sync::Mutex<Pipeline>>,
    tx: broadcast::Sender<pb::Event>,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(LOST_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Vec<u64>> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.clone().wait() => return,
        }
        if tx.receiver_count() == 0 {
            // Nobody listens: the next reader's baseline is taken when it arrives.
            last = None;
            continue;
        }
        let p = pipeline.clone();
        let Ok(lost) = tokio::task::spawn_blocking(move || lock(&p).lost().to_vec()).await else {
            continue;
        };
        if let Some(prev) = &last {
            for (i, source) in LOST_SOURCES {
                let (before, now) = (prev[i as usize], lost[i as usize]);
                if now > before {
                    let fields = HashMap::from([
                        ("source".to_string(), source.to_string()),
                        ("increase".to_string(), (now - before).to_string()),
                        ("total".to_string(), now.to_string()),
                    ]);
                    let msg = format!("{} records lost ({source}), {now} in all", now - before);
                    let _ = tx.send(event("records_lost", msg, fields));
                }
            }
        }
        last = Some(lost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(f: impl FnOnce(&mut pb::StreamRequestsRequest)) -> Result<RequestFilter, String> {
        let mut r = pb::StreamRequestsRequest::default();
        f(&mut r);
        RequestFilter::try_from(r).map_err(|e| e.to_string())
    }

    #[test]
    fn filters_are_validated() {
        assert!(req(|_| {}).is_ok());
        assert!(req(|r| r.status = 99).unwrap_err().contains("100 to 599"));
        assert!(req(|r| r.status = 600).is_err());
        assert!(req(|r| r.status = 404).is_ok());
        assert!(req(|r| r.min_latency_ms = -1.0)
            .unwrap_err()
            .contains("0 or more"));
        assert!(req(|r| r.min_latency_ms = f64::NAN).is_err());
        assert!(req(|r| r.route = "users".into())
            .unwrap_err()
            .contains("start with '/'"));
        assert!(req(|r| r.side = 7).is_err());
    }
}

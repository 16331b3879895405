//! Lifecycle events (OOM kills, exits, restarts, Kubernetes events, replica changes) into the
//! `StreamEvents` stream, each with the workload's request figures of the minute before it:
//! taken when the event arrives, so a reader who subscribes later (`replay`) still sees what
//! the pod was doing before it died.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use tokio::sync::broadcast;

use super::{
    convert, lock, pb,
    window::{Agg, Figures},
    Shared,
};
use crate::{
    export::snapshot::Snapshot,
    identity::Identity,
    pipeline::events::{LifecycleEvent, RECENT_EVENTS},
};

/// The window of the figures an event carries.
pub const FIGURES_WINDOW: Duration = Duration::from_secs(60);
/// The HTTP records of the moments before an event may still wait in their ring (drained
/// every 100 ms) when the event arrives: the figures are read this long after the event.
const SETTLE: Duration = Duration::from_millis(300);

/// The lifecycle events already converted, for `replay`.
#[derive(Debug, Default)]
pub struct Recent {
    events: VecDeque<pb::Event>,
}

impl Recent {
    pub fn snapshot(&self) -> Vec<pb::Event> {
        self.events.iter().cloned().collect()
    }
}

/// Converts and forwards the pipeline's lifecycle events until shutdown.
pub async fn forward(shared: Arc<Shared>) {
    let (backlog, mut rx) = lock(&shared.pipeline).lifecycle.subscribe();
    for ev in backlog {
        let e = convert_event(&shared, &ev).await;
        publish(&shared, e);
    }
    loop {
        let got = tokio::select! {
            r = rx.recv() => r,
            _ = shared.shutdown.clone().wait() => return,
        };
        match got {
            Ok(ev) => {
                let e = convert_event(&shared, &ev).await;
                publish(&shared, e);
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("{n} lifecycle events not forwarded to gRPC (counted in /metrics)");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Keeps the event for replay and sends it to the current readers, under one lock so that a
/// reader subscribing at the same moment gets it exactly once.
fn publish(shared: &Shared, e: pb::Event) {
    let mut recent = lock(&shared.recent);
    if recent.events.len() == RECENT_EVENTS {
        recent.events.pop_front();
    }
    recent.events.push_back(e.clone());
    let _ = shared.events.send(e);
}

async fn convert_event(shared: &Arc<Shared>, ev: &LifecycleEvent) -> pb::Event {
    let age = ev.time.elapsed().unwrap_or_default();
    if age < SETTLE {
        tokio::time::sleep(SETTLE - age).await;
    }
    // A snapshot taken once the event settled serves it (events arriving together share
    // one); an older one does not.
    let settled = std::time::Instant::now()
        .checked_sub(ev.time.elapsed().unwrap_or_default().saturating_sub(SETTLE))
        .unwrap_or_else(std::time::Instant::now);
    let s = shared.clone();
    let cur = tokio::task::spawn_blocking(move || s.snapshots.taken_after(settled))
        .await
        .ok();
    let (figures, window) = match cur.as_ref() {
        Some(cur) => figures_before(shared, cur, &ev.identity),
        None => (None, None),
    };
    pb::Event {
        kind: ev.kind.as_str().to_string(),
        time_unix_nano: convert::unix_nanos(ev.time),
        workload: Some(convert::workload(&ev.identity)),
        fields: ev
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        message: ev.message.clone(),
        figures_before: figures,
        figures_window: window,
    }
}

/// The server side of `id` in `f`: its own figures, or (an event about a pod as a whole, or
/// an identity that changed name) the sum over every workload of the same pod.
fn pick(f: &Figures, id: &Identity) -> Option<Agg> {
    if let Some(a) = f.server.get(id) {
        return Some(a.clone());
    }
    if id.k8s_pod_uid.is_empty() {
        return None;
    }
    let mut sum: Option<Agg> = None;
    for (other, a) in &f.server {
        if other.k8s_pod_uid == id.k8s_pod_uid {
            let s = sum.get_or_insert_with(Agg::default);
            s.requests += a.requests;
            s.errors += a.errors;
            if let Some(h) = &a.hist {
                match &mut s.hist {
                    Some(x) => x.merge(h),
                    None => s.hist = Some(h.clone()),
                }
            }
        }
    }
    sum
}

fn figures_before(
    shared: &Shared,
    cur: &Snapshot,
    id: &Identity,
) -> (Option<pb::RequestFigures>, Option<pb::Window>) {
    let then = lock(&shared.ring).start_of(cur.at, FIGURES_WINDOW);
    let covered = then
        .as_ref()
        .map(|s| cur.at.saturating_duration_since(s.at).as_secs_f64())
        .unwrap_or(0.0);
    let now = Figures::from_totals(&cur.totals.requests, &cur.topology);
    let now_agg = pick(&now, id).unwrap_or_default();
    let w = match &then {
        Some(s) => now_agg.since(pick(&s.figures, id).as_ref()),
        None => Agg::default(),
    };
    let window = pb::Window {
        requested_seconds: FIGURES_WINDOW.as_secs() as u32,
        covered_seconds: covered,
    };
    (
        Some(convert::figures(
            w.requests,
            w.errors,
            w.hist.as_ref(),
            covered,
        )),
        Some(window),
    )
}

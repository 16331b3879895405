//! Figures over a window. The pipeline's figures are cumulative and the API keeps no history
//! beyond this: a ring of compact snapshots, one every 5 s for the last 15 minutes. A window's
//! figures are now minus the newest snapshot at least `window` old (the oldest one while the
//! observer is younger than the window).
//!
//! A snapshot keeps, per workload and per topology edge, the request and error counts and the
//! duration histograms (so the window's mean and quantiles come from the bucket differences),
//! and per latency series only a count under a 64-bit hash of its key. Each part is capped so
//! that 180 snapshots stay bounded on a busy node; what falls beyond a cap gets no window
//! figures (its rates read 0).

use std::{
    collections::{BTreeMap, VecDeque},
    hash::{Hash, Hasher},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    identity::Identity,
    model::Hist,
    pipeline::{
        requests::RequestTotals,
        topology::{EdgeKey, Topology},
    },
};

/// How often a snapshot is taken.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);
/// How far back snapshots go.
pub const HISTORY: Duration = Duration::from_secs(15 * 60);
/// Window bounds and default, seconds.
pub const MIN_WINDOW: u32 = 5;
pub const MAX_WINDOW: u32 = 900;
pub const DEFAULT_WINDOW: u32 = 60;
/// Workloads and edges with window figures per snapshot.
const MAX_AGGREGATES: usize = 2000;
/// Latency series with window rates per snapshot.
const MAX_SERIES: usize = 20_000;

/// Requests, errors and durations of one workload side or one edge side.
#[derive(Debug, Clone, Default)]
pub struct Agg {
    pub requests: u64,
    pub errors: u64,
    pub hist: Option<Hist>,
}

impl Agg {
    fn add(&mut self, count: u64, failed: bool, h: &Hist) {
        self.requests += count;
        if failed {
            self.errors += count;
        }
        add_hist(&mut self.hist, h);
    }

    /// `self - then`; a counter that went back (an identity dropped and seen again) counts
    /// from zero, as Prometheus' increase() does.
    pub fn since(&self, then: Option<&Agg>) -> Agg {
        let Some(then) = then.filter(|t| t.requests <= self.requests) else {
            return self.clone();
        };
        Agg {
            requests: self.requests - then.requests,
            errors: self.errors.saturating_sub(then.errors),
            hist: match (&self.hist, &then.hist) {
                (Some(a), Some(b)) => Some(hist_since(a, b)),
                (a, _) => a.clone(),
            },
        }
    }
}

fn add_hist(slot: &mut Option<Hist>, h: &Hist) {
    match slot {
        Some(x) => x.merge(h),
        None => *slot = Some(h.clone()),
    }
}

fn hist_since(now: &Hist, then: &Hist) -> Hist {
    if now.bounds != then.bounds || now.count < then.count {
        return now.clone();
    }
    Hist {
        bounds: now.bounds.clone(),
        counts: now
            .counts
            .iter()
            .zip(&then.counts)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect(),
        sum: (now.sum - then.sum).max(0.0),
        count: now.count - then.count,
    }
}

/// An edge's requests (counted once) and each end's durations.
#[derive(Debug, Clone, Default)]
pub struct EdgeAgg {
    pub requests: u64,
    pub failed: u64,
    pub client: Option<Hist>,
    pub server: Option<Hist>,
}

impl EdgeAgg {
    pub fn since(&self, then: Option<&EdgeAgg>) -> EdgeAgg {
        let Some(then) = then.filter(|t| t.requests <= self.requests) else {
            return self.clone();
        };
        let side = |a: &Option<Hist>, b: &Option<Hist>| match (a, b) {
            (Some(a), Some(b)) => Some(hist_since(a, b)),
            (a, _) => a.clone(),
        };
        EdgeAgg {
            requests: self.requests - then.requests,
            failed: self.failed.saturating_sub(then.failed),
            client: side(&self.client, &then.client),
            server: side(&self.server, &then.server),
        }
    }
}

/// Which side a latency series is on (part of its hash).
#[derive(Debug, Clone, Copy, Hash)]
pub enum SeriesSide {
    Server,
    Client,
}

/// The hash a series' count is kept under.
pub fn series_hash(id: &Identity, side: SeriesSide, key: &impl Hash) -> u64 {
    // SipHash with fixed keys: the same key hashes the same way for the process' life.
    let mut h = std::hash::DefaultHasher::new();
    id.hash(&mut h);
    side.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

/// The compact figures of one moment.
#[derive(Debug, Default)]
pub struct Figures {
    pub server: BTreeMap<Arc<Identity>, Agg>,
    pub client: BTreeMap<Arc<Identity>, Agg>,
    /// The client side's database and cache operations (`connection_type` "database").
    pub db_client: BTreeMap<Arc<Identity>, Agg>,
    pub apdex: BTreeMap<Arc<Identity>, [u64; 3]>,
    pub edges: BTreeMap<EdgeKey, EdgeAgg>,
    /// (series hash, count), sorted by hash.
    pub series: Vec<(u64, u64)>,
}

impl Figures {
    /// Everything (uncapped): the "now" side of a window.
    pub fn from_totals(http: &RequestTotals, topology: &Topology) -> Figures {
        Self::build(http, topology, usize::MAX, usize::MAX)
    }

    /// Capped: what a snapshot keeps.
    fn for_snapshot(http: &RequestTotals, topology: &Topology) -> Figures {
        Self::build(http, topology, MAX_AGGREGATES, MAX_SERIES)
    }

    fn build(http: &RequestTotals, topology: &Topology, aggs: usize, series: usize) -> Figures {
        let mut f = Figures::default();
        for ((id, k), h) in &http.server {
            if f.server.len() < aggs || f.server.contains_key(id) {
                let a = f.server.entry(id.clone()).or_default();
                a.add(
                    h.count,
                    (k.protocol.failed)(k.status.as_ref(), k.error_type),
                    h,
                );
            }
            if f.series.len() < series {
                f.series
                    .push((series_hash(id, SeriesSide::Server, k), h.count));
            }
        }
        for ((id, k), h) in &http.client {
            let failed = (k.protocol.failed)(k.status.as_ref(), k.error_type);
            if f.client.len() < aggs || f.client.contains_key(id) {
                f.client
                    .entry(id.clone())
                    .or_default()
                    .add(h.count, failed, h);
            }
            if k.protocol.connection_type == "database"
                && (f.db_client.len() < aggs || f.db_client.contains_key(id))
            {
                f.db_client
                    .entry(id.clone())
                    .or_default()
                    .add(h.count, failed, h);
            }
            if f.series.len() < series {
                f.series
                    .push((series_hash(id, SeriesSide::Client, k), h.count));
            }
        }
        for (id, a) in &http.apdex {
            if f.apdex.len() < aggs {
                f.apdex.insert(id.clone(), *a);
            }
        }
        for (k, e) in topology.edges.iter().take(aggs) {
            f.edges.insert(
                k.clone(),
                EdgeAgg {
                    requests: e.requests,
                    failed: e.failed,
                    client: e.client_seconds.clone(),
                    server: e.server_seconds.clone(),
                },
            );
        }
        f.series.sort_unstable();
        f
    }

    pub fn series_count(&self, hash: u64) -> Option<u64> {
        self.series
            .binary_search_by_key(&hash, |(h, _)| *h)
            .ok()
            .map(|i| self.series[i].1)
    }
}

/// A snapshot: the figures at `at`.
#[derive(Debug)]
pub struct Snapshot {
    pub at: Instant,
    pub figures: Figures,
}

/// The ring of snapshots, oldest first.
#[derive(Debug, Default)]
pub struct Ring {
    snaps: VecDeque<Arc<Snapshot>>,
}

impl Ring {
    pub fn push(&mut self, at: Instant, http: &RequestTotals, topology: &Topology) {
        let figures = Figures::for_snapshot(http, topology);
        self.snaps.push_back(Arc::new(Snapshot { at, figures }));
        // Keep one snapshot older than HISTORY, so a full 900 s window is covered.
        while self.snaps.len() > 2 && at.duration_since(self.snaps[1].at) >= HISTORY {
            self.snaps.pop_front();
        }
    }

    /// The snapshot a window of `window` ending `now` starts at: the newest at least `window`
    /// old, else the oldest.
    pub fn start_of(&self, now: Instant, window: Duration) -> Option<Arc<Snapshot>> {
        let newest_old_enough = self
            .snaps
            .iter()
            .rev()
            .find(|s| now.saturating_duration_since(s.at) >= window);
        newest_old_enough.or(self.snaps.front()).cloned()
    }

    pub fn len(&self) -> usize {
        self.snaps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.snaps.is_empty()
    }
}

/// Checks a requested window (unset: the default).
pub fn window_seconds(requested: Option<u32>) -> Result<u32, String> {
    let w = requested.unwrap_or(DEFAULT_WINDOW);
    if !(MIN_WINDOW..=MAX_WINDOW).contains(&w) {
        return Err(format!(
            "window_seconds must be between {MIN_WINDOW} and {MAX_WINDOW} (the observer keeps \
             snapshots every 5 s for 15 minutes), got {w}"
        ));
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(counts: Vec<u64>, sum: f64) -> Hist {
        let count = counts.iter().sum();
        Hist {
            bounds: Arc::new(vec![0.1, 1.0]),
            counts,
            sum,
            count,
        }
    }

    #[test]
    fn window_is_the_difference_and_resets_count_from_zero() {
        let now = Agg {
            requests: 10,
            errors: 3,
            hist: Some(hist(vec![5, 4, 1], 4.0)),
        };
        let then = Agg {
            requests: 4,
            errors: 1,
            hist: Some(hist(vec![2, 2, 0], 1.0)),
        };
        let d = now.since(Some(&then));
        assert_eq!((d.requests, d.errors), (6, 2));
        let h = d.hist.unwrap();
        assert_eq!((h.counts, h.count, h.sum), (vec![3, 2, 1], 6, 3.0));
        let reset = then.since(Some(&now));
        assert_eq!(reset.requests, 4);
    }

    #[test]
    fn ring_picks_the_newest_snapshot_old_enough_and_stays_bounded() {
        let mut r = Ring::default();
        let t0 = Instant::now();
        let (http, topo) = (RequestTotals::default(), Topology::default());
        for i in 0..400 {
            r.push(t0 + SNAPSHOT_EVERY * i, &http, &topo);
        }
        let now = t0 + SNAPSHOT_EVERY * 399;
        assert!(r.len() <= (HISTORY.as_secs() / SNAPSHOT_EVERY.as_secs()) as usize + 2);
        let s = r.start_of(now, Duration::from_secs(60)).unwrap();
        assert_eq!(now - s.at, Duration::from_secs(60));
        let s = r.start_of(now, Duration::from_secs(900)).unwrap();
        assert_eq!(now - s.at, Duration::from_secs(900));
        let mut young = Ring::default();
        young.push(t0, &http, &topo);
        assert_eq!(
            young
                .start_of(t0 + Duration::from_secs(3), Duration::from_secs(60))
                .unwrap()
                .at,
            t0
        );
    }

    #[test]
    fn window_bounds() {
        assert_eq!(window_seconds(None), Ok(60));
        assert!(window_seconds(Some(4))
            .unwrap_err()
            .contains("between 5 and 900"));
        assert!(window_seconds(Some(901)).is_err());
        assert_eq!(window_seconds(Some(900)), Ok(900));
    }
}

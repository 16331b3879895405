//! One snapshot path for every reader: the scrape, the gRPC calls and the gRPC window ring all
//! take the figures from here. Reading the kernel tables is a series of syscalls per entry, so
//! a snapshot younger than [`FRESH`] is shared instead of taken again; the ring's periodic
//! snapshot is the same one a scrape at that moment would get. Only a scrape needs the tables'
//! fill levels (counting a table's entries costs a syscall each): a snapshot carries them when
//! a scrape asked for it.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::pipeline::{
    aggregate::{KernelHealth, Pipeline, Totals},
    topology::Topology,
};

/// A snapshot this young is served as it is.
pub const FRESH: Duration = Duration::from_millis(250);

/// The figures at one moment.
#[derive(Debug)]
pub struct Snapshot {
    pub at: Instant,
    pub totals: Totals,
    pub topology: Topology,
    /// Loss counters and fill levels, when a scrape asked for them.
    pub health: Option<KernelHealth>,
}

/// The latest snapshot and the pipeline it comes from.
pub struct Snapshots {
    pipeline: Arc<Mutex<Pipeline>>,
    latest: Mutex<Option<Arc<Snapshot>>>,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots").finish_non_exhaustive()
    }
}

impl Snapshots {
    pub fn new(pipeline: Arc<Mutex<Pipeline>>) -> Self {
        Self {
            pipeline,
            latest: Mutex::new(None),
        }
    }

    pub fn pipeline(&self) -> &Arc<Mutex<Pipeline>> {
        &self.pipeline
    }

    /// A snapshot no older than [`FRESH`] (blocking: it may read the kernel tables).
    pub fn fresh(&self) -> Arc<Snapshot> {
        self.get(Instant::now() - FRESH, false)
    }

    /// A snapshot no older than [`FRESH`], with the loss counters and fill levels.
    pub fn for_scrape(&self) -> Arc<Snapshot> {
        self.get(Instant::now() - FRESH, true)
    }

    /// A snapshot taken at `after` or later.
    pub fn taken_after(&self, after: Instant) -> Arc<Snapshot> {
        self.get(after, false)
    }

    fn get(&self, after: Instant, health: bool) -> Arc<Snapshot> {
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = latest.as_ref() {
            if s.at >= after && (s.health.is_some() || !health) {
                return s.clone();
            }
        }
        let s = {
            let mut p = self.pipeline.lock().unwrap_or_else(|e| e.into_inner());
            let totals = p.snapshot();
            // Edges between two workloads of this node come from the pipeline's address map.
            let topology = p.topology(&totals);
            let health = health.then(|| p.health());
            Arc::new(Snapshot {
                at: Instant::now(),
                totals,
                topology,
                health,
            })
        };
        *latest = Some(s.clone());
        s
    }
}

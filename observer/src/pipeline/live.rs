//! The live view of requests as they complete (the "Request Viewer" of APM tools): every
//! finished request, whatever its protocol, is offered to a broadcast channel. Subscribers that fall behind lose
//! the oldest records and are told how many (`broadcast::error::RecvError::Lagged`); the
//! pipeline never waits for them.

use std::{sync::Arc, time::SystemTime};

use tokio::sync::broadcast;

use crate::{identity::Identity, l7::Request};

/// Records a subscriber may fall behind by before it loses the oldest.
pub const LIVE_CAPACITY: usize = 4096;

/// One finished request, as the live stream shows it.
#[derive(Debug, Clone)]
pub struct LiveRequest {
    /// When it finished (wall clock, when the observer recorded it).
    pub time: SystemTime,
    /// The workload that made (client side) or answered (server side) the request.
    pub identity: Arc<Identity>,
    /// The target it was counted under: templated and capped (server side), templated (client
    /// side).
    pub target: Arc<str>,
    pub request: Request,
}

/// The sending end; cloned receivers come from [`Live::subscribe`].
#[derive(Debug, Clone)]
pub struct Live {
    tx: broadcast::Sender<LiveRequest>,
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

impl Live {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(LIVE_CAPACITY);
        Self { tx }
    }

    /// Offers a record; without subscribers it is dropped at once (no cost beyond the call).
    pub fn send(&self, r: LiveRequest) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(r);
        }
    }

    /// Whether anyone listens (the caller can skip building records).
    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LiveRequest> {
        self.tx.subscribe()
    }
}

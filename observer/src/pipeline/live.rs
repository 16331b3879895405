//! The live view of requests as they complete (the "Request Viewer" of APM tools): every
//! finished HTTP exchange is offered to a broadcast channel. Subscribers that fall behind lose
//! the oldest records and are told how many (`broadcast::error::RecvError::Lagged`); the
//! pipeline never waits for them.

use std::{net::IpAddr, sync::Arc, time::SystemTime};

use tokio::sync::broadcast;

use super::exchange::Side;
use crate::identity::Identity;

/// Records a subscriber may fall behind by before it loses the oldest.
pub const LIVE_CAPACITY: usize = 4096;

/// One finished exchange, as the live stream shows it.
#[derive(Debug, Clone)]
pub struct LiveRequest {
    /// When the exchange finished (wall clock, when the observer recorded it).
    pub time: SystemTime,
    pub side: Side,
    /// The workload that made (client side) or answered (server side) the request.
    pub identity: Arc<Identity>,
    /// The other end's address (and port for a server).
    pub peer: IpAddr,
    pub peer_port: u16,
    pub method: &'static str,
    /// Templated, capped route (server side); the route of the request (client side).
    pub route: String,
    pub status: Option<u16>,
    pub error_type: Option<&'static str>,
    pub duration_ns: u64,
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

//! Reads the HTTP probe's ring buffer, feeds the exchange tracker and records finished
//! exchanges in the pipeline.
//!
//! The kernel wakes this task only when a batch of records is waiting; it also drains the ring
//! every [`DRAIN_INTERVAL`], so a lone request reaches the figures within that period (plus, for
//! a response whose end is read from the connection counters, one more interval).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::{HashMap as AyaHashMap, MapData, RingBuf};
use observer_common::{HttpConn, HttpEvent};
use tokio::io::unix::AsyncFd;

use super::{aggregate::Pipeline, exchange::Tracker, monotonic_ns};
use crate::shutdown::Shutdown;

/// Longest a record waits in the ring before it is read.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(100);
/// Records taken per drain before the figures are updated (bounds the time the lock is held).
const BATCH: usize = 65536;

/// Runs until shutdown.
pub async fn run(
    ring: RingBuf<MapData>,
    conns: Option<AyaHashMap<MapData, u64, HttpConn>>,
    pipeline: Arc<Mutex<Pipeline>>,
    timeout: Duration,
    shutdown: Shutdown,
) {
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd until this task ends,
    // so the fd is never closed while registered.
    let registered =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!("cannot poll the HTTP ring buffer: {e}; HTTP figures stop");
            return;
        }
    };
    let mut tracker = Tracker::new(timeout.as_nanos() as u64);
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = Vec::new();
    loop {
        let mut poll_conns = false;
        tokio::select! {
            guard = fd.readable_mut() => {
                let Ok(mut guard) = guard else { return };
                drain(guard.get_inner_mut(), &mut tracker, &mut out);
                guard.clear_ready();
            }
            _ = tick.tick() => {
                drain(fd.get_mut(), &mut tracker, &mut out);
                poll_conns = true;
            }
            _ = shutdown.clone().wait() => return,
        }
        if poll_conns {
            let now = monotonic_ns();
            tracker.poll(
                now,
                |sk| conns.as_ref().and_then(|m| m.get(&sk, 0).ok()),
                &mut out,
            );
        }
        let unparsed = tracker.unparsed.clone();
        let tracked = tracker.conns() as u64;
        let mut p = pipeline.lock().unwrap_or_else(|e| e.into_inner());
        if !out.is_empty() {
            p.record_http(&out, monotonic_ns());
            out.clear();
        }
        p.http_health.unparsed = vec![
            ("invalid", unparsed.invalid),
            ("response_without_request", unparsed.response_without_request),
            ("pending_overflow", unparsed.pending_overflow),
            ("connection_evicted", unparsed.conns_evicted),
        ];
        p.http_health.conns = tracked;
    }
}

fn drain(ring: &mut RingBuf<MapData>, tracker: &mut Tracker, out: &mut Vec<super::exchange::Exchange>) {
    let mut n = 0;
    while let Some(item) = ring.next() {
        // The kernel sends an HttpEvent cut after the prefix bytes it holds.
        let header = std::mem::offset_of!(HttpEvent, prefix);
        if item.len() >= header && item.len() <= std::mem::size_of::<HttpEvent>() {
            let mut ev = std::mem::MaybeUninit::<HttpEvent>::zeroed();
            // SAFETY: HttpEvent is plain integers (all-zero is valid); the kernel wrote its
            // first `item.len()` bytes with the same #[repr(C)] layout.
            let mut ev = unsafe {
                std::ptr::copy_nonoverlapping(item.as_ptr(), ev.as_mut_ptr() as *mut u8, item.len());
                ev.assume_init()
            };
            let sent = item.len() - header;
            drop(item);
            ev.prefix_len = ev.prefix_len.min(sent as u16);
            tracker.on_event(&ev, out);
        }
        n += 1;
        if n >= BATCH {
            break;
        }
    }
}

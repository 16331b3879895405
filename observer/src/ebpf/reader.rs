//! The one way records leave the kernel: a ring (the L7 ring, the lifecycle ring, aya-log's)
//! polled through `AsyncFd`, drained in a loop by its [`Reader`], and, for rings whose kernel
//! side batches its wake-ups, drained on a timer as well. The reader never blocks the kernel:
//! what a full ring could not keep is counted there.

use std::{os::fd::AsRawFd, time::Duration};

use tokio::io::unix::AsyncFd;

use crate::shutdown::Shutdown;

/// What one ring's records become.
pub trait Reader: Send + 'static {
    /// The ring (anything with a pollable file descriptor).
    type Fd: AsRawFd + Send + 'static;
    /// Takes every record waiting in `fd`.
    fn drain(&mut self, fd: &mut Self::Fd);
    /// Called every `tick` passed to [`run`], after a drain.
    fn tick(&mut self, _fd: &mut Self::Fd) {}
}

/// Reads `fd` with `reader` until shutdown: at every wake-up, and every `tick` if set.
pub async fn run<R: Reader>(
    what: &'static str,
    fd: R::Fd,
    mut reader: R,
    tick: Option<Duration>,
    shutdown: Shutdown,
) {
    // SAFETY: the ring owns its fd and lives inside the AsyncFd until this task ends, so the fd
    // is never closed while registered.
    let registered = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!("cannot poll the {what} ring: {e}; its records stop");
            return;
        }
    };
    let mut timer = tick.map(|t| {
        let mut i = tokio::time::interval(t);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    loop {
        let ticked = tokio::select! {
            guard = fd.readable_mut() => {
                let Ok(mut guard) = guard else { return };
                reader.drain(guard.get_inner_mut());
                guard.clear_ready();
                false
            }
            _ = async { timer.as_mut().expect("guarded").tick().await }, if timer.is_some() => {
                reader.drain(fd.get_mut());
                true
            }
            _ = shutdown.clone().wait() => return,
        };
        if ticked {
            reader.tick(fd.get_mut());
        }
    }
}

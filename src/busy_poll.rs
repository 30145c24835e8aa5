//! Busy polling (`busy_poll` in config.yaml): while clients are active,
//! pgsift keeps its runtime awake and polls its sockets instead of sleeping
//! in `epoll_wait` between requests.
//!
//! A request/response round trip through a proxy pays two wake-ups of a
//! sleeping process; on virtual machines a wake-up is an inter-processor
//! interrupt into a halted vCPU, which can cost more than the work itself.
//! A spinning runtime is never asleep: a client's next statement finds it
//! running. The price is CPU: up to one core per runtime thread for as long
//! as traffic flows, plus the window after the last event. Off by default.
//!
//! How: one task per runtime yields in a loop while the last session event
//! is younger than the window. A yielding task keeps the scheduler from
//! parking, and tokio polls the I/O driver without blocking between
//! scheduling rounds. When traffic stops, the task sleeps until the next
//! event wakes it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The busy-poll state of one pgsift process.
pub struct BusyPoll {
    window: AtomicU64,
    start: Instant,
    last: AtomicU64,
    spinning: AtomicBool,
    wake: Notify,
}

impl BusyPoll {
    /// Busy polling for `window` after the last event (zero: off).
    pub fn new(window: Duration) -> Arc<BusyPoll> {
        Arc::new(BusyPoll {
            window: AtomicU64::new(nanos(window)),
            start: Instant::now(),
            last: AtomicU64::new(0),
            spinning: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    /// True when configured.
    pub fn enabled(&self) -> bool {
        self.window.load(Ordering::Relaxed) > 0
    }

    /// A new window (a reload); zero turns busy polling off.
    pub fn set_window(&self, window: Duration) {
        self.window.store(nanos(window), Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// A session did something: keep (or start) polling.
    #[inline]
    pub fn touch(&self) {
        if !self.enabled() {
            return;
        }
        self.last.store(self.now(), Ordering::Relaxed);
        if !self.spinning.load(Ordering::Relaxed) {
            self.spinning.store(true, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    /// The polling task: spins while events are recent, sleeps otherwise.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            while self.now().saturating_sub(self.last.load(Ordering::Relaxed))
                < self.window.load(Ordering::Relaxed)
            {
                tokio::task::yield_now().await;
            }
            self.spinning.store(false, Ordering::Relaxed);
        }
    }
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn spins_after_an_event_and_stops_after_the_window() {
        let b = BusyPoll::new(Duration::from_millis(20));
        let task = tokio::spawn(b.clone().run());
        b.touch();
        crate::timer::sleep(Duration::from_millis(5)).await;
        assert!(b.spinning.load(Ordering::Relaxed));
        crate::timer::sleep(Duration::from_millis(60)).await;
        assert!(
            !b.spinning.load(Ordering::Relaxed),
            "stopped after the window"
        );
        b.touch();
        crate::timer::sleep(Duration::from_millis(5)).await;
        assert!(
            b.spinning.load(Ordering::Relaxed),
            "woken by the next event"
        );
        task.abort();
        assert!(!BusyPoll::new(Duration::ZERO).enabled());
    }
}

//! Timers, kept off the session runtime.
//!
//! Sessions run on a runtime without tokio's time driver. With the driver,
//! every park of the runtime (two per statement for a lone client: one
//! waiting for the server, one for the client's next statement) locks the
//! timer wheel, looks for its next expiry, reads the clock twice and
//! processes the wheel on waking: about 570 instructions a park, measured
//! with callgrind, about a sixth of pgsift's user-space instructions per
//! statement at one client. Without it the runtime parks straight in
//! `epoll_wait`.
//!
//! Timers live on the *control thread* instead: a small runtime of its own
//! (time and I/O) that sleeps while no timer is due. A timer made here
//! belongs to that runtime's wheel wherever it is polled; when it fires, the
//! control thread wakes the task that waits on it, across threads, as any
//! wake-up from another thread. Registering a timer costs what it did (a lock
//! of the wheel, now uncontended on another thread's runtime), plus a wake-up
//! of the control thread when the new timer is due before anything it already
//! waits for.
//!
//! The control thread also runs the admin HTTP server, whose library (axum)
//! uses tokio's timers itself. The Redis client does too, but it stays with
//! the sessions that call it: with the Redis cache backend the session
//! runtime keeps its time driver (main.rs), because a hop to another thread
//! on every Redis call cost more than the time driver does (BENCHMARKS.md
//! round 12); the admin server then stays on the session runtime as well
//! (runtime.rs), so that its Redis calls do not open the connection here.
//!
//! Every timer in pgsift comes from this module; `tokio::time::{sleep,
//! timeout, interval}` would panic on the session runtime (clippy.toml
//! disallows them outside this module).
#![allow(clippy::disallowed_methods)]

use std::future::IntoFuture;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::time::{Interval, Sleep, Timeout};

/// The control thread's runtime, started on first use.
pub fn control() -> &'static Handle {
    static CONTROL: OnceLock<Handle> = OnceLock::new();
    CONTROL.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cannot start the control runtime");
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("pgsift-control".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .expect("cannot start the control thread");
        handle
    })
}

/// [`tokio::time::sleep`], on the control thread's wheel.
pub fn sleep(duration: Duration) -> Sleep {
    let _in = control().enter();
    tokio::time::sleep(duration)
}

/// [`tokio::time::timeout`], on the control thread's wheel.
pub fn timeout<F: IntoFuture>(duration: Duration, future: F) -> Timeout<F::IntoFuture> {
    let _in = control().enter();
    tokio::time::timeout(duration, future)
}

/// [`tokio::time::interval`], on the control thread's wheel.
pub fn interval(period: Duration) -> Interval {
    let _in = control().enter();
    tokio::time::interval(period)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// A runtime like the session runtime: I/O, no time driver.
    fn io_only() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap()
    }

    #[test]
    fn timers_work_on_a_runtime_without_a_time_driver() {
        io_only().block_on(async {
            let start = std::time::Instant::now();
            sleep(Duration::from_millis(30)).await;
            assert!(start.elapsed() >= Duration::from_millis(30));
            let slow = timeout(Duration::from_millis(20), std::future::pending::<()>()).await;
            assert!(slow.is_err(), "the timeout fired");
            let fast = timeout(Duration::from_secs(5), async { 7 }).await;
            assert_eq!(fast.unwrap(), 7);
            let mut tick = interval(Duration::from_millis(10));
            tick.tick().await;
            tick.tick().await;
            let mut reset = std::pin::pin!(sleep(Duration::from_secs(3600)));
            reset
                .as_mut()
                .reset(Instant::now() + Duration::from_millis(10));
            reset.await;
        });
    }

    #[test]
    fn a_timer_on_the_control_thread_wakes_a_parked_runtime() {
        // The session runtime parks in epoll_wait with no timeout; only the
        // control thread's wake-up ends that wait.
        let rt = io_only();
        let start = std::time::Instant::now();
        rt.block_on(async {
            let task = tokio::spawn(async {
                sleep(Duration::from_millis(50)).await;
                11
            });
            assert_eq!(task.await.unwrap(), 11);
        });
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
}

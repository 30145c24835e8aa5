//! Which of a session's sockets woke it.
//!
//! A session task waits on its client and its server at once. Were both
//! reads polled on every wake-up, most polls would find nothing (a wake-up
//! is for one of them) and still cost a trip through tokio's readiness
//! machinery. A [`Source`] gives one socket's reads a waker of their own,
//! which notes the wake-up before passing it on to the task. The session
//! polls a read only when it may have something: it was woken, or its
//! last poll completed (a completed read leaves no waker behind; only a
//! poll that found nothing registers one).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// The reads of one socket, polled with a waker of their own.
pub struct Source {
    inner: Arc<Inner>,
    waker: Waker,
}

struct Inner {
    /// woken since the last poll, or that poll completed
    due: AtomicBool,
    /// the session task's waker, once a poll left it; a wake-up wakes it by
    /// reference and leaves it there, so a source that is not due never
    /// needs it registered again
    task: Mutex<Option<Waker>>,
}

impl Wake for Inner {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.due.store(true, Ordering::SeqCst);
        self.wake_task();
    }
}

impl Inner {
    fn wake_task(&self) {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = task.as_ref() {
            w.wake_by_ref();
        }
    }
}

impl Default for Source {
    fn default() -> Self {
        Source::new()
    }
}

impl Source {
    /// A source to be polled first.
    pub fn new() -> Source {
        let inner = Arc::new(Inner {
            due: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        let waker = Waker::from(inner.clone());
        Source { inner, waker }
    }

    /// Whether a read may have something: woken since the last poll, or
    /// that poll completed.
    #[inline]
    pub fn due(&self) -> bool {
        self.inner.due.load(Ordering::SeqCst)
    }

    /// The socket behind it changed (another server): poll it, which
    /// registers this source's waker with the new socket.
    pub fn reset(&self) {
        self.inner.due.store(true, Ordering::SeqCst);
    }

    /// Polls a read of this source with the source's waker when it is due;
    /// `cx` is the task's, woken when the source is. (A future in a
    /// `select!` is polled again on every wake-up of the select, so this
    /// check belongs in the poll, not in the branch's precondition.)
    ///
    /// The task's waker is kept when the source is due (a wake-up does not
    /// take it away), so a source that is not due returns at once without
    /// looking at `cx`. This relies on what a tokio task gives the session:
    /// the same waker on every poll.
    #[inline]
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        read: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        if !self.due() {
            return Poll::Pending;
        }
        // cleared before the poll: a wake-up during it sets it again
        self.inner.due.store(false, Ordering::SeqCst);
        {
            let mut task = self.inner.task.lock().unwrap_or_else(|e| e.into_inner());
            match task.as_ref() {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *task = Some(cx.waker().clone()),
            }
        }
        let r = read(&mut Context::from_waker(&self.waker));
        if r.is_ready() {
            self.inner.due.store(true, Ordering::SeqCst);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A task that counts its wake-ups, and its waker.
    fn counting_task() -> (Arc<Count>, Waker) {
        let task = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        (task, waker)
    }

    /// Polls `s` with a read that finds nothing and returns the waker that
    /// read was given (what the socket would wake).
    fn poll_finding_nothing(s: &Source, cx: &mut Context<'_>) -> Waker {
        let mut kept = None;
        assert!(s
            .poll(cx, |cx| {
                kept = Some(cx.waker().clone());
                Poll::<()>::Pending
            })
            .is_pending());
        kept.unwrap()
    }

    #[test]
    fn due_until_a_poll_finds_nothing_then_again_when_woken() {
        let (task, task_waker) = counting_task();
        let mut cx = Context::from_waker(&task_waker);
        let s = Source::new();
        assert!(s.due(), "never polled");
        assert!(s.poll(&mut cx, |_| Poll::Ready(())).is_ready());
        assert!(s.due(), "a completed read registered no waker");
        let socket = poll_finding_nothing(&s, &mut cx);
        assert!(!s.due(), "nothing until the socket wakes it");
        let mut polled = false;
        assert!(s
            .poll(&mut cx, |_| {
                polled = true;
                Poll::Ready(())
            })
            .is_pending());
        assert!(!polled, "not due: the read is not polled");
        socket.wake();
        assert!(s.due(), "woken");
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task was woken");
        assert!(
            s.poll(&mut cx, |_| Poll::Ready(())).is_ready(),
            "due: polled"
        );
        assert!(s.poll(&mut cx, |_| Poll::<()>::Pending).is_pending());
        assert!(!s.due());
        s.reset();
        assert!(s.due(), "another socket");
    }

    #[test]
    fn a_wake_up_split_around_a_poll_loses_no_later_wake_up() {
        // another thread's wake-up is two steps (mark the source due, wake
        // the task); the session polls the source between them. Its next
        // poll finds the source not due, and the socket's next wake-up must
        // still reach the task.
        let (task, task_waker) = counting_task();
        let mut cx = Context::from_waker(&task_waker);
        let s = Source::new();
        let socket = poll_finding_nothing(&s, &mut cx);
        s.inner.due.store(true, Ordering::SeqCst); // the first step
        assert!(s
            .poll(&mut cx, |_| {
                s.inner.wake_task(); // the second, during the read
                Poll::<()>::Pending
            })
            .is_pending());
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert!(
            s.poll(&mut cx, |_| Poll::<()>::Ready(())).is_pending(),
            "not due"
        );
        socket.wake();
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            2,
            "the socket's next wake-up reached the task"
        );
    }
}

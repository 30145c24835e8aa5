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

use atomic_waker::AtomicWaker;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// The reads of one socket, polled with a waker of their own.
pub struct Source {
    inner: Arc<Inner>,
    waker: Waker,
}

struct Inner {
    /// woken since the last poll, or that poll completed
    due: AtomicBool,
    /// the session task's waker
    task: AtomicWaker,
}

impl Wake for Inner {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // due before the task's waker is taken: a source that is not due
        // still holds it
        self.due.store(true, Ordering::SeqCst);
        self.task.wake();
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
            task: AtomicWaker::new(),
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
    /// The task's waker is registered only when the source is due: a
    /// source that is not due has not been woken since its last
    /// registration, so it still holds the waker (a wake-up takes it, and
    /// marks the source due first). This assumes what a tokio task gives:
    /// the same waker on every poll of the session.
    #[inline]
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        read: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        if !self.due() {
            return Poll::Pending;
        }
        // cleared before the registration and the poll: a wake-up during
        // either sets it again (and takes the waker only after that)
        self.inner.due.store(false, Ordering::SeqCst);
        self.inner.task.register(cx.waker());
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

    #[test]
    fn due_until_a_poll_finds_nothing_then_again_when_woken() {
        let task = Arc::new(Count(AtomicUsize::new(0)));
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);
        let s = Source::new();
        assert!(s.due(), "never polled");
        assert!(s.poll(&mut cx, |_| Poll::Ready(())).is_ready());
        assert!(s.due(), "a completed read registered no waker");
        let mut kept = None;
        assert!(s
            .poll(&mut cx, |cx| {
                kept = Some(cx.waker().clone());
                Poll::<()>::Pending
            })
            .is_pending());
        assert!(!s.due(), "nothing until the socket wakes it");
        let mut polled = false;
        assert!(s
            .poll(&mut cx, |_| {
                polled = true;
                Poll::Ready(())
            })
            .is_pending());
        assert!(!polled, "not due: the read is not polled");
        kept.unwrap().wake();
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
}

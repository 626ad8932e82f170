//! Tickets: the one mechanism behind every acknowledgement that waits for durability. A ticket
//! is issued when something starts on its way to being kept (a journal batch fills; a message
//! goes to the other nodes of a cluster), and settled once, with its outcome, when it is kept
//! or is not. The journal (`journal.rs`) settles its batches in order; the cluster
//! (`cluster/`) settles its tickets in any order.
//!
//! Who waits: a connection, whose acknowledgements are queued in arrival order
//! (`connection/acks.rs`), registers a [`Waker`] ([`Tickets::wake_after`]); the CONNACK of a
//! persistent session and `BrokerHandle::sync` wait asynchronously ([`Tickets::wait`]).
//! Tickets know no session or connection: a session is woken through its `Waker`.
//!
//! Invariant: [`Tickets::done`] is the highest ticket such that every ticket up to it is
//! settled. It only grows, and a ticket's outcome is readable once `done` reached it (the
//! last `FAILED_KEPT` failures are remembered; a waiter that looks later than that finds
//! success, which the journal and the cluster rule out by waking every waiter first).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Waker;

use parking_lot::Mutex;
use tokio::sync::watch;

/// Failed tickets remembered, for waiters that look late.
const FAILED_KEPT: usize = 4096;

/// What an acknowledgement waits for: a batch of the journal and a ticket of the cluster,
/// each 0 for nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Wait {
    pub journal: u64,
    pub cluster: u64,
}

impl Wait {
    /// Waits for both this and `other`.
    pub(crate) fn and(self, other: Wait) -> Wait {
        Wait {
            journal: self.journal.max(other.journal),
            cluster: self.cluster.max(other.cluster),
        }
    }
}

/// Tickets of one kind; `E` says why one was not kept.
pub(crate) struct Tickets<E> {
    state: Mutex<State<E>>,
    /// `State::done`, readable without the lock.
    done: AtomicU64,
    /// `done` for asynchronous waiters.
    done_tx: watch::Sender<u64>,
}

struct State<E> {
    /// The last ticket issued.
    last: u64,
    outstanding: BTreeSet<u64>,
    failed: BTreeMap<u64, E>,
    waiters: Vec<(u64, Waker)>,
}

impl<E> State<E> {
    fn done(&self) -> u64 {
        self.outstanding
            .first()
            .map_or(self.last, |first| first - 1)
    }
}

impl<E: Clone> Default for Tickets<E> {
    fn default() -> Self {
        Tickets {
            state: Mutex::new(State {
                last: 0,
                outstanding: BTreeSet::new(),
                failed: BTreeMap::new(),
                waiters: Vec::new(),
            }),
            done: AtomicU64::new(0),
            done_tx: watch::channel(0).0,
        }
    }
}

impl<E: Clone> Tickets<E> {
    /// A new ticket, outstanding until settled.
    pub(crate) fn issue(&self) -> u64 {
        let mut s = self.state.lock();
        s.last += 1;
        let t = s.last;
        s.outstanding.insert(t);
        t
    }

    /// Settles ticket `t` (once; a second settlement is ignored) and wakes whoever waits for a
    /// ticket that is now done.
    pub(crate) fn settle(&self, t: u64, outcome: Result<(), E>) {
        let mut s = self.state.lock();
        if !s.outstanding.remove(&t) {
            return;
        }
        if let Err(e) = outcome {
            s.failed.insert(t, e);
            while s.failed.len() > FAILED_KEPT {
                s.failed.pop_first();
            }
        }
        let done = s.done();
        if done == self.done.load(Ordering::Relaxed) {
            return;
        }
        // Under the lock: a waiter registered after this sees the new value.
        self.done.store(done, Ordering::Release);
        let (ready, waiting): (Vec<_>, Vec<_>) = s.waiters.drain(..).partition(|(w, _)| *w <= done);
        s.waiters = waiting;
        drop(s);
        self.done_tx.send_replace(done);
        for (_, waker) in ready {
            waker.wake();
        }
    }

    /// Every ticket up to this one is settled.
    pub(crate) fn done(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    /// How ticket `t` ended (once [`Tickets::done`] reached it).
    pub(crate) fn outcome(&self, t: u64) -> Result<(), E> {
        match self.state.lock().failed.get(&t) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Wakes `waker` once ticket `t` is done (at once if it is).
    pub(crate) fn wake_after(&self, t: u64, waker: &Waker) {
        let mut s = self.state.lock();
        if s.done() >= t {
            drop(s);
            waker.wake_by_ref();
            return;
        }
        s.waiters.push((t, waker.clone()));
    }

    /// Waits until ticket `t` is done; `None` if these tickets are gone.
    pub(crate) async fn wait(&self, t: u64) -> Option<Result<(), E>> {
        let mut rx = self.done_tx.subscribe();
        rx.wait_for(|done| *done >= t).await.ok()?;
        Some(self.outcome(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn done_is_the_end_of_the_settled_prefix_whatever_the_order() {
        let t: Tickets<&str> = Tickets::default();
        let (a, b, c) = (t.issue(), t.issue(), t.issue());
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        t.wake_after(b, &Waker::from(woken.clone()));
        t.settle(c, Err("lost"));
        t.settle(b, Ok(()));
        assert_eq!(t.done(), 0, "a is still out");
        assert_eq!(woken.0.load(Ordering::Relaxed), 0);
        t.settle(a, Ok(()));
        assert_eq!(t.done(), c);
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
        assert_eq!(t.outcome(b), Ok(()));
        assert_eq!(t.outcome(c), Err("lost"));
        // Settled twice: the first outcome stands.
        t.settle(c, Ok(()));
        assert_eq!(t.outcome(c), Err("lost"));
        // A ticket already done wakes at once.
        t.wake_after(a, &Waker::from(woken.clone()));
        assert_eq!(woken.0.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn with_nothing_outstanding_every_issued_ticket_is_done() {
        let t: Tickets<()> = Tickets::default();
        assert_eq!(t.done(), 0);
        let a = t.issue();
        t.settle(a, Ok(()));
        assert_eq!(t.done(), a);
    }

    #[tokio::test]
    async fn an_async_waiter_gets_the_outcome() {
        let t: Arc<Tickets<&str>> = Arc::default();
        let a = t.issue();
        let waiter = tokio::spawn({
            let t = t.clone();
            async move { t.wait(a).await }
        });
        tokio::task::yield_now().await;
        t.settle(a, Err("full"));
        assert_eq!(waiter.await.unwrap(), Some(Err("full")));
    }
}

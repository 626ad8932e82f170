//! Session state (MQTT 5.0 §4.1): what outlives a network connection - subscriptions, messages
//! queued for the client, outgoing QoS 1/2 messages not yet acknowledged, and incoming QoS 2
//! packet identifiers not yet released.
//!
//! A [`Session`] is shared between the connection attached to it (if any), the subscription
//! tree and publishers. Publishers append to `pending` under the state lock and wake the
//! connection through `notify`; only the attached connection takes messages out.
//!
//! Lock order: the subscription tree, then a session's state. Never the reverse.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::codec::{QoS, ReasonCode, SubscriptionOptions};
use crate::gauges::SessionGauges;
use crate::journal::{Journal, Record};
use crate::message::{Delivery, Stored, StoredRef};

mod state;
pub use state::SessionState;

/// Orders to a live connection from elsewhere in the broker.
#[derive(Debug, Clone)]
pub enum Control {
    /// Send DISCONNECT with this reason (5.0 only) and close.
    Disconnect {
        reason: ReasonCode,
        reason_string: Option<String>,
    },
}

/// Where the broker leaves an order for one connection. The first order wins (a connection is
/// only ever told to go once); a few dozen bytes, where a channel would cost a kilobyte per
/// idle connection.
#[derive(Debug, Default)]
pub struct ControlSlot {
    order: Mutex<Option<Control>>,
    wake: Notify,
}

impl ControlSlot {
    pub fn send(&self, order: Control) {
        {
            let mut slot = self.order.lock();
            if slot.is_none() {
                *slot = Some(order);
            }
        }
        self.wake.notify_one();
    }

    /// The order left, if any.
    pub fn take(&self) -> Option<Control> {
        self.order.lock().take()
    }

    /// Completes when an order may have been left since the last [`ControlSlot::take`] (a
    /// `send` with no one waiting leaves a permit). The connection waits on this and takes
    /// the order itself: a `recv` future would be 24 bytes more of every idle connection.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }
}

/// The link from a session to the connection currently attached to it.
#[derive(Debug, Clone)]
pub struct ConnLink {
    pub conn_id: u64,
    pub control: Arc<ControlSlot>,
}

/// An outgoing QoS 1/2 message awaiting its acknowledgement.
#[derive(Debug, Clone)]
pub enum Inflight {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published(Delivery),
    /// PUBREL sent; waiting for PUBCOMP. Keeps the journaled entry to remove at PUBCOMP.
    Released(Option<StoredRef>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubRecord {
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

/// Whether a connection is using the session, and if not, since when.
#[derive(Debug, Clone)]
pub enum Attachment {
    /// This connection is attached: it alone takes messages out of the queue.
    Online(ConnLink),
    /// No connection is attached since `since`. `detached` names this detachment (a
    /// broker-wide unique id): a will delay or an expiry timer set when it began acts only
    /// while it lasts.
    Offline { detached: u64, since: SystemTime },
    /// The session was discarded (Clean Start, expiry, Session Expiry 0 at close). A connection
    /// still holding it must stop using it; nothing is queued to it any more.
    Ended,
}

impl Attachment {
    pub fn is_online(&self) -> bool {
        matches!(self, Attachment::Online(_))
    }

    pub fn is_ended(&self) -> bool {
        matches!(self, Attachment::Ended)
    }

    /// Whether `conn_id` is the attached connection.
    pub fn is_attached(&self, conn_id: u64) -> bool {
        matches!(self, Attachment::Online(l) if l.conn_id == conn_id)
    }
}

/// Bounds on what may wait in `pending`.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub drop_oldest: bool,
    pub queue_qos0_offline: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// Queued, and the queue of this online client is past half its bound while its connection
    /// is ready to take messages: the broker is behind (the subscriber's task has not run), not
    /// the client. The publisher should let the subscribers run before routing more.
    QueuedBehind,
    /// Queued after dropping the oldest message.
    QueuedDroppedOldest,
    /// Not queued: QoS 0 for an offline session, or the session ended.
    Skipped,
    /// Not queued: the queue is full and the policy is to reject.
    Rejected,
}

pub struct Session {
    /// Unique for the broker's lifetime; a new session for the same client id gets a new id.
    pub id: u64,
    pub client_id: Arc<str>,
    pub state: Mutex<SessionState>,
    /// Wakes the attached connection when `pending` gains a message.
    pub notify: Notify,
    /// Mirrors `state.subscriptions.len()`; written under the subscription tree's write lock,
    /// so routing (under its read lock) can tell which sessions may match more than once.
    subscription_count: AtomicUsize,
}

impl Session {
    /// A session with no connection; `detached` names that state (see [`Attachment`]).
    /// `gauges`: the broker's, which count it from now until it is dropped.
    pub fn new(
        id: u64,
        client_id: Arc<str>,
        expiry_interval: u32,
        detached: u64,
        gauges: &Arc<SessionGauges>,
    ) -> Arc<Session> {
        Arc::new(Session {
            id,
            client_id,
            state: Mutex::new(SessionState::new(expiry_interval, detached, gauges)),
            notify: Notify::new(),
            subscription_count: AtomicUsize::new(0),
        })
    }

    #[cfg(test)]
    pub fn new_for_test(id: u64) -> Arc<Session> {
        Session::new(id, format!("test-{id}").into(), 0, 0, &Arc::default())
    }

    pub fn subscription_count(&self) -> usize {
        self.subscription_count.load(Ordering::Relaxed)
    }

    /// Wakes the attached connection (as a new message does) when a ticket it waits for is
    /// done (`tickets.rs`).
    pub(crate) fn waker(self: &Arc<Self>) -> std::task::Waker {
        std::task::Waker::from(self.clone())
    }

    /// Whether subscribing to `filter` would take the session past `max` subscriptions
    /// (`mqtt.max_subscriptions`); replacing one it has never does.
    pub(crate) fn at_subscription_limit(&self, filter: &str, max: u32) -> bool {
        let st = self.state.lock();
        st.subscriptions.len() >= max as usize && !st.subscriptions.contains_key(filter)
    }

    /// Call with the subscription tree's write lock held.
    pub fn set_subscription_count(&self, n: usize) {
        self.subscription_count.store(n, Ordering::Relaxed);
    }

    /// Whether a connection is attached now (takes the state lock: tree, then session).
    pub fn is_online(&self) -> bool {
        self.state.lock().attachment().is_online()
    }

    /// Queues a delivery for the client and wakes its connection. With a journal, a delivery
    /// that must outlive the process (QoS 1/2, or queued offline, to a persistent session) is
    /// journaled; the ticket of its record is returned with the outcome. `shared`: the
    /// message goes to several sessions, so its body is stored once for all of them.
    pub(crate) fn enqueue(
        &self,
        state: &mut SessionState,
        mut d: Delivery,
        limits: &QueueLimits,
        journal: Option<&Journal>,
        shared: bool,
    ) -> (Enqueued, Option<u64>) {
        let online = match state.attachment() {
            Attachment::Ended => return (Enqueued::Skipped, None),
            Attachment::Online(_) => true,
            Attachment::Offline { .. } => false,
        };
        if !online && d.qos == QoS::AtMostOnce && !limits.queue_qos0_offline {
            return (Enqueued::Skipped, None);
        }
        if let (Some(&(from, cut)), Some(id)) =
            (state.moved_from.as_deref(), d.message.cluster_id.get())
            && ((id.origin != 0 && id.origin == from && id.seq < cut.next_seq)
                || (id.stream_seq != 0 && id.stream_seq <= cut.peers_routed))
        {
            // Routed to it on the node it came from.
            return (Enqueued::Skipped, None);
        }
        if let (Some(seen), Some(id)) = (state.moved_seen.as_mut(), d.message.cluster_id.get())
            && !seen.insert((id.origin, id.seq))
        {
            // Given to it here already, live or by the replay.
            return (Enqueued::Skipped, None);
        }
        let size = d.message.payload.len();
        let mut result = Enqueued::Queued;
        let mut ticket = None;
        while !state.pending().is_empty()
            && (state.pending().len() >= limits.max_messages
                || state.pending().bytes() + size > limits.max_bytes)
        {
            if !limits.drop_oldest {
                return (Enqueued::Rejected, None);
            }
            if let Some(old) = state.pop_pending_front()
                && let (Some(j), Some(r)) = (journal, old.stored_ref())
            {
                j.append(Record::Remove {
                    client: self.client_id.clone(),
                    seq: r.seq,
                    message: r.message,
                });
            }
            result = Enqueued::QueuedDroppedOldest;
        }
        if let Some(j) = journal
            && state.expiry_interval > 0
            && (d.qos != QoS::AtMostOnce || !online)
        {
            let seq = state.next_seq;
            state.next_seq += 1;
            d.stored = Some(Stored { seq, shared });
            j.message_id(&d.message);
            ticket = Some(j.append(Record::Enqueue {
                client: self.client_id.clone(),
                seq,
                message: d.message.clone(),
                shared,
                qos: d.qos,
                retain: d.retain,
                subscription_ids: d.subscription_ids.clone(),
            }));
        }
        let was_empty = state.pending().is_empty();
        state.push_pending(d);
        // A wake-up is needed only when the queue stops being empty: a connection that left
        // messages queued comes back for them by itself (after a write or an acknowledgement).
        if online && was_empty {
            self.notify.notify_one();
        }
        if result == Enqueued::Queued
            && online
            && !state.stalled_by_client
            && state.pending().len() * 2 >= limits.max_messages
        {
            return (Enqueued::QueuedBehind, ticket);
        }
        (result, ticket)
    }
}

impl std::task::Wake for Session {
    fn wake(self: Arc<Self>) {
        self.notify.notify_one();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Utf8Bytes;
    use crate::message::Message;
    use bytes::Bytes;

    fn delivery(qos: QoS, n: usize) -> Delivery {
        Delivery {
            message: Arc::new(Message::plain(
                Utf8Bytes::from("t"),
                Bytes::from(vec![0u8; n]),
                qos,
                false,
            )),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
            stored: None,
        }
    }

    const LIMITS: QueueLimits = QueueLimits {
        max_messages: 2,
        max_bytes: 100,
        drop_oldest: true,
        queue_qos0_offline: false,
    };

    #[test]
    fn offline_qos0_is_skipped_and_bounds_drop_oldest() {
        let s = Session::new_for_test(1);
        let mut st = s.state.lock();
        assert_eq!(
            s.enqueue(&mut st, delivery(QoS::AtMostOnce, 1), &LIMITS, None, false)
                .0,
            Enqueued::Skipped
        );
        assert_eq!(
            s.enqueue(&mut st, delivery(QoS::AtLeastOnce, 1), &LIMITS, None, false)
                .0,
            Enqueued::Queued
        );
        assert_eq!(
            s.enqueue(&mut st, delivery(QoS::AtLeastOnce, 2), &LIMITS, None, false)
                .0,
            Enqueued::Queued
        );
        assert_eq!(
            s.enqueue(&mut st, delivery(QoS::AtLeastOnce, 3), &LIMITS, None, false)
                .0,
            Enqueued::QueuedDroppedOldest
        );
        assert_eq!(st.pending().len(), 2);
        assert_eq!(st.pending().bytes(), 5);
        // A byte bound too.
        assert_eq!(
            s.enqueue(
                &mut st,
                delivery(QoS::AtLeastOnce, 99),
                &LIMITS,
                None,
                false
            )
            .0,
            Enqueued::QueuedDroppedOldest
        );
        assert_eq!(st.pending().len(), 1);
        let reject = QueueLimits {
            drop_oldest: false,
            ..LIMITS
        };
        assert_eq!(
            s.enqueue(&mut st, delivery(QoS::AtLeastOnce, 5), &reject, None, false)
                .0,
            Enqueued::Rejected
        );
    }

    #[test]
    fn a_filling_queue_of_a_ready_client_asks_the_publisher_to_yield() {
        let limits = QueueLimits {
            max_messages: 4,
            max_bytes: 1000,
            ..LIMITS
        };
        let s = Session::new_for_test(1);
        let mut st = s.state.lock();
        st.attach(ConnLink {
            conn_id: 7,
            control: Arc::default(),
        });
        assert_eq!(
            s.enqueue(&mut st, delivery(QoS::AtMostOnce, 1), &limits, None, false)
                .0,
            Enqueued::Queued
        );
        assert_eq!(
            s.enqueue(&mut st, delivery(QoS::AtMostOnce, 1), &limits, None, false)
                .0,
            Enqueued::QueuedBehind
        );
        // A client that is not taking messages is its own problem: no signal to the publisher.
        st.stalled_by_client = true;
        assert_eq!(
            s.enqueue(&mut st, delivery(QoS::AtMostOnce, 1), &limits, None, false)
                .0,
            Enqueued::Queued
        );
        // Offline sessions never signal either.
        st.stalled_by_client = false;
        assert!(st.detach(7, 1));
        assert_eq!(
            s.enqueue(&mut st, delivery(QoS::AtLeastOnce, 1), &limits, None, false)
                .0,
            Enqueued::Queued
        );
    }
}

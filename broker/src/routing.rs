//! Routing: a message published by a client (or the broker: wills, `$SYS`) goes to the
//! retained store if it is retained, then to every session whose subscriptions match it, one
//! copy per session, within each session's queue bounds.
//!
//! Locks: the subscription tree's read lock for the whole of a route, and each target
//! session's state lock in turn under it (lock order: tree, then session). Neither is held
//! across an await.

use std::sync::Arc;

use bytes::Bytes;

use crate::broker::Broker;
use crate::codec::{Packet, QoS, Utf8Bytes};
use crate::journal::Record;
use crate::message::{Delivery, Message};
use crate::session::{Enqueued, Session};
use crate::stats::Dropped;
use crate::tickets::Wait;

/// Result of routing one message (or a run of them).
#[derive(Debug, Clone, Copy, Default)]
pub struct Routed {
    /// Sessions the message was offered to.
    pub matched: usize,
    /// Some session refused it because its queue was full (policy `reject`).
    pub rejected: bool,
    /// Some online subscriber's queue is filling faster than its task runs (see
    /// [`Enqueued::QueuedBehind`]): the publisher should yield before its next message.
    pub subscribers_behind: bool,
    /// The tickets after which the message is durable: the journal's (as the retained value
    /// and in every persistent session it was queued to) and, in a cluster, the one after
    /// which it is stored for the other nodes. The publisher's PUBACK / PUBREC waits for them.
    pub durable: Wait,
    /// A retained message refused by `mqtt.max_retained_messages` / `max_retained_bytes`: not
    /// stored and not routed (QoS 1/2 publisher: 0x97).
    pub retained_refused: bool,
}

impl Routed {
    fn merge(&mut self, other: Routed) {
        self.matched += other.matched;
        self.rejected |= other.rejected;
        self.subscribers_behind |= other.subscribers_behind;
        self.durable = self.durable.and(other.durable);
        self.retained_refused |= other.retained_refused;
    }
}

/// Messages in one run at most.
const RUN_MAX: usize = 64;

/// QoS 0 messages (not retained) one client published to one topic, accepted and not yet
/// routed. A run is matched once and each subscriber's queue is locked once for all of it: a
/// client streaming to many subscribers pays per run, not per message.
///
/// The flush policy, all of it: a run is routed
/// - when a message to another topic is pushed, or the run reaches its size ([`Qos0Run::push`]);
/// - before any packet that cannot join a run takes effect ([`Qos0Run::joins`] is false);
/// - whenever the connection stops handling packets: end of its read buffer, a yield, AUTH,
///   its end.
///
/// So a client's messages reach subscribers in the order it sent them, among themselves and
/// against its other packets, and nothing is held while the connection waits.
#[derive(Default)]
pub(crate) struct Qos0Run {
    messages: Vec<Arc<Message>>,
}

impl Qos0Run {
    /// Whether `packet` may join a run; any other packet must see the run routed first.
    pub(crate) fn joins(packet: &Packet) -> bool {
        matches!(packet, Packet::Publish(p) if p.qos == QoS::AtMostOnce && !p.retain)
    }

    /// Adds an accepted message, routing what the policy says must go first or now.
    pub(crate) fn push(&mut self, broker: &Broker, message: Arc<Message>) -> Routed {
        debug_assert!(message.qos == QoS::AtMostOnce && !message.retain);
        let mut routed = Routed::default();
        if self
            .messages
            .first()
            .is_some_and(|m| m.topic != message.topic)
        {
            routed = self.flush(broker);
        }
        self.messages.push(message);
        // A run must not overflow a small queue before the publisher has had a chance to see
        // its subscribers fall behind (`Routed::subscribers_behind`, at half a queue).
        let max = RUN_MAX
            .min(broker.config.max_queued_messages as usize / 4)
            .max(1);
        if self.messages.len() >= max {
            routed.merge(self.flush(broker));
        }
        routed
    }

    /// Routes the run, if any.
    pub(crate) fn flush(&mut self, broker: &Broker) -> Routed {
        if self.messages.is_empty() {
            return Routed::default();
        }
        let routed = broker.publish_run(&self.messages);
        self.messages.clear();
        routed
    }
}

/// Where a message comes from, which decides what else happens to it besides routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A client of this node, or a will: counted, its retained value stored, and forwarded
    /// to the other nodes of a cluster (`cluster/`).
    Client,
    /// The broker's own `$SYS` updates: not counted, retained in memory only, not forwarded.
    Sys,
    /// Another node of the cluster: its retained value stored, never forwarded again.
    Peer,
}

impl Broker {
    /// Stores or clears the retained message and routes `message` to every matching session.
    pub fn publish(&self, message: Arc<Message>) -> Routed {
        self.stats.messages_received.add(message.qos, 1);
        self.stats
            .payload_received
            .add(message.qos, message.payload.len() as u64);
        self.publish_from(message, Origin::Client)
    }

    /// Removes the retained message of `topic` without publishing anything (an operator's
    /// deletion), journaled as an empty retained message would be. Returns whether one was there.
    pub(crate) fn clear_retained(&self, topic: Utf8Bytes) -> bool {
        if !self.retained.write().remove(topic.as_bytes()) {
            return false;
        }
        if let Some(j) = self.journal() {
            let cleared = Message::plain(topic, Bytes::new(), QoS::AtMostOnce, true);
            j.append(Record::Retained(Arc::new(cleared)));
        }
        true
    }

    /// Stores `message` as its topic's retained value (or, empty, removes it) without routing
    /// it, journaled like any retained message.
    pub(crate) fn keep_retained(&self, message: Arc<Message>) {
        if message.payload.is_empty() {
            self.clear_retained(message.topic.clone());
            return;
        }
        let kept = self.retained.write().insert_within(
            message.clone(),
            self.config.max_retained_messages,
            self.config.max_retained_bytes,
        );
        if !kept {
            self.stats.drop_one(Dropped::RetainedLimit);
            return;
        }
        if let Some(j) = self.journal() {
            j.append(Record::Retained(message));
        }
    }

    /// The broker's own `$SYS` updates: not counted as received, and their retained values are
    /// not stored (each is rewritten at the next interval).
    pub(crate) fn publish_sys(&self, message: Arc<Message>) -> Routed {
        self.publish_from(message, Origin::Sys)
    }

    pub(crate) fn publish_from(&self, message: Arc<Message>, origin: Origin) -> Routed {
        if origin == Origin::Client && message.qos != QoS::AtMostOnce {
            message.stamp_published();
        }
        let store_retained = origin != Origin::Sys;
        let mut retained_at = None;
        if message.retain && self.config.retain_available {
            let mut retained = self.retained.write();
            if message.payload.is_empty() {
                retained.remove(message.topic.as_bytes());
            } else if !store_retained {
                retained.insert(message.clone());
            } else if !retained.insert_within(
                message.clone(),
                self.config.max_retained_messages,
                self.config.max_retained_bytes,
            ) {
                drop(retained);
                // Refused whole: a publisher told 0x97 must not find it delivered either.
                self.stats.drop_one(Dropped::RetainedLimit);
                return Routed {
                    retained_refused: true,
                    ..Routed::default()
                };
            }
            drop(retained);
            if let Some(j) = self.journal()
                && store_retained
            {
                retained_at = Some(j.append(Record::Retained(message.clone())));
            }
        }
        let mut routed = self.route(std::slice::from_ref(&message), origin);
        routed.durable.journal = routed.durable.journal.max(retained_at.unwrap_or(0));
        if origin == Origin::Client {
            routed.durable.cluster = self.cluster.forward(std::slice::from_ref(&message));
        }
        routed
    }

    /// Routes a run of QoS 0 messages one client published to one topic, none retained, in
    /// order (see [`Qos0Run`]).
    fn publish_run(&self, run: &[Arc<Message>]) -> Routed {
        debug_assert!(run.iter().all(|m| !m.retain
            && m.qos == QoS::AtMostOnce
            && m.topic == run[0].topic
            && m.publisher == run[0].publisher));
        let bytes: usize = run.iter().map(|m| m.payload.len()).sum();
        self.stats
            .messages_received
            .add(QoS::AtMostOnce, run.len() as u64);
        self.stats
            .payload_received
            .add(QoS::AtMostOnce, bytes as u64);
        let routed = self.route(run, Origin::Client);
        self.cluster.forward(run);
        routed
    }

    /// Routes `messages`, which share one topic and one publisher, in order.
    ///
    /// In a cluster, under the tree's read lock: a client's message is numbered for the other
    /// nodes before it reaches any session, and a message read from the QoS 1/2 stream moves
    /// this node's stream position once it reached them. A session leaving for another node
    /// reads both under the write lock (`Cluster::cut`): exactly what was routed to it.
    fn route(&self, messages: &[Arc<Message>], origin: Origin) -> Routed {
        let Some(message) = messages.first() else {
            return Routed::default();
        };
        struct Target<'t> {
            session: &'t Arc<Session>,
            qos: QoS,
            retain_as_published: bool,
            ids: Vec<u32>,
            shared: bool,
        }
        let tree = self.subscriptions.read();
        if origin == Origin::Client {
            self.cluster.number(messages);
        }
        let mut targets: Vec<Target<'_>> = Vec::new();
        let groups = self.cluster.routes_groups_here(message.topic.as_str());
        tree.for_each_match_of(message.topic.as_bytes(), groups, &mut |m| {
            let s = m.subscriber;
            if s.options.no_local && !m.shared && s.session.id == message.publisher {
                return;
            }
            targets.push(Target {
                session: &s.session,
                qos: s.options.qos,
                retain_as_published: s.options.retain_as_published,
                ids: s.subscription_id.into_iter().collect(),
                shared: m.shared,
            });
        });
        // One copy per session for overlapping subscriptions: the highest QoS and every
        // Subscription Identifier (MQTT-3.3.4-2, -3). Shared ones are delivered apart. Only a
        // session with several subscriptions can match twice, so only those are sorted.
        let mut merged: Vec<Target<'_>> = Vec::with_capacity(targets.len());
        let mut several: Vec<Target<'_>> = Vec::new();
        for t in targets {
            if !t.shared && t.session.subscription_count() > 1 {
                several.push(t);
            } else {
                merged.push(t);
            }
        }
        several.sort_by_key(|t| t.session.id);
        let mut last_merged: Option<usize> = None;
        for t in several {
            if let Some(i) = last_merged
                && merged[i].session.id == t.session.id
            {
                let last = &mut merged[i];
                last.qos = last.qos.max(t.qos);
                last.retain_as_published |= t.retain_as_published;
                last.ids.extend(t.ids);
                continue;
            }
            merged.push(t);
            last_merged = Some(merged.len() - 1);
        }
        let journal = self.journal();
        // A message from the stream: its records and the stream position it moves go into
        // one journal batch, so after a crash the position says exactly which messages the
        // restored sessions hold (JetStream delivers those again; they are skipped, not
        // queued a second time: a QoS 2 duplicate otherwise).
        let pin = journal.filter(|_| origin == Origin::Peer).map(|j| j.pin());
        // Routed to one session, a message's body is stored in its entry; to several, once.
        let shared = merged.len() > 1;
        let mut routed = Routed {
            matched: merged.len(),
            ..Routed::default()
        };
        for mut t in merged {
            let mut st = t.session.state.lock();
            for (i, m) in messages.iter().enumerate() {
                // The last delivery takes the identifiers; only a run's earlier ones copy them.
                let subscription_ids = if i + 1 == messages.len() {
                    std::mem::take(&mut t.ids)
                } else {
                    t.ids.clone()
                };
                let d = Delivery {
                    message: m.clone(),
                    qos: m.qos.min(t.qos),
                    retain: t.retain_as_published && m.retain,
                    subscription_ids,
                    stored: None,
                };
                let (enqueued, ticket) =
                    t.session.enqueue(&mut st, d, &self.limits, journal, shared);
                routed.durable.journal = routed.durable.journal.max(ticket.unwrap_or(0));
                if !matches!(enqueued, Enqueued::Skipped | Enqueued::Rejected) {
                    self.note_queued(t.session, &mut st);
                }
                match enqueued {
                    Enqueued::Queued | Enqueued::Skipped => {}
                    Enqueued::QueuedBehind => routed.subscribers_behind = true,
                    Enqueued::QueuedDroppedOldest => {
                        self.stats.drop_one(Dropped::QueueFull);
                    }
                    Enqueued::Rejected => {
                        self.stats.drop_one(Dropped::QueueFull);
                        routed.rejected = true;
                    }
                }
            }
        }
        if origin == Origin::Peer {
            self.cluster.routed_from_stream(messages);
        }
        drop(pin);
        drop(tree);
        routed
    }
}

//! The engine's half of a persistent session moving between nodes (the cluster's half is
//! `tessera-cluster`'s `sessions.rs`). The broker keeps sessions in its own memory and store;
//! the cluster keeps a record of each persistent session where every node can read it, and
//! moves a session when its client connects on another node. What the engine offers for that:
//!
//! - [`PeerHandle::session_snapshot`]: what the record needs (expiry, subscriptions, the
//!   oldest message not acknowledged, presence);
//! - [`PeerHandle::release_session`]: the node a session leaves ends its connection (0x8E)
//!   and drops the session without its pending will (the session goes on elsewhere, which
//!   cancels a delayed will as a reconnect does), returning its last snapshot with what it
//!   [`Carried`]: its queue, what was in flight and in which state, the QoS 2 identifiers its
//!   client has not released, and the [`Cut`](super::Cut) (taken as it ended, with nothing
//!   routed meanwhile) of the messages routed to it here;
//! - a [`MovedSession`] from [`Peers::claim`](super::Peers::claim) opens the session here with
//!   its subscriptions, what it carried (journaled: this node's now) and Session Present
//!   (`Broker::open_session`, then `Broker::adopt`);
//! - [`PeerHandle::deliver_to`]: a message queued for the session elsewhere, delivered to it
//!   alone, as its subscriptions here would have matched it (the replay); one it was given
//!   here since it opened (by its cluster name) is not given twice, and
//!   [`PeerHandle::replayed`] ends that.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use super::inbound::{PeerHandle, PeerPacketError, decode};
use super::{ClusterId, Cut};
use crate::broker::Broker;
use crate::codec::SubscriptionOptions;
use crate::codec::topic::{matches, split_shared};
use crate::codec::{QoS, ReasonCode};
use crate::journal::Record;
use crate::message::{Delivery, Message};
use crate::session::{Attachment, Control, Enqueued, Inflight, Session, SessionState};
use crate::store::EntryState;
use crate::store::StoredSubscription;

/// A persistent session as the cluster's record of it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    pub expiry_interval: u32,
    pub subscriptions: Vec<StoredSubscription>,
    /// When the oldest QoS 1/2 message queued for the client or waiting for its
    /// acknowledgement was published (ms since the epoch; 0 if not known), `None` if there
    /// is none.
    pub oldest_unacked_ms: Option<u64>,
    /// When its connection went, `None` while one is attached.
    pub offline_since: Option<SystemTime>,
    /// What it holds, when it is leaving for another node ([`PeerHandle::release_session`]).
    pub carried: Option<Carried>,
}

/// A session another node held, to be opened here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedSession {
    pub expiry_interval: u32,
    pub subscriptions: Vec<StoredSubscription>,
    /// What it held there: as that node let it go, or, from one that did not answer, as the
    /// cluster's record of it says (its QoS 2 exchanges); `None` when nothing is carried.
    pub carried: Option<Carried>,
}

/// What a session held when it left a live node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    /// In flight first (by packet identifier), then queued, in order.
    pub entries: Vec<CarriedEntry>,
    /// QoS 2 packet identifiers its client published and has not released (PUBREL).
    pub incoming_qos2: Vec<u16>,
    /// What had been routed to it there.
    pub cut: Cut,
    /// The node it left, as the cluster names it (`ClusterId::origin`; the cluster sets it,
    /// 0 where it is made).
    pub origin: u64,
    /// Messages it had there (in flight or completed QoS 2 ones, as the cluster recorded
    /// them) that neither its replay nor this node's routing gives it again while the replay
    /// runs. Set by the cluster for a session whose node died; empty where it is made.
    pub delivered: Vec<ClusterId>,
}

/// One queue entry of a [`Carried`] session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedEntry {
    /// The message as an MQTT 5 PUBLISH; empty for `Released` (delivered, only its PUBCOMP
    /// is awaited).
    pub packet: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    pub state: EntryState,
    /// When it was published (ms since the epoch; 0 if not known): the floor of the
    /// session's record counts from it.
    pub published_ms: u64,
    /// Its name in the cluster, as the node holding the entry calls it (origin 0: that node).
    pub id: Option<ClusterId>,
}

impl CarriedEntry {
    /// A QoS 2 message a dead node had sent to the session under `packet_id`, to be sent
    /// again under it (DUP), as the session's `subscriptions` match it (shared ones
    /// excepted); `None` if none does or the packet does not decode.
    pub fn sent_again(
        subscriptions: &[StoredSubscription],
        packet: Bytes,
        published_ms: u64,
        id: ClusterId,
        packet_id: u16,
    ) -> Option<CarriedEntry> {
        let message = decode(packet.clone(), published_ms).ok()?;
        let subs = subscriptions
            .iter()
            .map(|s| (s.filter.as_str(), &s.options, s.subscription_id));
        let (qos, retain_as_published, subscription_ids) =
            best_match(subs, message.topic.as_str())?;
        Some(CarriedEntry {
            packet,
            qos: message.qos.min(qos),
            retain: retain_as_published && message.retain,
            subscription_ids,
            state: EntryState::Sent(packet_id),
            published_ms,
            id: Some(id),
        })
    }
}

/// How a session's non-shared subscriptions take a message to `topic`: the highest QoS,
/// whether any keeps its retain flag, every subscription identifier; `None` if none matches.
fn best_match<'a>(
    subscriptions: impl Iterator<Item = (&'a str, &'a SubscriptionOptions, Option<u32>)>,
    topic: &str,
) -> Option<(QoS, bool, Vec<u32>)> {
    let mut best: Option<(QoS, bool, Vec<u32>)> = None;
    for (filter, options, id) in subscriptions {
        let (group, inner) = split_shared(filter);
        if group.is_some() || !matches(inner, topic) {
            continue;
        }
        let entry = best.get_or_insert((options.qos, false, Vec::new()));
        entry.0 = entry.0.max(options.qos);
        entry.1 |= options.retain_as_published;
        entry.2.extend(id);
    }
    best
}

impl PeerHandle {
    /// The persistent session of `client_id` here, if any.
    pub fn session_snapshot(&self, client_id: &str) -> Option<SessionSnapshot> {
        self.0.session_snapshot(client_id)
    }

    /// The persistent sessions here that had a message queued since their record was last
    /// read (`session_snapshot`), each once; taken out.
    pub fn take_records_behind(&self) -> Vec<Arc<str>> {
        let mut ids = self.0.cluster.take_records_behind();
        // A session read since it was marked (a change wrote its record) is not behind.
        let sessions = self.0.sessions.lock();
        ids.retain(|id| {
            sessions
                .get(id)
                .is_some_and(|s| s.state.lock().record_behind)
        });
        ids
    }

    /// The client ids of every persistent session here.
    pub fn persistent_sessions(&self) -> Vec<Arc<str>> {
        let sessions: Vec<_> = self.0.sessions.lock().values().cloned().collect();
        sessions
            .into_iter()
            .filter(|s| {
                let st = s.state.lock();
                st.expiry_interval > 0 && !st.attachment().is_ended()
            })
            .map(|s| s.client_id.clone())
            .collect()
    }

    /// The session of `client_id` continues on another node: its connection here ends
    /// (0x8E) and the session is dropped, its pending will with it unless `clean` (a Clean
    /// Start there ends the session, which publishes it). Returns its last snapshot.
    pub fn release_session(&self, client_id: &str, clean: bool) -> Option<SessionSnapshot> {
        let b = &self.0;
        let session = b.sessions.lock().get(client_id).cloned()?;
        let mut snapshot = b.session_snapshot(client_id);
        {
            let mut st = session.state.lock();
            if let Attachment::Online(link) = &st.attachment() {
                link.control.send(Control::Disconnect {
                    reason: ReasonCode::SESSION_TAKEN_OVER,
                    reason_string: Some(
                        "another connection took over this session (on another node)".into(),
                    ),
                });
            }
            if !clean {
                st.pending_will = None;
            }
        }
        let mut carried = None;
        b.end_session_with(&session, |st| {
            if !clean {
                carried = Some(b.carried(st));
            }
        });
        if let Some(s) = snapshot.as_mut() {
            s.carried = carried;
        }
        snapshot
    }

    /// The replay of the session moved here is over, and this node's consumer has passed
    /// what it read: what is queued to it from now on is not compared with what it was given.
    pub fn replayed(&self, client_id: &str) {
        if let Some(session) = self.0.sessions.lock().get(client_id).cloned() {
            session.state.lock().moved_seen = None;
        }
    }

    /// Queues a message that was waiting for `client_id`'s session on another node (the
    /// bytes [`Peers::forward`](super::Peers::forward) was given) for that session alone, as
    /// its subscriptions here match it (shared ones excepted: their group got it). Returns
    /// whether it was queued.
    pub fn deliver_to(
        &self,
        client_id: &str,
        packet: Bytes,
        published_ms: u64,
        id: ClusterId,
    ) -> Result<bool, PeerPacketError> {
        let message = decode(packet, published_ms)?;
        let _ = message.cluster_id.set(id);
        let message = Arc::new(message);
        let b = &self.0;
        let Some(session) = b.sessions.lock().get(client_id).cloned() else {
            return Ok(false);
        };
        let mut st = session.state.lock();
        let subs = st
            .subscriptions
            .iter()
            .map(|(filter, r)| (filter.as_str(), &r.options, r.subscription_id));
        let Some((qos, retain_as_published, subscription_ids)) =
            best_match(subs, message.topic.as_str())
        else {
            return Ok(false);
        };
        let d = Delivery {
            qos: message.qos.min(qos),
            retain: retain_as_published && message.retain,
            subscription_ids,
            stored: None,
            message,
        };
        Ok(b.enqueue_one(&session, &mut st, d))
    }
}

impl Broker {
    fn session_snapshot(&self, client_id: &str) -> Option<SessionSnapshot> {
        let session = self.sessions.lock().get(client_id).cloned()?;
        let mut st = session.state.lock();
        if st.attachment().is_ended() || st.expiry_interval == 0 {
            return None;
        }
        // Read now: a message queued from here on marks it again (under this lock).
        st.record_behind = false;
        let mut subscriptions: Vec<_> = st
            .subscriptions
            .iter()
            .map(|(filter, r)| StoredSubscription {
                filter: filter.clone(),
                options: r.options,
                subscription_id: r.subscription_id,
            })
            .collect();
        subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
        Some(SessionSnapshot {
            expiry_interval: st.expiry_interval,
            subscriptions,
            oldest_unacked_ms: oldest_unacked_ms(&st),
            offline_since: match st.attachment() {
                Attachment::Offline { since, .. } => Some(*since),
                _ => None,
            },
            carried: None,
        })
    }

    /// What a session leaving for another node holds (under the tree's write lock).
    fn carried(&self, st: &SessionState) -> Carried {
        let now = Instant::now();
        let entry = |d: &Delivery, state| CarriedEntry {
            packet: super::encode(&d.message, now),
            qos: d.qos,
            retain: d.retain,
            subscription_ids: d.subscription_ids.clone(),
            state,
            published_ms: d.message.published_ms.load(Ordering::Relaxed),
            id: d.message.cluster_id.get().copied(),
        };
        let inflight = st.inflight().iter().map(|(pid, i)| match i {
            Inflight::Published(d) => entry(d, EntryState::Sent(*pid)),
            Inflight::Released(_) => CarriedEntry {
                packet: Bytes::new(),
                qos: QoS::ExactlyOnce,
                retain: false,
                subscription_ids: Vec::new(),
                state: EntryState::Released(*pid),
                published_ms: 0,
                id: None,
            },
        });
        let queued = st
            .pending()
            .iter()
            .filter(|d| !d.message.is_expired(now))
            .map(|d| entry(d, EntryState::Queued));
        Carried {
            entries: inflight.chain(queued).collect(),
            incoming_qos2: st.incoming_qos2.iter().copied().collect(),
            cut: self.cluster.cut(),
            origin: 0,
            delivered: Vec::new(),
        }
    }

    /// Gives a session moved from another node its subscriptions and what it carried
    /// (journaled: it is this node's now). With something carried, its replay skips what the
    /// session is given here meanwhile.
    pub(crate) fn adopt(&self, session: &Arc<Session>, moved: MovedSession) {
        for s in moved.subscriptions {
            self.add_subscription(session, &s.filter, s.options, s.subscription_id, true);
        }
        let Some(carried) = moved.carried else {
            return;
        };
        let journal = self.journal();
        let mut st = session.state.lock();
        // Each entry adopted is named in `moved_seen` as it is queued; what it had there
        // besides them, and the cut (which the entries are all before), after them.
        st.moved_seen = Some(Box::default());
        for pid in carried.incoming_qos2 {
            if st.incoming_qos2.insert(pid)
                && let Some(j) = journal
            {
                j.append(Record::IncomingAdd(session.client_id.clone(), pid));
            }
        }
        for e in carried.entries {
            let message = match e.state {
                EntryState::Released(_) => Message::delivered(),
                _ => match decode(e.packet, e.published_ms) {
                    Ok(m) => m,
                    Err(_) => continue,
                },
            };
            if let Some(id) = e.id {
                let _ = message.cluster_id.set(id);
            }
            let d = Delivery {
                message: Arc::new(message),
                qos: e.qos,
                retain: e.retain,
                subscription_ids: e.subscription_ids,
                stored: None,
            };
            // Queued as any delivery (journaled, within the queue's bounds); one that was in
            // flight goes back under its packet identifier, so the client gets it again as
            // the same message (DUP), or, released, only its PUBREL.
            let (queued, _) = session.enqueue(&mut st, d, &self.limits, journal, false);
            if matches!(queued, Enqueued::Rejected | Enqueued::Skipped) {
                continue;
            }
            let pid = match e.state {
                EntryState::Sent(pid) | EntryState::Released(pid) => pid,
                EntryState::Queued => continue,
            };
            let Some(d) = st.pop_pending_back() else {
                continue;
            };
            let stored = d.stored_ref();
            if let (Some(j), Some(s)) = (journal, stored) {
                j.append(Record::Entry {
                    client: session.client_id.clone(),
                    seq: s.seq,
                    state: e.state,
                });
            }
            let inflight = match e.state {
                EntryState::Released(_) => Inflight::Released(stored),
                _ => Inflight::Published(d),
            };
            st.insert_inflight(pid, inflight);
        }
        if let Some(seen) = st.moved_seen.as_mut() {
            seen.extend(carried.delivered.iter().map(|id| (id.origin, id.seq)));
        }
        st.moved_from = Some(Box::new((carried.origin, carried.cut)));
    }
}

/// See [`SessionSnapshot::oldest_unacked_ms`]. QoS 0 ones are not counted: they are not
/// replayed.
fn oldest_unacked_ms(st: &SessionState) -> Option<u64> {
    let queued = st.pending().iter().filter(|d| d.qos != QoS::AtMostOnce);
    let inflight = st.inflight().values().filter_map(|i| match i {
        Inflight::Published(d) => Some(d),
        // Delivered; only its PUBCOMP is awaited.
        Inflight::Released(_) => None,
    });
    queued
        .chain(inflight)
        .map(|d| d.message.published_ms.load(Ordering::Relaxed))
        .min()
}

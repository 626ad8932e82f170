//! The engine's half of a persistent session moving between nodes (the cluster's half is
//! `tessera-cluster`'s `sessions.rs`). The broker keeps sessions in its own memory and store;
//! the cluster keeps a record of each persistent session where every node can read it, and
//! moves a session when its client connects on another node. What the engine offers for that:
//!
//! - [`PeerHandle::session_snapshot`]: what the record needs (expiry, subscriptions, the
//!   oldest message not acknowledged, presence);
//! - [`PeerHandle::release_session`]: the node a session leaves ends its connection (0x8E)
//!   and drops the session without its pending will (the session goes on elsewhere, which
//!   cancels a delayed will as a reconnect does), returning its last snapshot;
//! - a [`MovedSession`] from [`Peers::claim`](super::Peers::claim) opens the session here with
//!   its subscriptions and Session Present (`Broker::open_session`, then `Broker::adopt`);
//! - [`PeerHandle::deliver_to`]: a message queued for the session elsewhere, delivered to it
//!   alone, as its subscriptions here would have matched it (the replay).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::Bytes;

use super::inbound::{PeerHandle, PeerPacketError, decode};
use crate::broker::Broker;
use crate::codec::topic::{matches, split_shared};
use crate::codec::{QoS, ReasonCode};
use crate::message::Delivery;
use crate::session::{Attachment, Control, Inflight, Session, SessionState};
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
}

/// A session another node held, to be opened here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedSession {
    pub expiry_interval: u32,
    pub subscriptions: Vec<StoredSubscription>,
}

impl PeerHandle {
    /// The persistent session of `client_id` here, if any.
    pub fn session_snapshot(&self, client_id: &str) -> Option<SessionSnapshot> {
        self.0.session_snapshot(client_id)
    }

    /// The client ids of every persistent session here.
    pub fn persistent_sessions(&self) -> Vec<Arc<str>> {
        let sessions: Vec<_> = self.0.sessions.lock().values().cloned().collect();
        sessions
            .into_iter()
            .filter(|s| {
                let st = s.state.lock();
                st.expiry_interval > 0 && !st.attachment.is_ended()
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
        let snapshot = b.session_snapshot(client_id);
        {
            let mut st = session.state.lock();
            if let Attachment::Online(link) = &st.attachment {
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
        b.end_session(&session);
        snapshot
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
    ) -> Result<bool, PeerPacketError> {
        let message = Arc::new(decode(packet, published_ms)?);
        let b = &self.0;
        let Some(session) = b.sessions.lock().get(client_id).cloned() else {
            return Ok(false);
        };
        let mut st = session.state.lock();
        let mut best: Option<(QoS, bool, Vec<u32>)> = None;
        for (filter, r) in &st.subscriptions {
            let (group, inner) = split_shared(filter);
            if group.is_some() || !matches(inner, message.topic.as_str()) {
                continue;
            }
            let entry = best.get_or_insert((r.options.qos, false, Vec::new()));
            entry.0 = entry.0.max(r.options.qos);
            entry.1 |= r.options.retain_as_published;
            entry.2.extend(r.subscription_id);
        }
        let Some((qos, retain_as_published, subscription_ids)) = best else {
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
        let st = session.state.lock();
        if st.attachment.is_ended() || st.expiry_interval == 0 {
            return None;
        }
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
            offline_since: match st.attachment {
                Attachment::Offline { since, .. } => Some(since),
                _ => None,
            },
        })
    }

    /// Gives a session moved from another node its subscriptions (journaled: it is this
    /// node's now).
    pub(crate) fn adopt(&self, session: &Arc<Session>, moved: MovedSession) {
        for s in moved.subscriptions {
            self.add_subscription(session, &s.filter, s.options, s.subscription_id, true);
        }
    }
}

/// See [`SessionSnapshot::oldest_unacked_ms`]. QoS 0 ones are not counted: they are not
/// replayed.
fn oldest_unacked_ms(st: &SessionState) -> Option<u64> {
    let queued = st.pending.iter().filter(|d| d.qos != QoS::AtMostOnce);
    let inflight = st.inflight.values().filter_map(|i| match i {
        Inflight::Published(d) => Some(d),
        // Delivered; only its PUBCOMP is awaited.
        Inflight::Released(_) => None,
    });
    queued
        .chain(inflight)
        .map(|d| d.message.published_ms.load(Ordering::Relaxed))
        .min()
}

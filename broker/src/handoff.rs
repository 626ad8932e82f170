//! A persistent session moving between the nodes of a cluster. The broker keeps sessions in
//! its own memory and store; the cluster side (`Peers`) keeps a record of each persistent
//! session where every node can read it, and moves a session when its client connects on
//! another node. What the broker offers for that:
//!
//! - [`BrokerHandle::session_snapshot`]: what the record needs (expiry, subscriptions,
//!   whether anything is queued or in flight, presence);
//! - [`BrokerHandle::release_session`]: the node a session leaves ends its connection (0x8E)
//!   and drops the session without its pending will (the session goes on elsewhere, which
//!   cancels a delayed will as a reconnect does), returning its last snapshot;
//! - a [`MovedSession`] from [`Peers::claim`](crate::Peers::claim) opens the session here
//!   with its subscriptions and Session Present (`Broker::open_session`);
//! - [`BrokerHandle::deliver_to`]: a message queued for the session elsewhere, delivered to
//!   it alone, as its subscriptions here would have matched it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::broker::{Broker, BrokerHandle};
use crate::codec::QoS;
use crate::codec::ReasonCode;
use crate::codec::topic::matches;
use crate::message::Delivery;
use crate::peers::{PeerPacketError, decode_peer};
use crate::session::{Attachment, Enqueued, Inflight, Session, SessionState};
use crate::store::StoredSubscription;
use crate::subscribe::split_shared;

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

impl Broker {
    pub(crate) fn session_snapshot(&self, client_id: &str) -> Option<SessionSnapshot> {
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

    /// Tells the peers a persistent session changed (subscriptions, presence, its end).
    pub(crate) fn session_changed(&self, client_id: &str) {
        if let Some(peers) = self.peers.get() {
            peers.session_changed(client_id);
        }
    }
}

impl BrokerHandle {
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
                link.control.send(crate::session::Control::Disconnect {
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
    /// bytes [`Peers::forward`](crate::Peers::forward) was given) for that session alone, as
    /// its subscriptions here match it (shared ones excepted: their group got it). Returns
    /// whether it was queued.
    pub fn deliver_to(
        &self,
        client_id: &str,
        packet: Bytes,
        published_ms: u64,
    ) -> Result<bool, PeerPacketError> {
        let message = Arc::new(decode_peer(packet)?);
        message.published_ms.store(published_ms, Ordering::Relaxed);
        let b = &self.0;
        let Some(session) = b.sessions.lock().get(client_id).cloned() else {
            return Ok(false);
        };
        let mut st = session.state.lock();
        let mut best: Option<(crate::codec::QoS, bool, Vec<u32>)> = None;
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

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

impl Broker {
    /// Queues one delivery outside routing (a replayed or group message); whether it was.
    pub(crate) fn enqueue_one(
        &self,
        session: &Session,
        st: &mut SessionState,
        d: Delivery,
    ) -> bool {
        let (enqueued, _) = session.enqueue(st, d, &self.limits, self.journal(), false);
        !matches!(enqueued, Enqueued::Skipped | Enqueued::Rejected)
    }

    /// Gives a session moved from another node its subscriptions (journaled: it is this
    /// node's now).
    pub(crate) fn adopt(&self, session: &Arc<crate::session::Session>, moved: MovedSession) {
        for s in moved.subscriptions {
            self.add_subscription(session, &s.filter, s.options, s.subscription_id, true);
        }
    }
}

//! [`PeerHandle`]: the cluster implementation's one way into the engine. What comes in from
//! the other nodes: their messages (routed here and, if retained, stored, never forwarded
//! again), a shared group's message for one member here, the retained values a node takes
//! when it starts, settled tickets, takeovers, and whether the cluster can pick shared
//! groups' members now. The session move's half is in `sessions.rs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};

use super::{ClusterId, Peers};
use crate::broker::{Broker, BrokerHandle};
use crate::codec::{self, DecodeError, Packet, ReasonCode, Version, topic::split_shared};
use crate::message::{Delivery, Message};
use crate::routing::Origin;
use crate::session::{Enqueued, Session, SessionState};

/// The engine as the cluster implementation sees it. Cloneable; get one with
/// [`BrokerHandle::peer_handle`].
#[derive(Clone)]
pub struct PeerHandle(pub(crate) Arc<Broker>);

/// Why a PUBLISH from another node was not taken.
#[derive(Debug)]
pub enum PeerPacketError {
    Malformed(DecodeError),
    /// A whole packet, but not a PUBLISH.
    NotAPublish,
}

impl std::fmt::Display for PeerPacketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerPacketError::Malformed(e) => write!(f, "malformed PUBLISH from a peer: {e}"),
            PeerPacketError::NotAPublish => {
                f.write_str("a peer sent a packet that is not a PUBLISH")
            }
        }
    }
}

impl std::error::Error for PeerPacketError {}

impl BrokerHandle {
    /// The handle a cluster implementation works through.
    pub fn peer_handle(&self) -> PeerHandle {
        PeerHandle(self.0.clone())
    }
}

impl PeerHandle {
    /// Connects this broker to its peers. Every filter already in the tree (subscriptions
    /// restored from the store) is reported first, under the tree's lock, so no entry is
    /// missed or counted twice. Returns false if peers were already set.
    pub fn join(&self, peers: Arc<dyn Peers>) -> bool {
        let b = &self.0;
        let _tree = b.subscriptions.write();
        if b.cluster.peers.set(peers).is_err() {
            return false;
        }
        let sessions: Vec<_> = b.sessions.lock().values().cloned().collect();
        for s in sessions {
            let st = s.state.lock();
            for filter in st.subscriptions.keys() {
                let (group, inner) = split_shared(filter);
                b.cluster.interest(inner, group, true);
            }
        }
        true
    }

    /// Settles ticket `t` of [`Peers::forward`] or of an `InterestTicket`: the message was
    /// stored for the other nodes (`kept`), or could not be (its publisher gets 0x80).
    pub fn settle(&self, t: u64, kept: bool) {
        self.0
            .cluster
            .tickets
            .settle(t, if kept { Ok(()) } else { Err(()) });
    }

    /// Whether the cluster can pick shared groups' members now. While it cannot (NATS lost),
    /// this node routes a group's messages to its own members, as when alone.
    pub fn set_groups_across_nodes(&self, yes: bool) {
        self.0
            .cluster
            .groups_across_nodes
            .store(yes, Ordering::Relaxed);
    }

    /// Routes a message another node forwarded (the bytes [`Peers::forward`] was given
    /// there), named `id` in the cluster. `published_ms`: when it was published (the
    /// stream's time), 0 if not known.
    pub fn publish(
        &self,
        packet: Bytes,
        published_ms: u64,
        id: ClusterId,
    ) -> Result<(), PeerPacketError> {
        let message = decode(packet, published_ms)?;
        let _ = message.cluster_id.set(id);
        let message = Arc::new(message);
        self.0.publish_from(message, Origin::Peer);
        Ok(())
    }

    /// Every message of the QoS 1/2 stream through sequence `seq` has been taken here
    /// (routed, or this node's own; call it after them, before [`PeerHandle::sync`]). Routing
    /// moves the position itself; the journal writes it with the batch holding what was
    /// routed up to it, so after a crash [`PeerHandle::peers_routed`] says which messages
    /// JetStream delivers again were routed already.
    pub fn routed_through(&self, seq: u64) {
        self.0
            .cluster
            .peers_routed
            .fetch_max(seq, Ordering::Release);
    }

    /// The QoS 1/2 stream is a new one (its last sequence is below what was routed): its
    /// position starts again from 0.
    pub fn reset_peers_routed(&self) {
        self.0.cluster.restore_peers_routed(0);
    }

    /// The stream sequence through which the other nodes' QoS 1/2 messages were routed here,
    /// as of the last [`PeerHandle::routed_through`] (kept across restarts when durable).
    pub fn peers_routed(&self) -> u64 {
        self.0.cluster.peers_routed()
    }

    /// Publishes the will of a client of a node that died (the bytes [`Peers::forward`] was
    /// given there, from an [`Event::Will`](super::Event::Will)) as this node's own: routed
    /// here and forwarded to the other nodes, as the dead node would have.
    pub fn publish_will(&self, packet: Bytes) -> Result<(), PeerPacketError> {
        let message = Arc::new(decode(packet, 0)?);
        self.0.publish(message);
        Ok(())
    }

    /// Keeps a retained message another node published, without routing it (the cluster's
    /// state a node takes when it starts): as its retained value, or, empty, none.
    pub fn retain(&self, packet: Bytes) -> Result<(), PeerPacketError> {
        let message = decode(packet, 0)?;
        if message.retain {
            self.0.keep_retained(Arc::new(message));
        }
        Ok(())
    }

    /// Delivers a message (the bytes [`Peers::forward`] was given on some node) to one member
    /// of the shared group `group` of `filter` here: the cluster picked this node for the
    /// group. Returns whether a member took it (none left here: another node must).
    pub fn publish_to_group(
        &self,
        group: &str,
        filter: &str,
        packet: Bytes,
    ) -> Result<bool, PeerPacketError> {
        let message = Arc::new(decode(packet, 0)?);
        let b = &self.0;
        let tree = b.subscriptions.read();
        let Some(member) = tree.group_member(filter, group) else {
            return Ok(false);
        };
        let d = Delivery {
            qos: message.qos.min(member.options.qos),
            retain: member.options.retain_as_published && message.retain,
            subscription_ids: member.subscription_id.into_iter().collect(),
            stored: None,
            message,
        };
        let mut st = member.session.state.lock();
        Ok(b.enqueue_one(&member.session, &mut st, d))
    }

    /// A client connected on another node at `since`: this node's connections with that
    /// client id that are older end with 0x8E (the newest connection wins, as on one node).
    /// Its session here stays as its expiry says. Returns how many connections were told.
    pub fn taken_over(&self, client_id: &str, since: SystemTime) -> usize {
        self.0.connections.disconnect_where(
            |c| &*c.client_id == client_id && c.since < since,
            ReasonCode::SESSION_TAKEN_OVER,
            "another connection took over this session (on another node)",
        )
    }

    /// Waits until every change to durable state made so far is in this node's store (what
    /// the cluster may acknowledge to JetStream then survives this node's crash).
    pub async fn sync(&self) -> Result<(), crate::store::StoreError> {
        self.0.handle().sync().await
    }

    /// Live MQTT connections on this node (for its heartbeat).
    pub fn connections(&self) -> usize {
        self.0.connection_count()
    }
}

impl Broker {
    /// Queues one delivery outside routing (a group's message, a replayed one); whether it was.
    pub(super) fn enqueue_one(
        &self,
        session: &Session,
        st: &mut SessionState,
        d: Delivery,
    ) -> bool {
        let (enqueued, _) = session.enqueue(st, d, &self.limits, self.journal(), false);
        let queued = !matches!(enqueued, Enqueued::Skipped | Enqueued::Rejected);
        if queued {
            self.note_queued(session, st);
        }
        queued
    }

    /// A message was queued to `session`: a persistent one's cluster record is now behind.
    /// The cluster rewrites only such records (`take_records_behind`), not every session's.
    pub(crate) fn note_queued(&self, session: &Session, st: &mut SessionState) {
        if st.expiry_interval > 0 && !st.record_behind {
            st.record_behind = true;
            self.cluster.record_behind(&session.client_id);
        }
    }
}

/// The message in a PUBLISH another node encoded, published at `published_ms`.
pub(super) fn decode(packet: Bytes, published_ms: u64) -> Result<Message, PeerPacketError> {
    let mut buf = BytesMut::from(&packet[..]);
    let publish = match codec::decode(&mut buf, Version::V5, usize::MAX) {
        Ok(Some(Packet::Publish(p))) => p,
        Ok(Some(_)) => return Err(PeerPacketError::NotAPublish),
        Ok(None) => {
            return Err(PeerPacketError::Malformed(DecodeError::Malformed(
                "incomplete packet",
            )));
        }
        Err(e) => return Err(PeerPacketError::Malformed(e)),
    };
    let topic = publish.topic.clone();
    let message = Message::from_publish(publish, topic, 0);
    message.published_ms.store(published_ms, Ordering::Relaxed);
    Ok(message)
}

//! The cluster seam: how this broker exchanges messages with the other nodes of one broker.
//! The broker knows no cluster protocol; a [`Peers`] implementation (`tessera-cluster`, on
//! NATS) carries what it is given.
//!
//! - Every message a client of this node publishes (and every will) is handed to
//!   [`Peers::forward`] after local routing, as the bytes of an MQTT 5 PUBLISH (the codec is
//!   the wire format between nodes too; its remaining Message Expiry travels in it). `$SYS`
//!   topics stay on their node.
//! - The subscription tree reports every filter entry it gains or loses
//!   ([`Peers::interest`], called under the tree's write lock: it must not block), so the
//!   other side can ask for exactly the messages this node's subscriptions match.
//! - A message from another node comes back through [`BrokerHandle::publish_from_peer`]: it
//!   is routed to this node's sessions and, if retained, stored, but never forwarded again.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

use crate::broker::{Broker, BrokerHandle};
use crate::codec::{self, Packet, Publish, QoS, Version};
use crate::handoff::MovedSession;
use crate::message::{Delivery, Message};
use crate::routing::Origin;
use crate::session::Session;
use crate::subscribe::split_shared;

pub trait Peers: Send + Sync + 'static {
    /// A message published on this node: `packet` is an MQTT 5 PUBLISH. With `ack`, the
    /// publisher's PUBACK / PUBREC waits until the implementation settles that ticket with
    /// [`BrokerHandle::peer_acked`] (exactly once): stored for the other nodes, or not.
    fn forward(&self, topic: &str, retain: bool, packet: Bytes, ack: Option<u64>);
    /// The subscription tree gained (`added`) or lost one entry for `filter`; `group`: of a
    /// shared subscription `$share/<group>/<filter>`, whose messages the cluster gives to one
    /// member overall ([`BrokerHandle::publish_to_group`] on the node it picks).
    fn interest(&self, filter: &str, group: Option<&str>, added: bool);
    /// Settle ticket `ticket` ([`BrokerHandle::peer_acked`]) once every interest reported
    /// before it reaches the other nodes: a SUBACK waits for it, so a message published
    /// anywhere after the SUBACK reaches the subscription.
    fn interest_ticket(&self, ticket: u64);
    /// A client completed CONNECT here at `since`: a connection with its client id on another
    /// node must end (Session taken over; [`BrokerHandle::taken_over_by_peer`] there), and
    /// with `clean_start` its session there too.
    fn connected(&self, client_id: &str, since: SystemTime, clean_start: bool);
    /// The cluster as last seen (for `$SYS/cluster/...` and `/metrics`); must not block.
    fn counts(&self) -> ClusterCounts;
    /// Whether the cluster picks the members of shared groups now; while it cannot (NATS
    /// lost), this node routes to its own members, as when alone. Called per message.
    fn routes_groups(&self) -> bool {
        true
    }
    /// A client is about to open its session here (its CONNECT is authenticated): the
    /// session it has on another node, moved here, unless `clean_start` (which ends it
    /// there). See `handoff.rs`.
    fn claim(
        &self,
        client_id: &str,
        clean_start: bool,
        expiry_interval: u32,
    ) -> Pin<Box<dyn Future<Output = Option<MovedSession>> + Send + 'static>> {
        let _ = (client_id, clean_start, expiry_interval);
        Box::pin(std::future::ready(None))
    }
    /// The session [`Peers::claim`] moved is open here: what was queued for it elsewhere may
    /// be delivered now ([`BrokerHandle::deliver_to`]).
    fn resumed(&self, client_id: &str) {
        let _ = client_id;
    }
    /// A session's subscriptions or presence changed, or it ended (read it with
    /// [`BrokerHandle::session_snapshot`]). Called under the broker's locks: must not block.
    fn session_changed(&self, client_id: &str) {
        let _ = client_id;
    }
}

/// The whole cluster at a glance, from the nodes' heartbeats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterCounts {
    /// Nodes with a recent heartbeat, and every node that ever beat.
    pub nodes_up: u64,
    pub nodes_known: u64,
    /// MQTT connections on the nodes that are up.
    pub clients: u64,
    /// Messages the other nodes did not get because the way to them was full.
    pub forward_dropped: u64,
}

/// Tickets of messages the peers must settle before their publishers are acknowledged, in
/// the shape of the journal's: `done` is the highest ticket below which every one is settled.
#[derive(Default)]
pub(crate) struct PeerAcks {
    state: Mutex<PeerAckState>,
}

#[derive(Default)]
struct PeerAckState {
    /// The last ticket issued.
    last: u64,
    outstanding: BTreeSet<u64>,
    /// Settled as not stored (the latest `FAILED_KEPT`).
    failed: BTreeSet<u64>,
    waiters: Vec<(u64, Arc<Session>)>,
}

const FAILED_KEPT: usize = 4096;

impl PeerAckState {
    /// Every ticket up to this one is settled.
    fn done(&self) -> u64 {
        self.outstanding
            .first()
            .map_or(self.last, |first| first - 1)
    }
}

impl PeerAcks {
    fn issue(&self) -> u64 {
        let mut s = self.state.lock();
        s.last += 1;
        let t = s.last;
        s.outstanding.insert(t);
        t
    }

    pub(crate) fn done(&self) -> u64 {
        self.state.lock().done()
    }

    /// Whether ticket `t` (done) was stored by the peers.
    pub(crate) fn stored(&self, t: u64) -> bool {
        !self.state.lock().failed.contains(&t)
    }

    /// Wakes `session` once ticket `t` is done.
    pub(crate) fn wake_after(&self, t: u64, session: &Arc<Session>) {
        let mut s = self.state.lock();
        if s.done() >= t {
            drop(s);
            session.notify.notify_one();
            return;
        }
        s.waiters.push((t, session.clone()));
    }

    fn settle(&self, t: u64, stored: bool) {
        let mut s = self.state.lock();
        if !s.outstanding.remove(&t) {
            return;
        }
        if !stored {
            s.failed.insert(t);
            while s.failed.len() > FAILED_KEPT {
                s.failed.pop_first();
            }
        }
        let done = s.done();
        let (ready, waiting): (Vec<_>, Vec<_>) = s.waiters.drain(..).partition(|(w, _)| *w <= done);
        s.waiters = waiting;
        drop(s);
        for (_, session) in ready {
            session.notify.notify_one();
        }
    }
}

impl Broker {
    /// Hands messages published on this node to the other nodes; returns the ticket the
    /// publisher's acknowledgement waits for (QoS 1 and 2 messages).
    pub(crate) fn forward(&self, messages: &[Arc<Message>]) -> Option<u64> {
        let peers = self.peers.get()?;
        let now = std::time::Instant::now();
        let mut last = None;
        for m in messages
            .iter()
            .filter(|m| !m.topic.as_str().starts_with('$'))
        {
            let mut properties = m.properties().clone();
            properties.message_expiry_interval = m.remaining_expiry(now);
            let packet = Packet::Publish(Publish {
                dup: false,
                qos: m.qos,
                retain: m.retain,
                topic: m.topic.clone(),
                packet_id: (m.qos != QoS::AtMostOnce).then_some(1),
                properties,
                payload: m.payload.clone(),
            });
            let mut buf = BytesMut::with_capacity(m.payload.len() + m.topic.len() + 16);
            codec::encode(&packet, Version::V5, &mut buf);
            let ack = (m.qos != QoS::AtMostOnce).then(|| self.peer_acks.issue());
            last = last.max(ack);
            peers.forward(m.topic.as_str(), m.retain, buf.freeze(), ack);
        }
        last
    }

    /// Asks the peers for the session `client_id` may have on another node.
    pub(crate) async fn claim(
        &self,
        client_id: &str,
        clean_start: bool,
        expiry_interval: u32,
    ) -> Option<MovedSession> {
        let peers = self.peers.get()?;
        peers.claim(client_id, clean_start, expiry_interval).await
    }

    /// Tells the peers a moved session is open here.
    pub(crate) fn resumed(&self, client_id: &str) {
        if let Some(peers) = self.peers.get() {
            peers.resumed(client_id);
        }
    }

    /// Tells the peers a client connected here.
    pub(crate) fn connected_here(&self, client_id: &str, since: SystemTime, clean_start: bool) {
        if let Some(peers) = self.peers.get() {
            peers.connected(client_id, since, clean_start);
        }
    }

    /// A ticket the peers settle once the interest reported so far reached them (`None`
    /// without peers).
    pub(crate) fn interest_ticket(&self) -> Option<u64> {
        let peers = self.peers.get()?;
        let t = self.peer_acks.issue();
        peers.interest_ticket(t);
        Some(t)
    }

    /// Tells the peers about a tree entry gained or lost.
    pub(crate) fn interest(&self, filter: &str, group: Option<&str>, added: bool) {
        if let Some(peers) = self.peers.get() {
            peers.interest(filter, group, added);
        }
    }
}

/// Why a PUBLISH from another node was not routed.
#[derive(Debug)]
pub struct PeerPacketError(pub String);

impl Broker {
    /// The cluster's counts, when this broker is one of its nodes.
    pub(crate) fn cluster_counts(&self) -> Option<ClusterCounts> {
        self.peers.get().map(|p| p.counts())
    }
}

impl BrokerHandle {
    /// The cluster's counts, when this broker is one of its nodes.
    pub fn cluster_counts(&self) -> Option<ClusterCounts> {
        self.0.cluster_counts()
    }

    /// Connects this broker to its peers. Every filter already in the tree (subscriptions
    /// restored from the store) is reported first, under the tree's lock, so no entry is
    /// missed or counted twice. Returns false if peers were already set.
    pub fn set_peers(&self, peers: Arc<dyn Peers>) -> bool {
        let b = &self.0;
        let _tree = b.subscriptions.write();
        if b.peers.set(peers.clone()).is_err() {
            return false;
        }
        let sessions: Vec<_> = b.sessions.lock().values().cloned().collect();
        for s in sessions {
            let st = s.state.lock();
            for filter in st.subscriptions.keys() {
                let (group, inner) = split_shared(filter);
                peers.interest(inner, group, true);
            }
        }
        true
    }

    /// A client connected on another node at `since`: this node's connections with that
    /// client id that are older end with 0x8E (the newest connection wins, as on one node).
    /// Its session here stays as its expiry says. Returns how many connections were told.
    pub fn taken_over_by_peer(&self, client_id: &str, since: SystemTime) -> usize {
        self.disconnect_where(
            |c| &*c.client_id == client_id && c.since < since,
            crate::codec::ReasonCode::SESSION_TAKEN_OVER,
            "another connection took over this session (on another node)",
        )
    }

    /// Settles ticket `t` of [`Peers::forward`]: the message was stored for the other nodes
    /// (`stored`), or could not be (its publisher gets 0x80).
    pub fn peer_acked(&self, t: u64, stored: bool) {
        self.0.peer_acks.settle(t, stored);
    }

    /// Keeps a retained message another node published, without routing it (the cluster's
    /// state a node takes when it starts): as its retained value, or, empty, none.
    pub fn retain_from_peer(&self, packet: Bytes) -> Result<(), PeerPacketError> {
        let message = decode_peer(packet)?;
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
        let message = Arc::new(decode_peer(packet)?);
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

    /// Routes a message another node forwarded (the bytes [`Peers::forward`] was given there).
    /// `published_ms`: when it was published (the stream's time), 0 if not known.
    pub fn publish_from_peer(
        &self,
        packet: Bytes,
        published_ms: u64,
    ) -> Result<(), PeerPacketError> {
        let message = Arc::new(decode_peer(packet)?);
        message
            .published_ms
            .store(published_ms, std::sync::atomic::Ordering::Relaxed);
        self.0.publish_from(message, Origin::Peer);
        Ok(())
    }
}

/// The message in a PUBLISH another node encoded.
pub(crate) fn decode_peer(packet: Bytes) -> Result<Message, PeerPacketError> {
    let mut buf = BytesMut::from(&packet[..]);
    let publish = match codec::decode(&mut buf, Version::V5, usize::MAX) {
        Ok(Some(Packet::Publish(p))) => p,
        Ok(_) => return Err(PeerPacketError("not a PUBLISH".into())),
        Err(e) => return Err(PeerPacketError(format!("{e:?}"))),
    };
    let topic = publish.topic.clone();
    Ok(Message::from_publish(publish, topic, 0))
}

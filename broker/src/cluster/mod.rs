//! The cluster's edge: all of the engine's side of a cluster, in this folder, as the storage
//! seam is in `store/`. The engine knows no cluster protocol; a [`Peers`] implementation
//! (`tessera-cluster`, on NATS) carries what it is given, and [`PeerHandle`] is its one way
//! back in.
//!
//! - Out, through the broker's one field [`Cluster`]: every message a client of this node
//!   publishes (and every will) after local routing, as the bytes of an MQTT 5 PUBLISH
//!   ([`Peers::forward`]; the codec is the wire format between nodes, its remaining Message
//!   Expiry travels in it; `$` topics stay on their node); what the other nodes must know, as
//!   [`Event`]s (filter entries gained and lost, CONNECTs, sessions changed); and, before a
//!   session opens here, the session its client has elsewhere ([`Peers::claim`]).
//! - Waits: a QoS 1/2 PUBACK / PUBREC waits until the message is stored for the other nodes,
//!   and in a cluster a SUBACK until the other nodes route the subscription's messages here.
//!   Both are [`Tickets`] of the cluster, which [`PeerHandle::settle`] settles: the same
//!   mechanism as the journal's batches (`connection/acks.rs` waits for both).
//! - In, through [`PeerHandle`] (`inbound.rs`): messages from other nodes (routed here, never
//!   forwarded again), shared groups' messages (one member here), retained values, takeovers.
//! - A persistent session moving between nodes (`sessions.rs`): its snapshot for the
//!   cluster's record, releasing it here, opening it there, the replay of its messages.
//! - [`RecordingPeers`] (`recording.rs`): a fake that records what the engine says, for
//!   in-process tests of all of the above.
//!
//! Without a cluster, every call on [`Cluster`] is one load of an empty `OnceLock`.

mod inbound;
mod recording;
mod sessions;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Waker;
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};

use crate::auth::BoxFuture;
use crate::codec::{self, Packet, Publish, QoS, Version};
pub use crate::message::ClusterId;
use crate::message::Message;
use crate::tickets::Tickets;

pub use inbound::{PeerHandle, PeerPacketError};
pub use recording::{Recorded, RecordingPeers};
pub use sessions::{Carried, CarriedEntry, MovedSession, SessionSnapshot};

/// The other nodes of one broker, as the engine sees them. Every method is called on the
/// engine's paths, some under its locks: none may block.
pub trait Peers: Send + Sync + 'static {
    /// A message published on this node; `packet` is an MQTT 5 PUBLISH, `seq` its number
    /// here ([`ClusterId::seq`], in the order routed). With `ticket`, the publisher's
    /// PUBACK / PUBREC waits until the implementation settles it ([`PeerHandle::settle`],
    /// exactly once): stored for the other nodes, or not.
    fn forward(&self, topic: &str, retain: bool, packet: Bytes, ticket: Option<u64>, seq: u64);
    /// Something the other nodes must learn (see [`Event`]).
    fn event(&self, event: Event<'_>);
    /// A client is about to open its session here (its CONNECT is authenticated): the
    /// session it has on another node, moved here, unless `clean_start` (which ends it
    /// there). See `sessions.rs`.
    fn claim(
        &self,
        client_id: &str,
        clean_start: bool,
        expiry_interval: u32,
    ) -> BoxFuture<'static, Option<MovedSession>>;
    /// The cluster as last seen (for `$SYS/cluster/...` and `/metrics`).
    fn counts(&self) -> ClusterCounts;
}

/// What the engine tells the other nodes besides messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// The subscription tree gained (`added`) or lost one entry for `filter`, so the other
    /// nodes send this one exactly what its subscriptions match; `group`: of a shared
    /// subscription `$share/<group>/<filter>`, whose messages the cluster gives to one member
    /// overall ([`PeerHandle::publish_to_group`] on the node it picks). Reported under the
    /// tree's write lock, so the interest the other nodes see is the tree's.
    Interest {
        filter: &'a str,
        group: Option<&'a str>,
        added: bool,
    },
    /// Settle this ticket once every `Interest` reported before it reaches the other nodes:
    /// a SUBACK waits for it, so a message published anywhere after the SUBACK reaches the
    /// subscription.
    InterestTicket(u64),
    /// A client completed CONNECT here at `since`: a connection with its client id on another
    /// node must end (Session taken over, [`PeerHandle::taken_over`] there), and with
    /// `clean_start` its session there too.
    Connected {
        client_id: &'a str,
        since: SystemTime,
        clean_start: bool,
    },
    /// The session [`Peers::claim`] moved here is open: what was queued for it elsewhere may
    /// be delivered now ([`PeerHandle::deliver_to`]).
    Resumed { client_id: &'a str },
    /// A session's subscriptions or presence changed, or it ended (read it with
    /// [`PeerHandle::session_snapshot`]).
    SessionChanged { client_id: &'a str },
    /// A QoS 2 message to or from a persistent session's client changed state under
    /// `packet_id` (see [`Qos2Step`]): the other nodes must know it before the packet that
    /// follows leaves, so the node that opens the session if this one dies sends that message
    /// again under the same identifier, or only its PUBREL, or nothing, and takes a resend of
    /// the client's own message for what it is. With a `ticket` (not 0), the PUBLISH
    /// or PUBREL waits until the implementation settles it ([`PeerHandle::settle`]). Reported
    /// under the session's lock, in the order of the session's changes.
    Qos2 {
        client_id: &'a str,
        packet_id: u16,
        step: Qos2Step,
        ticket: u64,
    },
    /// The will `client_id`'s session has here now, `None` once there is none (published,
    /// discarded, or the connection had none): the other nodes publish it if this node dies
    /// before it does (`PeerHandle::publish_will` there). Reported under the session's lock,
    /// so the events of one client id come in the order of its changes.
    Will {
        client_id: &'a str,
        will: Option<ClusterWill<'a>>,
    },
}

/// What happened to a QoS 2 message on its way to a persistent session's client, or from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos2Step {
    /// About to be sent (PUBLISH) under the identifier: `id` names it in the cluster,
    /// `published_ms` is when it was published (ms since the epoch), as the session's floor
    /// counts it.
    Sent { id: ClusterId, published_ms: u64 },
    /// The client received it (PUBREC); PUBREL is about to be sent.
    Released,
    /// Done: the client completed it (PUBCOMP), refused it, or it was dropped as too large.
    Completed,
    /// The other way: the client's own QoS 2 message under the identifier is stored; PUBREC
    /// is about to be sent (a resend of it with this identifier is not published again).
    ClientPublished,
    /// The client released its message under the identifier (PUBREL); PUBCOMP is about to be
    /// sent, after which the client may use the identifier for a new message.
    ClientReleased,
}

/// A will as the other nodes keep it while its connection's node is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterWill<'a> {
    /// The will as an MQTT 5 PUBLISH (the bytes [`Peers::forward`] would be given).
    pub packet: &'a [u8],
    /// Seconds it waits after its connection is gone: the smaller of its Will Delay and the
    /// session's expiry.
    pub delay: u32,
    /// When its connection went; `None` while it is attached.
    pub lost_at: Option<SystemTime>,
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

/// The broker's one field for the cluster: the peers once connected, the tickets its
/// acknowledgements wait for, and whether the cluster picks shared groups' members now.
pub(crate) struct Cluster {
    peers: OnceLock<Arc<dyn Peers>>,
    /// Messages being stored for the other nodes, SUBACKs waiting for the interest to reach
    /// them. Failure carries nothing: the publisher is told the cluster could not store it.
    tickets: Tickets<()>,
    /// False while the cluster cannot pick a shared group's member (NATS lost): this node
    /// routes to its own members, as when alone.
    groups_across_nodes: AtomicBool,
    /// The stream sequence through which the other nodes' QoS 1/2 messages are routed here
    /// (moved under the subscription tree's read lock; journaled by
    /// [`PeerHandle::routed_through`], loaded at start).
    peers_routed: Arc<AtomicU64>,
    /// The number the next message a client publishes here gets (`ClusterId::seq`).
    next_seq: AtomicU64,
    /// Persistent sessions that had a message queued since their record was last written:
    /// only these have a floor to move on (`PeerHandle::take_records_behind`).
    records_behind: parking_lot::Mutex<Vec<Arc<str>>>,
}

/// Where a session's move cut the cluster's messages (read under the subscription tree's
/// write lock as the session leaves): every message of the QoS 1/2 stream through
/// `peers_routed`, and every message of this node numbered below `next_seq`, was routed to
/// the session before it left, and none after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cut {
    pub peers_routed: u64,
    pub next_seq: u64,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            peers: OnceLock::new(),
            tickets: Tickets::default(),
            groups_across_nodes: AtomicBool::new(true),
            peers_routed: Arc::default(),
            next_seq: AtomicU64::new(1),
            records_behind: Default::default(),
        }
    }
}

impl Cluster {
    fn peers(&self) -> Option<&Arc<dyn Peers>> {
        self.peers.get()
    }

    /// Hands messages published on this node to the other nodes; returns the ticket the
    /// publisher's acknowledgement waits for (QoS 1 and 2 messages), 0 for none.
    pub(crate) fn forward(&self, messages: &[Arc<Message>]) -> u64 {
        let Some(peers) = self.peers() else {
            return 0;
        };
        let now = Instant::now();
        let mut last = 0;
        for m in messages
            .iter()
            .filter(|m| !m.topic.as_str().starts_with('$'))
        {
            let ticket = (m.qos != QoS::AtMostOnce).then(|| self.tickets.issue());
            last = last.max(ticket.unwrap_or(0));
            let seq = m.cluster_id.get().map_or(0, |id| id.seq);
            peers.forward(m.topic.as_str(), m.retain, encode(m, now), ticket, seq);
        }
        last
    }

    /// Tells the other nodes about a tree entry gained or lost (under the tree's write lock).
    pub(crate) fn interest(&self, filter: &str, group: Option<&str>, added: bool) {
        if let Some(peers) = self.peers() {
            peers.event(Event::Interest {
                filter,
                group,
                added,
            });
        }
    }

    /// A ticket settled once the interest reported so far reached the other nodes; 0 without
    /// peers.
    pub(crate) fn interest_ticket(&self) -> u64 {
        let Some(peers) = self.peers() else {
            return 0;
        };
        let t = self.tickets.issue();
        peers.event(Event::InterestTicket(t));
        t
    }

    pub(crate) fn connected(&self, client_id: &str, since: SystemTime, clean_start: bool) {
        if let Some(peers) = self.peers() {
            peers.event(Event::Connected {
                client_id,
                since,
                clean_start,
            });
        }
    }

    pub(crate) fn resumed(&self, client_id: &str) {
        if let Some(peers) = self.peers() {
            peers.event(Event::Resumed { client_id });
        }
    }

    /// The session's will now (see [`Event::Will`]); call it under the session's lock.
    pub(crate) fn will(
        &self,
        client_id: &str,
        will: Option<&Message>,
        delay: u32,
        lost_at: Option<SystemTime>,
    ) {
        let Some(peers) = self.peers() else {
            return;
        };
        // `$` topics stay on their node, wills too.
        let will = will.filter(|w| !w.topic.as_str().starts_with('$'));
        let packet = will.map(|w| encode(w, Instant::now()));
        peers.event(Event::Will {
            client_id,
            will: packet.as_deref().map(|packet| ClusterWill {
                packet,
                delay,
                lost_at,
            }),
        });
    }

    /// Tells the other nodes of a QoS 2 step of a persistent session's message (see
    /// [`Event::Qos2`]); call it under the session's lock. Returns the ticket the packet that
    /// follows waits for (`wait`), 0 for none or without peers.
    pub(crate) fn qos2(&self, client_id: &str, packet_id: u16, step: Qos2Step, wait: bool) -> u64 {
        let Some(peers) = self.peers() else {
            return 0;
        };
        let ticket = if wait { self.tickets.issue() } else { 0 };
        peers.event(Event::Qos2 {
            client_id,
            packet_id,
            step,
            ticket,
        });
        ticket
    }

    /// `client_id`'s record is behind (see `records_behind`). Once per session between two
    /// reads of it: `SessionState::record_behind` guards the call.
    pub(crate) fn record_behind(&self, client_id: &Arc<str>) {
        if self.peers().is_some() {
            self.records_behind.lock().push(client_id.clone());
        }
    }

    pub(crate) fn take_records_behind(&self) -> Vec<Arc<str>> {
        std::mem::take(&mut *self.records_behind.lock())
    }

    pub(crate) fn session_changed(&self, client_id: &str) {
        if let Some(peers) = self.peers() {
            peers.event(Event::SessionChanged { client_id });
        }
    }

    /// The session `client_id` may have on another node, moved here.
    pub(crate) async fn claim(
        &self,
        client_id: &str,
        clean_start: bool,
        expiry_interval: u32,
    ) -> Option<MovedSession> {
        let peers = self.peers()?;
        peers.claim(client_id, clean_start, expiry_interval).await
    }

    /// Whether routing a message to `topic` here gives shared groups their member. In a
    /// cluster a group spans the nodes and its member is picked between them
    /// ([`PeerHandle::publish_to_group`]), so routing leaves groups out; `$` topics stay on
    /// their node, and with them their groups; without NATS, groups are this node's alone.
    pub(crate) fn routes_groups_here(&self, topic: &str) -> bool {
        self.peers().is_none()
            || topic.starts_with('$')
            || !self.groups_across_nodes.load(Ordering::Relaxed)
    }

    /// Numbers a client's messages for the other nodes (under the tree's read lock, before
    /// routing); `$` topics stay here unnumbered.
    pub(crate) fn number(&self, messages: &[Arc<Message>]) {
        if self.peers().is_none() {
            return;
        }
        for m in messages {
            if !m.topic.as_str().starts_with('$') {
                m.cluster_id.get_or_init(|| ClusterId {
                    origin: 0,
                    seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
                    stream_seq: 0,
                });
            }
        }
    }

    /// Messages from the QoS 1/2 stream reached their sessions (under the tree's read lock).
    pub(crate) fn routed_from_stream(&self, messages: &[Arc<Message>]) {
        let last = messages
            .iter()
            .filter_map(|m| m.cluster_id.get())
            .map(|id| id.stream_seq)
            .max();
        if let Some(seq) = last.filter(|s| *s > 0) {
            // Release: the journal's writer reads it before taking records (see there).
            self.peers_routed.fetch_max(seq, Ordering::Release);
        }
    }

    /// See [`Cut`]; under the tree's write lock.
    pub(crate) fn cut(&self) -> Cut {
        Cut {
            peers_routed: self.peers_routed.load(Ordering::Relaxed),
            next_seq: self.next_seq.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn peers_routed(&self) -> u64 {
        self.peers_routed.load(Ordering::Relaxed)
    }

    pub(crate) fn restore_peers_routed(&self, seq: u64) {
        self.peers_routed.store(seq, Ordering::Release);
    }

    /// The position, for the journal to write with its batches.
    pub(crate) fn peers_routed_position(&self) -> Arc<AtomicU64> {
        self.peers_routed.clone()
    }

    pub(crate) fn counts(&self) -> Option<ClusterCounts> {
        self.peers().map(|p| p.counts())
    }

    /// Every ticket up to this one is settled.
    pub(crate) fn done(&self) -> u64 {
        self.tickets.done()
    }

    /// Whether ticket `t` (done) was kept: the message stored for the other nodes.
    pub(crate) fn kept(&self, t: u64) -> bool {
        self.tickets.outcome(t).is_ok()
    }

    pub(crate) fn wake_after(&self, t: u64, waker: &Waker) {
        self.tickets.wake_after(t, waker);
    }
}

/// A message as the other nodes get it: an MQTT 5 PUBLISH with its remaining expiry.
pub(crate) fn encode(m: &Message, now: Instant) -> Bytes {
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
    buf.freeze()
}

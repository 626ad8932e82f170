//! The broker's `Peers` seam on NATS: [`NatsPeers`] takes what the engine says and hands each
//! kind to the task that owns it; [`connect`] opens the streams and starts those tasks, one
//! file each:
//!
//! | what the engine says | goes to | file |
//! |---|---|---|
//! | `forward` (a message) | the publishing task | `outbound.rs` |
//! | `Interest`, `InterestTicket` | the interest task | `interest.rs` |
//! | `Connected` | the publishing task, as a takeover | `takeover.rs` |
//! | `claim`, `Resumed`, `SessionChanged` | the session records | `sessions.rs` |
//! | `Will` | the will records | `wills.rs` |
//!
//! and back into the engine through its `PeerHandle`: messages from core NATS (`inbound.rs`),
//! from the QoS 1/2 stream (`qos.rs`), retained values (`retained.rs`), shared groups
//! (`shared.rs`), takeovers, and the cluster's counts from the heartbeats (`nodes.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tessera_broker::auth::BoxFuture;
use tessera_broker::cluster::{ClusterCounts, Event, MovedSession, PeerHandle, Peers};
use tokio::sync::mpsc;

use crate::frame::{Frame, Takeover};
use crate::interest::Interest;
use crate::outbound::Out;
use crate::sessions::{Position, Sessions};
use crate::subjects::topic_subject;
use crate::wills::Wills;
use crate::{ClusterError, Nats};

pub struct NatsPeers {
    out: mpsc::Sender<Out>,
    broker: PeerHandle,
    interest: mpsc::UnboundedSender<Interest>,
    /// Persistent sessions' records and moves (`sessions.rs`).
    sessions: Arc<Sessions>,
    /// Wills where every node sees them (`wills.rs`).
    pub(crate) wills: Arc<Wills>,
    subjects: Subjects,
    /// This process's random id: its messages carry it, so it can drop its own.
    origin: u64,
    seq: AtomicU64,
    /// Messages the other nodes did not get because the queue to NATS was full.
    dropped: AtomicU64,
    /// From the heartbeats (`nodes.rs`).
    pub(crate) counts: Counts,
}

/// The subjects this node publishes on.
struct Subjects {
    /// `<prefix>.m`: QoS 0 messages, on core NATS.
    messages: String,
    /// `<prefix>.q`: QoS 1/2 messages, into the stream.
    durable: String,
    /// `<prefix>.r`: retained messages, into the retained stream.
    retained: String,
    /// `<prefix>.takeover`: a client id connected on some node, and when.
    takeover: String,
}

#[derive(Default)]
pub(crate) struct Counts {
    pub nodes_up: AtomicU64,
    pub nodes_known: AtomicU64,
    pub clients: AtomicU64,
}

impl Peers for NatsPeers {
    fn forward(&self, topic: &str, retain: bool, packet: Bytes, ticket: Option<u64>, seq: u64) {
        let base = match (retain, ticket) {
            (true, _) => &self.subjects.retained,
            (false, Some(_)) => &self.subjects.durable,
            (false, None) => &self.subjects.messages,
        };
        // The broker numbers its messages; one it did not (it was joining) gets a number of
        // another range, so the other nodes do not take it for a copy.
        let seq = match seq {
            0 => self.seq.fetch_add(1, Ordering::Relaxed) | 1 << 63,
            seq => seq,
        };
        let frame = Frame {
            origin: self.origin,
            seq,
        }
        .wrap(&packet);
        let subject = topic_subject(base, topic);
        let out = match ticket {
            Some(t) => Out::Durable(subject, frame, t),
            None => Out::Core(subject, frame),
        };
        if let Err(e) = self.out.try_send(out) {
            if let Out::Durable(_, _, t) = e.into_inner() {
                // Its publisher is told (0x80), not left believing it was stored.
                self.broker.settle(t, false);
            }
            if self
                .dropped
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(10_000)
            {
                tracing::warn!(
                    "the queue to NATS is full: messages for other nodes are being refused"
                );
            }
        }
    }

    fn event(&self, event: Event<'_>) {
        match event {
            Event::Interest {
                filter,
                group,
                added,
            } => {
                let _ = self.interest.send(Interest::Changed(
                    filter.to_string(),
                    group.map(str::to_string),
                    added,
                ));
            }
            Event::InterestTicket(ticket) => {
                if self.interest.send(Interest::Settle(ticket)).is_err() {
                    self.broker.settle(ticket, true);
                }
            }
            Event::Connected {
                client_id,
                since,
                clean_start,
            } => {
                let takeover = Takeover {
                    origin: self.origin,
                    since,
                    clean_start,
                    client_id: client_id.to_string(),
                };
                let _ = self
                    .out
                    .try_send(Out::Core(self.subjects.takeover.clone(), takeover.encode()));
            }
            Event::Resumed { client_id } => self.sessions.resumed(client_id),
            Event::SessionChanged { client_id } => self.sessions.changed(client_id),
            Event::Qos2 {
                client_id,
                packet_id,
                step,
                ticket,
            } => self.sessions.qos2(client_id, packet_id, step, ticket),
            Event::Will { client_id, will } => self.wills.changed(
                client_id,
                will.map(|w| {
                    let lost_at = w.lost_at.map(crate::sessions::ms);
                    (Bytes::copy_from_slice(w.packet), w.delay, lost_at)
                }),
            ),
        }
    }

    fn claim(
        &self,
        client_id: &str,
        clean_start: bool,
        expiry_interval: u32,
    ) -> BoxFuture<'static, Option<MovedSession>> {
        Box::pin(
            self.sessions
                .clone()
                .claim(client_id.to_string(), clean_start, expiry_interval),
        )
    }

    fn counts(&self) -> ClusterCounts {
        ClusterCounts {
            nodes_up: self.counts.nodes_up.load(Ordering::Relaxed),
            nodes_known: self.counts.nodes_known.load(Ordering::Relaxed),
            clients: self.counts.clients.load(Ordering::Relaxed),
            forward_dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Joins `broker` to the other nodes: opens the streams, starts every task, and gives the
/// broker its peers (reporting the subscriptions restored from its store first; only then
/// does the QoS 1/2 consumer start reading). Blocking: call it off the runtime.
pub fn connect(nats: Arc<Nats>, broker: PeerHandle) -> Result<Arc<NatsPeers>, ClusterError> {
    crate::qos::open_stream(&nats)?;
    crate::retained::open_stream(&nats)?;
    let mut origin = [0u8; 8];
    let _ = getrandom::fill(&mut origin);
    let origin = u64::from_be_bytes(origin);
    let position = Arc::new(Position::default());
    let (interest, interest_rx) = mpsc::unbounded_channel();
    let sessions = Sessions::start(
        nats.clone(),
        broker.clone(),
        position.clone(),
        interest.clone(),
        origin,
    )?;
    let boot = format!("{origin:016x}");
    let wills = Wills::start(nats.clone(), broker.clone(), sessions.clone(), boot.clone())?;
    let out = crate::outbound::spawn(&nats, broker.clone());
    let peers = Arc::new(NatsPeers {
        out,
        broker: broker.clone(),
        interest: interest.clone(),
        sessions,
        wills: wills.clone(),
        subjects: Subjects {
            messages: nats.subject("m"),
            durable: nats.subject("q"),
            retained: nats.subject("r"),
            takeover: nats.subject("takeover"),
        },
        origin,
        seq: AtomicU64::new(1),
        dropped: AtomicU64::new(0),
        counts: Counts::default(),
    });
    let inbound = crate::inbound::spawn(&nats, broker.clone(), origin);
    let filters = crate::interest::spawn(&nats, broker.clone(), interest_rx, inbound, &position);
    crate::qos::spawn_consumer(&nats, broker.clone(), origin, filters, position);
    crate::retained::spawn_follower(&nats, broker.clone(), origin);
    crate::takeover::spawn_follower(&nats, broker.clone(), origin);
    crate::nodes::spawn_heartbeat(&nats, broker.clone(), peers.clone(), boot);
    follow_connection(&nats, broker.clone());
    broker.join(peers.clone());
    let _ = interest.send(Interest::Restored);
    // Joined: a will left by this node's previous run is published to every node.
    wills.claim_left_behind();
    Ok(peers)
}

/// Tells the broker when NATS is lost and back: without it the cluster cannot pick a shared
/// group's member, and this node routes to its own.
fn follow_connection(nats: &Nats, broker: PeerHandle) {
    let mut connected = nats.connected.clone();
    nats.spawn(async move {
        let mut was = true;
        loop {
            let now = *connected.borrow_and_update();
            broker.set_groups_across_nodes(now);
            // Logged once it is so: an operator (or a test) reading it may rely on it.
            if was && !now {
                tracing::warn!(
                    "NATS connection lost: serving this node's clients alone until it is back"
                );
            }
            was = now;
            if connected.changed().await.is_err() {
                return;
            }
        }
    });
}

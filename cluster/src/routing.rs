//! Messages between nodes over core NATS: the broker's `Peers` seam on NATS subjects
//! (`subjects.rs`).
//!
//! - Out: each message this node's clients publish goes to `<prefix>.m.<topic>` (retained
//!   ones to `<prefix>.r.<topic>`), framed as this process's origin id and a sequence number
//!   (8 + 8 bytes) before the MQTT 5 PUBLISH the broker encoded. A bounded queue feeds one
//!   publishing task; when NATS cannot keep up the message is dropped for the other nodes
//!   (counted, logged) rather than stalling the publisher.
//! - Interest: the node subscribes to the subjects of exactly the filters its sessions hold
//!   (a count per filter: the first entry subscribes, the last one gone unsubscribes).
//!   Retained messages go to `<prefix>.r.<topic>`, kept by the retained stream
//!   (`retained.rs`), which every node follows; QoS 1/2 ones to `<prefix>.q.<topic>` (`qos.rs`).
//! - Takeover: a CONNECT on any node is announced on `<prefix>.takeover` (origin, time in
//!   nanoseconds, Clean Start, client id); every other node ends its older connections with
//!   that client id (0x8E), so one connection per client id holds across nodes as it does on
//!   one, and with Clean Start its session there too. Persistent sessions move between nodes
//!   through `sessions.rs`; shared subscriptions take their messages through `shared.rs`.
//! - In: one task takes every subscription's messages in arrival order, drops this process's
//!   own and any copy it already routed (overlapping filters each get one from NATS), and
//!   routes the rest with `publish_from_peer`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tessera_broker::{BrokerHandle, ClusterCounts, MovedSession, Peers};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::Nats;
use crate::qos::consumer_filters;
use crate::sessions::{Position, Sessions};
use crate::subjects::{filter_subjects, topic_subject};

/// Messages waiting for the publishing task.
const OUT_QUEUE: usize = 65_536;
/// Sequence numbers remembered per origin for dropping duplicate copies.
const REMEMBERED: usize = 65_536;

/// A filter (or a group's filter) followed on NATS: its entries here, and the tasks taking
/// its messages.
type Followed = (usize, Vec<JoinHandle<()>>);

/// What the interest task is told.
enum Interest {
    /// A filter entry gained (`true`) or lost, with its shared subscription's group.
    Changed(String, Option<String>, bool),
    /// Every subscription restored from the store has been reported.
    Restored,
    /// Answer with the generation of consumer filters that includes every change so far.
    Sync(oneshot::Sender<u64>),
    /// Settle this ticket of the broker's once the consumer reads with every change so far
    /// (core NATS subscriptions are made, and flushed, as each change is taken).
    Settle(u64),
}

/// What the publishing task sends.
enum Out {
    /// On core NATS, at most once.
    Core(String, Bytes),
    /// Into the QoS 1/2 stream; the ticket is settled with JetStream's answer.
    Durable(String, Bytes, u64),
}

pub struct NatsPeers {
    out: mpsc::Sender<Out>,
    /// `Nats::connected`.
    connected: Arc<std::sync::atomic::AtomicBool>,
    broker: BrokerHandle,
    /// `<prefix>.q`: QoS 1/2 messages, into the stream.
    durable: String,
    interest: mpsc::UnboundedSender<Interest>,
    /// Persistent sessions' records and moves (`sessions.rs`).
    sessions: Arc<Sessions>,
    messages: String,
    retained: String,
    /// `<prefix>.takeover`: a client id connected on some node, and when.
    takeover: String,
    origin: u64,
    seq: AtomicU64,
    /// Messages the other nodes did not get because the queue to NATS was full.
    pub dropped: AtomicU64,
    /// From the heartbeats, refreshed every `COUNTS_EVERY`.
    nodes_up: AtomicU64,
    nodes_known: AtomicU64,
    clients: AtomicU64,
}

/// How long a SUBACK waits for the other nodes to route the subscription's messages here.
const SETTLE_WITHIN: Duration = Duration::from_secs(2);

/// How often the cluster's counts are read from the heartbeats.
const COUNTS_EVERY: Duration = Duration::from_secs(2);

impl Peers for NatsPeers {
    fn forward(&self, topic: &str, retain: bool, packet: Bytes, ack: Option<u64>) {
        let base = match (retain, ack) {
            (true, _) => &self.retained,
            (false, Some(_)) => &self.durable,
            (false, None) => &self.messages,
        };
        let subject = topic_subject(base, topic);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut frame = BytesMut::with_capacity(16 + packet.len());
        frame.extend_from_slice(&self.origin.to_be_bytes());
        frame.extend_from_slice(&seq.to_be_bytes());
        frame.extend_from_slice(&packet);
        let out = match ack {
            Some(t) => Out::Durable(subject, frame.freeze(), t),
            None => Out::Core(subject, frame.freeze()),
        };
        if let Err(e) = self.out.try_send(out) {
            if let Out::Durable(_, _, t) = e.into_inner() {
                // Its publisher is told (0x80), not left believing it was stored.
                self.broker.peer_acked(t, false);
            }
            if self
                .dropped
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(10_000)
            {
                warn!("the queue to NATS is full: messages for other nodes are being refused");
            }
        }
    }

    fn interest(&self, filter: &str, group: Option<&str>, added: bool) {
        let _ = self.interest.send(Interest::Changed(
            filter.to_string(),
            group.map(str::to_string),
            added,
        ));
    }

    fn connected(&self, client_id: &str, since: SystemTime, clean_start: bool) {
        // Nanoseconds: an older connection on another node must compare as older.
        let ns = since
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut frame = BytesMut::with_capacity(17 + client_id.len());
        frame.extend_from_slice(&self.origin.to_be_bytes());
        frame.extend_from_slice(&ns.to_be_bytes());
        frame.extend_from_slice(&[clean_start as u8]);
        frame.extend_from_slice(client_id.as_bytes());
        let _ = self
            .out
            .try_send(Out::Core(self.takeover.clone(), frame.freeze()));
    }

    fn counts(&self) -> ClusterCounts {
        ClusterCounts {
            nodes_up: self.nodes_up.load(Ordering::Relaxed),
            nodes_known: self.nodes_known.load(Ordering::Relaxed),
            clients: self.clients.load(Ordering::Relaxed),
            forward_dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    fn routes_groups(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn claim(
        &self,
        client_id: &str,
        clean_start: bool,
        expiry_interval: u32,
    ) -> Pin<Box<dyn Future<Output = Option<MovedSession>> + Send + 'static>> {
        Box::pin(
            self.sessions
                .clone()
                .claim(client_id.to_string(), clean_start, expiry_interval),
        )
    }

    fn interest_ticket(&self, ticket: u64) {
        if self.interest.send(Interest::Settle(ticket)).is_err() {
            self.broker.peer_acked(ticket, true);
        }
    }

    fn resumed(&self, client_id: &str) {
        self.sessions.resumed(client_id);
    }

    fn session_changed(&self, client_id: &str) {
        self.sessions.changed(client_id);
    }
}

/// Connects `broker` to the other nodes; returns the seam to give it (`set_peers`). Blocking
/// (it creates the QoS 1/2 stream): call it off the runtime.
pub fn start(nats: Arc<Nats>, broker: BrokerHandle) -> Result<Arc<NatsPeers>, crate::ClusterError> {
    crate::qos::open_stream(&nats)?;
    crate::retained::open_stream(&nats)?;
    let (out, mut out_rx) = mpsc::channel::<Out>(OUT_QUEUE);
    let (filters_tx, filters_rx) = watch::channel((0u64, Vec::new()));
    let (interest, mut interest_rx) = mpsc::unbounded_channel::<Interest>();
    let (sync_tx, mut sync_rx) = mpsc::unbounded_channel::<oneshot::Sender<u64>>();
    let position = Arc::new(Position::default());
    let sessions = Sessions::start(nats.clone(), broker.clone(), position.clone(), sync_tx)?;
    let (inbound, mut inbound_rx) = mpsc::unbounded_channel::<Bytes>();
    let mut origin = [0u8; 8];
    let _ = getrandom::fill(&mut origin);
    let origin = u64::from_be_bytes(origin);
    let peers = Arc::new(NatsPeers {
        out,
        connected: nats.connected.clone(),
        broker: broker.clone(),
        durable: nats.subject("q"),
        interest: interest.clone(),
        sessions,
        messages: nats.subject("m"),
        retained: nats.subject("r"),
        takeover: nats.subject("takeover"),
        origin,
        seq: AtomicU64::new(1),
        dropped: AtomicU64::new(0),
        nodes_up: AtomicU64::new(0),
        nodes_known: AtomicU64::new(0),
        clients: AtomicU64::new(0),
    });

    let (js, bucket, counts) = (nats.jetstream.clone(), nats.name("nodes"), peers.clone());
    nats.spawn(async move {
        let mut tick = tokio::time::interval(COUNTS_EVERY);
        loop {
            tick.tick().await;
            if let Ok(nodes) = crate::nodes::read_nodes(js.clone(), bucket.clone()).await {
                let up = nodes.iter().filter(|n| n.up);
                counts
                    .nodes_up
                    .store(up.clone().count() as u64, Ordering::Relaxed);
                counts
                    .clients
                    .store(up.map(|n| n.connections).sum(), Ordering::Relaxed);
                counts
                    .nodes_known
                    .store(nodes.len() as u64, Ordering::Relaxed);
            }
        }
    });

    crate::qos::spawn_consumer(&nats, broker.clone(), origin, filters_rx, position.clone());
    // Replays ask through the interest task, behind the changes sent before them.
    nats.spawn(async move {
        while let Some(reply) = sync_rx.recv().await {
            if interest.send(Interest::Sync(reply)).is_err() {
                return;
            }
        }
    });
    crate::retained::spawn_follower(&nats, broker.clone(), origin);

    let (client, js, settle) = (nats.client.clone(), nats.jetstream.clone(), broker.clone());
    nats.spawn(async move {
        while let Some(out) = out_rx.recv().await {
            match out {
                Out::Core(subject, frame) => {
                    if let Err(e) = client.publish(subject, frame).await {
                        debug!(error = %e, "publishing to NATS");
                    }
                }
                // Sent in order; the acknowledgements are awaited beside.
                Out::Durable(subject, frame, t) => match js.publish(subject, frame).await {
                    Ok(ack) => {
                        let settle = settle.clone();
                        tokio::spawn(async move {
                            let stored = matches!(
                                tokio::time::timeout(crate::qos::ACK_WITHIN, ack).await,
                                Ok(Ok(_))
                            );
                            settle.peer_acked(t, stored);
                        });
                    }
                    Err(e) => {
                        debug!(error = %e, "publishing to JetStream");
                        settle.peer_acked(t, false);
                    }
                },
            }
        }
    });

    let (client, subject, handle) = (nats.client.clone(), peers.takeover.clone(), broker.clone());
    nats.spawn(async move {
        let mut sub = match client.subscribe(subject).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot follow takeovers on NATS");
                return;
            }
        };
        while let Some(m) = sub.next().await {
            let f = &m.payload;
            if f.len() < 17 || f[..8] == origin.to_be_bytes() {
                continue;
            }
            let ns = u64::from_be_bytes(f[8..16].try_into().unwrap_or_default());
            let since = UNIX_EPOCH + Duration::from_nanos(ns);
            let clean = f[16] == 1;
            if let Ok(id) = std::str::from_utf8(&f[17..]) {
                let told = handle.taken_over_by_peer(id, since);
                // A Clean Start there ends the session here (a newer connection here wins).
                let offline = handle
                    .session_snapshot(id)
                    .is_some_and(|s| s.offline_since.is_some());
                if clean && (told > 0 || offline) {
                    handle.release_session(id, true);
                }
            }
        }
    });

    let (client, messages, durable) = (
        nats.client.clone(),
        peers.messages.clone(),
        peers.durable.clone(),
    );
    let feed = inbound.clone();
    let (cluster, group_broker, applied) =
        (nats.clone(), broker.clone(), position.applied.subscribe());
    nats.spawn(async move {
        let mut subscribed: HashMap<String, Followed> = HashMap::new();
        // Shared subscriptions' groups, apart: their messages come another way (`shared.rs`).
        let mut groups: HashMap<(String, String), Followed> = HashMap::new();
        // The consumer's filters are set only once every restored subscription is in: set
        // earlier, a restarted node would skip the messages that waited for it.
        let mut restored = false;
        let mut generation = 0u64;
        while let Some(change) = interest_rx.recv().await {
            let (filter, added) = match change {
                Interest::Changed(filter, Some(group), added) => {
                    let key = (group, filter);
                    let entry = groups.entry(key.clone()).or_insert((0, Vec::new()));
                    if added {
                        entry.0 += 1;
                        if entry.0 == 1 {
                            entry.1 =
                                crate::shared::follow(&cluster, &group_broker, &key.0, &key.1)
                                    .await;
                        }
                    } else {
                        entry.0 = entry.0.saturating_sub(1);
                        if entry.0 == 0
                            && let Some((_, tasks)) = groups.remove(&key)
                        {
                            tasks.iter().for_each(JoinHandle::abort);
                        }
                    }
                    continue;
                }
                Interest::Changed(filter, None, added) => (filter, added),
                Interest::Restored => {
                    restored = true;
                    generation += 1;
                    let subjects = consumer_subjects(&subscribed, &durable);
                    let _ = filters_tx.send((generation, consumer_filters(&durable, subjects)));
                    continue;
                }
                Interest::Sync(reply) => {
                    if restored {
                        update_filters(&filters_tx, &mut generation, &subscribed, &durable);
                    }
                    let _ = reply.send(generation);
                    continue;
                }
                Interest::Settle(ticket) => {
                    if restored {
                        update_filters(&filters_tx, &mut generation, &subscribed, &durable);
                    }
                    let (mut applied, broker, want) =
                        (applied.clone(), group_broker.clone(), generation);
                    tokio::spawn(async move {
                        // Bounded: without JetStream the SUBACK still goes (the subscription
                        // works here; QoS 1/2 from other nodes follow once it is back).
                        let _ =
                            tokio::time::timeout(SETTLE_WITHIN, applied.wait_for(|g| *g >= want))
                                .await;
                        broker.peer_acked(ticket, true);
                    });
                    continue;
                }
            };
            let entry = subscribed.entry(filter.clone()).or_insert((0, Vec::new()));
            if added {
                entry.0 += 1;
                if entry.0 == 1 {
                    for subject in filter_subjects(&messages, &filter) {
                        entry.1.push(follow(&client, subject, feed.clone()).await);
                    }
                }
            } else {
                entry.0 = entry.0.saturating_sub(1);
                if entry.0 == 0
                    && let Some((_, tasks)) = subscribed.remove(&filter)
                {
                    for t in tasks {
                        t.abort();
                    }
                }
            }
            // The QoS 1/2 consumer follows the same filters (once the burst of changes ends).
            if restored && interest_rx.is_empty() {
                update_filters(&filters_tx, &mut generation, &subscribed, &durable);
            }
        }
    });

    nats.spawn(async move {
        let mut seen: HashMap<u64, (HashSet<u64>, VecDeque<u64>)> = HashMap::new();
        while let Some(frame) = inbound_rx.recv().await {
            if frame.len() < 16 {
                continue;
            }
            let from = u64::from_be_bytes(frame[..8].try_into().unwrap_or_default());
            let seq = u64::from_be_bytes(frame[8..16].try_into().unwrap_or_default());
            if from == origin {
                continue;
            }
            let (set, order) = seen.entry(from).or_default();
            if !set.insert(seq) {
                continue;
            }
            order.push_back(seq);
            if order.len() > REMEMBERED
                && let Some(old) = order.pop_front()
            {
                set.remove(&old);
            }
            // QoS 0 (core NATS): no stream time, and never replayed.
            if let Err(e) = broker.publish_from_peer(frame.slice(16..), 0) {
                warn!(error = ?e, "a message from another node could not be read");
            }
        }
    });
    Ok(peers)
}

/// Gives the consumer the filters of the subscriptions held now, as a new generation, unless
/// it has them.
fn update_filters(
    filters: &watch::Sender<(u64, Vec<String>)>,
    generation: &mut u64,
    subscribed: &HashMap<String, Followed>,
    base: &str,
) {
    let next = consumer_filters(base, consumer_subjects(subscribed, base));
    if filters.borrow().1 != next {
        *generation += 1;
        let _ = filters.send((*generation, next));
    }
}

/// The QoS 1/2 stream subjects of the filters held.
fn consumer_subjects<T>(subscribed: &HashMap<String, T>, base: &str) -> Vec<String> {
    subscribed
        .keys()
        .filter(|f| !f.is_empty())
        .flat_map(|f| filter_subjects(base, f))
        .collect()
}

impl NatsPeers {
    /// Every subscription restored from the store has been reported (`set_peers`): the QoS
    /// 1/2 consumer may start reading.
    pub fn restored(&self) {
        let _ = self.interest.send(Interest::Restored);
    }
}

/// Subscribes to `subject` and feeds its messages to the inbound task until aborted (dropping
/// the subscriber unsubscribes).
async fn follow(
    client: &async_nats::Client,
    subject: String,
    feed: mpsc::UnboundedSender<Bytes>,
) -> JoinHandle<()> {
    let sub = client.subscribe(subject.clone()).await;
    // The subscription reaches the server before the next publish from this connection.
    let _ = client.flush().await;
    tokio::spawn(async move {
        let mut sub = match sub {
            Ok(s) => s,
            Err(e) => {
                warn!(subject, error = %e, "cannot subscribe on NATS");
                return;
            }
        };
        while let Some(m) = sub.next().await {
            if feed.send(m.payload).is_err() {
                break;
            }
        }
    })
}

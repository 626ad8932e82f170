//! The publishing task: everything this node sends on NATS besides KV writes and requests,
//! in the order it was handed over (`NatsPeers::forward`, takeovers). A bounded queue feeds
//! it; when NATS cannot keep up, a message is dropped for the other nodes (counted, logged,
//! and a QoS 1/2 publisher told) rather than stalling the publisher.
//!
//! A QoS 1/2 message goes into a stream under a message id (`Nats-Msg-Id`: its frame's origin
//! and sequence), and its ticket is settled with JetStream's acknowledgement, awaited beside
//! the queue so the next message does not wait for it. An acknowledgement that does not come
//! within `ATTEMPT` (a leader electing, a server gone) or an error is not the publisher's
//! problem: the task stops sending, waits until everything in flight is acknowledged or
//! failed, and sends the failed ones again in their order, under their ids (the stream drops
//! a copy it already stored), until each is stored or `cluster.store_within` has passed since
//! it was handed over; only then is its publisher told 0x80.
//!
//! Order: messages handed over after a failure is seen are sent after every failed one is
//! stored. What was already in flight when the first failure happened can be stored before a
//! failed message that preceded it (the window is `ATTEMPT` of traffic; docs/cluster.md).
//!
//! QoS 0 does not wait for a recovery: while one runs, the queue is still read, core NATS
//! messages go out at once and QoS 1/2 ones are held (up to `OUT_QUEUE`, the queue's own
//! bound) to be sent, in order, after it. QoS 0 and QoS 1/2 travel apart anyway (core NATS
//! and the stream), so no order between them is lost.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use tessera_broker::cluster::PeerHandle;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::Nats;

/// Messages waiting for the publishing task.
const OUT_QUEUE: usize = 65_536;
/// How long one attempt waits for JetStream's acknowledgement before the message is sent
/// again: what a stream leader election or a lost server costs a publisher, rather than the
/// NATS client's 5 s.
pub(crate) const ATTEMPT: Duration = Duration::from_millis(500);
/// Pause between two rounds of sending failed messages again.
const BETWEEN_ROUNDS: Duration = Duration::from_millis(100);
/// Acknowledgements awaited at once (the JetStream context's permits).
const IN_FLIGHT: usize = 65_536;

/// What the publishing task sends.
pub(crate) enum Out {
    /// On core NATS, at most once.
    Core(String, Bytes),
    /// Into a stream; the ticket is settled with JetStream's answer.
    Durable(String, Bytes, u64),
}

/// A QoS 1/2 message as handed over (subject, frame, ticket), and when.
type Held = (String, Bytes, u64, Instant);

/// The publishing task's next step.
enum Next {
    Failed(Durable),
    Core(String, Bytes),
    Durable(Held),
}

/// A QoS 1/2 message until it is stored or given up.
struct Durable {
    subject: String,
    frame: Bytes,
    ticket: u64,
    /// Its place in the order it was handed over.
    order: u64,
    /// When its publisher is told 0x80 if it is not stored by then.
    give_up: Instant,
}

impl Durable {
    /// The id the stream de-duplicates by: the frame's origin and sequence, unique in the
    /// cluster (the origin is random per process).
    fn id(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let head = &self.frame[..16.min(self.frame.len())];
        let mut id = String::with_capacity(32);
        for b in head {
            id.push(HEX[usize::from(b >> 4)] as char);
            id.push(HEX[usize::from(b & 15)] as char);
        }
        id
    }

    fn message(&self) -> PublishMessage {
        PublishMessage::build()
            .message_id(self.id())
            .payload(self.frame.clone())
    }
}

/// The task's state besides its queue.
struct Publisher {
    js: jetstream::Context,
    broker: PeerHandle,
    /// Failed first attempts, from the tasks awaiting acknowledgements.
    failed_tx: mpsc::UnboundedSender<Durable>,
    /// First attempts whose acknowledgement is awaited.
    in_flight: Arc<AtomicUsize>,
    settled: Arc<Notify>,
}

/// Starts the publishing task; returns its queue.
pub(crate) fn spawn(nats: &Nats, broker: PeerHandle) -> mpsc::Sender<Out> {
    let (out, mut out_rx) = mpsc::channel::<Out>(OUT_QUEUE);
    let client = nats.client.clone();
    let store_within = Duration::from_secs(nats.config.store_within);
    nats.spawn(async move {
        // Its own context: short acknowledgement waits for publishes only (the shared one
        // keeps the client's timeout for API requests), and room for every message in flight.
        let js = jetstream::ContextBuilder::new()
            .timeout(ATTEMPT)
            .ack_timeout(ATTEMPT)
            .max_ack_inflight(IN_FLIGHT)
            .build(client.clone());
        let (failed_tx, mut failed_rx) = mpsc::unbounded_channel();
        let p = Publisher {
            js,
            broker,
            failed_tx,
            in_flight: Arc::default(),
            settled: Arc::default(),
        };
        let mut order = 0u64;
        let mut held: VecDeque<Held> = VecDeque::new();
        loop {
            // What came during a recovery goes before anything newer, in the order it was
            // handed over; a send that failed again is recovered first.
            let next = match held.is_empty() {
                true => tokio::select! {
                    biased;
                    Some(first) = failed_rx.recv() => Next::Failed(first),
                    out = out_rx.recv() => match out {
                        None => break,
                        Some(Out::Core(subject, frame)) => Next::Core(subject, frame),
                        Some(Out::Durable(subject, frame, ticket)) => {
                            Next::Durable((subject, frame, ticket, Instant::now()))
                        }
                    },
                },
                false => match failed_rx.try_recv() {
                    Ok(first) => Next::Failed(first),
                    Err(_) => Next::Durable(held.pop_front().expect("not empty")),
                },
            };
            match next {
                Next::Failed(first) => {
                    let recovery = p.recover(first, &mut failed_rx);
                    if !meanwhile(recovery, &mut out_rx, &client, &mut held).await {
                        break;
                    }
                }
                Next::Core(subject, frame) => core(&client, subject, frame).await,
                Next::Durable((subject, frame, ticket, handed)) => {
                    order += 1;
                    let give_up = handed + store_within;
                    p.send(Durable {
                        subject,
                        frame,
                        ticket,
                        order,
                        give_up,
                    })
                    .await;
                }
            }
        }
    });
    out
}

async fn core(client: &async_nats::Client, subject: String, frame: Bytes) {
    if let Err(e) = client.publish(subject, frame).await {
        debug!(error = %e, "publishing to NATS");
    }
}

/// Runs `recovery` while still reading the queue: QoS 0 goes out, QoS 1/2 is held for after
/// it. False if the queue closed (the node is stopping) before the recovery ended.
async fn meanwhile(
    recovery: impl std::future::Future<Output = ()>,
    out_rx: &mut mpsc::Receiver<Out>,
    client: &async_nats::Client,
    held: &mut VecDeque<Held>,
) -> bool {
    tokio::pin!(recovery);
    loop {
        tokio::select! {
            biased;
            () = &mut recovery => return true,
            out = out_rx.recv(), if held.len() < OUT_QUEUE => match out {
                None => {
                    recovery.await;
                    return false;
                }
                Some(Out::Core(subject, frame)) => core(client, subject, frame).await,
                Some(Out::Durable(subject, frame, ticket)) => {
                    held.push_back((subject, frame, ticket, Instant::now()));
                }
            },
        }
    }
}

impl Publisher {
    /// A first attempt: sent now, its acknowledgement awaited beside the queue.
    async fn send(&self, d: Durable) {
        match self.js.send_publish(d.subject.clone(), d.message()).await {
            Ok(ack) => {
                self.in_flight.fetch_add(1, Ordering::AcqRel);
                let (broker, failed, in_flight, settled) = (
                    self.broker.clone(),
                    self.failed_tx.clone(),
                    self.in_flight.clone(),
                    self.settled.clone(),
                );
                tokio::spawn(async move {
                    match ack.await {
                        Ok(_) => broker.settle(d.ticket, true),
                        Err(e) => {
                            debug!(error = %e, "no acknowledgement from JetStream; sending again");
                            let _ = failed.send(d);
                        }
                    }
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    settled.notify_one();
                });
            }
            Err(e) => {
                debug!(error = %e, "publishing to JetStream; sending again");
                let _ = self.failed_tx.send(d);
            }
        }
    }

    /// A first attempt failed: nothing new is sent until every message in flight is settled
    /// and every failed one stored again, in order (or given up).
    async fn recover(&self, first: Durable, failed_rx: &mut mpsc::UnboundedReceiver<Durable>) {
        let started = Instant::now();
        let mut batch = vec![first];
        while self.in_flight.load(Ordering::Acquire) > 0 {
            let _ = tokio::time::timeout(BETWEEN_ROUNDS, self.settled.notified()).await;
            while let Ok(d) = failed_rx.try_recv() {
                batch.push(d);
            }
        }
        while let Ok(d) = failed_rx.try_recv() {
            batch.push(d);
        }
        let (mut stored, mut refused, mut rounds) = (0usize, 0usize, 0usize);
        while !batch.is_empty() {
            rounds += 1;
            batch.sort_by_key(|d| d.order);
            let now = Instant::now();
            batch.retain(|d| {
                let keep = now < d.give_up;
                if !keep {
                    self.broker.settle(d.ticket, false);
                    refused += 1;
                }
                keep
            });
            let (done, again) = self.round(std::mem::take(&mut batch)).await;
            stored += done;
            batch = again;
            if !batch.is_empty() {
                tokio::time::sleep(BETWEEN_ROUNDS).await;
            }
        }
        let took_ms = started.elapsed().as_millis() as u64;
        if refused > 0 {
            warn!(
                stored,
                refused,
                rounds,
                took_ms,
                "JetStream did not store messages in time: publishers told 0x80"
            );
        } else {
            info!(
                stored,
                rounds, took_ms, "messages JetStream missed were sent again and stored"
            );
        }
    }

    /// One round: every message sent in order, then their acknowledgements awaited together.
    /// Returns how many were stored and those to send again.
    async fn round(&self, batch: Vec<Durable>) -> (usize, Vec<Durable>) {
        let mut sent = Vec::with_capacity(batch.len());
        let mut again = Vec::new();
        for d in batch {
            match self.js.send_publish(d.subject.clone(), d.message()).await {
                Ok(ack) => sent.push((d, ack)),
                Err(_) => again.push(d),
            }
        }
        // One deadline for the round, not one per acknowledgement awaited in turn.
        let round_ends = Instant::now() + ATTEMPT;
        let mut stored = 0;
        for (d, ack) in sent {
            match tokio::time::timeout_at(round_ends, ack.into_future()).await {
                // Also a duplicate: an earlier attempt was stored after all.
                Ok(Ok(_)) => {
                    self.broker.settle(d.ticket, true);
                    stored += 1;
                }
                Ok(Err(e)) => {
                    debug!(error = %e, "JetStream refused a message; sending again");
                    again.push(d);
                }
                Err(_) => again.push(d),
            }
        }
        (stored, again)
    }
}

//! QoS 1 and 2 between nodes through JetStream: the stream `<prefix>_qos` (subjects
//! `<prefix>.q.>`, `cluster.replicas` replicas, kept an hour) holds every QoS 1/2 message a
//! client publishes on any node, and the publisher's PUBACK / PUBREC waits for the stream's
//! replicated acknowledgement (`PeerHandle::settle`): a message acknowledged to its
//! publisher survives the death of its node and of a NATS server. A message JetStream did not
//! acknowledge is sent again under its id (`outbound.rs`) until stored; when that does not
//! happen within `cluster.store_within` (no quorum, NATS lost) or the queue is full, the
//! publisher gets 0x80 with a Reason String: never a silent loss.
//!
//! Each node reads the stream through a durable consumer of its own (`<prefix>_qos_<node>`)
//! filtered by the subjects of its subscriptions, routes what it reads (what has arrived,
//! together), waits until that is durable in its own store (`BrokerHandle::sync`), and only
//! then acknowledges it. Its filters come from the interest task (`interest.rs`). A node that
//! was down reads on from where it stopped. Filters that overlap (which JetStream refuses in
//! one consumer) make the node read every QoS 1/2 message and let its own routing filter them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::stream;
use bytes::Bytes;
use futures_util::StreamExt;
use tessera_broker::cluster::PeerHandle;
use tracing::{info, warn};

use crate::frame::Frame;
use crate::interest::Filters;
use crate::sessions::Position;
use crate::{ClusterError, Nats};

/// How long the stream keeps a message (a node down longer misses it).
pub const KEPT_FOR: Duration = Duration::from_secs(3600);
/// How long the streams remember a message id (`outbound.rs` sends again under it): longer
/// than any `cluster.store_within`, short because the servers keep every id that long.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(tessera_config::DUPLICATE_WINDOW_SECS);
/// Messages routed together before one sync and their acknowledgements.
const BATCH: usize = 256;
/// The consumer's pull requests: each lasts `PULL_EXPIRES`, and the server sends a heartbeat
/// every `PULL_HEARTBEAT` while it has nothing to deliver. Two heartbeats missed end the
/// reading session (and start the next from the acknowledgement floor). Without them a pull
/// request lost with a NATS server left the node waiting for its expiry: the client's default
/// of 30 s, seen as a 31 s lull in one NATS server kill of five in `benches/cluster.sh`.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);

/// Reads `consumer` in pull requests of `per_pull` messages with the expiry and heartbeat
/// above: this node's consumer and the shared groups' (`shared.rs`) both read so.
pub(crate) async fn pull(consumer: &PullConsumer, per_pull: usize) -> Result<pull::Stream, String> {
    consumer
        .stream()
        .max_messages_per_batch(per_pull)
        .expires(PULL_EXPIRES)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await
        .map_err(|e| e.to_string())
}

/// Creates the stream on first start (or finds it).
pub(crate) fn open_stream(nats: &Nats) -> Result<(), ClusterError> {
    let config = stream::Config {
        name: nats.name("qos"),
        subjects: vec![format!("{}.>", nats.subject("q"))],
        num_replicas: nats.config.replicas,
        max_age: KEPT_FOR,
        duplicate_window: DUPLICATE_WINDOW,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    create(nats, config)
}

/// Creates a stream or finds it, retrying while a new JetStream cluster's peers become
/// current.
pub(crate) fn create(nats: &Nats, config: stream::Config) -> Result<(), ClusterError> {
    let js = nats.jetstream.clone();
    let mut last = String::new();
    for _ in 0..50 {
        let (js, config) = (js.clone(), config.clone());
        // A stream made by an older version gets the duplicate window it now needs.
        let made = async move {
            let stream = js.get_or_create_stream(config.clone()).await?;
            let window = stream.cached_info().config.duplicate_window;
            if window != config.duplicate_window && !config.duplicate_window.is_zero() {
                js.update_stream(&config).await?;
            }
            Ok::<_, async_nats::Error>(())
        };
        match nats.wait(made) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e.to_string(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(ClusterError::Unavailable {
        what: format!("stream {}", config.name),
        reason: last,
    })
}

/// Whether two NATS subjects (with `*` and `>`) can match one subject.
pub(crate) fn collide(a: &str, b: &str) -> bool {
    let (mut x, mut y) = (a.split('.'), b.split('.'));
    loop {
        match (x.next(), y.next()) {
            (Some(">"), _) | (_, Some(">")) => return true,
            (None, None) => return true,
            (Some(p), Some(q)) if p == "*" || q == "*" || p == q => {}
            _ => return false,
        }
    }
}

/// Past this many subjects a consumer reads everything and the node routes what matches:
/// checking that filters do not overlap is quadratic, JetStream matches each message against
/// every filter, and the consumer's configuration must fit in one NATS message. A fleet whose
/// devices each subscribe to their own topic has a filter per device.
pub(crate) const MAX_FILTER_SUBJECTS: usize = 256;

/// The consumer's filter subjects for these subscription subjects: themselves if there are
/// at most `MAX_FILTER_SUBJECTS` and none overlap, else everything; a subject nothing is
/// published to when there are none.
pub(crate) fn consumer_filters(base: &str, mut subjects: Vec<String>) -> Vec<String> {
    subjects.sort();
    subjects.dedup();
    if subjects.is_empty() {
        return vec![format!("{base}.=none")];
    }
    if subjects.len() > MAX_FILTER_SUBJECTS {
        return vec![format!("{base}.>")];
    }
    for (i, a) in subjects.iter().enumerate() {
        if subjects[i + 1..].iter().any(|b| collide(a, b)) {
            return vec![format!("{base}.>")];
        }
    }
    subjects
}

/// Reads this node's consumer until the process ends, following filter changes.
///
/// Invariant: an acknowledgement (AckPolicy::All: it covers every message before it) is sent
/// only for a message that ends an unbroken run of deliveries, all routed and durable here.
/// A delivery that never arrived (dropped pull, NATS reconnect, leader change: the consumer
/// sequence jumps, or an error comes), or a batch that could not be made durable, ends the
/// reading session before anything past it is acknowledged; the next session first resets the
/// consumer to its acknowledgement floor, so JetStream delivers everything after it again.
/// Without the reset, the next acknowledgement would cover messages this node never routed.
pub(crate) fn spawn_consumer(
    nats: &Nats,
    broker: PeerHandle,
    origin: u64,
    mut filters: Filters,
    position: Arc<Position>,
) {
    let js = nats.jetstream.clone();
    let stream_name = nats.name("qos");
    let durable = format!("{}_{}", nats.name("qos"), nats.config.node);
    nats.spawn(async move {
        // The first filters come once the restored subscriptions are known.
        if filters.changed().await.is_err() {
            return;
        }
        loop {
            let (generation, subjects) = filters.borrow_and_update().clone();
            let opened =
                open_session(&broker, &js, &stream_name, &durable, subjects, &position).await;
            let (stream, mut messages) = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    warn!(error = %e, "cannot read the QoS 1/2 stream; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            position.applied.send_replace(generation);
            let mut last_delivery = None;
            let ended = loop {
                tokio::select! {
                    changed = filters.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        // In place: the pull requests in flight stay valid, nothing is dropped.
                        let (generation, subjects) = filters.borrow_and_update().clone();
                        match stream.update_consumer(consumer_config(&durable, subjects)).await {
                            Ok(_) => {
                                position.applied.send_replace(generation);
                            }
                            Err(e) => break format!("cannot update the consumer's filters: {e}"),
                        }
                    }
                    next = messages.next() => {
                        let Some(batch) = next else { break "the pull subscription ended".into() };
                        if let Err(why) =
                            take_batch(&broker, origin, batch, &mut last_delivery, &position).await
                        {
                            break why;
                        }
                    }
                }
            };
            warn!(why = %ended, "reading QoS 1/2 messages again from the last acknowledged one");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    info!("reading QoS 1/2 messages of the other nodes from JetStream");
}

type Pulled = futures_util::stream::ReadyChunks<pull::Stream>;

fn consumer_config(durable: &str, subjects: Vec<String>) -> pull::Config {
    pull::Config {
        durable_name: Some(durable.to_string()),
        filter_subjects: subjects,
        deliver_policy: DeliverPolicy::New,
        // One acknowledgement per batch: it covers every message before it.
        ack_policy: AckPolicy::All,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// Brings the consumer to `subjects`, resets its delivery to the acknowledgement floor
/// (whatever an earlier session or process was sent and did not acknowledge comes again) and
/// starts pulling.
async fn open_session(
    broker: &PeerHandle,
    js: &async_nats::jetstream::Context,
    stream_name: &str,
    durable: &str,
    subjects: Vec<String>,
    position: &Position,
) -> Result<(stream::Stream, Pulled), String> {
    let mut stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| e.to_string())?;
    let last = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence;
    if broker.peers_routed() > last {
        // Routed through a sequence this stream never reached: it is a new stream.
        warn!(
            routed = broker.peers_routed(),
            last, "the QoS 1/2 stream is newer than what this node routed; reading it all"
        );
        broker.reset_peers_routed();
    }
    let config = consumer_config(durable, subjects);
    let consumer = match stream.update_consumer(config.clone()).await {
        Ok(c) => {
            // NATS 2.14 and later; an older server keeps what it had sent as delivered (see
            // docs/cluster.md). A consumer just created has sent nothing (and may have no
            // leader yet to answer a reset).
            if let Err(e) = stream.reset_consumer(durable, None).await {
                warn!(error = %e, "cannot reset the QoS 1/2 consumer to its acknowledgement floor");
            }
            c
        }
        Err(_) => stream
            .create_consumer(config)
            .await
            .map_err(|e| e.to_string())?,
    };
    if consumer.cached_info().num_pending == 0 {
        position.caught_up.store(true, Ordering::Relaxed);
    }
    let messages = pull(&consumer, BATCH * 4).await?;
    Ok((stream, messages.ready_chunks(BATCH)))
}

/// Routes what has arrived together, makes it durable with one sync, then acknowledges its
/// last message. `Err` (why) when the session must end: see `spawn_consumer`'s invariant.
///
/// A message at or below `PeerHandle::peers_routed` is taken without routing: it was
/// routed here before and JetStream delivers it again (its acknowledgement did not land
/// before a crash, or the reading session started again from the acknowledgement floor).
/// That sequence is written with the journal batch that holds what was routed up to it, so a
/// QoS 2 message is not queued twice.
async fn take_batch(
    broker: &PeerHandle,
    origin: u64,
    batch: Vec<Result<async_nats::jetstream::Message, pull::MessagesError>>,
    last_delivery: &mut Option<u64>,
    position: &Position,
) -> Result<(), String> {
    let mut broken = None;
    // The last message taken: its acknowledgement covers the ones before it.
    let mut last = None;
    let routed_before = broker.peers_routed();
    let mut routed_through = routed_before;
    for item in batch {
        let m = match item {
            Ok(m) => m,
            Err(e) => {
                broken = Some(e.to_string());
                break;
            }
        };
        let Ok(info) = m.info() else {
            broken = Some("a message without its delivery information".into());
            break;
        };
        // Consecutive deliveries have consecutive consumer sequences: a jump is a lost one.
        if let Some(last) = *last_delivery
            && info.consumer_sequence != last + 1
        {
            broken = Some(format!(
                "delivery {} came after {last}",
                info.consumer_sequence
            ));
            break;
        }
        *last_delivery = Some(info.consumer_sequence);
        if info.stream_sequence > routed_through {
            route(
                broker,
                origin,
                m.payload.clone(),
                crate::stream_ms(info.published),
                info.stream_sequence,
            );
            routed_through = info.stream_sequence;
        }
        last = Some(m);
    }
    if routed_through != routed_before {
        broker.routed_through(routed_through);
    }
    if let Some(last) = last {
        broker
            .sync()
            .await
            .map_err(|e| format!("messages from other nodes are not durable here: {e}"))?;
        if let Ok(info) = last.info() {
            position
                .read_ms
                .store(crate::stream_ms(info.published), Ordering::Relaxed);
            position
                .caught_up
                .store(info.pending == 0, Ordering::Relaxed);
        }
        if let Err(e) = last.ack().await {
            // Not fatal: the next acknowledgement covers this one.
            warn!(error = %e, "acknowledging QoS 1/2 messages to JetStream");
        }
    }
    broken.map_or(Ok(()), Err)
}

/// Routes one message from the stream (not this node's own).
fn route(broker: &PeerHandle, origin: u64, bytes: Bytes, published_ms: u64, stream_seq: u64) {
    let Some((frame, packet)) = Frame::parse(&bytes) else {
        return;
    };
    if frame.origin == origin {
        return;
    }
    if let Err(e) = broker.publish(packet, published_ms, frame.id(origin, stream_seq)) {
        warn!(error = %e, "a message from another node could not be read");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_filters_fall_back_to_everything() {
        assert!(collide("t.q.a.>", "t.q.a.b"));
        assert!(collide("t.q.*.b", "t.q.a.*"));
        assert!(!collide("t.q.a.b", "t.q.a.c"));
        assert!(!collide("t.q.a", "t.q.a.b"));
        let f = |v: &[&str]| consumer_filters("t.q", v.iter().map(|s| s.to_string()).collect());
        assert_eq!(f(&[]), ["t.q.=none"]);
        assert_eq!(f(&["t.q.a", "t.q.b.*"]), ["t.q.a", "t.q.b.*"]);
        assert_eq!(f(&["t.q.a", "t.q.a"]), ["t.q.a"]);
        assert_eq!(f(&["t.q.a.>", "t.q.a.b"]), ["t.q.>"]);
        // A filter per device, past the bound: everything, without comparing them all.
        let many: Vec<String> = (0..=MAX_FILTER_SUBJECTS)
            .map(|i| format!("t.q.d{i}"))
            .collect();
        assert_eq!(consumer_filters("t.q", many.clone()), ["t.q.>"]);
        assert_eq!(
            consumer_filters("t.q", many[1..].to_vec()).len(),
            MAX_FILTER_SUBJECTS
        );
    }
}

//! A moved session's replay: once the new node has opened the session (`Peers::resumed`),
//! the QoS 1/2 messages its subscriptions match that it did not have are read from the stream
//! through a short-lived consumer and queued to it:
//! - handed over by a live owner (`handoff.rs`): only what the owner never routed to it,
//!   by the owner's cut: stream messages after the owner's position, and of the owner's own
//!   messages those it numbered after the session left. Exactly once: what the session was
//!   given here since it opened is skipped by name (`PeerHandle::deliver_to`);
//! - from the last record of an owner that did not answer: everything published since the
//!   record's floor but the QoS 2 messages the record lists (`ledger.rs`) and what the session
//!   was given here since it opened (QoS 1 at least once: the client may have had some).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{Replay, Sessions, Sub};
use crate::frame::Frame;
use crate::interest::Interest;
use crate::qos::consumer_filters;
use crate::subjects::filter_subjects;

impl Sessions {
    /// `Peers::resumed`: replays what the moved session had not had.
    pub(crate) fn resumed(self: &Arc<Self>, client_id: &str) {
        let Some(replay) = self.replays.lock().remove(client_id) else {
            return;
        };
        let this = self.clone();
        let client_id = client_id.to_string();
        self.nats.spawn(async move {
            let started = std::time::Instant::now();
            this.consumer_follows_moved_subscriptions().await;
            // A failed replay is started again from the floor (at least once): twice more.
            let mut replayed = this.replay(&client_id, &replay).await;
            for _ in 0..2 {
                let Err(e) = &replayed else { break };
                warn!(client_id, error = %e, "replaying a moved session's messages; again");
                replayed = this.replay(&client_id, &replay).await;
            }
            let read_to = replayed.as_ref().map_or(0, |(_, to)| *to);
            let replayed = replayed.map(|(n, _)| n);
            match replayed {
                Ok(n) => info!(
                    client_id,
                    messages = n,
                    after_stream_seq = replay.cut.map(|(_, c)| c.peers_routed),
                    ms = started.elapsed().as_millis() as u64,
                    "session moved here; its messages replayed"
                ),
                Err(e) => warn!(client_id, error = %e, "replaying a moved session's messages"),
            }
            // This node's consumer may be behind what the replay read: until it has passed
            // it (or for 5 s), the session keeps skipping what it was given.
            let until = std::time::Instant::now() + Duration::from_secs(5);
            while this.broker.peers_routed() < read_to && std::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            this.broker.replayed(&client_id);
            if let Some(o) = this.owned.lock().get_mut(&client_id) {
                o.replaying = false;
            }
            this.changed(&client_id);
        });
    }

    /// Waits (at most 5 s) until this node's consumer reads with the moved subscriptions: a
    /// message it skipped before that is in the replay, one after it reaches the session live.
    async fn consumer_follows_moved_subscriptions(&self) {
        let (tx, rx) = oneshot::channel();
        if self.interest.send(Interest::Sync(tx)).is_ok()
            && let Ok(generation) = rx.await
        {
            let mut applied = self.position.applied.subscribe();
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                applied.wait_for(|g| *g >= generation),
            )
            .await;
        }
    }

    /// Queues to the session every message its subscriptions match that it did not have;
    /// how many, and the stream sequence it read to.
    async fn replay(&self, client_id: &str, replay: &Replay) -> Result<(usize, u64), String> {
        let from = match replay.cut {
            Some((_, cut)) => DeliverPolicy::ByStartSequence {
                start_sequence: cut.peers_routed + 1,
            },
            None => DeliverPolicy::ByStartTime {
                start_time: stream_time(replay.record.floor_ms)?,
            },
        };
        let mut delivered = 0;
        let read_to = self
            .read_stream(
                &replay.record.subs,
                from,
                |frame, packet, published_ms, seq| {
                    // The owner routed its own messages numbered before the cut to the session.
                    if let Some((owner, cut)) = replay.cut
                        && frame.origin == owner
                        && frame.seq < cut.next_seq
                    {
                        return true;
                    }
                    let id = frame.id(self.origin, seq);
                    if let Ok(true) = self.broker.deliver_to(client_id, packet, published_ms, id) {
                        delivered += 1;
                    }
                    true
                },
            )
            .await?;
        Ok((delivered, read_to))
    }

    /// Reads the QoS 1/2 stream from `from`, what `subs` (shared ones excepted) match, to its
    /// end through a short-lived consumer: `each` gets every message's frame, PUBLISH,
    /// publication time (ms) and stream sequence, and returns whether to go on. The stream
    /// sequence it read to.
    pub(super) async fn read_stream(
        &self,
        subs: &[Sub],
        from: DeliverPolicy,
        mut each: impl FnMut(Frame, Bytes, u64, u64) -> bool,
    ) -> Result<u64, String> {
        let base = self.nats.subject("q");
        let subjects: Vec<String> = subs
            .iter()
            .filter(|s| !s.filter.starts_with("$share/"))
            .flat_map(|s| filter_subjects(&base, &s.filter))
            .collect();
        if subjects.is_empty() {
            return Ok(0);
        }
        let stream = self
            .nats
            .jetstream
            .get_stream(self.nats.name("qos"))
            .await
            .map_err(|e| e.to_string())?;
        let mut consumer = stream
            .create_consumer(pull::Config {
                filter_subjects: consumer_filters(&base, subjects),
                deliver_policy: from,
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut pending = consumer
            .info()
            .await
            .map_err(|e| e.to_string())?
            .num_pending;
        let name = consumer.cached_info().name.clone();
        let mut read_to = 0;
        let read = async {
            if pending == 0 {
                return Ok(());
            }
            let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
            let mut next_delivery = 1;
            while pending > 0 {
                let Some(m) = messages.next().await else {
                    break;
                };
                let m = m.map_err(|e| e.to_string())?;
                let info = m.info().map_err(|e| e.to_string())?;
                // Nothing is redelivered (AckPolicy::None): a jump is a lost delivery.
                if info.consumer_sequence != next_delivery {
                    return Err(format!("delivery {next_delivery} of the replay was lost"));
                }
                next_delivery += 1;
                pending = info.pending;
                read_to = info.stream_sequence;
                let published_ms = crate::stream_ms(info.published);
                let Some((frame, packet)) = Frame::parse(&m.payload) else {
                    continue;
                };
                if !each(frame, packet, published_ms, info.stream_sequence) {
                    break;
                }
            }
            Ok(())
        };
        let read: Result<(), String> = read.await;
        let _ = stream.delete_consumer(&name).await;
        read.map(|()| read_to)
    }
}

/// A time in ms since the epoch as JetStream takes it.
pub(super) fn stream_time(ms: u64) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .map_err(|e| e.to_string())
}

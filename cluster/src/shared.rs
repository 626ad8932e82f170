//! Shared subscriptions across nodes: `$share/<group>/<filter>` has members on any node, and
//! each message goes to one of them overall. A node routes no message to a group itself
//! (`tessera_broker` leaves groups out once it has peers); the group's messages reach the
//! node NATS picks, which gives each to one local member (`PeerHandle::publish_to_group`):
//!
//! - QoS 0 (and retained values) through a core NATS queue group per shared subscription,
//!   named after a hash of group and filter: NATS delivers each message to one subscriber of
//!   the queue, the publishing node included;
//! - QoS 1/2 through a durable consumer of the QoS 1/2 stream shared by every node with a
//!   member (`<prefix>_share_<hash>`): JetStream gives each message to one node's pull, which
//!   acknowledges it once it is durable there; one that no member here takes any more is
//!   handed back (NAK) for another node, and one whose node dies unacknowledged is delivered
//!   again elsewhere after `ACK_WAIT`.

use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use bytes::Bytes;
use futures_util::StreamExt;
use tessera_broker::cluster::PeerHandle;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::Nats;
use crate::frame::Frame;
use crate::qos::consumer_filters;
use crate::subjects::filter_subjects;

/// How long a message a node pulled waits for its acknowledgement before another gets it.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// A group's consumer with no node pulling is removed after this (no member left anywhere).
const UNUSED_FOR: Duration = Duration::from_secs(3600);
const BATCH: usize = 256;

/// A stable name for the group of `filter` (the same on every node).
fn group_name(group: &str, filter: &str) -> String {
    // FNV-1a, 64 bits: stable across processes and versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group.bytes().chain([0]).chain(filter.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Starts taking the messages of the shared subscription `$share/<group>/<filter>` for this
/// node's members; abort the tasks when the last member here leaves.
pub(crate) async fn follow(
    nats: &Nats,
    broker: &PeerHandle,
    group: &str,
    filter: &str,
) -> Vec<JoinHandle<()>> {
    let name = group_name(group, filter);
    let mut tasks = Vec::new();
    let subjects = filter_subjects(&nats.subject("m"), filter)
        .into_iter()
        .chain(filter_subjects(&nats.subject("r"), filter));
    for subject in subjects {
        let sub = nats
            .client
            .queue_subscribe(subject.clone(), name.clone())
            .await;
        let (broker, group, filter) = (broker.clone(), group.to_string(), filter.to_string());
        tasks.push(tokio::spawn(async move {
            let mut sub = match sub {
                Ok(s) => s,
                Err(e) => {
                    warn!(subject, error = %e, "cannot join a shared subscription's queue on NATS");
                    return;
                }
            };
            while let Some(m) = sub.next().await {
                to_member(&broker, &group, &filter, &m.payload);
            }
        }));
    }
    let _ = nats.client.flush().await;

    let base = nats.subject("q");
    let config = pull::Config {
        durable_name: Some(format!("{}_{name}", nats.name("share"))),
        filter_subjects: consumer_filters(&base, filter_subjects(&base, filter)),
        deliver_policy: DeliverPolicy::New,
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: 10_000,
        inactive_threshold: UNUSED_FOR,
        ..Default::default()
    };
    let (js, stream_name) = (nats.jetstream.clone(), nats.name("qos"));
    let (broker, group, filter) = (broker.clone(), group.to_string(), filter.to_string());
    tasks.push(tokio::spawn(async move {
        loop {
            let messages = async {
                let stream = js
                    .get_stream(&stream_name)
                    .await
                    .map_err(|e| e.to_string())?;
                let name = config.durable_name.clone().unwrap_or_default();
                let consumer = stream
                    .get_or_create_consumer(&name, config.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                // With heartbeats (`qos::pull`): a pull request lost (a consumer still
                // electing its leader, a NATS server gone) would otherwise leave the group's
                // messages waiting out its 30 s expiry.
                crate::qos::pull(&consumer, BATCH).await
            }
            .await;
            let mut messages = match messages {
                Ok(m) => m.ready_chunks(BATCH),
                Err(e) => {
                    warn!(error = %e, "cannot read a shared subscription's QoS 1/2 messages; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(batch) = messages.next().await {
                let mut taken = Vec::new();
                let mut broken = None;
                for item in batch {
                    match item {
                        Ok(m) if to_member(&broker, &group, &filter, &m.payload) => taken.push(m),
                        Ok(m) => {
                            let _ = m.ack_with(AckKind::Nak(None)).await;
                        }
                        Err(e) => broken = Some(e.to_string()),
                    }
                }
                match broker.sync().await {
                    Ok(()) => {
                        for m in taken {
                            let _ = m.ack().await;
                        }
                    }
                    // Not acknowledged: JetStream delivers them again (here or elsewhere).
                    Err(e) => warn!(error = %e, "shared subscription messages are not durable here"),
                }
                if let Some(e) = broken {
                    // Heartbeats missed or the pull refused: read again with a new request.
                    warn!(error = %e, "a shared subscription's pull ended; reading again");
                    break;
                }
            }
        }
    }));
    tasks
}

/// Gives a framed message to one member of the group here; whether one took it.
fn to_member(broker: &PeerHandle, group: &str, filter: &str, bytes: &Bytes) -> bool {
    Frame::parse(bytes).is_some_and(|(_, packet)| {
        matches!(broker.publish_to_group(group, filter, packet), Ok(true))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_named_the_same_everywhere_and_apart_from_others() {
        assert_eq!(group_name("g", "a/b"), group_name("g", "a/b"));
        assert_ne!(group_name("g", "a/b"), group_name("g2", "a/b"));
        assert_ne!(group_name("ga", "/b"), group_name("g", "a/b"));
        assert_eq!(group_name("g", "a/b").len(), 16);
    }
}

//! Retained messages shared by every node through the stream `<prefix>_retained` (subjects
//! `<prefix>.r.>`, one message kept per subject, `cluster.replicas` replicas): each retained
//! PUBLISH on any node lands on its topic's subject, so the stream holds the cluster's last
//! value of every retained topic (an empty payload: none).
//!
//! Each node follows the stream with an ordered consumer that starts with the last message of
//! every subject: what was there when it started is stored without being routed (its
//! subscribers get it as a retained message when they subscribe, as on one node), what comes
//! after is routed as well. So a node that was down, or is new, has every retained value.

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::stream;
use futures_util::StreamExt;
use tessera_broker::cluster::PeerHandle;
use tracing::warn;

use crate::frame::Frame;
use crate::{ClusterError, Nats};

/// Creates the stream on first start (or finds it).
pub(crate) fn open_stream(nats: &Nats) -> Result<(), ClusterError> {
    let config = stream::Config {
        name: nats.name("retained"),
        subjects: vec![format!("{}.>", nats.subject("r"))],
        num_replicas: nats.config.replicas,
        max_messages_per_subject: 1,
        duplicate_window: crate::qos::DUPLICATE_WINDOW,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    crate::qos::create(nats, config)
}

/// Follows the stream for the life of the process.
pub(crate) fn spawn_follower(nats: &Nats, broker: PeerHandle, origin: u64) {
    let js = nats.jetstream.clone();
    let name = nats.name("retained");
    let subjects = format!("{}.>", nats.subject("r"));
    nats.spawn(async move {
        loop {
            let follow = async {
                let mut stream = js.get_stream(&name).await.map_err(|e| e.to_string())?;
                // Everything up to here is the state to take; what follows is news.
                let caught_up_at = stream
                    .info()
                    .await
                    .map_err(|e| e.to_string())?
                    .state
                    .last_sequence;
                let consumer = stream
                    .create_consumer(pull::OrderedConfig {
                        filter_subject: subjects.clone(),
                        deliver_policy: DeliverPolicy::LastPerSubject,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
                while let Some(m) = messages.next().await {
                    let m = m.map_err(|e| e.to_string())?;
                    let (seq, published_ms) = m.info().map_or((u64::MAX, 0), |i| {
                        (i.stream_sequence, crate::stream_ms(i.published))
                    });
                    let Some((frame, packet)) = Frame::parse(&m.payload) else {
                        continue;
                    };
                    let replay = seq <= caught_up_at;
                    if !replay && frame.origin == origin {
                        continue; // this node's own, already here
                    }
                    let done = if replay {
                        broker.retain(packet)
                    } else {
                        // Not the QoS 1/2 stream: no stream position.
                        broker.publish(packet, published_ms, frame.id(origin, 0))
                    };
                    if let Err(e) = done {
                        warn!(error = %e, "a retained message from another node could not be read");
                    }
                }
                Ok::<(), String>(())
            }
            .await;
            if let Err(e) = follow {
                warn!(error = %e, "following the retained stream; again in a second");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

//! The publishing task: everything this node sends on NATS besides KV writes and requests,
//! in the order it was handed over (`NatsPeers::forward`, takeovers). A bounded queue feeds
//! it; when NATS cannot keep up, a message is dropped for the other nodes (counted, logged,
//! and a QoS 1/2 publisher told) rather than stalling the publisher. A QoS 1/2 message goes
//! into the stream, and its ticket is settled with JetStream's acknowledgement (awaited beside
//! the queue, so the next message does not wait for it).

use bytes::Bytes;
use tessera_broker::cluster::PeerHandle;
use tokio::sync::mpsc;
use tracing::debug;

use crate::Nats;

/// Messages waiting for the publishing task.
const OUT_QUEUE: usize = 65_536;

/// What the publishing task sends.
pub(crate) enum Out {
    /// On core NATS, at most once.
    Core(String, Bytes),
    /// Into the QoS 1/2 stream; the ticket is settled with JetStream's answer.
    Durable(String, Bytes, u64),
}

/// Starts the publishing task; returns its queue.
pub(crate) fn spawn(nats: &Nats, broker: PeerHandle) -> mpsc::Sender<Out> {
    let (out, mut out_rx) = mpsc::channel::<Out>(OUT_QUEUE);
    let (client, js) = (nats.client.clone(), nats.jetstream.clone());
    nats.spawn(async move {
        while let Some(out) = out_rx.recv().await {
            match out {
                Out::Core(subject, frame) => {
                    if let Err(e) = client.publish(subject, frame).await {
                        debug!(error = %e, "publishing to NATS");
                    }
                }
                Out::Durable(subject, frame, t) => match js.publish(subject, frame).await {
                    Ok(ack) => {
                        let broker = broker.clone();
                        tokio::spawn(async move {
                            let stored = matches!(
                                tokio::time::timeout(crate::qos::ACK_WITHIN, ack).await,
                                Ok(Ok(_))
                            );
                            broker.settle(t, stored);
                        });
                    }
                    Err(e) => {
                        debug!(error = %e, "publishing to JetStream");
                        broker.settle(t, false);
                    }
                },
            }
        }
    });
    out
}

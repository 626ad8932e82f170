//! Messages from the other nodes on core NATS (QoS 0): every subject this node follows
//! (`interest.rs` decides which) feeds one task, which takes them in arrival order, drops this
//! process's own and any copy it already routed (overlapping filters each get one from NATS),
//! and routes the rest through the broker's `PeerHandle::publish`.

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;
use futures_util::StreamExt;
use tessera_broker::cluster::PeerHandle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::Nats;
use crate::frame::Frame;

/// Sequence numbers remembered per origin for dropping duplicate copies.
const REMEMBERED: usize = 65_536;

/// Where the followed subjects' messages go.
pub(crate) type Feed = mpsc::UnboundedSender<Bytes>;

/// Starts the inbound task; returns the feed the followed subjects write to.
pub(crate) fn spawn(nats: &Nats, broker: PeerHandle, origin: u64) -> Feed {
    let (feed, mut inbound) = mpsc::unbounded_channel::<Bytes>();
    nats.spawn(async move {
        let mut seen: HashMap<u64, (HashSet<u64>, VecDeque<u64>)> = HashMap::new();
        while let Some(bytes) = inbound.recv().await {
            let Some((frame, packet)) = Frame::parse(&bytes) else {
                continue;
            };
            if frame.origin == origin {
                continue;
            }
            let (set, order) = seen.entry(frame.origin).or_default();
            if !set.insert(frame.seq) {
                continue;
            }
            order.push_back(frame.seq);
            if order.len() > REMEMBERED
                && let Some(old) = order.pop_front()
            {
                set.remove(&old);
            }
            // QoS 0 (core NATS): no stream time, and never replayed.
            if let Err(e) = broker.publish(packet, 0, frame.id(origin, 0)) {
                warn!(error = %e, "a message from another node could not be read");
            }
        }
    });
    feed
}

/// Subscribes to `subject` and feeds its messages to the inbound task until aborted (dropping
/// the subscriber unsubscribes).
pub(crate) async fn follow(
    client: &async_nats::Client,
    subject: String,
    feed: Feed,
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

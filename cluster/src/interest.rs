//! The interest task: which subjects this node follows, exactly the filters its sessions hold
//! (a count per filter: the first entry subscribes, the last one gone unsubscribes). For each
//! filter, its core NATS subjects (QoS 0, into `inbound.rs`) and, as one list, the QoS 1/2
//! consumer's filter subjects (`qos.rs`), sent as numbered generations once a burst of changes
//! ends; a shared subscription's group follows its own subjects (`shared.rs`).
//!
//! The consumer's filters are first set once every subscription restored from the store has
//! been reported (`Interest::Restored`): set earlier, a restarted node would skip the messages
//! that waited for it. A SUBACK's ticket (`Interest::Settle`) and a moved session's replay
//! (`Interest::Sync`) wait for a generation that includes every change before them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tessera_broker::cluster::PeerHandle;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::Nats;
use crate::inbound::{Feed, follow};
use crate::qos::{MAX_FILTER_SUBJECTS, consumer_filters};
use crate::sessions::Position;
use crate::subjects::filter_subjects;

/// How long a SUBACK waits for the other nodes to route the subscription's messages here.
const SETTLE_WITHIN: Duration = Duration::from_secs(2);

/// What the interest task is told.
pub(crate) enum Interest {
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

/// A filter (or a group's filter) followed on NATS: its entries here, and the tasks taking
/// its messages.
type Followed = (usize, Vec<JoinHandle<()>>);

/// The consumer's filters, numbered.
pub(crate) type Filters = watch::Receiver<(u64, Vec<String>)>;

/// Starts the interest task; returns the QoS 1/2 consumer's filters.
pub(crate) fn spawn(
    nats: &Arc<Nats>,
    broker: PeerHandle,
    mut changes: mpsc::UnboundedReceiver<Interest>,
    feed: Feed,
    position: &Position,
) -> Filters {
    let (filters, filters_rx) = watch::channel((0u64, Vec::new()));
    let (client, messages, durable) = (nats.client.clone(), nats.subject("m"), nats.subject("q"));
    let (cluster, applied) = (nats.clone(), position.applied.subscribe());
    nats.spawn(async move {
        let mut followed: HashMap<String, Followed> = HashMap::new();
        // Shared subscriptions' groups, apart: their messages come another way.
        let mut groups: HashMap<(String, String), Followed> = HashMap::new();
        let mut restored = false;
        let mut generation = 0u64;
        while let Some(change) = changes.recv().await {
            match change {
                Interest::Changed(filter, Some(group), added) => {
                    let key = (group, filter);
                    let entry = groups.entry(key.clone()).or_insert((0, Vec::new()));
                    if added {
                        entry.0 += 1;
                        if entry.0 == 1 {
                            entry.1 =
                                crate::shared::follow(&cluster, &broker, &key.0, &key.1).await;
                        }
                    } else {
                        entry.0 = entry.0.saturating_sub(1);
                        if entry.0 == 0
                            && let Some((_, tasks)) = groups.remove(&key)
                        {
                            tasks.iter().for_each(JoinHandle::abort);
                        }
                    }
                }
                Interest::Changed(filter, None, added) => {
                    let entry = followed.entry(filter.clone()).or_insert((0, Vec::new()));
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
                            && let Some((_, tasks)) = followed.remove(&filter)
                        {
                            tasks.iter().for_each(JoinHandle::abort);
                        }
                    }
                    // The QoS 1/2 consumer follows the same filters (once the burst ends).
                    if restored && changes.is_empty() {
                        update_filters(&filters, &mut generation, &followed, &durable);
                    }
                }
                Interest::Restored => {
                    restored = true;
                    generation += 1;
                    let subjects = consumer_subjects(&followed, &durable);
                    let _ = filters.send((generation, consumer_filters(&durable, subjects)));
                }
                Interest::Sync(reply) => {
                    if restored {
                        update_filters(&filters, &mut generation, &followed, &durable);
                    }
                    let _ = reply.send(generation);
                }
                Interest::Settle(ticket) => {
                    // Before the restore the consumer has no filters yet (on a first start it
                    // does not even exist: it will deliver only what is published after it
                    // is made): the SUBACK waits for the first generation, which has them all.
                    let want = if restored {
                        update_filters(&filters, &mut generation, &followed, &durable);
                        generation
                    } else {
                        generation + 1
                    };
                    let (mut applied, broker) = (applied.clone(), broker.clone());
                    tokio::spawn(async move {
                        // Bounded: without JetStream the SUBACK still goes (the subscription
                        // works here; QoS 1/2 from other nodes follow once it is back).
                        let waited =
                            tokio::time::timeout(SETTLE_WITHIN, applied.wait_for(|g| *g >= want))
                                .await;
                        if waited.is_err() {
                            tracing::warn!(
                                "SUBACK sent before this node's QoS 1/2 consumer took the new \
                                 filters: other nodes' messages published meanwhile may miss it"
                            );
                        }
                        broker.settle(ticket, true);
                    });
                }
            }
        }
    });
    filters_rx
}

/// Gives the consumer the filters of the subscriptions held now, as a new generation, unless
/// it has them.
fn update_filters(
    filters: &watch::Sender<(u64, Vec<String>)>,
    generation: &mut u64,
    followed: &HashMap<String, Followed>,
    base: &str,
) {
    // Many filters read everything (`consumer_filters`): known without listing them, which
    // would cost a pass over every filter at each SUBACK.
    let next = if followed.len() > MAX_FILTER_SUBJECTS {
        vec![format!("{base}.>")]
    } else {
        consumer_filters(base, consumer_subjects(followed, base))
    };
    if filters.borrow().1 != next {
        *generation += 1;
        let _ = filters.send((*generation, next));
    }
}

/// The QoS 1/2 stream subjects of the filters held.
fn consumer_subjects<T>(followed: &HashMap<String, T>, base: &str) -> Vec<String> {
    followed
        .keys()
        .filter(|f| !f.is_empty())
        .flat_map(|f| filter_subjects(base, f))
        .collect()
}

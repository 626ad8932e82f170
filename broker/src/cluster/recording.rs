//! [`RecordingPeers`]: a [`Peers`] that records what the engine tells the cluster, in order,
//! for in-process tests of the engine's cluster side (as `MemoryStore` is for the storage
//! seam). It settles nothing by itself: a test settles tickets through the [`PeerHandle`]
//! (super::PeerHandle), offers the sessions a claim finds, and plays the other nodes' part
//! with the handle's inbound methods.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::{ClusterCounts, Event, MovedSession, Peers, Qos2Step};
use crate::auth::BoxFuture;
use crate::codec::{self, Packet, Publish, Version};

/// One thing the engine told the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Forward {
        topic: String,
        retain: bool,
        packet: Bytes,
        ticket: Option<u64>,
    },
    Interest {
        filter: String,
        group: Option<String>,
        added: bool,
    },
    InterestTicket(u64),
    Connected {
        client_id: String,
        clean_start: bool,
    },
    Claimed {
        client_id: String,
        clean_start: bool,
        expiry_interval: u32,
    },
    Resumed(String),
    SessionChanged(String),
    Qos2 {
        client_id: String,
        packet_id: u16,
        step: Qos2Step,
        ticket: u64,
    },
    /// `will`: the PUBLISH, its delay, and whether its connection was gone.
    Will {
        client_id: String,
        will: Option<(Bytes, u32, bool)>,
    },
}

impl Recorded {
    /// The PUBLISH a `Forward` carries.
    pub fn publish(&self) -> Option<Publish> {
        let Recorded::Forward { packet, .. } = self else {
            return None;
        };
        match codec::decode(&mut BytesMut::from(&packet[..]), Version::V5, usize::MAX) {
            Ok(Some(Packet::Publish(p))) => Some(p),
            _ => None,
        }
    }
}

#[derive(Default)]
pub struct RecordingPeers {
    log: Mutex<Vec<Recorded>>,
    /// The log's length, for waiters.
    grew: watch::Sender<usize>,
    offered: Mutex<HashMap<String, MovedSession>>,
    counts: Mutex<ClusterCounts>,
}

impl RecordingPeers {
    /// Everything recorded so far, in order.
    pub fn log(&self) -> Vec<Recorded> {
        self.log.lock().clone()
    }

    /// Waits until something matching `pred` is recorded (or was), and returns the first.
    pub async fn wait_for(&self, pred: impl Fn(&Recorded) -> bool) -> Recorded {
        self.wait_until(|log| log.iter().find(|r| pred(r)).cloned())
            .await
    }

    /// Waits until `f` finds what it looks for in the log.
    pub async fn wait_until<T>(&self, f: impl Fn(&[Recorded]) -> Option<T>) -> T {
        let mut grew = self.grew.subscribe();
        loop {
            if let Some(found) = f(&self.log.lock()) {
                return found;
            }
            // The sender lives as long as `self`.
            let _ = grew.changed().await;
        }
    }

    /// The session the next claim of `client_id` finds on "another node".
    pub fn offer(&self, client_id: &str, session: MovedSession) {
        self.offered.lock().insert(client_id.to_string(), session);
    }

    pub fn set_counts(&self, counts: ClusterCounts) {
        *self.counts.lock() = counts;
    }

    fn record(&self, r: Recorded) {
        let mut log = self.log.lock();
        log.push(r);
        let n = log.len();
        drop(log);
        self.grew.send_replace(n);
    }
}

impl Peers for RecordingPeers {
    fn forward(&self, topic: &str, retain: bool, packet: Bytes, ticket: Option<u64>, _seq: u64) {
        self.record(Recorded::Forward {
            topic: topic.to_string(),
            retain,
            packet,
            ticket,
        });
    }

    fn event(&self, event: Event<'_>) {
        self.record(match event {
            Event::Interest {
                filter,
                group,
                added,
            } => Recorded::Interest {
                filter: filter.to_string(),
                group: group.map(str::to_string),
                added,
            },
            Event::InterestTicket(t) => Recorded::InterestTicket(t),
            Event::Connected {
                client_id,
                clean_start,
                ..
            } => Recorded::Connected {
                client_id: client_id.to_string(),
                clean_start,
            },
            Event::Resumed { client_id } => Recorded::Resumed(client_id.to_string()),
            Event::SessionChanged { client_id } => Recorded::SessionChanged(client_id.to_string()),
            Event::Qos2 {
                client_id,
                packet_id,
                step,
                ticket,
            } => Recorded::Qos2 {
                client_id: client_id.to_string(),
                packet_id,
                step,
                ticket,
            },
            Event::Will { client_id, will } => Recorded::Will {
                client_id: client_id.to_string(),
                will: will.map(|w| {
                    let packet = Bytes::copy_from_slice(w.packet);
                    (packet, w.delay, w.lost_at.is_some())
                }),
            },
        });
    }

    fn claim(
        &self,
        client_id: &str,
        clean_start: bool,
        expiry_interval: u32,
    ) -> BoxFuture<'static, Option<MovedSession>> {
        self.record(Recorded::Claimed {
            client_id: client_id.to_string(),
            clean_start,
            expiry_interval,
        });
        let offered = self.offered.lock().remove(client_id);
        Box::pin(std::future::ready(offered.filter(|_| !clean_start)))
    }

    fn counts(&self) -> ClusterCounts {
        *self.counts.lock()
    }
}

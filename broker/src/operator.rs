//! What an operator reads from and does to a running broker, for code outside it (the metrics
//! endpoint, the admin socket, the console): a [`Metrics`] snapshot, the live connections, a
//! kick, the retained messages and their removal. Reads take each lock briefly and alone;
//! nothing here runs on the message path.

use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::broker::BrokerHandle;
use crate::codec::{QoS, ReasonCode, Utf8Bytes};
use crate::stats::{Dropped, HistogramValues, TRANSPORTS};

/// The broker's counters and gauges at one instant.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Open connections that completed CONNECT, by transport.
    pub connections: Vec<(&'static str, u64)>,
    pub connections_accepted: u64,
    /// Sessions with a connection attached.
    pub sessions_online: u64,
    /// Sessions kept without a connection (persistent sessions waiting for their client).
    pub sessions_offline: u64,
    /// Messages and payload bytes, by QoS 0, 1, 2.
    pub messages_received: [u64; 3],
    pub payload_bytes_received: [u64; 3],
    pub messages_sent: [u64; 3],
    pub payload_bytes_sent: [u64; 3],
    pub network_bytes_received: u64,
    pub network_bytes_sent: u64,
    /// Messages dropped, by reason label.
    pub dropped: Vec<(&'static str, u64)>,
    /// Messages waiting in session queues (all sessions), and the longest single queue to
    /// a power of two (a queue of 5 to 7 reads 7; a full queue reads its bound).
    pub queued_messages: u64,
    pub queued_bytes: u64,
    pub longest_queue: u64,
    /// Messages sent and not yet acknowledged (QoS 1 and 2 in flight).
    pub inflight_messages: u64,
    pub retained_messages: u64,
    pub retained_bytes: u64,
    pub subscriptions: u64,
    /// Store commits with durability `durable` (`None` otherwise).
    pub store: Option<StoreMetrics>,
    /// The cluster as last seen, when this broker is one of its nodes.
    pub cluster: Option<crate::cluster::ClusterCounts>,
    pub uptime_seconds: f64,
}

#[derive(Debug, Clone, Default)]
pub struct StoreMetrics {
    pub commits: u64,
    pub failures: u64,
    pub refused_acknowledgements: u64,
    pub commit_latency: HistogramValues,
    /// Whether the last commit succeeded.
    pub writable: bool,
}

/// One retained message as the console lists it.
#[derive(Debug, Clone)]
pub struct RetainedInfo {
    pub topic: String,
    pub payload: bytes::Bytes,
    pub qos: QoS,
}

impl BrokerHandle {
    /// Reads every counter, and walks the sessions once for the gauges (each session's lock
    /// taken alone, for a moment).
    pub fn metrics(&self) -> Metrics {
        let b = &self.0;
        let s = &b.stats;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let mut m = Metrics {
            connections: TRANSPORTS
                .iter()
                .zip(&s.clients_connected)
                .map(|(t, c)| (*t, load(c)))
                .collect(),
            connections_accepted: load(&s.connections_total),
            messages_received: s.messages_received.get(),
            payload_bytes_received: s.payload_received.get(),
            messages_sent: s.messages_sent.get(),
            payload_bytes_sent: s.payload_sent.get(),
            network_bytes_received: load(&s.bytes_received),
            network_bytes_sent: load(&s.bytes_sent),
            dropped: Dropped::ALL
                .iter()
                .map(|d| (d.label(), load(&s.dropped[*d as usize])))
                .collect(),
            retained_messages: b.retained_count() as u64,
            retained_bytes: b.retained_bytes() as u64,
            subscriptions: b.subscription_count() as u64,
            uptime_seconds: b.started.elapsed().as_secs_f64(),
            cluster: b.cluster.counts(),
            ..Metrics::default()
        };
        // Kept as sessions change (`gauges.rs`): a scrape costs the same at any fleet size.
        let g = b.gauges.totals();
        m.sessions_online = g.online;
        m.sessions_offline = g.offline;
        m.queued_messages = g.queued;
        m.queued_bytes = g.queued_bytes;
        m.inflight_messages = g.inflight;
        // No queue is longer than its bound, so a full one reads exactly.
        m.longest_queue = g.longest_queue_bound.min(b.limits.max_messages as u64);
        if let Some(j) = b.journal() {
            let (commits, failures) = j.counts();
            m.store = Some(StoreMetrics {
                commits,
                failures,
                refused_acknowledgements: load(&s.store_refusals),
                commit_latency: j.commit_latency(),
                writable: j.writable(),
            });
        }
        m
    }

    /// Whether the broker's store took its last commit (always true without a journal).
    pub fn store_writable(&self) -> bool {
        self.0.journal().is_none_or(|j| j.writable())
    }

    /// Ends the connection of `client_id` with DISCONNECT 0x98 (Administrative action); its
    /// session stays as its expiry says. Returns whether a connection was told.
    pub fn kick(&self, client_id: &str) -> bool {
        self.disconnect_where(
            |c| &*c.client_id == client_id,
            ReasonCode::ADMINISTRATIVE_ACTION,
            "disconnected by the operator",
        ) > 0
    }

    /// A page of the retained messages whose topic starts with `prefix`, in topic order: the
    /// first `limit` (0: all) whose topic comes after `after`. Only the page is copied.
    pub fn retained(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<RetainedInfo> {
        let now = Instant::now();
        let tree = self.0.retained.read();
        // The levels the prefix names in full narrow the walk to their subtree.
        let candidates = match prefix.rfind('/') {
            Some(i) if !prefix[..i].contains(['+', '#']) => {
                tree.matching(&format!("{}#", &prefix[..=i]), now)
            }
            _ => tree.all(now),
        };
        drop(tree);
        let selected = candidates.into_iter().filter(|m| {
            let topic = m.topic.as_str();
            topic.starts_with(prefix) && after.is_none_or(|a| topic > a)
        });
        let page = crate::page::first_by(selected, limit, |a, b| {
            a.topic.as_str().cmp(b.topic.as_str())
        });
        page.iter()
            .map(|m| RetainedInfo {
                topic: m.topic.as_str().to_string(),
                payload: m.payload.clone(),
                qos: m.qos,
            })
            .collect()
    }

    /// Removes the retained message of `topic`, as an empty retained PUBLISH would (journaled
    /// with durability on, delivered to no one). Returns whether there was one.
    pub fn delete_retained(&self, topic: &str) -> bool {
        self.0
            .clear_retained(Utf8Bytes::from_string(topic.to_string()))
    }
}

//! Broker-wide counters, read by the `$SYS` publisher and, through [`crate::BrokerHandle::metrics`],
//! by the Prometheus endpoint. Each is a relaxed atomic bumped where the event happens: no lock
//! and no allocation on the message path. Counters split by QoS, by drop reason or by
//! transport are fixed arrays indexed by an enum, so a label costs an index, not a map lookup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::codec::QoS;

#[derive(Debug, Default)]
pub struct Stats {
    /// PUBLISH packets received from clients (and wills), by QoS. `$SYS` updates are not counted.
    pub messages_received: ByQos,
    /// Payload bytes of those messages, by QoS.
    pub payload_received: ByQos,
    /// PUBLISH packets written to clients, by QoS of the delivery.
    pub messages_sent: ByQos,
    pub payload_sent: ByQos,
    /// Bytes read from and written to clients' sockets (every packet, after TLS / WebSocket).
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Messages dropped, by why.
    pub dropped: [AtomicU64; Dropped::ALL.len()],
    /// Connections that completed CONNECT and are open now, by transport.
    pub clients_connected: [AtomicU64; TRANSPORTS.len()],
    /// Network connections accepted since start.
    pub connections_total: AtomicU64,
    /// Acknowledgements turned into refusals because the store failed to commit.
    pub store_refusals: AtomicU64,
}

/// Listener kinds, in the order of [`Stats::clients_connected`].
pub const TRANSPORTS: [&str; 4] = ["tcp", "tls", "ws", "wss"];

/// The index of a transport name in [`TRANSPORTS`] (an unknown one counts as the last).
pub fn transport_index(transport: &str) -> usize {
    TRANSPORTS
        .iter()
        .position(|t| *t == transport)
        .unwrap_or(TRANSPORTS.len() - 1)
}

/// One counter per QoS level, on a cache line of its own: publishers' threads bump the
/// received counters while subscribers' threads bump the sent ones, and sharing a line would
/// make each bump wait for the other side's.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct ByQos(pub [AtomicU64; 3]);

impl ByQos {
    pub fn add(&self, qos: QoS, n: u64) {
        self.0[qos as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn get(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.0[i].load(Ordering::Relaxed))
    }
}

/// PUBLISH packets one connection wrote in one `fill`, added to the shared counters once
/// when it is dropped (a busy subscriber takes dozens per fill).
pub struct SentTally<'a> {
    stats: &'a Stats,
    messages: [u64; 3],
    bytes: [u64; 3],
}

impl<'a> SentTally<'a> {
    pub fn new(stats: &'a Stats) -> SentTally<'a> {
        SentTally {
            stats,
            messages: [0; 3],
            bytes: [0; 3],
        }
    }

    pub fn add(&mut self, qos: QoS, payload: usize) {
        self.messages[qos as usize] += 1;
        self.bytes[qos as usize] += payload as u64;
    }
}

impl Drop for SentTally<'_> {
    fn drop(&mut self) {
        for q in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let i = q as usize;
            if self.messages[i] > 0 {
                self.stats.messages_sent.add(q, self.messages[i]);
                self.stats.payload_sent.add(q, self.bytes[i]);
            }
        }
    }
}

/// Why a message did not reach a subscriber (or was refused whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// A session's queue was full (the oldest dropped, or the new one refused).
    QueueFull,
    /// Its Message Expiry Interval passed before delivery.
    Expired,
    /// Larger than the subscriber's Maximum Packet Size.
    TooLarge,
    /// A QoS 0 publish the client was not allowed to make (rights, topic, payload format).
    Refused,
    /// A topic rule denies this subscriber the message.
    DeniedDelivery,
    /// A retained message over `max_retained_messages` / `max_retained_bytes`.
    RetainedLimit,
}

impl Dropped {
    pub const ALL: [Dropped; 6] = [
        Dropped::QueueFull,
        Dropped::Expired,
        Dropped::TooLarge,
        Dropped::Refused,
        Dropped::DeniedDelivery,
        Dropped::RetainedLimit,
    ];

    /// The `reason` label of `tessera_messages_dropped_total`.
    pub fn label(self) -> &'static str {
        match self {
            Dropped::QueueFull => "queue_full",
            Dropped::Expired => "expired",
            Dropped::TooLarge => "too_large",
            Dropped::Refused => "refused",
            Dropped::DeniedDelivery => "denied_delivery",
            Dropped::RetainedLimit => "retained_limit",
        }
    }
}

impl Stats {
    pub fn drop_one(&self, why: Dropped) {
        self.dropped[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn connected_total(&self) -> u64 {
        self.clients_connected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// Upper bounds (seconds) of the store commit latency histogram's buckets.
pub const COMMIT_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A fixed-bucket latency histogram of atomics (one commit, one observation: written by the
/// journal's thread only, read by scrapes).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket of [`COMMIT_BUCKETS`], the last one for +Inf (not cumulative).
    buckets: [AtomicU64; COMMIT_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// A histogram as read: (upper bound in seconds, observations in that bucket alone), the sum
/// in seconds and the count.
#[derive(Debug, Clone, Default)]
pub struct HistogramValues {
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = COMMIT_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(COMMIT_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self) -> HistogramValues {
        let mut buckets: Vec<(f64, u64)> = COMMIT_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(b, c)| (*b, c.load(Ordering::Relaxed)))
            .collect();
        buckets.push((
            f64::INFINITY,
            self.buckets[COMMIT_BUCKETS.len()].load(Ordering::Relaxed),
        ));
        HistogramValues {
            buckets,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_puts_each_observation_in_its_bucket_once() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(80));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(9));
        let v = h.read();
        assert_eq!(v.count, 4);
        assert_eq!(v.buckets[0], (0.0001, 2));
        assert_eq!(v.buckets[5], (0.005, 1));
        assert_eq!(*v.buckets.last().unwrap(), (f64::INFINITY, 1));
        assert_eq!(v.buckets.iter().map(|b| b.1).sum::<u64>(), 4);
        assert!((v.sum_seconds - 9.00318).abs() < 1e-9);
    }

    #[test]
    fn unknown_transports_count_somewhere() {
        assert_eq!(transport_index("tls"), 1);
        assert_eq!(transport_index("quic"), 3);
    }
}

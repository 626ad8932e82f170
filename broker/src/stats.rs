//! Broker-wide counters, read by the `$SYS` publisher and by operators.

use std::sync::atomic::AtomicU64;

#[derive(Debug, Default)]
pub struct Stats {
    /// PUBLISH packets received from clients (and wills and `$SYS` updates routed).
    pub messages_received: AtomicU64,
    /// PUBLISH packets written to clients.
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Messages dropped: queue full, expired before delivery, too large for the client, or a
    /// QoS 0 publish the client was not allowed to make.
    pub messages_dropped: AtomicU64,
    /// Connections that completed CONNECT and are open now.
    pub clients_connected: AtomicU64,
    /// Network connections accepted since start.
    pub connections_total: AtomicU64,
    /// Acknowledgements turned into refusals because the store failed to commit.
    pub store_refusals: AtomicU64,
}

//! `mqtt:`: the protocol limits and features the broker announces and enforces, and the
//! per-client queue bounds. Numbers with a range are checked while parsing, so an error points
//! at the value.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// Drop the oldest queued message for that client and count it.
    #[default]
    DropOldest,
    /// Refuse the new message for that client; a QoS 1/2 publisher gets reason 0x97.
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Largest packet accepted from a client, advertised as Maximum Packet Size (bytes).
    #[serde(deserialize_with = "max_packet_size")]
    pub max_packet_size: u32,
    /// QoS 1/2 publishes a client may have unacknowledged towards the broker (Receive Maximum).
    #[serde(deserialize_with = "receive_maximum")]
    pub receive_maximum: u16,
    /// Highest QoS the broker grants (0, 1 or 2).
    #[serde(deserialize_with = "max_qos")]
    pub max_qos: u8,
    pub retain_available: bool,
    pub wildcard_subscriptions: bool,
    pub shared_subscriptions: bool,
    pub subscription_identifiers: bool,
    /// Topic aliases a client may use towards the broker (0 disables).
    pub topic_alias_maximum: u16,
    /// Upper bound on a client's keep-alive (seconds); 0 = no bound. Longer requests, and
    /// keep-alive 0, are answered with Server Keep Alive.
    pub max_keep_alive: u16,
    /// Upper bound on Session Expiry Interval (seconds); a larger request is lowered to it.
    pub max_session_expiry: u32,
    /// Seconds a new connection has to send CONNECT.
    #[serde(deserialize_with = "connect_timeout")]
    pub connect_timeout: u32,
    /// Concurrent client connections; beyond it CONNACK 0x97 (3.1.1: 0x03).
    pub max_connections: u32,
    /// Messages queued per client (offline or behind its flow control).
    #[serde(deserialize_with = "max_queued_messages")]
    pub max_queued_messages: u32,
    /// Payload bytes queued per client.
    pub max_queued_bytes: u64,
    pub queue_full: QueueFullPolicy,
    /// Bytes of encoded packets buffered for writing to one client before the broker stops
    /// reading from it (its own acknowledgements) and stops draining its queue.
    #[serde(deserialize_with = "max_client_buffer")]
    pub max_client_buffer: u32,
    /// Also queue QoS 0 messages for offline persistent sessions.
    pub queue_qos0_offline: bool,
    /// Accept C0/C1 control characters (U+0001-U+001F, U+007F-U+009F) in client identifiers,
    /// user names and topics. Off: refused, as mosquitto does.
    pub allow_control_characters: bool,
    /// Bytes of a topic name or filter (beyond: PUBACK/PUBREC 0x90, SUBACK/UNSUBACK 0x8F).
    #[serde(deserialize_with = "max_topic_length")]
    pub max_topic_length: u32,
    /// `/`-separated levels of a topic name or filter (same answers).
    #[serde(deserialize_with = "max_topic_levels")]
    pub max_topic_levels: u32,
    /// Subscriptions one session may hold; a SUBSCRIBE beyond it gets 0x97 for that filter.
    #[serde(deserialize_with = "max_subscriptions")]
    pub max_subscriptions: u32,
    /// Retained topics the broker holds, and their bytes (topic + payload); a new retained
    /// value beyond either is refused (QoS 1/2: 0x97; QoS 0: dropped and counted).
    pub max_retained_messages: u64,
    pub max_retained_bytes: u64,
    /// Per-connection inbound rate limits, PUBLISH packets and bytes per second (0: none).
    /// Over the limit the broker stops reading from that client for a while; it never drops
    /// what it has read.
    pub max_inbound_messages_per_second: u32,
    pub max_inbound_bytes_per_second: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_packet_size: 1024 * 1024,
            receive_maximum: 100,
            max_qos: 2,
            retain_available: true,
            wildcard_subscriptions: true,
            shared_subscriptions: true,
            subscription_identifiers: true,
            topic_alias_maximum: 64,
            max_keep_alive: 0,
            max_session_expiry: u32::MAX,
            connect_timeout: 10,
            max_connections: 100_000,
            max_queued_messages: 1000,
            max_queued_bytes: 64 * 1024 * 1024,
            queue_full: QueueFullPolicy::DropOldest,
            max_client_buffer: 1024 * 1024,
            queue_qos0_offline: false,
            allow_control_characters: false,
            max_topic_length: 65535,
            max_topic_levels: 128,
            max_subscriptions: 10_000,
            max_retained_messages: 10_000_000,
            max_retained_bytes: 1 << 30,
            max_inbound_messages_per_second: 0,
            max_inbound_bytes_per_second: 0,
        }
    }
}

/// Declares a deserializer that range-checks a number, so the error carries the value's position.
macro_rules! bounded {
    ($name:ident, $ty:ty, $lo:expr, $hi:expr, $why:expr) => {
        fn $name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            let v = <$ty>::deserialize(d)?;
            if !($lo..=$hi).contains(&v) {
                return Err(serde::de::Error::custom(format!(
                    "field `mqtt.{}`: {} (got {v})",
                    stringify!($name),
                    $why
                )));
            }
            Ok(v)
        }
    };
}
bounded!(
    max_packet_size,
    u32,
    16,
    268_435_455,
    "must be between 16 and 268435455"
);
bounded!(receive_maximum, u16, 1, u16::MAX, "must be at least 1");
bounded!(max_qos, u8, 0, 2, "must be 0, 1 or 2");
bounded!(
    connect_timeout,
    u32,
    1,
    3600,
    "must be between 1 and 3600 seconds"
);
bounded!(max_queued_messages, u32, 1, u32::MAX, "must be at least 1");
bounded!(
    max_client_buffer,
    u32,
    4096,
    u32::MAX,
    "must be at least 4096"
);
bounded!(
    max_topic_length,
    u32,
    1,
    65535,
    "must be between 1 and 65535"
);
bounded!(
    max_topic_levels,
    u32,
    1,
    65535,
    "must be between 1 and 65535"
);
bounded!(max_subscriptions, u32, 1, u32::MAX, "must be at least 1");

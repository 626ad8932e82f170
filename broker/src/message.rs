//! Application messages as the broker holds them: one shared [`Message`] per PUBLISH received,
//! and one small [`Delivery`] per subscriber that references it.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::{Properties, Publish, QoS, Utf8Bytes, encode_message_properties};

/// A message as published. Shared by every delivery of it; never copied per subscriber.
#[derive(Debug)]
pub struct Message {
    pub topic: Utf8Bytes,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The forwarded properties (payload format, content type, response topic, correlation
    /// data, user properties), `None` when there are none: an empty `Properties` is 400 bytes,
    /// more than the rest of a message, and a retained or queued message carries it for as
    /// long as it lives. Read them through [`Message::properties`].
    pub properties: Option<Box<Properties>>,
    /// From Message Expiry Interval; `None` = never expires.
    pub expires_at: Option<Instant>,
    /// The session that published it (for No Local); 0 for the broker itself ($SYS, wills).
    pub publisher: u64,
    /// `properties` encoded once, on first delivery, and shared by every subscriber.
    pub encoded_properties: OnceLock<Bytes>,
    /// The id the message's body is stored under, once it is queued to a persistent session
    /// (the same for every session; see `crate::journal`).
    pub stored_id: OnceLock<u64>,
    /// When a QoS 1/2 message was published, in milliseconds since the epoch (on the node it
    /// was published on): the age of what a session has not acknowledged, from which a
    /// session moving to another node is replayed (`cluster/sessions.rs`). 0: not known (QoS
    /// 0, restored from the store).
    pub published_ms: AtomicU64,
    /// Its name in a cluster, once it has one (see [`ClusterId`]).
    pub cluster_id: OnceLock<ClusterId>,
}

/// A message's name between the nodes of a cluster: the node it was published on (`origin`,
/// 0 for this node) and its number there, and for one read here from the QoS 1/2 stream, its
/// sequence in the stream (0 otherwise). A moved session's replay skips by it what the
/// session already has (`cluster/sessions.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ClusterId {
    pub origin: u64,
    pub seq: u64,
    pub stream_seq: u64,
}

impl Message {
    /// A message of the broker's own: no properties, no expiry, no publishing session.
    pub(crate) fn plain(topic: Utf8Bytes, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message {
            topic,
            payload,
            qos,
            retain,
            properties: None,
            expires_at: None,
            publisher: 0,
            encoded_properties: Default::default(),
            stored_id: Default::default(),
            published_ms: Default::default(),
            cluster_id: Default::default(),
        }
    }

    /// The stand-in for a QoS 2 message the client has had, of which only the PUBCOMP is
    /// awaited (a moved session's released entry): nothing to send again.
    pub(crate) fn delivered() -> Message {
        Message::plain(Utf8Bytes::from(""), Bytes::new(), QoS::ExactlyOnce, false)
    }

    pub fn from_publish(p: Publish, topic: Utf8Bytes, publisher: u64) -> Message {
        let expires_at = p
            .properties
            .message_expiry_interval
            .map(|s| Instant::now() + Duration::from_secs(s as u64));
        let mut properties = p.properties;
        // Per-hop fields must not travel on.
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        properties.message_expiry_interval = None;
        Message {
            topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: boxed(properties),
            expires_at,
            publisher,
            encoded_properties: OnceLock::new(),
            stored_id: OnceLock::new(),
            published_ms: Default::default(),
            cluster_id: Default::default(),
        }
    }

    /// The application message a will becomes when it is published.
    pub fn from_will(will: crate::codec::Will) -> Message {
        let mut properties = will.properties;
        let expires_at = properties
            .message_expiry_interval
            .take()
            .map(|s| Instant::now() + Duration::from_secs(s as u64));
        properties.will_delay_interval = None;
        Message {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties: boxed(properties),
            expires_at,
            publisher: 0,
            encoded_properties: OnceLock::new(),
            stored_id: OnceLock::new(),
            published_ms: Default::default(),
            cluster_id: Default::default(),
        }
    }

    /// Records that it is published now (not when made: a will is made at CONNECT and
    /// published later).
    pub(crate) fn stamp_published(&self) {
        self.published_ms
            .store(crate::clock::now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The forwarded properties as wire bytes (encoded on first use).
    pub fn wire_properties(&self) -> &[u8] {
        self.encoded_properties
            .get_or_init(|| encode_message_properties(self.properties()))
    }

    pub fn properties(&self) -> &Properties {
        static NONE: std::sync::LazyLock<Properties> =
            std::sync::LazyLock::new(Properties::default);
        self.properties.as_deref().unwrap_or(&NONE)
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Remaining expiry interval in whole seconds (rounded up, so never 0 for a live message).
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            secs.clamp(1, u32::MAX as u64) as u32
        })
    }
}

/// Properties as a message keeps them: boxed, and only if there are any.
pub(crate) fn boxed(properties: Properties) -> Option<Box<Properties>> {
    (!properties.is_empty()).then(|| Box::new(properties))
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(published QoS, subscription QoS).
    pub qos: QoS,
    /// The RETAIN flag to send: set for retained messages sent on subscribe, and for live
    /// messages only with Retain As Published.
    pub retain: bool,
    /// Subscription Identifiers of the matching subscriptions.
    pub subscription_ids: Vec<u32>,
    /// Its entry in the store, when it is journaled (a QoS 1/2 message of a persistent
    /// session with durability on).
    pub stored: Option<Stored>,
}

/// How a delivery is kept in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The session's sequence number of the entry.
    pub seq: u64,
    /// The body is stored once for every session it was routed to, not in the entry.
    pub shared: bool,
}

impl Delivery {
    /// What the journal needs to remove this delivery's entry, if it has one.
    pub(crate) fn stored_ref(&self) -> Option<StoredRef> {
        let s = self.stored?;
        Some(StoredRef {
            seq: s.seq,
            message: if s.shared {
                Some(*self.message.stored_id.get()?)
            } else {
                None
            },
        })
    }
}

/// A journaled queue entry: its sequence number, and the shared message body it references
/// (`None` when the body is in the entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredRef {
    pub seq: u64,
    pub message: Option<u64>,
}

//! The store seam: where retained messages and persistent sessions (subscriptions, queued and
//! in-flight messages) are kept so that a new broker instance can restore them.
//!
//! The broker works on its in-memory state and writes through this trait: a retained message
//! when it changes, a session when its connection goes away and at shutdown, a deletion when a
//! session ends. At start it loads everything back. [`MemoryStore`] keeps the records in
//! memory (state survives a `Server` restart within the process); a durable backend (redb)
//! implements the same trait.
//!
//! Invariant: a record reflects the broker's state at the moment it was written; records of
//! ended sessions are deleted, never left to be restored.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::codec::{Properties, QoS, SubscriptionOptions, Utf8Bytes};
use crate::message::{Delivery, Message};

/// An application message as stored: expiry on the wall clock, so it survives a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties,
    pub expires_at: Option<SystemTime>,
}

impl StoredMessage {
    pub fn from_message(m: &Message) -> StoredMessage {
        let now_i = Instant::now();
        let now_s = SystemTime::now();
        StoredMessage {
            topic: m.topic.to_string(),
            payload: m.payload.clone(),
            qos: m.qos,
            retain: m.retain,
            properties: m.properties.clone(),
            expires_at: m
                .expires_at
                .map(|t| now_s + t.saturating_duration_since(now_i)),
        }
    }

    pub fn to_message(&self) -> Message {
        let now_i = Instant::now();
        let now_s = SystemTime::now();
        Message {
            topic: Utf8Bytes::from(self.topic.as_str()),
            payload: self.payload.clone(),
            qos: self.qos,
            retain: self.retain,
            properties: self.properties.clone(),
            expires_at: self
                .expires_at
                .map(|t| now_i + t.duration_since(now_s).unwrap_or_default()),
            publisher: 0,
            encoded_properties: Default::default(),
        }
    }
}

/// A message waiting for, or in flight to, a session's client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDelivery {
    pub message: StoredMessage,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

impl StoredDelivery {
    pub fn from_delivery(d: &Delivery) -> StoredDelivery {
        StoredDelivery {
            message: StoredMessage::from_message(&d.message),
            qos: d.qos,
            retain: d.retain,
            subscription_ids: d.subscription_ids.clone(),
        }
    }

    pub fn to_delivery(&self) -> Delivery {
        Delivery {
            message: Arc::new(self.message.to_message()),
            qos: self.qos,
            retain: self.retain,
            subscription_ids: self.subscription_ids.clone(),
        }
    }
}

/// An outgoing QoS 1/2 message awaiting acknowledgement, by packet identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredInflight {
    Published(Box<StoredDelivery>),
    Released,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    /// The full filter, `$share/group/` prefix included.
    pub filter: String,
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub client_id: String,
    pub expiry_interval: u32,
    pub subscriptions: Vec<StoredSubscription>,
    pub inflight: Vec<(u16, StoredInflight)>,
    pub pending: Vec<StoredDelivery>,
    pub incoming_qos2: Vec<u16>,
    /// When the session was written; its expiry counts from here.
    pub saved_at: SystemTime,
}

/// Everything a store holds.
#[derive(Debug, Clone, Default)]
pub struct StoredState {
    pub retained: Vec<StoredMessage>,
    pub sessions: Vec<StoredSession>,
}

/// Persistence of retained messages and sessions. Methods are called with no broker lock held.
pub trait Store: Send + Sync + 'static {
    fn load(&self) -> io::Result<StoredState>;
    fn put_retained(&self, message: &StoredMessage) -> io::Result<()>;
    fn delete_retained(&self, topic: &str) -> io::Result<()>;
    fn put_session(&self, session: &StoredSession) -> io::Result<()>;
    fn delete_session(&self, client_id: &str) -> io::Result<()>;
}

/// Keeps records in memory: state outlives a `Server` in the same process, not the process.
#[derive(Default)]
pub struct MemoryStore {
    retained: Mutex<HashMap<String, StoredMessage>>,
    sessions: Mutex<HashMap<String, StoredSession>>,
}

impl Store for MemoryStore {
    fn load(&self) -> io::Result<StoredState> {
        Ok(StoredState {
            retained: self.retained.lock().values().cloned().collect(),
            sessions: self.sessions.lock().values().cloned().collect(),
        })
    }

    fn put_retained(&self, message: &StoredMessage) -> io::Result<()> {
        self.retained
            .lock()
            .insert(message.topic.clone(), message.clone());
        Ok(())
    }

    fn delete_retained(&self, topic: &str) -> io::Result<()> {
        self.retained.lock().remove(topic);
        Ok(())
    }

    fn put_session(&self, session: &StoredSession) -> io::Result<()> {
        self.sessions
            .lock()
            .insert(session.client_id.clone(), session.clone());
        Ok(())
    }

    fn delete_session(&self, client_id: &str) -> io::Result<()> {
        self.sessions.lock().remove(client_id);
        Ok(())
    }
}

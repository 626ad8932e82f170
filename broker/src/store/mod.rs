//! The storage seam: what the broker keeps so that a new process restores it, and the one
//! operation a backend implements to keep it, an atomic and durable [`Batch`] of [`Change`]s.
//!
//! The broker decides what changes and when (`crate::journal` batches them, group commit);
//! a backend (`tessera-store`'s redb file, [`MemoryStore`] in process, a cluster later) only
//! applies each batch in one transaction and loads everything back at start. Records have one
//! byte form, [`encoding`], so every backend stores the same bytes.
//!
//! The model, per persistent session: its head (expiry, whether a connection is attached, the
//! will), its subscriptions, its queue of entries in `seq` order (each queued, sent with a
//! packet identifier, or released), and the incoming QoS 2 packet identifiers not yet released.
//! Queue entries reference messages by id: a message queued for many sessions is stored once.
//!
//! Invariants a backend keeps: a batch is applied whole or not at all; `Ok` from
//! [`Store::commit`] means it survives a crash; [`Store::load`] returns what the last
//! successful batch left.

pub mod encoding;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::codec::{Properties, QoS, SubscriptionOptions, Utf8Bytes};
use crate::message::Message;

/// An application message as stored: expiry on the wall clock, so it survives a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The topic as the codec checked it (shared with the message, not copied).
    pub topic: Utf8Bytes,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The forwarded properties (as a PUBLISH carries them; no per-hop ones).
    pub properties: Properties,
    pub expires_at: Option<SystemTime>,
}

impl StoredMessage {
    pub(crate) fn from_message(m: &Message) -> StoredMessage {
        StoredMessage {
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            qos: m.qos,
            retain: m.retain,
            properties: m.properties().clone(),
            expires_at: m.expires_at.map(crate::clock::wall_clock),
        }
    }

    pub(crate) fn to_message(&self) -> Message {
        Message {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            qos: self.qos,
            retain: self.retain,
            properties: crate::message::boxed(self.properties.clone()),
            expires_at: self.expires_at.map(crate::clock::runtime_clock),
            publisher: 0,
            encoded_properties: Default::default(),
            stored_id: Default::default(),
            published_ms: Default::default(),
            cluster_id: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    /// The full filter, `$share/group/` prefix included.
    pub filter: String,
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

/// A will as stored: the message it becomes and its Will Delay Interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWill {
    pub message: StoredMessage,
    pub delay: u32,
}

/// Whether a connection was attached when the record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Attached. Found at start, it means the broker stopped without seeing the connection go
    /// (a crash): the connection counts as dropped at [`StoredState::last_alive`].
    Online,
    /// No connection since `since`: the session's expiry and a pending will count from it.
    Offline { since: SystemTime },
}

/// A session's own record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHead {
    pub client_id: String,
    /// Seconds the session outlives its connection; `u32::MAX` = forever; 0 for a clean
    /// session kept only for its will.
    pub expiry_interval: u32,
    pub presence: Presence,
    /// Online: the attached connection's will. Offline: a will still waiting out its delay.
    pub will: Option<StoredWill>,
}

/// Where a queue entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// Waiting to be sent.
    Queued,
    /// Sent with this packet identifier; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent(u16),
    /// PUBREC received and PUBREL sent with this packet identifier; waiting for PUBCOMP.
    Released(u16),
}

/// A message on its way to one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// The session's sequence number of the entry: queue order.
    pub seq: u64,
    /// The message's id: of its shared body ([`Change::PutMessage`]) unless `body` is here.
    pub message_id: u64,
    /// The message itself, when it was routed to this session alone.
    pub body: Option<Arc<StoredMessage>>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    pub state: EntryState,
}

/// A persistent session as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub head: SessionHead,
    pub subscriptions: Vec<StoredSubscription>,
    /// In `seq` order.
    pub entries: Vec<StoredEntry>,
    pub incoming_qos2: Vec<u16>,
}

/// Everything a store holds.
#[derive(Debug, Clone, Default)]
pub struct StoredState {
    pub retained: Vec<StoredMessage>,
    /// Messages referenced by queue entries, by id.
    pub messages: HashMap<u64, StoredMessage>,
    pub sessions: Vec<StoredSession>,
    /// The wall-clock time of the last batch.
    pub last_alive: Option<SystemTime>,
    /// In a cluster: every message of the QoS 1/2 stream up to this sequence number has been
    /// routed here (see [`Batch::peers_routed`]).
    pub peers_routed: Option<u64>,
}

/// One change of a batch. A session's changes name it by its client id, shared with the
/// broker's session (no copy per change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Everything goes (a snapshot follows in the same batch).
    Clear,
    /// Boxed, as `PutSession`: a change is moved several times on its way to the store, and
    /// most are small.
    PutRetained(Box<StoredMessage>),
    DeleteRetained(String),
    PutMessage(u64, Arc<StoredMessage>),
    DeleteMessage(u64),
    /// Creates or replaces a session's head.
    PutSession(Box<SessionHead>),
    /// The session ended: its head, subscriptions, entries and incoming identifiers go.
    DeleteSession(Arc<str>),
    PutSubscription(Arc<str>, StoredSubscription),
    DeleteSubscription(Arc<str>, String),
    /// Creates the entry `seq` of a session. The broker never puts an entry (or a message
    /// body, `PutMessage`) under a key it has stored before, unless a `Clear` or the session's
    /// `DeleteSession` came in between: sequence numbers and message ids only grow, from past
    /// what was loaded. A backend may rely on it (the redb store drops a put that a delete
    /// follows before the put reached its tables).
    PutEntry(Arc<str>, StoredEntry),
    /// Changes the state of an existing entry (nothing if it is gone).
    SetEntryState(Arc<str>, u64, EntryState),
    DeleteEntry(Arc<str>, u64),
    PutIncoming(Arc<str>, u16),
    DeleteIncoming(Arc<str>, u16),
}

/// Changes applied together: all of them or none.
#[derive(Debug, Clone)]
pub struct Batch {
    pub changes: Vec<Change>,
    /// When the batch was made, to record as [`StoredState::last_alive`]; the journal sends it
    /// about once a second, not with every batch.
    pub alive_at: Option<SystemTime>,
    /// In a cluster: the stream sequence through which the other nodes' QoS 1/2 messages are
    /// routed, with this batch's queue entries (the same transaction), so a node back from a
    /// crash does not route again what JetStream delivers again.
    pub peers_routed: Option<u64>,
}

/// Why a backend failed; the broker answers publishers waiting on the batch with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Out of space (QoS 1/2 publishers get 0x97 Quota exceeded).
    Full(String),
    /// Anything else (0x80 Unspecified error).
    Failed(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Full(m) => write!(f, "store full: {m}"),
            StoreError::Failed(m) => write!(f, "store failed: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> StoreError {
        if e.kind() == std::io::ErrorKind::StorageFull {
            StoreError::Full(e.to_string())
        } else {
            StoreError::Failed(e.to_string())
        }
    }
}

/// Persistence of the broker's state. Called from the journal's own thread, never with a
/// broker lock held.
pub trait Store: Send + Sync + 'static {
    /// Everything the last successful batch left.
    fn load(&self) -> Result<StoredState, StoreError>;
    /// Applies `batch` atomically; `Ok` once it is durable.
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;
}

/// Keeps the records in memory: state outlives a `Server` in the same process, not the
/// process. For in-process tests and embedding.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    retained: BTreeMap<String, StoredMessage>,
    messages: HashMap<u64, StoredMessage>,
    heads: BTreeMap<String, SessionHead>,
    subscriptions: BTreeMap<(String, String), StoredSubscription>,
    entries: BTreeMap<(String, u64), StoredEntry>,
    incoming: BTreeMap<(String, u16), ()>,
    last_alive: Option<SystemTime>,
    peers_routed: Option<u64>,
}

impl Store for MemoryStore {
    fn load(&self) -> Result<StoredState, StoreError> {
        let st = self.state.lock();
        let sessions = st
            .heads
            .values()
            .map(|head| {
                let id = &head.client_id;
                let in_session = |k: &String| k == id;
                StoredSession {
                    head: head.clone(),
                    subscriptions: st
                        .subscriptions
                        .iter()
                        .filter(|((c, _), _)| in_session(c))
                        .map(|(_, s)| s.clone())
                        .collect(),
                    entries: st
                        .entries
                        .iter()
                        .filter(|((c, _), _)| in_session(c))
                        .map(|(_, e)| e.clone())
                        .collect(),
                    incoming_qos2: st
                        .incoming
                        .keys()
                        .filter(|(c, _)| in_session(c))
                        .map(|(_, p)| *p)
                        .collect(),
                }
            })
            .collect();
        Ok(StoredState {
            retained: st.retained.values().cloned().collect(),
            messages: st.messages.clone(),
            sessions,
            last_alive: st.last_alive,
            peers_routed: st.peers_routed,
        })
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut st = self.state.lock();
        for change in &batch.changes {
            match change {
                Change::Clear => *st = MemoryState::default(),
                Change::PutRetained(m) => {
                    st.retained
                        .insert(m.topic.to_string(), StoredMessage::clone(m));
                }
                Change::DeleteRetained(t) => {
                    st.retained.remove(t);
                }
                Change::PutMessage(id, m) => {
                    st.messages.insert(*id, StoredMessage::clone(m));
                }
                Change::DeleteMessage(id) => {
                    st.messages.remove(id);
                }
                Change::PutSession(h) => {
                    st.heads.insert(h.client_id.clone(), SessionHead::clone(h));
                }
                Change::DeleteSession(c) => {
                    let c = c.to_string();
                    st.heads.remove(&c);
                    st.subscriptions.retain(|(k, _), _| *k != c);
                    st.entries.retain(|(k, _), _| *k != c);
                    st.incoming.retain(|(k, _), _| *k != c);
                }
                Change::PutSubscription(c, s) => {
                    st.subscriptions
                        .insert((c.to_string(), s.filter.clone()), s.clone());
                }
                Change::DeleteSubscription(c, f) => {
                    st.subscriptions.remove(&(c.to_string(), f.clone()));
                }
                Change::PutEntry(c, e) => {
                    st.entries.insert((c.to_string(), e.seq), e.clone());
                }
                Change::SetEntryState(c, seq, state) => {
                    if let Some(e) = st.entries.get_mut(&(c.to_string(), *seq)) {
                        e.state = *state;
                    }
                }
                Change::DeleteEntry(c, seq) => {
                    st.entries.remove(&(c.to_string(), *seq));
                }
                Change::PutIncoming(c, p) => {
                    st.incoming.insert((c.to_string(), *p), ());
                }
                Change::DeleteIncoming(c, p) => {
                    st.incoming.remove(&(c.to_string(), *p));
                }
            }
        }
        if batch.alive_at.is_some() {
            st.last_alive = batch.alive_at;
        }
        if batch.peers_routed.is_some() {
            st.peers_routed = batch.peers_routed;
        }
        Ok(())
    }
}

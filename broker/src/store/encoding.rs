//! The byte form of every stored record, shared by all backends, so a record written by one
//! release (or one backend) reads back the same everywhere.
//!
//! Each record starts with its format version (1), then fixed-width big-endian fields; a
//! message's properties are in their MQTT encoding (the PUBLISH property list, checked by the
//! codec when read back) and its payload runs to the end. Times are milliseconds since the Unix
//! epoch, 0 for none. Decoding checks every length, so a damaged record is an error, never a
//! panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{
    Change, EntryState, Presence, SessionHead, StoredEntry, StoredMessage, StoredSubscription,
    StoredWill,
};
use crate::codec::{self, QoS, RetainHandling, SubscriptionOptions, Utf8Bytes};

const VERSION: u8 = 1;

/// A record that does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRecord(pub &'static str);

impl std::fmt::Display for CorruptRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "corrupt record: {}", self.0)
    }
}

impl std::error::Error for CorruptRecord {}

type Result<T> = std::result::Result<T, CorruptRecord>;

fn millis(t: Option<SystemTime>) -> u64 {
    t.map_or(0, |t| {
        t.duration_since(UNIX_EPOCH)
            .map_or(1, |d| (d.as_millis() as u64).max(1))
    })
}

fn time(ms: u64) -> Option<SystemTime> {
    (ms != 0).then(|| UNIX_EPOCH + Duration::from_millis(ms))
}

fn need(b: &Bytes, n: usize, what: &'static str) -> Result<()> {
    if b.remaining() < n {
        return Err(CorruptRecord(what));
    }
    Ok(())
}

fn version(b: &mut Bytes, what: &'static str) -> Result<()> {
    need(b, 1, what)?;
    if b.get_u8() != VERSION {
        return Err(CorruptRecord("unknown record format"));
    }
    Ok(())
}

fn qos_and_retain(v: u8) -> Result<(QoS, bool)> {
    let qos = QoS::from_u8(v & 0x03).ok_or(CorruptRecord("QoS 3"))?;
    Ok((qos, v & 0x04 != 0))
}

// ---- messages ----

pub fn encode_message(m: &StoredMessage) -> Vec<u8> {
    let mut b = BytesMut::with_capacity(message_len(m));
    put_message(&mut b, m);
    b.into()
}

/// About the encoded length of `m` (at least it, for properties of usual size).
fn message_len(m: &StoredMessage) -> usize {
    32 + m.topic.len() + m.payload.len()
}

fn put_message(b: &mut BytesMut, m: &StoredMessage) {
    b.put_u8(VERSION);
    b.put_u8(m.qos.as_u8() | (m.retain as u8) << 2);
    b.put_u64(millis(m.expires_at));
    b.put_u16(m.topic.len() as u16);
    b.put_slice(m.topic.as_bytes());
    m.properties.encode(b);
    b.put_slice(&m.payload);
}

pub fn decode_message(raw: &[u8]) -> Result<StoredMessage> {
    decode_message_bytes(Bytes::copy_from_slice(raw))
}

fn decode_message_bytes(mut b: Bytes) -> Result<StoredMessage> {
    version(&mut b, "message")?;
    need(&b, 11, "message")?;
    let (qos, retain) = qos_and_retain(b.get_u8())?;
    let expires_at = time(b.get_u64());
    let len = b.get_u16() as usize;
    need(&b, len, "message topic")?;
    let topic = Utf8Bytes::try_from_bytes(b.split_to(len))
        .ok_or(CorruptRecord("message topic is not UTF-8"))?;
    let properties = codec::decode_publish_properties(&mut b)
        .map_err(|_| CorruptRecord("message properties"))?;
    Ok(StoredMessage {
        topic,
        payload: b,
        qos,
        retain,
        properties,
        expires_at,
    })
}

// ---- session heads ----

pub fn encode_head(h: &SessionHead) -> Vec<u8> {
    let mut b = BytesMut::with_capacity(32 + h.client_id.len());
    put_head(&mut b, h);
    b.into()
}

fn put_head(b: &mut BytesMut, h: &SessionHead) {
    b.put_u8(VERSION);
    b.put_u16(h.client_id.len() as u16);
    b.put_slice(h.client_id.as_bytes());
    b.put_u32(h.expiry_interval);
    match h.presence {
        Presence::Online => b.put_u8(0),
        Presence::Offline { since } => {
            b.put_u8(1);
            b.put_u64(millis(Some(since)));
        }
    }
    match &h.will {
        None => b.put_u8(0),
        Some(w) => {
            b.put_u8(1);
            b.put_u32(w.delay);
            put_message(b, &w.message);
        }
    }
}

pub fn decode_head(raw: &[u8]) -> Result<SessionHead> {
    decode_head_bytes(Bytes::copy_from_slice(raw))
}

fn decode_head_bytes(mut b: Bytes) -> Result<SessionHead> {
    version(&mut b, "session")?;
    need(&b, 2, "session")?;
    let len = b.get_u16() as usize;
    need(&b, len + 5, "session")?;
    let client_id = String::from_utf8(b.split_to(len).to_vec())
        .map_err(|_| CorruptRecord("client id is not UTF-8"))?;
    let expiry_interval = b.get_u32();
    let presence = match b.get_u8() {
        0 => Presence::Online,
        1 => {
            need(&b, 8, "session")?;
            Presence::Offline {
                since: time(b.get_u64()).unwrap_or(UNIX_EPOCH),
            }
        }
        _ => return Err(CorruptRecord("session presence")),
    };
    need(&b, 1, "session")?;
    let will = match b.get_u8() {
        0 => None,
        1 => {
            need(&b, 4, "session will")?;
            let delay = b.get_u32();
            Some(StoredWill {
                delay,
                message: decode_message_bytes(b.split_off(0))?,
            })
        }
        _ => return Err(CorruptRecord("session will")),
    };
    Ok(SessionHead {
        client_id,
        expiry_interval,
        presence,
        will,
    })
}

// ---- subscriptions ----

pub fn encode_subscription(s: &StoredSubscription) -> Vec<u8> {
    let mut b = BytesMut::with_capacity(8 + s.filter.len());
    put_subscription(&mut b, s);
    b.into()
}

fn put_subscription(b: &mut BytesMut, s: &StoredSubscription) {
    b.put_u8(VERSION);
    let o = s.options;
    b.put_u8(
        o.qos.as_u8()
            | (o.no_local as u8) << 2
            | (o.retain_as_published as u8) << 3
            | o.retain_handling.as_u8() << 4,
    );
    b.put_u32(s.subscription_id.unwrap_or(0));
    b.put_slice(s.filter.as_bytes());
}

pub fn decode_subscription(raw: &[u8]) -> Result<StoredSubscription> {
    decode_subscription_bytes(Bytes::copy_from_slice(raw))
}

fn decode_subscription_bytes(mut b: Bytes) -> Result<StoredSubscription> {
    version(&mut b, "subscription")?;
    need(&b, 5, "subscription")?;
    let o = b.get_u8();
    let id = b.get_u32();
    let filter = String::from_utf8(b.to_vec())
        .map_err(|_| CorruptRecord("subscription filter is not UTF-8"))?;
    Ok(StoredSubscription {
        filter,
        options: SubscriptionOptions {
            qos: QoS::from_u8(o & 0x03).ok_or(CorruptRecord("subscription QoS 3"))?,
            no_local: o & 0x04 != 0,
            retain_as_published: o & 0x08 != 0,
            retain_handling: RetainHandling::from_u8((o >> 4) & 0x03)
                .ok_or(CorruptRecord("retain handling 3"))?,
        },
        subscription_id: (id != 0).then_some(id),
    })
}

// ---- queue entries ----

/// `[1][seq][message id][qos | retain << 2 | body << 3][state][packet id][n][ids × n][body]`:
/// the body (a message record) runs to the end when the entry holds it.
pub fn encode_entry(e: &StoredEntry) -> Vec<u8> {
    let mut b = BytesMut::with_capacity(entry_len(e));
    put_entry(&mut b, e);
    b.into()
}

fn entry_len(e: &StoredEntry) -> usize {
    26 + 4 * e.subscription_ids.len() + e.body.as_deref().map_or(0, message_len)
}

fn put_entry(b: &mut BytesMut, e: &StoredEntry) {
    b.put_u8(VERSION);
    b.put_u64(e.seq);
    b.put_u64(e.message_id);
    b.put_u8(e.qos.as_u8() | (e.retain as u8) << 2 | (e.body.is_some() as u8) << 3);
    put_state(b, e.state);
    b.put_u16(e.subscription_ids.len().min(u16::MAX as usize) as u16);
    for id in e.subscription_ids.iter().take(u16::MAX as usize) {
        b.put_u32(*id);
    }
    if let Some(m) = &e.body {
        put_message(b, m);
    }
}

pub fn decode_entry(raw: &[u8]) -> Result<StoredEntry> {
    decode_entry_bytes(Bytes::copy_from_slice(raw))
}

fn decode_entry_bytes(mut b: Bytes) -> Result<StoredEntry> {
    version(&mut b, "queue entry")?;
    need(&b, 22, "queue entry")?;
    let seq = b.get_u64();
    let message_id = b.get_u64();
    let flags = b.get_u8();
    let (qos, retain) = qos_and_retain(flags)?;
    let state = get_state(&mut b)?;
    let n = b.get_u16() as usize;
    need(&b, 4 * n, "queue entry subscription identifiers")?;
    let subscription_ids = (0..n).map(|_| b.get_u32()).collect();
    let body = if flags & 0x08 != 0 {
        Some(std::sync::Arc::new(decode_message_bytes(b.split_off(0))?))
    } else if b.has_remaining() {
        return Err(CorruptRecord("bytes after a queue entry"));
    } else {
        None
    };
    Ok(StoredEntry {
        seq,
        message_id,
        body,
        qos,
        retain,
        subscription_ids,
        state,
    })
}

// ---- batches (the store's log) ----

/// The tags of [`Change`]s in a batch record. Never renumbered: logs outlive releases.
mod tag {
    pub const CLEAR: u8 = 1;
    pub const PUT_RETAINED: u8 = 2;
    pub const DELETE_RETAINED: u8 = 3;
    pub const PUT_MESSAGE: u8 = 4;
    pub const DELETE_MESSAGE: u8 = 5;
    pub const PUT_SESSION: u8 = 6;
    pub const DELETE_SESSION: u8 = 7;
    pub const PUT_SUBSCRIPTION: u8 = 8;
    pub const DELETE_SUBSCRIPTION: u8 = 9;
    pub const PUT_ENTRY: u8 = 10;
    pub const SET_ENTRY_STATE: u8 = 11;
    pub const DELETE_ENTRY: u8 = 12;
    pub const PUT_INCOMING: u8 = 13;
    pub const DELETE_INCOMING: u8 = 14;
}

/// A batch of changes as one record: `[1][count u32]` then each change as its tag and fields;
/// strings (client ids, filters, topics) are u16-length-prefixed, records (message, head,
/// subscription, entry) u32-length-prefixed in their own encodings.
pub fn encode_changes(changes: &[Change]) -> Vec<u8> {
    let mut b = BytesMut::with_capacity(5 + changes.iter().map(change_len).sum::<usize>());
    b.put_u8(VERSION);
    b.put_u32(changes.len() as u32);
    for c in changes {
        put_change(&mut b, c);
    }
    b.into()
}

/// About the encoded length of `c`, to size the buffer once.
fn change_len(c: &Change) -> usize {
    match c {
        Change::PutRetained(m) => 5 + message_len(m),
        Change::PutMessage(_, m) => 13 + message_len(m),
        Change::PutEntry(client, e) => 7 + client.len() + entry_len(e),
        Change::PutSession(h) => 5 + 32 + h.client_id.len(),
        _ => 48,
    }
}

fn put_str(b: &mut BytesMut, s: &str) {
    // Client ids, filters and topics are MQTT strings: at most 65,535 bytes.
    b.put_u16(s.len() as u16);
    b.put_slice(s.as_bytes());
}

/// Writes a u32 length, then whatever `f` writes.
fn put_sized(b: &mut BytesMut, f: impl FnOnce(&mut BytesMut)) {
    let at = b.len();
    b.put_u32(0);
    f(b);
    let len = (b.len() - at - 4) as u32;
    b[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_state(b: &mut BytesMut, state: EntryState) {
    match state {
        EntryState::Queued => {
            b.put_u8(0);
            b.put_u16(0);
        }
        EntryState::Sent(pid) => {
            b.put_u8(1);
            b.put_u16(pid);
        }
        EntryState::Released(pid) => {
            b.put_u8(2);
            b.put_u16(pid);
        }
    }
}

fn get_state(b: &mut Bytes) -> Result<EntryState> {
    need(b, 3, "entry state")?;
    match (b.get_u8(), b.get_u16()) {
        (0, _) => Ok(EntryState::Queued),
        (1, pid) if pid != 0 => Ok(EntryState::Sent(pid)),
        (2, pid) if pid != 0 => Ok(EntryState::Released(pid)),
        _ => Err(CorruptRecord("queue entry state")),
    }
}

fn put_change(b: &mut BytesMut, c: &Change) {
    match c {
        Change::Clear => b.put_u8(tag::CLEAR),
        Change::PutRetained(m) => {
            b.put_u8(tag::PUT_RETAINED);
            put_sized(b, |b| put_message(b, m));
        }
        Change::DeleteRetained(topic) => {
            b.put_u8(tag::DELETE_RETAINED);
            put_str(b, topic);
        }
        Change::PutMessage(id, m) => {
            b.put_u8(tag::PUT_MESSAGE);
            b.put_u64(*id);
            put_sized(b, |b| put_message(b, m));
        }
        Change::DeleteMessage(id) => {
            b.put_u8(tag::DELETE_MESSAGE);
            b.put_u64(*id);
        }
        Change::PutSession(h) => {
            b.put_u8(tag::PUT_SESSION);
            put_sized(b, |b| put_head(b, h));
        }
        Change::DeleteSession(client) => {
            b.put_u8(tag::DELETE_SESSION);
            put_str(b, client);
        }
        Change::PutSubscription(client, s) => {
            b.put_u8(tag::PUT_SUBSCRIPTION);
            put_str(b, client);
            put_sized(b, |b| put_subscription(b, s));
        }
        Change::DeleteSubscription(client, filter) => {
            b.put_u8(tag::DELETE_SUBSCRIPTION);
            put_str(b, client);
            put_str(b, filter);
        }
        Change::PutEntry(client, e) => {
            b.put_u8(tag::PUT_ENTRY);
            put_str(b, client);
            put_sized(b, |b| put_entry(b, e));
        }
        Change::SetEntryState(client, seq, state) => {
            b.put_u8(tag::SET_ENTRY_STATE);
            put_str(b, client);
            b.put_u64(*seq);
            put_state(b, *state);
        }
        Change::DeleteEntry(client, seq) => {
            b.put_u8(tag::DELETE_ENTRY);
            put_str(b, client);
            b.put_u64(*seq);
        }
        Change::PutIncoming(client, pid) => {
            b.put_u8(tag::PUT_INCOMING);
            put_str(b, client);
            b.put_u16(*pid);
        }
        Change::DeleteIncoming(client, pid) => {
            b.put_u8(tag::DELETE_INCOMING);
            put_str(b, client);
            b.put_u16(*pid);
        }
    }
}

pub fn decode_changes(raw: &[u8]) -> Result<Vec<Change>> {
    let mut b = Bytes::copy_from_slice(raw);
    version(&mut b, "batch")?;
    need(&b, 4, "batch")?;
    let n = b.get_u32() as usize;
    // Each change takes at least a byte: a damaged count cannot make us reserve much.
    let mut changes = Vec::with_capacity(n.min(b.remaining()));
    for _ in 0..n {
        changes.push(get_change(&mut b)?);
    }
    if b.has_remaining() {
        return Err(CorruptRecord("bytes after a batch"));
    }
    Ok(changes)
}

fn get_string(b: &mut Bytes, what: &'static str) -> Result<String> {
    need(b, 2, what)?;
    let len = b.get_u16() as usize;
    need(b, len, what)?;
    String::from_utf8(b.split_to(len).to_vec()).map_err(|_| CorruptRecord(what))
}

fn get_client(b: &mut Bytes) -> Result<std::sync::Arc<str>> {
    get_string(b, "client id").map(Into::into)
}

fn get_sized(b: &mut Bytes, what: &'static str) -> Result<Bytes> {
    need(b, 4, what)?;
    let len = b.get_u32() as usize;
    need(b, len, what)?;
    Ok(b.split_to(len))
}

fn get_u64(b: &mut Bytes, what: &'static str) -> Result<u64> {
    need(b, 8, what)?;
    Ok(b.get_u64())
}

fn get_u16(b: &mut Bytes, what: &'static str) -> Result<u16> {
    need(b, 2, what)?;
    Ok(b.get_u16())
}

fn get_change(b: &mut Bytes) -> Result<Change> {
    need(b, 1, "batch")?;
    Ok(match b.get_u8() {
        tag::CLEAR => Change::Clear,
        tag::PUT_RETAINED => Change::PutRetained(Box::new(decode_message_bytes(get_sized(
            b,
            "retained message",
        )?)?)),
        tag::DELETE_RETAINED => Change::DeleteRetained(get_string(b, "retained topic")?),
        tag::PUT_MESSAGE => {
            let id = get_u64(b, "message id")?;
            let m = decode_message_bytes(get_sized(b, "message")?)?;
            Change::PutMessage(id, std::sync::Arc::new(m))
        }
        tag::DELETE_MESSAGE => Change::DeleteMessage(get_u64(b, "message id")?),
        tag::PUT_SESSION => {
            Change::PutSession(Box::new(decode_head_bytes(get_sized(b, "session")?)?))
        }
        tag::DELETE_SESSION => Change::DeleteSession(get_client(b)?),
        tag::PUT_SUBSCRIPTION => {
            let client = get_client(b)?;
            let s = decode_subscription_bytes(get_sized(b, "subscription")?)?;
            Change::PutSubscription(client, s)
        }
        tag::DELETE_SUBSCRIPTION => {
            let client = get_client(b)?;
            Change::DeleteSubscription(client, get_string(b, "subscription filter")?)
        }
        tag::PUT_ENTRY => {
            let client = get_client(b)?;
            let e = decode_entry_bytes(get_sized(b, "queue entry")?)?;
            Change::PutEntry(client, e)
        }
        tag::SET_ENTRY_STATE => {
            let client = get_client(b)?;
            let seq = get_u64(b, "entry")?;
            Change::SetEntryState(client, seq, get_state(b)?)
        }
        tag::DELETE_ENTRY => {
            let client = get_client(b)?;
            Change::DeleteEntry(client, get_u64(b, "entry")?)
        }
        tag::PUT_INCOMING => {
            let client = get_client(b)?;
            Change::PutIncoming(client, get_u16(b, "packet identifier")?)
        }
        tag::DELETE_INCOMING => {
            let client = get_client(b)?;
            Change::DeleteIncoming(client, get_u16(b, "packet identifier")?)
        }
        _ => return Err(CorruptRecord("unknown change")),
    })
}

#[cfg(test)]
mod tests;

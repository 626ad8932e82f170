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
    EntryState, Presence, SessionHead, StoredEntry, StoredMessage, StoredSubscription, StoredWill,
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
    let mut b = BytesMut::with_capacity(32 + m.topic.len() + m.payload.len());
    put_message(&mut b, m);
    b.to_vec()
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
            put_message(&mut b, &w.message);
        }
    }
    b.to_vec()
}

pub fn decode_head(raw: &[u8]) -> Result<SessionHead> {
    let mut b = Bytes::copy_from_slice(raw);
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
    b.to_vec()
}

pub fn decode_subscription(raw: &[u8]) -> Result<StoredSubscription> {
    let mut b = Bytes::copy_from_slice(raw);
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
    let body_len = e
        .body
        .as_ref()
        .map_or(0, |m| 32 + m.topic.len() + m.payload.len());
    let mut b = BytesMut::with_capacity(26 + 4 * e.subscription_ids.len() + body_len);
    b.put_u8(VERSION);
    b.put_u64(e.seq);
    b.put_u64(e.message_id);
    b.put_u8(e.qos.as_u8() | (e.retain as u8) << 2 | (e.body.is_some() as u8) << 3);
    match e.state {
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
    b.put_u16(e.subscription_ids.len().min(u16::MAX as usize) as u16);
    for id in e.subscription_ids.iter().take(u16::MAX as usize) {
        b.put_u32(*id);
    }
    if let Some(m) = &e.body {
        put_message(&mut b, m);
    }
    b.to_vec()
}

pub fn decode_entry(raw: &[u8]) -> Result<StoredEntry> {
    let mut b = Bytes::copy_from_slice(raw);
    version(&mut b, "queue entry")?;
    need(&b, 22, "queue entry")?;
    let seq = b.get_u64();
    let message_id = b.get_u64();
    let flags = b.get_u8();
    let (qos, retain) = qos_and_retain(flags)?;
    let state = match (b.get_u8(), b.get_u16()) {
        (0, _) => EntryState::Queued,
        (1, pid) if pid != 0 => EntryState::Sent(pid),
        (2, pid) if pid != 0 => EntryState::Released(pid),
        _ => return Err(CorruptRecord("queue entry state")),
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Properties, Utf8Bytes};

    fn message() -> StoredMessage {
        StoredMessage {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Properties {
                content_type: Some(Utf8Bytes::from("text/plain")),
                user_properties: vec![(Utf8Bytes::from("k"), Utf8Bytes::from("v"))],
                ..Default::default()
            },
            expires_at: time(1_700_000_000_123),
        }
    }

    #[test]
    fn records_read_back_as_written() {
        let m = message();
        assert_eq!(decode_message(&encode_message(&m)).unwrap(), m);
        let h = SessionHead {
            client_id: "dev-1".into(),
            expiry_interval: 3600,
            presence: Presence::Offline {
                since: time(1_700_000_000_000).unwrap(),
            },
            will: Some(StoredWill {
                message: m.clone(),
                delay: 30,
            }),
        };
        assert_eq!(decode_head(&encode_head(&h)).unwrap(), h);
        let online = SessionHead {
            presence: Presence::Online,
            will: None,
            ..h
        };
        assert_eq!(decode_head(&encode_head(&online)).unwrap(), online);
        let s = StoredSubscription {
            filter: "$share/g/a/+".into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: true,
                retain_handling: RetainHandling::OnNewSubscription,
            },
            subscription_id: Some(268_435_455),
        };
        assert_eq!(decode_subscription(&encode_subscription(&s)).unwrap(), s);
        for state in [
            EntryState::Queued,
            EntryState::Sent(7),
            EntryState::Released(65535),
        ] {
            let e = StoredEntry {
                seq: u64::MAX - 1,
                message_id: 42,
                body: (state == EntryState::Queued).then(|| std::sync::Arc::new(m.clone())),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: vec![1, 9],
                state,
            };
            assert_eq!(decode_entry(&encode_entry(&e)).unwrap(), e);
        }
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let records = [
            encode_message(&message()),
            encode_head(&SessionHead {
                client_id: "c".into(),
                expiry_interval: 1,
                presence: Presence::Online,
                will: Some(StoredWill {
                    message: message(),
                    delay: 1,
                }),
            }),
            encode_entry(&StoredEntry {
                seq: 1,
                message_id: 1,
                body: Some(std::sync::Arc::new(message())),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: vec![3],
                state: EntryState::Sent(4),
            }),
        ];
        for r in &records {
            for cut in 0..r.len() {
                let _ = decode_message(&r[..cut]);
                let _ = decode_head(&r[..cut]);
                let _ = decode_entry(&r[..cut]);
                let _ = decode_subscription(&r[..cut]);
            }
            let mut flipped = r.clone();
            for i in 0..flipped.len() {
                flipped[i] ^= 0xFF;
                let _ = decode_message(&flipped);
                let _ = decode_head(&flipped);
                let _ = decode_entry(&flipped);
                flipped[i] ^= 0xFF;
            }
        }
        assert!(decode_entry(&[]).is_err());
        assert!(decode_message(&[2]).is_err(), "a newer record format");
    }
}

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

fn every_change() -> Vec<Change> {
    let client: std::sync::Arc<str> = "dev-1".into();
    let head = SessionHead {
        client_id: "dev-1".into(),
        expiry_interval: 60,
        presence: Presence::Online,
        will: Some(StoredWill {
            message: message(),
            delay: 5,
        }),
    };
    let entry = StoredEntry {
        seq: 3,
        message_id: 8,
        body: Some(std::sync::Arc::new(message())),
        qos: QoS::AtLeastOnce,
        retain: true,
        subscription_ids: vec![4],
        state: EntryState::Sent(2),
    };
    vec![
        Change::Clear,
        Change::PutRetained(Box::new(message())),
        Change::DeleteRetained("a/b".into()),
        Change::PutMessage(8, std::sync::Arc::new(message())),
        Change::DeleteMessage(8),
        Change::PutSession(Box::new(head)),
        Change::DeleteSession(client.clone()),
        Change::PutSubscription(
            client.clone(),
            StoredSubscription {
                filter: "a/+".into(),
                options: SubscriptionOptions::default(),
                subscription_id: Some(4),
            },
        ),
        Change::DeleteSubscription(client.clone(), "a/+".into()),
        Change::PutEntry(client.clone(), entry),
        Change::SetEntryState(client.clone(), 3, EntryState::Released(2)),
        Change::DeleteEntry(client.clone(), 3),
        Change::PutIncoming(client.clone(), 65535),
        Change::DeleteIncoming(client, 1),
    ]
}

#[test]
fn a_batch_reads_back_as_written() {
    let changes = every_change();
    assert_eq!(decode_changes(&encode_changes(&changes)).unwrap(), changes);
    assert_eq!(decode_changes(&encode_changes(&[])).unwrap(), vec![]);
}

#[test]
fn a_damaged_batch_is_an_error_not_a_panic() {
    let raw = encode_changes(&every_change());
    for cut in 0..raw.len() {
        assert!(decode_changes(&raw[..cut]).is_err(), "cut at {cut}");
    }
    let mut flipped = raw.clone();
    for i in 0..flipped.len() {
        flipped[i] ^= 0xFF;
        let _ = decode_changes(&flipped);
        flipped[i] ^= 0xFF;
    }
    let mut longer = raw;
    longer.push(0);
    assert!(decode_changes(&longer).is_err(), "bytes after the batch");
}

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use bytes::Bytes;
use tessera_broker::codec::{Properties, QoS, SubscriptionOptions};
use tessera_broker::store::{
    EntryState, Presence, SessionHead, StoredEntry, StoredMessage, StoredSubscription,
};

use super::*;

fn message(topic: &str) -> StoredMessage {
    StoredMessage {
        topic: topic.into(),
        payload: Bytes::from_static(b"hello"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
        expires_at: None,
    }
}

fn head(client: &str) -> SessionHead {
    SessionHead {
        client_id: client.into(),
        expiry_interval: 3600,
        presence: Presence::Online,
        will: None,
    }
}

fn entry(seq: u64, message_id: u64) -> StoredEntry {
    StoredEntry {
        seq,
        message_id,
        body: None,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![],
        state: EntryState::Queued,
    }
}

fn batch(changes: Vec<Change>) -> Batch {
    Batch {
        changes,
        alive_at: Some(SystemTime::now()),
    }
}

fn session_changes(client: &str) -> Vec<Change> {
    vec![
        Change::PutSession(Box::new(head(client))),
        Change::PutSubscription(
            client.into(),
            StoredSubscription {
                filter: "a/#".into(),
                options: SubscriptionOptions::default(),
                subscription_id: Some(3),
            },
        ),
        Change::PutEntry(client.into(), entry(1, 7)),
        Change::PutEntry(client.into(), entry(2, 7)),
        Change::PutIncoming(client.into(), 12),
    ]
}

#[test]
fn batches_read_back_and_a_session_ends_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/broker.redb");
    let store = RedbBrokerStore::open(&path).unwrap();
    let mut changes = vec![
        Change::PutRetained(Box::new(message("r/1"))),
        Change::PutMessage(7, Arc::new(message("q/1"))),
    ];
    // "a" sorts before "ab": ending "a" must leave "ab" alone.
    changes.extend(session_changes("a"));
    changes.extend(session_changes("ab"));
    changes.push(Change::SetEntryState("a".into(), 2, EntryState::Sent(5)));
    store.commit(&batch(changes)).unwrap();

    let state = store.load().unwrap();
    assert_eq!(state.retained, vec![message("r/1")]);
    assert_eq!(state.messages[&7], message("q/1"));
    assert_eq!(state.sessions.len(), 2);
    let a = state
        .sessions
        .iter()
        .find(|s| s.head.client_id == "a")
        .unwrap();
    assert_eq!(a.subscriptions[0].subscription_id, Some(3));
    assert_eq!(
        a.entries
            .iter()
            .map(|e| (e.seq, e.state))
            .collect::<Vec<_>>(),
        vec![(1, EntryState::Queued), (2, EntryState::Sent(5))]
    );
    assert_eq!(a.incoming_qos2, vec![12]);
    assert!(state.last_alive.is_some());

    store
        .commit(&batch(vec![Change::DeleteSession("a".into())]))
        .unwrap();
    drop(store);
    // Reopened: what was committed is there.
    let store = RedbBrokerStore::open(&path).unwrap();
    let state = store.load().unwrap();
    assert_eq!(state.sessions.len(), 1);
    let ab = &state.sessions[0];
    assert_eq!(ab.head.client_id, "ab");
    assert_eq!(
        (
            ab.subscriptions.len(),
            ab.entries.len(),
            ab.incoming_qos2.len()
        ),
        (1, 2, 1)
    );

    store.commit(&batch(vec![Change::Clear])).unwrap();
    let state = store.load().unwrap();
    assert!(state.sessions.is_empty() && state.retained.is_empty() && state.messages.is_empty());
}

#[test]
fn the_file_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/broker.redb");
    RedbBrokerStore::open(&path).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
}

#[test]
fn a_newer_schema_is_refused_and_check_finds_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.redb");
    let store = RedbBrokerStore::open(&path).unwrap();
    let mut changes = session_changes("c");
    changes.push(Change::PutMessage(9, Arc::new(message("orphan"))));
    store.commit(&batch(changes)).unwrap();
    drop(store);
    let report = check(&path).unwrap();
    assert_eq!((report.sessions, report.entries), (1, 2));
    assert_eq!(report.dangling, 2, "message 7 was never written");
    assert_eq!(report.orphans, 1);

    {
        let db = Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("schema_version", SCHEMA_VERSION + 1)
            .unwrap();
        tx.commit().unwrap();
    }
    let Err(StoreError::Failed(why)) = RedbBrokerStore::open(&path) else {
        panic!("a newer file was opened");
    };
    assert!(why.contains("schema version 2"), "{why}");
    assert!(why.contains("newer Tessera"), "{why}");
}

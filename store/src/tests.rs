use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use bytes::Bytes;
use redb::ReadableTableMetadata;
use tessera_broker::codec::{Properties, QoS, SubscriptionOptions};
use tessera_broker::store::{
    EntryState, Presence, SessionHead, StoredEntry, StoredMessage, StoredSession,
    StoredSubscription,
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
        peers_routed: None,
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
    let newer = format!("schema version {}", SCHEMA_VERSION + 1);
    assert!(why.contains(&newer), "{why}");
    assert!(why.contains("newer Tessera"), "{why}");
}

/// Commits without checkpointing: the batches stay in the log.
fn commit_logged(store: &RedbBrokerStore, changes: Vec<Change>) {
    store.commit(&batch(changes)).unwrap();
}

fn checkpoint(store: &RedbBrokerStore) {
    store.with_open(|open| open.checkpoint(None)).unwrap();
}

fn log_rows(path: &Path) -> usize {
    let db = Database::create(path).unwrap();
    let tx = db.begin_read().unwrap();
    match tx.open_table(tables::LOG) {
        Ok(t) => t.len().unwrap() as usize,
        Err(_) => 0,
    }
}

#[test]
fn a_log_left_by_a_crash_is_applied_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.redb");
    let store = RedbBrokerStore::open(&path).unwrap();
    commit_logged(&store, session_changes("a"));
    checkpoint(&store);
    // In the log only: entry 1 (in the tables) acknowledged, entry 2 sent, entry 3 queued and
    // acknowledged, entry 4 queued.
    commit_logged(
        &store,
        vec![
            Change::DeleteEntry("a".into(), 1),
            Change::SetEntryState("a".into(), 2, EntryState::Sent(9)),
            Change::PutEntry("a".into(), entry(3, 7)),
            Change::PutRetained(Box::new(message("r/1"))),
        ],
    );
    commit_logged(
        &store,
        vec![
            Change::DeleteEntry("a".into(), 3),
            Change::PutEntry("a".into(), entry(4, 7)),
            Change::DeleteIncoming("a".into(), 12),
        ],
    );
    // The process dies: no checkpoint.
    drop(store);
    assert_eq!(log_rows(&path), 2);

    let store = RedbBrokerStore::open(&path).unwrap();
    drop(store);
    assert_eq!(log_rows(&path), 0, "the log was checkpointed at open");
    let state = RedbBrokerStore::open(&path).unwrap().load().unwrap();
    let a = &state.sessions[0];
    assert_eq!(
        a.entries
            .iter()
            .map(|e| (e.seq, e.state))
            .collect::<Vec<_>>(),
        vec![(2, EntryState::Sent(9)), (4, EntryState::Queued)]
    );
    assert!(a.incoming_qos2.is_empty());
    assert_eq!(state.retained, vec![message("r/1")]);
}

#[test]
fn a_store_of_schema_1_is_read_and_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.redb");
    // What schema 1 wrote: the state tables, no log.
    {
        let db = Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("schema_version", 1)
            .unwrap();
        {
            let mut t = Tables::open(&tx).unwrap();
            for c in session_changes("old") {
                t.apply(&c).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let store = RedbBrokerStore::open(&path).unwrap();
    let state = store.load().unwrap();
    assert_eq!(state.sessions[0].head.client_id, "old");
    assert_eq!(state.sessions[0].entries.len(), 2);
    drop(store);
    let db = Database::create(&path).unwrap();
    let tx = db.begin_read().unwrap();
    let meta = tx.open_table(META).unwrap();
    assert_eq!(meta.get("schema_version").unwrap().unwrap().value(), 2);
}

/// A tiny deterministic generator (xorshift), so a failing sequence can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the broker may do, as the generator sees it: fresh sequence numbers and message ids,
/// reused only after the session ended or the store was cleared.
#[derive(Default)]
struct Model {
    next_seq: std::collections::HashMap<&'static str, u64>,
    live: Vec<(&'static str, u64)>,
    next_id: u64,
    ids: Vec<u64>,
}

impl Model {
    fn change(&mut self, r: &mut Rng) -> Change {
        let client = ["a", "ab", "b"][r.below(3) as usize];
        let c: Arc<str> = client.into();
        match r.below(100) {
            0..=29 => {
                let seq = self.next_seq.entry(client).or_insert(1);
                let e = entry(*seq, r.below(5));
                *seq += 1;
                self.live.push((client, e.seq));
                Change::PutEntry(c, e)
            }
            30..=54 if !self.live.is_empty() => {
                let (client, seq) = self
                    .live
                    .swap_remove(r.below(self.live.len() as u64) as usize);
                Change::DeleteEntry(client.into(), seq)
            }
            55..=64 => {
                let seq = 1 + r.below(*self.next_seq.get(client).unwrap_or(&1));
                Change::SetEntryState(c, seq, EntryState::Sent(1 + r.below(9) as u16))
            }
            65..=69 => Change::PutSession(Box::new(head(client))),
            70..=71 => {
                self.next_seq.remove(client);
                self.live.retain(|(k, _)| *k != client);
                Change::DeleteSession(c)
            }
            72..=76 => Change::PutSubscription(
                c,
                StoredSubscription {
                    filter: format!("f/{}", r.below(3)),
                    options: SubscriptionOptions::default(),
                    subscription_id: None,
                },
            ),
            77..=79 => Change::DeleteSubscription(c, format!("f/{}", r.below(3))),
            80..=83 => Change::PutIncoming(c, 1 + r.below(4) as u16),
            84..=86 => Change::DeleteIncoming(c, 1 + r.below(4) as u16),
            87..=89 => {
                self.next_id += 1;
                self.ids.push(self.next_id);
                Change::PutMessage(self.next_id, Arc::new(message("m")))
            }
            90..=92 if !self.ids.is_empty() => Change::DeleteMessage(
                self.ids
                    .swap_remove(r.below(self.ids.len() as u64) as usize),
            ),
            93..=95 => Change::PutRetained(Box::new(message(&format!("r/{}", r.below(3))))),
            96..=98 => Change::DeleteRetained(format!("r/{}", r.below(3))),
            99 => {
                *self = Model::default();
                Change::Clear
            }
            _ => Change::PutSession(Box::new(head(client))),
        }
    }
}

fn normalized(
    mut s: StoredState,
) -> (
    Vec<StoredMessage>,
    Vec<(u64, StoredMessage)>,
    Vec<StoredSession>,
) {
    s.retained
        .sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
    s.sessions
        .sort_by(|a, b| a.head.client_id.cmp(&b.head.client_id));
    let mut messages: Vec<_> = s.messages.into_iter().collect();
    messages.sort_by_key(|(id, _)| *id);
    (s.retained, messages, s.sessions)
}

/// Random batches, checkpoints at random moments, and reopenings as after a crash: the redb
/// store always holds what a store applying every change in order holds.
#[test]
fn the_log_and_its_checkpoints_keep_the_state_exactly() {
    use tessera_broker::store::MemoryStore;
    for seed in 1..=40u64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.redb");
        let mut store = RedbBrokerStore::open(&path).unwrap();
        let model_store = MemoryStore::default();
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut model = Model::default();
        for step in 0..60 {
            let changes: Vec<Change> = (0..1 + r.below(12)).map(|_| model.change(&mut r)).collect();
            model_store.commit(&batch(changes.clone())).unwrap();
            store.commit(&batch(changes)).unwrap();
            match r.below(10) {
                0 => checkpoint(&store),
                1 => {
                    drop(store);
                    store = RedbBrokerStore::open(&path).unwrap();
                }
                2 => assert_eq!(
                    normalized(store.load().unwrap()),
                    normalized(model_store.load().unwrap()),
                    "seed {seed}, step {step}"
                ),
                _ => {}
            }
        }
        drop(store);
        let store = RedbBrokerStore::open(&path).unwrap();
        assert_eq!(
            normalized(store.load().unwrap()),
            normalized(model_store.load().unwrap()),
            "seed {seed}, at the end"
        );
    }
}

#[test]
fn the_peers_routed_sequence_lands_with_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.redb");
    let store = RedbBrokerStore::open(&path).unwrap();
    let routed = |store: &RedbBrokerStore, seq: Option<u64>, changes: Vec<Change>| {
        store
            .commit(&Batch {
                changes,
                alive_at: None,
                peers_routed: seq,
            })
            .unwrap();
    };
    routed(&store, Some(40), session_changes("a"));
    checkpoint(&store);
    // In the log only, then a batch without one: the last one given stands.
    routed(
        &store,
        Some(57),
        vec![Change::PutEntry("a".into(), entry(3, 7))],
    );
    routed(&store, None, vec![Change::DeleteEntry("a".into(), 3)]);
    assert_eq!(store.load().unwrap().peers_routed, Some(57));
    drop(store);
    let state = RedbBrokerStore::open(&path).unwrap().load().unwrap();
    assert_eq!(state.peers_routed, Some(57));
    // A store that never had one says so.
    let other = RedbBrokerStore::open(&dir.path().join("other.redb")).unwrap();
    assert_eq!(other.load().unwrap().peers_routed, None);
}

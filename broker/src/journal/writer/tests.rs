//! The writer against a `MemoryStore`: coalescing inside a batch, shared bodies, tickets.

use super::*;
use crate::store::MemoryStore;
use bytes::Bytes;

fn message(id: u64) -> Arc<Message> {
    let mut m = Message::plain(
        "t".into(),
        Bytes::from_static(b"x"),
        QoS::AtLeastOnce,
        false,
    );
    m.publisher = 1;
    let _ = m.stored_id.set(id);
    Arc::new(m)
}

fn enqueue(client: &Arc<str>, seq: u64, m: &Arc<Message>) -> Record {
    Record::Enqueue {
        client: client.clone(),
        seq,
        message: m.clone(),
        shared: true,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![],
    }
}

fn remove(client: &Arc<str>, seq: u64, m: u64) -> Record {
    Record::Remove {
        client: client.clone(),
        seq,
        message: Some(m),
    }
}

fn writer() -> Writer {
    let shared = Arc::new(Shared::new(1));
    Writer::new(
        shared,
        Arc::new(MemoryStore::default()),
        MessageRefs::default(),
    )
}

fn written(built: (Vec<Change>, Vec<u64>)) -> Vec<Change> {
    built.0
}

#[test]
fn an_entry_acknowledged_before_its_batch_commits_is_not_written() {
    let mut w = writer();
    let m = message(5);
    // Every record of one session shares the session's client id (the same `Arc`).
    let a: Arc<str> = "a".into();
    let changes = written(w.build(vec![
        enqueue(&a, 1, &m),
        Record::Entry {
            client: a.clone(),
            seq: 1,
            state: EntryState::Sent(9),
        },
        remove(&a, 1, 5),
    ]));
    assert!(changes.is_empty(), "{changes:?}");
}

#[test]
fn a_body_shared_by_sessions_goes_with_its_last_entry() {
    let mut w = writer();
    let m = message(5);
    let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
    let first = written(w.build(vec![enqueue(&a, 1, &m), enqueue(&b, 1, &m)]));
    assert_eq!(
        first
            .iter()
            .filter(|c| matches!(c, Change::PutMessage(..)))
            .count(),
        1,
        "one body for two sessions"
    );
    // As after a successful commit.
    w.refs.refs.get_mut(&5).unwrap().written = true;
    let second = written(w.build(vec![remove(&a, 1, 5)]));
    assert_eq!(second, vec![Change::DeleteEntry("a".into(), 1)]);
    let third = written(w.build(vec![
        Record::Entry {
            client: b.clone(),
            seq: 1,
            state: EntryState::Sent(3),
        },
        remove(&b, 1, 5),
    ]));
    assert_eq!(
        third,
        vec![
            Change::SetEntryState("b".into(), 1, EntryState::Sent(3)),
            Change::DeleteEntry("b".into(), 1),
            Change::DeleteMessage(5),
        ]
    );
}

#[tokio::test]
async fn a_ticket_is_done_once_its_batch_is_committed() {
    let store = Arc::new(MemoryStore::default());
    let journal = Journal::start(store.clone(), MessageRefs::default(), 1).unwrap();
    let m = message(1);
    let ticket = journal.append(enqueue(&"a".into(), 1, &m));
    journal.wait(ticket).await.unwrap();
    assert!(journal.done() >= ticket);
    let state = store.load().unwrap();
    assert_eq!(state.messages.len(), 1);
    journal.close();
}

/// A CONNACK waits for `last_ticket()` after records that may already be committing: the
/// ticket must name their batch, not the empty one being filled (which commits only at the
/// writer's heartbeat, seconds later).
#[tokio::test]
async fn the_last_ticket_names_the_batch_of_the_last_record() {
    let journal =
        Journal::start(Arc::new(MemoryStore::default()), MessageRefs::default(), 1).unwrap();
    let ticket = journal.append(enqueue(&"a".into(), 1, &message(1)));
    journal.wait(ticket).await.unwrap();
    // Nothing appended since: the last record's batch is done, so is the last ticket.
    assert_eq!(journal.last_ticket(), ticket);
    assert!(journal.done() >= journal.last_ticket());
    // A record in the batch being filled: that batch.
    let next = journal.append(enqueue(&"a".into(), 2, &message(2)));
    assert_eq!(journal.last_ticket(), next);
    journal.wait(next).await.unwrap();
    // A pin with nothing appended under it (a message from the stream for no persistent
    // session): the last record's batch still, or a sync would wait for the heartbeat.
    let pin = journal.pin();
    assert_eq!(journal.last_ticket(), next);
    tokio::time::timeout(std::time::Duration::from_secs(1), journal.sync())
        .await
        .expect("a sync under an empty pin waited for the heartbeat")
        .unwrap();
    drop(pin);
    journal.close();
}

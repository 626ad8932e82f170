//! Group commit: every change to durable state goes through here, and one thread writes them to
//! the store in batches, one transaction (one fsync) per commit cycle.
//!
//! Connections and timers append [`Record`]s under a short lock and get a ticket: the number of
//! the batch that will hold them. The writer thread takes everything appended so far as one
//! batch, turns it into store [`Change`]s (converting messages to their stored form here, off
//! the routing path), commits, and then marks the batch done: a publisher whose PUBACK waits on
//! that ticket is woken and sends it. While a commit runs, the next batch fills; under load a
//! batch holds thousands of records, and an idle broker pays one commit per message.
//!
//! Coalescing inside a batch: a queue entry created and removed before its batch commits (the
//! subscriber acknowledged it first) is not written at all, and a message body is written only
//! if some entry still references it when the batch commits. Message bodies are shared by the
//! entries of every session they were queued to; this writer counts their references.
//!
//! Invariants: batches commit in ticket order, so a batch that is done implies every earlier
//! one is (a record need not wait for its own commit to be safe if a later, waited-for record
//! depends on it). Records appended while a [`Pin`] is held land in one batch, so they commit
//! together or not at all. No broker lock is held while a batch is built or committed; the
//! append lock is a leaf (taken last, held for a push).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;
use tracing::{error, warn};

use crate::codec::QoS;
use crate::message::Message;
use crate::session::Session;
use crate::store::{
    Batch, Change, EntryState, SessionHead, Store, StoreError, StoredEntry, StoredMessage,
    StoredSubscription,
};

/// With nothing to write, a batch is still committed this often, so the store's `last_alive`
/// says when the broker last ran (sessions online at a crash count as dropped from then).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Failed batches remembered, for waiters that look late.
const FAILED_KEPT: usize = 4096;
/// `last_alive` is written with a batch at most this often.
const ALIVE_EVERY: Duration = Duration::from_secs(1);

/// Hashes the writer's integer keys (message ids, entry keys) with one multiply per word: the
/// default SipHash showed up in profiles, and these keys come from the broker, not the network.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A queue entry within a batch: its session (the address of the session's client id, which
/// every record of one session shares) and its sequence number.
type EntryKey = (usize, u64);

fn entry_key(client: &Arc<str>, seq: u64) -> EntryKey {
    (Arc::as_ptr(client) as *const u8 as usize, seq)
}

/// A change to durable state, as the broker describes it.
pub(crate) enum Record {
    /// A retained message set; an empty payload deletes the topic's.
    Retained(Arc<Message>),
    /// Boxed: a head with a will is large, and most records are queue entries.
    Session(Box<SessionHead>),
    /// The session ended. `messages` are the shared bodies its journaled entries referenced.
    EndSession {
        client: Arc<str>,
        messages: Vec<u64>,
    },
    Subscribe(Arc<str>, StoredSubscription),
    Unsubscribe(Arc<str>, String),
    Enqueue {
        client: Arc<str>,
        seq: u64,
        message: Arc<Message>,
        /// Routed to several sessions: the body is stored once, referenced by each entry.
        /// Otherwise it is stored in the entry.
        shared: bool,
        qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
    },
    /// An entry's new state (sent with a packet identifier, or released).
    Entry {
        client: Arc<str>,
        seq: u64,
        state: EntryState,
    },
    /// An entry acknowledged, dropped by the queue bound, or expired; `message` is the shared
    /// body it referenced, if any.
    Remove {
        client: Arc<str>,
        seq: u64,
        message: Option<u64>,
    },
    IncomingAdd(Arc<str>, u16),
    IncomingRemove(Arc<str>, u16),
    /// A stored message body nothing references (found at start).
    DropMessage(u64),
}

struct Pending {
    /// The number of the batch being filled.
    batch: u64,
    records: Vec<Record>,
    /// Sessions whose connection waits on a ticket; woken once that batch is done.
    waiters: Vec<(u64, Arc<Session>)>,
    /// Pins held on the batch being filled: the writer does not take it while any is.
    pins: usize,
    stop: bool,
}

/// Keeps the batch being filled open: every record appended while a pin lives is in it.
/// Held for one synchronous step (routing one message), never across an await.
pub(crate) struct Pin<'j> {
    journal: &'j Journal,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut p = self.journal.shared.pending.lock();
        p.pins -= 1;
        let last = p.pins == 0;
        drop(p);
        if last {
            self.journal.shared.wake.notify_one();
        }
    }
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Every batch up to this number is done (committed, or failed).
    done: AtomicU64,
    done_tx: watch::Sender<u64>,
    failed: Mutex<BTreeMap<u64, StoreError>>,
    /// Message ids for stored message bodies.
    next_message_id: AtomicU64,
    commits: AtomicU64,
    failures: AtomicU64,
}

/// The handle the broker holds.
pub(crate) struct Journal {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// References to stored message bodies: which are written, and by how many entries.
#[derive(Default)]
pub(crate) struct MessageRefs {
    refs: IdMap<u64, MessageRef>,
}

struct MessageRef {
    entries: u32,
    written: bool,
}

impl MessageRefs {
    /// A body loaded from the store, referenced by `entries` entries.
    pub(crate) fn loaded(&mut self, id: u64, entries: u32) {
        self.refs.insert(
            id,
            MessageRef {
                entries,
                written: true,
            },
        );
    }
}

impl Journal {
    /// Starts the writer thread. `refs` and `next_message_id` continue the loaded state.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        refs: MessageRefs,
        next_message_id: u64,
    ) -> std::io::Result<Journal> {
        let (done_tx, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                batch: 1,
                records: Vec::new(),
                waiters: Vec::new(),
                pins: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            done: AtomicU64::new(0),
            done_tx,
            failed: Mutex::new(BTreeMap::new()),
            next_message_id: AtomicU64::new(next_message_id.max(1)),
            commits: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("tessera-journal".into())
                .spawn(move || Writer::new(shared, store, refs).run())?
        };
        Ok(Journal {
            shared,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Appends one record; returns its ticket.
    pub(crate) fn append(&self, record: Record) -> u64 {
        let mut p = self.shared.pending.lock();
        p.records.push(record);
        let ticket = p.batch;
        drop(p);
        self.shared.wake.notify_one();
        ticket
    }

    /// Keeps the batch being filled open until the pin is dropped (see [`Pin`]).
    pub(crate) fn pin(&self) -> Pin<'_> {
        self.shared.pending.lock().pins += 1;
        Pin { journal: self }
    }

    /// The id a message body is stored under (the same for every session it is queued to).
    pub(crate) fn message_id(&self, message: &Message) -> u64 {
        *message
            .stored_id
            .get_or_init(|| self.shared.next_message_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Waits until everything appended so far is committed.
    pub(crate) async fn sync(&self) -> Result<(), StoreError> {
        let ticket = {
            let p = self.shared.pending.lock();
            if p.records.is_empty() && p.pins == 0 {
                // The last record appended is in an earlier batch (possibly still committing).
                p.batch.saturating_sub(1)
            } else {
                p.batch
            }
        };
        self.wait(ticket).await
    }

    /// Every batch up to this ticket is done.
    pub(crate) fn done(&self) -> u64 {
        self.shared.done.load(Ordering::Acquire)
    }

    /// How the batch of `ticket` ended (call once [`Journal::done`] reached it).
    pub(crate) fn outcome(&self, ticket: u64) -> Result<(), StoreError> {
        match self.shared.failed.lock().get(&ticket) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Wakes `session`'s connection (its `notify`) once the batch of `ticket` is done.
    pub(crate) fn wake_after(&self, ticket: u64, session: &Arc<Session>) {
        let mut p = self.shared.pending.lock();
        if self.done() >= ticket {
            drop(p);
            session.notify.notify_one();
            return;
        }
        // The writer sets `done` under this lock, so a ticket found undone here is woken.
        p.waiters.push((ticket, session.clone()));
    }

    /// Waits (asynchronously) until the batch of `ticket` is done, and says how it ended.
    pub(crate) async fn wait(&self, ticket: u64) -> Result<(), StoreError> {
        let mut rx = self.shared.done_tx.subscribe();
        if rx.wait_for(|done| *done >= ticket).await.is_err() {
            return Err(StoreError::Failed("the journal stopped".into()));
        }
        self.outcome(ticket)
    }

    /// Batches committed, and batches that failed, since start.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.shared.commits.load(Ordering::Relaxed),
            self.shared.failures.load(Ordering::Relaxed),
        )
    }

    /// Commits what is pending and stops the writer (at shutdown).
    pub(crate) fn close(&self) {
        self.shared.pending.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(w) = self.writer.lock().take()
            && w.join().is_err()
        {
            error!("journal writer panicked");
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    store: Arc<dyn Store>,
    refs: MessageRefs,
}

/// A batch being turned into changes.
struct Building {
    changes: Vec<Slot>,
    /// Entries created in this batch: where their `PutEntry` is.
    new_entries: IdMap<EntryKey, usize>,
    /// Message bodies first written by this batch: where their `PutMessage` is.
    new_bodies: IdMap<u64, usize>,
}

/// A change of the batch being built. Messages are converted to their stored form only for
/// the entries and bodies that are still there when the batch is complete: most entries of a
/// busy persistent session are acknowledged before their batch commits.
enum Slot {
    Ready(Change),
    /// A queue entry, with the message to store inline in it if it is not shared.
    Entry(Arc<str>, StoredEntry, Option<Arc<Message>>),
    /// A shared message body.
    Body(u64, Arc<Message>),
    /// Cancelled within the batch.
    Gone,
}

impl Slot {
    fn into_change(self) -> Option<Change> {
        match self {
            Slot::Ready(c) => Some(c),
            Slot::Entry(client, mut entry, inline) => {
                entry.body = inline.map(|m| Arc::new(StoredMessage::from_message(&m)));
                Some(Change::PutEntry(client, entry))
            }
            Slot::Body(id, m) => Some(Change::PutMessage(
                id,
                Arc::new(StoredMessage::from_message(&m)),
            )),
            Slot::Gone => None,
        }
    }
}

impl Writer {
    fn new(shared: Arc<Shared>, store: Arc<dyn Store>, refs: MessageRefs) -> Writer {
        Writer {
            shared,
            store,
            refs,
        }
    }

    fn run(mut self) {
        let mut last_commit = Instant::now();
        let mut last_alive: Option<Instant> = None;
        loop {
            // On a busy core, connection threads are ready to run: letting them go first makes
            // the batch bigger, and most of a commit's cost (its fsync above all) is per commit,
            // not per record (QoS 1 fan-in to a persistent session on one core: 250 -> 390
            // messages per commit, 3.2 -> 2.7 µs of CPU per message). With nothing else ready to
            // run this returns at once.
            std::thread::yield_now();
            let (batch, records, stop) = {
                let mut p = self.shared.pending.lock();
                loop {
                    if p.pins > 0 {
                        // A group of records is being appended: let it finish.
                        self.shared.wake.wait(&mut p);
                        continue;
                    }
                    if !p.records.is_empty() || p.stop {
                        break;
                    }
                    let left = HEARTBEAT.saturating_sub(last_commit.elapsed());
                    if left.is_zero() {
                        break;
                    }
                    self.shared.wake.wait_for(&mut p, left);
                }
                let batch = p.batch;
                p.batch += 1;
                (batch, std::mem::take(&mut p.records), p.stop)
            };
            let (changes, bodies) = self.build(records);
            let alive_at = last_alive
                .is_none_or(|t| t.elapsed() >= ALIVE_EVERY)
                .then(SystemTime::now);
            let result = self.store.commit(&Batch { changes, alive_at });
            last_commit = Instant::now();
            match result {
                Ok(()) => {
                    self.shared.commits.fetch_add(1, Ordering::Relaxed);
                    if alive_at.is_some() {
                        last_alive = Some(last_commit);
                    }
                    for id in bodies {
                        if let Some(r) = self.refs.refs.get_mut(&id) {
                            r.written = true;
                        }
                    }
                }
                Err(e) => {
                    self.shared.failures.fetch_add(1, Ordering::Relaxed);
                    warn!(batch, error = %e, "store commit failed; its publishers are told");
                    let mut failed = self.shared.failed.lock();
                    failed.insert(batch, e);
                    while failed.len() > FAILED_KEPT {
                        failed.pop_first();
                    }
                }
            }
            let woken = {
                let mut p = self.shared.pending.lock();
                self.shared.done.store(batch, Ordering::Release);
                let (due, later): (Vec<_>, Vec<_>) =
                    p.waiters.drain(..).partition(|(t, _)| *t <= batch);
                p.waiters = later;
                due
            };
            self.shared.done_tx.send_replace(batch);
            for (_, s) in woken {
                s.notify.notify_one();
            }
            if stop {
                return;
            }
        }
    }

    /// Turns a batch of records into store changes, coalescing what cancels out. Also returns
    /// the message bodies the changes write.
    fn build(&mut self, records: Vec<Record>) -> (Vec<Change>, Vec<u64>) {
        let mut b = Building {
            changes: Vec::with_capacity(records.len() + 1),
            new_entries: IdMap::default(),
            new_bodies: IdMap::default(),
        };
        for record in records {
            match record {
                Record::Retained(m) => b.changes.push(Slot::Ready(if m.payload.is_empty() {
                    Change::DeleteRetained(m.topic.to_string())
                } else {
                    Change::PutRetained(Box::new(StoredMessage::from_message(&m)))
                })),
                Record::Session(head) => b.changes.push(Slot::Ready(Change::PutSession(head))),
                Record::EndSession { client, messages } => {
                    b.changes
                        .push(Slot::Ready(Change::DeleteSession(client.clone())));
                    let gone = entry_key(&client, 0).0;
                    b.new_entries.retain(|(c, _), _| *c != gone);
                    for id in messages {
                        self.release_message(&mut b, id);
                    }
                }
                Record::Subscribe(client, sub) => b
                    .changes
                    .push(Slot::Ready(Change::PutSubscription(client.clone(), sub))),
                Record::Unsubscribe(client, filter) => b.changes.push(Slot::Ready(
                    Change::DeleteSubscription(client.clone(), filter),
                )),
                Record::Enqueue {
                    client,
                    seq,
                    message,
                    shared,
                    qos,
                    retain,
                    subscription_ids,
                } => {
                    let id = message.stored_id.get().copied().unwrap_or_default();
                    let inline = if shared {
                        let r = self.refs.refs.entry(id).or_insert(MessageRef {
                            entries: 0,
                            written: false,
                        });
                        if r.entries == 0 && !r.written && !b.new_bodies.contains_key(&id) {
                            b.new_bodies.insert(id, b.changes.len());
                            b.changes.push(Slot::Body(id, message.clone()));
                        }
                        r.entries += 1;
                        None
                    } else {
                        Some(message)
                    };
                    b.new_entries
                        .insert(entry_key(&client, seq), b.changes.len());
                    b.changes.push(Slot::Entry(
                        client.clone(),
                        StoredEntry {
                            seq,
                            message_id: id,
                            body: None,
                            qos,
                            retain,
                            subscription_ids,
                            state: EntryState::Queued,
                        },
                        inline,
                    ));
                }
                Record::Entry { client, seq, state } => {
                    if let Some(&at) = b.new_entries.get(&entry_key(&client, seq)) {
                        // Still only in this batch: update the entry being written.
                        if let Some(Slot::Entry(_, e, _)) = b.changes.get_mut(at) {
                            e.state = state;
                        }
                    } else {
                        b.changes.push(Slot::Ready(Change::SetEntryState(
                            client.clone(),
                            seq,
                            state,
                        )));
                    }
                }
                Record::Remove {
                    client,
                    seq,
                    message,
                } => {
                    match b.new_entries.remove(&entry_key(&client, seq)) {
                        // Created and gone within the batch: write neither.
                        Some(at) => b.changes[at] = Slot::Gone,
                        None => b
                            .changes
                            .push(Slot::Ready(Change::DeleteEntry(client.clone(), seq))),
                    }
                    if let Some(id) = message {
                        self.release_message(&mut b, id);
                    }
                }
                Record::IncomingAdd(client, pid) => b
                    .changes
                    .push(Slot::Ready(Change::PutIncoming(client.clone(), pid))),
                Record::IncomingRemove(client, pid) => b
                    .changes
                    .push(Slot::Ready(Change::DeleteIncoming(client.clone(), pid))),
                Record::DropMessage(id) => b.changes.push(Slot::Ready(Change::DeleteMessage(id))),
            }
        }
        let bodies = b.new_bodies.keys().copied().collect();
        (
            b.changes
                .into_iter()
                .filter_map(Slot::into_change)
                .collect(),
            bodies,
        )
    }

    /// One entry referencing message `id` went: its body goes with the last one.
    fn release_message(&mut self, b: &mut Building, id: u64) {
        let Some(r) = self.refs.refs.get_mut(&id) else {
            return;
        };
        r.entries = r.entries.saturating_sub(1);
        if r.entries > 0 {
            return;
        }
        let written = r.written;
        self.refs.refs.remove(&id);
        match b.new_bodies.remove(&id) {
            Some(i) => b.changes[i] = Slot::Gone,
            None if written => b.changes.push(Slot::Ready(Change::DeleteMessage(id))),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use bytes::Bytes;

    fn message(id: u64) -> Arc<Message> {
        let m = Message {
            topic: "t".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            expires_at: None,
            publisher: 1,
            encoded_properties: Default::default(),
            stored_id: Default::default(),
        };
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
        let (done_tx, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                batch: 1,
                records: Vec::new(),
                waiters: Vec::new(),
                pins: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            done: AtomicU64::new(0),
            done_tx,
            failed: Mutex::new(BTreeMap::new()),
            next_message_id: AtomicU64::new(1),
            commits: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
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
}

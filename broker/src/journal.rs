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

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};
use tracing::{error, warn};

use crate::codec::QoS;
use crate::message::Message;
use crate::stats::{Histogram, HistogramValues};
use crate::store::{
    Batch, Change, EntryState, SessionHead, Store, StoreError, StoredEntry, StoredMessage,
    StoredSubscription,
};
use crate::tickets::Tickets;

/// With nothing to write, a batch is still committed this often, so the store's `last_alive`
/// says when the broker last ran (sessions online at a crash count as dropped from then).
const HEARTBEAT: Duration = Duration::from_secs(5);
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
    /// The number of the batch being filled: its ticket, issued when it began to fill.
    batch: u64,
    records: Vec<Record>,
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
        // The writer waits for pins only over records (see `writer.rs`): a pin that appended
        // nothing (a message from the stream for no persistent session) wakes no one.
        let wake = p.pins == 0 && !p.records.is_empty();
        drop(p);
        if wake {
            self.journal.shared.wake.notify_one();
        }
    }
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// One per batch, settled in order when it is committed or failed. Lock order: `pending`,
    /// then the tickets' own lock.
    tickets: Tickets<StoreError>,
    /// Message ids for stored message bodies.
    next_message_id: AtomicU64,
    commits: AtomicU64,
    failures: AtomicU64,
    /// Whether the last commit succeeded (readiness: the store is writable).
    last_ok: AtomicBool,
    /// How long each commit took (the fsync included).
    commit_latency: Histogram,
    /// In a cluster, the stream position routing moves (`Cluster::peers_routed`), written
    /// with the batch that holds what was routed up to it (`Batch::peers_routed`).
    peers_routed: OnceLock<Arc<AtomicU64>>,
}

impl Shared {
    /// Nothing pending, nothing done; message ids from `next_message_id` on.
    pub(crate) fn new(next_message_id: u64) -> Shared {
        let tickets = Tickets::default();
        Shared {
            pending: Mutex::new(Pending {
                batch: tickets.issue(),
                records: Vec::new(),
                pins: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            tickets,
            next_message_id: AtomicU64::new(next_message_id.max(1)),
            commits: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_ok: AtomicBool::new(true),
            peers_routed: OnceLock::new(),
            commit_latency: Histogram::default(),
        }
    }
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
        let shared = Arc::new(Shared::new(next_message_id));
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

    /// The ticket of the last record appended. Not simply the batch being filled: when that
    /// is still empty, the last record is in an earlier batch (possibly committing), and a
    /// wait on the empty one would last until the writer's next heartbeat commit. A pin held
    /// with nothing appended yet does not change that (what it will append is not appended
    /// so far; routing from the stream holds one per message, most appending nothing).
    pub(crate) fn last_ticket(&self) -> u64 {
        let p = self.shared.pending.lock();
        if p.records.is_empty() {
            p.batch.saturating_sub(1)
        } else {
            p.batch
        }
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

    /// Writes `position` (the cluster's stream position) with every batch it moved in.
    pub(crate) fn follow_peers_routed(&self, position: Arc<AtomicU64>) {
        let _ = self.shared.peers_routed.set(position);
    }

    /// Waits until everything appended so far is committed.
    pub(crate) async fn sync(&self) -> Result<(), StoreError> {
        self.wait(self.last_ticket()).await
    }

    /// Every batch up to this ticket is done.
    pub(crate) fn done(&self) -> u64 {
        self.shared.tickets.done()
    }

    /// How the batch of `ticket` ended (call once [`Journal::done`] reached it).
    pub(crate) fn outcome(&self, ticket: u64) -> Result<(), StoreError> {
        self.shared.tickets.outcome(ticket)
    }

    /// Wakes `waker` (a session's connection) once the batch of `ticket` is done.
    pub(crate) fn wake_after(&self, ticket: u64, waker: &Waker) {
        self.shared.tickets.wake_after(ticket, waker);
    }

    /// Waits (asynchronously) until the batch of `ticket` is done, and says how it ended.
    pub(crate) async fn wait(&self, ticket: u64) -> Result<(), StoreError> {
        self.shared
            .tickets
            .wait(ticket)
            .await
            .unwrap_or_else(|| Err(StoreError::Failed("the journal stopped".into())))
    }

    /// Whether the last batch committed (until a commit fails, and again once one succeeds).
    pub(crate) fn writable(&self) -> bool {
        self.shared.last_ok.load(Ordering::Relaxed)
    }

    pub(crate) fn commit_latency(&self) -> HistogramValues {
        self.shared.commit_latency.read()
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

mod writer;

use writer::Writer;

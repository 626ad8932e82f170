//! The journal's writer thread: takes everything appended as one batch, turns its records into
//! store changes (messages converted to their stored form here, off the routing path, and only
//! for entries still there when the batch is complete), commits, and marks the batch done.

use super::*;

#[cfg(test)]
mod tests;

/// The writer thread's state.
pub(super) struct Writer {
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
    pub(super) fn new(shared: Arc<Shared>, store: Arc<dyn Store>, refs: MessageRefs) -> Writer {
        Writer {
            shared,
            store,
            refs,
        }
    }

    pub(super) fn run(mut self) {
        let mut last_commit = Instant::now();
        let mut last_alive: Option<Instant> = None;
        // The stream position last written (`Batch::peers_routed`).
        let mut written_routed: Option<u64> = None;
        loop {
            // On a busy core, connection threads are ready to run: letting them go first makes
            // the batch bigger, and most of a commit's cost (its fsync above all) is per commit,
            // not per record (QoS 1 fan-in to a persistent session on one core: 250 -> 390
            // messages per commit, 3.2 -> 2.7 µs of CPU per message). With nothing else ready to
            // run this returns at once.
            std::thread::yield_now();
            let (batch, records, stop, routed) = {
                let mut p = self.shared.pending.lock();
                loop {
                    if p.pins > 0 && !p.records.is_empty() {
                        // A group of records is being appended: let it finish. (With none
                        // appended yet, a batch taken now holds none of the group's, and the
                        // position it reads was not moved by it: a pinned router moves it
                        // after appending.)
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
                p.batch = self.shared.tickets.issue();
                // Read with the records, no pin held: routing a message from the stream
                // appends its records and moves the position under one pin (`routing.rs`),
                // so the messages at or below what is read here are exactly those whose
                // records are in this batch or an earlier one.
                let routed = self
                    .shared
                    .peers_routed
                    .get()
                    .map(|p| p.load(Ordering::Acquire));
                (batch, std::mem::take(&mut p.records), p.stop, routed)
            };
            let peers_routed = routed.filter(|r| Some(*r) != written_routed);
            let (changes, bodies) = self.build(records);
            let alive_at = last_alive
                .is_none_or(|t| t.elapsed() >= ALIVE_EVERY)
                .then(SystemTime::now);
            let started = Instant::now();
            let result = self.store.commit(&Batch {
                changes,
                alive_at,
                peers_routed,
            });
            last_commit = Instant::now();
            self.shared.commit_latency.observe(last_commit - started);
            self.shared.last_ok.store(result.is_ok(), Ordering::Relaxed);
            match &result {
                Ok(()) => {
                    self.shared.commits.fetch_add(1, Ordering::Relaxed);
                    if alive_at.is_some() {
                        last_alive = Some(last_commit);
                    }
                    if peers_routed.is_some() {
                        written_routed = peers_routed;
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
                }
            }
            // Batches are taken and settled in order, so `done` becomes this batch.
            self.shared.tickets.settle(batch, result);
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

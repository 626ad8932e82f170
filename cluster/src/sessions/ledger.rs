//! QoS 2 exactly once when a session's node dies: each persistent session's record lists the
//! QoS 2 messages its client may hold an identifier for, or has had, since the record's floor
//! (`Record::qos2`). The engine reports each step (`Event::Qos2`) under the session's lock;
//! the step's packet waits for the record that holds it:
//! - **sent** under an identifier: its PUBLISH leaves once the record lists it;
//! - **released**: its PUBREL leaves once the record says so (the client forgets the
//!   identifier on PUBREL);
//! - **completed** (PUBCOMP, refused, or too large): nothing waits; the next write carries it.
//!
//! and of the client's own QoS 2 messages, their identifiers from PUBREC (which waits for the
//! record as for the stream) to PUBCOMP (which waits for the record that drops it): the node
//! that takes the session over does not publish a resend of one again, and takes a new
//! message under a released identifier for new.
//!
//! The node that opens the session of an owner that did not answer (`claim_here`) sends the
//! released ones' PUBREL, the sent ones again under their identifier with DUP (read back from
//! the stream), and neither its replay nor its routing gives the session any listed message
//! again (`Carried::delivered`). A sent one the stream no longer holds gets a PUBREL: the
//! client releases it if it had it, and its identifier is free on both sides.
//!
//! An entry goes once its publication time is `KEEP_MS` below the record's floor: the replay
//! reads the stream from the floor by the stream's time, which for a message of this node is
//! a little after the time the engine gave it (the store's latency; longer only while NATS
//! fails over).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tessera_broker::cluster::{Carried, CarriedEntry, ClusterId, Cut, PeerHandle, Qos2Step};
use tessera_broker::codec::QoS;
use tessera_broker::store::EntryState;
use tracing::warn;

use super::{Record, Sessions};
use crate::frame::{origin_for_engine, origin_from_engine};

/// How far below the record's floor an entry is kept (ms).
const KEEP_MS: u64 = 2_000;
/// Completed entries a record keeps at most, the newest: a session that leaves one message
/// unacknowledged while thousands complete would otherwise list them all (about 50 bytes
/// each) in every write. Past it, the oldest may come again from a dead owner (at least
/// once for them).
const MAX_COMPLETED: usize = 1_000;
/// How long a claim looks in the stream for the messages a dead owner had sent.
const FIND_WITHIN: Duration = Duration::from_secs(1);

/// One QoS 2 message of a session, as its record keeps it (short names: a record may list
/// many).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Qos2 {
    /// The message's origin (a process, never 0) and number (`Frame`).
    #[serde(rename = "o")]
    pub origin: u64,
    #[serde(rename = "s")]
    pub seq: u64,
    /// When it was published (ms since the epoch), as the floor counts it.
    #[serde(rename = "t")]
    pub at: u64,
    /// Its packet identifier while the client may hold it; 0 once completed.
    #[serde(rename = "p", default, skip_serializing_if = "is_zero")]
    pub pid: u16,
    /// Its PUBREL was sent (or is about to be).
    #[serde(rename = "r", default, skip_serializing_if = "is_false")]
    pub released: bool,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The QoS 2 entries of one session here, and the tickets waiting for a record with them.
#[derive(Default)]
pub(super) struct Ledger {
    entries: Vec<Qos2>,
    /// The identifiers of the client's own QoS 2 messages stored and not yet released.
    incoming: BTreeSet<u16>,
    tickets: Vec<u64>,
}

/// Tickets settled when dropped: whatever happens to the write they waited for, the packets
/// behind them go (at least once, if the record could not be written).
pub(super) struct Settle<'a> {
    broker: &'a PeerHandle,
    tickets: Vec<u64>,
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        for t in self.tickets.drain(..) {
            self.broker.settle(t, true);
        }
    }
}

impl Sessions {
    /// `Event::Qos2`: a step of a QoS 2 message of `client_id`'s session here. With a ticket,
    /// the record writer writes the session's record and then settles it.
    pub(crate) fn qos2(&self, client_id: &str, pid: u16, step: Qos2Step, ticket: u64) {
        {
            let mut ledgers = self.ledgers.lock();
            let ledger = ledgers.entry(client_id.to_string()).or_default();
            ledger.apply(self.origin, pid, step);
            if ticket != 0 && *self.nats.connected.borrow() {
                ledger.tickets.push(ticket);
            } else if ticket != 0 {
                // NATS lost: no record can be written now, and the node serves its clients
                // alone meanwhile. The packet goes (at least once if this node dies before
                // a later write records it).
                self.broker.settle(ticket, true);
                return;
            }
        }
        if ticket != 0 {
            self.changed(client_id);
        }
    }

    /// The tickets waiting for `client_id`'s record, taken out: settled when the guard goes,
    /// after the write that follows.
    pub(super) fn take_tickets(&self, client_id: &str) -> Settle<'_> {
        let tickets = self
            .ledgers
            .lock()
            .get_mut(client_id)
            .map(|l| std::mem::take(&mut l.tickets))
            .unwrap_or_default();
        Settle {
            broker: &self.broker,
            tickets,
        }
    }

    /// The entries the record with `floor_ms` keeps (older ones are dropped here too), and
    /// the client's unreleased identifiers.
    pub(super) fn qos2_of(&self, client_id: &str, floor_ms: u64) -> (Vec<Qos2>, Vec<u16>) {
        let mut ledgers = self.ledgers.lock();
        let Some(ledger) = ledgers.get_mut(client_id) else {
            return Default::default();
        };
        ledger.prune(floor_ms);
        let incoming = ledger.incoming.iter().copied().collect();
        (ledger.entries.clone(), incoming)
    }

    /// The session went (ended or moved): its entries go, its waiting tickets settle.
    pub(super) fn forget_qos2(&self, client_id: &str) {
        let ledger = self.ledgers.lock().remove(client_id);
        drop(Settle {
            broker: &self.broker,
            tickets: ledger.map(|l| l.tickets).unwrap_or_default(),
        });
    }

    /// The session's entries are its record's now (it was claimed, or adopted at start).
    pub(super) fn set_qos2(&self, client_id: &str, record: &Record) {
        let mut ledgers = self.ledgers.lock();
        let ledger = ledgers.entry(client_id.to_string()).or_default();
        ledger.entries = record.qos2.clone();
        ledger.incoming = record.incoming.iter().copied().collect();
    }

    /// What a session whose owner did not answer carries here, from its last record: its
    /// released messages (PUBREL again), its sent ones read back from the stream (PUBLISH
    /// again, DUP, same identifier), and every listed message as delivered. The record's
    /// entries as this node keeps them (a sent one not found is released).
    pub(super) async fn carried_from_record(&self, record: &Record) -> (Carried, Vec<Qos2>) {
        let mut entries = record.qos2.clone();
        let wanted: HashSet<(u64, u64)> = entries
            .iter()
            .filter(|e| e.pid != 0 && !e.released)
            .map(|e| (e.origin, e.seq))
            .collect();
        let found = if wanted.is_empty() {
            HashMap::new()
        } else {
            let read = self.find_in_stream(record, wanted);
            tokio::time::timeout(FIND_WITHIN, read)
                .await
                .unwrap_or_else(|_| Err("took too long".into()))
                .unwrap_or_else(|e| {
                    warn!(error = %e, "reading back the QoS 2 messages a dead node had sent");
                    HashMap::new()
                })
        };
        let subscriptions = record.subscriptions();
        let mut carried = Vec::new();
        for e in entries.iter_mut().filter(|e| e.pid != 0) {
            let again = (!e.released)
                .then(|| found.get(&(e.origin, e.seq)))
                .flatten()
                .and_then(|(packet, at)| {
                    let id = self.engine_id(e);
                    CarriedEntry::sent_again(&subscriptions, packet.clone(), *at, id, e.pid)
                });
            carried.push(again.unwrap_or_else(|| {
                // Released, or no longer to be had: PUBREL frees the identifier.
                e.released = true;
                CarriedEntry {
                    packet: Bytes::new(),
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    subscription_ids: Vec::new(),
                    state: EntryState::Released(e.pid),
                    published_ms: e.at,
                    id: Some(self.engine_id(e)),
                }
            }));
        }
        let delivered = entries.iter().map(|e| self.engine_id(e)).collect();
        let carried = Carried {
            entries: carried,
            incoming_qos2: record.incoming.clone(),
            cut: Cut::default(),
            origin: 0,
            delivered,
        };
        (carried, entries)
    }

    /// An entry's message as the engine names it (this process's origin is 0 there).
    fn engine_id(&self, e: &Qos2) -> ClusterId {
        ClusterId {
            origin: origin_for_engine(e.origin, self.origin),
            seq: e.seq,
            stream_seq: 0,
        }
    }

    /// The messages named `wanted` (origin, number), read from the stream from the record's
    /// floor with its subscriptions: each one's PUBLISH and publication time.
    async fn find_in_stream(
        &self,
        record: &Record,
        mut wanted: HashSet<(u64, u64)>,
    ) -> Result<HashMap<(u64, u64), (Bytes, u64)>, String> {
        let mut found = HashMap::new();
        let from = DeliverPolicy::ByStartTime {
            start_time: super::replay::stream_time(record.floor_ms)?,
        };
        self.read_stream(&record.subs, from, |frame, packet, published_ms, _| {
            if wanted.remove(&(frame.origin, frame.seq)) {
                found.insert((frame.origin, frame.seq), (packet, published_ms));
            }
            !wanted.is_empty()
        })
        .await?;
        Ok(found)
    }
}

impl Ledger {
    /// A step of the message under `pid` (`own`: this process's origin, which the engine
    /// calls 0).
    fn apply(&mut self, own: u64, pid: u16, step: Qos2Step) {
        match step {
            Qos2Step::Sent { id, published_ms } => {
                let origin = origin_from_engine(id.origin, own);
                self.entries
                    .retain(|e| (e.origin, e.seq) != (origin, id.seq));
                // The engine gives an identifier only once it is free: what held it completed.
                self.complete(pid);
                self.entries.push(Qos2 {
                    origin,
                    seq: id.seq,
                    at: published_ms,
                    pid,
                    released: false,
                });
            }
            Qos2Step::Released => {
                if let Some(e) = self.entries.iter_mut().find(|e| e.pid == pid) {
                    e.released = true;
                }
            }
            Qos2Step::Completed => self.complete(pid),
            Qos2Step::ClientPublished => {
                self.incoming.insert(pid);
            }
            Qos2Step::ClientReleased => {
                self.incoming.remove(&pid);
            }
        }
    }

    /// The entry holding `pid` completed: it keeps its name (the replay skips it), not the
    /// identifier.
    fn complete(&mut self, pid: u16) {
        for e in self.entries.iter_mut().filter(|e| e.pid == pid) {
            e.pid = 0;
            e.released = false;
        }
    }

    /// Drops what a replay from `floor_ms` cannot read (see `KEEP_MS`), and completed entries
    /// past `MAX_COMPLETED`, the oldest first.
    fn prune(&mut self, floor_ms: u64) {
        self.entries.retain(|e| e.at + KEEP_MS >= floor_ms);
        // Entries are in the order they were sent: the first completed ones are the oldest.
        let completed = self.entries.iter().filter(|e| e.pid == 0).count();
        let mut over = completed.saturating_sub(MAX_COMPLETED);
        self.entries.retain(|e| {
            let drop = e.pid == 0 && over > 0;
            over -= usize::from(drop);
            !drop
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(origin: u64, seq: u64, at: u64) -> Qos2Step {
        Qos2Step::Sent {
            id: ClusterId {
                origin,
                seq,
                stream_seq: 0,
            },
            published_ms: at,
        }
    }

    fn states(l: &Ledger) -> Vec<(u64, u64, u16, bool)> {
        let mut v: Vec<_> = l
            .entries
            .iter()
            .map(|e| (e.origin, e.seq, e.pid, e.released))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_message_is_sent_released_and_completed_under_its_identifier() {
        let mut l = Ledger::default();
        l.apply(7, 1, sent(0, 10, 1_000));
        l.apply(7, 2, sent(9, 4, 1_000));
        // This node's own messages are named by its origin, never 0.
        assert_eq!(states(&l), [(7, 10, 1, false), (9, 4, 2, false)]);
        l.apply(7, 1, Qos2Step::Released);
        assert_eq!(states(&l), [(7, 10, 1, true), (9, 4, 2, false)]);
        l.apply(7, 1, Qos2Step::Completed);
        l.apply(7, 3, Qos2Step::Released); // not in flight: nothing
        assert_eq!(states(&l), [(7, 10, 0, false), (9, 4, 2, false)]);
    }

    #[test]
    fn an_identifier_given_again_completes_what_held_it_and_keeps_its_name() {
        let mut l = Ledger::default();
        l.apply(7, 1, sent(0, 10, 1_000));
        l.apply(7, 1, Qos2Step::Released);
        // Its PUBCOMP was not reported yet; the engine gave the identifier to another.
        l.apply(7, 1, sent(0, 11, 1_001));
        assert_eq!(states(&l), [(7, 10, 0, false), (7, 11, 1, false)]);
        // Sent again under another identifier (restored after a restart): one entry.
        l.apply(7, 5, sent(0, 11, 1_001));
        assert_eq!(states(&l), [(7, 10, 0, false), (7, 11, 5, false)]);
    }

    #[test]
    fn the_clients_own_identifiers_are_kept_until_it_releases_them() {
        let mut l = Ledger::default();
        l.apply(7, 3, Qos2Step::ClientPublished);
        l.apply(7, 4, Qos2Step::ClientPublished);
        // Another space than the identifiers this node gives: 3 is in flight both ways.
        l.apply(7, 3, sent(0, 10, 1_000));
        l.apply(7, 4, Qos2Step::ClientReleased);
        assert_eq!(l.incoming.iter().copied().collect::<Vec<_>>(), [3]);
        assert_eq!(states(&l), [(7, 10, 3, false)]);
    }

    #[test]
    fn a_record_keeps_the_newest_completed_entries_and_every_one_in_flight() {
        let mut l = Ledger::default();
        // One stuck in flight, then many completed after it.
        l.apply(7, 1, sent(0, 1, 1_000));
        for i in 0..MAX_COMPLETED as u64 + 10 {
            l.apply(7, 2, sent(0, 100 + i, 2_000 + i));
            l.apply(7, 2, Qos2Step::Completed);
        }
        l.prune(0);
        assert_eq!(l.entries.len(), MAX_COMPLETED + 1);
        assert!(l.entries.iter().any(|e| e.pid == 1), "in flight: kept");
        let oldest = l.entries.iter().filter(|e| e.pid == 0).map(|e| e.seq).min();
        assert_eq!(oldest, Some(110));
        // What a record says of them, compactly, reads back the same.
        let json = serde_json::to_string(&l.entries[..2]).unwrap();
        assert!(
            json.starts_with(r#"[{"o":7,"s":1,"t":1000,"p":1},{"o":7,"s":110"#),
            "{json}"
        );
        let back: Vec<Qos2> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, l.entries[..2]);
    }

    #[test]
    fn entries_go_once_well_below_the_floor() {
        let mut l = Ledger::default();
        l.apply(7, 1, sent(0, 10, 10_000));
        l.apply(7, 2, sent(0, 11, 12_500));
        l.prune(12_000);
        assert_eq!(states(&l).len(), 2, "within KEEP_MS of the floor");
        l.prune(12_001);
        assert_eq!(states(&l), [(7, 11, 2, false)]);
    }
}

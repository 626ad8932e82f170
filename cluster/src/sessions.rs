//! Persistent sessions across nodes. Each one has a record in the KV bucket
//! `<prefix>_sessions` (key: the escaped client id): the node that owns it, its expiry, its
//! subscriptions, whether it is offline and since when, and a floor time. One owner at a time:
//! every write is a compare-and-set on the record's revision, and a node whose write loses
//! reads who won and drops its copy.
//!
//! A client that connects on another node (Clean Start 0) moves its session there:
//! - the new node asks the owner on `<prefix>.handoff.<node>`; the owner ends the connection
//!   (0x8E), drops the session and answers with its last state. An owner that does not answer
//!   within `HANDOFF_WITHIN` (dead, or cut off) is passed over: its last record is used;
//! - the new node writes itself as owner (compare-and-set on the revision it read), opens the
//!   session with its subscriptions and Session Present, and
//! - replays (`sessions/replay.rs`) from the QoS 1/2 stream every message its subscriptions
//!   match published since the record's floor: what was queued or in flight there. The
//!   floor is the publication time of the oldest QoS 1/2 message the session had not
//!   acknowledged when the record was written (or, with none, the time up to which this
//!   node's consumer had routed everything), less `MARGIN` for clocks: nothing the session
//!   had not acknowledged is older. A replayed QoS 1 message may be one the client
//!   acknowledged after the record was written (at least once); QoS 2 ones are listed in the
//!   record with their state (`sessions/ledger.rs`), so a dead owner's session resumes its
//!   QoS 2 exchanges and gets no completed one again.
//!
//! Records are written when a session opens, subscribes, unsubscribes, goes offline or ends
//! (`Event::SessionChanged`, coalesced), and every `SWEEP_EVERY` for the sessions that had a
//! message queued since their record was written (the floor moves on). An idle session's
//! record is not rewritten: its floor stays right, only older (a replay from it finds
//! nothing of its own that it has not had, since anything matching it would have been
//! queued to it and marked it), so a node with 100,000 idle persistent sessions writes none
//! of them each sweep.
//!
//! The writer of records is `sessions/records.rs`. At start one scan of the bucket (not a
//! request per session) adopts the records this node
//! owns and drops every restored session whose record names another owner: a node back from
//! a crash does not resurrect sessions that moved on while it was down.
//!
//! A persistent CONNECT costs one KV round trip when the session stays where its record
//! says (an update at the revision this node wrote) or is new (a create); a read comes first
//! only when that write loses, and a move adds the handoff.

mod handoff;
mod ledger;
mod records;
mod replay;

use handoff::Answer;
use ledger::{Ledger, Qos2};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv::{Operation, Store};
use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tessera_auth::clock::now_ms;
use tessera_broker::cluster::{Carried, Cut, MovedSession, PeerHandle, SessionSnapshot};
use tessera_broker::codec::{QoS, RetainHandling, SubscriptionOptions};
use tessera_broker::store::StoredSubscription;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::interest::Interest;
use crate::keys::escape;
use crate::{ClusterError, Nats};

/// How long a node waits for the owner to hand a session over.
const HANDOFF_WITHIN: Duration = Duration::from_secs(1);
/// How long a claim may take (JetStream without quorum): past it, the session opens as new.
const CLAIM_WITHIN: Duration = Duration::from_secs(3);
/// How often every record's floor is brought up to date.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Clock differences between nodes and NATS servers the floor allows for (milliseconds).
const MARGIN: u64 = 100;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    owner: String,
    expiry: u32,
    subs: Vec<Sub>,
    /// Milliseconds since the epoch: the stream may hold messages after this the session has
    /// not had.
    floor_ms: u64,
    /// When its connection went; `None` while one is attached.
    offline_since_ms: Option<u64>,
    /// The QoS 2 messages its client holds an identifier for or has had (`ledger.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    qos2: Vec<Qos2>,
    /// The identifiers of its client's own QoS 2 messages stored and not released.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    incoming: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Sub {
    filter: String,
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
    id: Option<u32>,
}

impl Record {
    /// Whether the session outlived its expiry (its owner died before ending it).
    fn expired(&self, now: u64) -> bool {
        match (self.offline_since_ms, self.expiry) {
            (_, u32::MAX) | (None, _) => false,
            (Some(since), e) => since + e as u64 * 1000 <= now,
        }
    }

    fn subscriptions(&self) -> Vec<StoredSubscription> {
        self.subs
            .iter()
            .map(|s| StoredSubscription {
                filter: s.filter.clone(),
                options: SubscriptionOptions {
                    qos: QoS::from_u8(s.qos).unwrap_or(QoS::AtMostOnce),
                    no_local: s.no_local,
                    retain_as_published: s.retain_as_published,
                    retain_handling: RetainHandling::from_u8(s.retain_handling).unwrap_or_default(),
                },
                subscription_id: s.id,
            })
            .collect()
    }
}

fn subs_of(snapshot: &SessionSnapshot) -> Vec<Sub> {
    snapshot
        .subscriptions
        .iter()
        .map(|s| Sub {
            filter: s.filter.clone(),
            qos: s.options.qos.as_u8(),
            no_local: s.options.no_local,
            retain_as_published: s.options.retain_as_published,
            retain_handling: s.options.retain_handling.as_u8(),
            id: s.subscription_id,
        })
        .collect()
}

pub(crate) fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the QoS 1/2 consumer of this node has done, for the floor and for replays.
#[derive(Default)]
pub(crate) struct Position {
    /// Its last batch left nothing pending.
    pub caught_up: AtomicBool,
    /// Publication time (ms) of the last message it routed.
    pub read_ms: AtomicU64,
    /// The generation of filters the consumer reads with (see `interest.rs`).
    pub applied: watch::Sender<u64>,
}

impl Position {
    /// Every QoS 1/2 message published before this time (ms) has been routed here.
    fn routed_up_to(&self, now: u64) -> u64 {
        if self.caught_up.load(Ordering::Relaxed) {
            now
        } else {
            self.read_ms.load(Ordering::Relaxed).min(now)
        }
    }
}

/// A record this node owns: the revision it last wrote.
/// What a session moved here is replayed from: its record's floor, or, when its owner
/// handed it over, the owner's origin and cut (only what the owner did not route to it).
struct Replay {
    record: Record,
    cut: Option<(u64, Cut)>,
}

/// What a session moving here brings besides its record.
enum Moved {
    /// Its live owner's (`handoff.rs`): replayed after the owner's origin and cut.
    HandedOver(u64, Carried),
    /// From its last record (`ledger.rs`): replayed from the record's floor.
    FromRecord(Carried),
}

struct Owned {
    revision: u64,
    record: Record,
    /// Messages from the previous owner are still being replayed: the floor stays.
    replaying: bool,
}

pub(crate) struct Sessions {
    store: Store,
    node: String,
    broker: PeerHandle,
    nats: Arc<Nats>,
    owned: Mutex<HashMap<String, Owned>>,
    /// Held by the record writer for each write (shared by writes of different sessions)
    /// and by the handoff responder while it lets a session go (alone). Without it, a write
    /// begun before a handoff could put the session back in `owned` after the responder
    /// forgot it, and the write that follows the session's release here would then delete
    /// the record the new owner is about to claim (which then opens the session as new:
    /// Session Present 0).
    turn: tokio::sync::RwLock<()>,
    /// Claimed here, waiting for `resumed`: the floor and filters to replay from.
    replays: Mutex<HashMap<String, Replay>>,
    /// The QoS 2 entries of the sessions here, for their records (`ledger.rs`).
    ledgers: Mutex<HashMap<String, Ledger>>,
    /// This process's origin (`Frame::origin`).
    origin: u64,
    changed: mpsc::UnboundedSender<String>,
    position: Arc<Position>,
    /// The interest task, asked for the filter generation that includes every change so far.
    interest: mpsc::UnboundedSender<Interest>,
}

impl Sessions {
    /// Opens the bucket and starts the handoff responder and the record writer. Blocking.
    pub(crate) fn start(
        nats: Arc<Nats>,
        broker: PeerHandle,
        position: Arc<Position>,
        interest: mpsc::UnboundedSender<Interest>,
        origin: u64,
    ) -> Result<Arc<Sessions>, ClusterError> {
        let store = crate::kv::open_bucket(&nats, &nats.name("sessions"))?;
        let (changed, changed_rx) = mpsc::unbounded_channel();
        let sessions = Arc::new(Sessions {
            store,
            node: nats.config.node.clone(),
            broker,
            nats: nats.clone(),
            owned: Mutex::default(),
            turn: tokio::sync::RwLock::new(()),
            replays: Mutex::default(),
            ledgers: Mutex::default(),
            origin,
            changed,
            position,
            interest,
        });
        nats.spawn(sessions.clone().respond_to_handoffs());
        nats.spawn(sessions.clone().write_records(changed_rx));
        Ok(sessions)
    }

    pub(crate) fn changed(&self, client_id: &str) {
        let _ = self.changed.send(client_id.to_string());
    }

    /// `Peers::claim`, on the NATS runtime; `None` past `CLAIM_WITHIN`.
    pub(crate) async fn claim(
        self: Arc<Self>,
        client_id: String,
        clean_start: bool,
        expiry: u32,
    ) -> Option<MovedSession> {
        let (tx, rx) = oneshot::channel();
        let this = self.clone();
        let id = client_id.clone();
        self.nats.spawn(async move {
            let got = tokio::time::timeout(CLAIM_WITHIN, this.claim_here(&id, clean_start, expiry));
            let _ = tx.send(got.await);
        });
        match rx.await {
            Ok(Ok(Ok(moved))) => moved,
            Ok(Ok(Err(e))) => {
                warn!(client_id, error = %e, "cannot claim the session in the cluster; opened here alone");
                None
            }
            _ => {
                warn!(
                    client_id,
                    "claiming the session in the cluster took too long; opened here alone"
                );
                None
            }
        }
    }

    async fn claim_here(
        &self,
        client_id: &str,
        clean_start: bool,
        expiry: u32,
    ) -> Result<Option<MovedSession>, String> {
        if clean_start && expiry == 0 {
            // Nothing to keep; a session elsewhere is ended by the takeover announcement.
            return Ok(None);
        }
        let key = escape(client_id);
        if self.claim_in_one_write(client_id, &key, expiry).await {
            debug!(
                client_id,
                "session claimed in one write (here already, or new)"
            );
            return Ok(None);
        }
        // The owner's answer, kept across tries: it lets the session go once.
        let mut answered: Option<Option<Answer>> = None;
        // Without what it carried, what its last record says of its QoS 2 messages: read once.
        let mut from_record: Option<(Carried, Vec<Qos2>)> = None;
        for _ in 0..3 {
            let now = now_ms();
            let entry = self.store.entry(&key).await.map_err(|e| e.to_string())?;
            let current = entry.as_ref().and_then(|e| {
                let r: Record = serde_json::from_slice(&e.value).ok()?;
                (e.operation == Operation::Put && !r.expired(now)).then_some((e.revision, r))
            });
            let fresh = Record {
                owner: self.node.clone(),
                expiry,
                floor_ms: now.saturating_sub(MARGIN),
                ..Record::default()
            };
            let (record, moved) = match current {
                Some((_, r)) if r.owner == self.node => {
                    // Ours already (the session is here, or was never written elsewhere).
                    let mut r = r;
                    r.expiry = expiry;
                    r.offline_since_ms = None;
                    (r, None)
                }
                Some((_, r)) if clean_start => {
                    self.handoff(&r.owner, client_id, true).await;
                    (fresh, None)
                }
                Some((_, r)) => {
                    let answer = match &answered {
                        Some(a) => a.clone(),
                        None => {
                            let a = self.handoff(&r.owner, client_id, false).await;
                            answered = Some(a.clone());
                            a
                        }
                    };
                    let (last, handed) = match answer {
                        Some(a) => (a.record, a.carried.map(|c| (a.origin, c))),
                        None => (r, None),
                    };
                    let mut moved = Record {
                        owner: self.node.clone(),
                        expiry,
                        offline_since_ms: None,
                        ..last
                    };
                    let carried = match handed {
                        Some((origin, c)) => Moved::HandedOver(origin, c),
                        None => {
                            if from_record.is_none() {
                                from_record = Some(self.carried_from_record(&moved).await);
                            }
                            let (c, entries) = from_record.clone().unwrap_or_default();
                            moved.qos2 = entries;
                            Moved::FromRecord(c)
                        }
                    };
                    (moved.clone(), Some((moved, carried)))
                }
                None => (fresh, None),
            };
            let value = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
            let written = match entry.as_ref() {
                Some(e) => self.store.update(&key, value, e.revision).await.ok(),
                None => self.store.create(&key, value).await.ok(),
            };
            let Some(revision) = written else {
                debug!(
                    client_id,
                    "the session's record changed while claiming it; reading again"
                );
                continue; // another node wrote in between: read again
            };
            debug!(
                client_id,
                revision,
                read = entry.as_ref().map(|e| e.revision),
                moved = moved.is_some(),
                "session claimed"
            );
            self.set_qos2(client_id, &record);
            self.owned.lock().insert(
                client_id.to_string(),
                Owned {
                    revision,
                    record: record.clone(),
                    replaying: moved.is_some(),
                },
            );
            return Ok(moved.map(|(m, carried)| {
                let (cut, carried) = match carried {
                    Moved::HandedOver(origin, c) => (Some((origin, c.cut)), c),
                    Moved::FromRecord(c) => (None, c),
                };
                let session = MovedSession {
                    expiry_interval: expiry,
                    subscriptions: m.subscriptions(),
                    carried: Some(carried),
                };
                self.replays
                    .lock()
                    .insert(client_id.to_string(), Replay { record: m, cut });
                session
            }));
        }
        Err("the session's record kept changing".into())
    }

    /// The claim in one KV round trip, when nothing moved: the record this node wrote last is
    /// updated at its revision (the session is here, or its client comes back here), or, with
    /// none known, a record is created (a new client). False when that write lost (another
    /// node wrote, or a record exists): the caller reads the record and goes the long way.
    async fn claim_in_one_write(&self, client_id: &str, key: &str, expiry: u32) -> bool {
        let known = self
            .owned
            .lock()
            .get(client_id)
            .map(|o| (o.revision, o.record.clone()));
        let (record, written) = match known {
            Some((revision, mut r)) => {
                r.expiry = expiry;
                r.offline_since_ms = None;
                let value = Bytes::from(serde_json::to_vec(&r).unwrap_or_default());
                let written = self.store.update(key, value, revision).await.ok();
                (r, written)
            }
            None => {
                let r = Record {
                    owner: self.node.clone(),
                    expiry,
                    floor_ms: now_ms().saturating_sub(MARGIN),
                    ..Record::default()
                };
                let value = Bytes::from(serde_json::to_vec(&r).unwrap_or_default());
                let written = self.store.create(key, value).await.ok();
                (r, written)
            }
        };
        let Some(revision) = written else {
            return false;
        };
        self.set_qos2(client_id, &record);
        self.owned.lock().insert(
            client_id.to_string(),
            Owned {
                revision,
                record,
                replaying: false,
            },
        );
        true
    }

    /// The node whose client is connected to `client_id`'s session now, as its record says.
    pub(crate) async fn online_owner(&self, client_id: &str) -> Option<String> {
        let entry = self.store.entry(escape(client_id)).await.ok()??;
        let r: Record = serde_json::from_slice(&entry.value).ok()?;
        (entry.operation == Operation::Put && r.offline_since_ms.is_none()).then_some(r.owner)
    }

    /// Ends what the sessions of dead nodes (name → last heartbeat, ms) say: a session still
    /// marked online lost its connection at its node's last heartbeat, and its expiry counts
    /// from then; one whose expiry has passed is deleted. Compare-and-set: a session taken
    /// meanwhile is left to its new owner.
    pub(crate) async fn end_orphaned(&self, dead: &HashMap<String, u64>) -> Result<(), String> {
        if dead.is_empty() {
            return Ok(());
        }
        let bucket = self.nats.name("sessions");
        let now = now_ms();
        let (mut offline, mut ended) = (0, 0);
        for r in crate::scan::scan(&self.nats.jetstream, &bucket, "").await? {
            let Ok(mut record) = serde_json::from_slice::<Record>(&r.value) else {
                continue;
            };
            let Some(&last_seen) = dead.get(&record.owner) else {
                continue;
            };
            if record.offline_since_ms.is_none() {
                record.offline_since_ms = Some(last_seen);
            }
            if record.expired(now) {
                if self
                    .store
                    .delete_expect_revision(&r.key, Some(r.revision))
                    .await
                    .is_ok()
                {
                    ended += 1;
                }
            } else if let Ok(value) = serde_json::to_vec(&record)
                && r.value != value
                && self
                    .store
                    .update(&r.key, value.into(), r.revision)
                    .await
                    .is_ok()
            {
                offline += 1;
            }
        }
        if offline + ended > 0 {
            info!(
                offline,
                ended,
                "sessions of nodes that are down: marked offline, or ended past their expiry"
            );
        }
        Ok(())
    }

    /// The record for a session as it is here now.
    /// `inherited`: the previous owner's floor, which stands until its messages are all
    /// queued here (the replay).
    fn record_of(&self, client_id: &str, s: &SessionSnapshot, inherited: Option<u64>) -> Record {
        let now = now_ms();
        let floor_ms = match (inherited, s.oldest_unacked_ms) {
            (Some(floor), _) => floor,
            (None, Some(oldest)) => oldest
                .min(self.position.routed_up_to(now))
                .saturating_sub(MARGIN),
            (None, None) => self.position.routed_up_to(now).saturating_sub(MARGIN),
        };
        let (qos2, incoming) = self.qos2_of(client_id, floor_ms);
        Record {
            owner: self.node.clone(),
            expiry: s.expiry_interval,
            subs: subs_of(s),
            floor_ms,
            offline_since_ms: s.offline_since.map(ms),
            qos2,
            incoming,
        }
    }
}

//! The token service's store on JetStream KV: `NatsKv` implements `tessera_auth::kv::KvStore`
//! with one bucket per record kind.
//!
//! - A value is stored as its expiry (8 bytes, milliseconds since the epoch, 0 = none) and
//!   the record; an entry past its expiry reads as absent, and `purge_expired` removes it.
//! - Revisions are the KV revisions (the bucket stream's sequence), so compare-and-set is
//!   JetStream's own: `update` and `delete` send the expected last sequence and the server
//!   refuses a stale one.
//! - Changes come from a watch on every bucket (any node's writes, after the replicated ack).
//! - Deleting an access token first announces it on `<prefix>.revoked` (core NATS): every
//!   node ends the sessions using it at once and treats the key as gone for
//!   `TOMBSTONE_FOR`, even if the durable delete waits on a JetStream leader election.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, Store, UpdateErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tessera_auth::clock::now_ms;
use tessera_auth::kv::{Bucket, Change, ChangeKind, Entry, KvError, KvResult, KvStore};
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::keys::{escape, unescape};
use crate::{ClusterError, Nats};

/// How long a key announced revoked on the fast path reads as absent without its durable
/// delete (a JetStream election takes seconds, not minutes).
const TOMBSTONE_FOR: Duration = Duration::from_secs(600);

pub struct NatsKv {
    nats: Arc<Nats>,
    buckets: HashMap<Bucket, Store>,
    /// The bucket of the nodes' heartbeats (`nodes.rs`), where the readiness probe writes too.
    nodes: Store,
    changes: broadcast::Sender<Change>,
    /// Keys revoked on the fast path, until their durable delete is surely in.
    tombstones: Arc<Mutex<HashMap<(Bucket, String), Instant>>>,
    revoked_subject: String,
}

fn failed(e: impl std::fmt::Display) -> KvError {
    KvError::Storage(format!("NATS: {e}"))
}

fn lost(e: ClusterError) -> KvError {
    KvError::Storage(e.to_string())
}

fn encode(expires_at_ms: Option<u64>, value: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&expires_at_ms.unwrap_or(0).to_be_bytes());
    v.extend_from_slice(value);
    Bytes::from(v)
}

fn decode(e: &kv::Entry) -> Option<Entry> {
    if e.operation != Operation::Put {
        return None;
    }
    decode_value(&e.value, e.revision)
}

/// A stored value: its expiry (ms since the epoch, 0 for none, 8 bytes) then the record.
fn decode_value(value: &[u8], revision: u64) -> Option<Entry> {
    if value.len() < 8 {
        return None;
    }
    let exp = u64::from_be_bytes(value[..8].try_into().ok()?);
    Some(Entry {
        value: value[8..].to_vec(),
        revision,
        expires_at_ms: (exp != 0).then_some(exp),
    })
}

fn live(e: &Entry, now: u64) -> bool {
    e.expires_at_ms.is_none_or(|t| t > now)
}

fn bucket_of(name: &str) -> Option<Bucket> {
    Bucket::ALL.into_iter().find(|b| b.name() == name)
}

/// Opens the bucket `name` (creating it with `cluster.replicas` replicas on first start), once
/// its stream answers. Blocking.
pub(crate) fn open_bucket(nats: &Nats, name: &str) -> Result<Store, ClusterError> {
    let replicas = nats.config.replicas;
    // Nodes starting together race to create a bucket: the loser finds it next time.
    // A JetStream cluster just formed refuses placement until its peers are current.
    let mut last = String::new();
    let mut store = None;
    for _ in 0..50 {
        let js = nats.jetstream.clone();
        let n = name.to_string();
        let got = nats.wait(async move {
            match js.get_key_value(n.clone()).await {
                Ok(s) => Ok(s),
                Err(_) => js
                    .create_key_value(kv::Config {
                        bucket: n.clone(),
                        history: 1,
                        num_replicas: replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string()),
            }
        });
        match got {
            Ok(Ok(s)) => {
                store = Some(s);
                break;
            }
            Ok(Err(e)) => last = e,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let what = || format!("KV bucket {name}");
    let store = store.ok_or_else(|| ClusterError::Unavailable {
        what: what(),
        reason: last,
    })?;
    // A bucket just created answers once its stream has elected a leader.
    for _ in 0..50 {
        let s = store.clone();
        if let Ok(Ok(_)) = nats.wait(async move { s.entry("readiness").await }) {
            return Ok(store);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(ClusterError::Unavailable {
        what: what(),
        reason: "its stream has no leader (is JetStream's quorum up?)".into(),
    })
}

impl NatsKv {
    /// Opens (creating on first start) every bucket with `cluster.replicas` replicas, and
    /// starts following their changes and the revocation subject.
    pub fn open(nats: Arc<Nats>) -> Result<Arc<NatsKv>, ClusterError> {
        let mut names: Vec<(Option<Bucket>, String)> = Bucket::ALL
            .into_iter()
            .map(|b| (Some(b), nats.name(b.name())))
            .collect();
        names.push((None, nats.name("nodes")));
        let mut stores = Vec::new();
        for (b, name) in names {
            stores.push((b, open_bucket(&nats, &name)?));
        }
        let mut buckets = HashMap::new();
        let mut nodes = None;
        for (b, s) in stores {
            match b {
                Some(b) => {
                    buckets.insert(b, s);
                }
                None => nodes = Some(s),
            }
        }
        let nodes = nodes.ok_or_else(|| ClusterError::Unavailable {
            what: "KV bucket nodes".into(),
            reason: "not opened".into(),
        })?;
        let (changes, _) = broadcast::channel(4096);
        let kv = Arc::new(NatsKv {
            revoked_subject: nats.subject("revoked"),
            nats,
            buckets,
            nodes,
            changes,
            tombstones: Arc::default(),
        });
        kv.follow()?;
        Ok(kv)
    }

    pub fn nats(&self) -> &Arc<Nats> {
        &self.nats
    }

    fn store(&self, b: Bucket) -> KvResult<Store> {
        self.buckets
            .get(&b)
            .cloned()
            .ok_or_else(|| KvError::Storage(format!("no bucket for {}", b.name())))
    }

    fn tombstoned(&self, b: Bucket, key: &str) -> bool {
        let mut t = self.tombstones.lock();
        t.retain(|_, at| at.elapsed() < TOMBSTONE_FOR);
        t.contains_key(&(b, key.to_string()))
    }

    /// The live entry of `key` (escaped), as read by NATS.
    fn read(&self, b: Bucket, key: &str) -> KvResult<Option<Entry>> {
        let store = self.store(b)?;
        let k = escape(key);
        let got = self
            .nats
            .wait(async move { store.entry(k).await })
            .map_err(lost)?
            .map_err(failed)?;
        Ok(got.as_ref().and_then(decode))
    }

    /// Every entry of `bucket` whose escaped key starts with `prefix`, read in one request.
    /// Every live key of `bucket` starting with `prefix` (escaped), read in batches
    /// (`scan.rs`), with its stored value.
    fn entries(&self, bucket: Bucket, prefix: String) -> KvResult<Vec<(String, Entry)>> {
        let name = self.store(bucket)?.name.clone();
        let js = self.nats.jetstream.clone();
        let scanned = self
            .nats
            .wait(async move { crate::scan::scan(&js, &name, &prefix).await })
            .map_err(lost)?
            .map_err(failed)?;
        Ok(scanned
            .into_iter()
            .filter_map(|s| Some((s.key, decode_value(&s.value, s.revision)?)))
            .collect())
    }

    /// Follows every bucket's changes and the fast revocation subject, into `changes`.
    fn follow(self: &Arc<Self>) -> Result<(), ClusterError> {
        for (b, store) in &self.buckets {
            let (b, store, tx) = (*b, store.clone(), self.changes.clone());
            self.nats.spawn(async move {
                let mut failing = false;
                loop {
                    let mut watch = match store.watch_all().await {
                        Ok(w) => w,
                        Err(e) => {
                            // Once per outage, not once a second.
                            if !failing {
                                warn!(bucket = b.name(), error = %e, "cannot watch a bucket; retrying every second");
                            }
                            failing = true;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    };
                    if std::mem::take(&mut failing) {
                        info!(bucket = b.name(), "watching the bucket again");
                    }
                    while let Some(item) = watch.next().await {
                        let Ok(e) = item else { break };
                        let Some(key) = unescape(&e.key) else {
                            continue;
                        };
                        let kind = match e.operation {
                            Operation::Put => ChangeKind::Put,
                            Operation::Delete | Operation::Purge => ChangeKind::Deleted,
                        };
                        let _ = tx.send(Change {
                            bucket: b,
                            key,
                            kind,
                            revision: e.revision,
                        });
                    }
                    // The watch ended (a lost connection, a leader change): watch again.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
        let client = self.nats.client.clone();
        let subject = self.revoked_subject.clone();
        let sub = self
            .nats
            .wait(async move { client.subscribe(subject).await })?
            .map_err(|e| ClusterError::Unavailable {
                what: "the revocation subject".into(),
                reason: e.to_string(),
            })?;
        let (tx, tombstones) = (self.changes.clone(), self.tombstones.clone());
        self.nats.spawn(async move {
            let mut sub = sub;
            while let Some(m) = sub.next().await {
                let text = String::from_utf8_lossy(&m.payload);
                let Some((bucket, key)) = text.split_once('\n') else {
                    continue;
                };
                let Some(b) = bucket_of(bucket) else { continue };
                tombstones
                    .lock()
                    .insert((b, key.to_string()), Instant::now());
                let _ = tx.send(Change {
                    bucket: b,
                    key: key.to_string(),
                    kind: ChangeKind::Deleted,
                    revision: 0,
                });
            }
        });
        Ok(())
    }

    /// Announces a revocation on the fast path (no reply awaited: at most once, in about a
    /// millisecond, whatever JetStream is doing).
    fn announce(&self, b: Bucket, key: &str) {
        let client = self.nats.client.clone();
        let subject = self.revoked_subject.clone();
        let payload = Bytes::from(format!("{}\n{key}", b.name()));
        let sent = self.nats.wait(async move {
            client
                .publish(subject, payload)
                .await
                .map_err(std::io::Error::other)?;
            client.flush().await.map_err(std::io::Error::other)
        });
        if !matches!(sent, Ok(Ok(()))) {
            warn!(
                "the revocation could not be announced on the fast path; the durable delete still ends the sessions"
            );
        }
    }
}

impl KvStore for NatsKv {
    fn get(&self, bucket: Bucket, key: &str) -> KvResult<Option<Entry>> {
        if self.tombstoned(bucket, key) {
            return Ok(None);
        }
        let now = now_ms();
        Ok(self.read(bucket, key)?.filter(|e| live(e, now)))
    }

    fn create(
        &self,
        bucket: Bucket,
        key: &str,
        value: &[u8],
        expires_at_ms: Option<u64>,
    ) -> KvResult<u64> {
        let store = self.store(bucket)?;
        let (k, v) = (escape(key), encode(expires_at_ms, value));
        let created = self
            .nats
            .wait(async move { store.create(k, v).await })
            .map_err(lost)?;
        match created {
            Ok(rev) => Ok(rev),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                // Present, but perhaps expired: then it may be replaced, at its revision.
                match self.read(bucket, key)? {
                    Some(old) if !live(&old, now_ms()) => {
                        self.update(bucket, key, value, expires_at_ms, old.revision)
                    }
                    _ => Err(KvError::Conflict),
                }
            }
            Err(e) => Err(failed(e)),
        }
    }

    fn update(
        &self,
        bucket: Bucket,
        key: &str,
        value: &[u8],
        expires_at_ms: Option<u64>,
        expected: u64,
    ) -> KvResult<u64> {
        let store = self.store(bucket)?;
        let (k, v) = (escape(key), encode(expires_at_ms, value));
        let updated = self
            .nats
            .wait(async move { store.update(k, v, expected).await })
            .map_err(lost)?;
        match updated {
            Ok(rev) => Ok(rev),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Err(KvError::Conflict),
            Err(e) => Err(failed(e)),
        }
    }

    fn put(
        &self,
        bucket: Bucket,
        key: &str,
        value: &[u8],
        expires_at_ms: Option<u64>,
    ) -> KvResult<u64> {
        let store = self.store(bucket)?;
        let (k, v) = (escape(key), encode(expires_at_ms, value));
        self.nats
            .wait(async move { store.put(k, v).await })
            .map_err(lost)?
            .map_err(failed)
    }

    fn delete(&self, bucket: Bucket, key: &str, expected: Option<u64>) -> KvResult<bool> {
        // Before any JetStream request, which may wait out a leader election: an unconditional
        // delete of an access token is a revocation (announcing a key that does not exist
        // costs nothing). A conditional one is a compare-and-set, announced once it is done.
        if bucket == Bucket::AccessTokens && expected.is_none() {
            self.announce(bucket, key);
        }
        let Some(current) = self.read(bucket, key)? else {
            return Ok(false);
        };
        if expected.is_some_and(|want| want != current.revision) {
            return Err(KvError::Conflict);
        }
        let store = self.store(bucket)?;
        let k = escape(key);
        let revision = current.revision;
        let deleted = self
            .nats
            .wait(async move { store.delete_expect_revision(k, Some(revision)).await })
            .map_err(lost)?;
        match deleted {
            Ok(()) => {
                if bucket == Bucket::AccessTokens && expected.is_some() {
                    self.announce(bucket, key);
                }
                Ok(true)
            }
            // Someone changed it in between: compare-and-set says so.
            Err(_) if self.read(bucket, key)?.map(|e| e.revision) != Some(revision) => {
                Err(KvError::Conflict)
            }
            Err(e) => Err(failed(e)),
        }
    }

    fn scan(&self, bucket: Bucket, prefix: &str) -> KvResult<Vec<(String, Entry)>> {
        let now = now_ms();
        let mut out: Vec<(String, Entry)> = self
            .entries(bucket, escape(prefix))?
            .into_iter()
            .filter_map(|(k, e)| Some((unescape(&k)?, e)))
            .filter(|(k, e)| live(e, now) && !self.tombstoned(bucket, k))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn purge_expired(&self, now: u64) -> KvResult<usize> {
        let mut n = 0;
        for b in Bucket::ALL {
            let expired: Vec<(String, u64)> = self
                .entries(b, String::new())?
                .into_iter()
                .filter(|(_, e)| !live(e, now))
                .map(|(k, e)| (k, e.revision))
                .collect();
            // A few hundred per request, each request within the deadline.
            for chunk in expired.chunks(256) {
                let (store, chunk) = (self.store(b)?, chunk.to_vec());
                n += self
                    .nats
                    .wait(async move {
                        let mut purged = 0;
                        for (k, rev) in chunk {
                            if store.purge_expect_revision(k, Some(rev)).await.is_ok() {
                                purged += 1;
                            }
                        }
                        purged
                    })
                    .map_err(lost)?;
            }
        }
        if n > 0 {
            info!(records = n, "purged expired records from NATS");
        }
        Ok(n)
    }

    fn watch(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Readiness of the token store: a replicated write (it fails while JetStream cannot
    /// write), of this node's probe key beside the heartbeats (`nodes::probe_key`).
    fn probe(&self) -> KvResult<()> {
        let store = self.nodes.clone();
        let key = crate::nodes::probe_key(&self.nats.config.node);
        let value = Bytes::from(now_ms().to_string());
        self.nats
            .wait(async move { store.put(key, value).await })
            .map_err(lost)?
            .map(|_| ())
            .map_err(failed)
    }
}

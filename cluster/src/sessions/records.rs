//! The record writer: the records of sessions that changed are written as they change
//! (`Sessions::changed`), and at each sweep those a message was queued to (their floor moves
//! on); an idle session's record is left as it is. At start one scan of the bucket adopts
//! the records this node owns (see `sessions.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_nats::jetstream::kv::Operation;
use bytes::Bytes;
use futures_util::StreamExt;
use tessera_auth::clock::now_ms;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{Owned, Record, SWEEP_EVERY, Sessions};

/// Records written at the same time (distinct sessions).
const WRITES_AT_ONCE: usize = 64;
use crate::keys::escape;

impl Sessions {
    /// Adopts the records at start (`adopt`), then writes the records of sessions that
    /// changed, and each sweep those whose floor moved on.
    pub(super) async fn write_records(
        self: Arc<Self>,
        mut changed: mpsc::UnboundedReceiver<String>,
    ) {
        if let Err(e) = self.adopt().await {
            warn!(error = %e, "reading the session records at start; writing each one instead");
            for id in self.broker.persistent_sessions() {
                let _ = self.write(&id).await;
            }
        }
        let mut sweep =
            tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_EVERY, SWEEP_EVERY);
        loop {
            let mut due: HashSet<String> = HashSet::new();
            tokio::select! {
                id = changed.recv() => {
                    let Some(id) = id else { return };
                    due.insert(id);
                    while let Ok(id) = changed.try_recv() {
                        due.insert(id);
                    }
                }
                _ = sweep.tick() => {
                    // (A replay's end is a change of its own: `replay.rs` reports it.)
                    due.extend(self.broker.take_records_behind().iter().map(|s| s.to_string()));
                }
            }
            // Each session's write is one KV round trip: many at once, or a QoS 2 message to
            // thousands of persistent sessions would leave one by one.
            let this = &*self;
            futures_util::stream::iter(due)
                .for_each_concurrent(WRITES_AT_ONCE, |id| async move {
                    if let Err(e) = this.write(&id).await {
                        debug!(client_id = id, error = %e, "writing a session record");
                    }
                })
                .await;
        }
    }

    /// Reads every record in one scan: the ones of sessions here that this node owns become
    /// `owned` (written again only if the session differs from them in more than its floor),
    /// a session whose record names another live owner is dropped here, and one without a
    /// record gets one.
    async fn adopt(&self) -> Result<(), String> {
        let bucket = self.nats.name("sessions");
        let mut records: HashMap<String, (u64, Record)> = HashMap::new();
        for r in crate::scan::scan(&self.nats.jetstream, &bucket, "").await? {
            if let Ok(record) = serde_json::from_slice::<Record>(&r.value) {
                records.insert(r.key, (r.revision, record));
            }
        }
        let now = now_ms();
        let (mut adopted, mut dropped, mut written) = (0, 0, 0);
        for id in self.broker.persistent_sessions() {
            match records.remove(&escape(&id)) {
                Some((_, r)) if r.owner != self.node && !r.expired(now) => {
                    info!(
                        client_id = %id,
                        "the session moved to another node while this one was away; dropped here"
                    );
                    self.broker.release_session(&id, false);
                    dropped += 1;
                }
                Some((revision, record)) if record.owner == self.node => {
                    self.set_qos2(&id, &record);
                    // With the record's floor (`inherited`): only a change beyond it rewrites.
                    let current = self
                        .broker
                        .session_snapshot(&id)
                        .map(|s| self.record_of(&id, &s, Some(record.floor_ms)));
                    let same = current.as_ref() == Some(&record);
                    self.owned.lock().insert(
                        id.to_string(),
                        Owned {
                            revision,
                            record,
                            replaying: false,
                        },
                    );
                    adopted += 1;
                    if !same {
                        let _ = self.write(&id).await;
                        written += 1;
                    }
                }
                _ => {
                    let _ = self.write(&id).await;
                    written += 1;
                }
            }
        }
        info!(adopted, dropped, written, "session records read at start");
        Ok(())
    }

    async fn write(&self, client_id: &str) -> Result<(), String> {
        let _turn = self.turn.read().await;
        // The packets waiting for this record go once it is written (or not: see `Settle`).
        let _settle = self.take_tickets(client_id);
        let key = escape(client_id);
        let snapshot = self.broker.session_snapshot(client_id);
        // Read, not taken out: a replay ending meanwhile clears `replaying` in the map.
        let owned = self
            .owned
            .lock()
            .get(client_id)
            .map(|o| (o.revision, o.record.clone(), o.replaying));
        let Some(s) = snapshot else {
            if let Some((revision, _, _)) = owned {
                // Ended here: the record goes, unless another node took it meanwhile.
                debug!(
                    client_id,
                    revision, "session ended here; deleting its record"
                );
                self.owned.lock().remove(client_id);
                let _ = self
                    .store
                    .delete_expect_revision(&key, Some(revision))
                    .await;
            }
            self.forget_qos2(client_id);
            return Ok(());
        };
        let (revision, inherited) = match &owned {
            Some((revision, record, replaying)) => {
                (*revision, replaying.then_some(record.floor_ms))
            }
            None => match self.store.entry(&key).await.map_err(|e| e.to_string())? {
                Some(e) if e.operation == Operation::Put => {
                    let r: Option<Record> = serde_json::from_slice(&e.value).ok();
                    if r.is_some_and(|r| r.owner != self.node && !r.expired(now_ms())) {
                        // Restored here, owned elsewhere now: it moved on.
                        info!(
                            client_id,
                            "the session moved to another node while this one was away; dropped here"
                        );
                        self.broker.release_session(client_id, false);
                        return Ok(());
                    }
                    (e.revision, None)
                }
                Some(e) => (e.revision, None),
                None => (0, None),
            },
        };
        let record = self.record_of(client_id, &s, inherited);
        if owned.is_some_and(|(_, r, _)| r == record) {
            return Ok(());
        }
        let value = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        match self.store.update(&key, value, revision).await {
            Ok(revision) => {
                debug!(client_id, revision, "session record written");
                let mut owned = self.owned.lock();
                let o = owned.entry(client_id.to_string()).or_insert(Owned {
                    revision,
                    record: record.clone(),
                    replaying: false,
                });
                o.revision = revision;
                o.record = record;
                Ok(())
            }
            Err(e) => {
                // Someone else wrote: if they own it now, the session is theirs.
                let entry = self.store.entry(&key).await.map_err(|e| e.to_string())?;
                let owner = entry
                    .and_then(|e| serde_json::from_slice::<Record>(&e.value).ok())
                    .map(|r| r.owner);
                if owner.is_some_and(|o| o != self.node) {
                    info!(
                        client_id,
                        "the session was taken over on another node; dropped here"
                    );
                    self.owned.lock().remove(client_id);
                    self.broker.release_session(client_id, false);
                }
                Err(e.to_string())
            }
        }
    }
}

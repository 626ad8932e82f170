//! The broker's durable state in a redb file (`broker.redb` in the data directory): the
//! broker's storage seam ([`tessera_broker::store::Store`]) on disk.
//!
//! One table per record kind; a session's records share the client id as the first part of
//! their keys, so ending a session is a range delete. Values are the broker's record encoding
//! (`tessera_broker::store::encoding`), so this file only decides where bytes go:
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `schema_version`, `last_alive` (ms since the epoch) | u64 |
//! | `retained` | topic | message |
//! | `messages` | message id | message |
//! | `sessions` | client id | session head |
//! | `subscriptions` | (client id, filter) | subscription |
//! | `entries` | (client id, seq) | queue entry |
//! | `incoming` | (client id, packet id) | () |
//!
//! Each [`Store::commit`] is one redb write transaction with `Durability::Immediate`: fsync
//! before it returns. The file is created with mode 0600 in a 0700 directory. After an I/O
//! error redb refuses every further operation until the file is opened again, so this store
//! drops the handle and reopens it at the next call (a full disk that got space back is used
//! again without a restart).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tessera_broker::store::encoding::{
    decode_entry, decode_head, decode_message, decode_subscription, encode_entry, encode_head,
    encode_message, encode_subscription,
};
use tessera_broker::store::{Batch, Change, Store, StoreError, StoredSession, StoredState};

/// Bumped when the layout changes; a newer file is refused.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const SUBSCRIPTIONS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("subscriptions");
const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entries");
const INCOMING: TableDefinition<(&str, u16), ()> = TableDefinition::new("incoming");

/// redb's page cache. Reads at start fill it; a broker's working set is in memory anyway.
const CACHE: usize = 64 << 20;

pub struct RedbBrokerStore {
    path: PathBuf,
    /// `None` after an I/O error, until reopened.
    db: Mutex<Option<Database>>,
}

fn failed(what: &str, e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Io(io) => {
            StoreError::from(std::io::Error::new(io.kind(), format!("{what}: {io}")))
        }
        other => StoreError::Failed(format!("{what}: {other}")),
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed(format!("{what}: {e}"))
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RedbBrokerStore {
    /// Opens (or creates) the store. Fails if another process holds it, or if it was written by
    /// a newer release.
    pub fn open(path: &Path) -> Result<RedbBrokerStore, StoreError> {
        let store = RedbBrokerStore {
            path: path.to_path_buf(),
            db: Mutex::new(None),
        };
        store.with_db(|_| Ok(()))?;
        Ok(store)
    }

    fn open_db(&self) -> Result<Database, StoreError> {
        let name = self.path.display().to_string();
        tessera_broker::files::private_file(&self.path)
            .map_err(|e| StoreError::from(std::io::Error::new(e.kind(), format!("{name}: {e}"))))?;
        let db = Database::builder()
            .set_cache_size(CACHE)
            .create(&self.path)
            .map_err(|e| failed(&format!("cannot open {name}"), e))?;
        let tx = db.begin_write().map_err(|e| failed(&name, e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| failed(&name, e))?;
            let version = meta
                .get("schema_version")
                .map_err(|e| failed(&name, e))?
                .map(|v| v.value());
            match version {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)
                        .map_err(|e| failed(&name, e))?;
                }
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(StoreError::Failed(format!(
                        "{name} has schema version {v}; this release reads up to \
                         {SCHEMA_VERSION} (it was written by a newer Tessera)"
                    )));
                }
                Some(_) => {}
            }
            tx.open_table(RETAINED).map_err(|e| failed(&name, e))?;
            tx.open_table(MESSAGES).map_err(|e| failed(&name, e))?;
            tx.open_table(SESSIONS).map_err(|e| failed(&name, e))?;
            tx.open_table(SUBSCRIPTIONS).map_err(|e| failed(&name, e))?;
            tx.open_table(ENTRIES).map_err(|e| failed(&name, e))?;
            tx.open_table(INCOMING).map_err(|e| failed(&name, e))?;
        }
        tx.commit().map_err(|e| failed(&name, e))?;
        Ok(db)
    }

    /// Runs `f` on the open database, reopening it first if an I/O error closed it; an I/O
    /// error in `f` closes it again.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.db.lock();
        if guard.is_none() {
            *guard = Some(self.open_db()?);
        }
        let db = guard.as_ref().expect("opened above");
        let result = f(db);
        if result.is_err() {
            // Whatever failed, a fresh handle re-reads the last committed state.
            *guard = None;
        }
        result
    }
}

impl Store for RedbBrokerStore {
    fn load(&self) -> Result<StoredState, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| failed("read", e))?;
            let mut state = StoredState::default();
            let meta = tx.open_table(META).map_err(|e| failed("meta", e))?;
            state.last_alive = meta
                .get("last_alive")
                .map_err(|e| failed("meta", e))?
                .map(|v| UNIX_EPOCH + Duration::from_millis(v.value()));
            let retained = tx.open_table(RETAINED).map_err(|e| failed("retained", e))?;
            for row in retained.iter().map_err(|e| failed("retained", e))? {
                let (k, v) = row.map_err(|e| failed("retained", e))?;
                let m = decode_message(v.value())
                    .map_err(|e| corrupt(&format!("retained {:?}", k.value()), e))?;
                state.retained.push(m);
            }
            let messages = tx.open_table(MESSAGES).map_err(|e| failed("messages", e))?;
            for row in messages.iter().map_err(|e| failed("messages", e))? {
                let (k, v) = row.map_err(|e| failed("messages", e))?;
                let m = decode_message(v.value())
                    .map_err(|e| corrupt(&format!("message {}", k.value()), e))?;
                state.messages.insert(k.value(), m);
            }
            let mut sessions: HashMap<String, StoredSession> = HashMap::new();
            let heads = tx.open_table(SESSIONS).map_err(|e| failed("sessions", e))?;
            for row in heads.iter().map_err(|e| failed("sessions", e))? {
                let (k, v) = row.map_err(|e| failed("sessions", e))?;
                let head = decode_head(v.value())
                    .map_err(|e| corrupt(&format!("session {:?}", k.value()), e))?;
                sessions.insert(
                    k.value().to_string(),
                    StoredSession {
                        head,
                        subscriptions: Vec::new(),
                        entries: Vec::new(),
                        incoming_qos2: Vec::new(),
                    },
                );
            }
            let subs = tx
                .open_table(SUBSCRIPTIONS)
                .map_err(|e| failed("subscriptions", e))?;
            for row in subs.iter().map_err(|e| failed("subscriptions", e))? {
                let (k, v) = row.map_err(|e| failed("subscriptions", e))?;
                let (client, filter) = k.value();
                let s = decode_subscription(v.value())
                    .map_err(|e| corrupt(&format!("subscription {filter:?} of {client:?}"), e))?;
                if let Some(session) = sessions.get_mut(client) {
                    session.subscriptions.push(s);
                }
            }
            // Entries come in key order: by client, then by sequence number.
            let entries = tx.open_table(ENTRIES).map_err(|e| failed("entries", e))?;
            for row in entries.iter().map_err(|e| failed("entries", e))? {
                let (k, v) = row.map_err(|e| failed("entries", e))?;
                let (client, seq) = k.value();
                let e = decode_entry(v.value())
                    .map_err(|e| corrupt(&format!("entry {seq} of {client:?}"), e))?;
                if let Some(session) = sessions.get_mut(client) {
                    session.entries.push(e);
                }
            }
            let incoming = tx.open_table(INCOMING).map_err(|e| failed("incoming", e))?;
            for row in incoming.iter().map_err(|e| failed("incoming", e))? {
                let (k, _) = row.map_err(|e| failed("incoming", e))?;
                let (client, pid) = k.value();
                if let Some(session) = sessions.get_mut(client) {
                    session.incoming_qos2.push(pid);
                }
            }
            state.sessions = sessions.into_values().collect();
            Ok(state)
        })
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        self.with_db(|db| {
            let tx = db.begin_write().map_err(|e| failed("write", e))?;
            {
                fn e(err: impl Into<redb::Error>) -> StoreError {
                    failed("write", err)
                }
                let mut meta = tx.open_table(META).map_err(e)?;
                let mut retained = tx.open_table(RETAINED).map_err(e)?;
                let mut messages = tx.open_table(MESSAGES).map_err(e)?;
                let mut sessions = tx.open_table(SESSIONS).map_err(e)?;
                let mut subs = tx.open_table(SUBSCRIPTIONS).map_err(e)?;
                let mut entries = tx.open_table(ENTRIES).map_err(e)?;
                let mut incoming = tx.open_table(INCOMING).map_err(e)?;
                for change in &batch.changes {
                    match change {
                        Change::Clear => {
                            retained.retain(|_, _| false).map_err(e)?;
                            messages.retain(|_, _| false).map_err(e)?;
                            sessions.retain(|_, _| false).map_err(e)?;
                            subs.retain(|_, _| false).map_err(e)?;
                            entries.retain(|_, _| false).map_err(e)?;
                            incoming.retain(|_, _| false).map_err(e)?;
                        }
                        Change::PutRetained(m) => {
                            retained
                                .insert(m.topic.as_str(), encode_message(m).as_slice())
                                .map_err(e)?;
                        }
                        Change::DeleteRetained(t) => {
                            retained.remove(t.as_str()).map_err(e)?;
                        }
                        Change::PutMessage(id, m) => {
                            messages
                                .insert(*id, encode_message(m).as_slice())
                                .map_err(e)?;
                        }
                        Change::DeleteMessage(id) => {
                            messages.remove(*id).map_err(e)?;
                        }
                        Change::PutSession(h) => {
                            sessions
                                .insert(h.client_id.as_str(), encode_head(h).as_slice())
                                .map_err(e)?;
                        }
                        Change::DeleteSession(c) => {
                            let c: &str = c;
                            sessions.remove(c).map_err(e)?;
                            let filters: Vec<String> = subs
                                .range((c, "")..)
                                .map_err(e)?
                                .map_while(|row| {
                                    let (k, _) = row.ok()?;
                                    let (client, filter) = k.value();
                                    (client == c).then(|| filter.to_string())
                                })
                                .collect();
                            for f in &filters {
                                subs.remove((c, f.as_str())).map_err(e)?;
                            }
                            entries
                                .retain_in((c, 0u64)..=(c, u64::MAX), |_, _| false)
                                .map_err(e)?;
                            incoming
                                .retain_in((c, 0u16)..=(c, u16::MAX), |_, _| false)
                                .map_err(e)?;
                        }
                        Change::PutSubscription(c, s) => {
                            subs.insert(
                                (&**c, s.filter.as_str()),
                                encode_subscription(s).as_slice(),
                            )
                            .map_err(e)?;
                        }
                        Change::DeleteSubscription(c, f) => {
                            subs.remove((&**c, f.as_str())).map_err(e)?;
                        }
                        Change::PutEntry(c, entry) => {
                            entries
                                .insert((&**c, entry.seq), encode_entry(entry).as_slice())
                                .map_err(e)?;
                        }
                        Change::SetEntryState(c, seq, state) => {
                            let current = entries
                                .get((&**c, *seq))
                                .map_err(e)?
                                .map(|v| decode_entry(v.value()));
                            if let Some(Ok(mut entry)) = current {
                                entry.state = *state;
                                entries
                                    .insert((&**c, *seq), encode_entry(&entry).as_slice())
                                    .map_err(e)?;
                            }
                        }
                        Change::DeleteEntry(c, seq) => {
                            entries.remove((&**c, *seq)).map_err(e)?;
                        }
                        Change::PutIncoming(c, pid) => {
                            incoming.insert((&**c, *pid), ()).map_err(e)?;
                        }
                        Change::DeleteIncoming(c, pid) => {
                            incoming.remove((&**c, *pid)).map_err(e)?;
                        }
                    }
                }
                if let Some(t) = batch.alive_at {
                    meta.insert("last_alive", millis(t)).map_err(e)?;
                }
            }
            tx.commit().map_err(|e| failed("commit", e))
        })
    }
}

/// What `tessera check-data` reports of a broker store.
#[derive(Debug, Default)]
pub struct Report {
    pub schema_version: u64,
    pub retained: usize,
    pub messages: usize,
    pub sessions: usize,
    pub subscriptions: usize,
    pub entries: usize,
    /// Entries whose message body is missing.
    pub dangling: usize,
    /// Message bodies no entry references (harmless; dropped at the next start).
    pub orphans: usize,
    pub last_alive: Option<SystemTime>,
}

/// Reads every record of the store at `path` (which must not be open elsewhere) and checks it
/// decodes and that every queue entry's message is there.
pub fn check(path: &Path) -> Result<Report, StoreError> {
    if !path.exists() {
        return Err(StoreError::Failed(format!(
            "{}: no such file",
            path.display()
        )));
    }
    let store = RedbBrokerStore::open(path)?;
    let state = store.load()?;
    let mut report = Report {
        schema_version: SCHEMA_VERSION,
        retained: state.retained.len(),
        messages: state.messages.len(),
        sessions: state.sessions.len(),
        last_alive: state.last_alive,
        ..Report::default()
    };
    let mut referenced = std::collections::HashSet::new();
    for s in &state.sessions {
        report.subscriptions += s.subscriptions.len();
        report.entries += s.entries.len();
        for e in &s.entries {
            referenced.insert(e.message_id);
            let released = matches!(e.state, tessera_broker::store::EntryState::Released(_));
            if !released && e.body.is_none() && !state.messages.contains_key(&e.message_id) {
                report.dangling += 1;
            }
        }
    }
    report.orphans = state
        .messages
        .keys()
        .filter(|id| !referenced.contains(id))
        .count();
    Ok(report)
}

#[cfg(test)]
mod tests;

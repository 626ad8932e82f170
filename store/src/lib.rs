//! The broker's durable state in a redb file (`broker.redb` in the data directory): the
//! broker's storage seam ([`tessera_broker::store::Store`]) on disk.
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `schema_version`, `last_alive` (ms since the epoch), `peers_routed` (a stream sequence) | u64 |
//! | `retained` | topic | message |
//! | `messages` | message id | message |
//! | `sessions` | client id | session head |
//! | `subscriptions` | (client id, filter) | subscription |
//! | `entries` | (client id, seq) | queue entry |
//! | `incoming` | (client id, packet id) | () |
//! | `log` | batch number since the last checkpoint | the batch's changes |
//!
//! Values are the broker's record encodings (`tessera_broker::store::encoding`), so this crate
//! only decides where bytes go.
//!
//! **Log and checkpoint.** A [`Store::commit`] is one redb write transaction with
//! `Durability::Immediate` (fsync before it returns) that appends the whole batch, encoded, as
//! one row of `log`: one insert instead of one B-tree update per change, which is most of a
//! commit's cost when a batch holds hundreds of queue entries. The store folds what it logged
//! into its net effect on the tables ([`logged`]), and about once a second (or once the log
//! holds [`LOG_BYTES`]) a checkpoint writes that effect to the tables and drops the log in one
//! transaction. Entries acknowledged within a second of being queued, most of them under load,
//! never reach the tables. At open, a log left by a crash is folded and checkpointed before
//! anything is read. Invariant: the state is the tables with the log's batches applied in
//! order; a checkpoint changes neither, since it swaps the two atomically.
//!
//! A batch that clears the store (a snapshot of `on_stop` durability) or is large goes to the
//! tables directly, with the checkpoint, rather than through the log.
//!
//! The file is created with mode 0600 in a 0700 directory. After an I/O error redb refuses
//! every further operation until the file is opened again, so this store drops the handle and
//! reopens it (which folds and checkpoints the log again) at the next call: a full disk that
//! got space back is used again without a restart.

mod logged;
mod tables;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use redb::{Database, ReadableDatabase, ReadableTable};
use tessera_broker::store::encoding::{decode_changes, encode_changes};
use tessera_broker::store::{Batch, Change, Store, StoreError, StoredState};
use tracing::{debug, warn};

use logged::Logged;
use tables::{LOG, META, Tables};

/// Bumped when the layout changes; a newer file is refused. 2 added the log; a file of
/// schema 1 (no log) is read as it is and marked 2 when opened.
pub const SCHEMA_VERSION: u64 = 2;

/// redb's page cache. Reads at start fill it; a broker's working set is in memory anyway.
const CACHE: usize = 64 << 20;
/// A checkpoint is due once the log holds this much...
pub const LOG_BYTES: usize = 16 << 20;
/// ...or is this old.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// A batch this large (a snapshot, a restore) goes to the tables directly.
const DIRECT_BYTES: usize = LOG_BYTES / 4;

pub struct RedbBrokerStore {
    path: PathBuf,
    /// `None` after an I/O error, until reopened.
    open: Mutex<Option<Open>>,
}

/// An open file and what its log holds.
struct Open {
    db: Database,
    logged: Logged,
    /// The number of the next log row (rows since the last checkpoint).
    next_row: u64,
    log_bytes: usize,
    /// When the first row since the last checkpoint was written.
    since: Option<Instant>,
    /// A checkpoint failed: reopen before the next use.
    broken: bool,
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
    /// Opens (or creates) the store, applying a log left by a crash. Fails if another process
    /// holds it, or if it was written by a newer release.
    pub fn open(path: &Path) -> Result<RedbBrokerStore, StoreError> {
        let store = RedbBrokerStore {
            path: path.to_path_buf(),
            open: Mutex::new(None),
        };
        store.with_open(|_| Ok(()))?;
        Ok(store)
    }

    fn open_db(&self) -> Result<Open, StoreError> {
        let name = self.path.display().to_string();
        tessera_broker::files::private_file(&self.path)
            .map_err(|e| StoreError::from(std::io::Error::new(e.kind(), format!("{name}: {e}"))))?;
        let db = Database::builder()
            .set_cache_size(CACHE)
            .create(&self.path)
            .map_err(|e| failed(&format!("cannot open {name}"), e))?;
        let tx = db.begin_write().map_err(|e| failed(&name, e))?;
        let mut logged = Logged::default();
        let mut rows = 0;
        {
            let mut meta = tx.open_table(META).map_err(|e| failed(&name, e))?;
            let version = meta
                .get("schema_version")
                .map_err(|e| failed(&name, e))?
                .map(|v| v.value());
            if let Some(v) = version
                && v > SCHEMA_VERSION
            {
                return Err(StoreError::Failed(format!(
                    "{name} has schema version {v}; this release reads up to \
                     {SCHEMA_VERSION} (it was written by a newer Tessera)"
                )));
            }
            if version != Some(SCHEMA_VERSION) {
                meta.insert("schema_version", SCHEMA_VERSION)
                    .map_err(|e| failed(&name, e))?;
            }
            // A crash left these batches committed but not checkpointed: fold them in order.
            let log = tx.open_table(LOG).map_err(|e| failed(&name, e))?;
            for row in log.iter().map_err(|e| failed(&name, e))? {
                let (k, v) = row.map_err(|e| failed(&name, e))?;
                let changes = decode_changes(v.value())
                    .map_err(|e| corrupt(&format!("{name}: log row {}", k.value()), e))?;
                for c in &changes {
                    logged.fold(c);
                }
                rows += 1;
            }
            let mut t = Tables::open(&tx)?;
            logged.write(&mut t)?;
        }
        tx.delete_table(LOG).map_err(|e| failed(&name, e))?;
        tx.commit().map_err(|e| failed(&name, e))?;
        if rows > 0 {
            debug!(rows, "store log applied at open");
        }
        Ok(Open {
            db,
            logged: Logged::default(),
            next_row: 0,
            log_bytes: 0,
            since: None,
            broken: false,
        })
    }

    /// Runs `f` on the open store, reopening it first if an I/O error closed it; an error in
    /// `f` closes it again.
    fn with_open<T>(
        &self,
        f: impl FnOnce(&mut Open) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.open.lock();
        if guard.is_none() {
            *guard = Some(self.open_db()?);
        }
        let open = guard.as_mut().expect("opened above");
        let result = f(open);
        if result.is_err() || open.broken {
            // Whatever failed, a fresh handle re-reads the last committed state.
            *guard = None;
        }
        result
    }
}

/// What a batch says besides its changes, in the `meta` table (in the batch's transaction).
fn write_meta(tx: &redb::WriteTransaction, batch: &Batch) -> Result<(), StoreError> {
    let values = [
        ("last_alive", batch.alive_at.map(millis)),
        ("peers_routed", batch.peers_routed),
    ];
    if values.iter().all(|(_, v)| v.is_none()) {
        return Ok(());
    }
    let mut meta = tx.open_table(META).map_err(|e| failed("write", e))?;
    for (key, value) in values {
        if let Some(v) = value {
            meta.insert(key, v).map_err(|e| failed("write", e))?;
        }
    }
    Ok(())
}

impl Open {
    /// Appends `batch` to the log as one row.
    fn log(&mut self, batch: &Batch, record: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| failed("write", e))?;
        {
            let mut log = tx.open_table(LOG).map_err(|e| failed("write", e))?;
            log.insert(self.next_row, record)
                .map_err(|e| failed("write", e))?;
            write_meta(&tx, batch)?;
        }
        tx.commit().map_err(|e| failed("commit", e))?;
        for c in &batch.changes {
            self.logged.fold(c);
        }
        self.next_row += 1;
        self.log_bytes += record.len();
        self.since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Writes the log's net effect and then `batch` (if any) to the tables, and drops the log.
    fn checkpoint(&mut self, batch: Option<&Batch>) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| failed("write", e))?;
        {
            let mut t = Tables::open(&tx)?;
            self.logged.write(&mut t)?;
            if let Some(batch) = batch {
                for c in &batch.changes {
                    t.apply(c)?;
                }
                write_meta(&tx, batch)?;
            }
        }
        tx.delete_table(LOG).map_err(|e| failed("write", e))?;
        tx.commit().map_err(|e| failed("commit", e))?;
        self.logged = Logged::default();
        self.next_row = 0;
        self.log_bytes = 0;
        self.since = None;
        Ok(())
    }

    fn checkpoint_due(&self) -> bool {
        self.log_bytes >= LOG_BYTES || self.since.is_some_and(|t| t.elapsed() >= CHECKPOINT_EVERY)
    }
}

impl Store for RedbBrokerStore {
    fn load(&self) -> Result<StoredState, StoreError> {
        self.with_open(|open| {
            if !open.logged.is_empty() {
                open.checkpoint(None)?;
            }
            let tx = open.db.begin_read().map_err(|e| failed("read", e))?;
            tables::read(&tx)
        })
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        self.with_open(|open| {
            let clears = batch.changes.iter().any(|c| matches!(c, Change::Clear));
            let record = (!clears).then(|| encode_changes(&batch.changes));
            match record {
                Some(record) if record.len() < DIRECT_BYTES => {
                    open.log(batch, &record)?;
                    if open.checkpoint_due()
                        && let Err(e) = open.checkpoint(None)
                    {
                        // The batch is durable in the log already, so it succeeded. The
                        // handle is reopened by the next call, which checkpoints the log.
                        warn!(error = %e, "store checkpoint failed; the log keeps the changes");
                        open.broken = true;
                    }
                    Ok(())
                }
                _ => open.checkpoint(Some(batch)),
            }
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

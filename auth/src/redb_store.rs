//! The embedded store: one redb file in the data directory.
//!
//! Each bucket is a table `key → [revision: u64 BE][expires_at_ms: u64 BE, 0 = never][value]`,
//! the expiry in milliseconds since the epoch.
//! The table `meta` holds the schema version and the last revision handed out. Every write is
//! one redb transaction, committed (fsync) before the call returns, and only then announced on
//! the watch channel.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{MappedRwLockReadGuard, RwLock, RwLockReadGuard};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::broadcast;

use crate::clock::now_ms;
use crate::kv::{Bucket, Change, ChangeKind, Entry, KvError, KvResult, KvStore};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Bumped when the layout of records changes; `open` refuses a newer file. 2: expiries in
/// milliseconds (header and records' `expires_at_ms`); a file of schema 1 (seconds, records'
/// `expires_at`) is converted when opened.
pub const SCHEMA_VERSION: u64 = 2;

fn table(b: Bucket) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(b.name())
}

pub struct RedbStore {
    path: PathBuf,
    /// `None` only while being reopened. A write that failed (a full disk, an I/O error)
    /// leaves redb's handle refusing every later transaction, so it sets `broken` and the
    /// next call reopens the file, which re-reads the last committed state.
    db: RwLock<Option<Database>>,
    broken: AtomicBool,
    changes: broadcast::Sender<Change>,
}

fn storage<E: std::fmt::Display>(e: E) -> KvError {
    KvError::Storage(e.to_string())
}

fn encode(revision: u64, expires_at_ms: Option<u64>, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + value.len());
    v.extend_from_slice(&revision.to_be_bytes());
    v.extend_from_slice(&expires_at_ms.unwrap_or(0).to_be_bytes());
    v.extend_from_slice(value);
    v
}

fn decode(raw: &[u8]) -> Option<Entry> {
    if raw.len() < 16 {
        return None;
    }
    let revision = u64::from_be_bytes(raw[..8].try_into().ok()?);
    let exp = u64::from_be_bytes(raw[8..16].try_into().ok()?);
    Some(Entry {
        value: raw[16..].to_vec(),
        revision,
        expires_at_ms: (exp != 0).then_some(exp),
    })
}

fn live(e: &Entry, now_ms: u64) -> bool {
    e.expires_at_ms.is_none_or(|t| t > now_ms)
}

/// Schema 1 → 2, in the opening transaction: every expiry from seconds to milliseconds, in
/// the entry header and in the JSON record (`expires_at` → `expires_at_ms`).
fn upgrade_from_1(tx: &redb::WriteTransaction) -> KvResult<()> {
    for b in Bucket::ALL {
        let mut t = tx.open_table(table(b)).map_err(storage)?;
        let mut rows = Vec::new();
        for item in t.iter().map_err(storage)? {
            let (k, v) = item.map_err(storage)?;
            if let Some(e) = decode(v.value()) {
                rows.push((k.value().to_string(), e));
            }
        }
        for (key, e) in rows {
            let mut value = e.value;
            if let Ok(serde_json::Value::Object(mut record)) = serde_json::from_slice(&value)
                && let Some(secs) = record.remove("expires_at").and_then(|v| v.as_u64())
            {
                record.insert("expires_at_ms".into(), (secs.saturating_mul(1000)).into());
                value = serde_json::to_vec(&record).map_err(storage)?;
            }
            let expires = e.expires_at_ms.map(|secs| secs.saturating_mul(1000));
            t.insert(key.as_str(), encode(e.revision, expires, &value).as_slice())
                .map_err(storage)?;
        }
    }
    Ok(())
}

impl RedbStore {
    /// Opens (or creates) the store file. Fails if another process holds it.
    pub fn open(path: &Path) -> KvResult<Arc<RedbStore>> {
        // It holds argon2 hashes of passwords and client secrets: 0600 in a 0700 directory.
        tessera_broker::files::private_file(path)
            .map_err(|e| KvError::Storage(format!("cannot create {}: {e}", path.display())))?;
        let db = Self::open_db(path)?;
        let (changes, _) = broadcast::channel(1024);
        Ok(Arc::new(RedbStore {
            path: path.to_path_buf(),
            db: RwLock::new(Some(db)),
            broken: AtomicBool::new(false),
            changes,
        }))
    }

    /// Opens the file and brings its schema up to date.
    fn open_db(path: &Path) -> KvResult<Database> {
        let db = Database::create(path)
            .map_err(|e| KvError::Storage(format!("cannot open {}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(storage)?;
        {
            let mut meta = tx.open_table(META).map_err(storage)?;
            let version = meta
                .get("schema_version")
                .map_err(storage)?
                .map(|v| v.value());
            match version {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)
                        .map_err(storage)?;
                }
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(KvError::Storage(format!(
                        "{} has schema version {v}; this release reads up to {SCHEMA_VERSION}",
                        path.display()
                    )));
                }
                Some(1) => {
                    drop(meta);
                    upgrade_from_1(&tx)?;
                    let mut meta = tx.open_table(META).map_err(storage)?;
                    meta.insert("schema_version", SCHEMA_VERSION)
                        .map_err(storage)?;
                }
                Some(_) => {}
            }
            for b in Bucket::ALL {
                tx.open_table(table(b)).map_err(storage)?;
            }
        }
        tx.commit().map_err(storage)?;
        Ok(db)
    }

    /// The open database, reopened first if a failed write left it unusable.
    fn db(&self) -> KvResult<MappedRwLockReadGuard<'_, Database>> {
        if self.broken.load(Ordering::Acquire) {
            let mut guard = self.db.write();
            if self.broken.load(Ordering::Acquire) {
                *guard = None; // redb holds a file lock: the old handle goes first.
                let db = Self::open_db(&self.path)?;
                *guard = Some(db);
                self.broken.store(false, Ordering::Release);
                tracing::info!(path = %self.path.display(), "token store reopened after a failed write");
            }
        }
        RwLockReadGuard::try_map(self.db.read(), Option::as_ref)
            .map_err(|_| KvError::Storage("the token store could not be reopened".into()))
    }

    fn purge_once(&self, now: u64) -> KvResult<usize> {
        let db = self.db()?;
        let tx = db.begin_write().map_err(storage)?;
        let mut gone = Vec::new();
        {
            for b in Bucket::ALL {
                let mut t = tx.open_table(table(b)).map_err(storage)?;
                let expired: Vec<String> = t
                    .iter()
                    .map_err(storage)?
                    .filter_map(|item| item.ok())
                    .filter_map(|(k, v)| {
                        let e = decode(v.value())?;
                        (!live(&e, now)).then(|| k.value().to_string())
                    })
                    .collect();
                for k in expired {
                    t.remove(k.as_str()).map_err(storage)?;
                    gone.push((b, k));
                }
            }
        }
        tx.commit().map_err(storage)?;
        for (bucket, key) in &gone {
            let _ = self.changes.send(Change {
                bucket: *bucket,
                key: key.clone(),
                kind: ChangeKind::Expired,
                revision: 0,
            });
        }
        Ok(gone.len())
    }

    /// Passes a write's result on, marking the handle for reopening if storage failed.
    fn wrote<T>(&self, r: KvResult<T>) -> KvResult<T> {
        if let Err(KvError::Storage(_)) = &r {
            self.broken.store(true, Ordering::Release);
        }
        r
    }

    /// Runs one write transaction that may change `key`; `f` gets the current live entry and
    /// returns the new value (or `None` to delete), or an error to abort.
    fn write(
        &self,
        bucket: Bucket,
        key: &str,
        f: impl FnOnce(Option<Entry>) -> KvResult<Option<(Vec<u8>, Option<u64>)>>,
    ) -> KvResult<(u64, bool)> {
        let r = self.write_once(bucket, key, f);
        self.wrote(r)
    }

    fn write_once(
        &self,
        bucket: Bucket,
        key: &str,
        f: impl FnOnce(Option<Entry>) -> KvResult<Option<(Vec<u8>, Option<u64>)>>,
    ) -> KvResult<(u64, bool)> {
        let now = now_ms();
        let db = self.db()?;
        let tx = db.begin_write().map_err(storage)?;
        let (revision, kind, existed) = {
            let mut meta = tx.open_table(META).map_err(storage)?;
            let mut t = tx.open_table(table(bucket)).map_err(storage)?;
            let current = t
                .get(key)
                .map_err(storage)?
                .and_then(|v| decode(v.value()))
                .filter(|e| live(e, now));
            let existed = current.is_some();
            let last = meta
                .get("revision")
                .map_err(storage)?
                .map_or(0, |v| v.value());
            let revision = last + 1;
            let kind = match f(current)? {
                Some((value, expires_at_ms)) => {
                    t.insert(key, encode(revision, expires_at_ms, &value).as_slice())
                        .map_err(storage)?;
                    ChangeKind::Put
                }
                None => {
                    if !existed {
                        return Ok((last, false));
                    }
                    t.remove(key).map_err(storage)?;
                    ChangeKind::Deleted
                }
            };
            meta.insert("revision", revision).map_err(storage)?;
            (revision, kind, existed)
        };
        tx.commit().map_err(storage)?;
        let _ = self.changes.send(Change {
            bucket,
            key: key.to_string(),
            kind,
            revision,
        });
        Ok((revision, existed))
    }
}

impl KvStore for RedbStore {
    fn probe(&self) -> KvResult<()> {
        let r = (|| {
            let db = self.db()?;
            let tx = db.begin_write().map_err(storage)?;
            {
                let mut meta = tx.open_table(META).map_err(storage)?;
                meta.insert("probed_at_ms", now_ms()).map_err(storage)?;
            }
            tx.commit().map_err(storage)
        })();
        self.wrote(r)
    }

    fn get(&self, bucket: Bucket, key: &str) -> KvResult<Option<Entry>> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(storage)?;
        let t = tx.open_table(table(bucket)).map_err(storage)?;
        let now = now_ms();
        Ok(t.get(key)
            .map_err(storage)?
            .and_then(|v| decode(v.value()))
            .filter(|e| live(e, now)))
    }

    fn create(
        &self,
        bucket: Bucket,
        key: &str,
        value: &[u8],
        expires_at_ms: Option<u64>,
    ) -> KvResult<u64> {
        self.write(bucket, key, |cur| {
            if cur.is_some() {
                return Err(KvError::Conflict);
            }
            Ok(Some((value.to_vec(), expires_at_ms)))
        })
        .map(|(r, _)| r)
    }

    fn update(
        &self,
        bucket: Bucket,
        key: &str,
        value: &[u8],
        expires_at_ms: Option<u64>,
        expected: u64,
    ) -> KvResult<u64> {
        self.write(bucket, key, |cur| match cur {
            Some(e) if e.revision == expected => Ok(Some((value.to_vec(), expires_at_ms))),
            _ => Err(KvError::Conflict),
        })
        .map(|(r, _)| r)
    }

    fn put(
        &self,
        bucket: Bucket,
        key: &str,
        value: &[u8],
        expires_at_ms: Option<u64>,
    ) -> KvResult<u64> {
        self.write(bucket, key, |_| Ok(Some((value.to_vec(), expires_at_ms))))
            .map(|(r, _)| r)
    }

    fn delete(&self, bucket: Bucket, key: &str, expected: Option<u64>) -> KvResult<bool> {
        self.write(bucket, key, |cur| match (cur, expected) {
            (Some(e), Some(want)) if e.revision != want => Err(KvError::Conflict),
            _ => Ok(None),
        })
        .map(|(_, existed)| existed)
    }

    fn scan(&self, bucket: Bucket, prefix: &str) -> KvResult<Vec<(String, Entry)>> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(storage)?;
        let t = tx.open_table(table(bucket)).map_err(storage)?;
        let now = now_ms();
        let mut out = Vec::new();
        for item in t.range(prefix..).map_err(storage)? {
            let (k, v) = item.map_err(storage)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            if let Some(e) = decode(v.value()).filter(|e| live(e, now)) {
                out.push((key.to_string(), e));
            }
        }
        Ok(out)
    }

    fn scan_from(
        &self,
        bucket: Bucket,
        after: Option<&str>,
        visit: &mut dyn FnMut(&str, Entry) -> ControlFlow<()>,
    ) -> KvResult<()> {
        use std::ops::Bound;
        let db = self.db()?;
        let tx = db.begin_read().map_err(storage)?;
        let t = tx.open_table(table(bucket)).map_err(storage)?;
        let now = now_ms();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        for item in t
            .range::<&str>((start, Bound::Unbounded))
            .map_err(storage)?
        {
            let (k, v) = item.map_err(storage)?;
            if let Some(e) = decode(v.value()).filter(|e| live(e, now))
                && visit(k.value(), e).is_break()
            {
                break;
            }
        }
        Ok(())
    }

    fn purge_expired(&self, now: u64) -> KvResult<usize> {
        let r = self.purge_once(now);
        self.wrote(r)
    }

    fn watch(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Arc<RedbStore>) {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("t.redb")).unwrap();
        (dir, s)
    }

    #[test]
    fn create_update_delete_with_revisions() {
        let (_d, s) = store();
        let r1 = s.create(Bucket::Users, "a", b"1", None).unwrap();
        assert!(matches!(
            s.create(Bucket::Users, "a", b"x", None),
            Err(KvError::Conflict)
        ));
        let r2 = s.update(Bucket::Users, "a", b"2", None, r1).unwrap();
        assert!(r2 > r1);
        assert!(matches!(
            s.update(Bucket::Users, "a", b"3", None, r1),
            Err(KvError::Conflict)
        ));
        assert_eq!(s.get(Bucket::Users, "a").unwrap().unwrap().value, b"2");
        assert!(matches!(
            s.delete(Bucket::Users, "a", Some(r1)),
            Err(KvError::Conflict)
        ));
        assert!(s.delete(Bucket::Users, "a", Some(r2)).unwrap());
        assert!(!s.delete(Bucket::Users, "a", None).unwrap());
        assert!(s.get(Bucket::Users, "a").unwrap().is_none());
    }

    #[test]
    fn scan_from_starts_after_a_key_skips_expired_entries_and_stops_when_told() {
        let (_d, s) = store();
        for k in ["a", "b", "bb", "c", "d"] {
            s.put(Bucket::Users, k, k.as_bytes(), None).unwrap();
        }
        s.put(Bucket::Users, "ca", b"x", Some(now_ms() - 1))
            .unwrap();
        let page = |after: Option<&str>, n: usize| {
            let mut seen = Vec::new();
            s.scan_from(Bucket::Users, after, &mut |k, _| {
                seen.push(k.to_string());
                if seen.len() == n {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
            seen
        };
        assert_eq!(page(None, 2), ["a", "b"]);
        assert_eq!(page(Some("b"), 3), ["bb", "c", "d"]);
        assert_eq!(page(Some("d"), 3), Vec::<String>::new());
    }

    #[test]
    fn expired_entries_read_as_absent_and_are_purged() {
        let (_d, s) = store();
        let past = now_ms() - 1;
        s.put(Bucket::AccessTokens, "old", b"x", Some(past))
            .unwrap();
        s.put(Bucket::AccessTokens, "new", b"y", Some(now_ms() + 100_000))
            .unwrap();
        assert!(s.get(Bucket::AccessTokens, "old").unwrap().is_none());
        // An expired key can be created again.
        s.create(Bucket::AuthCodes, "c", b"1", Some(past)).unwrap();
        s.create(Bucket::AuthCodes, "c", b"2", None).unwrap();
        let mut w = s.watch();
        assert_eq!(s.purge_expired(now_ms()).unwrap(), 1);
        let c = w.try_recv().unwrap();
        assert_eq!((c.key.as_str(), c.kind), ("old", ChangeKind::Expired));
        assert_eq!(s.scan(Bucket::AccessTokens, "").unwrap().len(), 1);
    }

    #[test]
    fn scan_by_prefix_and_watch_after_commit() {
        let (_d, s) = store();
        let mut w = s.watch();
        s.put(Bucket::Clients, "app-1", b"1", None).unwrap();
        s.put(Bucket::Clients, "app-2", b"2", None).unwrap();
        s.put(Bucket::Clients, "other", b"3", None).unwrap();
        let keys: Vec<_> = s
            .scan(Bucket::Clients, "app-")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec!["app-1", "app-2"]);
        s.delete(Bucket::Clients, "other", None).unwrap();
        let kinds: Vec<_> = std::iter::from_fn(|| w.try_recv().ok())
            .map(|c| c.kind)
            .collect();
        assert_eq!(
            kinds,
            vec![
                ChangeKind::Put,
                ChangeKind::Put,
                ChangeKind::Put,
                ChangeKind::Deleted
            ]
        );
    }

    #[test]
    fn a_store_of_schema_1_gets_its_expiries_in_milliseconds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let secs = crate::clock::now_secs() + 3600;
        {
            // A file as schema 1 wrote it: expiries in seconds, in the header and the record.
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("schema_version", 1)
                .unwrap();
            let record = format!(r#"{{"user":"bob","expires_at":{secs},"spent":false}}"#);
            tx.open_table(table(Bucket::RefreshTokens))
                .unwrap()
                .insert("k", encode(7, Some(secs), record.as_bytes()).as_slice())
                .unwrap();
            tx.open_table(table(Bucket::Users))
                .unwrap()
                .insert("u", encode(8, None, br#"{"name":"u"}"#).as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        let e = s.get(Bucket::RefreshTokens, "k").unwrap().unwrap();
        assert_eq!((e.revision, e.expires_at_ms), (7, Some(secs * 1000)));
        let v: serde_json::Value = serde_json::from_slice(&e.value).unwrap();
        assert_eq!(v["expires_at_ms"], secs * 1000);
        assert!(v.get("expires_at").is_none());
        assert_eq!(v["user"], "bob");
        let u = s.get(Bucket::Users, "u").unwrap().unwrap();
        assert_eq!(
            (u.value.as_slice(), u.expires_at_ms),
            (&br#"{"name":"u"}"#[..], None)
        );
        drop(s);
        // Converted once: a second opening leaves the values as they are.
        let s = RedbStore::open(&path).unwrap();
        let again = s.get(Bucket::RefreshTokens, "k").unwrap().unwrap();
        assert_eq!(again.expires_at_ms, Some(secs * 1000));
    }

    #[test]
    fn data_survives_reopen_and_schema_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let s = RedbStore::open(&path).unwrap();
            s.put(Bucket::Users, "u", b"v", None).unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.get(Bucket::Users, "u").unwrap().unwrap().value, b"v");
        let tx = s.db().unwrap().begin_read().unwrap();
        let meta = tx.open_table(META).unwrap();
        assert_eq!(
            meta.get("schema_version").unwrap().unwrap().value(),
            SCHEMA_VERSION
        );
    }
}

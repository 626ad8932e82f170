//! The storage seam of the token service: a small key-value interface shaped so that both the
//! embedded redb file and a clustered store (NATS JetStream KV) can implement it.
//!
//! - Every write returns a revision; `create` and `update` are compare-and-set, so two writers
//!   (two requests, two cluster nodes) cannot both spend the same refresh token.
//! - Entries may carry an expiry; an expired entry reads as absent and is purged later.
//! - `watch` streams every change after it is durable. Revocation reaches live MQTT sessions
//!   through it, so on a cluster a revocation on one node cuts sessions on every node.
//!
//! Keys are strings; values are opaque bytes (the service stores JSON records).

use std::fmt;
use std::ops::ControlFlow;

use tokio::sync::broadcast;

/// The record kinds, each its own keyspace (a redb table, a JetStream KV bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    Users,
    Clients,
    /// Keyed by the SHA-256 of the token, never the token.
    AccessTokens,
    RefreshTokens,
    AuthCodes,
    DeviceCodes,
    /// Other issuers' tokens revoked by `jti`, keyed by their label (`issuers::label`), each
    /// until the token's expiry could have passed.
    Revocations,
}

impl Bucket {
    pub const ALL: [Bucket; 7] = [
        Bucket::Users,
        Bucket::Clients,
        Bucket::AccessTokens,
        Bucket::RefreshTokens,
        Bucket::AuthCodes,
        Bucket::DeviceCodes,
        Bucket::Revocations,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bucket::Users => "users",
            Bucket::Clients => "clients",
            Bucket::AccessTokens => "access_tokens",
            Bucket::RefreshTokens => "refresh_tokens",
            Bucket::AuthCodes => "auth_codes",
            Bucket::DeviceCodes => "device_codes",
            Bucket::Revocations => "revocations",
        }
    }
}

/// A stored value with its revision and expiry (seconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub revision: u64,
    pub expires_at_ms: Option<u64>,
}

/// Why a key changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Put,
    Deleted,
    /// Removed because its expiry passed.
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub bucket: Bucket,
    pub key: String,
    pub kind: ChangeKind,
    pub revision: u64,
}

#[derive(Debug)]
pub enum KvError {
    /// `create` found the key, or `update`/`delete` found another revision.
    Conflict,
    /// The backend failed; the message names what, never a secret.
    Storage(String),
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvError::Conflict => write!(f, "the record changed concurrently"),
            KvError::Storage(m) => write!(f, "storage error: {m}"),
        }
    }
}

impl std::error::Error for KvError {}

pub type KvResult<T> = Result<T, KvError>;

/// The storage operations the token service needs. Writes are durable when they return.
pub trait KvStore: Send + Sync + 'static {
    /// The live entry under `key` (an expired one reads as absent).
    fn get(&self, bucket: Bucket, key: &str) -> KvResult<Option<Entry>>;
    /// Writes `key` only if it is absent (or expired).
    fn create(
        &self,
        bucket: Bucket,
        key: &str,
        value: &[u8],
        expires_at_ms: Option<u64>,
    ) -> KvResult<u64>;
    /// Writes `key` only if its revision is still `expected`.
    fn update(
        &self,
        bucket: Bucket,
        key: &str,
        value: &[u8],
        expires_at_ms: Option<u64>,
        expected: u64,
    ) -> KvResult<u64>;
    /// Writes `key` whatever it holds.
    fn put(
        &self,
        bucket: Bucket,
        key: &str,
        value: &[u8],
        expires_at_ms: Option<u64>,
    ) -> KvResult<u64>;
    /// Deletes `key` (only at revision `expected`, if given). Returns whether it existed.
    fn delete(&self, bucket: Bucket, key: &str, expected: Option<u64>) -> KvResult<bool>;
    /// Live entries whose key starts with `prefix`, in key order.
    fn scan(&self, bucket: Bucket, prefix: &str) -> KvResult<Vec<(String, Entry)>>;
    /// Live entries with keys after `after` (all when `None`), in key order, each given to
    /// `visit` until it answers `Break`: a page of a list without reading the rest. This
    /// default reads the whole bucket; a store with ordered keys starts at `after` instead.
    fn scan_from(
        &self,
        bucket: Bucket,
        after: Option<&str>,
        visit: &mut dyn FnMut(&str, Entry) -> ControlFlow<()>,
    ) -> KvResult<()> {
        for (k, e) in self.scan(bucket, "")? {
            if after.is_some_and(|a| k.as_str() <= a) {
                continue;
            }
            if visit(&k, e).is_break() {
                break;
            }
        }
        Ok(())
    }
    /// Removes entries whose expiry is at or before `now`; returns how many.
    fn purge_expired(&self, now: u64) -> KvResult<usize>;
    /// Changes from now on, after they are durable.
    fn watch(&self) -> broadcast::Receiver<Change>;
    /// A durable write that touches no record (readiness: the store takes writes).
    fn probe(&self) -> KvResult<()>;
}

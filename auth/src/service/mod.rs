//! The token service's rules, shared by the HTTP endpoint, the operator commands and the MQTT
//! mechanism. One file per concept, all of them `impl TokenService`:
//!
//! | file | owns |
//! |---|---|
//! | `users.rs` | users, passwords, logins (`user` and `user@host`) |
//! | `clients.rs` | OAuth clients, their secrets and redirect URIs |
//! | `scopes.rs` | which scopes a token may carry, who may obtain tokens |
//! | `tokens.rs` | issuing, validating, refreshing (rotation, reuse detection) and revoking |
//! | `codes.rs` | authorization codes (one use, PKCE) and device codes (RFC 8628) |
//!
//! Every method is synchronous and some are slow on purpose (argon2): async callers run them on
//! the blocking pool. A token is committed to the store before the method returns it. Errors
//! are [`ServiceError`], one variant per cause; the endpoint and the operator commands each map
//! them once (to RFC 6749 errors, to exit codes).

mod clients;
mod codes;
pub mod onboarding;
mod scopes;
mod tokens;
mod users;

use std::ops::ControlFlow;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tessera_config::OAuthConfig;

use crate::kv::{Bucket, KvError, KvStore};
use crate::metrics::AuthMetrics;

pub use clients::{ClientCheck, ClientInfo, ClientRefused, NewClient, valid_redirect_uri};
pub use codes::{CodeRequest, DeviceAnswer, DeviceDecision, DeviceGrant, normalize_user_code};
pub use scopes::CONSOLE_SCOPE;
pub use tokens::{Issued, TokenInfo};
pub use users::valid_user_name;

/// Why a token-service operation failed.
#[derive(Debug)]
pub enum ServiceError {
    // ---- something named does not exist ----
    UnknownUser(String),
    UnknownClient(String),
    UnknownRefreshToken,
    /// `token revoke` found nothing to revoke.
    UnknownToken,
    /// `session kick` named a client with no live connection.
    NoSuchConnection(String),

    // ---- something to create exists ----
    UserExists(String),
    ClientExists(String),

    // ---- bad input ----
    InvalidUserName(String),
    EmptyPassword,
    InvalidClientId(String),
    InvalidRedirectUri(String),
    /// Only confidential clients have a secret.
    SecretForPublicClient,
    ScopeNotAllowed(String),
    /// An `mqtt:publish:` / `mqtt:subscribe:` scope whose filter is not a topic filter.
    ScopeNotAFilter(String),
    /// A token id prefix that matches several tokens.
    AmbiguousTokenId(String),
    /// An operator request that names neither or both of what it needs.
    Usage(&'static str),

    // ---- a grant that cannot be honoured ----
    RefreshOtherClient,
    /// A spent refresh token came back: its family is revoked (RFC 6819 §5.2.2.3).
    RefreshReused,
    /// Two refreshes with one token raced; this one lost.
    RefreshRace,
    /// A refresh asked for scopes beyond the original grant (RFC 6749 §6).
    ScopeExceedsGrant,
    /// The new tokens could not serve the one asking (MQTT in-band: another user's, or not
    /// for MQTT); the refresh token is not spent.
    RefreshNotForThis(&'static str),
    /// A bound refresh token presented without its certificate (RFC 8705 §3).
    RefreshOtherCertificate,
    CodeUnknown,
    CodeUsed,
    CodeOtherClient,
    RedirectUriMismatch,
    PkceFailed,
    VerifierMissing,
    DeviceCodeUnknown,
    DeviceCodeOtherClient,
    DeviceCodeUsed,
    /// The person has not approved or denied the device yet (RFC 8628 §3.5).
    DevicePending,
    /// The device polls faster than its interval, which grew by 5 seconds (RFC 8628 §3.5).
    DeviceSlowDown,
    DeviceDenied,

    /// The store failed, or holds a record that does not parse.
    Storage(KvError),
}

/// The four kinds operators see (as exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    Invalid,
    Storage,
}

impl ServiceError {
    pub fn kind(&self) -> ErrorKind {
        use ServiceError::*;
        match self {
            UnknownUser(_) | UnknownClient(_) | UnknownRefreshToken | UnknownToken
            | NoSuchConnection(_) => ErrorKind::NotFound,
            UserExists(_) | ClientExists(_) => ErrorKind::AlreadyExists,
            Storage(_) => ErrorKind::Storage,
            _ => ErrorKind::Invalid,
        }
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use ServiceError::*;
        match self {
            UnknownUser(u) => write!(f, "user {u} not found"),
            UnknownClient(c) => write!(f, "client {c} not found"),
            UnknownRefreshToken => f.write_str("refresh token not found"),
            UnknownToken => f.write_str("token not found"),
            NoSuchConnection(c) => write!(f, "no live connection has client id {c:?}"),
            UserExists(u) => write!(f, "user {u} already exists"),
            ClientExists(c) => write!(f, "client {c} already exists"),
            InvalidUserName(u) => write!(
                f,
                "invalid user name {u:?}: use letters, digits, '.', '_' or '-'"
            ),
            EmptyPassword => f.write_str("the password is empty"),
            InvalidClientId(c) => write!(
                f,
                "invalid client id {c:?}: use letters, digits, '.', '_', '-' or ':'"
            ),
            InvalidRedirectUri(u) => write!(
                f,
                "invalid redirect URI {u:?}: an absolute URI without a fragment"
            ),
            SecretForPublicClient => f.write_str("only confidential clients have a secret"),
            ScopeNotAllowed(s) => write!(f, "scope {s:?} is not allowed"),
            ScopeNotAFilter(s) => write!(f, "scope {s:?} does not hold a valid topic filter"),
            AmbiguousTokenId(id) => write!(f, "token id {id} is ambiguous"),
            Usage(m) => f.write_str(m),
            RefreshOtherClient => f.write_str("the refresh token was issued to another client"),
            RefreshOtherCertificate => f.write_str(
                "the refresh token is bound to a client certificate this request did not present",
            ),
            RefreshReused => f.write_str("refresh token reused; its grant is revoked"),
            RefreshRace => f.write_str("refresh token already used"),
            ScopeExceedsGrant => f.write_str("the requested scope exceeds the original grant"),
            RefreshNotForThis(why) => f.write_str(why),
            CodeUnknown => f.write_str("unknown or expired code"),
            CodeUsed => f.write_str("code already used"),
            CodeOtherClient => f.write_str("code issued to another client"),
            RedirectUriMismatch => f.write_str("redirect_uri does not match"),
            PkceFailed => f.write_str("PKCE verification failed"),
            VerifierMissing => f.write_str("code_verifier is required"),
            DeviceCodeUnknown => f.write_str("unknown or expired device code"),
            DeviceCodeOtherClient => f.write_str("device code issued to another client"),
            DeviceCodeUsed => f.write_str("device code already used"),
            DevicePending => f.write_str("the user has not answered yet"),
            DeviceSlowDown => f.write_str("poll less often"),
            DeviceDenied => f.write_str("the user denied the request"),
            Storage(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ServiceError {}

impl From<KvError> for ServiceError {
    fn from(e: KvError) -> Self {
        ServiceError::Storage(e)
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

pub struct TokenService {
    pub store: Arc<dyn KvStore>,
    pub config: OAuthConfig,
    /// Counters of logins, grants, revocations and requests (`/metrics`).
    pub metrics: Arc<AuthMetrics>,
    /// Devices onboarding over MQTT, waiting for a person (`onboarding.rs`).
    pub onboardings: Arc<onboarding::Onboardings>,
}

/// One page of a list, in key order: the entries after `after` (the last one of the page
/// before, as the list names it), at most `limit` of them (0: all). A page costs what it
/// holds, not what the store holds (`KvStore::scan_from`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    #[serde(default)]
    pub after: Option<String>,
    #[serde(default)]
    pub limit: usize,
}

impl Page {
    /// Whether a list of `n` entries filled the page (so more may follow).
    pub fn is_full(&self, n: usize) -> bool {
        self.limit > 0 && n >= self.limit
    }
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

fn from_json<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> ServiceResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| ServiceError::Storage(KvError::Storage(format!("corrupt {what} record: {e}"))))
}

impl TokenService {
    pub fn new(store: Arc<dyn KvStore>, config: OAuthConfig) -> TokenService {
        TokenService {
            store,
            config,
            metrics: Arc::default(),
            onboardings: Arc::default(),
        }
    }

    /// A record and its revision.
    fn get<T: DeserializeOwned>(&self, b: Bucket, key: &str) -> ServiceResult<Option<(T, u64)>> {
        match self.store.get(b, key)? {
            Some(e) => Ok(Some((from_json(b.name(), &e.value)?, e.revision))),
            None => Ok(None),
        }
    }

    /// The records of a bucket after the key `after`, in key order, that `keep` keeps, up to
    /// `limit` of them (0: all).
    fn scan_page<T: DeserializeOwned>(
        &self,
        b: Bucket,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&T) -> bool,
    ) -> ServiceResult<Vec<(String, T)>> {
        let mut out = Vec::new();
        self.scan_each(b, after, |k, v: T| {
            if keep(&v) {
                out.push((k.to_string(), v));
            }
            if limit > 0 && out.len() >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        Ok(out)
    }

    /// Gives the records of a bucket after the key `after`, in key order, parsed, to `visit`
    /// until it answers `Break`; a record that does not parse ends the scan with its error.
    fn scan_each<T: DeserializeOwned>(
        &self,
        b: Bucket,
        after: Option<&str>,
        mut visit: impl FnMut(&str, T) -> ControlFlow<()>,
    ) -> ServiceResult<()> {
        let mut failed = None;
        self.store.scan_from(
            b,
            after,
            &mut |k, e| match from_json::<T>(b.name(), &e.value) {
                Ok(v) => visit(k, v),
                Err(err) => {
                    failed = Some(err);
                    ControlFlow::Break(())
                }
            },
        )?;
        failed.map_or(Ok(()), Err)
    }

    /// Every record of a bucket, by key.
    fn scan<T: DeserializeOwned>(&self, b: Bucket) -> ServiceResult<Vec<(String, T)>> {
        self.store
            .scan(b, "")?
            .into_iter()
            .map(|(k, e)| Ok((k, from_json(b.name(), &e.value)?)))
            .collect()
    }

    /// How many records a bucket holds, each read and parsed, one at a time.
    fn count<T: DeserializeOwned>(&self, b: Bucket) -> ServiceResult<usize> {
        let mut n = 0;
        self.scan_each(b, None, |_, _: T| {
            n += 1;
            ControlFlow::Continue(())
        })?;
        Ok(n)
    }

    /// Reads every record of every bucket and checks it parses (`tessera check-data`).
    /// Returns how many records each bucket holds.
    pub fn check_records(&self) -> ServiceResult<Vec<(&'static str, usize)>> {
        use crate::model::{AccessToken, AuthCode, Client, DeviceCode, RefreshToken, User};
        Ok(vec![
            ("users", self.count::<User>(Bucket::Users)?),
            ("clients", self.count::<Client>(Bucket::Clients)?),
            (
                "access tokens",
                self.count::<AccessToken>(Bucket::AccessTokens)?,
            ),
            (
                "refresh tokens",
                self.count::<RefreshToken>(Bucket::RefreshTokens)?,
            ),
            (
                "authorization codes",
                self.count::<AuthCode>(Bucket::AuthCodes)?,
            ),
            (
                "device codes",
                self.count::<DeviceCode>(Bucket::DeviceCodes)?,
            ),
        ])
    }

    /// Creates a record that expires at `expires_at_ms`.
    fn create<T: Serialize>(
        &self,
        b: Bucket,
        key: &str,
        record: &T,
        expires_at_ms: Option<u64>,
    ) -> Result<u64, KvError> {
        self.store.create(b, key, &to_json(record), expires_at_ms)
    }

    /// Replaces a record if it is still at revision `rev` (compare-and-set).
    fn update<T: Serialize>(
        &self,
        b: Bucket,
        key: &str,
        record: &T,
        expires_at_ms: Option<u64>,
        rev: u64,
    ) -> Result<u64, KvError> {
        self.store
            .update(b, key, &to_json(record), expires_at_ms, rev)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;

    use parking_lot::Mutex;
    use tokio::sync::broadcast;

    use super::TokenService;
    use crate::kv::{Bucket, Change, Entry, KvError, KvResult, KvStore};
    use crate::redb_store::RedbStore;
    use tessera_config::OAuthConfig;

    pub fn service() -> (tempfile::TempDir, TokenService) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("t.redb")).unwrap();
        (dir, TokenService::new(store, OAuthConfig::default()))
    }

    /// A redb store whose calls on some buckets fail: an outage of the token store.
    pub struct Outage {
        inner: Arc<RedbStore>,
        down: Mutex<Vec<Bucket>>,
    }

    impl Outage {
        /// From now on, every call on these buckets fails (none: the store is up again).
        pub fn fail(&self, buckets: &[Bucket]) {
            *self.down.lock() = buckets.to_vec();
        }

        fn up(&self) -> KvResult<()> {
            if !self.down.lock().is_empty() {
                return Err(KvError::Storage("the store is down (test)".into()));
            }
            Ok(())
        }

        fn bucket_up(&self, b: Bucket) -> KvResult<()> {
            if self.down.lock().contains(&b) {
                return Err(KvError::Storage("the store is down (test)".into()));
            }
            Ok(())
        }
    }

    /// A service on an [`Outage`] store, and the switch.
    pub fn service_with_outage() -> (tempfile::TempDir, Arc<TokenService>, Arc<Outage>) {
        let dir = tempfile::tempdir().unwrap();
        let outage = Arc::new(Outage {
            inner: RedbStore::open(&dir.path().join("t.redb")).unwrap(),
            down: Mutex::new(Vec::new()),
        });
        let service = TokenService::new(outage.clone(), OAuthConfig::default());
        (dir, Arc::new(service), outage)
    }

    impl KvStore for Outage {
        fn get(&self, bucket: Bucket, key: &str) -> KvResult<Option<Entry>> {
            self.bucket_up(bucket)?;
            self.inner.get(bucket, key)
        }
        fn create(&self, b: Bucket, k: &str, v: &[u8], exp: Option<u64>) -> KvResult<u64> {
            self.bucket_up(b)?;
            self.inner.create(b, k, v, exp)
        }
        fn update(
            &self,
            b: Bucket,
            k: &str,
            v: &[u8],
            exp: Option<u64>,
            expected: u64,
        ) -> KvResult<u64> {
            self.bucket_up(b)?;
            self.inner.update(b, k, v, exp, expected)
        }
        fn put(&self, b: Bucket, k: &str, v: &[u8], exp: Option<u64>) -> KvResult<u64> {
            self.bucket_up(b)?;
            self.inner.put(b, k, v, exp)
        }
        fn delete(&self, b: Bucket, k: &str, expected: Option<u64>) -> KvResult<bool> {
            self.bucket_up(b)?;
            self.inner.delete(b, k, expected)
        }
        fn scan(&self, b: Bucket, prefix: &str) -> KvResult<Vec<(String, Entry)>> {
            self.bucket_up(b)?;
            self.inner.scan(b, prefix)
        }
        fn purge_expired(&self, now: u64) -> KvResult<usize> {
            self.up()?;
            self.inner.purge_expired(now)
        }
        fn watch(&self) -> broadcast::Receiver<Change> {
            self.inner.watch()
        }
        fn probe(&self) -> KvResult<()> {
            self.up()?;
            self.inner.probe()
        }
    }
}

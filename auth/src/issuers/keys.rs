//! One issuer's signing keys, cached by `kid`, off the login path:
//! - fetched at start and again when the provider's `Cache-Control: max-age` runs out (kept
//!   between `MIN_AGE` and `MAX_AGE`; `DEFAULT_AGE` without one), in the background;
//! - a token naming a `kid` not in the cache causes one refresh (so a key the provider just
//!   rotated in works at once), at most one per `REFRESH_EVERY` of those (so a stream of tokens
//!   with made-up `kid`s cannot make the broker hammer the provider), and its login waits for
//!   it (within the issuer's `timeout`); concurrent logins share that refresh;
//! - a refresh that fails keeps the keys there are: a provider that is down stalls nothing
//!   signed with a known key.
//!
//! The `jwks_uri` is the configured one, or the one of the issuer's metadata (discovery).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde_json::Value;
use tokio::sync::Mutex as AsyncMutex;
use tracing::{info, warn};

use super::fetch::{FetchError, Fetcher};
use super::jws::Jwk;

/// A refresh for an unknown `kid` happens at most this often.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);
const DEFAULT_AGE: Duration = Duration::from_secs(300);
const MIN_AGE: Duration = Duration::from_secs(60);
const MAX_AGE: Duration = Duration::from_secs(3600);
/// After a failed background refresh, the next try.
const RETRY_AFTER: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Keys {
    all: Vec<Arc<Jwk>>,
    by_kid: HashMap<String, Arc<Jwk>>,
    /// When they were fetched (`None`: never).
    fetched: Option<Instant>,
    /// How long the provider said they are good for.
    max_age: Option<Duration>,
}

pub struct KeySet {
    issuer: String,
    configured_jwks_uri: Option<String>,
    fetcher: Fetcher,
    keys: RwLock<Keys>,
    /// The JWKS URI once known.
    jwks_uri: RwLock<Option<String>>,
    /// Held by the one refresh in progress.
    refreshing: AsyncMutex<Attempts>,
}

/// When refreshes were last tried.
#[derive(Default)]
struct Attempts {
    any: Option<Instant>,
    /// Last one asked for by an unknown `kid` (the rate-limited kind).
    on_demand: Option<Instant>,
}

/// What looking a key up came to.
pub enum Lookup {
    Found(Arc<Jwk>),
    /// The keys are fresh and none fits: the token's `kid` is unknown to the provider.
    Unknown,
}

impl KeySet {
    pub fn new(issuer: &str, jwks_uri: Option<String>, fetcher: Fetcher) -> KeySet {
        KeySet {
            issuer: issuer.to_string(),
            configured_jwks_uri: jwks_uri,
            fetcher,
            keys: RwLock::default(),
            jwks_uri: RwLock::new(None),
            refreshing: AsyncMutex::new(Attempts::default()),
        }
    }

    /// The cached key for `kid` that fits `alg`; with no `kid`, the one cached key that fits.
    pub fn cached(&self, kid: Option<&str>, alg: &str) -> Option<Arc<Jwk>> {
        let keys = self.keys.read();
        match kid {
            Some(k) => keys.by_kid.get(k).filter(|j| j.fits(alg)).cloned(),
            None => {
                let mut fitting = keys.all.iter().filter(|j| j.fits(alg));
                let one = fitting.next().cloned();
                // Several keys and no `kid`: the token does not say which one.
                if fitting.next().is_some() { None } else { one }
            }
        }
    }

    /// The key for `kid`, refreshing the cache once if it is not there (rate-limited and
    /// shared). `within`: how long the caller may wait for the provider.
    pub async fn find(
        &self,
        kid: Option<&str>,
        alg: &str,
        within: Duration,
    ) -> Result<Lookup, FetchError> {
        if let Some(k) = self.cached(kid, alg) {
            return Ok(Lookup::Found(k));
        }
        let waited = tokio::time::timeout(within, self.refresh(false)).await;
        match waited {
            Err(_) => return Err(FetchError::TimedOut),
            Ok(Err(e)) if self.keys.read().fetched.is_none() => return Err(e),
            // A failed refresh with keys in hand: they stand, and the token's key is not
            // among them.
            Ok(_) => {}
        }
        Ok(match self.cached(kid, alg) {
            Some(k) => Lookup::Found(k),
            None => Lookup::Unknown,
        })
    }

    /// Fetches the keys: on demand (an unknown `kid`) unless another refresh ran while this
    /// one waited or one on demand ran within `REFRESH_EVERY`; `scheduled`, always.
    pub async fn refresh(&self, scheduled: bool) -> Result<(), FetchError> {
        let asked = Instant::now();
        let mut last = self.refreshing.lock().await;
        if !scheduled {
            // Someone refreshed while this call waited for the lock: that is the refresh.
            if last.any.is_some_and(|t| t >= asked) {
                return Ok(());
            }
            if last.on_demand.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
                return Ok(());
            }
            last.on_demand = Some(Instant::now());
        }
        last.any = Some(Instant::now());
        let result = self.fetch().await;
        match &result {
            Ok(n) => info!(issuer = %self.issuer, keys = n, "issuer keys fetched"),
            Err(e) => {
                warn!(issuer = %self.issuer, error = %e, "fetching the issuer's keys failed; the cached ones stay")
            }
        }
        result.map(|_| ())
    }

    async fn fetch(&self) -> Result<usize, FetchError> {
        let known = self.jwks_uri.read().clone();
        let uri = match known {
            Some(u) => u,
            None => {
                let u = match &self.configured_jwks_uri {
                    Some(u) => u.clone(),
                    None => self.discover().await?,
                };
                *self.jwks_uri.write() = Some(u.clone());
                u
            }
        };
        let answer = self.fetcher.get(&uri, Duration::from_secs(10)).await?;
        let Some(list) = answer.json.get("keys").and_then(Value::as_array) else {
            return Err(FetchError::Body("no `keys` array in the JWKS".into()));
        };
        let all: Vec<Arc<Jwk>> = list
            .iter()
            .filter_map(Jwk::from_json)
            .map(Arc::new)
            .collect();
        let by_kid = all
            .iter()
            .filter_map(|k| Some((k.kid.clone()?, k.clone())))
            .collect();
        let n = all.len();
        *self.keys.write() = Keys {
            all,
            by_kid,
            fetched: Some(Instant::now()),
            max_age: answer.max_age,
        };
        Ok(n)
    }

    /// The `jwks_uri` of the issuer's metadata: OpenID discovery, then RFC 8414. The
    /// metadata must name this issuer (RFC 8414 §3.3).
    async fn discover(&self) -> Result<String, FetchError> {
        let base = self.issuer.trim_end_matches('/');
        let mut urls = vec![format!("{base}/.well-known/openid-configuration")];
        if let Ok(u) = url::Url::parse(base) {
            let path = u.path().trim_end_matches('/');
            if let Some(origin) = base.strip_suffix(path).filter(|_| !path.is_empty()) {
                urls.push(format!(
                    "{origin}/.well-known/oauth-authorization-server{path}"
                ));
            } else {
                urls.push(format!("{base}/.well-known/oauth-authorization-server"));
            }
        }
        let mut last = FetchError::Status(404);
        for url in urls {
            match self.fetcher.get(&url, Duration::from_secs(10)).await {
                Ok(meta) => {
                    if meta.json.get("issuer").and_then(Value::as_str) != Some(self.issuer.as_str())
                    {
                        return Err(FetchError::Body(format!(
                            "the metadata at {url} names another issuer"
                        )));
                    }
                    return meta
                        .json
                        .get("jwks_uri")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| FetchError::Body("no jwks_uri in the metadata".into()));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// How long until the next scheduled refresh.
    pub fn next_refresh(&self) -> Duration {
        let keys = self.keys.read();
        match (keys.fetched, keys.max_age) {
            (None, _) => RETRY_AFTER,
            (Some(at), age) => {
                let age = age.unwrap_or(DEFAULT_AGE).clamp(MIN_AGE, MAX_AGE);
                age.saturating_sub(at.elapsed())
            }
        }
    }

    /// Keeps the keys fresh for the life of the process.
    pub async fn keep_fresh(self: Arc<Self>) {
        loop {
            let _ = self.refresh(true).await;
            tokio::time::sleep(self.next_refresh().max(Duration::from_secs(1))).await;
        }
    }
}

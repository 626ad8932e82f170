//! One issuer's signing keys, cached by `kid`, off the login path:
//! - fetched at start and again when the provider's `Cache-Control: max-age` runs out (kept
//!   between `MIN_AGE` and `MAX_AGE`; `DEFAULT_AGE` without one), in the background;
//! - a token naming a `kid` not in the cache causes a refresh, so a key the provider just
//!   rotated in works at once, and its login waits for it (within the issuer's `timeout`);
//!   concurrent logins share one refresh. Rate-limited, so a stream of tokens with made-up
//!   `kid`s cannot make the broker hammer the provider: a `kid` a refresh found missing is not
//!   asked about again for `ABSENT_FOR`, and refreshes on demand are `ON_DEMAND_GAP` apart;
//! - a refresh that fails keeps the keys there are: a provider that is down stalls nothing
//!   signed with a known key.
//!
//! The `jwks_uri` is the configured one, or the one of the issuer's metadata (discovery).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;
use tokio::sync::Mutex as AsyncMutex;
use tracing::{info, warn};

use super::fetch::{FetchError, Fetcher};
use super::jws::Jwk;
use crate::metrics::FetchLabels;

/// A `kid` a refresh found missing is taken as missing this long.
const ABSENT_FOR: Duration = Duration::from_secs(10);
/// Refreshes asked for by unknown `kid`s are at least this far apart.
const ON_DEMAND_GAP: Duration = Duration::from_secs(1);
/// `kid`s remembered as missing, at most.
const ABSENT_KEPT: usize = 1024;
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
    /// Fetches of the keys, by outcome (`tessera_issuer_key_fetches_total`).
    fetches: Family<FetchLabels, Counter>,
    configured_jwks_uri: Option<String>,
    fetcher: Fetcher,
    keys: RwLock<Keys>,
    /// The JWKS URI once known.
    jwks_uri: RwLock<Option<String>>,
    /// Grows each time a fetch brings another set of keys (a token verified under an older
    /// set is verified again: `Issuers`' cache).
    generation: AtomicU64,
    /// Held by the one refresh in progress.
    refreshing: AsyncMutex<Attempts>,
}

/// When refreshes were last made, and what they found.
#[derive(Default)]
struct Attempts {
    /// When the last one ended, and how.
    done: Option<Instant>,
    failed: Option<FetchError>,
    /// When the last one asked for by an unknown `kid` (the rate-limited kind) began.
    on_demand: Option<Instant>,
    /// `kid`s a refresh found missing, and when.
    absent: HashMap<String, Instant>,
}

/// What looking a key up came to.
pub enum Lookup {
    Found(Arc<Jwk>),
    /// The keys are fresh and none fits: the token's `kid` is unknown to the provider.
    Unknown,
}

impl KeySet {
    pub fn new(
        issuer: &str,
        jwks_uri: Option<String>,
        fetcher: Fetcher,
        fetches: Family<FetchLabels, Counter>,
    ) -> KeySet {
        KeySet {
            issuer: issuer.to_string(),
            fetches,
            configured_jwks_uri: jwks_uri,
            fetcher,
            keys: RwLock::default(),
            jwks_uri: RwLock::new(None),
            generation: AtomicU64::new(0),
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
        match tokio::time::timeout(within, self.refresh_for(kid)).await {
            Err(_) => return Err(FetchError::TimedOut),
            // The provider could not say whether it has this key (it may have just rotated
            // it in): the login cannot be decided now.
            Ok(Err(e)) => return Err(e),
            // Fetched, or not asked again so soon: the keys in hand decide.
            Ok(Ok(())) => {}
        }
        Ok(match self.cached(kid, alg) {
            Some(k) => Lookup::Found(k),
            None => Lookup::Unknown,
        })
    }

    /// A refresh asked for by a token whose `kid` is not cached, unless the rate limits say
    /// the keys in hand decide (then the last refresh's outcome is this one's).
    async fn refresh_for(&self, kid: Option<&str>) -> Result<(), FetchError> {
        let asked = Instant::now();
        let mut last = self.refreshing.lock().await;
        // A refresh ended while this call waited for the lock: that is the refresh.
        let just_done = last.done.is_some_and(|t| t >= asked);
        let known_absent = kid
            .and_then(|k| last.absent.get(k))
            .is_some_and(|t| t.elapsed() < ABSENT_FOR);
        let too_soon = last.on_demand.is_some_and(|t| t.elapsed() < ON_DEMAND_GAP);
        if just_done || known_absent || too_soon {
            return last.failed.clone().map_or(Ok(()), Err);
        }
        last.on_demand = Some(Instant::now());
        let result = self.fetch_now(&mut last).await;
        if result.is_ok()
            && let Some(k) = kid
            && !self.keys.read().by_kid.contains_key(k)
        {
            if last.absent.len() >= ABSENT_KEPT {
                last.absent.clear();
            }
            last.absent.insert(k.to_string(), Instant::now());
        }
        result
    }

    /// A scheduled refresh: always made.
    pub async fn refresh(&self) -> Result<(), FetchError> {
        let mut last = self.refreshing.lock().await;
        self.fetch_now(&mut last).await
    }

    /// Fetches the keys, holding the refresh lock, and records how it went.
    async fn fetch_now(&self, last: &mut Attempts) -> Result<(), FetchError> {
        let result = self.fetch().await;
        let outcome = match &result {
            Ok(n) => {
                info!(issuer = %self.issuer, keys = n, "issuer keys fetched");
                "fetched"
            }
            Err(e) => {
                warn!(issuer = %self.issuer, error = %e, "fetching the issuer's keys failed; the cached ones stay");
                "failed"
            }
        };
        self.fetches
            .get_or_create(&FetchLabels {
                issuer: self.issuer.clone(),
                outcome,
            })
            .inc();
        last.done = Some(Instant::now());
        last.failed = result.as_ref().err().cloned();
        if result.is_ok() {
            last.absent.clear();
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
        let mut keys = self.keys.write();
        if keys.all != all {
            self.generation.fetch_add(1, Ordering::Release);
        }
        *keys = Keys {
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

    /// Which set of keys is in force (see `generation`).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
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
            let _ = self.refresh().await;
            tokio::time::sleep(self.next_refresh().max(Duration::from_secs(1))).await;
        }
    }
}

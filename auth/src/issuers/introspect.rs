//! RFC 7662 introspection of opaque tokens at their issuer, with a cache keyed by the token's
//! SHA-256 (never the token): an active token's answer is kept until the smaller of its `exp`
//! and `cache_ttl`, a refusal for `REFUSAL_TTL`; concurrent logins with one token make one
//! request (the others wait for its answer). A token the issuer stops vouching for is refused
//! within `cache_ttl`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tessera_config::IntrospectionConfig;
use tokio::sync::OnceCell;

use super::fetch::{FetchError, Fetcher};
use crate::clock::now_ms;
use crate::metrics::FetchLabels;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// How long a refusal (`active: false`) is remembered.
const REFUSAL_TTL: Duration = Duration::from_secs(5);
/// Answers remembered at most; past it, expired ones go first, then all.
const CACHE_MAX: usize = 100_000;

/// What the issuer said of a token.
#[derive(Debug, Clone)]
pub enum Introspected {
    /// `active: true`, with the rest of the answer.
    Active(Map<String, Value>),
    Inactive,
}

type Answer = Result<Introspected, FetchError>;

pub struct Introspector {
    config: IntrospectionConfig,
    fetcher: Fetcher,
    cache: Mutex<HashMap<[u8; 32], (Introspected, Instant)>>,
    in_flight: Mutex<HashMap<[u8; 32], Arc<OnceCell<Answer>>>>,
    /// Requests sent to the issuer, by outcome (`tessera_issuer_introspections_total`).
    requests: Family<FetchLabels, Counter>,
}

impl Introspector {
    pub fn new(
        config: IntrospectionConfig,
        fetcher: Fetcher,
        requests: Family<FetchLabels, Counter>,
    ) -> Introspector {
        Introspector {
            config,
            fetcher,
            cache: Mutex::default(),
            in_flight: Mutex::default(),
            requests,
        }
    }

    /// What `issuer` says of `token`, from the cache or asked once (within `within`).
    pub async fn introspect(&self, token: &str, within: Duration, issuer: &str) -> Answer {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((answer, until)) = self.cache.lock().get(&key)
            && Instant::now() < *until
        {
            return Ok(answer.clone());
        }
        let cell = self
            .in_flight
            .lock()
            .entry(key)
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let asked = cell.get_or_init(|| self.ask(token, within, issuer));
        let answer = match tokio::time::timeout(within, asked).await {
            Ok(a) => a.clone(),
            Err(_) => Err(FetchError::TimedOut),
        };
        // The first one back files the answer and lets the next asker start afresh.
        if cell.initialized() {
            let mut in_flight = self.in_flight.lock();
            if in_flight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                in_flight.remove(&key);
                if let Ok(a) = &answer {
                    self.remember(key, a.clone());
                }
            }
        }
        answer
    }

    async fn ask(&self, token: &str, within: Duration, issuer: &str) -> Answer {
        let answer = self.ask_once(token, within).await;
        let outcome = match &answer {
            Ok(Introspected::Active(_)) => "active",
            Ok(Introspected::Inactive) => "inactive",
            Err(_) => "failed",
        };
        self.requests
            .get_or_create(&FetchLabels {
                issuer: issuer.to_string(),
                outcome,
            })
            .inc();
        answer
    }

    async fn ask_once(&self, token: &str, within: Duration) -> Answer {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("token_type_hint", "access_token")
            .finish();
        let credentials = (
            self.config.client_id.as_str(),
            self.config.client_secret.as_str(),
        );
        let answer = self
            .fetcher
            .post_form(&self.config.endpoint, form, credentials, within)
            .await?;
        match answer.json {
            Value::Object(m) if m.get("active") == Some(&Value::Bool(true)) => {
                Ok(Introspected::Active(m))
            }
            Value::Object(_) => Ok(Introspected::Inactive),
            _ => Err(FetchError::Body(
                "the introspection answer is not an object".into(),
            )),
        }
    }

    fn remember(&self, key: [u8; 32], answer: Introspected) {
        let now = Instant::now();
        let ttl = match &answer {
            Introspected::Inactive => REFUSAL_TTL,
            Introspected::Active(m) => {
                let configured = Duration::from_secs(self.config.cache_ttl);
                match m.get("exp").and_then(Value::as_u64) {
                    Some(exp) => {
                        let left = (exp * 1000).saturating_sub(now_ms());
                        configured.min(Duration::from_millis(left))
                    }
                    None => configured,
                }
            }
        };
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (answer, now + ttl));
    }
}

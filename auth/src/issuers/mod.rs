//! Tokens from identity providers the operator already runs (`auth.issuers`): JWT access
//! tokens (RFC 9068, and plain JWTs) verified offline against the issuer's keys, and opaque
//! tokens introspected at the issuer (RFC 7662). What comes out is an [`ExternalToken`]: a
//! user, scopes, an expiry, a `jti`, a certificate binding, which the MQTT mechanism turns into
//! the same grant as one of Tessera's own tokens (topic rights, deadline, re-authentication,
//! revocation by `jti`).
//!
//! | file | owns |
//! |---|---|
//! | `jws.rs` | the compact JWS, the keys, RFC 8725's algorithm rules, the signature (ring) |
//! | `keys.rs` | one issuer's keys: discovery, the JWKS cache by `kid`, its refreshes |
//! | `introspect.rs` | RFC 7662 at the issuer, cached by the token's SHA-256, one request per token at a time |
//! | `verified.rs` | JWTs already verified, by the token's SHA-256, while their claims and keys hold |
//! | `fetch.rs` | the HTTPS client for all of them |
//!
//! The provider is kept off the login path: a token under a cached key needs no request, and
//! a login waits for the provider at most its issuer's `timeout`, then gets 0x88.

mod fetch;
mod introspect;
mod jws;
mod keys;
mod verified;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tessera_config::IssuerConfig;

use crate::clock::now_ms;
use crate::metrics::{AuthMetrics, IssuerLabels};
use fetch::Fetcher;
use introspect::{Introspected, Introspector};
use jws::{Jwk, Key};
use keys::{KeySet, Lookup};
use verified::{Entry, Verified};

pub use jws::looks_like_jwt;

/// A token another issuer vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalToken {
    /// The issuer, as configured.
    pub issuer: String,
    pub user: String,
    pub scopes: Vec<String>,
    /// Its `exp` in milliseconds; `None` for an introspected token without one.
    pub expires_at_ms: Option<u64>,
    pub jti: Option<String>,
    /// RFC 8705 `cnf` `x5t#S256`, if the token is bound to a client certificate.
    pub cnf: Option<String>,
    /// What names it in the grant and in revocations: see [`label`].
    pub label: String,
    /// Checked just now, not found among the tokens verified before: its issuer, subject and
    /// `jti` are worth an audit line (later logins with it are tied to that line by `label`).
    pub first_seen: bool,
}

/// What the configured issuers say of a token Tessera did not issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not a JWT, and no issuer introspects opaque tokens: none of theirs.
    NotExternal,
    Accepted(ExternalToken),
    /// The token does not hold (the reason, for the client and the audit log; no secret).
    Refused {
        issuer: Option<String>,
        why: String,
    },
    /// The issuer could not be asked in time (CONNACK 0x88).
    Unavailable {
        issuer: String,
        why: String,
    },
}

/// The label of an external token: `ext:` and the SHA-256 (hex) of its issuer and `jti`, or
/// of the token itself when it has no `jti`. The grant carries it (revocation by `jti` ends
/// the sessions using it) and a revocation is stored under it.
pub fn label(issuer: &str, jti: Option<&str>, token: &str) -> String {
    let mut h = Sha256::new();
    match jti {
        Some(j) => {
            h.update(issuer.as_bytes());
            h.update(b"\n");
            h.update(j.as_bytes());
        }
        None => h.update(token.as_bytes()),
    }
    let digest = h.finalize();
    let mut out = String::from("ext:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

struct Issuer {
    config: IssuerConfig,
    keys: Arc<KeySet>,
    /// The configured shared secret, the only key of HS* tokens.
    secret: Option<Jwk>,
    introspector: Option<Introspector>,
    timeout: Duration,
    /// `tessera_external_tokens_total` of this issuer, by outcome: made once, so a login
    /// counts with one atomic add.
    counted: Outcomes,
}

/// One counter per outcome of a login with an issuer's token.
#[derive(Default)]
struct Outcomes {
    accepted: Counter,
    refused: Counter,
    unavailable: Counter,
}

impl Outcomes {
    fn new(metrics: &AuthMetrics, issuer: &str) -> Outcomes {
        let c = |outcome| {
            metrics
                .external_logins
                .get_or_create(&IssuerLabels {
                    issuer: issuer.to_string(),
                    outcome,
                })
                .clone()
        };
        Outcomes {
            accepted: c("accepted"),
            refused: c("refused"),
            unavailable: c("unavailable"),
        }
    }

    fn count(&self, outcome: &str) {
        match outcome {
            "accepted" => self.accepted.inc(),
            "refused" => self.refused.inc(),
            _ => self.unavailable.inc(),
        };
    }
}

/// Every configured issuer.
#[derive(Default)]
pub struct Issuers {
    list: Vec<Arc<Issuer>>,
    verified: Verified,
    /// Refusals of tokens naming no configured issuer (`issuer="unknown"`).
    unknown: Outcomes,
}

impl Issuers {
    /// Reads each issuer's CA file; nothing is fetched until [`Issuers::start`]. Requests to
    /// the providers are counted in `metrics`.
    pub fn new(configs: &[IssuerConfig], metrics: &AuthMetrics) -> std::io::Result<Issuers> {
        let mut list = Vec::new();
        for c in configs {
            let fetcher = Fetcher::new(c.ca.as_ref().map(|ca| ca.value.as_path()))?;
            let keys = KeySet::new(
                &c.issuer,
                c.jwks_uri.clone(),
                fetcher.clone(),
                metrics.key_fetches.clone(),
            );
            list.push(Arc::new(Issuer {
                keys: Arc::new(keys),
                secret: c.secret.as_ref().map(|s| Jwk {
                    kid: None,
                    alg: None,
                    key: Key::Hmac(s.as_bytes().to_vec()),
                }),
                introspector: c
                    .introspection
                    .clone()
                    .map(|x| Introspector::new(x, fetcher.clone(), metrics.introspections.clone())),
                timeout: Duration::from_secs_f64(c.timeout),
                counted: Outcomes::new(metrics, &c.issuer),
                config: c.clone(),
            }));
        }
        Ok(Issuers {
            list,
            verified: Verified::default(),
            unknown: Outcomes::new(metrics, "unknown"),
        })
    }

    /// Counts a login with `issuer`'s token (`None`: a token naming no configured issuer):
    /// `accepted`, `refused` or `unavailable`.
    pub fn count(&self, issuer: Option<&str>, outcome: &'static str) {
        let counted = issuer
            .and_then(|name| self.list.iter().find(|i| i.config.issuer == name))
            .map_or(&self.unknown, |i| &i.counted);
        counted.count(outcome);
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Starts keeping each issuer's keys fresh (on the current runtime), for as long as the
    /// process runs. An issuer with only a secret and no JWTs under keys fetches nothing.
    pub fn start(&self) {
        for i in &self.list {
            let needs_keys = i.config.audience.is_some()
                && i.config.algorithms.iter().any(|a| !a.starts_with("HS"));
            if needs_keys {
                tokio::spawn(i.keys.clone().keep_fresh());
            }
        }
    }

    /// Whether `issuer` is configured (for revocations by `jti`).
    pub fn knows(&self, issuer: &str) -> bool {
        self.list.iter().any(|i| i.config.issuer == issuer)
    }

    /// What the issuers say of `token`.
    pub async fn verify(&self, token: &str) -> Verdict {
        if self.list.is_empty() {
            return Verdict::NotExternal;
        }
        if looks_like_jwt(token) {
            return self.verify_jwt(token).await;
        }
        match self.list.iter().find(|i| i.introspector.is_some()) {
            Some(issuer) => issuer.introspect(token).await,
            None => Verdict::NotExternal,
        }
    }

    async fn verify_jwt(&self, token: &str) -> Verdict {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now_s = now_ms() as f64 / 1000.0;
        let generation = |i: usize| self.list[i].keys.generation();
        let leeway = |i: usize| self.list[i].config.leeway as f64;
        if let Some(mut t) = self.verified.get(&digest, now_s, generation, leeway) {
            t.first_seen = false;
            return Verdict::Accepted(t);
        }
        // The key sets as they are before verifying: an entry is never newer than its keys.
        let generations: Vec<u64> = self.list.iter().map(|i| i.keys.generation()).collect();
        let verdict = self.verify_jwt_fully(token).await;
        if let (Verdict::Accepted(t), Some(i)) = (&verdict, self.place(&verdict))
            && let Ok(jws) = jws::parse(token)
            && let Some(exp) = jws.claims.get("exp").and_then(Value::as_f64)
        {
            let nbf = jws.claims.get("nbf").and_then(Value::as_f64);
            let entry = Entry {
                issuer: i,
                generation: generations[i],
                token: t.clone(),
                exp,
                nbf,
            };
            self.verified.insert(digest, entry, now_s);
        }
        verdict
    }

    /// Which issuer a verdict names (its place in `list`).
    fn place(&self, verdict: &Verdict) -> Option<usize> {
        let Verdict::Accepted(t) = verdict else {
            return None;
        };
        self.list.iter().position(|i| i.config.issuer == t.issuer)
    }

    /// A JWT checked from scratch: its issuer, algorithm, key, signature and claims.
    async fn verify_jwt_fully(&self, token: &str) -> Verdict {
        let refused = |issuer: Option<&str>, why: &str| Verdict::Refused {
            issuer: issuer.map(str::to_string),
            why: why.to_string(),
        };
        let jws = match jws::parse(token) {
            Ok(j) => j,
            Err(e) => return refused(None, e.reason()),
        };
        let Some(iss) = jws.claims.get("iss").and_then(Value::as_str) else {
            return refused(None, "the token names no issuer");
        };
        let Some(issuer) = self.list.iter().find(|i| i.config.issuer == iss) else {
            return refused(None, "the token's issuer is not trusted here");
        };
        let name = Some(iss);
        let Some(audience) = issuer.config.audience.as_deref() else {
            return refused(
                name,
                "this issuer's JWTs are not accepted here (no audience)",
            );
        };
        if !issuer.config.algorithms.contains(&jws.alg) {
            return refused(name, jws::JwsError::Algorithm.reason());
        }
        let key = if jws.alg.starts_with("HS") {
            match &issuer.secret {
                Some(k) => Arc::new(k.clone()),
                None => return refused(name, jws::JwsError::Algorithm.reason()),
            }
        } else {
            match issuer
                .keys
                .find(jws.kid.as_deref(), &jws.alg, issuer.timeout)
                .await
            {
                Ok(Lookup::Found(k)) => k,
                Ok(Lookup::Unknown) => {
                    return refused(name, "the token's signing key is not one of its issuer's");
                }
                Err(e) => {
                    return Verdict::Unavailable {
                        issuer: iss.to_string(),
                        why: e.to_string(),
                    };
                }
            }
        };
        if let Err(e) = jws.verify(&key) {
            return refused(name, e.reason());
        }
        let claims = &jws.claims;
        let now_s = now_ms() as f64 / 1000.0;
        let leeway = issuer.config.leeway as f64;
        let Some(exp) = claims.get("exp").and_then(Value::as_f64) else {
            return refused(name, "the token has no expiry (exp)");
        };
        if exp + leeway <= now_s {
            return refused(name, "the token has expired");
        }
        if let Some(nbf) = claims.get("nbf")
            && nbf.as_f64().is_none_or(|nbf| nbf > now_s + leeway)
        {
            return refused(name, "the token is not valid yet (nbf)");
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => a == audience,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        if !aud_ok {
            return refused(name, "the token is not meant for this broker (aud)");
        }
        match issuer.token(claims, Some((exp * 1000.0) as u64), token) {
            Ok(t) => Verdict::Accepted(t),
            Err(why) => refused(name, why),
        }
    }
}

impl Issuer {
    async fn introspect(&self, token: &str) -> Verdict {
        let name = Some(self.config.issuer.clone());
        let Some(x) = &self.introspector else {
            return Verdict::NotExternal;
        };
        let claims = match x.introspect(token, self.timeout, &self.config.issuer).await {
            Ok(Introspected::Active(m)) => m,
            Ok(Introspected::Inactive) => {
                return Verdict::Refused {
                    issuer: name,
                    why: "the issuer does not vouch for the token (inactive)".into(),
                };
            }
            Err(e) => {
                return Verdict::Unavailable {
                    issuer: self.config.issuer.clone(),
                    why: e.to_string(),
                };
            }
        };
        let refused = |why: &str| Verdict::Refused {
            issuer: name.clone(),
            why: why.to_string(),
        };
        if let Some(iss) = claims.get("iss")
            && iss.as_str() != Some(self.config.issuer.as_str())
        {
            return refused("the introspected token names another issuer");
        }
        if let (Some(audience), Some(aud)) = (self.config.audience.as_deref(), claims.get("aud")) {
            let ok = match aud {
                Value::String(a) => a == audience,
                Value::Array(list) => list.iter().any(|a| a.as_str() == Some(audience)),
                _ => false,
            };
            if !ok {
                return refused("the token is not meant for this broker (aud)");
            }
        }
        let exp_ms = claims
            .get("exp")
            .and_then(Value::as_f64)
            .map(|e| (e * 1000.0) as u64);
        if exp_ms.is_some_and(|e| e <= now_ms()) {
            return refused("the token has expired");
        }
        match self.token(&claims, exp_ms, token) {
            Ok(t) => Verdict::Accepted(t),
            Err(why) => refused(why),
        }
    }

    /// The user, scopes and the rest of a verified token's claims.
    fn token(
        &self,
        claims: &Map<String, Value>,
        expires_at_ms: Option<u64>,
        token: &str,
    ) -> Result<ExternalToken, &'static str> {
        let user = claims
            .get(&self.config.user_claim)
            .and_then(Value::as_str)
            .ok_or("the token does not name its user (user_claim)")?;
        if !usable_user(user) {
            return Err("the token's user is not a usable user name");
        }
        let scopes = match claims.get(&self.config.scope_claim) {
            Some(Value::String(s)) => s
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
            _ => Vec::new(),
        };
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .map(str::to_string);
        let cnf = claims
            .get("cnf")
            .and_then(|c| c.get("x5t#S256"))
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(ExternalToken {
            label: label(&self.config.issuer, jti.as_deref(), token),
            issuer: self.config.issuer.clone(),
            user: user.to_string(),
            scopes,
            expires_at_ms,
            jti,
            cnf,
            first_seen: true,
        })
    }
}

/// A user name a topic rule can take as `%u`: not empty, not too long, and without a
/// character that would change a filter (`/`, `+`, `#`) or a control character.
fn usable_user(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 256
        && !u
            .chars()
            .any(|c| matches!(c, '/' | '+' | '#') || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_names_issuer_and_jti_or_else_the_token() {
        let a = label("https://idp", Some("j1"), "t1");
        assert_eq!(a, label("https://idp", Some("j1"), "t2"), "the jti decides");
        assert_ne!(a, label("https://other", Some("j1"), "t1"));
        assert_ne!(
            label("https://idp", None, "t1"),
            label("https://idp", None, "t2")
        );
        assert!(a.starts_with("ext:") && a.len() == 4 + 64);
    }

    #[test]
    fn a_user_that_would_change_a_topic_filter_is_refused() {
        for bad in ["", "a/b", "a+", "#", "x\ny"] {
            assert!(!usable_user(bad), "{bad:?}");
        }
        for good in ["dev-1", "auth0|abc123", "4f1c-uuid", "alice@example.com"] {
            assert!(usable_user(good), "{good:?}");
        }
    }
}

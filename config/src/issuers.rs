//! `auth.issuers`: identity providers whose access tokens log clients in beside Tessera's own:
//! JWTs verified against the provider's keys (JWKS), opaque tokens introspected (RFC 7662).

use std::path::PathBuf;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// The JWS algorithms an issuer's tokens may be signed with.
pub const ALGORITHMS: [&str; 12] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
    "HS384", "HS512",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The `iss` its tokens carry, and where its metadata is (`/.well-known/...`).
    pub issuer: String,
    /// The `aud` a JWT must carry (RFC 9068); without it, this issuer's JWTs are refused.
    #[serde(default)]
    pub audience: Option<String>,
    /// Where its signing keys are; default: the `jwks_uri` of its metadata.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// CA certificates (PEM) trusted for its HTTPS besides the system's.
    #[serde(default)]
    pub ca: Option<Spanned<PathBuf>>,
    /// Accepted signature algorithms (RFC 8725 §3.1): never `none`; an HMAC one only with
    /// `secret`, and never keyed with a public key.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The shared secret of HS256/384/512 tokens (this issuer's only key then).
    #[serde(default)]
    pub secret: Option<String>,
    /// The claim naming the user (`sub`, `preferred_username`, `client_id`, ...).
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// The claim holding the scopes: a space-separated string (`scope`) or an array (`scp`).
    #[serde(default = "default_scope_claim")]
    pub scope_claim: String,
    /// Seconds of clock difference allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: u64,
    /// Seconds a login waits for the provider (keys, introspection) before CONNACK 0x88.
    #[serde(default = "default_timeout")]
    pub timeout: f64,
    /// RFC 7662 introspection of opaque tokens (at most one issuer has it).
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    pub endpoint: String,
    pub client_id: String,
    pub client_secret: String,
    /// Seconds an answer is kept: an active token until the smaller of its `exp` and this.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: u64,
}

fn default_algorithms() -> Vec<String> {
    ["RS256", "ES256", "EdDSA", "PS256"]
        .map(String::from)
        .to_vec()
}
fn default_user_claim() -> String {
    "sub".into()
}
fn default_scope_claim() -> String {
    "scope".into()
}
fn default_leeway() -> u64 {
    30
}
fn default_timeout() -> f64 {
    2.0
}
fn default_cache_ttl() -> u64 {
    60
}

impl IssuerConfig {
    /// What is wrong with it, if anything (the message names the field).
    pub(crate) fn problem(&self, i: usize) -> Option<String> {
        let f =
            |field: &str, why: String| Some(format!("field `auth.issuers[{i}].{field}`: {why}"));
        let https = |u: &str| u.starts_with("https://") && u.len() > "https://".len();
        if !https(&self.issuer) {
            return f(
                "issuer",
                format!("{:?} is not an https:// URL", self.issuer),
            );
        }
        if let Some(u) = self.jwks_uri.as_deref().filter(|u| !https(u)) {
            return f("jwks_uri", format!("{u:?} is not an https:// URL"));
        }
        if self.algorithms.is_empty() {
            return f("algorithms", "at least one algorithm is needed".into());
        }
        for a in &self.algorithms {
            if a.eq_ignore_ascii_case("none") {
                return f("algorithms", "`none` is never accepted (RFC 8725)".into());
            }
            if !ALGORITHMS.contains(&a.as_str()) {
                return f(
                    "algorithms",
                    format!("unknown algorithm {a:?} (known: {})", ALGORITHMS.join(", ")),
                );
            }
        }
        let hmac = self.algorithms.iter().any(|a| a.starts_with("HS"));
        if hmac && self.secret.is_none() {
            return f(
                "algorithms",
                "HS256/384/512 need the issuer's `secret`".into(),
            );
        }
        if self.secret.is_some() && !hmac {
            return f(
                "secret",
                "a secret is used only with HS256/384/512 in `algorithms`".into(),
            );
        }
        if self.secret.as_ref().is_some_and(|s| s.len() < 32) {
            return f("secret", "at least 32 bytes (RFC 7518 §3.2)".into());
        }
        if self.audience.is_none() && self.introspection.is_none() {
            return f(
                "audience",
                "JWTs need the audience they must carry; without one, give `introspection`".into(),
            );
        }
        if !(0.05..=60.0).contains(&self.timeout) {
            return f("timeout", "between 0.05 and 60 seconds".into());
        }
        if let Some(x) = &self.introspection
            && !https(&x.endpoint)
        {
            return f(
                "introspection.endpoint",
                format!("{:?} is not an https:// URL", x.endpoint),
            );
        }
        None
    }
}

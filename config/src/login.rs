//! `auth:` (how MQTT clients log in), `oauth:` (the token service, with ejabberd's option
//! names) and the topic rules' [`AccessRule`].

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::issuers::IssuerConfig;
use crate::listener::{ClientCertificates, TlsFiles};

/// Who a topic rule admits: `all`, `none`, or a list of user names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AccessRule {
    Named(NamedRule),
    Users(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamedRule {
    All,
    None,
}

impl AccessRule {
    pub fn admits(&self, user: Option<&str>) -> bool {
        match self {
            AccessRule::Named(NamedRule::All) => true,
            AccessRule::Named(NamedRule::None) => false,
            AccessRule::Users(list) => user.is_some_and(|u| list.iter().any(|x| x == u)),
        }
    }
}

/// Whether a topic rule grants or refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// One topic rule: a filter (with `%u` and `%c`), who it is for, and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRule {
    pub effect: Effect,
    pub filter: String,
    pub users: AccessRule,
}

/// `access_publish` / `access_subscribe`. Two forms:
/// - a list of `- allow: FILTER` / `- deny: FILTER` items (each with an optional `users:`,
///   default `all`), in order: for a topic, the first rule that applies to the user and whose
///   filter matches decides; no rule matching means refused;
/// - ejabberd's map `FILTER: all | none | [users]`, which only allows: a topic is allowed if
///   any filter that admits the user matches.
///
/// Empty (the default): no restriction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRules(pub Vec<TopicRule>);

impl AccessRules {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListedRule {
    allow: Option<String>,
    deny: Option<String>,
    #[serde(default = "admits_all")]
    users: AccessRule,
}

fn admits_all() -> AccessRule {
    AccessRule::Named(NamedRule::All)
}

impl<'de> Deserialize<'de> for AccessRules {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AccessRules, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = AccessRules;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of `allow:` / `deny:` rules, or a map of filter to who")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AccessRules, A::Error> {
                let mut rules = Vec::new();
                while let Some(item) = seq.next_element::<serde_saphyr::Spanned<ListedRule>>()? {
                    let line = item.referenced.line();
                    let r = item.value;
                    let (effect, filter) = match (r.allow, r.deny) {
                        (Some(f), None) => (Effect::Allow, f),
                        (None, Some(f)) => (Effect::Deny, f),
                        _ => {
                            return Err(serde::de::Error::custom(format!(
                                "topic rule at line {line}: each rule has exactly one of `allow:` or `deny:`"
                            )));
                        }
                    };
                    if filter.is_empty() {
                        return Err(serde::de::Error::custom(format!(
                            "topic rule at line {line}: the filter is empty"
                        )));
                    }
                    rules.push(TopicRule {
                        effect,
                        filter,
                        users: r.users,
                    });
                }
                Ok(AccessRules(rules))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<AccessRules, A::Error> {
                let mut rules = Vec::new();
                while let Some((filter, users)) = map.next_entry::<String, AccessRule>()? {
                    rules.push(TopicRule {
                        effect: Effect::Allow,
                        filter,
                        users,
                    });
                }
                Ok(AccessRules(rules))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<AccessRules, E> {
                Ok(AccessRules::default())
            }
        }
        d.deserialize_any(Either)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientIdCheck {
    /// No check of `client_id`.
    Allow,
    /// The client must be registered (and authenticate if confidential).
    #[default]
    Db,
    /// No client may obtain tokens.
    Deny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthConfig {
    /// Serve the OAuth2 endpoint.
    pub enabled: bool,
    /// Address of the HTTPS endpoint (paths under `/oauth`).
    pub bind: SocketAddr,
    /// Serve plain HTTP instead of HTTPS (only for a TLS-terminating proxy in front).
    pub plain_http: bool,
    pub certificate: Option<Spanned<PathBuf>>,
    pub private_key: Option<Spanned<PathBuf>>,
    /// Whether the HTTPS handshake asks for a client certificate. `optional` takes any
    /// certificate (RFC 8705 binding, `self_signed_tls_client_auth`); `required` only one
    /// chaining to `client_ca`.
    pub client_certificates: ClientCertificates,
    /// The CAs of `tls_client_auth` clients' certificates.
    pub client_ca: Option<Spanned<PathBuf>>,
    pub client_crl: Option<Spanned<Vec<PathBuf>>>,
    /// The URL clients see (metadata, device verification links); default from `bind`.
    pub issuer: Option<String>,
    /// Host names accepted in `user@host`.
    pub hosts: Vec<String>,
    /// Default access token lifetime in seconds (ejabberd's `oauth_expire`).
    pub oauth_expire: u64,
    /// Upper bound on a requested `ttl` in seconds.
    pub max_ttl: u64,
    /// Who may obtain tokens: `all`, `none`, or a list of users (ejabberd's `oauth_access`).
    pub oauth_access: AccessRule,
    /// ejabberd's `oauth_client_id_check`: `allow`, `db` or `deny`.
    pub oauth_client_id_check: ClientIdCheck,
    /// Refresh token lifetime in seconds.
    pub refresh_token_expire: u64,
    /// Scopes a token may carry. `mqtt:publish:*` admits any `mqtt:publish:<filter>`.
    pub scopes: Vec<String>,
    /// Failed logins per user or per IP address before answers are delayed (429).
    pub max_failures: u32,
    /// Take refresh tokens and device onboarding in MQTT's Authentication Data also on plain
    /// (not TLS) listeners bound to a non-loopback address.
    pub in_band_over_plain: bool,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        OAuthConfig {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 5443)),
            plain_http: false,
            certificate: None,
            private_key: None,
            client_certificates: ClientCertificates::None,
            client_ca: None,
            client_crl: None,
            issuer: None,
            hosts: vec!["localhost".to_string()],
            oauth_expire: 2_592_000,
            max_ttl: 7_776_000,
            oauth_access: AccessRule::Named(NamedRule::All),
            oauth_client_id_check: ClientIdCheck::Db,
            refresh_token_expire: 7_776_000,
            scopes: vec![
                "sasl_auth".to_string(),
                "mqtt".to_string(),
                "mqtt:publish:*".to_string(),
                "mqtt:subscribe:*".to_string(),
            ],
            max_failures: 5,
            in_band_over_plain: false,
        }
    }
}

impl OAuthConfig {
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            certificate: self.certificate.as_ref().map(|s| s.value.clone()),
            private_key: self.private_key.as_ref().map(|s| s.value.clone()),
            client_certificates: self.client_certificates,
            client_ca: self.client_ca.as_ref().map(|s| s.value.clone()),
            client_crl: self
                .client_crl
                .as_ref()
                .map(|s| s.value.clone())
                .unwrap_or_default(),
        }
    }
}

/// `auth.certificate_login`: which name of a verified client certificate logs a client in as
/// a user when it presents no other credential (mosquitto's `use_identity_as_username`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CertificateLogin {
    #[default]
    None,
    /// The subject's Common Name.
    Cn,
    /// The first DNS name of the Subject Alternative Name.
    SanDns,
    /// The first URI of the Subject Alternative Name.
    SanUri,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accept clients that present no credentials and no authentication method.
    pub allow_anonymous: bool,
    /// Enhanced authentication with method `X-OAUTH2` (one or two steps, re-authentication).
    pub x_oauth2: bool,
    /// An access token sent as the MQTT password (for 3.1.1 devices).
    pub token_as_password: bool,
    /// User name and password checked against the user store.
    pub password_login: bool,
    /// A verified client certificate as the login (see [`CertificateLogin`]).
    pub certificate_login: CertificateLogin,
    /// Identity providers whose access tokens are taken beside Tessera's own.
    pub issuers: Vec<IssuerConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: false,
            x_oauth2: true,
            token_as_password: true,
            password_login: true,
            certificate_login: CertificateLogin::None,
            issuers: Vec::new(),
        }
    }
}

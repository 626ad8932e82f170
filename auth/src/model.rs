//! The records the token service stores, as JSON values in the key-value store.
//!
//! Invariant: no record holds a usable secret. Passwords and client secrets are argon2id
//! hashes; access and refresh tokens are stored under the SHA-256 of the token and the record
//! itself holds no token.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub created_at: u64,
    /// An operator: may obtain the console scope (`tessera user add NAME --admin`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    /// A trusted first-party app with a secret: password grant, client credentials, code flow.
    Confidential,
    /// A browser or third-party app of the implicit flow (ejabberd's implicit client).
    Implicit,
    /// An app that cannot keep a secret: code flow with PKCE, device flow.
    Public,
}

impl ClientKind {
    pub fn name(self) -> &'static str {
        match self {
            ClientKind::Confidential => "confidential",
            ClientKind::Implicit => "implicit",
            ClientKind::Public => "public",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Client {
    pub id: String,
    pub name: String,
    pub kind: ClientKind,
    /// argon2id PHC string of the secret (confidential clients).
    pub secret_hash: Option<String>,
    /// Redirect URIs, matched exactly.
    pub redirect_uris: Vec<String>,
    /// The user a client-credentials grant acts as (a device or service account).
    pub service_user: Option<String>,
    pub created_at: u64,
    /// How it authenticates with a TLS client certificate instead of a secret (RFC 8705 §2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_auth: Option<TlsClientAuth>,
}

/// A client's certificate authentication at the token endpoint (RFC 8705 §2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TlsClientAuth {
    /// `tls_client_auth`: a certificate chaining to `oauth.client_ca` whose subject, in RFC
    /// 4514 form, is this (`tls_client_auth_subject_dn`).
    SubjectDn(String),
    /// `tls_client_auth` by a DNS name of the certificate's SAN (`tls_client_auth_san_dns`).
    SanDns(String),
    /// `tls_client_auth` by a URI of the certificate's SAN (`tls_client_auth_san_uri`).
    SanUri(String),
    /// `self_signed_tls_client_auth`: one of these certificates, by `x5t#S256` thumbprint.
    SelfSigned(Vec<String>),
}

impl TlsClientAuth {
    /// The `token_endpoint_auth_method` it is.
    pub fn method(&self) -> &'static str {
        match self {
            TlsClientAuth::SelfSigned(_) => "self_signed_tls_client_auth",
            _ => "tls_client_auth",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessToken {
    pub user: String,
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    pub issued_at: u64,
    /// Milliseconds since the epoch.
    pub expires_at_ms: u64,
    /// The refresh-token family this token came from, so reuse detection can revoke it.
    pub family: Option<String>,
    /// RFC 8705 certificate binding: the `x5t#S256` thumbprint of the client certificate the
    /// token is usable with (and only with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefreshToken {
    pub user: String,
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    /// All refresh tokens rotated from one grant share a family.
    pub family: String,
    pub issued_at: u64,
    /// Milliseconds since the epoch.
    pub expires_at_ms: u64,
    /// Set when it was exchanged; presenting it again revokes the family (RFC 6819 §5.2.2.3).
    pub spent: bool,
    /// RFC 8705 binding: it refreshes only over a connection with this certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuthCode {
    pub client_id: String,
    pub user: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    /// PKCE S256 challenge, if the client sent one.
    pub code_challenge: Option<String>,
    pub ttl: Option<u64>,
    /// Milliseconds since the epoch.
    pub expires_at_ms: u64,
    /// Set when the code is exchanged: the family of the tokens it gave, revoked if the code
    /// is presented again (RFC 6749 §4.1.2). The spent record lives until the code's expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    Pending,
    Approved { user: String },
    Denied,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceCode {
    pub client_id: String,
    pub user_code: String,
    pub scopes: Vec<String>,
    pub state: DeviceState,
    /// Milliseconds since the epoch.
    pub expires_at_ms: u64,
    /// Last poll, for `slow_down` (RFC 8628 §3.5).
    pub last_poll: u64,
    /// Seconds the device must wait between polls; grows by 5 at every `slow_down`.
    pub interval: u64,
}

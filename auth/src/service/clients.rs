//! OAuth clients: the apps that ask for tokens. A confidential (first-party) client proves
//! itself with a secret, stored as an argon2id hash and checked in the same time for an unknown
//! client; browser and public clients are bound to redirect URIs matched exactly.

use serde::Serialize;

use super::{ServiceError, ServiceResult, TokenService};
use crate::clock::now_secs;
use crate::kv::{Bucket, KvError};
use crate::model::{Client, ClientKind, TlsClientAuth};
use crate::secrets;
use tessera_broker::tls::ClientCertificate;
use tessera_config::ClientIdCheck;

/// Which client asks, per `oauth_client_id_check`.
pub enum ClientCheck {
    /// `allow`: whatever id was given, unchecked.
    Unchecked(Option<String>),
    /// A registered client; `authenticated` if it proved itself (secret or certificate).
    Registered { client: Client, authenticated: bool },
}

impl ClientCheck {
    pub fn id(&self) -> Option<&str> {
        match self {
            ClientCheck::Unchecked(id) => id.as_deref(),
            ClientCheck::Registered { client, .. } => Some(&client.id),
        }
    }
}

/// Why a token request's client is not let in (RFC 6749 `invalid_client`); said to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRefused(pub &'static str);

/// A client as listed, without its secret hash.
#[derive(Debug, Clone, Serialize)]
pub struct ClientInfo {
    pub id: String,
    pub name: String,
    pub kind: &'static str,
    /// `client_secret_basic`, `tls_client_auth`, `self_signed_tls_client_auth` or `none`.
    pub auth_method: &'static str,
    pub redirect_uris: Vec<String>,
    pub service_user: Option<String>,
    pub created_at: u64,
}

/// What to register.
#[derive(Debug, Clone)]
pub struct NewClient {
    pub id: String,
    pub name: String,
    pub kind: ClientKind,
    /// For confidential clients; generated when absent (and none with `tls_auth`).
    pub secret: Option<String>,
    pub redirect_uris: Vec<String>,
    pub service_user: Option<String>,
    /// A confidential client that authenticates with its TLS certificate (RFC 8705 §2).
    pub tls_auth: Option<TlsClientAuth>,
}

fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// An absolute URI with a scheme and no fragment (RFC 6749 §3.1.2). Custom schemes are allowed
/// for native apps.
pub fn valid_redirect_uri(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && !rest.is_empty()
        && !uri.contains('#')
        && !uri.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// How a client proves itself at the token endpoint (RFC 8414 names).
fn auth_method(c: &Client) -> &'static str {
    match (&c.tls_auth, &c.secret_hash) {
        (Some(auth), _) => auth.method(),
        (None, Some(_)) => "client_secret_basic",
        (None, None) => "none",
    }
}

/// Whether `certificate` is the one `auth` registered.
pub(crate) fn certificate_matches(auth: &TlsClientAuth, certificate: &ClientCertificate) -> bool {
    let chained = certificate.chained;
    match auth {
        TlsClientAuth::SubjectDn(dn) => chained && certificate.subject == *dn,
        TlsClientAuth::SanDns(name) => {
            chained
                && certificate
                    .dns_names
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(name))
        }
        TlsClientAuth::SanUri(uri) => chained && certificate.uris.iter().any(|u| u == uri),
        TlsClientAuth::SelfSigned(thumbprints) => {
            let presented = certificate.thumbprint();
            thumbprints
                .iter()
                .any(|t| secrets::equal(t.as_bytes(), presented.as_bytes()))
        }
    }
}

impl TokenService {
    /// Registers a client; returns the secret if one was generated (shown once).
    pub fn add_client(&self, c: NewClient) -> ServiceResult<Option<String>> {
        if !valid_client_id(&c.id) {
            return Err(ServiceError::InvalidClientId(c.id));
        }
        if let Some(uri) = c.redirect_uris.iter().find(|u| !valid_redirect_uri(u)) {
            return Err(ServiceError::InvalidRedirectUri(uri.clone()));
        }
        if let Some(u) = &c.service_user
            && !self.user_exists(u)?
        {
            return Err(ServiceError::UnknownUser(u.clone()));
        }
        if c.tls_auth.is_some() && (c.kind != ClientKind::Confidential || c.secret.is_some()) {
            return Err(ServiceError::Usage(
                "a client that authenticates with its certificate is confidential, with no secret",
            ));
        }
        let (secret_hash, generated) = match (c.kind, c.secret) {
            (ClientKind::Confidential, _) if c.tls_auth.is_some() => (None, None),
            (ClientKind::Confidential, Some(s)) => (Some(secrets::hash_password(&s)), None),
            (ClientKind::Confidential, None) => {
                let s = secrets::random_string(24);
                (Some(secrets::hash_password(&s)), Some(s))
            }
            (_, Some(_)) => return Err(ServiceError::SecretForPublicClient),
            (_, None) => (None, None),
        };
        let client = Client {
            id: c.id.clone(),
            name: c.name,
            kind: c.kind,
            secret_hash,
            redirect_uris: c.redirect_uris,
            service_user: c.service_user,
            created_at: now_secs(),
            tls_auth: c.tls_auth,
        };
        match self.create(Bucket::Clients, &c.id, &client, None) {
            Err(KvError::Conflict) => Err(ServiceError::ClientExists(c.id)),
            r => r.map(|_| generated).map_err(Into::into),
        }
    }

    /// Removes a client and revokes every token issued to it.
    pub fn remove_client(&self, id: &str) -> ServiceResult<usize> {
        if !self.store.delete(Bucket::Clients, id, None)? {
            return Err(ServiceError::UnknownClient(id.to_string()));
        }
        self.revoke_where(
            "client",
            id,
            |t| t.client_id.as_deref() == Some(id),
            |r| r.client_id.as_deref() == Some(id),
        )
    }

    pub fn get_client(&self, id: &str) -> ServiceResult<Option<Client>> {
        Ok(self.get::<Client>(Bucket::Clients, id)?.map(|(c, _)| c))
    }

    pub fn list_clients(&self) -> ServiceResult<Vec<ClientInfo>> {
        Ok(self
            .scan::<Client>(Bucket::Clients)?
            .into_iter()
            .map(|(_, c)| ClientInfo {
                auth_method: auth_method(&c),
                id: c.id,
                name: c.name,
                kind: c.kind.name(),
                redirect_uris: c.redirect_uris,
                service_user: c.service_user,
                created_at: c.created_at,
            })
            .collect())
    }

    /// Identifies and (for confidential clients) authenticates the client of a token request,
    /// per `oauth_client_id_check`: by its secret, or by the TLS client certificate of the
    /// request (RFC 8705 §2) if it registered one. Slow on purpose with a secret (argon2):
    /// call it on the blocking pool.
    pub fn check_client(
        &self,
        id: Option<String>,
        secret: Option<String>,
        certificate: Option<&ClientCertificate>,
    ) -> ServiceResult<Result<ClientCheck, ClientRefused>> {
        let refused = |why| Ok(Err(ClientRefused(why)));
        match self.config.oauth_client_id_check {
            ClientIdCheck::Deny => return refused("token requests are disabled"),
            ClientIdCheck::Allow => return Ok(Ok(ClientCheck::Unchecked(id))),
            ClientIdCheck::Db => {}
        }
        let Some(id) = id else {
            return refused("client authentication required");
        };
        let found = match (secret, certificate) {
            (Some(secret), _) => self.authenticate_client(&id, &secret)?.map(|c| (c, true)),
            (None, Some(cert)) => match self.get_client(&id)? {
                Some(c) if c.tls_auth.is_some() => self
                    .authenticate_client_by_certificate(&id, cert)?
                    .map(|c| (c, true)),
                other => other.map(|c| (c, false)),
            },
            (None, None) => self.get_client(&id)?.map(|c| (c, false)),
        };
        match found {
            Some((client, authenticated)) => {
                if client.kind == ClientKind::Confidential && !authenticated {
                    return refused("client authentication failed");
                }
                Ok(Ok(ClientCheck::Registered {
                    client,
                    authenticated,
                }))
            }
            None => refused("client authentication failed"),
        }
    }

    /// The client if `certificate` authenticates it (RFC 8705 §2): one chaining to
    /// `oauth.client_ca` with the registered subject or SAN (`tls_client_auth`), or one of
    /// its registered certificates (`self_signed_tls_client_auth`).
    pub fn authenticate_client_by_certificate(
        &self,
        id: &str,
        certificate: &ClientCertificate,
    ) -> ServiceResult<Option<Client>> {
        let client = self.get_client(id)?;
        Ok(client.filter(|c| {
            c.tls_auth
                .as_ref()
                .is_some_and(|auth| certificate_matches(auth, certificate))
        }))
    }

    /// The client if `secret` is its secret (constant time in the comparison, and as slow for
    /// an unknown client as for a wrong secret).
    pub fn authenticate_client(&self, id: &str, secret: &str) -> ServiceResult<Option<Client>> {
        let client = self.get_client(id)?;
        let hash = client
            .as_ref()
            .and_then(|c| c.secret_hash.as_deref())
            .unwrap_or(secrets::dummy_hash());
        let ok = secrets::verify_password(secret, hash);
        Ok(client.filter(|c| ok && c.secret_hash.is_some()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::service;
    use super::*;

    #[test]
    fn clients_and_secrets() {
        let (_d, s) = service();
        let generated = s
            .add_client(NewClient {
                id: "app".into(),
                name: "App".into(),
                kind: ClientKind::Confidential,
                secret: None,
                redirect_uris: vec![],
                service_user: None,
                tls_auth: None,
            })
            .unwrap()
            .unwrap();
        assert!(s.authenticate_client("app", &generated).unwrap().is_some());
        assert!(s.authenticate_client("app", "wrong").unwrap().is_none());
        assert!(s.authenticate_client("ghost", "x").unwrap().is_none());
        let raw = s.store.get(Bucket::Clients, "app").unwrap().unwrap().value;
        assert!(!String::from_utf8_lossy(&raw).contains(&generated));
        assert!(
            s.add_client(NewClient {
                id: "web".into(),
                name: "Web".into(),
                kind: ClientKind::Implicit,
                secret: None,
                redirect_uris: vec!["https://app.example/cb#frag".into()],
                service_user: None,
                tls_auth: None,
            })
            .is_err()
        );
    }
}

//! The token service's rules, shared by the HTTP endpoint, the operator commands and the MQTT
//! mechanism: users, OAuth clients, issuing, validating, refreshing and revoking tokens.
//!
//! Every method is synchronous and some are slow on purpose (argon2): async callers run them on
//! `spawn_blocking`. A token is committed to the store before the method returns it.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tessera_config::OAuthConfig;

use crate::kv::{Bucket, KvError, KvStore};
use crate::model::{AccessToken, Client, ClientKind, RefreshToken, User};
use crate::redb_store::now_secs;
use crate::secrets;

#[derive(Debug)]
pub enum ServiceError {
    NotFound(String),
    AlreadyExists(String),
    Invalid(String),
    Storage(KvError),
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceError::NotFound(m) => write!(f, "{m} not found"),
            ServiceError::AlreadyExists(m) => write!(f, "{m} already exists"),
            ServiceError::Invalid(m) => write!(f, "{m}"),
            ServiceError::Storage(e) => write!(f, "{e}"),
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

/// A token as handed out once. `access_token` and `refresh_token` exist nowhere else.
#[derive(Debug, Clone, Serialize)]
pub struct Issued {
    pub access_token: String,
    pub token_type: &'static str,
    pub scope: String,
    pub expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The token's public id (for `token list` / `token revoke`).
    #[serde(skip)]
    pub id: String,
}

/// A token's metadata, never the token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: String,
    #[serde(skip)]
    pub key: String,
    pub user: String,
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    pub issued_at: u64,
    pub expires_at: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientInfo {
    pub id: String,
    pub name: String,
    pub kind: &'static str,
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
    /// For confidential clients; generated when absent.
    pub secret: Option<String>,
    pub redirect_uris: Vec<String>,
    pub service_user: Option<String>,
}

pub struct TokenService {
    pub store: Arc<dyn KvStore>,
    pub config: OAuthConfig,
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

fn from_json<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> ServiceResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| ServiceError::Storage(KvError::Storage(format!("corrupt {what} record: {e}"))))
}

/// User names: letters, digits, `.`, `_`, `-`; no `@`, `/`, `+`, `#` (they would break
/// `user@host` and topic placeholders).
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

impl TokenService {
    pub fn new(store: Arc<dyn KvStore>, config: OAuthConfig) -> TokenService {
        TokenService { store, config }
    }

    fn get<T: DeserializeOwned>(&self, b: Bucket, key: &str) -> ServiceResult<Option<(T, u64)>> {
        match self.store.get(b, key)? {
            Some(e) => Ok(Some((from_json(b.name(), &e.value)?, e.revision))),
            None => Ok(None),
        }
    }

    fn scan<T: DeserializeOwned>(&self, b: Bucket) -> ServiceResult<Vec<(String, T)>> {
        self.store
            .scan(b, "")?
            .into_iter()
            .map(|(k, e)| Ok((k, from_json(b.name(), &e.value)?)))
            .collect()
    }

    /// `user` or `user@host` (host one of the configured hosts) → `user`.
    pub fn local_user<'a>(&self, name: &'a str) -> Option<&'a str> {
        let user = match name.split_once('@') {
            Some((u, host)) => {
                if !self.config.hosts.iter().any(|h| h == host) {
                    return None;
                }
                u
            }
            None => name,
        };
        valid_user_name(user).then_some(user)
    }

    // ---- users ----

    pub fn add_user(&self, name: &str, password: &str) -> ServiceResult<()> {
        if !valid_user_name(name) {
            return Err(ServiceError::Invalid(format!(
                "invalid user name {name:?}: use letters, digits, '.', '_' or '-'"
            )));
        }
        if password.is_empty() {
            return Err(ServiceError::Invalid("the password is empty".into()));
        }
        let user = User {
            name: name.to_string(),
            password_hash: secrets::hash_password(password),
            created_at: now_secs(),
        };
        match self
            .store
            .create(Bucket::Users, name, &to_json(&user), None)
        {
            Err(KvError::Conflict) => Err(ServiceError::AlreadyExists(format!("user {name}"))),
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    /// Changes a password; every token of the user is revoked.
    pub fn set_password(&self, name: &str, password: &str) -> ServiceResult<usize> {
        if password.is_empty() {
            return Err(ServiceError::Invalid("the password is empty".into()));
        }
        let Some((mut user, rev)) = self.get::<User>(Bucket::Users, name)? else {
            return Err(ServiceError::NotFound(format!("user {name}")));
        };
        user.password_hash = secrets::hash_password(password);
        self.store
            .update(Bucket::Users, name, &to_json(&user), None, rev)?;
        self.revoke_user(name)
    }

    /// Deletes a user and revokes every token of theirs.
    pub fn delete_user(&self, name: &str) -> ServiceResult<usize> {
        if !self.store.delete(Bucket::Users, name, None)? {
            return Err(ServiceError::NotFound(format!("user {name}")));
        }
        self.revoke_user(name)
    }

    pub fn list_users(&self) -> ServiceResult<Vec<(String, u64)>> {
        Ok(self
            .scan::<User>(Bucket::Users)?
            .into_iter()
            .map(|(_, u)| (u.name, u.created_at))
            .collect())
    }

    pub fn user_exists(&self, name: &str) -> ServiceResult<bool> {
        Ok(self.store.get(Bucket::Users, name)?.is_some())
    }

    /// Checks a password in the same time whether or not the user exists.
    pub fn check_password(&self, name: &str, password: &str) -> ServiceResult<bool> {
        let user = self.get::<User>(Bucket::Users, name)?;
        let hash = user
            .as_ref()
            .map_or(secrets::dummy_hash(), |(u, _)| u.password_hash.as_str());
        let ok = secrets::verify_password(password, hash);
        Ok(ok && user.is_some())
    }

    /// A login from a form: `username` (`user` or `user@host`) and password. Returns the local
    /// user if they match; takes as long for a malformed or unknown name as for a wrong password.
    pub fn check_login(
        &self,
        username: Option<&str>,
        password: &str,
    ) -> ServiceResult<Option<String>> {
        let user = username.and_then(|u| self.local_user(u)).unwrap_or("");
        // An empty name matches no user, so the dummy hash is verified instead.
        let ok = self.check_password(user, password)?;
        Ok(ok.then(|| user.to_string()))
    }

    // ---- clients ----

    /// Registers a client; returns the secret if one was generated (shown once).
    pub fn add_client(&self, c: NewClient) -> ServiceResult<Option<String>> {
        if !valid_client_id(&c.id) {
            return Err(ServiceError::Invalid(format!(
                "invalid client id {:?}: use letters, digits, '.', '_', '-' or ':'",
                c.id
            )));
        }
        for uri in &c.redirect_uris {
            if !valid_redirect_uri(uri) {
                return Err(ServiceError::Invalid(format!(
                    "invalid redirect URI {uri:?}: an absolute URI without a fragment"
                )));
            }
        }
        if let Some(u) = &c.service_user
            && !self.user_exists(u)?
        {
            return Err(ServiceError::NotFound(format!("user {u}")));
        }
        let (secret_hash, generated) = match (c.kind, c.secret) {
            (ClientKind::Confidential, Some(s)) => (Some(secrets::hash_password(&s)), None),
            (ClientKind::Confidential, None) => {
                let s = secrets::random_string(24);
                (Some(secrets::hash_password(&s)), Some(s))
            }
            (_, Some(_)) => {
                return Err(ServiceError::Invalid(
                    "only confidential clients have a secret".into(),
                ));
            }
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
        };
        match self
            .store
            .create(Bucket::Clients, &c.id, &to_json(&client), None)
        {
            Err(KvError::Conflict) => Err(ServiceError::AlreadyExists(format!("client {}", c.id))),
            r => r.map(|_| generated).map_err(Into::into),
        }
    }

    /// Removes a client and revokes every token issued to it.
    pub fn remove_client(&self, id: &str) -> ServiceResult<usize> {
        if !self.store.delete(Bucket::Clients, id, None)? {
            return Err(ServiceError::NotFound(format!("client {id}")));
        }
        self.revoke_where(
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
                id: c.id,
                name: c.name,
                kind: c.kind.name(),
                redirect_uris: c.redirect_uris,
                service_user: c.service_user,
                created_at: c.created_at,
            })
            .collect())
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

    // ---- scopes ----

    /// Checks requested scopes against the configured list; an empty request gets `mqtt`.
    pub fn check_scopes(&self, requested: &[String]) -> ServiceResult<Vec<String>> {
        if requested.is_empty() {
            return Ok(vec!["mqtt".to_string()]);
        }
        for s in requested {
            let allowed = self
                .config
                .scopes
                .iter()
                .any(|a| match a.strip_suffix('*') {
                    Some(prefix) => s.starts_with(prefix) && s.len() > prefix.len(),
                    None => a == s,
                });
            if !allowed {
                return Err(ServiceError::Invalid(format!("scope {s:?} is not allowed")));
            }
            if let Some(filter) = s
                .strip_prefix("mqtt:publish:")
                .or_else(|| s.strip_prefix("mqtt:subscribe:"))
                && !tessera_broker::codec::topic::valid_topic_filter(filter)
            {
                return Err(ServiceError::Invalid(format!(
                    "scope {s:?} does not hold a valid topic filter"
                )));
            }
        }
        let mut v = requested.to_vec();
        v.dedup();
        Ok(v)
    }

    /// Whether `user` may obtain tokens (`oauth_access`).
    pub fn may_obtain_tokens(&self, user: &str) -> bool {
        self.config.oauth_access.admits(Some(user))
    }

    // ---- tokens ----

    /// Lifetime for a requested `ttl`: the default, or the request capped at `max_ttl`.
    pub fn lifetime(&self, ttl: Option<u64>) -> u64 {
        ttl.filter(|t| *t > 0)
            .unwrap_or(self.config.oauth_expire)
            .min(self.config.max_ttl)
    }

    /// Issues an access token (and a refresh token of a new family if asked).
    pub fn issue(
        &self,
        user: &str,
        client_id: Option<&str>,
        scopes: Vec<String>,
        ttl: Option<u64>,
        with_refresh: bool,
    ) -> ServiceResult<Issued> {
        let family = with_refresh.then(|| secrets::random_string(12));
        self.issue_in_family(user, client_id, scopes, None, ttl, family)
    }

    /// Issues an access token with `access_scopes` (default: `scopes`) and, with a family, a
    /// refresh token carrying `scopes`.
    fn issue_in_family(
        &self,
        user: &str,
        client_id: Option<&str>,
        scopes: Vec<String>,
        access_scopes: Option<Vec<String>>,
        ttl: Option<u64>,
        family: Option<String>,
    ) -> ServiceResult<Issued> {
        let access_scopes = access_scopes.unwrap_or_else(|| scopes.clone());
        let now = now_secs();
        let expires_in = self.lifetime(ttl);
        let token = secrets::new_token();
        let key = secrets::token_key(&token);
        let record = AccessToken {
            user: user.to_string(),
            client_id: client_id.map(str::to_string),
            scopes: access_scopes.clone(),
            issued_at: now,
            expires_at: now + expires_in,
            family: family.clone(),
        };
        self.store.create(
            Bucket::AccessTokens,
            &key,
            &to_json(&record),
            Some(record.expires_at),
        )?;
        let refresh_token = match family {
            Some(family) => {
                let rt = secrets::new_token();
                let r = RefreshToken {
                    user: user.to_string(),
                    client_id: client_id.map(str::to_string),
                    scopes: scopes.clone(),
                    family,
                    issued_at: now,
                    expires_at: now + self.config.refresh_token_expire,
                    spent: false,
                };
                self.store.create(
                    Bucket::RefreshTokens,
                    &secrets::token_key(&rt),
                    &to_json(&r),
                    Some(r.expires_at),
                )?;
                Some(rt)
            }
            None => None,
        };
        Ok(Issued {
            access_token: token,
            token_type: "bearer",
            scope: access_scopes.join(" "),
            expires_in,
            refresh_token,
            id: secrets::token_id(&key).to_string(),
        })
    }

    /// The live record of an access token.
    pub fn validate(&self, token: &str) -> ServiceResult<Option<TokenInfo>> {
        let key = secrets::token_key(token);
        Ok(self
            .get::<AccessToken>(Bucket::AccessTokens, &key)?
            .map(|(t, _)| info(key, t)))
    }

    /// Exchanges a refresh token for a new access token and a new refresh token (rotation).
    /// Presenting a spent refresh token revokes its whole family. `narrower` asks for fewer
    /// scopes than granted (RFC 6749 §6); the refresh token keeps the grant's scopes.
    pub fn refresh(
        &self,
        refresh_token: &str,
        client_id: Option<&str>,
        narrower: Option<Vec<String>>,
    ) -> ServiceResult<Issued> {
        let key = secrets::token_key(refresh_token);
        let Some((mut r, rev)) = self.get::<RefreshToken>(Bucket::RefreshTokens, &key)? else {
            return Err(ServiceError::NotFound("refresh token".into()));
        };
        if r.client_id.as_deref() != client_id {
            return Err(ServiceError::Invalid(
                "the refresh token was issued to another client".into(),
            ));
        }
        if r.spent {
            let family = r.family.clone();
            self.revoke_where(
                |t| t.family.as_deref() == Some(&family),
                |x| x.family == family,
            )?;
            return Err(ServiceError::Invalid(
                "refresh token reused; its grant is revoked".into(),
            ));
        }
        if let Some(n) = &narrower
            && !n.iter().all(|s| r.scopes.contains(s))
        {
            return Err(ServiceError::Invalid(
                "the requested scope exceeds the original grant".into(),
            ));
        }
        r.spent = true;
        // Compare-and-set: of two concurrent refreshes, one wins and the other is a reuse.
        match self.store.update(
            Bucket::RefreshTokens,
            &key,
            &to_json(&r),
            Some(r.expires_at),
            rev,
        ) {
            Err(KvError::Conflict) => {
                return Err(ServiceError::Invalid("refresh token already used".into()));
            }
            other => {
                other?;
            }
        }
        if !self.user_exists(&r.user)? {
            return Err(ServiceError::NotFound(format!("user {}", r.user)));
        }
        self.issue_in_family(&r.user, client_id, r.scopes, narrower, None, Some(r.family))
    }

    /// Revokes an access or refresh token given as the token itself or an access token's id.
    /// Revoking a refresh token revokes its family. Returns how many tokens went.
    pub fn revoke(&self, token_or_id: &str) -> ServiceResult<usize> {
        let key = secrets::token_key(token_or_id);
        if self.store.delete(Bucket::AccessTokens, &key, None)? {
            return Ok(1);
        }
        if let Some((r, _)) = self.get::<RefreshToken>(Bucket::RefreshTokens, &key)? {
            let family = r.family;
            return self.revoke_where(
                |t| t.family.as_deref() == Some(&family),
                |x| x.family == family,
            );
        }
        if token_or_id.len() >= 8 && token_or_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches = self.store.scan(Bucket::AccessTokens, token_or_id)?;
            if matches.len() == 1 {
                self.store
                    .delete(Bucket::AccessTokens, &matches[0].0, None)?;
                return Ok(1);
            }
            if matches.len() > 1 {
                return Err(ServiceError::Invalid(format!(
                    "token id {token_or_id} is ambiguous"
                )));
            }
        }
        Ok(0)
    }

    /// Revokes every token of `user`.
    pub fn revoke_user(&self, user: &str) -> ServiceResult<usize> {
        self.revoke_where(|t| t.user == user, |r| r.user == user)
    }

    fn revoke_where(
        &self,
        access: impl Fn(&AccessToken) -> bool,
        refresh: impl Fn(&RefreshToken) -> bool,
    ) -> ServiceResult<usize> {
        let mut n = 0;
        for (k, t) in self.scan::<AccessToken>(Bucket::AccessTokens)? {
            if access(&t) && self.store.delete(Bucket::AccessTokens, &k, None)? {
                n += 1;
            }
        }
        for (k, r) in self.scan::<RefreshToken>(Bucket::RefreshTokens)? {
            if refresh(&r) && self.store.delete(Bucket::RefreshTokens, &k, None)? {
                n += 1;
            }
        }
        Ok(n)
    }

    pub fn list_tokens(&self, user: Option<&str>) -> ServiceResult<Vec<TokenInfo>> {
        Ok(self
            .scan::<AccessToken>(Bucket::AccessTokens)?
            .into_iter()
            .filter(|(_, t)| user.is_none_or(|u| t.user == u))
            .map(|(k, t)| info(k, t))
            .collect())
    }

    /// Purges expired records.
    pub fn purge_expired(&self) -> ServiceResult<usize> {
        Ok(self.store.purge_expired(now_secs())?)
    }
}

fn info(key: String, t: AccessToken) -> TokenInfo {
    TokenInfo {
        id: secrets::token_id(&key).to_string(),
        key,
        user: t.user,
        client_id: t.client_id,
        scopes: t.scopes,
        issued_at: t.issued_at,
        expires_at: t.expires_at,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redb_store::RedbStore;

    fn service() -> (tempfile::TempDir, TokenService) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("t.redb")).unwrap();
        (dir, TokenService::new(store, OAuthConfig::default()))
    }

    #[test]
    fn users_and_passwords() {
        let (_d, s) = service();
        s.add_user("alice", "pw").unwrap();
        assert!(matches!(
            s.add_user("alice", "x"),
            Err(ServiceError::AlreadyExists(_))
        ));
        assert!(matches!(
            s.add_user("a/b", "x"),
            Err(ServiceError::Invalid(_))
        ));
        assert!(s.check_password("alice", "pw").unwrap());
        assert!(!s.check_password("alice", "nope").unwrap());
        assert!(!s.check_password("nobody", "pw").unwrap());
        assert_eq!(s.local_user("alice@localhost"), Some("alice"));
        assert_eq!(s.local_user("alice@elsewhere"), None);
    }

    #[test]
    fn tokens_are_stored_hashed_and_revoked_with_their_user() {
        let (_d, s) = service();
        s.add_user("bob", "pw").unwrap();
        let t = s
            .issue("bob", None, vec!["mqtt".into()], Some(60), false)
            .unwrap();
        assert_eq!(t.expires_in, 60);
        let key = secrets::token_key(&t.access_token);
        assert!(s.store.get(Bucket::AccessTokens, &key).unwrap().is_some());
        assert!(
            s.store
                .get(Bucket::AccessTokens, &t.access_token)
                .unwrap()
                .is_none()
        );
        let v = s.validate(&t.access_token).unwrap().unwrap();
        assert_eq!((v.user.as_str(), v.id.as_str()), ("bob", t.id.as_str()));
        assert_eq!(s.set_password("bob", "new").unwrap(), 1);
        assert!(s.validate(&t.access_token).unwrap().is_none());
    }

    #[test]
    fn ttl_is_capped() {
        let (_d, s) = service();
        assert_eq!(s.lifetime(None), 2_592_000);
        assert_eq!(s.lifetime(Some(10)), 10);
        assert_eq!(s.lifetime(Some(u64::MAX)), 7_776_000);
    }

    #[test]
    fn refresh_rotates_and_reuse_revokes_the_family() {
        let (_d, s) = service();
        s.add_user("carol", "pw").unwrap();
        let first = s
            .issue("carol", None, vec!["mqtt".into()], None, true)
            .unwrap();
        let rt1 = first.refresh_token.clone().unwrap();
        assert!(
            s.refresh(&rt1, None, Some(vec!["admin".into()])).is_err(),
            "no widening"
        );
        let second = s.refresh(&rt1, None, None).unwrap();
        let rt2 = second.refresh_token.clone().unwrap();
        assert_ne!(rt1, rt2);
        assert!(s.validate(&second.access_token).unwrap().is_some());
        // Reusing the spent one revokes everything of the family.
        assert!(s.refresh(&rt1, None, None).is_err());
        assert!(s.validate(&first.access_token).unwrap().is_none());
        assert!(s.validate(&second.access_token).unwrap().is_none());
        assert!(s.refresh(&rt2, None, None).is_err());
    }

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
            })
            .is_err()
        );
    }

    #[test]
    fn scopes_are_checked() {
        let (_d, s) = service();
        assert_eq!(s.check_scopes(&[]).unwrap(), vec!["mqtt"]);
        assert!(s.check_scopes(&["sasl_auth".into()]).is_ok());
        assert!(
            s.check_scopes(&["mqtt:publish:devices/+/up".into()])
                .is_ok()
        );
        assert!(s.check_scopes(&["mqtt:publish:".into()]).is_err());
        assert!(s.check_scopes(&["mqtt:publish:a/#/b".into()]).is_err());
        assert!(s.check_scopes(&["admin".into()]).is_err());
    }
}

//! Access and refresh tokens: issuing (a token is 32 random bytes, stored under its SHA-256 and
//! committed before it is returned), validating, refreshing with rotation and reuse detection
//! (refresh tokens of one grant share a family; presenting a spent one revokes the family), and
//! revoking (one token, a family, a user's, a client's). A token asked for over a TLS
//! connection with a client certificate is bound to it (RFC 8705 §3: its `cnf`), and a bound
//! refresh token refreshes only with that certificate.

use serde::Serialize;

use super::{CONSOLE_SCOPE, Page, ServiceError, ServiceResult, TokenService};
use crate::clock::{now_ms, now_secs};
use crate::kv::{Bucket, KvError};
use crate::model::{AccessToken, RefreshToken};
use crate::secrets;

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
    /// Whose it is and which client asked (for the audit log; never sent).
    #[serde(skip)]
    pub user: String,
    #[serde(skip)]
    pub client_id: Option<String>,
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
    /// Seconds since the epoch, as `token list` shows it...
    pub expires_at: u64,
    /// ...and the exact expiry, in milliseconds.
    #[serde(skip)]
    pub expires_at_ms: u64,
    /// The `x5t#S256` thumbprint of the certificate it is bound to (RFC 8705); `null` for a
    /// bearer token (a column of `token list` either way).
    #[serde(rename = "x5t#S256")]
    pub cnf: Option<String>,
}

impl TokenService {
    /// Lifetime for a requested `ttl`: the default, or the request capped at `max_ttl`.
    pub fn lifetime(&self, ttl: Option<u64>) -> u64 {
        ttl.filter(|t| *t > 0)
            .unwrap_or(self.config.oauth_expire)
            .min(self.config.max_ttl)
    }

    /// Issues an access token (and a refresh token of a new family if asked), bound to the
    /// certificate with thumbprint `bound_to` if given.
    pub fn issue(
        &self,
        user: &str,
        client_id: Option<&str>,
        scopes: Vec<String>,
        ttl: Option<u64>,
        with_refresh: bool,
        bound_to: Option<&str>,
    ) -> ServiceResult<Issued> {
        let family = with_refresh.then(|| secrets::random_string(12));
        self.issue_in_family(user, client_id, scopes, None, ttl, family, bound_to)
    }

    /// Issues an access token with `access_scopes` (default: `scopes`) and, with a family, a
    /// refresh token carrying `scopes`; both bound to `bound_to` if given.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn issue_in_family(
        &self,
        user: &str,
        client_id: Option<&str>,
        scopes: Vec<String>,
        access_scopes: Option<Vec<String>>,
        ttl: Option<u64>,
        family: Option<String>,
        bound_to: Option<&str>,
    ) -> ServiceResult<Issued> {
        let cnf = bound_to.map(str::to_string);
        let access_scopes = access_scopes.unwrap_or_else(|| scopes.clone());
        // The console's scope is an operator's alone, however the token is asked for.
        if scopes.iter().any(|s| s == CONSOLE_SCOPE) && !self.is_admin(user)? {
            return Err(ServiceError::ScopeNotAllowed(CONSOLE_SCOPE.to_string()));
        }
        let now = now_secs();
        let now_ms = now_ms();
        let expires_in = self.lifetime(ttl);
        let token = secrets::new_token();
        let key = secrets::token_key(&token);
        let record = AccessToken {
            user: user.to_string(),
            client_id: client_id.map(str::to_string),
            scopes: access_scopes.clone(),
            issued_at: now,
            expires_at_ms: now_ms + expires_in * 1000,
            family: family.clone(),
            cnf: cnf.clone(),
        };
        self.create(
            Bucket::AccessTokens,
            &key,
            &record,
            Some(record.expires_at_ms),
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
                    expires_at_ms: now_ms + self.config.refresh_token_expire * 1000,
                    spent: false,
                    cnf,
                };
                self.create(
                    Bucket::RefreshTokens,
                    &secrets::token_key(&rt),
                    &r,
                    Some(r.expires_at_ms),
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
            user: user.to_string(),
            client_id: client_id.map(str::to_string),
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
    /// `certificate`: the thumbprint of the client certificate of the request, if any. A bound
    /// refresh token needs that one; the new tokens are bound to it.
    pub fn refresh(
        &self,
        refresh_token: &str,
        client_id: Option<&str>,
        narrower: Option<Vec<String>>,
        certificate: Option<&str>,
    ) -> ServiceResult<Issued> {
        self.refresh_for(refresh_token, client_id, narrower, certificate, |_, _| {
            Ok(())
        })
    }

    /// `refresh`, where `serves(user, scopes)` says whether the new tokens (that user's, with
    /// those scopes) can serve the one asking. Asked after the reuse check (a spent token
    /// still revokes its family) and before the token is spent: a refusal costs nothing.
    pub fn refresh_for(
        &self,
        refresh_token: &str,
        client_id: Option<&str>,
        narrower: Option<Vec<String>>,
        certificate: Option<&str>,
        serves: impl FnOnce(&str, &[String]) -> Result<(), &'static str>,
    ) -> ServiceResult<Issued> {
        let key = secrets::token_key(refresh_token);
        let Some((mut r, rev)) = self.get::<RefreshToken>(Bucket::RefreshTokens, &key)? else {
            return Err(ServiceError::UnknownRefreshToken);
        };
        if r.client_id.as_deref() != client_id {
            return Err(ServiceError::RefreshOtherClient);
        }
        if let Some(bound) = &r.cnf
            && !certificate.is_some_and(|c| secrets::equal(c.as_bytes(), bound.as_bytes()))
        {
            return Err(ServiceError::RefreshOtherCertificate);
        }
        if r.spent {
            self.revoke_family(&r.family)?;
            return Err(ServiceError::RefreshReused);
        }
        if let Some(n) = &narrower
            && !n.iter().all(|s| r.scopes.contains(s))
        {
            return Err(ServiceError::ScopeExceedsGrant);
        }
        serves(&r.user, narrower.as_deref().unwrap_or(&r.scopes))
            .map_err(ServiceError::RefreshNotForThis)?;
        r.spent = true;
        // Compare-and-set: of two concurrent refreshes, one wins and the other is a reuse.
        match self.update(Bucket::RefreshTokens, &key, &r, Some(r.expires_at_ms), rev) {
            Err(KvError::Conflict) => return Err(ServiceError::RefreshRace),
            other => {
                other?;
            }
        }
        if !self.user_exists(&r.user)? {
            return Err(ServiceError::UnknownUser(r.user));
        }
        self.issue_in_family(
            &r.user,
            client_id,
            r.scopes,
            narrower,
            None,
            Some(r.family),
            certificate,
        )
    }

    /// Counts a token issued by `grant_type` and writes its audit line; `transport` is how it
    /// was asked for (`https`, `mqtt`, `cli`).
    pub fn record_issued(&self, transport: &str, grant_type: &'static str, t: &Issued) {
        self.metrics.issued(grant_type);
        crate::audit::token_issued(
            transport,
            grant_type,
            &t.user,
            t.client_id.as_deref(),
            &t.id,
            &t.scope,
            t.expires_in,
        );
    }

    /// Revokes an access or refresh token given as the token itself or an access token's id.
    /// Revoking a refresh token revokes its family. Returns how many tokens went.
    pub fn revoke(&self, token_or_id: &str) -> ServiceResult<usize> {
        let key = secrets::token_key(token_or_id);
        if self.store.delete(Bucket::AccessTokens, &key, None)? {
            self.revoked("token", secrets::token_id(&key), 1);
            return Ok(1);
        }
        if let Some((r, _)) = self.get::<RefreshToken>(Bucket::RefreshTokens, &key)? {
            return self.revoke_family(&r.family);
        }
        if token_or_id.len() >= 8 && token_or_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches = self.store.scan(Bucket::AccessTokens, token_or_id)?;
            if matches.len() == 1 {
                self.store
                    .delete(Bucket::AccessTokens, &matches[0].0, None)?;
                self.revoked("token", secrets::token_id(&matches[0].0), 1);
                return Ok(1);
            }
            if matches.len() > 1 {
                return Err(ServiceError::AmbiguousTokenId(token_or_id.to_string()));
            }
        }
        Ok(0)
    }

    /// Revokes another issuer's token by its `jti`: stored under its label until `until_ms`
    /// (every node of a cluster reads the same store, and its change ends the sessions using
    /// it). Returns whether it was not revoked already.
    pub fn revoke_external(&self, label: &str, until_ms: u64) -> ServiceResult<bool> {
        let record = serde_json::json!({ "revoked_at_ms": now_ms() });
        match self.create(Bucket::Revocations, label, &record, Some(until_ms)) {
            Ok(_) => {
                self.revoked("external", secrets::token_id(label), 1);
                Ok(true)
            }
            Err(KvError::Conflict) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether another issuer's token (by its label) was revoked.
    pub fn is_revoked_external(&self, label: &str) -> ServiceResult<bool> {
        Ok(self.store.get(Bucket::Revocations, label)?.is_some())
    }

    /// Revokes every token of `user`.
    pub fn revoke_user(&self, user: &str) -> ServiceResult<usize> {
        self.revoke_where("user", user, |t| t.user == user, |r| r.user == user)
    }

    /// Revokes every access and refresh token of one grant.
    pub(super) fn revoke_family(&self, family: &str) -> ServiceResult<usize> {
        self.revoke_where(
            "family",
            secrets::token_id(family),
            |t| t.family.as_deref() == Some(family),
            |r| r.family == family,
        )
    }

    /// Revokes the access tokens and refresh tokens the predicates select, counted and
    /// audited as revoking `what` (`subject`) when any went.
    pub(super) fn revoke_where(
        &self,
        what: &'static str,
        subject: &str,
        access: impl Fn(&AccessToken) -> bool,
        refresh: impl Fn(&RefreshToken) -> bool,
    ) -> ServiceResult<usize> {
        let mut n = 0;
        // Read one token at a time; what is held is the ones to delete, not the bucket.
        for (k, _) in self.scan_page::<AccessToken>(Bucket::AccessTokens, None, 0, access)? {
            if self.store.delete(Bucket::AccessTokens, &k, None)? {
                n += 1;
            }
        }
        for (k, _) in self.scan_page::<RefreshToken>(Bucket::RefreshTokens, None, 0, refresh)? {
            if self.store.delete(Bucket::RefreshTokens, &k, None)? {
                n += 1;
            }
        }
        self.revoked(what, subject, n);
        Ok(n)
    }

    fn revoked(&self, what: &'static str, subject: &str, n: usize) {
        if n > 0 {
            self.metrics.revoked(what);
            crate::audit::revoked(what, subject, n);
        }
    }

    /// Access tokens (of `user`, if given) in id order, one page: `page.after` is the id of
    /// the last token of the page before.
    pub fn list_tokens(&self, user: Option<&str>, page: &Page) -> ServiceResult<Vec<TokenInfo>> {
        // Keys are hex and an id is the first 16 digits of one: every key beginning with the
        // id sorts before the id followed by `~`, every later key after it.
        let after = page.after.as_ref().map(|id| format!("{id}~"));
        Ok(self
            .scan_page::<AccessToken>(Bucket::AccessTokens, after.as_deref(), page.limit, |t| {
                user.is_none_or(|u| t.user == u)
            })?
            .into_iter()
            .map(|(k, t)| info(k, t))
            .collect())
    }

    /// Purges expired records.
    pub fn purge_expired(&self) -> ServiceResult<usize> {
        Ok(self.store.purge_expired(now_ms())?)
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
        expires_at: t.expires_at_ms / 1000,
        expires_at_ms: t.expires_at_ms,
        cnf: t.cnf,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::service;
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_and_revoked_with_their_user() {
        let (_d, s) = service();
        s.add_user("bob", "pw").unwrap();
        let t = s
            .issue("bob", None, vec!["mqtt".into()], Some(60), false, None)
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
            .issue("carol", None, vec!["mqtt".into()], None, true, None)
            .unwrap();
        let rt1 = first.refresh_token.clone().unwrap();
        assert!(
            s.refresh(&rt1, None, Some(vec!["admin".into()]), None)
                .is_err(),
            "no widening"
        );
        let second = s.refresh(&rt1, None, None, None).unwrap();
        let rt2 = second.refresh_token.clone().unwrap();
        assert_ne!(rt1, rt2);
        assert!(s.validate(&second.access_token).unwrap().is_some());
        // Reusing the spent one revokes everything of the family.
        assert!(s.refresh(&rt1, None, None, None).is_err());
        assert!(s.validate(&first.access_token).unwrap().is_none());
        assert!(s.validate(&second.access_token).unwrap().is_none());
        assert!(s.refresh(&rt2, None, None, None).is_err());
    }

    #[test]
    fn a_bound_token_says_its_certificate_and_its_refresh_needs_that_one() {
        let (_d, s) = service();
        s.add_user("dave", "pw").unwrap();
        let t = s
            .issue(
                "dave",
                None,
                vec!["mqtt".into()],
                None,
                true,
                Some("thumb-a"),
            )
            .unwrap();
        let info = s.validate(&t.access_token).unwrap().unwrap();
        assert_eq!(info.cnf.as_deref(), Some("thumb-a"));
        let rt = t.refresh_token.unwrap();
        for other in [None, Some("thumb-b")] {
            assert!(matches!(
                s.refresh(&rt, None, None, other),
                Err(ServiceError::RefreshOtherCertificate)
            ));
        }
        // Refused before it was spent: the right certificate still refreshes, bound again.
        let next = s.refresh(&rt, None, None, Some("thumb-a")).unwrap();
        let info = s.validate(&next.access_token).unwrap().unwrap();
        assert_eq!(info.cnf.as_deref(), Some("thumb-a"));
        // An unbound grant refreshed over a certificate is bound from then on.
        let u = s
            .issue("dave", None, vec!["mqtt".into()], None, true, None)
            .unwrap();
        let bound = s
            .refresh(
                u.refresh_token.as_deref().unwrap(),
                None,
                None,
                Some("thumb-c"),
            )
            .unwrap();
        let info = s.validate(&bound.access_token).unwrap().unwrap();
        assert_eq!(info.cnf.as_deref(), Some("thumb-c"));
        assert!(
            s.refresh(bound.refresh_token.as_deref().unwrap(), None, None, None)
                .is_err()
        );
    }
}

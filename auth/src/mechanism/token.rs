//! A presented access token: Tessera's own (looked up by its SHA-256) or another issuer's
//! (`issuers/`: a JWT verified offline, an opaque token introspected), then the same checks for
//! both, and the same grant: the claimed user, the certificate binding (RFC 8705), the scope
//! that lets a token log in, topic rights narrowed by its scopes, a deadline at its expiry, and
//! a credential label that revocation names.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tessera_broker::auth::{AuthStep, Grant};
use tessera_broker::codec::ReasonCode;
use tessera_broker::tls::ClientCertificate;
use tracing::warn;

use super::{OAuthMechanism, fail, store_unavailable};
use crate::acl::SessionAcl;
use crate::issuers::{ExternalToken, Verdict, looks_like_jwt};
use crate::secrets;
use crate::service::TokenInfo;

/// The User Property of a token login's CONNACK / AUTH 0x00: whole seconds the token has left.
pub const TOKEN_EXPIRES_IN: &str = "token-expires-in";

/// A token that checked out, whoever issued it.
pub(super) struct Presented {
    pub user: String,
    /// Tessera's own: a claimed `user@host` names the user too. Another issuer's: only the
    /// exact name its claim gives.
    pub own: bool,
    pub scopes: Vec<String>,
    pub cnf: Option<String>,
    pub expires_at_ms: Option<u64>,
    /// The grant's credential: the token's key (own) or its label (another issuer's).
    pub label: String,
}

impl From<TokenInfo> for Presented {
    fn from(t: TokenInfo) -> Presented {
        Presented {
            user: t.user,
            own: true,
            scopes: t.scopes,
            cnf: t.cnf,
            expires_at_ms: Some(t.expires_at_ms),
            label: t.key,
        }
    }
}

impl From<ExternalToken> for Presented {
    fn from(t: ExternalToken) -> Presented {
        Presented {
            user: t.user,
            own: false,
            scopes: t.scopes,
            cnf: t.cnf,
            expires_at_ms: t.expires_at_ms,
            label: t.label,
        }
    }
}

/// Where the token is: what may be asked about it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// In CONNECT's or AUTH's Authentication Data: a token and nothing else.
    AuthData,
    /// The MQTT password: an opaque one is sent to an issuer's introspection only when
    /// passwords cannot log in (else a user's mistyped password would go to the provider).
    Password,
}

impl OAuthMechanism {
    pub(super) fn grant(
        &self,
        user: Option<String>,
        client_id: &str,
        token: Option<&Presented>,
    ) -> Grant {
        let scopes = token.map(|t| t.scopes.as_slice()).unwrap_or(&[]);
        let acl = SessionAcl::new(
            &self.access_publish,
            &self.access_subscribe,
            user.as_deref(),
            client_id,
            scopes,
        );
        // Devices without a clock learn how long their token lasts from every CONNACK and
        // AUTH 0x00 of a token login.
        let user_properties = token
            .and_then(|t| t.expires_at_ms)
            .map(|ms| {
                let left = ms.saturating_sub(crate::clock::now_ms()) / 1000;
                vec![(TOKEN_EXPIRES_IN.to_string(), left.to_string())]
            })
            .unwrap_or_default();
        Grant {
            identity: user.map(Arc::from),
            data: None,
            user_properties,
            expires_at: token
                .and_then(|t| t.expires_at_ms)
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
            credential: token.map(|t| Arc::from(t.label.as_str())),
            acl: acl.into_shared(),
        }
    }

    /// Checks a token for a client that claims `username` (empty/absent: the token's owner),
    /// on a connection with `certificate`.
    pub(super) async fn check_token(
        &self,
        token: &[u8],
        username: Option<&str>,
        client_id: &str,
        certificate: Option<&ClientCertificate>,
    ) -> AuthStep {
        let Ok(token) = std::str::from_utf8(token) else {
            return fail(ReasonCode::NOT_AUTHORIZED, "invalid token");
        };
        match self.find_token(token.trim(), Source::AuthData).await {
            Ok(Some(p)) => self.accept(p, username, client_id, certificate),
            Ok(None) => fail(
                ReasonCode::NOT_AUTHORIZED,
                "invalid, expired or revoked token",
            ),
            Err(step) => step,
        }
    }

    /// The token, Tessera's own or an issuer's; `Ok(None)` if none knows it, `Err` with the
    /// refusal when an issuer refused it or could not be asked (or the store failed).
    pub(super) async fn find_token(
        &self,
        token: &str,
        source: Source,
    ) -> Result<Option<Presented>, AuthStep> {
        // Tessera's own tokens never hold a dot; a JWT always does.
        if !looks_like_jwt(token) {
            match self.service.validate(token) {
                Ok(Some(info)) => return Ok(Some(info.into())),
                Ok(None) => {}
                Err(e) => return Err(store_unavailable(e)),
            }
            let may_introspect = source == Source::AuthData || !self.auth.password_login;
            if !may_introspect {
                return Ok(None);
            }
        }
        self.external(token).await
    }

    /// Another issuer's token: verified or introspected, then checked against revocations
    /// by `jti`. Counted by issuer and outcome, and audited (issuer, subject, `jti`).
    async fn external(&self, token: &str) -> Result<Option<Presented>, AuthStep> {
        match self.issuers.verify(token).await {
            Verdict::NotExternal => Ok(None),
            Verdict::Refused { issuer, why } => {
                self.issuers.count(issuer.as_deref(), "refused");
                crate::audit::external_token(false, issuer.as_deref(), None, None, None, &why);
                Err(fail(ReasonCode::NOT_AUTHORIZED, &why))
            }
            Verdict::Unavailable { issuer, why } => {
                self.issuers.count(Some(&issuer), "unavailable");
                warn!(issuer, error = %why, "a login waited for its token's issuer in vain");
                Err(fail(
                    ReasonCode::SERVER_UNAVAILABLE,
                    "the token's issuer did not answer in time",
                ))
            }
            Verdict::Accepted(t) => {
                match self.service.is_revoked_external(&t.label) {
                    Ok(false) => {}
                    Ok(true) => {
                        let why = "the token was revoked";
                        self.issuers.count(Some(&t.issuer), "refused");
                        crate::audit::external_token(
                            false,
                            Some(&t.issuer),
                            Some(&t.user),
                            t.jti.as_deref(),
                            Some(secrets::token_id(&t.label)),
                            why,
                        );
                        return Err(fail(ReasonCode::NOT_AUTHORIZED, why));
                    }
                    Err(e) => return Err(store_unavailable(e)),
                }
                self.issuers.count(Some(&t.issuer), "accepted");
                if t.first_seen {
                    crate::audit::external_token(
                        true,
                        Some(&t.issuer),
                        Some(&t.user),
                        t.jti.as_deref(),
                        Some(secrets::token_id(&t.label)),
                        "",
                    );
                }
                Ok(Some(t.into()))
            }
        }
    }

    /// The checks on a live token: its owner is the claimed user, it may log in, and if it
    /// is bound to a certificate (RFC 8705 §3), the connection presented that one.
    pub(super) fn accept(
        &self,
        token: Presented,
        username: Option<&str>,
        client_id: &str,
        certificate: Option<&ClientCertificate>,
    ) -> AuthStep {
        if let Some(bound) = &token.cnf {
            match certificate {
                None => {
                    return fail(
                        ReasonCode::NOT_AUTHORIZED,
                        "the token is bound to a client certificate, and this connection presented none",
                    );
                }
                Some(c) if !secrets::equal(c.thumbprint().as_bytes(), bound.as_bytes()) => {
                    return fail(
                        ReasonCode::NOT_AUTHORIZED,
                        "the token is bound to another client certificate",
                    );
                }
                Some(_) => {}
            }
        }
        if let Some(name) = username.filter(|n| !n.is_empty()) {
            let same = if token.own {
                self.service.local_user(name) == Some(token.user.as_str())
            } else {
                name == token.user
            };
            if !same {
                return fail(
                    ReasonCode::NOT_AUTHORIZED,
                    "the token belongs to another user",
                );
            }
        }
        if !token.scopes.iter().any(|s| s == "sasl_auth" || s == "mqtt") {
            return fail(
                ReasonCode::NOT_AUTHORIZED,
                "the token lacks scope sasl_auth or mqtt",
            );
        }
        let user = token.user.clone();
        AuthStep::Success(self.grant(Some(user), client_id, Some(&token)))
    }
}

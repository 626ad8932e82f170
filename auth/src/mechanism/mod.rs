//! MQTT logins for the broker's authentication seam: `X-OAUTH2` enhanced authentication (the
//! token in CONNECT, or in AUTH after the broker's challenge; re-authentication with a fresh
//! token), the token as the MQTT password, user name and password, a verified TLS client
//! certificate as the login (`auth.certificate_login`), and anonymous clients, each switchable
//! in the configuration. A token is Tessera's own or another issuer's (`auth.issuers`: a JWT,
//! or an opaque token introspected), with the same lifecycle either way. A token bound to a
//! certificate (RFC 8705 §3) is taken only over a connection that presented that
//! certificate, whichever way it comes.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the seam: CONNECT, the two-step exchange, re-authentication; counting, audit, backoff |
//! | `token.rs` | a presented token, own or external, its checks and its grant |
//! | `login.rs` | the password and the client certificate as the login |
//!
//! Reason Strings say what failed (unknown, expired or revoked token, missing scope, another
//! user's token, another certificate) but never whether a user exists.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use crate::audit;
use crate::backoff::Backoff;
use crate::issuers::Issuers;
use crate::secrets;
use crate::service::TokenService;
use bytes::Bytes;
use in_band::Asker;
use tessera_broker::auth::{
    AuthExchange, AuthFailure, AuthStep, Authenticator, BoxFuture, ConnectRequest, ReauthRequest,
};
use tessera_broker::codec::ReasonCode;
use tessera_config::{AccessRules, AuthConfig};

pub const METHOD: &str = "X-OAUTH2";

pub struct OAuthMechanism {
    pub service: Arc<TokenService>,
    pub auth: AuthConfig,
    pub access_publish: AccessRules,
    pub access_subscribe: AccessRules,
    pub backoff: Arc<Backoff>,
    /// Other issuers whose tokens log in (`auth.issuers`).
    pub issuers: Arc<Issuers>,
    /// The OAuth endpoint's issuer URL, set once it listens: in-band onboarding sends devices
    /// to its verification page. Unset while the endpoint is off (`oauth.enabled: false`).
    pub endpoint: Arc<OnceLock<String>>,
}

fn fail(reason: ReasonCode, why: &str) -> AuthStep {
    AuthStep::Failure(AuthFailure::new(reason, why))
}

impl OAuthMechanism {
    /// Settles an authentication that ended: the backoff learns of it, it is counted by
    /// method and result, and written to the audit log.
    fn record(&self, step: &AuthStep, ip: &str, login: &Login<'_>) {
        let (accepted, code, reason, user, token) = match step {
            AuthStep::Success(g) => (
                true,
                0,
                "",
                g.identity.as_deref(),
                g.credential.as_deref().map(secrets::token_id),
            ),
            AuthStep::Failure(f) => (
                false,
                f.reason.0,
                f.reason_string.as_str(),
                login.user,
                None,
            ),
            AuthStep::Continue { .. } => return,
        };
        let result = if accepted {
            "success".to_string()
        } else {
            format!("0x{code:02x}")
        };
        self.service.metrics.login(login.method, result);
        if code == ReasonCode::CONNECTION_RATE_EXCEEDED.0 {
            self.service.metrics.backoff_refused("mqtt");
        }
        audit::login(
            accepted,
            login.method,
            login.client_id,
            user,
            login.peer,
            token,
            code,
            reason,
        );
        match step {
            AuthStep::Success(_) => self.backoff.succeed(ip),
            AuthStep::Failure(f)
                if f.reason == ReasonCode::NOT_AUTHORIZED
                    || f.reason == ReasonCode::BAD_USER_NAME_OR_PASSWORD =>
            {
                self.backoff.fail(ip)
            }
            _ => {}
        }
    }
}

/// The store failed during a login: 0x88 Server unavailable, which the backoff does not count
/// (`OAuthMechanism::record`); the cause is logged, not told.
fn store_unavailable(e: impl std::fmt::Display) -> AuthStep {
    tracing::error!(error = %e, "token store");
    fail(ReasonCode::SERVER_UNAVAILABLE, "token store unavailable")
}

/// Who is logging in, as the audit log and the metrics name it.
struct Login<'a> {
    /// `X-OAUTH2`, `password`, `certificate`, `anonymous` or `other`.
    method: &'static str,
    client_id: &'a str,
    /// The user name the client claimed, if any.
    user: Option<&'a str>,
    peer: IpAddr,
}

/// The label of the method a CONNECT uses.
fn method_label(r: &ConnectRequest, by_certificate: bool) -> &'static str {
    match (r.method.as_deref(), &r.password) {
        (Some(METHOD), _) => METHOD,
        (Some(_), _) => "other",
        (None, Some(_)) => "password",
        (None, None) if by_certificate => "certificate",
        (None, None) => "anonymous",
    }
}

impl OAuthMechanism {
    /// Authentication Data under `X-OAUTH2`: an in-band OAuth request (`in_band.rs`) or a
    /// token, the one `asker` logs in with.
    async fn authentication_data(self: &Arc<Self>, data: &[u8], asker: &Asker) -> AuthStep {
        if let Some(step) = self.in_band(data, asker).await {
            return step;
        }
        self.check_token(
            data,
            asker.username.as_deref(),
            &asker.client_id,
            asker.certificate.as_deref(),
        )
        .await
    }
}

/// The second step of the two-step flow: the token (or an in-band request) arrives in the
/// client's AUTH 0x18.
struct AwaitToken {
    mechanism: Arc<OAuthMechanism>,
    asker: Asker,
    ip: String,
}

impl AuthExchange for AwaitToken {
    fn step(self: Box<Self>, data: Option<Bytes>) -> BoxFuture<'static, AuthStep> {
        Box::pin(async move {
            let step = match data {
                Some(data) if !data.is_empty() => {
                    self.mechanism.authentication_data(&data, &self.asker).await
                }
                _ => fail(ReasonCode::NOT_AUTHORIZED, "no token in AUTH"),
            };
            let login = Login {
                method: METHOD,
                client_id: &self.asker.client_id,
                user: self.asker.username.as_deref(),
                peer: self.asker.peer.ip(),
            };
            self.mechanism.record(&step, &self.ip, &login);
            step
        })
    }
}

/// The broker holds the mechanism as `Arc<dyn Authenticator>`; this wrapper gives the
/// two-step exchange an owned handle.
pub struct OAuthAuthenticator(pub Arc<OAuthMechanism>);

impl Authenticator for OAuthAuthenticator {
    fn connect(&self, r: ConnectRequest) -> BoxFuture<'_, AuthStep> {
        let m = self.0.clone();
        Box::pin(async move {
            let ip = crate::backoff::address_key(r.peer.ip());
            let login = Login {
                method: method_label(&r, m.certificate_login_applies(&r)),
                client_id: &r.client_id,
                user: r.username.as_deref(),
                peer: r.peer.ip(),
            };
            if let Err(wait) = m.backoff.check(&ip) {
                let step = fail(
                    ReasonCode::CONNECTION_RATE_EXCEEDED,
                    &format!(
                        "too many failed logins; retry in {} s",
                        wait.as_secs().max(1)
                    ),
                );
                m.record(&step, &ip, &login);
                return step;
            }
            let step = match r.method.as_deref() {
                Some(METHOD) if m.auth.x_oauth2 => match &r.data {
                    // An onboarding device's wait is counted when its last poll ends.
                    Some(data) if !data.is_empty() => {
                        m.authentication_data(data, &Asker::from(&r)).await
                    }
                    _ => {
                        return AuthStep::Continue {
                            data: None,
                            exchange: Box::new(AwaitToken {
                                mechanism: m.clone(),
                                asker: Asker::from(&r),
                                ip,
                            }),
                        };
                    }
                },
                Some(other) => fail(
                    ReasonCode::BAD_AUTHENTICATION_METHOD,
                    &format!("authentication method {other:?} is not supported"),
                ),
                None => match (&r.username, &r.password) {
                    (user, Some(password)) => {
                        m.password_login(
                            user.as_deref(),
                            password,
                            &r.client_id,
                            r.certificate.as_deref(),
                        )
                        .await
                    }
                    (_, None) if m.certificate_login_applies(&r) => m.certificate_login(&r),
                    (user, None) if m.auth.allow_anonymous => {
                        let user = user.clone().filter(|u| !u.is_empty());
                        AuthStep::Success(m.grant(user, &r.client_id, None))
                    }
                    _ => fail(
                        ReasonCode::NOT_AUTHORIZED,
                        "anonymous clients are not allowed",
                    ),
                },
            };
            m.record(&step, &ip, &login);
            step
        })
    }

    fn reauthenticate(&self, r: ReauthRequest) -> BoxFuture<'_, AuthStep> {
        let m = self.0.clone();
        Box::pin(async move {
            if r.method != METHOD {
                return fail(ReasonCode::BAD_AUTHENTICATION_METHOD, "unknown method");
            }
            let login = Login {
                method: METHOD,
                client_id: &r.client_id,
                user: r.identity.as_deref(),
                peer: r.peer.ip(),
            };
            let ip = crate::backoff::address_key(r.peer.ip());
            let step = match r.data.as_ref().filter(|d| !d.is_empty()) {
                // The fresh token (or the refreshed one) must belong to the same user.
                Some(data) => m.authentication_data(data, &Asker::from(&r)).await,
                None => fail(ReasonCode::NOT_AUTHORIZED, "no token in AUTH"),
            };
            m.record(&step, &ip, &login);
            step
        })
    }
}

mod in_band;
mod login;
#[cfg(test)]
mod tests;
mod token;

//! MQTT logins for the broker's authentication seam: `X-OAUTH2` enhanced authentication (the
//! token in CONNECT, or in AUTH after the broker's challenge; re-authentication with a fresh
//! token), the token as the MQTT password, user name and password, a verified TLS client
//! certificate as the login (`auth.certificate_login`), and anonymous clients, each switchable
//! in the configuration. A token bound to a certificate (RFC 8705 §3) is taken only over a
//! connection that presented that certificate, whichever way it comes.
//!
//! Reason Strings say what failed (unknown, expired or revoked token, missing scope, another
//! user's token, another certificate) but never whether a user exists.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crate::acl::SessionAcl;
use crate::audit;
use crate::backoff::Backoff;
use crate::secrets;
use crate::service::{TokenInfo, TokenService};
use bytes::Bytes;
use tessera_broker::auth::{
    AuthExchange, AuthFailure, AuthStep, Authenticator, BoxFuture, ConnectRequest, Grant,
    ReauthRequest,
};
use tessera_broker::codec::ReasonCode;
use tessera_broker::tls::ClientCertificate;
use tessera_config::{AccessRules, AuthConfig, CertificateLogin};

pub const METHOD: &str = "X-OAUTH2";

pub struct OAuthMechanism {
    pub service: Arc<TokenService>,
    pub auth: AuthConfig,
    pub access_publish: AccessRules,
    pub access_subscribe: AccessRules,
    pub backoff: Arc<Backoff>,
}

fn fail(reason: ReasonCode, why: &str) -> AuthStep {
    AuthStep::Failure(AuthFailure::new(reason, why))
}

impl OAuthMechanism {
    fn grant(&self, user: Option<String>, client_id: &str, token: Option<&TokenInfo>) -> Grant {
        let scopes = token.map(|t| t.scopes.as_slice()).unwrap_or(&[]);
        let acl = SessionAcl::new(
            &self.access_publish,
            &self.access_subscribe,
            user.as_deref(),
            client_id,
            scopes,
        );
        Grant {
            identity: user,
            data: None,
            expires_at: token.map(|t| UNIX_EPOCH + Duration::from_millis(t.expires_at_ms)),
            credential: token.map(|t| t.key.clone()),
            acl: Arc::new(acl),
        }
    }

    /// Checks a token for a client that claims `username` (empty/absent: the token's owner),
    /// on a connection with `certificate`.
    fn check_token(
        &self,
        token: &[u8],
        username: Option<&str>,
        client_id: &str,
        certificate: Option<&ClientCertificate>,
    ) -> AuthStep {
        let Ok(token) = std::str::from_utf8(token) else {
            return fail(ReasonCode::NOT_AUTHORIZED, "invalid token");
        };
        let info = match self.service.validate(token.trim()) {
            Ok(Some(info)) => info,
            Ok(None) => {
                return fail(
                    ReasonCode::NOT_AUTHORIZED,
                    "invalid, expired or revoked token",
                );
            }
            Err(e) => return store_unavailable(e),
        };
        self.accept_token(info, username, client_id, certificate)
    }

    /// The checks on a live token: its owner is the claimed user, it may log in, and if it
    /// is bound to a certificate (RFC 8705 §3), the connection presented that one.
    fn accept_token(
        &self,
        info: TokenInfo,
        username: Option<&str>,
        client_id: &str,
        certificate: Option<&ClientCertificate>,
    ) -> AuthStep {
        if let Some(bound) = &info.cnf {
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
        if let Some(name) = username.filter(|n| !n.is_empty())
            && self.service.local_user(name) != Some(info.user.as_str())
        {
            return fail(
                ReasonCode::NOT_AUTHORIZED,
                "the token belongs to another user",
            );
        }
        if !info.scopes.iter().any(|s| s == "sasl_auth" || s == "mqtt") {
            return fail(
                ReasonCode::NOT_AUTHORIZED,
                "the token lacks scope sasl_auth or mqtt",
            );
        }
        let user = info.user.clone();
        AuthStep::Success(self.grant(Some(user), client_id, Some(&info)))
    }

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

impl OAuthMechanism {
    /// Whether a CONNECT logs in with its certificate: `auth.certificate_login` is on, and
    /// the client presented a verified certificate and no other credential.
    fn certificate_login_applies(&self, r: &ConnectRequest) -> bool {
        self.auth.certificate_login != CertificateLogin::None
            && r.method.is_none()
            && r.password.is_none()
            && r.certificate.as_ref().is_some_and(|c| c.chained)
    }

    /// The login a certificate names (mosquitto's `use_identity_as_username`): the user its
    /// Common Name or first SAN DNS name / URI names, with that user's topic rights. A client
    /// that also sends a user name must send that one.
    fn certificate_login(&self, r: &ConnectRequest) -> AuthStep {
        let Some(cert) = r.certificate.as_deref() else {
            return fail(ReasonCode::NOT_AUTHORIZED, "no client certificate");
        };
        let named = match self.auth.certificate_login {
            CertificateLogin::None => None,
            CertificateLogin::Cn => cert.common_name.as_deref(),
            CertificateLogin::SanDns => cert.dns_names.first().map(String::as_str),
            CertificateLogin::SanUri => cert.uris.first().map(String::as_str),
        };
        let Some(user) = named.and_then(|n| self.service.local_user(n)) else {
            return fail(
                ReasonCode::NOT_AUTHORIZED,
                "the client certificate names no user who may log in",
            );
        };
        if let Some(claimed) = r.username.as_deref().filter(|u| !u.is_empty())
            && self.service.local_user(claimed) != Some(user)
        {
            return fail(
                ReasonCode::NOT_AUTHORIZED,
                "the user name is not the one the client certificate names",
            );
        }
        match self.service.user_exists(user) {
            Ok(true) => AuthStep::Success(self.grant(Some(user.to_string()), &r.client_id, None)),
            Ok(false) => fail(
                ReasonCode::NOT_AUTHORIZED,
                "the client certificate names no user who may log in",
            ),
            Err(e) => store_unavailable(e),
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

/// The second step of the two-step flow: the token arrives in the client's AUTH 0x18.
struct AwaitToken {
    mechanism: Arc<OAuthMechanism>,
    username: Option<String>,
    client_id: String,
    ip: String,
    peer: IpAddr,
    certificate: Option<Arc<ClientCertificate>>,
}

impl AuthExchange for AwaitToken {
    fn step(self: Box<Self>, data: Option<Bytes>) -> BoxFuture<'static, AuthStep> {
        Box::pin(async move {
            let step = match data {
                Some(token) if !token.is_empty() => self.mechanism.check_token(
                    &token,
                    self.username.as_deref(),
                    &self.client_id,
                    self.certificate.as_deref(),
                ),
                _ => fail(ReasonCode::NOT_AUTHORIZED, "no token in AUTH"),
            };
            let login = Login {
                method: METHOD,
                client_id: &self.client_id,
                user: self.username.as_deref(),
                peer: self.peer,
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
                    Some(token) if !token.is_empty() => m.check_token(
                        token,
                        r.username.as_deref(),
                        &r.client_id,
                        r.certificate.as_deref(),
                    ),
                    _ => {
                        return AuthStep::Continue {
                            data: None,
                            exchange: Box::new(AwaitToken {
                                mechanism: m.clone(),
                                username: r.username.clone(),
                                client_id: r.client_id.clone(),
                                ip,
                                peer: r.peer.ip(),
                                certificate: r.certificate.clone(),
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
                // The fresh token must belong to the same user.
                Some(token) => m.check_token(
                    token,
                    r.identity.as_deref(),
                    &r.client_id,
                    r.certificate.as_deref(),
                ),
                None => fail(ReasonCode::NOT_AUTHORIZED, "no token in AUTH"),
            };
            m.record(&step, &ip, &login);
            step
        })
    }
}

impl OAuthMechanism {
    /// A CONNECT with a password: the password may be an access token, or the user's password.
    async fn password_login(
        self: &Arc<Self>,
        user: Option<&str>,
        password: &Bytes,
        client_id: &str,
        certificate: Option<&ClientCertificate>,
    ) -> AuthStep {
        if self.auth.token_as_password
            && let Ok(token) = std::str::from_utf8(password)
        {
            match self.service.validate(token) {
                Ok(Some(info)) => return self.accept_token(info, user, client_id, certificate),
                Ok(None) => {}
                Err(e) => return store_unavailable(e),
            }
        }
        if !self.auth.password_login {
            return fail(
                ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                "invalid token, and password logins are disabled",
            );
        }
        let Some(user) = user
            .and_then(|u| self.service.local_user(u))
            .map(str::to_string)
        else {
            return fail(
                ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                "bad user name or password",
            );
        };
        if let Err(wait) = self.backoff.check(&crate::backoff::user_key(&user)) {
            return fail(
                ReasonCode::CONNECTION_RATE_EXCEEDED,
                &format!(
                    "too many failed logins; retry in {} s",
                    wait.as_secs().max(1)
                ),
            );
        }
        let Ok(password) = String::from_utf8(password.to_vec()) else {
            return fail(
                ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                "bad user name or password",
            );
        };
        let service = self.service.clone();
        let name = user.clone();
        let checked =
            tokio::task::spawn_blocking(move || service.check_password(&name, &password)).await;
        let ok = match checked {
            Ok(Ok(ok)) => ok,
            // An outage is not a wrong password: 0x88, and the backoff counts nothing.
            Ok(Err(e)) => return store_unavailable(e),
            Err(e) => return store_unavailable(e),
        };
        if ok {
            self.backoff.succeed(&crate::backoff::user_key(&user));
            AuthStep::Success(self.grant(Some(user), client_id, None))
        } else {
            self.backoff.fail(&crate::backoff::user_key(&user));
            fail(
                ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                "bad user name or password",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Bucket;
    use crate::service::test_support::service_with_outage;
    use tessera_broker::codec::Version;

    fn password_connect(user: &str, password: &str) -> ConnectRequest {
        ConnectRequest {
            client_id: "c".into(),
            username: Some(user.into()),
            password: Some(Bytes::from(password.to_string())),
            method: None,
            data: None,
            peer: "192.0.2.7:50000".parse().unwrap(),
            transport: "tcp",
            version: Version::V5,
            certificate: None,
        }
    }

    fn refused_with(step: &AuthStep) -> ReasonCode {
        match step {
            AuthStep::Failure(f) => f.reason,
            AuthStep::Success(_) => panic!("logged in"),
            AuthStep::Continue { .. } => panic!("asked for more"),
        }
    }

    #[tokio::test]
    async fn a_store_outage_is_not_a_bad_password_and_counts_toward_no_backoff() {
        let (_dir, service, outage) = service_with_outage();
        service.add_user("alice", "right").unwrap();
        let backoff = Arc::new(Backoff::new(2));
        let auth = OAuthAuthenticator(Arc::new(OAuthMechanism {
            service,
            auth: AuthConfig::default(),
            access_publish: AccessRules::default(),
            access_subscribe: AccessRules::default(),
            backoff: backoff.clone(),
        }));
        outage.fail(&[Bucket::Users]);
        for _ in 0..5 {
            let step = auth.connect(password_connect("alice", "right")).await;
            assert_eq!(refused_with(&step), ReasonCode::SERVER_UNAVAILABLE);
        }
        assert!(backoff.check(&crate::backoff::user_key("alice")).is_ok());
        assert!(
            backoff
                .check(&crate::backoff::address_key([192, 0, 2, 7].into()))
                .is_ok()
        );
        // Back up: the right password logs in at once, a wrong one is a bad password.
        outage.fail(&[]);
        let step = auth.connect(password_connect("alice", "right")).await;
        assert!(matches!(step, AuthStep::Success(_)));
        let step = auth.connect(password_connect("alice", "wrong")).await;
        assert_eq!(refused_with(&step), ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    }
}

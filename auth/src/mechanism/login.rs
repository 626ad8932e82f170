//! Logins without a token: the user's password (checked with argon2 on the blocking pool,
//! with the per-user backoff), which may also be a token (Tessera's own, or another issuer's),
//! and a verified client certificate naming a user (`auth.certificate_login`).

use std::sync::Arc;

use bytes::Bytes;
use tessera_broker::auth::{AuthStep, ConnectRequest};
use tessera_broker::codec::ReasonCode;
use tessera_broker::tls::ClientCertificate;
use tessera_config::CertificateLogin;

use super::token::Source;
use super::{OAuthMechanism, fail, store_unavailable};

fn is_unavailable(step: &AuthStep) -> bool {
    matches!(step, AuthStep::Failure(f) if f.reason == ReasonCode::SERVER_UNAVAILABLE)
}

impl OAuthMechanism {
    /// Whether a CONNECT logs in with its certificate: `auth.certificate_login` is on, and
    /// the client presented a verified certificate and no other credential.
    pub(super) fn certificate_login_applies(&self, r: &ConnectRequest) -> bool {
        self.auth.certificate_login != CertificateLogin::None
            && r.method.is_none()
            && r.password.is_none()
            && r.certificate.as_ref().is_some_and(|c| c.chained)
    }

    /// The login a certificate names (mosquitto's `use_identity_as_username`): the user its
    /// Common Name or first SAN DNS name / URI names, with that user's topic rights. A client
    /// that also sends a user name must send that one.
    pub(super) fn certificate_login(&self, r: &ConnectRequest) -> AuthStep {
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

impl OAuthMechanism {
    /// A CONNECT with a password: the password may be an access token, or the user's password.
    pub(super) async fn password_login(
        self: &Arc<Self>,
        user: Option<&str>,
        password: &Bytes,
        client_id: &str,
        certificate: Option<&ClientCertificate>,
    ) -> AuthStep {
        if self.auth.token_as_password
            && let Ok(token) = std::str::from_utf8(password)
        {
            match self.find_token(token, Source::Password).await {
                Ok(Some(p)) => return self.accept(p, user, client_id, certificate),
                Ok(None) => {}
                // Another issuer refused it: with passwords on, it may still be a password.
                Err(refused) if self.auth.password_login && !is_unavailable(&refused) => {}
                Err(step) => return step,
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

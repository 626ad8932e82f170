//! OAuth requests inside `X-OAUTH2`, for a device whose only network stack is MQTT: its
//! Authentication Data is either a bare access token or an `application/x-www-form-urlencoded`
//! OAuth request beginning with `grant_type=` (a token never holds `=`, so the two never
//! collide).
//!
//! - **Refresh** (CONNECT, the AUTH 0x18 after the broker's challenge, or a re-authentication):
//!   `grant_type=refresh_token&refresh_token=R&client_id=C[&client_secret=S][&scope=..]`. The
//!   refresh grant runs by the rules of `/oauth/token` (client authentication, rotation, reuse
//!   revoking the family, certificate binding); the connection logs in with the new access
//!   token, and the CONNACK / AUTH 0x00 carries the RFC 6749 §5.1 JSON.
//! - **Onboarding** (CONNECT only): `grant_type=urn:ietf:params:oauth:grant-type:device_code&
//!   client_id=C[&scope=S]` starts RFC 8628 for client C. AUTH 0x18 carries the §3.2 JSON
//!   without the device code, which stays with the connection ([`DevicePoll`]); each empty AUTH
//!   0x18 from the client is a poll, answered with `authorization_pending` / `slow_down` until
//!   a person approves (CONNACK 0x00 with the token JSON) or denies, or the code expires
//!   (CONNACK 0x87).
//!
//! Failures are CONNACK 0x87 (a re-authentication: DISCONNECT 0x87) whose Reason String starts
//! with the RFC's error code (`invalid_grant: ...`); 0x88 when the store failed. Never a token
//! in either. Refresh tokens and device codes cross only TLS or a loopback listener, unless
//! `oauth.in_band_over_plain` says otherwise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use tessera_broker::auth::{AuthExchange, AuthStep, BoxFuture, ConnectRequest, ReauthRequest};
use tessera_broker::codec::ReasonCode;
use tessera_broker::tls::ClientCertificate;

use super::{Login, METHOD, OAuthMechanism, fail, store_unavailable};
use crate::http::OAuthError;
use crate::kv::KvError;
use crate::service::onboarding::{Pending, Slot};
use crate::service::{ClientCheck, Issued, ServiceError, ServiceResult, TokenService};

pub const REFRESH: &str = "refresh_token";
pub const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// An OAuth request in Authentication Data.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Request {
    Refresh {
        refresh_token: String,
        client: ClientCredentials,
        scope: Vec<String>,
    },
    Device {
        client: ClientCredentials,
        scope: Vec<String>,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct ClientCredentials {
    id: Option<String>,
    secret: Option<String>,
}

/// `None`: the data is not a form (a bare token). `Some(Err)`: a form the broker refuses, with
/// the RFC 6749 error to say.
pub(super) fn parse(data: &[u8]) -> Option<Result<Request, String>> {
    if !data.starts_with(b"grant_type=") {
        return None;
    }
    Some(parse_form(data))
}

fn parse_form(data: &[u8]) -> Result<Request, String> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(data) {
        // RFC 6749 §3.2: no parameter twice; one without a value is as if omitted.
        if fields.iter().any(|(seen, _)| *seen == k) {
            return Err(format!("invalid_request: {k} is given twice"));
        }
        if !v.is_empty() {
            fields.push((k.into_owned(), v.into_owned()));
        }
    }
    let mut take = |name: &str| {
        fields
            .iter()
            .position(|(k, _)| k == name)
            .map(|i| fields.swap_remove(i).1)
    };
    let client = ClientCredentials {
        id: take("client_id"),
        secret: take("client_secret"),
    };
    let scope = take("scope")
        .map(|s| {
            s.split(' ')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    match take("grant_type").as_deref() {
        Some(REFRESH) => Ok(Request::Refresh {
            refresh_token: take("refresh_token")
                .ok_or("invalid_request: refresh_token is required")?,
            client,
            scope,
        }),
        Some(DEVICE_CODE) => Ok(Request::Device { client, scope }),
        _ => Err(
            "unsupported_grant_type: in-band grants are refresh_token and device_code".to_string(),
        ),
    }
}

/// Who sends an in-band request, and over what.
#[derive(Clone)]
pub(super) struct Asker {
    pub client_id: String,
    /// The user the CONNECT claims, or the session's at a re-authentication: the new token
    /// must be that user's.
    pub username: Option<String>,
    pub peer: SocketAddr,
    pub transport: &'static str,
    pub listener: SocketAddr,
    pub certificate: Option<Arc<ClientCertificate>>,
    /// Onboarding is for CONNECT; a session already has a user.
    pub at_connect: bool,
}

impl From<&ConnectRequest> for Asker {
    fn from(r: &ConnectRequest) -> Asker {
        Asker {
            client_id: r.client_id.clone(),
            username: r.username.clone(),
            peer: r.peer,
            transport: r.transport,
            listener: r.listener,
            certificate: r.certificate.clone(),
            at_connect: true,
        }
    }
}

impl From<&ReauthRequest> for Asker {
    fn from(r: &ReauthRequest) -> Asker {
        Asker {
            client_id: r.client_id.clone(),
            username: r.identity.clone(),
            peer: r.peer,
            transport: r.transport,
            listener: r.listener,
            certificate: r.certificate.clone(),
            at_connect: false,
        }
    }
}

impl Asker {
    fn thumbprint(&self) -> Option<String> {
        self.certificate.as_ref().map(|c| c.thumbprint())
    }

    /// Refresh tokens and device codes are secrets that outlive the connection: they cross
    /// only a TLS listener, or one only this machine reaches.
    fn channel_refusal(&self, over_plain: bool) -> Option<&'static str> {
        let private = matches!(self.transport, "tls" | "wss") || self.listener.ip().is_loopback();
        (!private && !over_plain).then_some(
            "refresh tokens and onboarding are taken only over TLS or on a loopback listener \
             (oauth.in_band_over_plain)",
        )
    }
}

/// A failed grant as the client sees it: 0x87 with `error: description`, or 0x88 when the
/// store failed.
fn refused(e: ServiceError) -> AuthStep {
    if matches!(e, ServiceError::Storage(_)) {
        return store_unavailable(e);
    }
    let e = OAuthError::from(e);
    fail(
        ReasonCode::NOT_AUTHORIZED,
        &format!("{}: {}", e.error.as_str(), e.description),
    )
}

/// Runs `work` on tokio's blocking pool (redb and argon2 hold the thread).
async fn blocking<T: Send + 'static>(
    service: &Arc<TokenService>,
    work: impl FnOnce(&TokenService) -> ServiceResult<T> + Send + 'static,
) -> ServiceResult<T> {
    let service = service.clone();
    tokio::task::spawn_blocking(move || work(&service))
        .await
        .unwrap_or_else(|e| Err(ServiceError::Storage(KvError::Storage(e.to_string()))))
}

impl OAuthMechanism {
    /// Answers an in-band OAuth request; `None` if `data` is a bare token.
    pub(super) async fn in_band(self: &Arc<Self>, data: &[u8], asker: &Asker) -> Option<AuthStep> {
        let request = match parse(data)? {
            Ok(r) => r,
            Err(why) => return Some(fail(ReasonCode::NOT_AUTHORIZED, &why)),
        };
        if let Some(why) = asker.channel_refusal(self.service.config.in_band_over_plain) {
            return Some(fail(ReasonCode::NOT_AUTHORIZED, why));
        }
        Some(match request {
            Request::Refresh {
                refresh_token,
                client,
                scope,
            } => self.refresh(refresh_token, client, scope, asker).await,
            Request::Device { client, scope } if asker.at_connect => {
                self.onboard(client, scope, asker).await
            }
            Request::Device { .. } => fail(
                ReasonCode::NOT_AUTHORIZED,
                "invalid_request: onboarding is for CONNECT; this session has its user",
            ),
        })
    }

    /// The client of a token request, checked as `/oauth/token` checks it.
    async fn client(&self, c: ClientCredentials, asker: &Asker) -> Result<ClientCheck, AuthStep> {
        let certificate = asker.certificate.clone();
        match blocking(&self.service, move |s| {
            s.check_client(c.id, c.secret, certificate.as_deref())
        })
        .await
        {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(no)) => Err(fail(
                ReasonCode::NOT_AUTHORIZED,
                &format!("invalid_client: {}", no.0),
            )),
            Err(e) => Err(refused(e)),
        }
    }

    /// RFC 6749 §6 in-band: the new access token logs the connection in.
    async fn refresh(
        &self,
        refresh_token: String,
        client: ClientCredentials,
        scope: Vec<String>,
        asker: &Asker,
    ) -> AuthStep {
        let client = match self.client(client, asker).await {
            Ok(c) => c,
            Err(step) => return step,
        };
        let client_id = client.id().map(str::to_string);
        let narrower = Some(scope).filter(|s| !s.is_empty());
        let bound_to = asker.thumbprint();
        let username = asker.username.clone();
        // The new pair must be able to log this connection in: checked before the refresh
        // token is spent (`refresh_for`), so a mistaken request costs the device nothing.
        let issued = blocking(&self.service, move |s| {
            let serves = |user: &str, scopes: &[String]| {
                if let Some(name) = username.as_deref().filter(|n| !n.is_empty())
                    && s.local_user(name) != Some(user)
                {
                    return Err("the refresh token belongs to another user");
                }
                if !scopes.iter().any(|s| s == "sasl_auth" || s == "mqtt") {
                    return Err("the refresh token's scopes do not include mqtt");
                }
                Ok(())
            };
            s.refresh_for(
                &refresh_token,
                client_id.as_deref(),
                narrower,
                bound_to.as_deref(),
                serves,
            )
        })
        .await;
        match issued {
            Ok(t) => self.log_in_with("refresh_token", t, asker),
            Err(e) => refused(e),
        }
    }

    /// Newly issued tokens: counted, audited with `transport=mqtt`, and the connection logged
    /// in with the access token; the grant carries their RFC 6749 §5.1 JSON.
    fn log_in_with(&self, grant_type: &'static str, t: Issued, asker: &Asker) -> AuthStep {
        self.service.record_issued("mqtt", grant_type, &t);
        let token = match self.service.validate(&t.access_token) {
            Ok(Some(info)) => info,
            Ok(None) => {
                return fail(
                    ReasonCode::NOT_AUTHORIZED,
                    "invalid_grant: the new token is gone",
                );
            }
            Err(e) => return store_unavailable(e),
        };
        let mut step = self.accept(
            token.into(),
            asker.username.as_deref(),
            &asker.client_id,
            asker.certificate.as_deref(),
        );
        if let AuthStep::Success(g) = &mut step {
            g.data = serde_json::to_vec(&t).ok().map(Bytes::from);
        }
        step
    }

    /// RFC 8628 in-band: a code pair for client C, the user code sent in AUTH 0x18.
    async fn onboard(
        self: &Arc<Self>,
        client: ClientCredentials,
        scope: Vec<String>,
        asker: &Asker,
    ) -> AuthStep {
        let Some(issuer) = self.endpoint.get().cloned() else {
            return fail(
                ReasonCode::NOT_AUTHORIZED,
                "unsupported_grant_type: onboarding needs the OAuth endpoint's verification page (oauth.enabled)",
            );
        };
        let address = crate::backoff::address_key(asker.peer.ip());
        if !self.service.onboardings.has_room(&address) {
            return too_many();
        }
        let oauth_client = match self
            .client(client, asker)
            .await
            .map(|c| c.id().map(String::from))
        {
            Ok(Some(id)) => id,
            Ok(None) => {
                return fail(
                    ReasonCode::NOT_AUTHORIZED,
                    "invalid_request: client_id is required",
                );
            }
            Err(step) => return step,
        };
        let id = oauth_client.clone();
        let g = match blocking(&self.service, move |s| {
            let scopes = s.check_scopes(&scope)?;
            s.start_device(id, scopes)
        })
        .await
        {
            Ok(g) => g,
            Err(e) => return refused(e),
        };
        let now = crate::clock::now_ms();
        let Some(slot) = self.service.onboardings.begin(
            address,
            Pending {
                client_id: asker.client_id.clone(),
                oauth_client: oauth_client.clone(),
                peer: asker.peer.ip(),
                transport: asker.transport,
                user_code: g.user_code.clone(),
                started_ms: now,
                expires_ms: now + g.expires_in * 1000,
            },
        ) else {
            return too_many();
        };
        let uri = format!("{issuer}/oauth/device");
        let answer = json!({
            "user_code": g.user_code,
            "verification_uri": uri,
            "verification_uri_complete": format!("{uri}?user_code={}", g.user_code),
            "expires_in": g.expires_in,
            "interval": g.interval,
        });
        AuthStep::Continue {
            data: Some(Bytes::from(answer.to_string())),
            exchange: Box::new(DevicePoll {
                mechanism: self.clone(),
                device_code: g.device_code,
                oauth_client,
                asker: asker.clone(),
                expires: Instant::now() + Duration::from_secs(g.expires_in),
                interval: Duration::from_secs(g.interval),
                _slot: slot,
            }),
        }
    }
}

fn too_many() -> AuthStep {
    fail(
        ReasonCode::QUOTA_EXCEEDED,
        "too many devices are onboarding from this address; retry later",
    )
}

/// A device waiting for a person: each AUTH 0x18 it sends is a poll (RFC 8628 §3.4).
struct DevicePoll {
    mechanism: Arc<OAuthMechanism>,
    /// Never leaves the broker: the connection is the device's proof.
    device_code: String,
    oauth_client: String,
    asker: Asker,
    expires: Instant,
    interval: Duration,
    /// Its place among the pending exchanges, released when the last poll ends.
    _slot: Slot,
}

impl AuthExchange for DevicePoll {
    fn step(self: Box<Self>, _data: Option<Bytes>) -> BoxFuture<'static, AuthStep> {
        Box::pin(async move {
            let m = self.mechanism.clone();
            let step = if Instant::now() >= self.expires {
                fail(
                    ReasonCode::NOT_AUTHORIZED,
                    "expired_token: nobody approved the device in time",
                )
            } else {
                let (code, client, bound_to) = (
                    self.device_code.clone(),
                    self.oauth_client.clone(),
                    self.asker.thumbprint(),
                );
                let polled = blocking(&m.service, move |s| {
                    s.poll_device(&code, &client, bound_to.as_deref())
                })
                .await;
                match polled {
                    Ok(t) => m.log_in_with("device_code", t, &self.asker),
                    Err(e @ (ServiceError::DevicePending | ServiceError::DeviceSlowDown)) => {
                        let error = OAuthError::from(e).error.as_str();
                        return AuthStep::Continue {
                            data: Some(Bytes::from(json!({ "error": error }).to_string())),
                            exchange: self,
                        };
                    }
                    Err(e) => refused(e),
                }
            };
            let login = Login {
                method: METHOD,
                client_id: &self.asker.client_id,
                user: self.asker.username.as_deref(),
                peer: self.asker.peer.ip(),
            };
            m.record(
                &step,
                &crate::backoff::address_key(self.asker.peer.ip()),
                &login,
            );
            step
        })
    }

    /// Until the code expires, and a last poll after it to say so.
    fn answer_within(&self) -> Option<Duration> {
        Some(
            self.expires.saturating_duration_since(Instant::now())
                + self.interval
                + Duration::from_secs(10),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str) -> ClientCredentials {
        ClientCredentials {
            id: Some(id.into()),
            secret: None,
        }
    }

    #[test]
    fn a_bare_token_is_not_a_form() {
        assert!(parse(b"c2VjcmV0LXRva2Vu").is_none());
        assert!(parse(b"eyJhbGciOiJFUzI1NiJ9.e30.sig").is_none());
    }

    #[test]
    fn the_two_grants_are_read_with_their_fields() {
        let r = parse(b"grant_type=refresh_token&refresh_token=R%2B1&client_id=dev&scope=mqtt+x")
            .unwrap()
            .unwrap();
        assert_eq!(
            r,
            Request::Refresh {
                refresh_token: "R+1".into(),
                client: client("dev"),
                scope: vec!["mqtt".into(), "x".into()],
            }
        );
        let d = parse(
            b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&client_id=tv",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            d,
            Request::Device {
                client: client("tv"),
                scope: vec![]
            }
        );
    }

    #[test]
    fn bad_forms_say_the_rfc_error() {
        let e = |d: &[u8]| parse(d).unwrap().unwrap_err();
        assert!(e(b"grant_type=refresh_token&client_id=a").starts_with("invalid_request:"));
        assert!(
            e(b"grant_type=refresh_token&refresh_token=a&refresh_token=b")
                .starts_with("invalid_request: refresh_token is given twice")
        );
        assert!(
            e(b"grant_type=password&username=u&password=p").starts_with("unsupported_grant_type:")
        );
        assert!(e(b"grant_type=").starts_with("unsupported_grant_type:"));
    }

    #[test]
    fn secrets_cross_only_tls_or_loopback() {
        let asker = |transport, listener: &str| Asker {
            client_id: "c".into(),
            username: None,
            peer: "192.0.2.7:4000".parse().unwrap(),
            transport,
            listener: listener.parse().unwrap(),
            certificate: None,
            at_connect: true,
        };
        assert!(
            asker("tcp", "0.0.0.0:1883")
                .channel_refusal(false)
                .is_some()
        );
        assert!(asker("ws", "[::]:8080").channel_refusal(false).is_some());
        assert!(asker("tcp", "0.0.0.0:1883").channel_refusal(true).is_none());
        assert!(
            asker("tls", "0.0.0.0:8883")
                .channel_refusal(false)
                .is_none()
        );
        assert!(
            asker("wss", "0.0.0.0:8884")
                .channel_refusal(false)
                .is_none()
        );
        assert!(
            asker("tcp", "127.0.0.1:1883")
                .channel_refusal(false)
                .is_none()
        );
        assert!(asker("tcp", "[::1]:1883").channel_refusal(false).is_none());
    }
}

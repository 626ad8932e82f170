//! `POST /oauth/token` (password, client_credentials, refresh_token, authorization_code and
//! device_code grants), `POST /oauth/revoke` (RFC 7009), `POST /oauth/introspect` (RFC 7662),
//! and the RFC 8414 metadata document.

use axum::Extension;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{
    AppState, ClientCheck, ErrorCode, OAuthError, Peer, PeerCertificate, check_client,
    client_credentials, client_id_of, json_response,
};
use crate::model::ClientKind;
use crate::service::{Issued, ServiceError};

#[derive(Debug, Deserialize, Default)]
pub struct TokenForm {
    grant_type: Option<String>,
    username: Option<String>,
    password: Option<String>,
    scope: Option<String>,
    ttl: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    device_code: Option<String>,
}

pub fn form_error(e: FormRejection) -> OAuthError {
    OAuthError::invalid_request(format!("bad form: {}", e.body_text()))
}

pub fn issued_json(t: &Issued) -> Response {
    let mut v = json!({
        "access_token": t.access_token,
        "token_type": t.token_type,
        "scope": t.scope,
        "expires_in": t.expires_in,
    });
    if let Some(r) = &t.refresh_token {
        v["refresh_token"] = json!(r);
    }
    json_response(v)
}

/// One token request: who asks, and over what.
struct Asker {
    peer: std::net::SocketAddr,
    id: Option<String>,
    secret: Option<String>,
    /// The TLS client certificate of the request: it may authenticate the client (RFC 8705
    /// §2), and every token issued is bound to it (§3).
    certificate: PeerCertificate,
}

impl Asker {
    async fn client(&mut self, state: &AppState) -> Result<ClientCheck, OAuthError> {
        check_client(
            state,
            self.id.take(),
            self.secret.take(),
            self.certificate.0.as_ref(),
        )
        .await
    }
}

pub async fn token(
    State(state): State<AppState>,
    Extension(Peer(peer)): Extension<Peer>,
    certificate: Option<Extension<PeerCertificate>>,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Result<Response, OAuthError> {
    let Form(f) = form.map_err(form_error)?;
    let (id, secret) =
        client_credentials(&headers, f.client_id.as_deref(), f.client_secret.as_deref())?;
    let asker = Asker {
        peer,
        id,
        secret,
        certificate: certificate.map(|Extension(c)| c).unwrap_or_default(),
    };
    match f.grant_type.as_deref() {
        Some("password") => password_grant(&state, asker, f).await,
        Some("client_credentials") => client_credentials_grant(&state, asker, f).await,
        Some("refresh_token") => refresh_grant(&state, asker, f).await,
        Some("authorization_code") => code_grant(&state, asker, f).await,
        Some("urn:ietf:params:oauth:grant-type:device_code") => {
            device_grant(&state, asker, f).await
        }
        Some(_) => Err(OAuthError::new(
            ErrorCode::UnsupportedGrantType,
            "unsupported grant_type",
        )),
        None => Err(OAuthError::invalid_request("grant_type is required")),
    }
}

/// What the token endpoint reads of a request before any grant: the form as axum's extractor
/// decodes it, the client credentials (Basic or form), `ttl` and `scope`; a refusal as the
/// RFC 6749 error response. The fuzz target `oauth_form` drives it with arbitrary bytes.
pub(crate) async fn read_token_request(request: axum::extract::Request) -> Response {
    use axum::extract::FromRequest;
    let headers = request.headers().clone();
    let outcome = async {
        let Form(f) = Form::<TokenForm>::from_request(request, &())
            .await
            .map_err(form_error)?;
        client_credentials(&headers, f.client_id.as_deref(), f.client_secret.as_deref())?;
        parse_ttl(&f.ttl)?;
        let _ = super::parse_scope(&f.scope);
        Ok::<_, OAuthError>(())
    }
    .await;
    match outcome {
        Ok(()) => json_response(json!({})),
        Err(e) => e.into_response(),
    }
}

fn parse_ttl(ttl: &Option<String>) -> Result<Option<u64>, OAuthError> {
    match ttl.as_deref() {
        None | Some("") => Ok(None),
        Some(t) => t
            .parse::<u64>()
            .map(Some)
            .map_err(|_| OAuthError::invalid_request("ttl must be a number of seconds")),
    }
}

async fn password_grant(
    state: &AppState,
    mut asker: Asker,
    f: TokenForm,
) -> Result<Response, OAuthError> {
    let peer = asker.peer;
    let client = asker.client(state).await?;
    let bound_to = asker.certificate.thumbprint();
    if let ClientCheck::Registered { client, .. } = &client
        && client.kind != ClientKind::Confidential
    {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            "the password grant is for confidential (first-party) clients",
        ));
    }
    let (Some(username), Some(password)) = (f.username.as_deref(), f.password.clone()) else {
        return Err(OAuthError::invalid_request(
            "username and password are required",
        ));
    };
    let Some(user) = state.service.local_user(username).map(str::to_string) else {
        return Err(OAuthError::invalid_request("bad user name"));
    };
    let ip_key = crate::backoff::address_key(peer.ip());
    let user_key = crate::backoff::user_key(&user);
    for key in [&ip_key, &user_key] {
        if let Err(wait) = state.backoff.check(key) {
            state.service.metrics.backoff_refused("http");
            return Err(OAuthError::slow_down(wait));
        }
    }
    let scopes = state.service.check_scopes(&super::parse_scope(&f.scope))?;
    let ttl = parse_ttl(&f.ttl)?;
    let client_id = client.id().map(str::to_string);
    let name = user.clone();
    /// What a password grant came to.
    enum Outcome {
        BadLogin,
        /// The user may not obtain tokens (`oauth_access`).
        NotAllowed,
        Issued(Issued),
    }
    let outcome = state
        .blocking(move |service| {
            if !service.check_password(&name, &password)? {
                return Ok(Outcome::BadLogin);
            }
            if !service.may_obtain_tokens(&name) {
                return Ok(Outcome::NotAllowed);
            }
            service
                .issue(
                    &name,
                    client_id.as_deref(),
                    scopes,
                    ttl,
                    true,
                    bound_to.as_deref(),
                )
                .map(Outcome::Issued)
        })
        .await??;
    match outcome {
        Outcome::BadLogin => {
            state.backoff.fail(&ip_key);
            state.backoff.fail(&user_key);
            crate::audit::http_login_refused("password_grant", &user, peer.ip(), "bad password");
            Err(OAuthError::new(
                ErrorCode::InvalidGrant,
                "bad user name or password",
            ))
        }
        Outcome::NotAllowed => Err(OAuthError::new(ErrorCode::InvalidGrant, "access denied")),
        Outcome::Issued(t) => {
            state.backoff.succeed(&ip_key);
            state.backoff.succeed(&user_key);
            Ok(state.issued("password", &t))
        }
    }
}

async fn client_credentials_grant(
    state: &AppState,
    mut asker: Asker,
    f: TokenForm,
) -> Result<Response, OAuthError> {
    let bound_to = asker.certificate.thumbprint();
    let ClientCheck::Registered {
        client,
        authenticated: true,
    } = asker.client(state).await?
    else {
        return Err(OAuthError::invalid_client(
            "client_credentials needs an authenticated registered client",
        ));
    };
    let Some(user) = client.service_user.clone() else {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            "this client is not bound to a device or service user",
        ));
    };
    let scopes = state.service.check_scopes(&super::parse_scope(&f.scope))?;
    let ttl = parse_ttl(&f.ttl)?;
    let t = state
        .blocking(move |service| {
            if !service.user_exists(&user)? {
                return Err(ServiceError::UnknownUser(user));
            }
            // RFC 6749 §4.4.3: no refresh token for client credentials.
            service.issue(
                &user,
                Some(&client.id),
                scopes,
                ttl,
                false,
                bound_to.as_deref(),
            )
        })
        .await??;
    Ok(state.issued("client_credentials", &t))
}

async fn refresh_grant(
    state: &AppState,
    mut asker: Asker,
    f: TokenForm,
) -> Result<Response, OAuthError> {
    let bound_to = asker.certificate.thumbprint();
    let client = asker.client(state).await?;
    let Some(rt) = f.refresh_token else {
        return Err(OAuthError::invalid_request("refresh_token is required"));
    };
    let narrower = Some(super::parse_scope(&f.scope)).filter(|s| !s.is_empty());
    let client_id = client.id().map(str::to_string);
    let t = state
        .blocking(move |service| {
            service.refresh(&rt, client_id.as_deref(), narrower, bound_to.as_deref())
        })
        .await??;
    Ok(state.issued("refresh_token", &t))
}

async fn code_grant(
    state: &AppState,
    mut asker: Asker,
    f: TokenForm,
) -> Result<Response, OAuthError> {
    let bound_to = asker.certificate.thumbprint();
    let client_id = client_id_of(asker.client(state).await?)?;
    let Some(code) = f.code else {
        return Err(OAuthError::invalid_request("code is required"));
    };
    let (redirect_uri, verifier) = (f.redirect_uri, f.code_verifier);
    let t = state
        .blocking(move |service| {
            service.exchange_code(
                &code,
                &client_id,
                redirect_uri.as_deref(),
                verifier.as_deref(),
                bound_to.as_deref(),
            )
        })
        .await??;
    Ok(state.issued("authorization_code", &t))
}

async fn device_grant(
    state: &AppState,
    mut asker: Asker,
    f: TokenForm,
) -> Result<Response, OAuthError> {
    let bound_to = asker.certificate.thumbprint();
    let client_id = client_id_of(asker.client(state).await?)?;
    let Some(device_code) = f.device_code else {
        return Err(OAuthError::invalid_request("device_code is required"));
    };
    let t = state
        .blocking(move |service| service.poll_device(&device_code, &client_id, bound_to.as_deref()))
        .await??;
    Ok(state.issued("device_code", &t))
}

#[derive(Debug, Deserialize, Default)]
pub struct TokenOnlyForm {
    token: Option<String>,
    #[allow(dead_code)]
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// RFC 7009: answers 200 whether or not the token existed.
pub async fn revoke(
    State(state): State<AppState>,
    certificate: Option<Extension<PeerCertificate>>,
    headers: HeaderMap,
    form: Result<Form<TokenOnlyForm>, FormRejection>,
) -> Result<Response, OAuthError> {
    let Form(f) = form.map_err(form_error)?;
    let (id, secret) =
        client_credentials(&headers, f.client_id.as_deref(), f.client_secret.as_deref())?;
    let certificate = certificate.and_then(|Extension(c)| c.0);
    let client = check_client(&state, id, secret, certificate.as_ref()).await?;
    let Some(token) = f.token else {
        return Err(OAuthError::invalid_request("token is required"));
    };
    let client_id = client.id().map(str::to_string);
    let unchecked = matches!(client, ClientCheck::Unchecked(_));
    state
        .blocking(move |service| -> Result<(), OAuthError> {
            // A client may revoke only its own tokens (RFC 7009 §2.1).
            if let Some(info) = service.validate(&token).map_err(OAuthError::from)?
                && !unchecked
                && info.client_id != client_id
            {
                return Ok(());
            }
            service.revoke(&token).map_err(OAuthError::from)?;
            Ok(())
        })
        .await??;
    Ok(json_response(json!({})))
}

/// RFC 7662, for authenticated confidential clients (resource servers), by secret or by
/// certificate. A bound token's answer carries `cnf` (RFC 8705 §3.2).
pub async fn introspect(
    State(state): State<AppState>,
    certificate: Option<Extension<PeerCertificate>>,
    headers: HeaderMap,
    form: Result<Form<TokenOnlyForm>, FormRejection>,
) -> Result<Response, OAuthError> {
    let Form(f) = form.map_err(form_error)?;
    let (id, secret) =
        client_credentials(&headers, f.client_id.as_deref(), f.client_secret.as_deref())?;
    let Some(id) = id else {
        return Err(OAuthError::invalid_client("client authentication required"));
    };
    let certificate = certificate.and_then(|Extension(c)| c.0);
    let answer = state
        .blocking(move |service| -> Result<serde_json::Value, OAuthError> {
            let client = match (secret, certificate) {
                (Some(secret), _) => service.authenticate_client(&id, &secret),
                (None, Some(cert)) => service.authenticate_client_by_certificate(&id, &cert),
                (None, None) => Ok(None),
            };
            if client.map_err(OAuthError::from)?.is_none() {
                return Err(OAuthError::invalid_client("client authentication failed"));
            }
            let Some(token) = f.token else {
                return Err(OAuthError::invalid_request("token is required"));
            };
            Ok(match service.validate(&token).map_err(OAuthError::from)? {
                Some(t) => {
                    let mut v = json!({
                        "active": true,
                        "scope": t.scopes.join(" "),
                        "client_id": t.client_id,
                        "username": t.user,
                        "sub": t.user,
                        "token_type": "bearer",
                        "exp": t.expires_at,
                        "iat": t.issued_at,
                    });
                    if let Some(cnf) = &t.cnf {
                        v["cnf"] = json!({ "x5t#S256": cnf });
                    }
                    v
                }
                None => json!({ "active": false }),
            })
        })
        .await??;
    Ok(json_response(answer))
}

/// RFC 8414 authorization server metadata.
pub async fn metadata(State(state): State<AppState>) -> Response {
    let i = &state.issuer;
    json_response(json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/oauth/authorize"),
        "token_endpoint": format!("{i}/oauth/token"),
        "revocation_endpoint": format!("{i}/oauth/revoke"),
        "introspection_endpoint": format!("{i}/oauth/introspect"),
        "device_authorization_endpoint": format!("{i}/oauth/device_authorization"),
        "response_types_supported": ["code", "token"],
        "grant_types_supported": [
            "password", "client_credentials", "refresh_token", "authorization_code",
            "implicit", "urn:ietf:params:oauth:grant-type:device_code"
        ],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic", "client_secret_post", "tls_client_auth",
            "self_signed_tls_client_auth", "none"
        ],
        "revocation_endpoint_auth_methods_supported": [
            "client_secret_basic", "client_secret_post", "tls_client_auth",
            "self_signed_tls_client_auth", "none"
        ],
        "introspection_endpoint_auth_methods_supported": [
            "client_secret_basic", "client_secret_post", "tls_client_auth",
            "self_signed_tls_client_auth"
        ],
        "tls_client_certificate_bound_access_tokens": true,
        "scopes_supported": state.config().scopes,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use tower::ServiceExt;

    use crate::backoff::Backoff;
    use crate::http::{AppState, Peer, csrf_key, router};
    use crate::kv::Bucket;
    use crate::model::ClientKind;
    use crate::service::NewClient;
    use crate::service::test_support::service_with_outage;

    async fn password_grant(state: &AppState, password: &str) -> (StatusCode, String) {
        let body = format!(
            "grant_type=password&username=alice&password={password}&client_id=app&client_secret=s3cret&scope=mqtt"
        );
        let request = Request::post("/oauth/token")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        let app =
            router(state.clone()).layer(axum::Extension(Peer("192.0.2.9:40000".parse().unwrap())));
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn a_password_grant_during_a_store_outage_is_503_and_counts_toward_no_backoff() {
        let (_dir, service, outage) = service_with_outage();
        service.add_user("alice", "right").unwrap();
        service
            .add_client(NewClient {
                id: "app".into(),
                name: "App".into(),
                kind: ClientKind::Confidential,
                secret: Some("s3cret".into()),
                redirect_uris: Vec::new(),
                service_user: None,
                tls_auth: None,
            })
            .unwrap();
        let backoff = Arc::new(Backoff::new(2));
        let state = AppState {
            service,
            backoff: backoff.clone(),
            issuer: "https://localhost".into(),
            csrf_key: csrf_key(),
            broker: None,
        };
        outage.fail(&[Bucket::Users]);
        for _ in 0..4 {
            let (status, body) = password_grant(&state, "right").await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert!(body.contains("server_error"), "{body}");
            assert!(!body.contains("right"), "{body}");
        }
        assert!(backoff.check(&crate::backoff::user_key("alice")).is_ok());
        outage.fail(&[]);
        let (status, body) = password_grant(&state, "right").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = password_grant(&state, "wrong").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("invalid_grant"), "{body}");
    }
}

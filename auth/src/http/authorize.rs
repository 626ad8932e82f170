//! Browser flows: `GET/POST /oauth/authorize` (RFC 6749 §4.1 code with PKCE S256 per RFC 7636,
//! §4.2 implicit `token`) and ejabberd's `GET/POST /oauth/authorization_token` (its implicit
//! login form, with a `ttl` choice).
//!
//! An unknown client or a redirect URI that is not registered exactly gets an error page, never
//! a redirect (RFC 6749 §4.1.2.1): no open redirect. Tokens go in the fragment (§4.2.2) unless
//! the request asks `response_mode=query` (ejabberd's form).

use axum::Extension;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::pages::{self, esc, hidden};
use super::{AppState, ErrorCode, Peer};
use crate::model::{Client, ClientKind};
use crate::service::CodeRequest;

#[derive(Debug, Deserialize, Default, Clone)]
pub struct AuthorizeParams {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    response_mode: Option<String>,
    // Form-only fields.
    username: Option<String>,
    password: Option<String>,
    ttl: Option<String>,
    csrf: Option<String>,
    action: Option<String>,
}

/// A validated request: the client and where answers may go.
struct Valid {
    client: Client,
    redirect_uri: String,
    scopes: Vec<String>,
    token: bool,
}

enum Invalid {
    /// Shown as a page: the redirect URI cannot be trusted.
    Page(Response),
    /// Sent back to the client's redirect URI.
    Redirect(Response),
}

fn append(uri: &str, params: &[(&str, &str)], fragment: bool) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        s.append_pair(k, v);
    }
    let encoded = s.finish();
    let sep = if fragment {
        '#'
    } else if uri.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{uri}{sep}{encoded}")
}

fn error_redirect(v: &Valid, p: &AuthorizeParams, error: ErrorCode, description: &str) -> Response {
    let mut params = vec![
        ("error", error.as_str()),
        ("error_description", description),
    ];
    if let Some(s) = &p.state {
        params.push(("state", s));
    }
    pages::redirect(&append(&v.redirect_uri, &params, v.token && !query_mode(p)))
}

fn query_mode(p: &AuthorizeParams) -> bool {
    p.response_mode.as_deref() == Some("query")
}

async fn validate(state: &AppState, p: &AuthorizeParams, ejabberd: bool) -> Result<Valid, Invalid> {
    let bad_page = |text: &str| {
        Invalid::Page(pages::message(
            StatusCode::BAD_REQUEST,
            "Authorization failed",
            text,
        ))
    };
    let Some(client_id) = p.client_id.clone() else {
        return Err(bad_page("client_id is missing."));
    };
    let client = state
        .blocking(move |service| service.get_client(&client_id))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let Some(client) = client else {
        return Err(bad_page("Unknown client."));
    };
    let redirect_uri = match &p.redirect_uri {
        Some(u) if client.redirect_uris.iter().any(|r| r == u) => u.clone(),
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        _ => {
            return Err(bad_page(
                "The redirect_uri is not registered for this client.",
            ));
        }
    };
    let token = p.response_type.as_deref() == Some("token");
    let v = Valid {
        client,
        redirect_uri,
        scopes: Vec::new(),
        token,
    };
    match p.response_type.as_deref() {
        Some("token") if v.client.kind == ClientKind::Implicit || ejabberd => {}
        Some("token") => {
            return Err(Invalid::Redirect(error_redirect(
                &v,
                p,
                ErrorCode::UnauthorizedClient,
                "this client is not registered for the implicit flow",
            )));
        }
        Some("code") if !ejabberd && v.client.kind != ClientKind::Implicit => {
            match (
                p.code_challenge.as_deref(),
                p.code_challenge_method.as_deref(),
            ) {
                (Some(c), Some("S256")) if c.len() >= 43 && c.len() <= 128 => {}
                (None, _) if v.client.kind == ClientKind::Confidential => {}
                (None, _) => {
                    return Err(Invalid::Redirect(error_redirect(
                        &v,
                        p,
                        ErrorCode::InvalidRequest,
                        "public clients must use PKCE (code_challenge with S256)",
                    )));
                }
                _ => {
                    return Err(Invalid::Redirect(error_redirect(
                        &v,
                        p,
                        ErrorCode::InvalidRequest,
                        "code_challenge_method must be S256",
                    )));
                }
            }
        }
        _ => {
            return Err(Invalid::Redirect(error_redirect(
                &v,
                p,
                ErrorCode::UnsupportedResponseType,
                "unsupported response_type",
            )));
        }
    }
    match state.service.check_scopes(&super::parse_scope(&p.scope)) {
        Ok(scopes) => Ok(Valid { scopes, ..v }),
        Err(e) => Err(Invalid::Redirect(error_redirect(
            &v,
            p,
            ErrorCode::InvalidScope,
            &e.to_string(),
        ))),
    }
}

fn login_form(
    state: &AppState,
    action: &str,
    p: &AuthorizeParams,
    v: &Valid,
    error: Option<&str>,
    ttl_choice: bool,
) -> Response {
    let (cookie, csrf) = pages::new_csrf(state);
    let err = error
        .map(|e| format!("<p class=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    let ttl = if ttl_choice {
        "<label for=\"ttl\">Keep me logged in for</label><select id=\"ttl\" name=\"ttl\">\
         <option value=\"3600\">1 hour</option><option value=\"86400\">1 day</option>\
         <option value=\"2592000\" selected>30 days</option><option value=\"31536000\">1 year</option></select>"
    } else {
        ""
    };
    let body = format!(
        "<p><strong>{client}</strong> asks to act as you with the scopes <code>{scopes}</code>. \
         It will not see your password.</p>{err}\
         <form method=\"post\" action=\"{action}\">{hidden}\
         <label for=\"username\">User name</label><input id=\"username\" name=\"username\" autocomplete=\"username\" value=\"{user}\" required>\
         <label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         {ttl}<div class=\"buttons\"><button type=\"submit\" name=\"action\" value=\"allow\">Log in and allow</button>\
         <button type=\"submit\" name=\"action\" value=\"deny\" formnovalidate>Deny</button></div></form>\
         <p class=\"meta\">You will be sent back to {redirect}</p>",
        client = esc(&v.client.name),
        scopes = esc(&v.scopes.join(" ")),
        action = esc(action),
        user = esc(p.username.as_deref().unwrap_or("")),
        redirect = esc(&v.redirect_uri),
        hidden = hidden(&[
            ("response_type", p.response_type.as_deref()),
            ("client_id", p.client_id.as_deref()),
            ("redirect_uri", Some(v.redirect_uri.as_str())),
            ("scope", Some(v.scopes.join(" ").as_str())),
            ("state", p.state.as_deref()),
            ("code_challenge", p.code_challenge.as_deref()),
            ("code_challenge_method", p.code_challenge_method.as_deref()),
            ("response_mode", p.response_mode.as_deref()),
            ("csrf", Some(csrf.as_str())),
        ]),
    );
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    pages::page(status, "Sign in", &body, Some(&cookie))
}

async fn show(state: AppState, p: AuthorizeParams, action: &str, ejabberd: bool) -> Response {
    match validate(&state, &p, ejabberd).await {
        Ok(v) => login_form(&state, action, &p, &v, None, ejabberd),
        Err(Invalid::Page(r) | Invalid::Redirect(r)) => r,
    }
}

async fn submit(
    state: AppState,
    peer: std::net::SocketAddr,
    headers: HeaderMap,
    form: Result<Form<AuthorizeParams>, FormRejection>,
    action: &str,
    ejabberd: bool,
) -> Response {
    let p = match form {
        Ok(Form(p)) => p,
        Err(e) => {
            return pages::message(
                StatusCode::BAD_REQUEST,
                "Authorization failed",
                &e.body_text(),
            );
        }
    };
    let v = match validate(&state, &p, ejabberd).await {
        Ok(v) => v,
        Err(Invalid::Page(r) | Invalid::Redirect(r)) => return r,
    };
    if !pages::csrf_ok(&state, &headers, p.csrf.as_deref()) {
        return pages::message(
            StatusCode::FORBIDDEN,
            "Authorization failed",
            "The form expired or did not come from this server. Go back and try again.",
        );
    }
    if p.action.as_deref() == Some("deny") {
        return error_redirect(
            &v,
            &p,
            ErrorCode::AccessDenied,
            "the user denied the request",
        );
    }
    let ip_key = crate::backoff::address_key(peer.ip());
    if let Err(wait) = state.backoff.check(&ip_key) {
        state.service.metrics.backoff_refused("http");
        let text = format!(
            "Too many failed attempts. Try again in {} seconds.",
            wait.as_secs().max(1)
        );
        return login_form(&state, action, &p, &v, Some(&text), ejabberd);
    }
    let password = p.password.clone().unwrap_or_default();
    let username = p.username.clone();
    let checked = state
        .blocking(move |service| service.check_login(username.as_deref(), &password))
        .await;
    let user = match checked {
        Ok(Ok(user)) => user,
        // The store failed: not a wrong password, and not counted as one.
        Ok(Err(e)) => {
            tracing::error!(error = %e, "token store");
            return pages::message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign in",
                "The server cannot check passwords right now. Try again in a moment.",
            );
        }
        Err(e) => return e.into_response(),
    };
    let Some(user) = user else {
        state.backoff.fail(&ip_key);
        crate::audit::http_login_refused(
            "authorize",
            p.username.as_deref().unwrap_or(""),
            peer.ip(),
            "bad user name or password",
        );
        return login_form(
            &state,
            action,
            &p,
            &v,
            Some("Bad user name or password."),
            ejabberd,
        );
    };
    state.backoff.succeed(&ip_key);
    if !state.service.may_obtain_tokens(&user) {
        return error_redirect(&v, &p, ErrorCode::AccessDenied, "access denied");
    }
    let console = v.scopes.iter().any(|s| s == crate::service::CONSOLE_SCOPE);
    if console && !state.service.is_admin(&user).unwrap_or(false) {
        crate::audit::console_sign_in(&user, false, "not an operator");
        return error_redirect(
            &v,
            &p,
            ErrorCode::AccessDenied,
            "only operators may use the console",
        );
    }
    let ttl = p.ttl.as_deref().and_then(|t| t.parse::<u64>().ok());
    let client_id = v.client.id.clone();
    let scopes = v.scopes.clone();
    if v.token {
        let issued = state
            .blocking(move |service| {
                service.issue(&user, Some(&client_id), scopes, ttl, false, None)
            })
            .await;
        let Ok(Ok(t)) = issued else {
            return error_redirect(
                &v,
                &p,
                ErrorCode::ServerError,
                "the token store is unavailable",
            );
        };
        state.service.record_issued("https", "implicit", &t);
        let expires = t.expires_in.to_string();
        let mut params = vec![
            ("access_token", t.access_token.as_str()),
            ("token_type", "bearer"),
            ("expires_in", expires.as_str()),
            ("scope", t.scope.as_str()),
        ];
        if let Some(s) = &p.state {
            params.push(("state", s));
        }
        return pages::redirect(&append(&v.redirect_uri, &params, !query_mode(&p)));
    }
    let request = CodeRequest {
        client_id,
        user,
        redirect_uri: v.redirect_uri.clone(),
        scopes,
        code_challenge: p.code_challenge.clone(),
        ttl,
    };
    let Ok(Ok(code)) = state
        .blocking(move |service| service.create_code(request))
        .await
    else {
        return error_redirect(
            &v,
            &p,
            ErrorCode::ServerError,
            "the token store is unavailable",
        );
    };
    let mut params = vec![("code", code.as_str())];
    if let Some(s) = &p.state {
        params.push(("state", s));
    }
    pages::redirect(&append(&v.redirect_uri, &params, false))
}

pub async fn authorize_form(
    State(state): State<AppState>,
    Query(p): Query<AuthorizeParams>,
) -> Response {
    show(state, p, "/oauth/authorize", false).await
}

pub async fn authorize_submit(
    State(state): State<AppState>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    form: Result<Form<AuthorizeParams>, FormRejection>,
) -> Response {
    submit(state, peer, headers, form, "/oauth/authorize", false).await
}

/// ejabberd's implicit login form (`response_type=token`), with a ttl choice.
pub async fn ejabberd_form(
    State(state): State<AppState>,
    Query(p): Query<AuthorizeParams>,
) -> Response {
    show(state, p, "/oauth/authorization_token", true).await
}

pub async fn ejabberd_submit(
    State(state): State<AppState>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    form: Result<Form<AuthorizeParams>, FormRejection>,
) -> Response {
    submit(
        state,
        peer,
        headers,
        form,
        "/oauth/authorization_token",
        true,
    )
    .await
}

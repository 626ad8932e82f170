//! The operator console under `/console/` on the OAuth endpoint: who is connected (and kick),
//! users, OAuth clients, tokens, retained messages, live counters.
//!
//! Signing in is Tessera's own OAuth flow: the console is the built-in public client
//! `tessera-console`; `/console/login` sends the browser to `/oauth/authorize` with PKCE S256
//! and the scope `tessera:console`, which only a user marked admin obtains (the token service
//! refuses it to anyone else, `service::CONSOLE_SCOPE`); `/console/callback` exchanges the code
//! in-process and keeps the access token in an HttpOnly, Secure, SameSite=Strict cookie scoped
//! to `/console`. Every request checks that token again (live, the scope, the user still an
//! admin), so revoking it or removing the flag ends the console session at once.
//!
//! Every form carries a CSRF token bound to the signed-in token (an HMAC of its key); every
//! value on a page is HTML-escaped; the Content-Security-Policy admits only this origin's own
//! style sheet and script, and the pages work without the script (it only refreshes the
//! counters). This file owns the sign-in, the guard and how an action runs; `html.rs` the
//! page frame, `live.rs` the broker's pages (connections, counters, retained), `accounts.rs`
//! the token service's (users, clients, tokens).

/// The signed-in operator of a console request, or an early return sending the browser to sign in.
macro_rules! signed_in {
    ($state:expr, $headers:expr) => {
        match operator(&$state, &$headers).await {
            Ok(op) => op,
            Err(r) => return r,
        }
    };
}

/// As `signed_in!`, for a form post: its CSRF token must be the operator's (403 otherwise).
macro_rules! checked {
    ($state:expr, $headers:expr, $csrf:expr) => {{
        let op = signed_in!($state, $headers);
        if !csrf_ok(&op, $csrf) {
            return super::html::forbidden();
        }
        op
    }};
}

mod accounts;
mod html;
mod live;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::Value;

use super::AppState;
use crate::admin::{self, AdminRequest, AdminResponse};
use crate::audit;
use crate::model::ClientKind;
use crate::secrets;
use crate::service::{CONSOLE_SCOPE, NewClient, ServiceError, TokenInfo};

/// The console's OAuth client id (a public client, PKCE).
pub const CLIENT_ID: &str = "tessera-console";
const SESSION_COOKIE: &str = "tessera_console";
const LOGIN_COOKIE: &str = "tessera_console_login";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(|| async { redirect("/console/") }))
        .route("/console/", get(live::home))
        .route("/console/login", get(login))
        .route("/console/callback", get(callback))
        .route("/console/logout", post(logout))
        .route("/console/sessions/kick", post(live::kick))
        .route("/console/users", get(accounts::users))
        .route("/console/users/add", post(accounts::user_add))
        .route("/console/users/delete", post(accounts::user_delete))
        .route("/console/clients", get(accounts::clients))
        .route("/console/clients/add", post(accounts::client_add))
        .route("/console/clients/remove", post(accounts::client_remove))
        .route("/console/tokens", get(accounts::tokens))
        .route("/console/tokens/revoke", post(accounts::token_revoke))
        .route("/console/retained", get(live::retained))
        .route("/console/retained/delete", post(live::retained_delete))
        .route("/console/counters", get(live::counters))
        .route("/console/static/console.css", get(html::style))
        .route("/console/static/live.js", get(html::script))
        .route("/console/static/icon.svg", get(html::icon))
}

/// The console's redirect URI for an issuer.
pub fn redirect_uri(issuer: &str) -> String {
    format!("{issuer}/console/callback")
}

/// Registers the console's client, or adds this issuer's redirect URI to it. Called at start:
/// the issuer can change between runs, and in a cluster every node has its own (nodes starting
/// at once may race: the loser reads again).
pub fn register_client(state: &AppState) -> Result<(), ServiceError> {
    let uri = redirect_uri(&state.issuer);
    let mut last = None;
    for _ in 0..5 {
        let mut uris = vec![uri.clone()];
        if let Some(c) = state.service.get_client(CLIENT_ID)? {
            if c.redirect_uris.contains(&uri) && c.kind == ClientKind::Public {
                return Ok(());
            }
            if c.kind == ClientKind::Public {
                uris.extend(c.redirect_uris.into_iter().filter(|u| *u != uri));
            }
            match state.service.remove_client(CLIENT_ID) {
                Ok(_) | Err(ServiceError::UnknownClient(_)) => {}
                Err(e) => return Err(e),
            }
        }
        match state.service.add_client(NewClient {
            id: CLIENT_ID.to_string(),
            name: "Tessera operator console".to_string(),
            kind: ClientKind::Public,
            secret: None,
            redirect_uris: uris,
            service_user: None,
            tls_auth: None,
        }) {
            Ok(_) => return Ok(()),
            Err(e @ ServiceError::ClientExists(_)) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(ServiceError::Usage(
        "the console client could not be registered",
    )))
}

/// A signed-in operator: the token's record and the CSRF token for its forms.
pub struct Operator {
    pub token: TokenInfo,
    pub csrf: String,
}

impl Operator {
    /// The actor the audit log names.
    pub fn actor(&self) -> String {
        format!("console:{}", self.token.user)
    }
}

/// The signed-in operator of a request, or the response that sends the browser to sign in
/// (a page request) or refuses it (403, a form post without a live console token).
pub async fn operator(state: &AppState, headers: &HeaderMap) -> Result<Operator, Response> {
    let Some(token) = super::pages::cookie(headers, SESSION_COOKIE) else {
        return Err(redirect("/console/login"));
    };
    let checked = state
        .blocking(move |s| -> Result<Option<TokenInfo>, ServiceError> {
            let Some(info) = s.validate(&token)? else {
                return Ok(None);
            };
            let ok = info.scopes.iter().any(|x| x == CONSOLE_SCOPE) && s.is_admin(&info.user)?;
            Ok(ok.then_some(info))
        })
        .await;
    match checked {
        Ok(Ok(Some(token))) => {
            let csrf = csrf_for(state, &token.key);
            Ok(Operator { token, csrf })
        }
        Ok(Ok(None)) => Err(redirect("/console/login")),
        _ => Err(html::message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Console unavailable",
            "The token store is unavailable.",
        )),
    }
}

/// The CSRF token of a console session: an HMAC of its token's key.
fn csrf_for(state: &AppState, key: &str) -> String {
    secrets::hex(&super::pages::hmac_sha256(
        &state.csrf_key[..],
        format!("console:{key}").as_bytes(),
    ))
}

/// Whether a posted form's CSRF token is this operator's.
pub fn csrf_ok(op: &Operator, form_token: Option<&str>) -> bool {
    form_token.is_some_and(|t| secrets::equal(t.as_bytes(), op.csrf.as_bytes()))
}

fn set_cookie(resp: &mut Response, name: &str, value: &str, max_age: u64) {
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{name}={value}; Path=/console; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
    )) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

pub fn redirect(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    html::secure_headers(resp.headers_mut());
    resp
}

/// Starts a sign-in: a fresh `state` and PKCE verifier in a short-lived cookie, then the
/// authorization request.
async fn login(State(state): State<AppState>) -> Response {
    let flow = secrets::random_string(16);
    let verifier = secrets::random_string(32);
    let url = format!(
        "/oauth/authorize?response_type=code&client_id={CLIENT_ID}&redirect_uri={}&scope={}\
         &state={flow}&code_challenge={}&code_challenge_method=S256",
        urlencode(&redirect_uri(&state.issuer)),
        urlencode(CONSOLE_SCOPE),
        secrets::s256(&verifier),
    );
    let mut resp = redirect(&url);
    set_cookie(&mut resp, LOGIN_COOKIE, &format!("{flow}.{verifier}"), 600);
    resp
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The authorization server's answer: the code exchanged for the console token, or a refusal.
async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<Callback>,
) -> Response {
    let flow = super::pages::cookie(&headers, LOGIN_COOKIE);
    let Some((expected, verifier)) = flow.as_deref().and_then(|f| f.split_once('.')) else {
        return html::message(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "The sign-in expired or was not started here. Start again from /console/.",
        );
    };
    let same = q
        .state
        .as_deref()
        .is_some_and(|s| secrets::equal(s.as_bytes(), expected.as_bytes()));
    if !same {
        return html::message(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "The sign-in does not match the one started in this browser.",
        );
    }
    if let Some(e) = q.error {
        audit::console_sign_in("", false, &e);
        return html::message(
            StatusCode::FORBIDDEN,
            "Not allowed",
            "Only operators (users added with --admin) may use the console.",
        );
    }
    let (Some(code), verifier) = (q.code, verifier.to_string()) else {
        return html::message(StatusCode::BAD_REQUEST, "Sign-in failed", "No code.");
    };
    let uri = redirect_uri(&state.issuer);
    let issued = state
        .blocking(move |s| s.exchange_code(&code, CLIENT_ID, Some(&uri), Some(&verifier), None))
        .await;
    match issued {
        Ok(Ok(t)) => {
            audit::console_sign_in(&t.user, true, "");
            state
                .service
                .record_issued("https", "authorization_code", &t);
            let mut resp = redirect("/console/");
            set_cookie(&mut resp, SESSION_COOKIE, &t.access_token, t.expires_in);
            set_cookie(&mut resp, LOGIN_COOKIE, "", 0);
            resp
        }
        Ok(Err(e)) => {
            audit::console_sign_in("", false, &e.to_string());
            html::message(
                StatusCode::FORBIDDEN,
                "Not allowed",
                "Only operators (users added with --admin) may use the console.",
            )
        }
        Err(_) => html::message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in failed",
            "The token store is unavailable.",
        ),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

/// Signs out: the console token is revoked and its cookie cleared.
async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<CsrfForm>,
) -> Response {
    let op = match operator(&state, &headers).await {
        Ok(op) => op,
        Err(r) => return r,
    };
    if !csrf_ok(&op, f.csrf.as_deref()) {
        return html::forbidden();
    }
    let key = op.token.key.clone();
    let _ = state.blocking(move |s| s.revoke(&key)).await;
    let mut resp = redirect("/console/");
    set_cookie(&mut resp, SESSION_COOKIE, "", 0);
    resp
}

/// Runs an operator request as this console user.
async fn run(state: &AppState, op: &Operator, req: AdminRequest) -> AdminResponse {
    let service = state.service.clone();
    let broker = state.broker.clone();
    let actor = op.actor();
    tokio::task::spawn_blocking(move || {
        let op = admin::Operator {
            service: &service,
            broker: broker.as_ref(),
            actor: &actor,
            tls: &[],
        };
        admin::execute(&op, req)
    })
    .await
    .unwrap_or_else(|_| AdminResponse::Error {
        message: "internal error".into(),
        exit_code: 1,
    })
}

fn data(r: AdminResponse) -> Result<Value, String> {
    match r {
        AdminResponse::Ok { data, .. } => Ok(data),
        AdminResponse::Error { message, .. } => Err(message),
    }
}

/// After an action: back to `to`, with its outcome in the query (`ok=` or `error=`).
fn back(to: &str, r: AdminResponse) -> Response {
    let sep = if to.contains('?') { '&' } else { '?' };
    match r {
        AdminResponse::Ok { message, .. } => {
            redirect(&format!("{to}{sep}ok={}", urlencode(&message)))
        }
        AdminResponse::Error { message, .. } => {
            redirect(&format!("{to}{sep}error={}", urlencode(&message)))
        }
    }
}

/// A query value, percent-encoded (the form encoding the authorization endpoint reads).
pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

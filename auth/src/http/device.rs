//! The device authorization grant (RFC 8628) for keyboard-less devices: the device asks for a
//! code pair, shows the user code, and polls `/oauth/token`; a person opens the verification
//! page, logs in and approves (or denies) that code.

use axum::Extension;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::pages::{self, esc, hidden};
use super::token::form_error;
use super::{
    AppState, OAuthError, Peer, check_client, client_credentials, client_id_of, json_response,
};
use crate::kv::Bucket;
use crate::model::{DeviceCode, DeviceState};
use crate::redb_store::now_secs;
use crate::secrets;

/// Seconds a device code lives.
pub const DEVICE_TTL: u64 = 600;
/// Seconds a device waits between polls (RFC 8628 §3.2 `interval`).
pub const INTERVAL: u64 = 2;

#[derive(Debug, Deserialize, Default)]
pub struct DeviceForm {
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
}

pub async fn device_authorization(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<DeviceForm>, FormRejection>,
) -> Result<Response, OAuthError> {
    let Form(f) = form.map_err(form_error)?;
    let (id, secret) =
        client_credentials(&headers, f.client_id.as_deref(), f.client_secret.as_deref())?;
    let client_id = client_id_of(check_client(&state, id, secret).await?)?;
    let scopes = state
        .service
        .check_scopes(&super::parse_scope(&f.scope))
        .map_err(|e| OAuthError::new("invalid_scope", e.to_string()))?;
    let device_code = secrets::new_token();
    let user_code = secrets::user_code();
    let record = DeviceCode {
        client_id,
        user_code: user_code.clone(),
        scopes,
        state: DeviceState::Pending,
        expires_at: now_secs() + DEVICE_TTL,
        last_poll: 0,
        interval: INTERVAL,
    };
    let key = secrets::token_key(&device_code);
    state
        .blocking(move |service| {
            service.store.create(
                Bucket::DeviceCodes,
                &key,
                &serde_json::to_vec(&record).unwrap_or_default(),
                Some(record.expires_at),
            )
        })
        .await?
        .map_err(OAuthError::server)?;
    let uri = format!("{}/oauth/device", state.issuer);
    Ok(json_response(json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": uri,
        "verification_uri_complete": format!("{uri}?user_code={user_code}"),
        "expires_in": DEVICE_TTL,
        "interval": INTERVAL,
    })))
}

#[derive(Debug, Deserialize, Default)]
pub struct VerifyParams {
    user_code: Option<String>,
    username: Option<String>,
    password: Option<String>,
    csrf: Option<String>,
    action: Option<String>,
}

fn verify_page(state: &AppState, p: &VerifyParams, error: Option<&str>) -> Response {
    let (cookie, csrf) = pages::new_csrf(state);
    let err = error
        .map(|e| format!("<p class=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        "<p>Enter the code your device shows, then sign in to let it connect as you.</p>{err}\
         <form method=\"post\" action=\"/oauth/device\">{hidden}\
         <label for=\"user_code\">Device code</label><input id=\"user_code\" name=\"user_code\" value=\"{code}\" autocomplete=\"off\" required>\
         <label for=\"username\">User name</label><input id=\"username\" name=\"username\" autocomplete=\"username\" value=\"{user}\" required>\
         <label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <div class=\"buttons\"><button type=\"submit\" name=\"action\" value=\"allow\">Approve device</button>\
         <button type=\"submit\" name=\"action\" value=\"deny\" formnovalidate>Deny</button></div></form>",
        code = esc(p.user_code.as_deref().unwrap_or("")),
        user = esc(p.username.as_deref().unwrap_or("")),
        hidden = hidden(&[("csrf", Some(csrf.as_str()))]),
    );
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    pages::page(status, "Connect a device", &body, Some(&cookie))
}

pub async fn verify_form(State(state): State<AppState>, Query(p): Query<VerifyParams>) -> Response {
    verify_page(&state, &p, None)
}

fn normalize(code: &str) -> String {
    let letters: String = code
        .chars()
        .filter(|c| c.is_ascii_alphabetic())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if letters.len() == 8 {
        format!("{}-{}", &letters[..4], &letters[4..])
    } else {
        letters
    }
}

pub async fn verify_submit(
    State(state): State<AppState>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    form: Result<Form<VerifyParams>, FormRejection>,
) -> Response {
    let p = match form {
        Ok(Form(p)) => p,
        Err(e) => {
            return pages::message(StatusCode::BAD_REQUEST, "Connect a device", &e.body_text());
        }
    };
    if !pages::csrf_ok(&state, &headers, p.csrf.as_deref()) {
        return pages::message(
            StatusCode::FORBIDDEN,
            "Connect a device",
            "The form expired or did not come from this server. Go back and try again.",
        );
    }
    let ip_key = format!("ip:{}", peer.ip());
    if let Err(wait) = state.backoff.check(&ip_key) {
        let text = format!(
            "Too many failed attempts. Try again in {} seconds.",
            wait.as_secs().max(1)
        );
        return verify_page(&state, &p, Some(&text));
    }
    let code = normalize(p.user_code.as_deref().unwrap_or(""));
    let deny = p.action.as_deref() == Some("deny");
    let username = p.username.clone();
    let password = p.password.clone().unwrap_or_default();
    enum Outcome {
        UnknownCode,
        BadLogin,
        Denied,
        NotAllowed,
        Approved,
        StoreError,
    }
    let outcome = state
        .blocking(move |service| {
            let found = service
                .store
                .scan(Bucket::DeviceCodes, "")
                .ok()
                .into_iter()
                .flatten()
                .find_map(|(k, e)| {
                    let d: DeviceCode = serde_json::from_slice(&e.value).ok()?;
                    (d.user_code == code && d.state == DeviceState::Pending)
                        .then_some((k, e.revision, d))
                });
            let user = service
                .check_login(username.as_deref(), &password)
                .ok()
                .flatten();
            let Some((key, rev, mut d)) = found else {
                return Outcome::UnknownCode;
            };
            if deny {
                d.state = DeviceState::Denied;
            } else if let Some(user) = user {
                if !service.may_obtain_tokens(&user) {
                    return Outcome::NotAllowed;
                }
                d.state = DeviceState::Approved { user };
            } else {
                return Outcome::BadLogin;
            }
            let denied = d.state == DeviceState::Denied;
            match service.store.update(
                Bucket::DeviceCodes,
                &key,
                &serde_json::to_vec(&d).unwrap_or_default(),
                Some(d.expires_at),
                rev,
            ) {
                Ok(_) if denied => Outcome::Denied,
                Ok(_) => Outcome::Approved,
                Err(_) => Outcome::StoreError,
            }
        })
        .await
        .unwrap_or(Outcome::StoreError);
    match outcome {
        Outcome::UnknownCode => verify_page(&state, &p, Some("Unknown or expired device code.")),
        Outcome::BadLogin => {
            state.backoff.fail(&ip_key);
            verify_page(&state, &p, Some("Bad user name or password."))
        }
        Outcome::NotAllowed => {
            pages::message(StatusCode::FORBIDDEN, "Connect a device", "Access denied.")
        }
        Outcome::Denied => pages::message(
            StatusCode::OK,
            "Device denied",
            "The device will not be connected.",
        ),
        Outcome::Approved => {
            state.backoff.succeed(&ip_key);
            pages::message(
                StatusCode::OK,
                "Device approved",
                "Your device is now connected. You can close this page.",
            )
        }
        Outcome::StoreError => pages::message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Connect a device",
            "The token store is unavailable. Try again.",
        ),
    }
}

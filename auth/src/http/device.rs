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
use crate::service::{DeviceAnswer, DeviceDecision};

#[derive(Debug, Deserialize, Default)]
pub struct DeviceForm {
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
}

pub async fn device_authorization(
    State(state): State<AppState>,
    certificate: Option<axum::Extension<super::PeerCertificate>>,
    headers: HeaderMap,
    form: Result<Form<DeviceForm>, FormRejection>,
) -> Result<Response, OAuthError> {
    let Form(f) = form.map_err(form_error)?;
    let (id, secret) =
        client_credentials(&headers, f.client_id.as_deref(), f.client_secret.as_deref())?;
    let certificate = certificate.and_then(|axum::Extension(c)| c.0);
    let client_id = client_id_of(check_client(&state, id, secret, certificate.as_ref()).await?)?;
    let scopes = state.service.check_scopes(&super::parse_scope(&f.scope))?;
    let g = state
        .blocking(move |service| service.start_device(client_id, scopes))
        .await??;
    let uri = format!("{}/oauth/device", state.issuer);
    Ok(json_response(json!({
        "device_code": g.device_code,
        "user_code": g.user_code,
        "verification_uri": uri,
        "verification_uri_complete": format!("{uri}?user_code={}", g.user_code),
        "expires_in": g.expires_in,
        "interval": g.interval,
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
         <button type=\"submit\" name=\"action\" value=\"deny\">Deny</button></div></form>",
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
    let ip_key = crate::backoff::address_key(peer.ip());
    if let Err(wait) = state.backoff.check(&ip_key) {
        state.service.metrics.backoff_refused("http");
        let text = format!(
            "Too many failed attempts. Try again in {} seconds.",
            wait.as_secs().max(1)
        );
        return verify_page(&state, &p, Some(&text));
    }
    let code = p.user_code.clone().unwrap_or_default();
    let decision = if p.action.as_deref() == Some("deny") {
        DeviceDecision::Deny
    } else {
        DeviceDecision::Approve
    };
    let username = p.username.clone();
    let password = p.password.clone().unwrap_or_default();
    let outcome = state
        .blocking(move |service| {
            service.answer_device(&code, username.as_deref(), &password, decision)
        })
        .await;
    match outcome {
        Ok(Ok(DeviceAnswer::UnknownCode)) => {
            verify_page(&state, &p, Some("Unknown or expired device code."))
        }
        Ok(Ok(DeviceAnswer::BadLogin)) => {
            state.backoff.fail(&ip_key);
            crate::audit::http_login_refused(
                "device",
                p.username.as_deref().unwrap_or(""),
                peer.ip(),
                "bad user name or password",
            );
            verify_page(&state, &p, Some("Bad user name or password."))
        }
        Ok(Ok(DeviceAnswer::NotAllowed)) => {
            pages::message(StatusCode::FORBIDDEN, "Connect a device", "Access denied.")
        }
        Ok(Ok(DeviceAnswer::Denied)) => pages::message(
            StatusCode::OK,
            "Device denied",
            "The device will not be connected.",
        ),
        Ok(Ok(DeviceAnswer::Approved(_))) => {
            state.backoff.succeed(&ip_key);
            pages::message(
                StatusCode::OK,
                "Device approved",
                "Your device is now connected. You can close this page.",
            )
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "token service");
            pages::message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Connect a device",
                "The token store is unavailable. Try again.",
            )
        }
        Err(_) => pages::message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Connect a device",
            "The request could not be completed. Try again.",
        ),
    }
}

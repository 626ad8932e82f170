//! The broker side of the console: the connections page (kick, revoke the token a client
//! logged in with), the live counters and the retained messages (browse, delete).

use axum::Form;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::html::{Notice, button, cell, next_page, page, page_of, secure_headers, table, when};
use super::{back, csrf_ok, operator, run, urlencode};
use crate::admin::{self, AdminRequest, AdminResponse};
use crate::http::AppState;
use crate::http::pages::esc;

/// The counters the home page shows and `live.js` refreshes (ids `c-<name>`).
fn counter_values(state: &AppState) -> Vec<(&'static str, &'static str, u64)> {
    let Some(b) = &state.broker else {
        return Vec::new();
    };
    let m = b.metrics();
    vec![
        (
            "connections",
            "Connections",
            m.connections.iter().map(|c| c.1).sum(),
        ),
        ("sessions_offline", "Offline sessions", m.sessions_offline),
        (
            "received",
            "Messages received",
            m.messages_received.iter().sum(),
        ),
        ("sent", "Messages sent", m.messages_sent.iter().sum()),
        ("dropped", "Dropped", m.dropped.iter().map(|d| d.1).sum()),
        ("queued", "Queued", m.queued_messages),
        ("retained", "Retained", m.retained_messages),
        ("subscriptions", "Subscriptions", m.subscriptions),
    ]
}

pub async fn counters(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let _op = signed_in!(state, headers);
    let v: serde_json::Map<String, Value> = counter_values(&state)
        .into_iter()
        .map(|(k, _, n)| (k.to_string(), json!(n)))
        .collect();
    let mut resp = axum::Json(Value::Object(v)).into_response();
    secure_headers(resp.headers_mut());
    resp
}

pub async fn home(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(n): Query<Notice>,
) -> Response {
    let op = signed_in!(state, headers);
    let counters: String = counter_values(&state)
        .into_iter()
        .map(|(k, label, v)| {
            format!(
                "<div><span class=\"n\" id=\"c-{k}\">{v}</span> {}</div>",
                esc(label)
            )
        })
        .collect();
    let rows = match &state.broker {
        Some(b) => admin::sessions(b, &state.service.onboardings, None, &page_of(&n)),
        None => Vec::new(),
    };
    let more = next_page(
        "/console/",
        "",
        rows.len(),
        rows.last().and_then(|r| r["client_id"].as_str()),
    );
    let rows = rows
        .iter()
        .map(|r| {
            let client = r["client_id"].as_str().unwrap_or("");
            // A device onboarding has no session yet: nothing to kick.
            let mut actions = if r["state"] == "connected" {
                button(
                    &op,
                    "/console/sessions/kick",
                    &[("client_id", client)],
                    "Kick",
                )
            } else {
                String::new()
            };
            if let Some(id) = r["token_id"].as_str() {
                actions.push_str(&button(
                    &op,
                    "/console/tokens/revoke",
                    &[("token", id), ("back", "/console/")],
                    "Revoke token",
                ));
            }
            vec![
                cell(&r["client_id"]),
                cell(&r["user"]),
                cell(&r["address"]),
                cell(&r["transport"]),
                cell(&r["protocol"]),
                when(&r["connected_at"]),
                cell(&r["state"]),
                actions,
            ]
        })
        .collect();
    let body = format!(
        "{}<section class=\"counters\">{counters}</section><h2>Connected clients</h2>{}{more}",
        n.html(),
        table(
            &[
                "Client id",
                "User",
                "Address",
                "Transport",
                "Protocol",
                "Since",
                "State",
                ""
            ],
            rows
        )
    );
    page(&op, "Connections", &body)
}

#[derive(Deserialize)]
pub struct KickForm {
    csrf: Option<String>,
    client_id: String,
}

pub async fn kick(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<KickForm>,
) -> Response {
    let op = checked!(state, headers, f.csrf.as_deref());
    let r = run(
        &state,
        &op,
        AdminRequest::SessionKick {
            client_id: f.client_id,
        },
    )
    .await;
    back("/console/", r)
}

pub async fn retained(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(n): Query<Notice>,
) -> Response {
    let op = signed_in!(state, headers);
    let prefix = n.prefix.clone().unwrap_or_default();
    let at = page_of(&n);
    let list = state
        .broker
        .as_ref()
        .map(|b| b.retained(&prefix, at.after.as_deref(), at.limit))
        .unwrap_or_default();
    let more = next_page(
        "/console/retained",
        &format!("prefix={}&", urlencode(&prefix)),
        list.len(),
        list.last().map(|m| m.topic.as_str()),
    );
    let rows = list
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.payload);
            let shown: String = text.chars().take(120).collect();
            vec![
                format!("<code>{}</code>", esc(&m.topic)),
                (m.qos as u8).to_string(),
                m.payload.len().to_string(),
                esc(&shown),
                button(
                    &op,
                    "/console/retained/delete",
                    &[("topic", &m.topic), ("prefix", &prefix)],
                    "Delete",
                ),
            ]
        })
        .collect();
    let body = format!(
        "{}<form method=\"get\" action=\"/console/retained\"><label for=\"prefix\">Topic starts with</label>\
         <input id=\"prefix\" name=\"prefix\" value=\"{}\"><button>Browse</button></form>{}{more}",
        n.html(),
        esc(&prefix),
        table(&["Topic", "QoS", "Bytes", "Payload", ""], rows),
    );
    page(&op, "Retained messages", &body)
}

#[derive(Deserialize)]
pub struct RetainedForm {
    csrf: Option<String>,
    topic: String,
    prefix: Option<String>,
}

pub async fn retained_delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<RetainedForm>,
) -> Response {
    let op = checked!(state, headers, f.csrf.as_deref());
    let deleted = state
        .broker
        .as_ref()
        .is_some_and(|b| b.delete_retained(&f.topic));
    crate::audit::admin_action(&op.actor(), "retained_delete", &f.topic, deleted, "");
    let to = format!(
        "/console/retained?prefix={}",
        urlencode(f.prefix.as_deref().unwrap_or(""))
    );
    let r = if deleted {
        AdminResponse::Ok {
            message: format!("retained message of {} deleted", f.topic),
            data: Value::Null,
        }
    } else {
        AdminResponse::Error {
            message: "no retained message on that topic".into(),
            exit_code: 3,
        }
    };
    back(&to, r)
}

//! The console's pages and actions. Pages are server-rendered HTML, every value through
//! `esc`; actions are form posts checked for the operator's CSRF token and run as the same
//! operator requests the CLI sends (`admin::execute`, audited with actor `console:<user>`),
//! then redirect back (post/redirect/get).

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Operator, csrf_ok, operator, redirect, urlencode};
use crate::admin::{self, AdminRequest, AdminResponse};
use crate::http::AppState;
use crate::http::pages::esc;
use crate::model::ClientKind;

const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; \
                   img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn secure_headers(h: &mut HeaderMap) {
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
}

fn html(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(h);
    resp
}

/// A page of the signed-in console. `body` must already be escaped HTML.
fn page(op: &Operator, title: &str, body: &str) -> Response {
    let nav = [
        ("/console/", "Connections"),
        ("/console/users", "Users"),
        ("/console/clients", "Clients"),
        ("/console/tokens", "Tokens"),
        ("/console/retained", "Retained"),
    ]
    .iter()
    .map(|(href, name)| format!("<a href=\"{href}\">{name}</a>"))
    .collect::<Vec<_>>()
    .join(" ");
    html(
        StatusCode::OK,
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width\"><title>{t} · Tessera</title>\
             <link rel=\"stylesheet\" href=\"/console/static/console.css\">\
             <link rel=\"icon\" href=\"/console/static/icon.svg\">\
             <script src=\"/console/static/live.js\" defer></script></head><body>\
             <header><strong>Tessera</strong> <nav>{nav}</nav> <span class=\"who\">{user}</span>\
             <form method=\"post\" action=\"/console/logout\" class=\"inline\">{csrf}\
             <button>Sign out</button></form></header><main><h1>{t}</h1>{body}</main></body></html>",
            t = esc(title),
            user = esc(&op.token.user),
            csrf = csrf_input(op),
        ),
    )
}

/// A page without the console's frame (sign-in errors).
pub fn message(status: StatusCode, title: &str, text: &str) -> Response {
    html(
        status,
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
             <link rel=\"stylesheet\" href=\"/console/static/console.css\">\
             <link rel=\"icon\" href=\"/console/static/icon.svg\"></head><body><main>\
             <h1>{t}</h1><p class=\"error\">{m}</p><p><a href=\"/console/login\">Sign in</a></p>\
             </main></body></html>",
            t = esc(title),
            m = esc(text)
        ),
    )
}

pub fn forbidden() -> Response {
    message(
        StatusCode::FORBIDDEN,
        "Refused",
        "The form expired or did not come from this console. Go back and try again.",
    )
}

fn csrf_input(op: &Operator) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&op.csrf)
    )
}

/// A one-button form posting `fields` to `action`.
fn button(op: &Operator, action: &str, fields: &[(&str, &str)], label: &str) -> String {
    let hidden: String = fields
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                esc(k),
                esc(v)
            )
        })
        .collect();
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\">{}{hidden}<button>{}</button></form>",
        esc(action),
        csrf_input(op),
        esc(label)
    )
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    if rows.is_empty() {
        return "<p class=\"meta\">None.</p>".to_string();
    }
    let head: String = headers
        .iter()
        .map(|h| format!("<th>{}</th>", esc(h)))
        .collect();
    let body: String = rows
        .into_iter()
        .map(|r| {
            format!(
                "<tr>{}</tr>",
                r.into_iter()
                    .map(|c| format!("<td>{c}</td>"))
                    .collect::<String>()
            )
        })
        .collect();
    format!("<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
}

/// Text of a JSON value, escaped (`-` for null).
fn cell(v: &Value) -> String {
    esc(&match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    })
}

/// Seconds since the epoch as UTC text.
fn when(v: &Value) -> String {
    let Some(secs) = v.as_u64() else {
        return "-".into();
    };
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    esc(&httpdate(t))
}

fn httpdate(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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

#[derive(Deserialize, Default)]
pub struct Notice {
    ok: Option<String>,
    error: Option<String>,
    user: Option<String>,
    prefix: Option<String>,
}

impl Notice {
    fn html(&self) -> String {
        let mut out = String::new();
        if let Some(m) = &self.ok {
            out.push_str(&format!("<p class=\"ok\" role=\"status\">{}</p>", esc(m)));
        }
        if let Some(m) = &self.error {
            out.push_str(&format!("<p class=\"error\" role=\"alert\">{}</p>", esc(m)));
        }
        out
    }
}

macro_rules! signed_in {
    ($state:expr, $headers:expr) => {
        match operator(&$state, &$headers).await {
            Ok(op) => op,
            Err(r) => return r,
        }
    };
}

macro_rules! checked {
    ($state:expr, $headers:expr, $csrf:expr) => {{
        let op = signed_in!($state, $headers);
        if !csrf_ok(&op, $csrf) {
            return forbidden();
        }
        op
    }};
}

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
        Some(b) => admin::sessions(b, None),
        None => Vec::new(),
    };
    let rows = rows
        .iter()
        .map(|r| {
            let client = r["client_id"].as_str().unwrap_or("");
            let mut actions = button(
                &op,
                "/console/sessions/kick",
                &[("client_id", client)],
                "Kick",
            );
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
                actions,
            ]
        })
        .collect();
    let body = format!(
        "{}<section class=\"counters\">{counters}</section><h2>Connected clients</h2>{}",
        n.html(),
        table(
            &[
                "Client id",
                "User",
                "Address",
                "Transport",
                "Protocol",
                "Since",
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

pub async fn users(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(n): Query<Notice>,
) -> Response {
    let op = signed_in!(state, headers);
    let list = data(run(&state, &op, AdminRequest::UserList).await).unwrap_or_default();
    let rows = list
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|u| {
            let name = u["name"].as_str().unwrap_or("");
            vec![
                cell(&u["name"]),
                if u["admin"].as_bool() == Some(true) {
                    "operator".into()
                } else {
                    String::new()
                },
                when(&u["created_at"]),
                format!(
                    "<a href=\"/console/tokens?user={}\">tokens</a> {}",
                    esc(&urlencode(name)),
                    button(&op, "/console/users/delete", &[("name", name)], "Delete")
                ),
            ]
        })
        .collect();
    let body = format!(
        "{}{}<h2>Add a user</h2><form method=\"post\" action=\"/console/users/add\">{}\
         <label for=\"name\">Name</label><input id=\"name\" name=\"name\" required>\
         <label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" required>\
         <label><input type=\"checkbox\" name=\"admin\" value=\"on\"> Operator (may use this console)</label>\
         <button>Add</button></form>",
        n.html(),
        table(&["Name", "Role", "Created", ""], rows),
        csrf_input(&op)
    );
    page(&op, "Users", &body)
}

#[derive(Deserialize)]
pub struct UserForm {
    csrf: Option<String>,
    name: String,
    password: Option<String>,
    admin: Option<String>,
}

pub async fn user_add(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<UserForm>,
) -> Response {
    let op = checked!(state, headers, f.csrf.as_deref());
    let req = AdminRequest::UserAdd {
        name: f.name,
        password: f.password.unwrap_or_default(),
        admin: f.admin.is_some(),
    };
    back("/console/users", run(&state, &op, req).await)
}

pub async fn user_delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<UserForm>,
) -> Response {
    let op = checked!(state, headers, f.csrf.as_deref());
    back(
        "/console/users",
        run(&state, &op, AdminRequest::UserDel { name: f.name }).await,
    )
}

pub async fn clients(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(n): Query<Notice>,
) -> Response {
    let op = signed_in!(state, headers);
    let list = data(run(&state, &op, AdminRequest::ClientList).await).unwrap_or_default();
    let rows = list
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let id = c["id"].as_str().unwrap_or("");
            vec![
                cell(&c["id"]),
                cell(&c["name"]),
                cell(&c["kind"]),
                cell(&c["redirect_uris"]),
                cell(&c["service_user"]),
                if id == super::CLIENT_ID {
                    "<span class=\"meta\">built in</span>".into()
                } else {
                    button(&op, "/console/clients/remove", &[("id", id)], "Remove")
                },
            ]
        })
        .collect();
    let body = format!(
        "{}{}<h2>Register a client</h2><form method=\"post\" action=\"/console/clients/add\">{}\
         <label for=\"id\">Client id</label><input id=\"id\" name=\"id\" required>\
         <label for=\"cname\">Name</label><input id=\"cname\" name=\"name\" required>\
         <label for=\"kind\">Kind</label><select id=\"kind\" name=\"kind\">\
         <option value=\"confidential\">confidential (first-party, with a secret)</option>\
         <option value=\"public\">public (code + PKCE, device flow)</option>\
         <option value=\"implicit\">implicit</option></select>\
         <label for=\"redirect\">Redirect URI (public and implicit clients)</label><input id=\"redirect\" name=\"redirect_uri\">\
         <label for=\"suser\">Service user (client credentials)</label><input id=\"suser\" name=\"service_user\">\
         <button>Register</button></form><p class=\"meta\">A confidential client's secret is generated and shown once.</p>",
        n.html(),
        table(
            &["Id", "Name", "Kind", "Redirect URIs", "Service user", ""],
            rows
        ),
        csrf_input(&op)
    );
    page(&op, "OAuth clients", &body)
}

#[derive(Deserialize)]
pub struct ClientForm {
    csrf: Option<String>,
    id: String,
    name: Option<String>,
    kind: Option<String>,
    redirect_uri: Option<String>,
    service_user: Option<String>,
}

pub async fn client_add(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<ClientForm>,
) -> Response {
    let op = checked!(state, headers, f.csrf.as_deref());
    let kind = match f.kind.as_deref() {
        Some("public") => ClientKind::Public,
        Some("implicit") => ClientKind::Implicit,
        _ => ClientKind::Confidential,
    };
    let req = AdminRequest::ClientAdd {
        name: f.name.unwrap_or_else(|| f.id.clone()),
        id: f.id,
        kind,
        secret: None,
        redirect_uris: f
            .redirect_uri
            .filter(|u| !u.is_empty())
            .into_iter()
            .collect(),
        service_user: f.service_user.filter(|u| !u.is_empty()),
    };
    // The generated secret is shown on this page once, never put in a URL.
    match run(&state, &op, req).await {
        AdminResponse::Ok { message, .. } => page(
            &op,
            "Client registered",
            &format!(
                "<p class=\"ok\" role=\"status\">{}</p><p><a href=\"/console/clients\">Back to clients</a></p>",
                esc(&message)
            ),
        ),
        err => back("/console/clients", err),
    }
}

pub async fn client_remove(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<ClientForm>,
) -> Response {
    let op = checked!(state, headers, f.csrf.as_deref());
    if f.id == super::CLIENT_ID {
        return back(
            "/console/clients",
            AdminResponse::Error {
                message: "the console's own client stays".into(),
                exit_code: 2,
            },
        );
    }
    back(
        "/console/clients",
        run(&state, &op, AdminRequest::ClientRemove { id: f.id }).await,
    )
}

pub async fn tokens(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(n): Query<Notice>,
) -> Response {
    let op = signed_in!(state, headers);
    let user = n.user.clone().filter(|u| !u.is_empty());
    let list = data(run(&state, &op, AdminRequest::TokenList { user: user.clone() }).await)
        .unwrap_or_default();
    let rows = list
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let id = t["id"].as_str().unwrap_or("");
            vec![
                format!("<code>{}</code>", cell(&t["id"])),
                cell(&t["user"]),
                cell(&t["client_id"]),
                cell(&t["scopes"]),
                when(&t["expires_at"]),
                button(&op, "/console/tokens/revoke", &[("token", id)], "Revoke"),
            ]
        })
        .collect();
    let all = match &user {
        Some(u) => button(
            &op,
            "/console/tokens/revoke",
            &[("user", u)],
            &format!("Revoke every token of {u}"),
        ),
        None => String::new(),
    };
    let body = format!(
        "{}<form method=\"get\" action=\"/console/tokens\"><label for=\"user\">User</label>\
         <input id=\"user\" name=\"user\" value=\"{}\"><button>List</button></form>{}{all}",
        n.html(),
        esc(user.as_deref().unwrap_or("")),
        table(&["Id", "User", "Client", "Scopes", "Expires", ""], rows),
    );
    page(&op, "Tokens", &body)
}

#[derive(Deserialize)]
pub struct RevokeForm {
    csrf: Option<String>,
    token: Option<String>,
    user: Option<String>,
    back: Option<String>,
}

pub async fn token_revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<RevokeForm>,
) -> Response {
    let op = checked!(state, headers, f.csrf.as_deref());
    let to = match f.back.as_deref() {
        Some("/console/") => "/console/".to_string(),
        _ => match &f.user {
            Some(u) => format!("/console/tokens?user={}", urlencode(u)),
            None => "/console/tokens".to_string(),
        },
    };
    let req = AdminRequest::TokenRevoke {
        token: f.token.filter(|t| !t.is_empty()),
        user: f.user,
    };
    back(&to, run(&state, &op, req).await)
}

pub async fn retained(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(n): Query<Notice>,
) -> Response {
    let op = signed_in!(state, headers);
    let prefix = n.prefix.clone().unwrap_or_default();
    let list = state
        .broker
        .as_ref()
        .map(|b| b.retained(&prefix, 500))
        .unwrap_or_default();
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
         <input id=\"prefix\" name=\"prefix\" value=\"{}\"><button>Browse</button></form>{}\
         <p class=\"meta\">At most 500 shown.</p>",
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

pub async fn style() -> Response {
    static_file("text/css; charset=utf-8", include_str!("console.css"))
}

pub async fn icon() -> Response {
    static_file("image/svg+xml", include_str!("icon.svg"))
}

pub async fn script() -> Response {
    static_file("text/javascript; charset=utf-8", include_str!("live.js"))
}

fn static_file(kind: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    secure_headers(h);
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    resp
}

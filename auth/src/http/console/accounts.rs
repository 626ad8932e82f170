//! The token-service side of the console: users (add, with or without operator rights;
//! delete), OAuth clients (register, remove) and tokens (by user; revoke one or all). Each
//! action is the operator request the CLI sends, audited with actor `console:<user>`.

use axum::Form;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use super::html::{Notice, button, cell, csrf_input, next_page, page, page_of, table, when};
use super::{back, csrf_ok, data, operator, run, urlencode};
use crate::admin::{AdminRequest, AdminResponse};
use crate::http::AppState;
use crate::http::pages::esc;
use crate::model::ClientKind;

pub async fn users(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(n): Query<Notice>,
) -> Response {
    let op = signed_in!(state, headers);
    let req = AdminRequest::UserList { page: page_of(&n) };
    let list = data(run(&state, &op, req).await).unwrap_or_default();
    let list = list.as_array().map(Vec::as_slice).unwrap_or_default();
    let more = next_page(
        "/console/users",
        "",
        list.len(),
        list.last().and_then(|u| u["name"].as_str()),
    );
    let rows = list
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
        "{}{}{more}<h2>Add a user</h2><form method=\"post\" action=\"/console/users/add\">{}\
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
        tls_auth: None,
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
    let req = AdminRequest::TokenList {
        user: user.clone(),
        page: page_of(&n),
    };
    let list = data(run(&state, &op, req).await).unwrap_or_default();
    let list = list.as_array().map(Vec::as_slice).unwrap_or_default();
    let more = next_page(
        "/console/tokens",
        &user
            .as_deref()
            .map(|u| format!("user={}&amp;", esc(&urlencode(u))))
            .unwrap_or_default(),
        list.len(),
        list.last().and_then(|t| t["id"].as_str()),
    );
    let rows = list
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
         <input id=\"user\" name=\"user\" value=\"{}\"><button>List</button></form>{}{more}{all}",
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
        jti: None,
        issuer: None,
    };
    back(&to, run(&state, &op, req).await)
}

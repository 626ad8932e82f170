//! The console's HTML: the page frame (navigation, sign-out form), tables, one-button forms,
//! the security headers every console answer carries, and the static style sheet, script and
//! icon. Every value is escaped here or by the caller (`esc`): a `body` is escaped HTML.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::{Operator, urlencode};
use crate::http::pages::esc;
use crate::service::Page;

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

pub fn html(status: StatusCode, body: String) -> Response {
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
pub fn page(op: &Operator, title: &str, body: &str) -> Response {
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

pub fn csrf_input(op: &Operator) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&op.csrf)
    )
}

/// A one-button form posting `fields` to `action`.
pub fn button(op: &Operator, action: &str, fields: &[(&str, &str)], label: &str) -> String {
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

pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
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
pub fn cell(v: &Value) -> String {
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
pub fn when(v: &Value) -> String {
    v.as_u64()
        .map_or_else(|| "-".into(), |secs| esc(&crate::clock::utc(secs)))
}

#[derive(Deserialize, Default)]
/// A page's query: the outcome of the action that led to it, the filters of the tokens
/// (`user`) and retained (`prefix`) pages, and where a paged list goes on from (`after`).
pub struct Notice {
    ok: Option<String>,
    error: Option<String>,
    pub user: Option<String>,
    pub prefix: Option<String>,
    pub after: Option<String>,
}

/// Rows of a paged list (users, tokens) on one console page.
pub const PAGE_ROWS: usize = 100;

/// The page of a list the query asks for.
pub fn page_of(n: &Notice) -> Page {
    Page {
        after: n.after.clone().filter(|a| !a.is_empty()),
        limit: PAGE_ROWS,
    }
}

/// A link to the next page of a list of `shown` rows ending at `last`, when the page is full;
/// `query` is the rest of the list's query (already escaped for a URL).
pub fn next_page(path: &str, query: &str, shown: usize, last: Option<&str>) -> String {
    match last {
        Some(last) if shown >= PAGE_ROWS => format!(
            "<p><a href=\"{path}?{query}after={}\">Next {PAGE_ROWS}</a></p>",
            esc(&urlencode(last))
        ),
        _ => String::new(),
    }
}

impl Notice {
    pub fn html(&self) -> String {
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

//! The server-rendered pages (login and consent, device verification, results): every value
//! HTML-escaped, a CSRF token bound to a SameSite cookie, `X-Frame-Options: DENY` and a
//! Content-Security-Policy. They work without JavaScript.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::AppState;
use crate::secrets;

pub const CSRF_COOKIE: &str = "tessera_csrf";

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    k[..key.len().min(64)].copy_from_slice(&key[..key.len().min(64)]);
    let mut inner = Sha256::new();
    inner.update(k.iter().map(|b| b ^ 0x36).collect::<Vec<_>>());
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.iter().map(|b| b ^ 0x5c).collect::<Vec<_>>());
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The CSRF pair: a random cookie value and the form token derived from it.
pub fn new_csrf(state: &AppState) -> (String, String) {
    let cookie = secrets::random_string(18);
    let token = secrets::hex(&hmac_sha256(&state.csrf_key[..], cookie.as_bytes()));
    (cookie, token)
}

/// The value of the cookie `name` the browser sent.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Whether the form's token belongs to the cookie the browser sent.
pub fn csrf_ok(state: &AppState, headers: &HeaderMap, form_token: Option<&str>) -> bool {
    let Some(token) = form_token else {
        return false;
    };
    let Some(cookie) = cookie(headers, CSRF_COOKIE) else {
        return false;
    };
    let expected = secrets::hex(&hmac_sha256(&state.csrf_key[..], cookie.as_bytes()));
    secrets::equal(expected.as_bytes(), token.as_bytes())
}

fn secure_headers(h: &mut HeaderMap) {
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
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

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;color:#222}\
h1{font-size:1.4rem}label{display:block;margin:.8rem 0 .2rem}input,select{width:100%;padding:.5rem;box-sizing:border-box}\
.buttons{margin-top:1.2rem;display:flex;gap:.6rem}button{padding:.6rem 1.2rem}\
.error{color:#a00;background:#fee;padding:.6rem}.meta{color:#555;font-size:.9rem}";

/// A full page. `body` must already be escaped HTML.
pub fn page(status: StatusCode, title: &str, body: &str, csrf_cookie: Option<&str>) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{t}</title>\
         <style>{STYLE}</style></head><body><h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    );
    let mut resp = (status, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(h);
    if let Some(c) = csrf_cookie
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{CSRF_COOKIE}={c}; Path=/oauth; HttpOnly; SameSite=Strict; Secure"
        ))
    {
        h.insert(header::SET_COOKIE, v);
    }
    resp
}

/// A page that only shows a message (an error that must not redirect, or a result).
pub fn message(status: StatusCode, title: &str, text: &str) -> Response {
    page(status, title, &format!("<p>{}</p>", esc(text)), None)
}

/// Hidden inputs carrying request parameters through the form.
pub fn hidden(fields: &[(&str, Option<&str>)]) -> String {
    fields
        .iter()
        .filter_map(|(k, v)| {
            v.map(|v| {
                format!(
                    "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                    esc(k),
                    esc(v)
                )
            })
        })
        .collect()
}

/// A redirect (302) to a client's registered URI.
pub fn redirect(location: &str) -> Response {
    let mut resp = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(resp.headers_mut());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;&quot;"
        );
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            secrets::hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

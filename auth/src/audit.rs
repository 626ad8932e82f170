//! The audit log: who logged in or was refused, which tokens were issued, refreshed and
//! revoked, which users and clients an operator added or removed, and every other operator
//! action. Each is one `tracing` event on the target `tessera::audit` with an `event` field
//! naming it and flat fields for the rest, so `log.format: json` gives one JSON object per line
//! (`"target":"tessera::audit"`) and a text log one `key=value` line; a shipper selects them by
//! target. `RUST_LOG=tessera::audit=info,warn` keeps them when the rest is quieter.
//!
//! Never in an event: a token, a refresh token, a code, a password or a client secret. A token
//! appears as its id (the first hex digits of its SHA-256, what `tessera token list` shows).
//! The field set of each event is documented in docs/operations.md.

use std::net::IpAddr;

use tracing::info;

pub const TARGET: &str = "tessera::audit";

/// Who did an operator action: `cli` (the admin socket or the store file), or
/// `console:<user>` (the operator console, signed in as that admin).
pub type Actor<'a> = &'a str;

/// An MQTT authentication that ended (CONNECT or re-authentication).
#[allow(clippy::too_many_arguments)]
pub fn login(
    accepted: bool,
    method: &str,
    client_id: &str,
    user: Option<&str>,
    peer: IpAddr,
    token_id: Option<&str>,
    reason_code: u8,
    reason: &str,
) {
    let outcome = if accepted { "accepted" } else { "refused" };
    info!(
        target: TARGET,
        event = "mqtt_login",
        outcome,
        method,
        client_id,
        user = user.unwrap_or(""),
        peer = %peer,
        token_id = token_id.unwrap_or(""),
        reason_code = format_args!("0x{reason_code:02x}").to_string(),
        reason,
    );
}

/// Another issuer's token presented for a login, the first time it is verified (later logins
/// with it carry its label as `token_id`), or refused: whose it is (issuer, subject, `jti`),
/// and why it was refused; never the token.
pub fn external_token(
    accepted: bool,
    issuer: Option<&str>,
    subject: Option<&str>,
    jti: Option<&str>,
    token_id: Option<&str>,
    reason: &str,
) {
    let outcome = if accepted { "accepted" } else { "refused" };
    info!(
        target: TARGET,
        event = "external_token",
        outcome,
        issuer = issuer.unwrap_or(""),
        subject = subject.unwrap_or(""),
        jti = jti.unwrap_or(""),
        token_id = token_id.unwrap_or(""),
        reason,
    );
}

/// A token issued over HTTPS (`grant_type`) or by an operator (`operator`).
#[allow(clippy::too_many_arguments)]
pub fn token_issued(
    transport: &str,
    grant_type: &str,
    user: &str,
    client_id: Option<&str>,
    token_id: &str,
    scope: &str,
    expires_in: u64,
) {
    info!(
        target: TARGET,
        event = "token_issued",
        transport,
        grant_type,
        user,
        client_id = client_id.unwrap_or(""),
        token_id,
        scope,
        expires_in,
    );
}

/// A login over HTTPS (password grant, authorization or device page) refused.
pub fn http_login_refused(via: &str, user: &str, peer: IpAddr, reason: &str) {
    info!(target: TARGET, event = "http_login_refused", via, user, peer = %peer, reason);
}

/// Tokens revoked: `what` is `token`, `user`, `client`, `family` or `password`; `subject` the
/// token id, user or client it names.
pub fn revoked(what: &str, subject: &str, count: usize) {
    info!(target: TARGET, event = "tokens_revoked", what, subject, count);
}

/// An operator request that changed something, or was refused.
pub fn admin_action(actor: Actor<'_>, action: &str, subject: &str, ok: bool, detail: &str) {
    info!(
        target: TARGET,
        event = "admin_action",
        actor,
        action,
        subject,
        outcome = if ok { "ok" } else { "refused" },
        detail,
    );
}

/// A console sign-in attempt.
pub fn console_sign_in(user: &str, accepted: bool, reason: &str) {
    info!(
        target: TARGET,
        event = "console_sign_in",
        user,
        outcome = if accepted { "accepted" } else { "refused" },
        reason,
    );
}

//! The endpoint's error answers: RFC 6749 §5.2 JSON (`error`, `error_description`) with the
//! status and headers it names, the error codes as an enum, and the one mapping from the token
//! service's [`ServiceError`] to them.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::set_json_headers;
use crate::service::ServiceError;

/// The error codes of RFC 6749 (§4.1.2.1, §4.2.2.1, §5.2) and RFC 8628 (§3.5).
/// Seconds a client is asked to wait after the store failed.
const STORE_RETRY_AFTER: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    UnsupportedResponseType,
    InvalidScope,
    AccessDenied,
    ServerError,
    AuthorizationPending,
    SlowDown,
    ExpiredToken,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::UnsupportedResponseType => "unsupported_response_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::ServerError => "server_error",
            ErrorCode::AuthorizationPending => "authorization_pending",
            ErrorCode::SlowDown => "slow_down",
            ErrorCode::ExpiredToken => "expired_token",
        }
    }
}

/// An RFC 6749 §5.2 error answer.
#[derive(Debug)]
pub struct OAuthError {
    pub status: StatusCode,
    pub error: ErrorCode,
    pub description: String,
    pub retry_after: Option<u64>,
}

impl OAuthError {
    /// A 400 answer.
    pub fn new(error: ErrorCode, description: impl Into<String>) -> OAuthError {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
            retry_after: None,
        }
    }

    pub fn invalid_request(description: impl Into<String>) -> OAuthError {
        OAuthError::new(ErrorCode::InvalidRequest, description)
    }

    /// 401 with `WWW-Authenticate` (RFC 6749 §5.2).
    pub fn invalid_client(description: impl Into<String>) -> OAuthError {
        OAuthError {
            status: StatusCode::UNAUTHORIZED,
            ..OAuthError::new(ErrorCode::InvalidClient, description)
        }
    }

    /// 500: a request's task failed (a bug); the cause is logged, not told.
    pub fn server(e: impl std::fmt::Display) -> OAuthError {
        tracing::error!(error = %e, "token service");
        OAuthError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            ..OAuthError::new(ErrorCode::ServerError, "the request could not be completed")
        }
    }

    /// 503 with `Retry-After`: the store failed (an outage, not the client's fault: no login
    /// backoff counts it); the cause is logged, the client learns only that the store is
    /// unavailable.
    pub fn unavailable(e: impl std::fmt::Display) -> OAuthError {
        tracing::error!(error = %e, "token store");
        OAuthError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: Some(STORE_RETRY_AFTER),
            ..OAuthError::new(
                ErrorCode::ServerError,
                "the token store is unavailable; retry later",
            )
        }
    }

    /// 429 with `Retry-After`: the login backoff of this user or address.
    pub fn slow_down(wait: std::time::Duration) -> OAuthError {
        OAuthError {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: Some(wait.as_secs().max(1)),
            ..OAuthError::new(ErrorCode::SlowDown, "too many failed attempts; retry later")
        }
    }
}

impl From<ServiceError> for OAuthError {
    fn from(e: ServiceError) -> OAuthError {
        use ServiceError::*;
        let code = match &e {
            Storage(_) => return OAuthError::unavailable(e),
            ScopeNotAllowed(_) | ScopeNotAFilter(_) => ErrorCode::InvalidScope,
            UserExists(_) | ClientExists(_) | Usage(_) => ErrorCode::InvalidRequest,
            DeviceCodeUnknown => ErrorCode::ExpiredToken,
            DevicePending => ErrorCode::AuthorizationPending,
            // RFC 8628 §3.5: a 400, unlike the backoff's 429.
            DeviceSlowDown => ErrorCode::SlowDown,
            DeviceDenied => ErrorCode::AccessDenied,
            UnknownUser(_)
            | UnknownClient(_)
            | UnknownRefreshToken
            | UnknownToken
            | NoSuchConnection(_)
            | InvalidUserName(_)
            | EmptyPassword
            | InvalidClientId(_)
            | InvalidRedirectUri(_)
            | SecretForPublicClient
            | AmbiguousTokenId(_)
            | RefreshOtherClient
            | RefreshOtherCertificate
            | RefreshReused
            | RefreshRace
            | RefreshNotForThis(_)
            | ScopeExceedsGrant
            | CodeUnknown
            | CodeUsed
            | CodeOtherClient
            | RedirectUriMismatch
            | PkceFailed
            | VerifierMissing
            | DeviceCodeOtherClient
            | DeviceCodeUsed => ErrorCode::InvalidGrant,
        };
        OAuthError::new(code, e.to_string())
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.error.as_str(), "error_description": self.description });
        let mut resp = (self.status, body.to_string()).into_response();
        let h = resp.headers_mut();
        set_json_headers(h);
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tessera\""),
            );
        }
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            h.insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

//! The OAuth2 endpoint: an axum router under `/oauth` served over HTTPS (tokio-rustls), or plain
//! HTTP when configured for a proxy. Owns what every route shares: the state, the RFC 6749 §5.2
//! error answers, client authentication, and the per-user / per-IP backoff.

mod authorize;
pub mod console;
mod device;
mod error;
mod pages;
mod token;

pub use error::{ErrorCode, OAuthError};
pub(crate) use token::read_token_request;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;

use tessera_broker::tls::{ClientCertificate, TlsServer};
use tessera_config::OAuthConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::backoff::Backoff;
use crate::service::TokenService;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<TokenService>,
    pub backoff: Arc<Backoff>,
    pub issuer: String,
    /// Key for CSRF tokens of the HTML forms (random per process).
    pub csrf_key: Arc<[u8; 32]>,
    /// The running broker, for the console (connections, kick, retained, counters).
    pub broker: Option<tessera_broker::BrokerHandle>,
}

impl AppState {
    pub fn config(&self) -> &OAuthConfig {
        &self.service.config
    }

    /// A token issued by `grant_type`, counted and audited, as its JSON answer.
    fn issued(&self, grant_type: &'static str, t: &crate::service::Issued) -> Response {
        self.service.record_issued("https", grant_type, t);
        token::issued_json(t)
    }

    /// Runs `work` with the token service on tokio's blocking pool (redb and argon2 hold the
    /// thread); a task that panics answers `server_error`.
    pub async fn blocking<T, F>(&self, work: F) -> Result<T, OAuthError>
    where
        F: FnOnce(&TokenService) -> T + Send + 'static,
        T: Send + 'static,
    {
        let service = self.service.clone();
        tokio::task::spawn_blocking(move || work(&service))
            .await
            .map_err(OAuthError::server)
    }
}

/// `Content-Type: application/json;charset=UTF-8`, `Cache-Control: no-store`,
/// `Pragma: no-cache`, as ejabberd and RFC 6749 §5.1 send them.
pub fn set_json_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

pub fn json_response(v: serde_json::Value) -> Response {
    let mut resp = (StatusCode::OK, v.to_string()).into_response();
    set_json_headers(resp.headers_mut());
    resp
}

/// A `scope` parameter: space-separated scope tokens (RFC 6749 §3.3).
pub fn parse_scope(scope: &Option<String>) -> Vec<String> {
    scope
        .as_deref()
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Client credentials from HTTP Basic (RFC 6749 §2.3.1) or the form body.
pub fn client_credentials(
    headers: &HeaderMap,
    body_id: Option<&str>,
    body_secret: Option<&str>,
) -> Result<(Option<String>, Option<String>), OAuthError> {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let raw = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| STANDARD.decode(b.trim()).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| OAuthError::invalid_client("malformed Authorization header"))?;
        let (id, secret) = raw
            .split_once(':')
            .ok_or_else(|| OAuthError::invalid_client("malformed Authorization header"))?;
        if body_secret.is_some() {
            return Err(OAuthError::invalid_request(
                "client credentials given twice",
            ));
        }
        let dec = |s: &str| form_urldecode(s);
        return Ok((Some(dec(id)), Some(dec(secret))));
    }
    Ok((body_id.map(str::to_string), body_secret.map(str::to_string)))
}

/// `application/x-www-form-urlencoded` decoding of one value (RFC 6749 §2.3.1 encodes the
/// Basic credentials that way).
fn form_urldecode(s: &str) -> String {
    let encoded = format!("v={s}");
    form_urlencoded::parse(encoded.as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

pub use crate::service::ClientCheck;

/// Identifies and (for confidential clients) authenticates the client of a request: by its
/// secret, or by the TLS client certificate of the request (RFC 8705 §2) if it registered one
/// (`TokenService::check_client`, also used for requests in MQTT's Authentication Data).
pub async fn check_client(
    state: &AppState,
    id: Option<String>,
    secret: Option<String>,
    certificate: Option<&Arc<ClientCertificate>>,
) -> Result<ClientCheck, OAuthError> {
    let certificate = certificate.cloned();
    state
        .blocking(move |service| service.check_client(id, secret, certificate.as_deref()))
        .await?
        .map_err(OAuthError::from)?
        .map_err(|refused| OAuthError::invalid_client(refused.0))
}

/// The id of the checked client; flows that bind what they issue to a client need one.
pub fn client_id_of(client: ClientCheck) -> Result<String, OAuthError> {
    client
        .id()
        .map(str::to_string)
        .ok_or_else(|| OAuthError::invalid_request("client_id is required"))
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/oauth/token", post(token::token))
        .route("/oauth/revoke", post(token::revoke))
        .route("/oauth/introspect", post(token::introspect))
        .route(
            "/oauth/authorize",
            get(authorize::authorize_form).post(authorize::authorize_submit),
        )
        .route(
            "/oauth/authorization_token",
            get(authorize::ejabberd_form).post(authorize::ejabberd_submit),
        )
        .route(
            "/oauth/device_authorization",
            post(device::device_authorization),
        )
        .route(
            "/oauth/device",
            get(device::verify_form).post(device::verify_submit),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(token::metadata),
        )
        .merge(console::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.service.metrics.clone(),
            count_request,
        ))
        .with_state(state)
}

/// Counts a request by its matched route and status (`tessera_oauth_requests_total`).
async fn count_request(
    axum::extract::State(metrics): axum::extract::State<Arc<crate::metrics::AuthMetrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let endpoint = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("other", |p| p.as_str())
        .to_string();
    let response = next.run(request).await;
    metrics.request(endpoint, response.status().as_u16());
    response
}

/// Binds the endpoint's address; the error names it.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot bind the OAuth endpoint on {addr}: {e}"),
        )
    })
}

/// The issuer URL for a bound endpoint when none is configured.
pub fn default_issuer(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if addr.ip().is_loopback() {
        format!("{scheme}://localhost:{}", addr.port())
    } else {
        format!("{scheme}://{addr}")
    }
}

/// A fresh key for CSRF tokens.
pub fn csrf_key() -> Arc<[u8; 32]> {
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).expect("the operating system's random source failed");
    Arc::new(k)
}

/// Serves the endpoint on `listener` until the task is aborted. With `tls`, each connection
/// takes the TLS configuration current when it starts (`tessera reload` changes it for later
/// ones), and its requests carry the client certificate it presented ([`PeerCertificate`]).
pub fn serve(
    state: AppState,
    listener: TcpListener,
    tls: Option<Arc<TlsServer>>,
) -> JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        info!(addr = %addr, tls = tls.is_some(), issuer = %state.issuer, "oauth endpoint ready");
    }
    let app = router(state);
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let app = app.clone().layer(axum::Extension(Peer(peer)));
            let tls = tls.as_ref().map(|t| t.current());
            tokio::spawn(async move {
                let builder = hyper::server::conn::http1::Builder::new();
                let result = match tls {
                    Some(tls) => {
                        let handshake = tokio::time::timeout(
                            std::time::Duration::from_secs(10),
                            tls.acceptor().accept(stream),
                        );
                        let Ok(Ok(s)) = handshake.await else {
                            return;
                        };
                        let certificate = tls.client_certificate(s.get_ref().1.peer_certificates());
                        let app = app.layer(axum::Extension(PeerCertificate(certificate)));
                        let service = TowerToHyperService::new(app);
                        builder.serve_connection(TokioIo::new(s), service).await
                    }
                    None => {
                        let service = TowerToHyperService::new(app);
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                };
                if let Err(e) = result {
                    debug!(peer = %peer, error = %e, "http connection");
                }
            });
        }
    })
}

/// The client's address, for per-IP backoff.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// The client certificate the request's TLS connection presented (none without one, or
/// without TLS): tokens asked for with one are bound to it (RFC 8705 §3).
#[derive(Debug, Clone, Default)]
pub struct PeerCertificate(pub Option<Arc<ClientCertificate>>);

impl PeerCertificate {
    /// Its `x5t#S256` thumbprint, what a bound token records.
    pub fn thumbprint(&self) -> Option<String> {
        self.0.as_ref().map(|c| c.thumbprint())
    }
}

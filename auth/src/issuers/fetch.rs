//! A small HTTPS client for what an issuer publishes (its metadata, its keys) and its
//! introspection endpoint: one request per connection over tokio-rustls (the ring provider,
//! named explicitly), HTTP/1.1, the system's roots and the issuer's own CA, a bounded time
//! and a bounded body. These requests are rare (keys are cached, answers too), so keeping
//! connections alive would buy nothing worth its state.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::header::{self, HeaderValue};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The largest answer read (a JWKS of a few dozen keys is a few KiB).
const MAX_BODY: usize = 256 * 1024;

/// Why a request to the provider failed: it never says anything secret (the URL is the
/// operator's, the token is never in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    TimedOut,
    /// Could not connect, or TLS failed, or the connection broke.
    Unreachable(String),
    /// An answer, but not a 200 with JSON.
    Status(u16),
    Body(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::TimedOut => f.write_str("the provider did not answer in time"),
            FetchError::Unreachable(e) => write!(f, "cannot reach the provider: {e}"),
            FetchError::Status(s) => write!(f, "the provider answered HTTP {s}"),
            FetchError::Body(e) => write!(f, "the provider's answer is not usable: {e}"),
        }
    }
}

/// An answer: its JSON, and `Cache-Control: max-age` if it said one.
pub struct Answer {
    pub json: serde_json::Value,
    pub max_age: Option<Duration>,
}

#[derive(Clone)]
pub struct Fetcher {
    tls: TlsConnector,
}

impl Fetcher {
    /// Trusting the system's roots and, if given, the CA certificates in `ca` (PEM).
    pub fn new(ca: Option<&Path>) -> std::io::Result<Fetcher> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for c in native.certs {
            let _ = roots.add(c);
        }
        if let Some(ca) = ca {
            for c in CertificateDer::pem_file_iter(ca).map_err(std::io::Error::other)? {
                roots
                    .add(c.map_err(std::io::Error::other)?)
                    .map_err(std::io::Error::other)?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Fetcher {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    pub async fn get(&self, url: &str, within: Duration) -> Result<Answer, FetchError> {
        self.request(url, None, None, within).await
    }

    /// POSTs `form` (application/x-www-form-urlencoded) with HTTP Basic `credentials`.
    pub async fn post_form(
        &self,
        url: &str,
        form: String,
        credentials: (&str, &str),
        within: Duration,
    ) -> Result<Answer, FetchError> {
        self.request(url, Some(form), Some(credentials), within)
            .await
    }

    async fn request(
        &self,
        url: &str,
        form: Option<String>,
        credentials: Option<(&str, &str)>,
        within: Duration,
    ) -> Result<Answer, FetchError> {
        tokio::time::timeout(within, self.exchange(url, form, credentials))
            .await
            .map_err(|_| FetchError::TimedOut)?
    }

    async fn exchange(
        &self,
        url: &str,
        form: Option<String>,
        credentials: Option<(&str, &str)>,
    ) -> Result<Answer, FetchError> {
        let unreachable = |e: &dyn std::fmt::Display| FetchError::Unreachable(e.to_string());
        let parsed = url::Url::parse(url).map_err(|e| unreachable(&e))?;
        let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
            return Err(FetchError::Unreachable(format!("no host in {url}")));
        };
        if parsed.scheme() != "https" {
            return Err(FetchError::Unreachable(format!("{url} is not https")));
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| unreachable(&e))?;
        let name = ServerName::try_from(host.clone()).map_err(|e| unreachable(&e))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = match parsed.query() {
            Some(q) => format!("{}?{q}", parsed.path()),
            None => parsed.path().to_string(),
        };
        let authority = match parsed.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let mut request = Request::builder()
            .method(if form.is_some() { "POST" } else { "GET" })
            .uri(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "tessera");
        if let Some((id, secret)) = credentials {
            use base64::Engine;
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                enc(id),
                enc(secret)
            ));
            let value = HeaderValue::from_str(&format!("Basic {basic}"))
                .map_err(|e| FetchError::Body(e.to_string()))?;
            request = request.header(header::AUTHORIZATION, value);
        }
        let body = match form {
            Some(f) => {
                request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Full::new(Bytes::from(f))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request
            .body(body)
            .map_err(|e| FetchError::Body(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = response.status().as_u16();
        let max_age = response
            .headers()
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        if status != 200 {
            return Err(FetchError::Status(status));
        }
        let bytes = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| FetchError::Body(e.to_string()))?
            .to_bytes();
        let json = serde_json::from_slice(&bytes).map_err(|e| FetchError::Body(e.to_string()))?;
        Ok(Answer { json, max_age })
    }
}

/// `max-age=N` of a Cache-Control value (`no-store` / `no-cache`: 0).
fn max_age(v: &str) -> Option<Duration> {
    let mut age = None;
    for d in v.split(',').map(str::trim) {
        let lower = d.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = lower.strip_prefix("max-age=") {
            age = n
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age_is_read() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=bogus"), None);
    }
}

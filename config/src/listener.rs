//! `listeners:`: where clients connect, each a transport and a bind address, and for TLS the
//! files its server reads ([`TlsFiles`]), client certificates included.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MQTT over plain TCP.
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl Transport {
    pub fn uses_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }
    pub fn uses_websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    #[serde(rename = "type")]
    pub transport: Transport,
    /// Address and port to bind; port 0 picks a free port (logged at start).
    pub bind: SocketAddr,
    /// PEM certificate chain (tls, wss). Absent: a self-signed development certificate.
    #[serde(default)]
    pub certificate: Option<Spanned<PathBuf>>,
    /// PEM private key matching `certificate`.
    #[serde(default)]
    pub private_key: Option<Spanned<PathBuf>>,
    /// HTTP path of the WebSocket endpoint (ws, wss).
    #[serde(default = "default_ws_path")]
    pub path: String,
    /// Whether the TLS handshake asks for a client certificate (tls, wss).
    #[serde(default)]
    pub client_certificates: ClientCertificates,
    /// PEM certificates of the CAs a client certificate must chain to.
    #[serde(default)]
    pub client_ca: Option<Spanned<PathBuf>>,
    /// PEM certificate revocation lists of those CAs.
    #[serde(default)]
    pub client_crl: Option<Spanned<Vec<PathBuf>>>,
}

/// Whether a TLS server asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertificates {
    /// It does not ask.
    #[default]
    None,
    /// It asks; a client without one goes on as without TLS client authentication.
    Optional,
    /// No handshake completes without a certificate chaining to `client_ca`, not revoked.
    Required,
}

/// The files one TLS server reads: its certificate and key (none: the development
/// certificate), and what it asks of client certificates. Read again on `tessera reload`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    pub client_certificates: ClientCertificates,
    pub client_ca: Option<PathBuf>,
    pub client_crl: Vec<PathBuf>,
}

impl TlsFiles {
    /// The operator's certificate and key, if both are set.
    pub fn key_pair(&self) -> Option<(&Path, &Path)> {
        self.certificate.as_deref().zip(self.private_key.as_deref())
    }
}

impl Listener {
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            certificate: self.certificate.as_ref().map(|s| s.value.clone()),
            private_key: self.private_key.as_ref().map(|s| s.value.clone()),
            client_certificates: self.client_certificates,
            client_ca: self.client_ca.as_ref().map(|s| s.value.clone()),
            client_crl: self
                .client_crl
                .as_ref()
                .map(|s| s.value.clone())
                .unwrap_or_default(),
        }
    }
}

fn default_ws_path() -> String {
    "/mqtt".to_string()
}
pub(crate) fn default_listeners() -> Vec<Spanned<Listener>> {
    let unknown = serde_saphyr::Location::UNKNOWN;
    let tcp = Listener {
        transport: Transport::Tcp,
        bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
        certificate: None,
        private_key: None,
        path: default_ws_path(),
        client_certificates: ClientCertificates::None,
        client_ca: None,
        client_crl: None,
    };
    vec![Spanned::new(tcp, unknown, unknown)]
}

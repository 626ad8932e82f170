//! `listeners:`: where clients connect, each a transport and a bind address.

use std::net::SocketAddr;
use std::path::PathBuf;

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
    pub certificate: Option<PathBuf>,
    /// PEM private key matching `certificate`.
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    /// HTTP path of the WebSocket endpoint (ws, wss).
    #[serde(default = "default_ws_path")]
    pub path: String,
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
    };
    vec![Spanned::new(tcp, unknown, unknown)]
}

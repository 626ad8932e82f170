//! Tessera's configuration: the YAML schema, the embedded default, and validation.
//!
//! Owns: every option an operator can set, its default, and the checks that run before the broker
//! starts. Knows no other Tessera crate. Every error names the file, line, column and field.
//! The commented `tessera.example.yml` at the repository root documents each option; a unit test
//! keeps it loadable and equal to the embedded default.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

/// The configuration used when no file is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../tessera.example.yml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory for state the broker writes: the development TLS certificate, later the store.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default = "default_listeners")]
    pub listeners: Vec<Spanned<Listener>>,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub sys: SysConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub oauth: OAuthConfig,
    /// Topic rights: filter (with `%u` user and `%c` client id) → who may use it.
    #[serde(default)]
    pub access_publish: std::collections::BTreeMap<String, AccessRule>,
    #[serde(default)]
    pub access_subscribe: std::collections::BTreeMap<String, AccessRule>,
}

/// Who a topic rule admits: `all`, `none`, or a list of user names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum AccessRule {
    Named(NamedRule),
    Users(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamedRule {
    All,
    None,
}

impl AccessRule {
    pub fn admits(&self, user: Option<&str>) -> bool {
        match self {
            AccessRule::Named(NamedRule::All) => true,
            AccessRule::Named(NamedRule::None) => false,
            AccessRule::Users(list) => user.is_some_and(|u| list.iter().any(|x| x == u)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientIdCheck {
    /// No check of `client_id`.
    Allow,
    /// The client must be registered (and authenticate if confidential).
    #[default]
    Db,
    /// No client may obtain tokens.
    Deny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthConfig {
    /// Serve the OAuth2 endpoint.
    pub enabled: bool,
    /// Address of the HTTPS endpoint (paths under `/oauth`).
    pub bind: SocketAddr,
    /// Serve plain HTTP instead of HTTPS (only for a TLS-terminating proxy in front).
    pub plain_http: bool,
    pub certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    /// The URL clients see (metadata, device verification links); default from `bind`.
    pub issuer: Option<String>,
    /// Host names accepted in `user@host`.
    pub hosts: Vec<String>,
    /// Default access token lifetime in seconds (ejabberd's `oauth_expire`).
    pub oauth_expire: u64,
    /// Upper bound on a requested `ttl` in seconds.
    pub max_ttl: u64,
    /// Who may obtain tokens: `all`, `none`, or a list of users (ejabberd's `oauth_access`).
    pub oauth_access: AccessRule,
    /// ejabberd's `oauth_client_id_check`: `allow`, `db` or `deny`.
    pub oauth_client_id_check: ClientIdCheck,
    /// Refresh token lifetime in seconds.
    pub refresh_token_expire: u64,
    /// Scopes a token may carry. `mqtt:publish:*` admits any `mqtt:publish:<filter>`.
    pub scopes: Vec<String>,
    /// Failed logins per user or per IP address before answers are delayed (429).
    pub max_failures: u32,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        OAuthConfig {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 5443)),
            plain_http: false,
            certificate: None,
            private_key: None,
            issuer: None,
            hosts: vec!["localhost".to_string()],
            oauth_expire: 2_592_000,
            max_ttl: 7_776_000,
            oauth_access: AccessRule::Named(NamedRule::All),
            oauth_client_id_check: ClientIdCheck::Db,
            refresh_token_expire: 7_776_000,
            scopes: vec![
                "sasl_auth".to_string(),
                "mqtt".to_string(),
                "mqtt:publish:*".to_string(),
                "mqtt:subscribe:*".to_string(),
            ],
            max_failures: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (human) or `json` (one object per line).
    #[serde(default)]
    pub format: LogFormat,
    /// The tracing filter used when `RUST_LOG` is not set.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_log_level(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// Drop the oldest queued message for that client and count it.
    #[default]
    DropOldest,
    /// Refuse the new message for that client; a QoS 1/2 publisher gets reason 0x97.
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Largest packet accepted from a client, advertised as Maximum Packet Size (bytes).
    #[serde(deserialize_with = "max_packet_size")]
    pub max_packet_size: u32,
    /// QoS 1/2 publishes a client may have unacknowledged towards the broker (Receive Maximum).
    #[serde(deserialize_with = "receive_maximum")]
    pub receive_maximum: u16,
    /// Highest QoS the broker grants (0, 1 or 2).
    #[serde(deserialize_with = "max_qos")]
    pub max_qos: u8,
    pub retain_available: bool,
    pub wildcard_subscriptions: bool,
    pub shared_subscriptions: bool,
    pub subscription_identifiers: bool,
    /// Topic aliases a client may use towards the broker (0 disables).
    pub topic_alias_maximum: u16,
    /// Upper bound on a client's keep-alive (seconds); 0 = no bound. Longer requests, and
    /// keep-alive 0, are answered with Server Keep Alive.
    pub max_keep_alive: u16,
    /// Upper bound on Session Expiry Interval (seconds); a larger request is lowered to it.
    pub max_session_expiry: u32,
    /// Seconds a new connection has to send CONNECT.
    #[serde(deserialize_with = "connect_timeout")]
    pub connect_timeout: u32,
    /// Concurrent client connections; beyond it CONNACK 0x97 (3.1.1: 0x03).
    pub max_connections: u32,
    /// Messages queued per client (offline or behind its flow control).
    #[serde(deserialize_with = "max_queued_messages")]
    pub max_queued_messages: u32,
    /// Payload bytes queued per client.
    pub max_queued_bytes: u64,
    pub queue_full: QueueFullPolicy,
    /// Bytes of encoded packets buffered for writing to one client before the broker stops
    /// reading from it (its own acknowledgements) and stops draining its queue.
    #[serde(deserialize_with = "max_client_buffer")]
    pub max_client_buffer: u32,
    /// Also queue QoS 0 messages for offline persistent sessions.
    pub queue_qos0_offline: bool,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_packet_size: 1024 * 1024,
            receive_maximum: 100,
            max_qos: 2,
            retain_available: true,
            wildcard_subscriptions: true,
            shared_subscriptions: true,
            subscription_identifiers: true,
            topic_alias_maximum: 64,
            max_keep_alive: 0,
            max_session_expiry: u32::MAX,
            connect_timeout: 10,
            max_connections: 100_000,
            max_queued_messages: 1000,
            max_queued_bytes: 64 * 1024 * 1024,
            queue_full: QueueFullPolicy::DropOldest,
            max_client_buffer: 1024 * 1024,
            queue_qos0_offline: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SysConfig {
    /// Seconds between `$SYS/broker/...` updates; 0 turns them off.
    pub interval: u32,
}

impl Default for SysConfig {
    fn default() -> Self {
        SysConfig { interval: 10 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accept clients that present no credentials and no authentication method.
    pub allow_anonymous: bool,
    /// Enhanced authentication with method `X-OAUTH2` (one or two steps, re-authentication).
    pub x_oauth2: bool,
    /// An access token sent as the MQTT password (for 3.1.1 devices).
    pub token_as_password: bool,
    /// User name and password checked against the user store.
    pub password_login: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: false,
            x_oauth2: true,
            token_as_password: true,
            password_login: true,
        }
    }
}

/// Declares a deserializer that range-checks a number, so the error carries the value's position.
macro_rules! bounded {
    ($name:ident, $ty:ty, $lo:expr, $hi:expr, $why:expr) => {
        fn $name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            let v = <$ty>::deserialize(d)?;
            if !($lo..=$hi).contains(&v) {
                return Err(serde::de::Error::custom(format!(
                    "field `mqtt.{}`: {} (got {v})",
                    stringify!($name),
                    $why
                )));
            }
            Ok(v)
        }
    };
}
bounded!(
    max_packet_size,
    u32,
    16,
    268_435_455,
    "must be between 16 and 268435455"
);
bounded!(receive_maximum, u16, 1, u16::MAX, "must be at least 1");
bounded!(max_qos, u8, 0, 2, "must be 0, 1 or 2");
bounded!(
    connect_timeout,
    u32,
    1,
    3600,
    "must be between 1 and 3600 seconds"
);
bounded!(max_queued_messages, u32, 1, u32::MAX, "must be at least 1");
bounded!(
    max_client_buffer,
    u32,
    4096,
    u32::MAX,
    "must be at least 4096"
);

fn default_data_dir() -> PathBuf {
    PathBuf::from("tessera-data")
}
fn default_log_level() -> String {
    "info".to_string()
}
fn default_ws_path() -> String {
    "/mqtt".to_string()
}
fn default_listeners() -> Vec<Spanned<Listener>> {
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

/// A configuration error: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The embedded default configuration.
    pub fn embedded() -> Config {
        // The embedded text is checked by a unit test; failing here is a build defect.
        Config::parse(EMBEDDED_DEFAULT, "<embedded default>").expect("embedded default is valid")
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &file)
    }

    /// Parses and validates YAML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            ConfigError {
                file: file.to_string(),
                line,
                column,
                message: first_line(&e.to_string()),
            }
        })?;
        config.validate(file)?;
        Ok(config)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let o = &self.oauth;
        if o.certificate.is_some() != o.private_key.is_some() {
            return Err(ConfigError {
                file: file.to_string(),
                line: 0,
                column: 0,
                message: "field `oauth.certificate`: `certificate` and `private_key` go together"
                    .into(),
            });
        }
        let err = |loc: serde_saphyr::Location, message: String| ConfigError {
            file: file.to_string(),
            line: loc.line(),
            column: loc.column(),
            message,
        };
        let nowhere = serde_saphyr::Location::UNKNOWN;
        if self.listeners.is_empty() {
            return Err(err(
                nowhere,
                "field `listeners`: at least one listener is needed".into(),
            ));
        }
        for (i, spanned) in self.listeners.iter().enumerate() {
            let l = &spanned.value;
            let here = spanned.referenced;
            if l.certificate.is_some() != l.private_key.is_some() {
                return Err(err(
                    here,
                    format!("field `listeners[{i}]`: `certificate` and `private_key` go together"),
                ));
            }
            if l.certificate.is_some() && !l.transport.uses_tls() {
                return Err(err(
                    here,
                    format!(
                        "field `listeners[{i}].certificate`: only tls and wss listeners use one"
                    ),
                ));
            }
            if l.transport.uses_websocket() && !l.path.starts_with('/') {
                return Err(err(
                    here,
                    format!("field `listeners[{i}].path`: must start with '/'"),
                ));
            }
            for (j, other) in self.listeners.iter().enumerate().take(i) {
                let b = other.value.bind;
                if b == l.bind && b.port() != 0 {
                    return Err(err(
                        here,
                        format!(
                            "field `listeners[{i}].bind`: {} is already used by listeners[{j}]",
                            l.bind
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn first_line(s: &str) -> String {
    // serde-saphyr renders a source snippet after the message; the location is reported apart.
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded();
        assert_eq!(c.listeners[0].value.transport, Transport::Tcp);
        assert_eq!(c.listeners[0].value.bind.to_string(), "127.0.0.1:1883");
        assert!(!c.auth.allow_anonymous);
        assert!(c.auth.x_oauth2 && c.oauth.enabled);
    }

    #[test]
    fn empty_document_gives_defaults() {
        let c = Config::parse("{}", "x.yml").unwrap();
        assert_eq!(c.mqtt.max_qos, 2);
        assert_eq!(c.listeners.len(), 1);
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let e = Config::parse("mqtt:\n  max_qos: 1\n  bogus: 3\n", "t.yml").unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("t.yml", 3));
        assert!(e.message.contains("bogus"), "{e}");
        assert!(e.to_string().starts_with("t.yml:3:"), "{e}");
    }

    #[test]
    fn bad_value_names_line() {
        let e =
            Config::parse("listeners:\n  - type: tcp\n    bind: nowhere\n", "t.yml").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
    }

    #[test]
    fn bad_transport_is_rejected() {
        let e = Config::parse(
            "listeners:\n  - type: udp\n    bind: 127.0.0.1:1\n",
            "t.yml",
        )
        .unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("udp"), "{e}");
    }

    #[test]
    fn validation_error_points_at_listener() {
        let text = "listeners:\n  - type: tcp\n    bind: 127.0.0.1:1883\n  - type: ws\n    bind: 127.0.0.1:1883\n";
        let e = Config::parse(text, "t.yml").unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("listeners[1].bind"), "{e}");
    }

    #[test]
    fn out_of_range_option_names_field_and_line() {
        let e = Config::parse("sys:\n  interval: 5\nmqtt:\n  max_qos: 3\n", "t.yml").unwrap_err();
        assert!(e.message.contains("mqtt.max_qos"), "{e}");
        assert_eq!(e.line, 4, "{e}");
    }

    #[test]
    fn certificate_without_key_is_rejected() {
        let text = "listeners:\n  - type: tls\n    bind: 127.0.0.1:0\n    certificate: a.pem\n";
        let e = Config::parse(text, "t.yml").unwrap_err();
        assert!(e.message.contains("private_key"), "{e}");
    }
}

#[cfg(test)]
mod access_tests {
    use super::*;

    #[test]
    fn access_rules_parse_and_admit() {
        let c = Config::parse(
            "access_publish:\n  \"devices/%u/#\": all\n  \"admin/#\": [alice, bob]\n  \"nobody/#\": none\n",
            "t.yml",
        )
        .unwrap();
        assert!(c.access_publish["devices/%u/#"].admits(Some("x")));
        assert!(c.access_publish["admin/#"].admits(Some("bob")));
        assert!(!c.access_publish["admin/#"].admits(Some("eve")));
        assert!(!c.access_publish["nobody/#"].admits(Some("alice")));
        let e = Config::parse("oauth:\n  oauth_client_id_check: maybe\n", "t.yml").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }
}

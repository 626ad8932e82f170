//! Tessera's configuration: the YAML schema, the embedded default, and validation.
//!
//! Owns: every option an operator can set, its default, and the checks that run before the broker
//! starts. Knows no other Tessera crate. Every error names the file, line, column and field.
//! The commented `tessera.example.yml` at the repository root documents each option; a unit test
//! keeps it loadable and equal to the embedded default.
//!
//! This file holds the document's root, logging, `$SYS`, and loading with its errors; each
//! larger section has its own file: `listener.rs`, `mqtt.rs`, `storage.rs`, `login.rs` (auth,
//! oauth, topic rules).

mod cluster;
mod issuers;
mod listener;
mod login;
mod mqtt;
mod storage;
mod tls;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

pub use cluster::{ClusterConfig, DUPLICATE_WINDOW_SECS};
pub use issuers::{ALGORITHMS, IntrospectionConfig, IssuerConfig};
pub use listener::{ClientCertificates, Listener, TlsFiles, Transport};
pub use login::{
    AccessRule, AccessRules, AuthConfig, CertificateLogin, ClientIdCheck, Effect, NamedRule,
    OAuthConfig, TopicRule,
};
pub use mqtt::{MqttConfig, QueueFullPolicy};
pub use storage::{Durability, StorageConfig};

/// The configuration used when no file is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../tessera.example.yml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The file this configuration was read from, as errors name it.
    #[serde(skip)]
    pub source: String,
    /// Directory for state the broker writes: the development TLS certificate, later the store.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default = "listener::default_listeners")]
    pub listeners: Vec<Spanned<Listener>>,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub sys: SysConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Several nodes as one broker over NATS JetStream; `None`: this node alone.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub oauth: OAuthConfig,
    /// Topic rights (see [`AccessRules`]): ordered allow/deny rules, or a map filter → who.
    #[serde(default)]
    pub access_publish: AccessRules,
    #[serde(default)]
    pub access_subscribe: AccessRules,
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
pub struct MetricsConfig {
    /// Serve `/metrics` (Prometheus text format), `/healthz` and `/readyz`.
    pub enabled: bool,
    /// Plain HTTP, on loopback by default: put it behind the network's own access control.
    pub bind: std::net::SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            bind: std::net::SocketAddr::from(([127, 0, 0, 1], 9183)),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("tessera-data")
}
fn default_log_level() -> String {
    "info".to_string()
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
        let mut config: Config = serde_saphyr::from_str(text).map_err(|e| {
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
        config.source = file.to_string();
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
        if let Some(problem) = self.cluster.as_ref().and_then(ClusterConfig::problem) {
            return Err(err(nowhere, problem));
        }
        let issuers = &self.auth.issuers;
        for (i, issuer) in issuers.iter().enumerate() {
            if let Some(problem) = issuer.problem(i) {
                return Err(err(nowhere, problem));
            }
            if issuers[..i].iter().any(|o| o.issuer == issuer.issuer) {
                return Err(err(
                    nowhere,
                    format!(
                        "field `auth.issuers[{i}].issuer`: {} is listed twice",
                        issuer.issuer
                    ),
                ));
            }
        }
        if issuers.iter().filter(|i| i.introspection.is_some()).count() > 1 {
            // An opaque token says nothing of its issuer: it would be sent to every one.
            return Err(err(
                nowhere,
                "field `auth.issuers`: at most one issuer introspects opaque tokens".into(),
            ));
        }
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
        self.validate_tls()
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
mod cluster_tests {
    use super::*;

    #[test]
    fn a_cluster_section_is_checked() {
        let ok = Config::parse(
            "cluster:\n  node: a\n  nats: [nats://127.0.0.1:4222]\n",
            "t.yml",
        )
        .unwrap();
        let c = ok.cluster.unwrap();
        assert_eq!((c.replicas, c.prefix.as_str()), (3, "tessera"));
        for (yaml, field) in [
            ("cluster:\n  node: a\n  nats: []\n", "cluster.nats"),
            ("cluster:\n  node: 'a b'\n  nats: [x]\n", "cluster.node"),
            (
                "cluster:\n  node: a\n  nats: [x]\n  replicas: 7\n",
                "cluster.replicas",
            ),
            (
                "cluster:\n  node: a\n  nats: [x]\n  user: u\n",
                "cluster.user",
            ),
            (
                "cluster:\n  node: a\n  nats: [x]\n  token: t\n  credentials_file: f\n",
                "cluster",
            ),
        ] {
            let e = Config::parse(yaml, "t.yml").unwrap_err();
            assert!(e.to_string().contains(field), "{yaml}: {e}");
        }
        let e = Config::parse("cluster:\n  node: a\n", "t.yml").unwrap_err();
        assert!(e.to_string().contains("nats"), "{e}");
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
        let rule = |f: &str| {
            c.access_publish
                .0
                .iter()
                .find(|r| r.filter == f)
                .cloned()
                .unwrap()
        };
        assert!(c.access_publish.0.iter().all(|r| r.effect == Effect::Allow));
        assert!(rule("devices/%u/#").users.admits(Some("x")));
        assert!(rule("admin/#").users.admits(Some("bob")));
        assert!(!rule("admin/#").users.admits(Some("eve")));
        assert!(!rule("nobody/#").users.admits(Some("alice")));
        let e = Config::parse("oauth:\n  oauth_client_id_check: maybe\n", "t.yml").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn ordered_rules_keep_their_order_and_need_one_effect_each() {
        let c = Config::parse(
            "access_subscribe:\n  - deny: \"$SYS/#\"\n  - allow: \"devices/%u/#\"\n  - deny: \"#\"\n    users: [guest]\n  - allow: \"#\"\n",
            "t.yml",
        )
        .unwrap();
        let rules = &c.access_subscribe.0;
        let got: Vec<(Effect, &str)> = rules
            .iter()
            .map(|r| (r.effect, r.filter.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Effect::Deny, "$SYS/#"),
                (Effect::Allow, "devices/%u/#"),
                (Effect::Deny, "#"),
                (Effect::Allow, "#")
            ]
        );
        assert!(rules[2].users.admits(Some("guest")) && !rules[2].users.admits(Some("ann")));
        assert!(rules[0].users.admits(None));
        let e = Config::parse(
            "access_publish:\n  - allow: a\n  - allow: b\n    deny: c\n",
            "t.yml",
        )
        .unwrap_err();
        assert!(e.message.contains("exactly one"), "{e}");
        assert!(e.message.contains("line 3"), "{e}");
        let e = Config::parse("access_publish:\n  - permit: a\n", "t.yml").unwrap_err();
        assert!(e.message.contains("permit"), "{e}");
    }
}

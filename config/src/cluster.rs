//! `cluster:`: this node as one of several Tessera nodes sharing their state over NATS with
//! JetStream. Absent, the node is alone and keeps everything in its data directory.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster (logged, and in `tessera cluster status`).
    pub node: String,
    /// NATS server URLs (`nats://host:4222`, `tls://host:4222`); the client fails over
    /// between them.
    pub nats: Vec<String>,
    /// JetStream replicas of every bucket Tessera creates (1 for a single NATS server).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Prefix of every bucket and subject, so several clusters can share one NATS account.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Credentials: a user name and password, a token, or a `.creds` file (JWT + NKey).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// TLS to NATS: a CA file to trust (besides the system's), and a client certificate.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    #[serde(default)]
    pub tls_certificate: Option<PathBuf>,
    #[serde(default)]
    pub tls_private_key: Option<PathBuf>,
    /// Seconds a QoS 1/2 publish is sent again into the stream (under one message id, which
    /// the stream de-duplicates) before its publisher gets 0x80: a NATS server dying or a
    /// stream leader electing is waited out, not passed on to the client.
    #[serde(default = "default_store_within")]
    pub store_within: u64,
}

fn default_store_within() -> u64 {
    10
}

/// The streams' duplicate window: longer than any `store_within`, so that a message sent again
/// is recognised.
pub const DUPLICATE_WINDOW_SECS: u64 = 15;

fn default_replicas() -> usize {
    3
}

fn default_prefix() -> String {
    "tessera".to_string()
}

impl ClusterConfig {
    /// What is wrong with it, if anything: the field and why.
    pub fn problem(&self) -> Option<String> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !name_ok(&self.node) {
            return Some("field `cluster.node`: 1-64 letters, digits, '-' or '_'".into());
        }
        if !name_ok(&self.prefix) {
            return Some("field `cluster.prefix`: 1-64 letters, digits, '-' or '_'".into());
        }
        if self.nats.is_empty() {
            return Some("field `cluster.nats`: at least one NATS server URL".into());
        }
        if !(1..=5).contains(&self.replicas) {
            return Some("field `cluster.replicas`: 1 to 5 (JetStream's limit)".into());
        }
        if !(1..DUPLICATE_WINDOW_SECS).contains(&self.store_within) {
            return Some(format!(
                "field `cluster.store_within`: 1 to {} seconds (the streams' duplicate window \
                 is {DUPLICATE_WINDOW_SECS} s)",
                DUPLICATE_WINDOW_SECS - 1
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Some("field `cluster.user`: `user` and `password` go together".into());
        }
        let ways = [
            self.user.is_some(),
            self.token.is_some(),
            self.credentials_file.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Some("field `cluster`: one of user/password, token or credentials_file".into());
        }
        if self.tls_certificate.is_some() != self.tls_private_key.is_some() {
            return Some(
                "field `cluster.tls_certificate`: `tls_certificate` and `tls_private_key` go together"
                    .into(),
            );
        }
        None
    }
}

//! `storage:`: how the broker's state (retained messages, persistent sessions and the messages
//! queued for them) outlives the process.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Every acknowledged message is on disk before its acknowledgement (group commit): a
    /// crash loses no acknowledged message of a persistent session and no retained message.
    #[default]
    Durable,
    /// Written at shutdown and every `snapshot_interval` (mosquitto's `persistence true`): a
    /// crash loses what changed since the last snapshot.
    OnStop,
    /// Kept in memory only: a restart loses everything but users, clients and tokens.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub durability: Durability,
    /// `on_stop` only: seconds between snapshots besides the one at shutdown; 0 = at shutdown
    /// only.
    pub snapshot_interval: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            durability: Durability::Durable,
            snapshot_interval: 1800,
        }
    }
}

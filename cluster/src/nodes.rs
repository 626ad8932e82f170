//! Each node's heartbeat: a record in the `<prefix>_nodes` bucket, rewritten every few seconds
//! by the running node (and by every readiness probe), read by `tessera cluster status`.

use std::time::Duration;

use async_nats::jetstream::kv::Store;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tessera_auth::clock::now_ms;

use crate::keys::escape;
use crate::kv::NatsKv;
use crate::{ClusterError, Nats};

/// A node counts as up while its last heartbeat is younger than this.
pub const UP_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub version: String,
    /// Milliseconds since the epoch of its last heartbeat.
    pub seen_at_ms: u64,
    /// MQTT connections it served then.
    pub connections: u64,
    /// Filled in when read: whether the heartbeat is recent.
    #[serde(default)]
    pub up: bool,
}

/// Connections this node serves now, for its next heartbeat.
static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn set_connections(n: u64) {
    CONNECTIONS.store(n, std::sync::atomic::Ordering::Relaxed);
}

/// Writes this node's heartbeat (a replicated write: it fails while JetStream cannot write).
pub fn beat(kv: &NatsKv) -> Result<(), ClusterError> {
    let nats = kv.nats();
    let status = NodeStatus {
        node: nats.config.node.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        seen_at_ms: now_ms(),
        connections: CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed),
        up: true,
    };
    let value = Bytes::from(serde_json::to_vec(&status).unwrap_or_default());
    let store = kv.nodes().clone();
    let key = escape(&status.node);
    nats.wait(async move { store.put(key, value).await })?
        .map(|_| ())
        .map_err(|e| ClusterError(format!("NATS: {e}")))
}

/// Every node that ever beat, by name, marked up or not.
pub fn node_statuses(nats: &Nats) -> Result<Vec<NodeStatus>, ClusterError> {
    let (js, name) = (nats.jetstream.clone(), nats.name("nodes"));
    nats.wait(read_nodes(js, name))?
        .map_err(|e| ClusterError(format!("cannot read the nodes bucket: {e}")))
}

/// `node_statuses`, on the NATS runtime.
pub(crate) async fn read_nodes(
    js: async_nats::jetstream::Context,
    name: String,
) -> Result<Vec<NodeStatus>, String> {
    let store: Store = js.get_key_value(name).await.map_err(|e| e.to_string())?;
    let mut keys = store.keys().await.map_err(|e| e.to_string())?;
    let mut nodes = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| e.to_string())?;
        if let Ok(Some(v)) = store.get(k).await
            && let Ok(s) = serde_json::from_slice::<NodeStatus>(&v)
        {
            nodes.push(s);
        }
    }
    let now = now_ms();
    for n in &mut nodes {
        n.up = now.saturating_sub(n.seen_at_ms) < UP_WITHIN.as_millis() as u64;
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(nodes)
}

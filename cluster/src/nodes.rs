//! Each node's heartbeat: a record in the `<prefix>_nodes` bucket (key: the escaped node name),
//! rewritten every `BEAT` with the node's connection count and its run (`boot`), and read back
//! on the same beat for the cluster's counts (`$SYS/cluster/...`, `/metrics`), for the wills
//! of nodes that are down (`wills.rs`), and by `tessera cluster status`.
//! The token store's readiness probe writes its own key in the bucket (`probe_key`), which no
//! node name can take.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::kv::Store;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tessera_auth::clock::now_ms;
use tessera_broker::cluster::PeerHandle;
use tracing::{info, warn};

use crate::keys::escape;
use crate::peers::NatsPeers;
use crate::{ClusterError, Nats};

/// A node counts as up while its last heartbeat is younger than this.
pub const UP_WITHIN: Duration = Duration::from_secs(10);
/// How often a node writes its heartbeat and reads the others'.
const BEAT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub version: String,
    /// This run of the node (random at each start).
    #[serde(default)]
    pub boot: String,
    /// Milliseconds since the epoch of its last heartbeat.
    pub seen_at_ms: u64,
    /// MQTT connections it served then.
    pub connections: u64,
    /// Filled in when read: whether the heartbeat is recent.
    #[serde(default)]
    pub up: bool,
}

/// The key of `node`'s readiness probe: with a dot, which an escaped node name never has
/// (`keys.rs`), so it is never read as a heartbeat.
pub(crate) fn probe_key(node: &str) -> String {
    format!("probe.{}", escape(node))
}

/// Writes this node's heartbeat every `BEAT` (a replicated write: it fails while JetStream
/// cannot write) and reads every node's into `peers`' counts and wills, for the life of the
/// process.
pub(crate) fn spawn_heartbeat(
    nats: &Arc<Nats>,
    broker: PeerHandle,
    peers: Arc<NatsPeers>,
    boot: String,
) {
    let (js, bucket, node) = (
        nats.jetstream.clone(),
        nats.name("nodes"),
        nats.config.node.clone(),
    );
    nats.spawn(async move {
        let mut tick = tokio::time::interval(BEAT);
        let mut failing = false;
        // Since when every heartbeat has been written.
        let mut writing_since: Option<std::time::Instant> = None;
        loop {
            tick.tick().await;
            let status = NodeStatus {
                node: node.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                boot: boot.clone(),
                seen_at_ms: now_ms(),
                connections: broker.connections() as u64,
                up: true,
            };
            let written = beat(&js, &bucket, &status).await;
            match &written {
                Ok(()) if failing => {
                    info!("heartbeat to NATS written again");
                    failing = false;
                }
                Err(e) if !failing => {
                    warn!(error = %e, "heartbeat to NATS failed");
                    failing = true;
                }
                _ => {}
            }
            writing_since = match written {
                Ok(()) => writing_since.or(Some(std::time::Instant::now())),
                Err(_) => None,
            };
            if let Ok(nodes) = read_nodes(js.clone(), bucket.clone()).await {
                let writing_for = writing_since.map_or(Duration::ZERO, |t| t.elapsed());
                peers.wills.seen(&nodes, writing_for);
                let up = nodes.iter().filter(|n| n.up);
                let c = &peers.counts;
                c.nodes_up
                    .store(up.clone().count() as u64, Ordering::Relaxed);
                c.clients
                    .store(up.map(|n| n.connections).sum(), Ordering::Relaxed);
                c.nodes_known.store(nodes.len() as u64, Ordering::Relaxed);
            }
        }
    });
}

async fn beat(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    status: &NodeStatus,
) -> Result<(), ClusterError> {
    let within = async {
        let store: Store = js
            .get_key_value(bucket)
            .await
            .map_err(ClusterError::request)?;
        let value = Bytes::from(serde_json::to_vec(status).unwrap_or_default());
        store
            .put(escape(&status.node), value)
            .await
            .map_err(ClusterError::request)
    };
    match tokio::time::timeout(crate::DEADLINE, within).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(ClusterError::TimedOut),
    }
}

/// Every node that ever beat, by name, marked up or not.
pub fn node_statuses(nats: &Nats) -> Result<Vec<NodeStatus>, ClusterError> {
    let (js, name) = (nats.jetstream.clone(), nats.name("nodes"));
    nats.wait(read_nodes(js, name))?
        .map_err(|e| ClusterError::Unavailable {
            what: "the nodes bucket".into(),
            reason: e,
        })
}

/// The heartbeat `node` last wrote, if any (this node's previous run's, before its first).
pub(crate) async fn read_node(
    js: async_nats::jetstream::Context,
    bucket: String,
    node: String,
) -> Option<NodeStatus> {
    let store: Store = js.get_key_value(bucket).await.ok()?;
    let value = store.get(escape(&node)).await.ok()??;
    serde_json::from_slice(&value).ok()
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
        if k.contains('.') {
            continue; // a readiness probe's key
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_node_name_escapes_to_a_probe_key() {
        for node in ["a", "probe", "probe.a", "n.1", "=x"] {
            assert!(!escape(node).contains('.'), "{node}");
            assert!(probe_key(node).contains('.'));
        }
    }
}

//! What `serve` and the CLI do differently with `cluster:` set: the token store is the NATS
//! JetStream one (`tessera-cluster`), the broker joins the other nodes (which starts the
//! node's heartbeat), and `tessera cluster status` reads every node's.

use std::process::ExitCode;
use std::sync::Arc;

use tessera_auth::kv::KvStore;
use tessera_auth::redb_store::RedbStore;
use tessera_broker::BrokerHandle;
use tessera_cluster::{Nats, NatsKv};
use tessera_config::Config;
use tracing::info;

/// The token store this configuration names: NATS JetStream KV in a cluster, else
/// `data_dir/tessera.redb`.
pub fn token_store(config: &Config) -> Result<Arc<dyn KvStore>, String> {
    Ok(open(config)?.0)
}

/// The token store, and the NATS connection in a cluster.
pub type Opened = (Arc<dyn KvStore>, Option<Arc<Nats>>);

pub fn open(config: &Config) -> Result<Opened, String> {
    match &config.cluster {
        Some(c) => {
            let nats = Arc::new(Nats::connect(c).map_err(|e| e.to_string())?);
            let kv = NatsKv::open(nats.clone()).map_err(|e| e.to_string())?;
            info!(node = %c.node, nats = %c.nats.join(","), replicas = c.replicas, "cluster store ready");
            Ok((kv, Some(nats)))
        }
        None => {
            let store = RedbStore::open(&config.data_dir.join("tessera.redb"))
                .map_err(|e| e.to_string())?;
            Ok((store, None))
        }
    }
}

/// In a cluster, connects the broker to the other nodes (QoS 0 over core NATS, QoS 1/2
/// through the JetStream stream). Blocking: call it off the runtime.
pub fn join(nats: Option<Arc<Nats>>, broker: BrokerHandle) -> Result<(), String> {
    if let Some(nats) = nats {
        tessera_cluster::connect_peers(nats, broker.peer_handle()).map_err(|e| e.to_string())?;
        info!("routing to and from the other nodes");
    }
    Ok(())
}

/// `tessera cluster status`: every node that ever beat, up or not.
pub fn status(config: &Config, json: bool) -> ExitCode {
    let Some(c) = &config.cluster else {
        eprintln!("error: no `cluster:` section in the configuration: this node is alone");
        return ExitCode::from(2);
    };
    let nodes = Nats::connect(c).and_then(|n| tessera_cluster::node_statuses(&n));
    let nodes = match nodes {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if json {
        println!("{}", serde_json::to_string(&nodes).unwrap_or_default());
    } else {
        println!(
            "{:<24} {:<6} {:>11} {:>10}  VERSION",
            "NODE", "STATE", "CONNECTIONS", "SEEN (s)"
        );
        let now = tessera_auth::clock::now_ms();
        for n in &nodes {
            println!(
                "{:<24} {:<6} {:>11} {:>10.1}  {}",
                n.node,
                if n.up { "up" } else { "down" },
                n.connections,
                now.saturating_sub(n.seen_at_ms) as f64 / 1000.0,
                n.version
            );
        }
    }
    if nodes.iter().all(|n| n.up) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

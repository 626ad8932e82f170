//! Tessera nodes as one broker over NATS with JetStream. This crate owns the connection to
//! NATS and what lives there:
//!
//! - `kv.rs`: the token service's store (`tessera_auth::kv::KvStore`) on JetStream KV buckets,
//!   one per record kind, replicated `cluster.replicas` times, so a token issued on any node
//!   logs in on every node and the operator CLI works against any node;
//! - the revocation fast path: a deleted access token is also announced on a core NATS subject,
//!   which reaches every node in about a millisecond even while JetStream is electing a leader
//!   (its writes can stall for seconds then); each node cuts the sessions using it and treats
//!   the key as gone until the durable delete lands;
//! - `peers.rs`: the broker's `Peers` seam on NATS ([`NatsPeers`]) and [`connect_peers`],
//!   which starts each of the tasks below. Messages between nodes go in a [`frame`] each:
//!   - `outbound.rs`: what this node's clients publish, to core NATS subjects (`subjects.rs`
//!     maps topics and filters) or into the QoS 1/2 stream, in order;
//!   - `interest.rs`: the subjects this node follows, exactly its subscriptions' filters, and
//!     the QoS 1/2 consumer's filters that follow them;
//!   - `inbound.rs`: what comes in on core NATS, each copy once, into the broker;
//!   - `takeover.rs`: one connection per client id across nodes;
//!   - `qos.rs`: QoS 1/2 through the stream `<prefix>_qos` and each node's durable consumer;
//!   - `retained.rs`: retained values through the stream `<prefix>_retained`, which every
//!     node follows;
//!   - `shared.rs`: shared subscriptions across nodes;
//!   - `sessions.rs`: persistent sessions' records (one owner, compare-and-set), moving a
//!     session to the node its client connects on, and replaying its queued messages there
//!     (the broker's half of a move is its `cluster/sessions.rs`);
//!   - `wills.rs`: every will a node holds, recorded where the others see it; a node that
//!     dies has its clients' wills published by another, once;
//!   - `nodes.rs`: each node's heartbeat in a bucket of its own (with its connection count),
//!     read back for the cluster's counts, for the wills of nodes that are down, and by
//!     `tessera cluster status`.
//!
//! Names (with the default prefix `tessera`): buckets `tessera_users`, `tessera_clients`,
//! `tessera_access_tokens`, `tessera_refresh_tokens`, `tessera_auth_codes`,
//! `tessera_device_codes`, `tessera_nodes`, `tessera_sessions`, `tessera_wills`; streams `tessera_qos`,
//! `tessera_retained`; subjects `tessera.revoked`, `tessera.m.<topic>`, `tessera.q.<topic>`,
//! `tessera.r.<topic>`, `tessera.takeover`, `tessera.handoff.<node>` (docs/cluster.md).
//!
//! The token service's calls are synchronous (it runs on blocking threads, or briefly on a
//! runtime worker): the NATS client runs on a runtime of its own and each call waits for its
//! answer, within a deadline, off the caller's runtime (`Nats::wait`).

#![forbid(unsafe_code)]

mod error;
mod frame;
mod inbound;
mod interest;
mod keys;
mod kv;
mod nodes;
mod outbound;
mod peers;
mod qos;
mod retained;
mod scan;
mod sessions;
mod shared;
mod subjects;
mod takeover;
mod wills;

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream;
use tessera_config::ClusterConfig;
use tokio::sync::watch;

pub use error::ClusterError;
pub use kv::NatsKv;
pub use nodes::{NodeStatus, UP_WITHIN, node_statuses};
pub use peers::{NatsPeers, connect as connect_peers};

/// A stream message's time, in milliseconds since the epoch.
pub(crate) fn stream_ms(t: time::OffsetDateTime) -> u64 {
    (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64
}

/// How long one NATS or JetStream request may take before the caller is told it failed.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// A connection to the NATS cluster, with the runtime its client runs on.
pub struct Nats {
    pub config: ClusterConfig,
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    /// Always `Some` until dropped (a runtime dropped inside another one must be shut down
    /// in the background).
    runtime: Option<tokio::runtime::Runtime>,
    /// The client's connection is up, as its events last said.
    pub(crate) connected: watch::Receiver<bool>,
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Nats {
    /// Connects to the configured servers (blocking until connected or `DEADLINE` passes).
    /// Call it off any runtime, or from a blocking thread (`spawn_blocking`).
    pub fn connect(config: &ClusterConfig) -> Result<Nats, ClusterError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("nats")
            .enable_all()
            .build()
            .map_err(ClusterError::Runtime)?;
        let (up, connected) = watch::channel(true);
        let up = std::sync::Arc::new(up);
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("tessera {}", config.node))
            .connection_timeout(DEADLINE)
            .request_timeout(Some(DEADLINE))
            .event_callback(move |event| {
                let up = up.clone();
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            up.send_replace(false);
                            // The warning that the node now serves alone comes once it
                            // does (`peers.rs`, `follow_connection`).
                            tracing::info!("NATS disconnected")
                        }
                        async_nats::Event::Connected => {
                            up.send_replace(true);
                            tracing::info!("NATS connection up")
                        }
                        other => tracing::info!(event = %other, "NATS"),
                    }
                }
            });
        if let (Some(u), Some(p)) = (&config.user, &config.password) {
            options = options.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &config.token {
            options = options.token(t.clone());
        }
        if let Some(ca) = &config.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&config.tls_certificate, &config.tls_private_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let urls = config
            .nats
            .iter()
            .map(|u| u.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClusterError::BadAddress(e.to_string()))?;
        let creds = config.credentials_file.clone();
        let client = runtime
            .block_on(async move {
                let options = match creds {
                    Some(path) => options.credentials_file(path).await?,
                    None => options,
                };
                tokio::time::timeout(DEADLINE, options.connect(urls))
                    .await
                    .map_err(|_| std::io::Error::other("timed out"))?
                    .map_err(std::io::Error::other)
            })
            .map_err(|e| ClusterError::Unreachable {
                servers: config.nats.join(", "),
                reason: e.to_string(),
            })?;
        if !client.is_server_compatible(2, 14, 0) {
            tracing::warn!(
                version = client.server_info().version,
                "NATS server older than 2.14: the QoS 1/2 consumer cannot reset itself, and \
                 deliveries lost on their way to a node that died are acknowledged by its next \
                 acknowledgement (docs/cluster.md)"
            );
        }
        // The context spawns its acknowledgement task: on the NATS runtime.
        let jetstream = {
            let _on = runtime.enter();
            jetstream::new(client.clone())
        };
        Ok(Nats {
            config: config.clone(),
            client,
            jetstream,
            runtime: Some(runtime),
            connected,
        })
    }

    /// Runs `f` on the NATS runtime and waits for it, within `DEADLINE`. From a runtime
    /// worker thread it steps off the worker first (`block_in_place`), so the caller's other
    /// tasks keep running.
    pub fn wait<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, ClusterError> {
        let rt = self.rt();
        let task = rt.spawn(async move { tokio::time::timeout(DEADLINE, f).await });
        let join = || rt.block_on(task);
        let joined = match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(join),
            Err(_) => join(),
        };
        match joined {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(ClusterError::TimedOut),
            Err(e) => Err(ClusterError::request(e)),
        }
    }

    /// Starts a background task on the NATS runtime.
    pub fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        self.rt().spawn(f);
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("taken only when dropped")
    }

    /// The name of a bucket or stream under this cluster's prefix.
    pub fn name(&self, what: &str) -> String {
        format!("{}_{what}", self.config.prefix)
    }

    /// A core NATS subject under this cluster's prefix.
    pub fn subject(&self, what: &str) -> String {
        format!("{}.{what}", self.config.prefix)
    }
}

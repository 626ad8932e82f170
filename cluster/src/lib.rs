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
//! - `routing.rs`: messages between nodes on core NATS subjects (`subjects.rs` maps topics and
//!   filters), interest-based: a node receives only what its subscriptions match; QoS 1/2
//!   through the stream `<prefix>_qos` (`qos.rs`); retained values through the stream
//!   `<prefix>_retained`, which every node follows (`retained.rs`); shared subscriptions
//!   across nodes (`shared.rs`);
//! - `sessions.rs`: persistent sessions' records (one owner, compare-and-set), handing a
//!   session to the node its client connects on, and replaying its queued messages there;
//! - `nodes.rs`: each node's heartbeat in a bucket of its own, read by `tessera cluster status`.
//!
//! Names (with the default prefix `tessera`): buckets `tessera_users`, `tessera_clients`,
//! `tessera_access_tokens`, `tessera_refresh_tokens`, `tessera_auth_codes`,
//! `tessera_device_codes`, `tessera_nodes`, `tessera_sessions`; streams `tessera_qos`,
//! `tessera_retained`; subjects `tessera.revoked`, `tessera.m.<topic>`, `tessera.q.<topic>`,
//! `tessera.r.<topic>`, `tessera.takeover`, `tessera.handoff.<node>` (docs/cluster.md).
//!
//! The token service's calls are synchronous (it runs on blocking threads, or briefly on a
//! runtime worker): the NATS client runs on a runtime of its own and each call waits for its
//! answer, within a deadline, off the caller's runtime (`Nats::wait`).

#![forbid(unsafe_code)]

mod keys;
mod kv;
mod nodes;
mod qos;
mod retained;
mod routing;
mod sessions;
mod shared;
mod subjects;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use tessera_config::ClusterConfig;

pub use kv::NatsKv;
pub use nodes::{NodeStatus, UP_WITHIN, beat, node_statuses, set_connections};
pub use routing::{NatsPeers, start as connect_peers};

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
    /// The client's connection is up, as its events last said (read per routed message by
    /// `NatsPeers::routes_groups`: a load, not the client's state lock).
    pub connected: Arc<AtomicBool>,
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[derive(Debug)]
pub struct ClusterError(pub String);

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClusterError {}

impl Nats {
    /// Connects to the configured servers (blocking until connected or `DEADLINE` passes).
    /// Call it off any runtime, or from a blocking thread (`spawn_blocking`).
    pub fn connect(config: &ClusterConfig) -> Result<Nats, ClusterError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("nats")
            .enable_all()
            .build()
            .map_err(|e| ClusterError(format!("cannot start the NATS runtime: {e}")))?;
        let connected = Arc::new(AtomicBool::new(true));
        let up = connected.clone();
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("tessera {}", config.node))
            .connection_timeout(DEADLINE)
            .request_timeout(Some(DEADLINE))
            .event_callback(move |event| {
                let up = up.clone();
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            up.store(false, Ordering::Relaxed);
                            tracing::warn!(
                                "NATS connection lost: serving this node's clients alone until it is back"
                            )
                        }
                        async_nats::Event::Connected => {
                            up.store(true, Ordering::Relaxed);
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
            .map_err(|e| ClusterError(format!("cluster.nats: {e}")))?;
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
            .map_err(|e| {
                ClusterError(format!(
                    "cannot connect to NATS at {} (cluster.nats): {e}",
                    config.nats.join(", ")
                ))
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
            Ok(Err(_)) => Err(ClusterError("NATS did not answer in time".into())),
            Err(e) => Err(ClusterError(format!("NATS request failed: {e}"))),
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

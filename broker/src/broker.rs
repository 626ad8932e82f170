//! The broker's shared state: what every connection of one broker works on. Each concern has
//! its own file, all of them `impl Broker`:
//!
//! | file | owns | writes |
//! |---|---|---|
//! | `registry.rs` | live connections ([`ConnectionInfo`]) | `connections` |
//! | `lifecycle.rs` | attaching, detaching and ending sessions; wills; expiry | `sessions` |
//! | `routing.rs` | a published message to every matching session; the retained value | `retained` |
//! | `subscribe.rs` | subscriptions, in the session and in the tree | `subscriptions` |
//! | `persistence.rs` | the store: snapshots, restoring at start | nothing shared |
//! | `cluster/` | the other nodes: what goes out to them, what comes in | `cluster` |
//!
//! With durability on, each of them also appends records to the journal (`journal.rs`), under
//! the session's lock where the record describes the session (the journal's lock is a leaf).
//!
//! Lock order: the subscription tree (`subscriptions`) or the sessions map, then a session's
//! state. The retained tree and the registry are taken alone. Every lock is held for
//! microseconds and never across an await.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Waker;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use tessera_config::{MqttConfig, QueueFullPolicy};

use crate::auth::Authenticator;
use crate::cluster::{Cluster, Qos2Step};
use crate::codec::ReasonCode;
use crate::gauges::SessionGauges;
use crate::journal::Journal;
use crate::registry::{ConnectionInfo, Registry};
use crate::retained::RetainedTree;
use crate::session::{QueueLimits, Session, SessionState};
use crate::stats::{Stats, transport_index};
use crate::store::Store;
use crate::subscriptions::SubscriptionTree;
use crate::tickets::Wait;

pub struct Broker {
    pub config: MqttConfig,
    pub limits: QueueLimits,
    pub auth: Arc<dyn Authenticator>,
    /// How the state outlives the process.
    pub(crate) persistence: Persistence,
    pub stats: Stats,
    /// What the sessions hold, summed (`gauges.rs`).
    pub(crate) gauges: Arc<SessionGauges>,
    pub started: Instant,
    /// Client identifier → its session.
    pub(crate) sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    pub(crate) subscriptions: RwLock<SubscriptionTree>,
    pub(crate) retained: RwLock<RetainedTree>,
    pub(crate) connections: Registry,
    /// The other nodes of a cluster, once joined (`cluster/`).
    pub(crate) cluster: Cluster,
    next_id: AtomicU64,
}

/// How the broker's state outlives the process (`storage.durability`).
pub(crate) enum Persistence {
    /// It does not: no copies are made at all.
    None,
    /// Written whole to the store at shutdown and every `interval`; a crash loses what
    /// changed since the last snapshot.
    Snapshots {
        store: Arc<dyn Store>,
        interval: Option<std::time::Duration>,
    },
    /// Every change journaled (group commit); acknowledgements wait until what they promise is
    /// durable.
    Journal {
        store: Arc<dyn Store>,
        journal: Journal,
    },
}

/// A cloneable handle for code outside the broker (the auth service, the binary).
#[derive(Clone)]
pub struct BrokerHandle(pub(crate) Arc<Broker>);

impl BrokerHandle {
    /// Sends DISCONNECT `reason` to every live connection `pred` selects and closes them.
    /// Returns how many were told.
    pub fn disconnect_where(
        &self,
        pred: impl Fn(&ConnectionInfo) -> bool,
        reason: ReasonCode,
        reason_string: &str,
    ) -> usize {
        self.0
            .connections
            .disconnect_where(pred, reason, reason_string)
    }

    /// The live connections.
    pub fn connected_clients(&self) -> Vec<ConnectionInfo> {
        self.0.connections.list()
    }

    /// A page of the live connections `pred` selects, in client id order: the first `limit`
    /// (0: all) whose client id comes after `after`.
    pub fn connected_page(
        &self,
        after: Option<&str>,
        limit: usize,
        pred: impl Fn(&ConnectionInfo) -> bool,
    ) -> Vec<ConnectionInfo> {
        self.0.connections.page(after, limit, pred)
    }

    /// Waits until every change to durable state made so far is in the store (with `durable`
    /// storage; otherwise returns at once).
    pub async fn sync(&self) -> Result<(), crate::store::StoreError> {
        match self.0.journal() {
            Some(j) => j.sync().await,
            None => Ok(()),
        }
    }
}

impl Broker {
    pub(crate) fn new(
        config: MqttConfig,
        auth: Arc<dyn Authenticator>,
        persistence: Persistence,
    ) -> Arc<Broker> {
        let limits = QueueLimits {
            max_messages: config.max_queued_messages as usize,
            max_bytes: config.max_queued_bytes as usize,
            drop_oldest: config.queue_full == QueueFullPolicy::DropOldest,
            queue_qos0_offline: config.queue_qos0_offline,
        };
        let cluster = Cluster::default();
        if let Persistence::Journal { journal, .. } = &persistence {
            journal.follow_peers_routed(cluster.peers_routed_position());
        }
        Arc::new(Broker {
            config,
            limits,
            auth,
            persistence,
            stats: Stats::default(),
            gauges: Arc::default(),
            started: Instant::now(),
            sessions: Mutex::new(HashMap::new()),
            subscriptions: RwLock::new(SubscriptionTree::default()),
            retained: RwLock::new(RetainedTree::default()),
            connections: Registry::default(),
            cluster,
            next_id: AtomicU64::new(1),
        })
    }

    /// The journal, when every change is journaled.
    pub(crate) fn journal(&self) -> Option<&Journal> {
        match &self.persistence {
            Persistence::Journal { journal, .. } => Some(journal),
            _ => None,
        }
    }

    /// Whether every ticket of `w` is done (settled, whatever the outcome).
    pub(crate) fn is_done(&self, w: Wait) -> bool {
        let journal_done = w.journal == 0 || self.journal().is_some_and(|j| j.done() >= w.journal);
        journal_done && (w.cluster == 0 || self.cluster.done() >= w.cluster)
    }

    /// Wakes `waker` once each ticket of `w` is done.
    pub(crate) fn wake_after(&self, w: Wait, waker: &Waker) {
        if w.journal != 0
            && let Some(j) = self.journal()
        {
            j.wake_after(w.journal, waker);
        }
        if w.cluster != 0 {
            self.cluster.wake_after(w.cluster, waker);
        }
    }

    /// Reports a QoS 2 step of a persistent session's message to the cluster
    /// ([`Qos2Step`]); under the session's lock. The ticket the next packet waits for (`wait`),
    /// 0 for none: without a cluster, or for a session that ends with its connection.
    pub(crate) fn report_qos2(
        &self,
        session: &Session,
        st: &SessionState,
        packet_id: u16,
        step: Qos2Step,
        wait: bool,
    ) -> u64 {
        if st.expiry_interval == 0 {
            return 0;
        }
        self.cluster.qos2(&session.client_id, packet_id, step, wait)
    }

    /// The store, if the state outlives the process.
    pub(crate) fn store(&self) -> Option<&Arc<dyn Store>> {
        match &self.persistence {
            Persistence::None => None,
            Persistence::Snapshots { store, .. } | Persistence::Journal { store, .. } => {
                Some(store)
            }
        }
    }

    /// A broker-wide unique id (connections, sessions, detachments).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn handle(self: &Arc<Self>) -> BrokerHandle {
        BrokerHandle(self.clone())
    }

    pub fn register_connection(&self, info: ConnectionInfo) {
        let slot = &self.stats.clients_connected[transport_index(info.transport)];
        if self.connections.register(info) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn update_connection(
        &self,
        conn_id: u64,
        identity: Option<Arc<str>>,
        credential: Option<Arc<str>>,
    ) {
        self.connections.update(conn_id, identity, credential);
    }

    pub fn unregister_connection(&self, conn_id: u64) {
        if let Some(info) = self.connections.unregister(conn_id) {
            self.stats.clients_connected[transport_index(info.transport)]
                .fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Tells every connection the server is going away (DISCONNECT 0x8B).
    pub fn shutdown_connections(&self) -> usize {
        self.connections.disconnect_where(
            |_| true,
            ReasonCode::SERVER_SHUTTING_DOWN,
            "server shutting down",
        )
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.read().len()
    }

    pub fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    /// Topic and payload bytes of the retained messages (`mqtt.max_retained_bytes`).
    pub fn retained_bytes(&self) -> usize {
        self.retained.read().bytes()
    }
}

//! The running broker: its state restored from the store as `storage.durability` says, the
//! listeners bound from the configuration, the `$SYS` publisher and the `on_stop` snapshots,
//! and a graceful stop that tells every client the server is shutting down (DISCONNECT 0x8B)
//! and leaves the store complete.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tessera_config::{Config, Durability, Transport};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::auth::Authenticator;
use crate::broker::{Broker, BrokerHandle, Persistence};
use crate::journal::Journal;
use crate::persistence::journal_start;
use crate::store::Store;
use crate::tls::TlsServer;
use crate::{listener, sys};

pub struct Server {
    broker: Arc<Broker>,
    addrs: Vec<(Transport, SocketAddr)>,
    /// The TLS listeners' servers, for `tessera reload`.
    tls: Vec<Arc<TlsServer>>,
    stop: watch::Sender<bool>,
    /// Whether the listeners accept connections (they are bound from the start).
    open: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds every listener (all or nothing) and starts serving, with state kept in memory
    /// only: nothing is written through to a store.
    pub async fn start(config: &Config, auth: Arc<dyn Authenticator>) -> io::Result<Server> {
        let broker = Broker::new(config.mqtt.clone(), auth, Persistence::None);
        Server::bind_and_serve(config, broker).await
    }

    /// As `start`, restoring retained messages and sessions from `store` and keeping them in
    /// it as `storage.durability` says (with `none`, the store is not used).
    pub async fn start_with_store(
        config: &Config,
        auth: Arc<dyn Authenticator>,
        store: Arc<dyn Store>,
    ) -> io::Result<Server> {
        let mqtt = config.mqtt.clone();
        let broker = match config.storage.durability {
            Durability::None => Broker::new(mqtt, auth, Persistence::None),
            Durability::OnStop => {
                let state = store.load().map_err(io::Error::other)?;
                let interval = (config.storage.snapshot_interval > 0)
                    .then(|| Duration::from_secs(config.storage.snapshot_interval as u64));
                let broker = Broker::new(mqtt, auth, Persistence::Snapshots { store, interval });
                broker.restore(state, Vec::new(), config.cluster.is_some());
                broker
            }
            Durability::Durable => {
                let state = store.load().map_err(io::Error::other)?;
                let (refs, next_message_id, orphans) = journal_start(&state);
                let journal = Journal::start(store.clone(), refs, next_message_id)?;
                let broker = Broker::new(mqtt, auth, Persistence::Journal { store, journal });
                broker.restore(state, orphans, config.cluster.is_some());
                broker
            }
        };
        Server::bind_and_serve(config, broker).await
    }

    async fn bind_and_serve(config: &Config, broker: Arc<Broker>) -> io::Result<Server> {
        let mut bound = Vec::new();
        for l in &config.listeners {
            bound.push(listener::bind(&l.value, &config.data_dir).await?);
        }
        let (stop, stop_rx) = watch::channel(false);
        // A node of a cluster accepts clients once it has joined (`Server::open`): before,
        // what they publish would not reach the other nodes, nor would a SUBACK mean their
        // messages reach it. Connections wait in the sockets' backlog meanwhile.
        let (open, open_rx) = watch::channel(config.cluster.is_none());
        let addrs = bound.iter().map(|b| (b.transport, b.local_addr)).collect();
        let tls = bound.iter().filter_map(|b| b.tls.clone()).collect();
        let mut tasks: Vec<JoinHandle<()>> = bound
            .into_iter()
            .map(|b| {
                listener::spawn_accept_loop(b, broker.clone(), open_rx.clone(), stop_rx.clone())
            })
            .collect();
        tasks.extend(sys::spawn(
            broker.clone(),
            config.sys.interval,
            stop_rx.clone(),
        ));
        if let Persistence::Snapshots {
            interval: Some(every),
            ..
        } = &broker.persistence
        {
            tasks.push(spawn_snapshots(broker.clone(), *every, stop_rx));
        }
        Ok(Server {
            broker,
            addrs,
            tls,
            stop,
            open,
            tasks,
        })
    }

    /// Starts accepting clients, if the listeners were held (a node of a cluster, until it
    /// has joined).
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// The first bound address of a transport.
    pub fn addr(&self, t: Transport) -> Option<SocketAddr> {
        self.addrs.iter().find(|(k, _)| *k == t).map(|(_, a)| *a)
    }

    /// The TLS listeners' servers (their certificates, client CAs and CRLs can be read
    /// again: [`TlsServer::reload`]).
    pub fn tls_servers(&self) -> &[Arc<TlsServer>] {
        &self.tls
    }

    pub fn handle(&self) -> BrokerHandle {
        self.broker.handle()
    }

    /// Stops accepting, disconnects every client with 0x8B, waits (up to 5 s) for them, and
    /// leaves the store complete: the journal's last batch committed, or a final snapshot.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let told = self.broker.shutdown_connections();
        info!(clients = told, "shutting down");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.broker.connection_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let broker = self.broker.clone();
        let stored = tokio::task::spawn_blocking(move || match &broker.persistence {
            Persistence::Journal { journal, .. } => {
                journal.close();
                Ok(())
            }
            Persistence::Snapshots { .. } => broker.save_snapshot(),
            Persistence::None => Ok(()),
        })
        .await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "the state could not be stored at shutdown"),
            Err(e) => warn!(error = %e, "storing the state at shutdown failed"),
        }
    }
}

/// `on_stop` durability: a snapshot every `every`, besides the one at shutdown.
fn spawn_snapshots(
    broker: Arc<Broker>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => {
                    let b = broker.clone();
                    match tokio::task::spawn_blocking(move || b.save_snapshot()).await {
                        Ok(Err(e)) => warn!(error = %e, "snapshot failed"),
                        Err(e) => warn!(error = %e, "snapshot failed"),
                        Ok(Ok(())) => {}
                    }
                }
            }
        }
    })
}

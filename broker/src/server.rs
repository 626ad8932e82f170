//! The running broker: listeners bound from the configuration, the `$SYS` publisher, and a
//! graceful stop that tells every client the server is shutting down (DISCONNECT 0x8B).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tessera_config::{Config, Transport};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::auth::Authenticator;
use crate::broker::{Broker, BrokerHandle};
use crate::store::Store;
use crate::{listener, sys};

pub struct Server {
    broker: Arc<Broker>,
    addrs: Vec<(Transport, SocketAddr)>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds every listener (all or nothing) and starts serving, with state kept in memory
    /// only: nothing is written through to a store.
    pub async fn start(config: &Config, auth: Arc<dyn Authenticator>) -> io::Result<Server> {
        Server::bind_and_serve(config, Broker::new(config.mqtt.clone(), auth, None)).await
    }

    /// As `start`, restoring retained messages and sessions from `store` and writing to it.
    pub async fn start_with_store(
        config: &Config,
        auth: Arc<dyn Authenticator>,
        store: Arc<dyn Store>,
    ) -> io::Result<Server> {
        let broker = Broker::new(config.mqtt.clone(), auth, Some(store.clone()));
        broker.restore(store.load()?);
        Server::bind_and_serve(config, broker).await
    }

    async fn bind_and_serve(config: &Config, broker: Arc<Broker>) -> io::Result<Server> {
        let mut bound = Vec::new();
        for l in &config.listeners {
            bound.push(listener::bind(&l.value, &config.data_dir).await?);
        }
        let (stop, stop_rx) = watch::channel(false);
        let addrs = bound.iter().map(|b| (b.transport, b.local_addr)).collect();
        let mut tasks: Vec<JoinHandle<()>> = bound
            .into_iter()
            .map(|b| listener::spawn_accept_loop(b, broker.clone(), stop_rx.clone()))
            .collect();
        tasks.extend(sys::spawn(broker.clone(), config.sys.interval, stop_rx));
        Ok(Server {
            broker,
            addrs,
            stop,
            tasks,
        })
    }

    /// The first bound address of a transport.
    pub fn addr(&self, t: Transport) -> Option<SocketAddr> {
        self.addrs.iter().find(|(k, _)| *k == t).map(|(_, a)| *a)
    }

    pub fn handle(&self) -> BrokerHandle {
        self.broker.handle()
    }

    /// Stops accepting, disconnects every client with 0x8B and waits (up to 5 s) for them.
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
        self.broker.save_sessions();
    }
}

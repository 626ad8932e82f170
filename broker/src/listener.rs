//! Listeners: bind the configured addresses, accept connections, and turn each into a byte
//! stream (plain TCP, TLS, WebSocket or TLS WebSocket) for `connection::serve`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tessera_config::{Listener, Transport};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::connection::{Accepted, serve};
use crate::tls::{Purpose, TlsServer};
use crate::websocket;

pub struct BoundListener {
    pub transport: Transport,
    pub local_addr: SocketAddr,
    tcp: TcpListener,
    pub tls: Option<Arc<TlsServer>>,
    ws_path: String,
}

/// Binds one listener; the error names it.
pub async fn bind(l: &Listener, data_dir: &Path) -> io::Result<BoundListener> {
    let name = format!("{} listener on {}", l.transport.name(), l.bind);
    let tcp = TcpListener::bind(l.bind)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind the {name}: {e}")))?;
    let tls = if l.transport.uses_tls() {
        Some(TlsServer::new(
            name,
            l.tls_files(),
            data_dir,
            Purpose::Mqtt,
        )?)
    } else {
        None
    };
    let local_addr = tcp.local_addr()?;
    info!(transport = l.transport.name(), addr = %local_addr, "listener ready");
    Ok(BoundListener {
        transport: l.transport,
        local_addr,
        tcp,
        tls,
        ws_path: l.path.clone(),
    })
}

/// Accepts connections until `stop` turns true.
pub fn spawn_accept_loop(
    l: BoundListener,
    broker: Arc<Broker>,
    mut open: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let l = Arc::new(l);
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.changed() => return,
            opened = open.wait_for(|o| *o) => if opened.is_err() { return },
        }
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                res = l.tcp.accept() => match res {
                    Ok((stream, peer)) if l.tls.is_none() && !l.transport.uses_websocket() => {
                        // Plain TCP: the connection is the task itself, with no wrapper
                        // future and no second allocation per connection.
                        let _ = stream.set_nodelay(true);
                        let accepted = l.accepted(peer, None);
                        tokio::spawn(serve(broker.clone(), stream, accepted));
                    }
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let l = l.clone();
                        let broker = broker.clone();
                        tokio::spawn(async move { l.handle(stream, peer, broker).await });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    })
}

impl BoundListener {
    fn accepted(
        &self,
        peer: SocketAddr,
        certificate: Option<Arc<crate::tls::ClientCertificate>>,
    ) -> Accepted {
        Accepted {
            peer,
            transport: self.transport.name(),
            listener: self.local_addr,
            certificate,
        }
    }

    /// Sets up a TLS and/or WebSocket connection, then serves it (plain TCP connections are
    /// spawned straight from the accept loop).
    async fn handle(&self, stream: TcpStream, peer: SocketAddr, broker: Arc<Broker>) {
        // The connection is boxed, and only awaited once the match is over: a task's future is
        // as large as its largest state, and a plain TCP connection must carry neither the
        // size of a TLS WebSocket stream nor the transport setup's result while it lives.
        let setup = Duration::from_secs(broker.config.connect_timeout as u64);
        let max_size = broker.config.max_packet_size as usize;
        let connection: Pin<Box<dyn Future<Output = ()> + Send>> =
            match (&self.tls, self.transport.uses_websocket()) {
                // Not reached from the accept loop, which spawns plain TCP directly.
                (None, false) => Box::pin(serve(broker, stream, self.accepted(peer, None))),
                (Some(server), false) => {
                    // The configuration current now; a reload meanwhile is for later ones.
                    let tls = server.current();
                    let handshake = Box::pin(tls.accept(stream));
                    let Some(s) = set_up(setup, peer, "TLS handshake", handshake).await else {
                        return;
                    };
                    let certificate = tls.client_certificate(s.peer_certificates());
                    Box::pin(serve(broker, s, self.accepted(peer, certificate)))
                }
                (None, true) => {
                    let upgrade = Box::pin(websocket::accept(stream, &self.ws_path, max_size));
                    let Some(ws) = set_up(setup, peer, "WebSocket upgrade", upgrade).await else {
                        return;
                    };
                    Box::pin(serve(broker, ws, self.accepted(peer, None)))
                }
                (Some(server), true) => {
                    let tls = server.current();
                    let upgrade = Box::pin(async {
                        let s = tls.accept(stream).await?;
                        let certificate = tls.client_certificate(s.peer_certificates());
                        let ws = websocket::accept(s, &self.ws_path, max_size).await?;
                        Ok((ws, certificate))
                    });
                    let Some((ws, certificate)) =
                        set_up(setup, peer, "TLS WebSocket setup", upgrade).await
                    else {
                        return;
                    };
                    Box::pin(serve(broker, ws, self.accepted(peer, certificate)))
                }
            };
        connection.await
    }
}

/// Runs a transport's setup (TLS handshake, WebSocket upgrade) within the connect timeout;
/// `None`, logged, if it fails or takes too long.
async fn set_up<T>(
    timeout: Duration,
    peer: SocketAddr,
    what: &str,
    setup: impl Future<Output = io::Result<T>>,
) -> Option<T> {
    match tokio::time::timeout(timeout, setup).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            debug!(peer = %peer, error = %e, "{what} failed");
            None
        }
        Err(_) => {
            debug!(peer = %peer, "{what} timed out");
            None
        }
    }
}

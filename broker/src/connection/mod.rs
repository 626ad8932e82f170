//! One client connection, from its first byte to its close: the read/write loop, keep-alive,
//! orders from the broker (takeover, revocation, shutdown), and the way it ends (DISCONNECT
//! reason, will, session detach).
//!
//! The steps live beside it, each in its file: `handshake.rs` (CONNECT to CONNACK, which
//! produces the [`Client`]), `protocol.rs` (every packet after CONNACK), `exchange.rs`
//! (enhanced authentication, at CONNECT and after), `delivery.rs` (messages from the session
//! to the client, within its flow control), `wire.rs` (bytes in and out) and `violation.rs`
//! (the rules a client can break, with their reason codes).

mod acks;
mod client;
mod delivery;
mod exchange;
mod handshake;
mod outbuf;
mod protocol;
mod rate;
mod violation;
mod wire;

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info};

use self::client::{Client, Endpoint};
use self::protocol::Handled;
use self::violation::Violation;
use self::wire::{Split, Wire};
use crate::broker::Broker;
use crate::codec::{self, DecodeError, Disconnect, Packet, Properties, ReasonCode, Utf8Bytes};
use crate::message::Message;
use crate::routing::Qos0Run;
use crate::session::Control;
use crate::tls::ClientCertificate;

/// Packets handled from one read after which the connection yields to other tasks.
const YIELD_AFTER: usize = 16;

/// How a connection ends.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The client sent DISCONNECT. Its will is still published unless the reason was 0x00.
    ClientDisconnect { publish_will: bool },
    /// A packet did not decode (its reason code is the codec's).
    Undecodable(DecodeError),
    /// A packet broke a rule (its reason code is the violation's).
    Violation(Violation),
    /// The broker ends it: an order (takeover, revocation, shutdown), keep-alive, credential
    /// expiry, a refused re-authentication.
    Server { reason: ReasonCode, why: String },
    /// The socket closed or failed.
    Transport(String),
}

impl Ending {
    pub(crate) fn server(reason: ReasonCode, why: impl Into<String>) -> Ending {
        Ending::Server {
            reason,
            why: why.into(),
        }
    }

    /// The DISCONNECT the broker sends (5.0 only): reason code and Reason String.
    fn disconnect(&self) -> Option<(ReasonCode, String)> {
        match self {
            Ending::Undecodable(e) => Some((e.reason_code(), e.to_string())),
            Ending::Violation(v) => Some((v.reason_code(), v.describe().to_string())),
            Ending::Server { reason, why } => Some((*reason, why.clone())),
            Ending::ClientDisconnect { .. } | Ending::Transport(_) => None,
        }
    }
}

impl From<Violation> for Ending {
    fn from(v: Violation) -> Ending {
        Ending::Violation(v)
    }
}

/// Where handling the packets of one read stopped (see `Connection::handle_buffered`).
enum Buffered {
    /// Every complete packet is handled.
    Drained,
    /// Subscribers' queues are filling faster than their tasks run: yield, then go on.
    Yield,
    /// An AUTH packet (re-authentication), to be handled before the rest.
    Auth(Box<codec::Auth>),
    /// Over the inbound message rate: the rest waits until then.
    Paused(Instant),
    End(Ending),
}

pub(crate) struct Connection {
    pub broker: Arc<Broker>,
    pub endpoint: Endpoint,
    pub wire: Wire,
    /// Encoded bytes buffered for the client before the broker stops reading from it and
    /// stops taking messages from its queue.
    pub high_water: usize,
    /// The last message this client published filled some subscriber's queue faster than that
    /// subscriber's task runs: yield before handling the next packet, so a flooding publisher
    /// lets its subscribers drain instead of making the broker queue what it would then drop.
    pub subscribers_behind: bool,
    /// The client's QoS 0 messages held back to be routed together; empty whenever the
    /// connection waits (its flush policy is in `routing.rs`).
    pub run: Qos0Run,
    /// Acknowledgements waiting for durability (`acks.rs`); `None` while none waits.
    pub acks: Option<Box<acks::DeferredAcks>>,
    /// The inbound rate limit (`rate.rs`); `None` when none is configured.
    pub rate: Option<Box<rate::RateLimit>>,
}

/// Serves one accepted stream until it closes. The connection's state is built here, outside
/// the future: a future keeps its arguments apart from the locals made of them for its whole
/// life, and this one is every idle connection's task (224 bytes of it were copies).
pub fn serve<S>(
    broker: Arc<Broker>,
    stream: S,
    accepted: Accepted,
) -> impl Future<Output = ()> + Send + 'static
where
    S: Split,
{
    broker
        .stats
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    let (mut r, mut w) = stream.split();
    let mut conn = Connection {
        endpoint: Endpoint {
            id: broker.next_id(),
            peer: accepted.peer,
            transport: accepted.transport,
            listener: accepted.listener,
            control: Arc::default(),
            certificate: accepted.certificate,
        },
        wire: Wire::new(broker.config.max_packet_size as usize),
        high_water: broker.config.max_client_buffer as usize,
        subscribers_behind: false,
        run: Qos0Run::default(),
        acks: None,
        rate: rate::RateLimit::new(&broker.config),
        broker,
    };
    // The three phases: connect, connected, close. `conn`, `r` and `w` are used in place, not
    // moved into the block's locals (nor passed to an async fn, which would keep its arguments
    // twice).
    async move {
        // The connect phase is boxed so its state is freed once the client is connected.
        let handshake =
            handshake::connect(&conn.broker, &mut conn.wire, &conn.endpoint, &mut r, &mut w);
        let Some(mut client) = Box::pin(handshake).await else {
            conn.close(&mut w).await;
            conn.wire.linger(&mut r).await;
            return;
        };
        let ending = conn.run(&mut client, &mut r, &mut w).await;
        // Boxed like the connect phase: only a closing connection needs its state.
        Box::pin(conn.finish(client, ending, &mut r, &mut w)).await;
    }
}

/// What the listener knows of a connection it accepted.
pub(crate) struct Accepted {
    pub peer: SocketAddr,
    /// "tcp", "tls", "ws" or "wss".
    pub transport: &'static str,
    /// The address the listener is bound to.
    pub listener: SocketAddr,
    /// The client certificate its TLS handshake verified.
    pub certificate: Option<Arc<ClientCertificate>>,
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

impl Connection {
    /// The connected phase: until the client, the broker or the network ends it. An async
    /// block rather than an async fn, whose arguments would be kept twice in every idle
    /// connection's future.
    #[allow(clippy::manual_async_fn)]
    fn run<'a, R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &'a mut self,
        c: &'a mut Client,
        r: &'a mut R,
        w: &'a mut W,
    ) -> impl Future<Output = Ending> + 'a {
        async move {
            let mut keep_alive_deadline = c.keep_alive_window.map(|d| Instant::now() + d);
            // TLS and WebSocket streams buffer inside; they must be flushed once the buffer empties.
            let mut needs_flush = false;
            // Set while the inbound rate limit holds reading back.
            let mut paused_until: Option<Instant> = None;
            // Packets the client sent right behind its CONNECT were read with it: they are handled
            // now, not when the client next sends something (found by the connection fuzz target).
            if !self.wire.rbuf.is_empty()
                && let Err(end) = self
                    .handle_read(c, &mut keep_alive_deadline, &mut paused_until)
                    .await
            {
                return end;
            }
            loop {
                if let Some(Control::Disconnect {
                    reason,
                    reason_string,
                }) = self.endpoint.control.take()
                {
                    return Ending::server(reason, reason_string.unwrap_or_default());
                }
                if let Err(end) = self.release_acks(c) {
                    return end;
                }
                if let Err(end) = self.fill(c) {
                    return end;
                }
                let want_read = self.wire.out.len() < self.high_water && paused_until.is_none();
                let spare = if want_read {
                    self.wire.ready_to_read()
                } else {
                    0
                };
                let timer = [keep_alive_deadline, c.credential_deadline, paused_until]
                    .into_iter()
                    .flatten()
                    .min();
                tokio::select! {
                    biased;
                    // An order: taken at the top of the loop.
                    _ = self.endpoint.control.notified() => {}
                    res = poll_fn(|cx| wire::poll_read_some(cx, &mut *r, &mut self.wire.rbuf)), if want_read => {
                        match res {
                            Ok(0) => return Ending::Transport("connection closed by client".into()),
                            Err(e) => return Ending::Transport(e.to_string()),
                            Ok(n) => {
                                self.broker.stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                                self.wire.read_done(n, spare);
                            }
                        }
                        if let Err(end) = self.handle_read(c, &mut keep_alive_deadline, &mut paused_until).await {
                            return end;
                        }
                    }
                    // One branch both writes and, once the buffer is empty, flushes.
                    res = poll_fn(|cx| {
                        if self.wire.out.is_empty() {
                            std::pin::Pin::new(&mut *w).poll_flush(cx).map_ok(|()| None)
                        } else {
                            self.wire.out.poll_write(cx, w).map_ok(Some)
                        }
                    }), if !self.wire.out.is_empty() || needs_flush => {
                        match res {
                            Ok(Some(n)) => {
                                self.broker.stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                                needs_flush = true;
                            }
                            Ok(None) => needs_flush = false,
                            Err(e) => return Ending::Transport(e.to_string()),
                        }
                    }
                    _ = c.session.notify.notified(), if self.wire.out.len() < self.high_water => {}
                    // One timer for every deadline (a timer is over a hundred bytes of every idle
                    // connection): the rate limit's pause resumes reading; keep-alive or credential
                    // expiry, whichever has passed, ends the connection. select! builds a disabled
                    // branch's future too, so without a timer it gets a far one.
                    _ = sleep_until(timer.unwrap_or_else(far_future)), if timer.is_some() => {
                        if paused_until.is_some_and(|p| p <= Instant::now()) {
                            // What the pause left in the read buffer comes before the next read.
                            paused_until = None;
                            if let Err(end) = self.handle_read(c, &mut keep_alive_deadline, &mut paused_until).await {
                                return end;
                            }
                            continue;
                        }
                        if c.credential_deadline.is_some_and(|d| d <= Instant::now()) {
                            return Ending::server(ReasonCode::MAXIMUM_CONNECT_TIME, "credential expired; re-authenticate before expiry to stay connected");
                        }
                        return Ending::server(ReasonCode::KEEP_ALIVE_TIMEOUT, "no packet within 1.5 times the keep-alive");
                    }
                }
            }
        }
    }

    /// Handles what a read (or the end of a rate-limit pause) left in the read buffer: every
    /// complete packet, unless the rate limit pauses the connection first.
    async fn handle_read(
        &mut self,
        c: &mut Client,
        keep_alive_deadline: &mut Option<Instant>,
        paused_until: &mut Option<Instant>,
    ) -> Result<(), Ending> {
        let mut handled = 0;
        loop {
            match self.handle_buffered(c, keep_alive_deadline, &mut handled) {
                Buffered::Drained => break,
                Buffered::End(end) => return Err(end),
                Buffered::Yield => {
                    handled = 0;
                    tokio::task::yield_now().await;
                }
                Buffered::Paused(until) => {
                    *paused_until = (*paused_until).max(Some(until));
                    break;
                }
                // Boxed: re-authentication is rare, and its state would otherwise sit in every
                // idle connection's future.
                Buffered::Auth(auth) => Box::pin(self.on_auth(c, *auth)).await?,
            }
        }
        // The client is not late while the broker is the one not reading.
        if let (Some(p), Some(k), Some(w)) = (
            *paused_until,
            keep_alive_deadline.as_mut(),
            c.keep_alive_window,
        ) {
            *k = (*k).max(p + w);
        }
        if std::mem::take(&mut self.subscribers_behind) {
            handled = YIELD_AFTER;
        }
        if handled >= YIELD_AFTER {
            // A publisher with a full socket would otherwise keep the worker for a whole
            // scheduling budget (over a hundred reads) while the subscribers it fills wait;
            // yielding after each large batch lets them drain in step.
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// Handles the complete packets in the read buffer until it is drained, the connection
    /// ends, subscribers need the worker, or an AUTH needs the (asynchronous) authenticator.
    /// Synchronous, so no decoded packet is ever part of the connection future's state. The
    /// held-back QoS 0 run is routed before any packet that cannot join it and at every exit.
    fn handle_buffered(
        &mut self,
        c: &mut Client,
        keep_alive_deadline: &mut Option<Instant>,
        handled: &mut usize,
    ) -> Buffered {
        // Every packet of one read arrived at once: the keep-alive restarts once per call.
        let mut received = false;
        let outcome = loop {
            let buffered = self.wire.rbuf.len();
            let packet = match self.wire.decode() {
                Ok(Some(packet)) => packet,
                Ok(None) => break Buffered::Drained,
                Err(e) => break Buffered::End(Ending::Undecodable(e)),
            };
            if !received {
                received = true;
                *keep_alive_deadline = c.keep_alive_window.map(|d| Instant::now() + d);
            }
            *handled += 1;
            if !Qos0Run::joins(&packet) {
                self.flush_run();
            }
            let publishes = matches!(packet, Packet::Publish(_)) as u64;
            match self.handle(c, packet) {
                Ok(Handled::Done) => {}
                Ok(Handled::Auth(auth)) => break Buffered::Auth(auth),
                Err(end) => break Buffered::End(end),
            }
            // Over the inbound rate, the rest of the buffer waits (`rate.rs`).
            if let Some(rate) = &mut self.rate {
                let bytes = (buffered - self.wire.rbuf.len()) as u64;
                if let Some(until) = rate.record(publishes, bytes, Instant::now()) {
                    break Buffered::Paused(until);
                }
            }
            if std::mem::take(&mut self.subscribers_behind) {
                break Buffered::Yield;
            }
        };
        self.flush_run();
        outcome
    }

    /// Routes the held-back QoS 0 run.
    fn flush_run(&mut self) {
        let routed = self.run.flush(&self.broker);
        self.subscribers_behind |= routed.subscribers_behind;
    }

    /// Ends the connected phase: DISCONNECT if the broker ends it, the will, the session; then
    /// the lingering close, once the session no longer waits for this connection.
    async fn finish<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        c: Client,
        ending: Ending,
        r: &mut R,
        w: &mut W,
    ) {
        match (&ending, ending.disconnect()) {
            (Ending::ClientDisconnect { .. }, _) => {
                info!(client_id = %c.client_id(), "client disconnected");
            }
            (Ending::Transport(why), _) => {
                info!(client_id = %c.client_id(), why = %why, "connection lost");
            }
            (_, Some((reason, why))) => {
                info!(client_id = %c.client_id(), reason = %reason, why = %why, "disconnecting client");
                if self.wire.version.is_v5() {
                    let properties = Properties {
                        reason_string: (!why.is_empty()).then(|| Utf8Bytes::from(why)),
                        ..Default::default()
                    };
                    self.send(
                        &c,
                        Packet::Disconnect(Disconnect {
                            reason_code: reason,
                            properties,
                        }),
                    );
                }
            }
            (_, None) => {}
        }
        // Only a connection the broker ends may still have bytes coming: a client that sent
        // DISCONNECT closes its side (MQTT-3.14.4-1), and a closed or failed socket has none.
        let linger = !matches!(
            ending,
            Ending::ClientDisconnect { .. } | Ending::Transport(_)
        );
        let publish_will = match ending {
            Ending::ClientDisconnect { publish_will } => publish_will,
            _ => true,
        };
        self.close(w).await;
        let (will, delay) = match (publish_will, c.will) {
            (true, Some(will)) => {
                let delay = will.properties.will_delay_interval.unwrap_or(0);
                (Some(Arc::new(Message::from_will(*will))), delay)
            }
            _ => (None, 0),
        };
        self.broker.unregister_connection(self.endpoint.id);
        self.broker
            .connection_closed(&c.session, self.endpoint.id, will, delay);
        if linger {
            self.wire.linger(r).await;
        }
    }

    /// Writes what is buffered (bounded in time) and closes the write side.
    async fn close<W: AsyncWrite + Unpin>(&mut self, w: &mut W) {
        if !self.wire.flush_and_close(w).await {
            debug!(conn = self.endpoint.id, "flush on close timed out");
        }
    }
}

#[cfg(test)]
mod size_tests {
    /// Every idle connection carries its task's future: keep it small (4.9 KB before the
    /// connect phase and the will were boxed, 3.2 KB before packets were handled outside it
    /// and the two timers became one, 1.1 KB before its arguments stopped being kept twice,
    /// 976 bytes before a connection kept its `Rights` instead of its whole grant; 904 now).
    /// tokio allocates a task as one cell: a 32-byte header, the scheduler and task id (16),
    /// the future behind the stage's 8-byte tag, a 48-byte trailer, rounded up to 128 bytes
    /// (x86-64). Up to 920 bytes of future the cell is 1,024 bytes; one byte more and every
    /// idle connection costs 128 more (it was 1,152 until the grant was trimmed).
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let broker = crate::broker::Broker::new(
            tessera_config::MqttConfig::default(),
            std::sync::Arc::new(crate::auth::AnonymousOnly {
                allow_anonymous: true,
            }),
            crate::broker::Persistence::None,
        );
        let accepted = super::Accepted {
            peer: addr,
            transport: "tcp",
            listener: addr,
            certificate: None,
        };
        let f = super::serve(broker, s, accepted);
        let size = std::mem::size_of_val(&f);
        eprintln!("connection future: {size} bytes");
        assert!(
            size <= 920,
            "connection future grew to {size} bytes: its tokio task is now 1,152 bytes, not 1,024"
        );
    }
}

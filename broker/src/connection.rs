//! One client connection, from its first byte to its close: reading and writing, keep-alive,
//! orders from the broker (takeover, revocation, shutdown), and the way it ends (DISCONNECT
//! reason, will, session detach).
//!
//! The protocol steps live beside it: `handshake.rs` (CONNECT, enhanced authentication,
//! CONNACK), `protocol.rs` (every packet after CONNACK) and `delivery.rs` (messages from the
//! session to the client, within its flow control).

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info};

use crate::auth::{AuthExchange, Grant};
use crate::broker::Broker;
use crate::codec::{
    self, DecodeError, Disconnect, Packet, Properties, ReasonCode, Utf8Bytes, Version, Will,
};
use crate::message::Message;
use crate::outbuf::OutBuf;
use crate::session::{Control, ControlSlot, Session};

/// Read buffer growth: a read asks for `read_size` spare bytes, which doubles (up to the
/// maximum) while reads fill the buffer and halves when they do not. An idle connection thus
/// holds a small buffer; a busy one reads in large chunks.
const MIN_READ: usize = 512;
const MAX_READ: usize = 64 * 1024;
/// What a read into an empty `BytesMut` allocates (`BytesMut::chunk_mut` reserves 64 bytes).
const IDLE_READ: usize = 64;
/// Packets handled from one read after which the connection yields to other tasks.
const YIELD_AFTER: usize = 16;
/// QoS 0 messages to one topic held back to be routed together (see `Connection::qos0_run`).
pub(crate) const RUN_MAX: usize = 64;
/// How long a closing connection may take to flush its last packets.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

pub(crate) type Reader<S> = ReadHalf<S>;
pub(crate) type Writer<S> = WriteHalf<S>;

/// How a connection ends.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The client sent DISCONNECT. Its will is still published unless the reason was 0x00.
    ClientDisconnect { publish_will: bool },
    /// The broker closes it with this reason (DISCONNECT is sent to 5.0 clients).
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
}

/// Where handling the packets of one read stopped (see `Connection::handle_buffered`).
enum Buffered {
    /// Every complete packet is handled.
    Drained,
    /// Subscribers' queues are filling faster than their tasks run: yield, then go on.
    Yield,
    /// An AUTH packet (re-authentication), to be handled before the rest.
    Auth(Box<codec::Auth>),
    End(Ending),
}

/// Topic aliases in force on one connection (MQTT 5.0 §3.3.2.3.4).
#[derive(Default)]
pub(crate) struct TopicAliases {
    /// Set by the client's PUBLISH packets.
    pub inbound: HashMap<u16, Utf8Bytes>,
    /// Announced by the broker to the client, numbered from 1 in order of use.
    pub outbound: HashMap<Utf8Bytes, u16>,
}

/// Everything known about the client once CONNACK is sent.
pub(crate) struct Active {
    pub session: Arc<Session>,
    pub client_id: Arc<str>,
    /// 1.5 × the keep-alive in force; `None` when keep-alive is off.
    pub keep_alive_window: Option<Duration>,
    /// The client's Receive Maximum: outgoing QoS 1/2 messages unacknowledged at once.
    pub receive_maximum: usize,
    /// The client's Maximum Packet Size.
    pub max_packet_out: usize,
    pub topic_alias_max_out: u16,
    /// Allocated when the first alias is used: most clients use none.
    pub aliases: Option<Box<TopicAliases>>,
    /// Request Problem Information: false forbids Reason Strings outside PUBLISH, CONNACK and
    /// DISCONNECT (MQTT-3.1.2-29).
    pub problem_info: bool,
    pub will: Option<Box<Will>>,
    pub grant: Grant,
    /// When the grant's credential expires, on the runtime clock.
    pub credential_deadline: Option<Instant>,
    pub auth_method: Option<String>,
    /// A re-authentication waiting for the client's next AUTH 0x18.
    pub reauth: Option<Box<dyn AuthExchange>>,
    /// The CONNECT asked for Session Expiry 0, so DISCONNECT may not raise it (MQTT-3.14.2-2).
    pub expiry_zero_at_connect: bool,
    /// Resend in-flight messages before new ones (session resumed).
    pub resend: bool,
}

pub(crate) struct Connection {
    pub broker: Arc<Broker>,
    pub id: u64,
    pub peer: SocketAddr,
    pub transport: &'static str,
    pub version: Version,
    pub rbuf: BytesMut,
    pub out: OutBuf,
    /// Orders from the broker (takeover, revocation, shutdown).
    pub control: Arc<ControlSlot>,
    /// The broker's Maximum Packet Size.
    pub max_packet_in: usize,
    /// Encoded bytes buffered for the client before the broker stops reading from it and
    /// stops taking messages from its queue.
    pub high_water: usize,
    /// Spare capacity to ask for before the next read (see `MIN_READ`).
    pub read_size: usize,
    /// Protocol level of a CONNECT seen at the front of the read buffer, kept so a CONNECT
    /// that fails to decode can still be answered in its version.
    pub connect_level: Option<u8>,
    /// The last message this client published filled some subscriber's queue faster than that
    /// subscriber's task runs: yield before handling the next packet, so a flooding publisher
    /// lets its subscribers drain instead of making the broker queue what it would then drop.
    pub subscribers_behind: bool,
    /// QoS 0 messages (not retained) this client published to one topic, accepted and not yet
    /// routed. Routed together when the read is handled, another packet arrives, the topic
    /// changes or `RUN_MAX` (at most a quarter of a queue) is reached: matching and each
    /// subscriber's lock are paid per run.
    /// Empty whenever the connection waits.
    pub qos0_run: Vec<Arc<Message>>,
}

/// Serves one accepted stream until it closes.
pub async fn serve<S>(broker: Arc<Broker>, stream: S, peer: SocketAddr, transport: &'static str)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    broker
        .stats
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    let (mut r, mut w) = tokio::io::split(stream);
    let mut conn = Connection {
        id: broker.next_id(),
        peer,
        transport,
        version: Version::V5,
        rbuf: BytesMut::new(),
        out: OutBuf::default(),
        control: Arc::default(),
        max_packet_in: broker.config.max_packet_size as usize,
        high_water: broker.config.max_client_buffer as usize,
        connect_level: None,
        subscribers_behind: false,
        qos0_run: Vec::new(),
        read_size: MIN_READ,
        broker,
    };
    // The connect phase is boxed so its state is freed once the client is connected.
    let Some(mut active) = Box::pin(conn.handshake(&mut r, &mut w)).await else {
        conn.flush_and_close(&mut w).await;
        return;
    };
    let ending = conn.run(&mut active, &mut r, &mut w).await;
    // Boxed like the connect phase: only a closing connection needs its state.
    Box::pin(conn.finish(active, ending, &mut w)).await;
}

impl Connection {
    /// The connected phase: until the client, the broker or the network ends it.
    async fn run<S: AsyncRead + AsyncWrite>(
        &mut self,
        a: &mut Active,
        r: &mut Reader<S>,
        w: &mut Writer<S>,
    ) -> Ending {
        let mut keep_alive_deadline = a.keep_alive_window.map(|d| Instant::now() + d);
        // TLS and WebSocket streams buffer inside; they must be flushed once the buffer empties.
        let mut needs_flush = false;
        loop {
            if let Some(end) = self.fill(a) {
                return end;
            }
            let want_read = self.out.len() < self.high_water;
            if want_read && self.rbuf.is_empty() && self.read_size == MIN_READ {
                // Quiet: wait holding no read buffer. The read itself allocates a small one
                // (`IDLE_READ`) when bytes come; most idle connections only ever send PINGREQ.
                if self.rbuf.capacity() > IDLE_READ {
                    self.rbuf = BytesMut::new();
                }
            } else if want_read {
                self.make_room();
            }
            let spare = self.rbuf.capacity() - self.rbuf.len();
            let far = Instant::now() + Duration::from_secs(86_400 * 365);
            let timer = match (keep_alive_deadline, a.credential_deadline) {
                (Some(k), Some(c)) => Some(k.min(c)),
                (k, c) => k.or(c),
            };
            tokio::select! {
                biased;
                order = self.control.recv() => {
                    let Control::Disconnect { reason, reason_string } = order;
                    return Ending::server(reason, reason_string.unwrap_or_default());
                }
                res = r.read_buf(&mut self.rbuf), if want_read => {
                    match res {
                        Ok(0) => return Ending::Transport("connection closed by client".into()),
                        Err(e) => return Ending::Transport(e.to_string()),
                        Ok(n) => {
                            self.broker.stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                            self.adapt_read_size(n, spare);
                        }
                    }
                    let mut handled = 0;
                    loop {
                        match self.handle_buffered(a, &mut keep_alive_deadline, &mut handled) {
                            Buffered::Drained => break,
                            Buffered::End(end) => return end,
                            Buffered::Yield => {
                                handled = 0;
                                tokio::task::yield_now().await;
                            }
                            // Boxed: re-authentication is rare, and its state would otherwise
                            // sit in every idle connection's future.
                            Buffered::Auth(auth) => {
                                if let Some(end) = Box::pin(self.on_auth(a, *auth)).await {
                                    return end;
                                }
                            }
                        }
                    }
                    if std::mem::take(&mut self.subscribers_behind) {
                        handled = YIELD_AFTER;
                    }
                    if handled >= YIELD_AFTER {
                        // A publisher with a full socket would otherwise keep the worker for a
                        // whole scheduling budget (over a hundred reads) while the subscribers it
                        // fills wait; yielding after each large batch lets them drain in step.
                        tokio::task::yield_now().await;
                    }
                }
                // One branch both writes and, once the buffer is empty, flushes.
                res = poll_fn(|cx| {
                    if self.out.is_empty() {
                        std::pin::Pin::new(&mut *w).poll_flush(cx).map_ok(|()| None)
                    } else {
                        self.out.poll_write(cx, w).map_ok(Some)
                    }
                }), if !self.out.is_empty() || needs_flush => {
                    match res {
                        Ok(Some(n)) => {
                            self.broker.stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                            needs_flush = true;
                        }
                        Ok(None) => needs_flush = false,
                        Err(e) => return Ending::Transport(e.to_string()),
                    }
                }
                _ = a.session.notify.notified(), if self.out.len() < self.high_water => {}
                // One timer for both deadlines (a timer is over a hundred bytes of every idle
                // connection): whichever has passed when it fires ends the connection.
                _ = sleep_until(timer.unwrap_or(far)), if timer.is_some() => {
                    if a.credential_deadline.is_some_and(|d| d <= Instant::now()) {
                        return Ending::server(ReasonCode::MAXIMUM_CONNECT_TIME, "credential expired; re-authenticate before expiry to stay connected");
                    }
                    return Ending::server(ReasonCode::KEEP_ALIVE_TIMEOUT, "no packet within 1.5 times the keep-alive");
                }
            }
        }
    }

    /// Handles the complete packets in the read buffer until it is drained, the connection
    /// ends, subscribers need the worker, or an AUTH needs the (asynchronous) authenticator.
    /// Synchronous, so no decoded packet is ever part of the connection future's state.
    fn handle_buffered(
        &mut self,
        a: &mut Active,
        keep_alive_deadline: &mut Option<Instant>,
        handled: &mut usize,
    ) -> Buffered {
        loop {
            let packet = match codec::decode(&mut self.rbuf, self.version, self.max_packet_in) {
                Ok(Some(packet)) => packet,
                Ok(None) => {
                    self.route_qos0_run();
                    return Buffered::Drained;
                }
                Err(e) => {
                    self.route_qos0_run();
                    return Buffered::End(Ending::server(e.reason_code(), e.to_string()));
                }
            };
            *keep_alive_deadline = a.keep_alive_window.map(|d| Instant::now() + d);
            *handled += 1;
            if let Packet::Auth(auth) = packet {
                self.route_qos0_run();
                return Buffered::Auth(Box::new(auth));
            }
            if let Some(end) = self.handle(a, packet) {
                self.route_qos0_run();
                return Buffered::End(end);
            }
            if std::mem::take(&mut self.subscribers_behind) {
                return Buffered::Yield;
            }
        }
    }

    /// Routes the held-back QoS 0 run (see `qos0_run`).
    pub(crate) fn route_qos0_run(&mut self) {
        if self.qos0_run.is_empty() {
            return;
        }
        let routed = self.broker.publish_run(&self.qos0_run);
        self.qos0_run.clear();
        self.subscribers_behind |= routed.subscribers_behind;
    }

    /// Ends the connected phase: DISCONNECT if the broker ends it, the will, the session.
    async fn finish<S: AsyncRead + AsyncWrite>(
        &mut self,
        a: Active,
        ending: Ending,
        w: &mut Writer<S>,
    ) {
        let publish_will = match &ending {
            Ending::ClientDisconnect { publish_will } => {
                info!(client_id = %a.client_id, "client disconnected");
                *publish_will
            }
            Ending::Server { reason, why } => {
                info!(client_id = %a.client_id, reason = %reason, why = %why, "disconnecting client");
                if self.version.is_v5() {
                    let props = Properties {
                        reason_string: (!why.is_empty()).then(|| Utf8Bytes::from(why.as_str())),
                        ..Default::default()
                    };
                    self.send(
                        &a,
                        Packet::Disconnect(Disconnect {
                            reason_code: *reason,
                            properties: props,
                        }),
                    );
                }
                true
            }
            Ending::Transport(why) => {
                info!(client_id = %a.client_id, why = %why, "connection lost");
                true
            }
        };
        self.flush_and_close(w).await;
        let (will, delay) = match (publish_will, a.will) {
            (true, Some(will)) => {
                let delay = will.properties.will_delay_interval.unwrap_or(0);
                (Some(Arc::new(will_message(*will))), delay)
            }
            _ => (None, 0),
        };
        self.broker.unregister_connection(self.id);
        self.broker
            .connection_closed(&a.session, self.id, will, delay);
    }

    /// Writes what is buffered (bounded in time) and closes the write side.
    pub(crate) async fn flush_and_close<S: AsyncRead + AsyncWrite>(&mut self, w: &mut Writer<S>) {
        let flush = async {
            while !self.out.is_empty() {
                if poll_fn(|cx| self.out.poll_write(cx, w)).await.is_err() {
                    return;
                }
            }
            let _ = w.flush().await;
            let _ = w.shutdown().await;
        };
        if tokio::time::timeout(CLOSE_FLUSH, flush).await.is_err() {
            debug!(conn = self.id, "flush on close timed out");
        }
    }

    /// Writes everything buffered now (used before CONNACK, when nothing else runs).
    pub(crate) async fn write_all<S: AsyncRead + AsyncWrite>(
        &mut self,
        w: &mut Writer<S>,
    ) -> std::io::Result<()> {
        while !self.out.is_empty() {
            let n = poll_fn(|cx| self.out.poll_write(cx, w)).await?;
            self.broker
                .stats
                .bytes_sent
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        w.flush().await
    }

    /// Ensures spare room for the next read, releasing a large empty buffer first.
    fn make_room(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > MAX_READ {
            self.rbuf = BytesMut::new();
        }
        if self.rbuf.capacity() - self.rbuf.len() < self.read_size / 4 {
            self.rbuf.reserve(self.read_size);
        }
    }

    fn adapt_read_size(&mut self, n: usize, spare: usize) {
        if spare == 0 {
            // A read into the small buffer of a quiet connection says nothing about its rate.
            return;
        }
        if n >= spare {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        } else if n < self.read_size / 4 {
            self.read_size = (self.read_size / 2).max(MIN_READ);
        }
    }

    /// Reads until one packet is decoded, or `deadline` passes.
    pub(crate) async fn read_packet<S: AsyncRead + AsyncWrite>(
        &mut self,
        r: &mut Reader<S>,
        deadline: Instant,
    ) -> Result<Packet, ReadError> {
        loop {
            if self.rbuf.first() == Some(&0x10) {
                self.connect_level = crate::handshake::sniff_connect_level(&self.rbuf);
            }
            match codec::decode(&mut self.rbuf, self.version, self.max_packet_in) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Decode(e)),
            }
            self.make_room();
            match tokio::time::timeout_at(deadline, r.read_buf(&mut self.rbuf)).await {
                Err(_) => return Err(ReadError::Timeout),
                Ok(Ok(0)) => return Err(ReadError::Closed),
                Ok(Err(e)) => return Err(ReadError::Io(e)),
                Ok(Ok(n)) => {
                    self.broker
                        .stats
                        .bytes_received
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
    }
}

#[derive(Debug)]
pub(crate) enum ReadError {
    Decode(DecodeError),
    Timeout,
    Closed,
    Io(std::io::Error),
}

/// The application message a will becomes when it is published.
fn will_message(will: Will) -> Message {
    let mut properties = will.properties;
    let expires_at = properties
        .message_expiry_interval
        .take()
        .map(|s| std::time::Instant::now() + Duration::from_secs(s as u64));
    properties.will_delay_interval = None;
    Message {
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        properties,
        expires_at,
        publisher: 0,
        encoded_properties: Default::default(),
    }
}

/// A credential's expiry on the runtime clock.
pub(crate) fn deadline_from(expires_at: Option<SystemTime>) -> Option<Instant> {
    expires_at.map(|t| {
        let left = t
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Instant::now() + left
    })
}

/// A fresh client identifier for a client that sent an empty one.
pub(crate) fn assign_client_id() -> String {
    let mut bytes = [0u8; 12];
    if getrandom::fill(&mut bytes).is_err() {
        // Fall back to time; uniqueness then rests on the clock.
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes[..12].copy_from_slice(&t.to_be_bytes()[4..]);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("auto-{hex}")
}

pub(crate) fn bytes_opt(s: &Option<Utf8Bytes>) -> Option<String> {
    s.as_ref().map(|u| u.to_string())
}

#[cfg(test)]
mod size_tests {
    /// Every idle connection carries its task's future: keep it small (4.9 KB before the
    /// connect phase and the will were boxed, 3.2 KB before packets were handled outside it
    /// and the two timers became one; 1.2 KB now).
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
            None,
        );
        let f = super::serve(broker, s, addr, "tcp");
        let size = std::mem::size_of_val(&f);
        assert!(size <= 1400, "connection future grew to {size} bytes");
    }
}

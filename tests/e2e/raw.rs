//! A byte-level MQTT client on the broker's own codec, for checks that need exact packets:
//! flags, properties, reason codes, and malformed input.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tessera_broker::codec::{
    self, ConnAck, Connect, Packet, Properties, PubResp, Publish, QoS, ReasonCode, Subscribe,
    SubscriptionOptions, Version,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub const WAIT: Duration = Duration::from_secs(10);

/// The client on a TCP stream, or on any other (a TLS stream with a client certificate).
pub struct Raw<S = TcpStream> {
    pub stream: S,
    buf: BytesMut,
    pub version: Version,
    /// PUBLISH packets that came before the SUBACK `subscribe_with` waited for (the standard
    /// lets a server send them first, MQTT 5.0 §3.8.4), returned by the next receive.
    early: std::collections::VecDeque<Packet>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    /// The client on an open stream (a TLS handshake done, say).
    pub fn on(stream: S) -> Raw<S> {
        Raw {
            stream,
            buf: BytesMut::new(),
            version: Version::V5,
            early: Default::default(),
        }
    }

    /// Sends CONNECT and reads the CONNACK.
    pub async fn handshake(&mut self, connect: Connect) -> ConnAck {
        self.version = connect.version;
        self.send(&Packet::Connect(Box::new(connect))).await;
        match self.recv().await {
            Some(Packet::ConnAck(a)) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
}

impl Raw {
    pub async fn open(addr: SocketAddr) -> Raw {
        Raw::on(TcpStream::connect(addr).await.unwrap())
    }

    /// `open` for a broker that may be gone.
    pub async fn try_open(addr: SocketAddr) -> std::io::Result<Raw> {
        Ok(Raw::on(TcpStream::connect(addr).await?))
    }

    /// Opens a connection and completes CONNECT / CONNACK.
    pub async fn connect(addr: SocketAddr, connect: Connect) -> (Raw, ConnAck) {
        let mut raw = Raw::open(addr).await;
        raw.version = connect.version;
        raw.send(&Packet::Connect(Box::new(connect))).await;
        match raw.recv().await {
            Some(Packet::ConnAck(a)) => (raw, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// A 5.0 client with a clean start and the given id.
    pub async fn v5(addr: SocketAddr, id: &str) -> Raw {
        let (raw, ack) = Raw::connect(addr, connect_v5(id)).await;
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
        raw
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    /// `send` for a broker that may be gone: false if the write failed.
    pub async fn try_send(&mut self, p: &Packet) -> bool {
        let mut b = BytesMut::new();
        codec::encode(p, self.version, &mut b);
        self.stream.write_all(&b).await.is_ok()
    }

    /// The next packet, or `None` once the connection is closed or broken (no time limit).
    pub async fn try_recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = codec::decode(&mut self.buf, self.version, 1 << 24).ok()? {
                return Some(p);
            }
            self.buf.reserve(4096);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut b = BytesMut::new();
        codec::encode(p, self.version, &mut b);
        self.stream.write_all(&b).await.unwrap();
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        self.stream.write_all(b).await.unwrap();
    }

    /// The next packet within `WAIT`, or `None` if the broker closed the connection.
    pub async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT)
            .await
            .expect("timed out waiting for a packet")
    }

    /// `Err` on timeout; `Ok(None)` when closed.
    pub async fn recv_within(&mut self, t: Duration) -> Result<Option<Packet>, ()> {
        match self.early.pop_front() {
            Some(p) => Ok(Some(p)),
            None => self.read_within(t).await,
        }
    }

    /// The next packet off the stream, past any kept in `early`.
    async fn read_within(&mut self, t: Duration) -> Result<Option<Packet>, ()> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            if let Some(p) = codec::decode(&mut self.buf, self.version, 1 << 24).unwrap() {
                return Ok(Some(p));
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(()),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Asserts nothing arrives within `t`.
    pub async fn expect_silence(&mut self, t: Duration) {
        if let Ok(p) = self.recv_within(t).await {
            panic!("expected nothing, got {p:?}");
        }
    }

    /// The next packet must be DISCONNECT with `code`, then the connection closes.
    pub async fn expect_disconnect(&mut self, code: ReasonCode) {
        match self.recv().await {
            Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, code, "{d:?}"),
            other => panic!("expected DISCONNECT {code:?}, got {other:?}"),
        }
        self.expect_closed().await;
    }

    pub async fn expect_closed(&mut self) {
        match self.recv_within(WAIT).await {
            Ok(None) => {}
            Ok(Some(p)) => panic!("expected close, got {p:?}"),
            Err(()) => panic!("connection not closed"),
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.subscribe_with(
            filter,
            SubscriptionOptions {
                qos,
                ..Default::default()
            },
            None,
        )
        .await;
    }

    pub async fn subscribe_with(
        &mut self,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> Vec<ReasonCode> {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties {
                subscription_identifiers: id.into_iter().collect(),
                ..Default::default()
            },
            filters: vec![(filter.into(), options)],
        }))
        .await;
        loop {
            match self
                .read_within(WAIT)
                .await
                .expect("timed out waiting for a packet")
            {
                Some(Packet::SubAck(a)) => return a.reason_codes,
                Some(p @ Packet::Publish(_)) => self.early.push_back(p),
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
    }

    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, pid: u16) {
        self.send(&Packet::Publish(publish(topic, payload, qos, pid)))
            .await;
    }

    /// The second half of a QoS 2 publish: PUBREL for `pid`, then its PUBCOMP.
    pub async fn release(&mut self, pid: u16) {
        self.send(&Packet::PubRel(PubResp {
            packet_id: pid,
            ..Default::default()
        }))
        .await;
        assert!(matches!(self.recv().await, Some(Packet::PubComp(_))));
    }

    /// The next PUBLISH, acknowledged if QoS 1.
    pub async fn next_publish(&mut self) -> Publish {
        loop {
            match self.recv().await {
                Some(Packet::Publish(p)) => {
                    if p.qos == QoS::AtLeastOnce {
                        self.send(&Packet::PubAck(PubResp {
                            packet_id: p.packet_id.unwrap(),
                            ..Default::default()
                        }))
                        .await;
                    }
                    return p;
                }
                Some(Packet::PubAck(_)) | Some(Packet::SubAck(_)) => continue,
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }
}

pub fn connect_v5(id: &str) -> Connect {
    Connect {
        version: Version::V5,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
    }
}

pub fn publish(topic: &str, payload: &[u8], qos: QoS, pid: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(pid),
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

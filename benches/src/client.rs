//! A minimal MQTT client for load: CONNECT / CONNACK, then raw packet writes and reads on the
//! broker's codec. Kept lean so the load generator is not the bottleneck.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tessera_broker::codec::{
    self, Connect, Packet, Properties, PubResp, Publish, QoS, ReasonCode, Subscribe,
    SubscriptionOptions, Version,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// How a client logs in.
#[derive(Debug, Clone)]
pub enum Login {
    Anonymous,
    Password {
        user: String,
        password: String,
    },
    /// MQTT 5 enhanced authentication, one step.
    XOAuth2 {
        token: String,
    },
    /// As `XOAuth2`, client `i` with the token `i` of the list (modulo its length).
    XOAuth2Each(std::sync::Arc<Vec<String>>),
}

impl Login {
    /// How the `i`-th client of a scenario logs in.
    pub fn for_client(&self, i: usize) -> Login {
        match self {
            Login::XOAuth2Each(tokens) if !tokens.is_empty() => Login::XOAuth2 {
                token: tokens[i % tokens.len()].clone(),
            },
            other => other.clone(),
        }
    }
}

pub struct Reader {
    half: OwnedReadHalf,
    buf: BytesMut,
    version: Version,
}

pub struct Writer {
    half: OwnedWriteHalf,
    buf: BytesMut,
    version: Version,
}

pub type Error = Box<dyn std::error::Error + Send + Sync>;

impl Reader {
    /// Whether a whole packet is already buffered (so `recv` will not wait).
    pub fn has_packet(&self) -> bool {
        matches!(codec::peek_fixed_header(&self.buf), Ok(Some(h)) if self.buf.len() >= h.total())
    }

    pub async fn recv(&mut self) -> Result<Packet, Error> {
        loop {
            if let Some(p) = codec::decode(&mut self.buf, self.version, 1 << 28)? {
                return Ok(p);
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(64 * 1024);
            }
            if self.half.read_buf(&mut self.buf).await? == 0 {
                return Err("connection closed".into());
            }
        }
    }
}

impl Writer {
    /// Encodes into the write buffer; `flush` sends it.
    pub fn queue(&mut self, p: &Packet) {
        codec::encode(p, self.version, &mut self.buf);
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub async fn flush(&mut self) -> Result<(), Error> {
        self.half.write_all(&self.buf).await?;
        self.buf.clear();
        Ok(())
    }

    pub async fn send(&mut self, p: &Packet) -> Result<(), Error> {
        self.queue(p);
        self.flush().await
    }
}

/// Connects with `version` and a clean session, and waits for a successful CONNACK.
pub async fn connect(
    addr: SocketAddr,
    id: &str,
    login: &Login,
    version: Version,
) -> Result<(Reader, Writer), Error> {
    connect_session(addr, id, login, version, false).await
}

/// `connect`, with a persistent session (3.1.1: clean session 0; 5.0: Clean Start 0 and a
/// Session Expiry of an hour) when `persistent`.
pub async fn connect_session(
    addr: SocketAddr,
    id: &str,
    login: &Login,
    version: Version,
    persistent: bool,
) -> Result<(Reader, Writer), Error> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let mut reader = Reader {
        half: r,
        buf: BytesMut::with_capacity(4096),
        version,
    };
    let mut writer = Writer {
        half: w,
        buf: BytesMut::with_capacity(4096),
        version,
    };
    let v5 = version == Version::V5;
    let c = connect_packet(id, login, version, persistent);
    writer.send(&Packet::Connect(Box::new(c))).await?;
    match tokio::time::timeout(Duration::from_secs(30), reader.recv()).await?? {
        Packet::ConnAck(a) if a.reason_code == ReasonCode::SUCCESS => Ok((reader, writer)),
        Packet::ConnAck(a) if !v5 => Err(format!("CONNACK return code {}", a.reason_code.0).into()),
        Packet::ConnAck(a) => Err(format!("CONNACK {}", a.reason_code).into()),
        other => Err(format!("expected CONNACK, got {:?}", other.packet_type()).into()),
    }
}

/// The CONNECT a client of this load generator sends.
pub fn connect_packet(id: &str, login: &Login, version: Version, persistent: bool) -> Connect {
    let v5 = version == Version::V5;
    let mut c = Connect {
        version,
        clean_start: !persistent,
        // Some brokers refuse keep-alive 0; scenarios are shorter than 1.5 × 120 s.
        keep_alive: 120,
        properties: Properties {
            receive_maximum: v5.then_some(u16::MAX),
            session_expiry_interval: (v5 && persistent).then_some(3600),
            ..Default::default()
        },
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
    };
    match login {
        Login::Anonymous => {}
        Login::Password { user, password } => {
            c.username = Some(user.as_str().into());
            c.password = Some(Bytes::from(password.clone()));
        }
        Login::XOAuth2 { token } => {
            c.properties.authentication_method = Some("X-OAUTH2".into());
            c.properties.authentication_data = Some(Bytes::from(token.clone()));
        }
        Login::XOAuth2Each(tokens) => {
            c.properties.authentication_method = Some("X-OAUTH2".into());
            let first = tokens.first().cloned().unwrap_or_default();
            c.properties.authentication_data = Some(Bytes::from(first));
        }
    }
    c
}

pub async fn subscribe(
    reader: &mut Reader,
    writer: &mut Writer,
    filter: &str,
    qos: QoS,
) -> Result<(), Error> {
    writer
        .send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(
                filter.into(),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
        }))
        .await?;
    loop {
        match reader.recv().await? {
            Packet::SubAck(a) if a.reason_codes.iter().all(|c| !c.is_error()) => return Ok(()),
            Packet::SubAck(a) => return Err(format!("SUBACK {:?}", a.reason_codes).into()),
            _ => {}
        }
    }
}

pub fn publish(topic: &str, payload: Bytes, qos: QoS, packet_id: u16, retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(packet_id),
        properties: Properties::default(),
        payload,
    })
}

/// An acknowledgement of `packet_id`: `kind` is `Packet::PubAck` (to a QoS 1 PUBLISH),
/// `Packet::PubRec` (to a QoS 2 PUBLISH), `Packet::PubRel` (to a PUBREC) or `Packet::PubComp`
/// (to a PUBREL).
pub fn ack(kind: fn(PubResp) -> Packet, packet_id: u16) -> Packet {
    kind(PubResp {
        packet_id,
        ..Default::default()
    })
}

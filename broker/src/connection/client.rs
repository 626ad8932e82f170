//! Who is at the other end of a connection: the connection's place in the broker
//! ([`Endpoint`]), and once CONNACK is sent, the [`Client`]: its session, the terms CONNECT
//! negotiated (keep-alive, Receive Maximum, Maximum Packet Size, topic aliases, problem
//! information), its will, and its authentication (grant, credential deadline, exchange).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::exchange::{Challenge, Method};
use crate::auth::{Grant, Rights};
use crate::codec::{Utf8Bytes, Will};
use crate::session::{ControlSlot, Session};
use crate::tls::ClientCertificate;

/// A connection as the broker knows it from its first byte.
pub(crate) struct Endpoint {
    /// Broker-wide unique; registered once CONNECT succeeds.
    pub id: u64,
    pub peer: SocketAddr,
    /// Listener kind: "tcp", "tls", "ws" or "wss".
    pub transport: &'static str,
    /// The address its listener is bound to.
    pub listener: SocketAddr,
    /// Orders from the broker (takeover, revocation, shutdown).
    pub control: Arc<ControlSlot>,
    /// The client certificate its TLS handshake verified, if any.
    pub certificate: Option<Arc<ClientCertificate>>,
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
pub(crate) struct Client {
    /// The session attached; its `client_id` is the client's.
    pub session: Arc<Session>,
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
    /// Who the client is and what it may do (the grant, less what was sent once).
    pub rights: Rights,
    /// When the grant's credential expires, on the runtime clock.
    pub credential_deadline: Option<Instant>,
    /// The Authentication Method of CONNECT, if it named one (re-authentication uses it).
    pub auth_method: Option<Method>,
    /// A re-authentication waiting for the client's next AUTH 0x18.
    pub challenge: Option<Box<Challenge>>,
    /// The CONNECT asked for Session Expiry 0, so DISCONNECT may not raise it (MQTT-3.14.2-2).
    pub expiry_zero_at_connect: bool,
    /// Resend in-flight messages before new ones (session resumed).
    pub resend: bool,
}

impl Client {
    pub(crate) fn client_id(&self) -> &Arc<str> {
        &self.session.client_id
    }

    /// Takes a new grant (re-authentication): new rights, new deadline.
    pub(crate) fn renew(&mut self, grant: Grant) {
        self.credential_deadline = deadline_from(grant.expires_at);
        self.rights = grant.kept();
    }
}

/// A credential's expiry on the runtime clock (tokio's, which tests may pause).
pub(crate) fn deadline_from(expires_at: Option<SystemTime>) -> Option<Instant> {
    expires_at.map(|t| {
        let left = t
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        Instant::now() + left
    })
}

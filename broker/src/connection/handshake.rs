//! The connect phase. The first packet must be CONNECT; then, each a step below:
//!
//! 1. [`identify`]: the client identifier (assigned when empty, §3.1.3.1), and the broker's
//!    connection limit;
//! 2. [`Handshake::authenticate`]: the mechanism decides, with AUTH round trips while it
//!    challenges (§4.12);
//! 3. [`check_will`]: a will the broker can honour and the client may publish (§3.1.2.5);
//! 4. [`Terms::negotiate`]: session expiry, keep-alive, the client's limits;
//! 5. [`Handshake::attach`]: the connection registered, its session opened (taken over from
//!    another connection if need be), CONNACK.
//!
//! Every refusal is a CONNACK with the reason code the specification names (3.1.1: the return
//! code it maps to), or just the close when the client went away or stopped answering.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::client::{Client, Endpoint, deadline_from};
use super::delivery::fit;
use super::exchange::{self, Method, Next, Refused};
use super::violation::Violation;
use super::wire::{ReadError, Wire};
use crate::auth::{AuthFailure, ConnectRequest, Grant};
use crate::broker::Broker;
use crate::codec::{ConnAck, Connect, DecodeError, Packet, Properties, ReasonCode, Version};
use crate::limits;
use crate::registry::ConnectionInfo;
use crate::session::{ConnLink, Control};
use tessera_config::MqttConfig;

/// Runs the connect phase. `None` means the connection is to be closed (whatever answer was
/// due is already in the write buffer).
pub(crate) async fn connect<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    broker: &Arc<Broker>,
    wire: &mut Wire,
    endpoint: &Endpoint,
    r: &mut R,
    w: &mut W,
) -> Option<Client> {
    let deadline = Instant::now() + Duration::from_secs(broker.config.connect_timeout as u64);
    let first = match wire.read_packet(r, deadline, &broker.stats).await {
        Ok(p) => p,
        Err(ReadError::Decode(e)) => {
            refuse_undecodable(wire, endpoint, e);
            return None;
        }
        Err(ReadError::Timeout) => {
            debug!(peer = %endpoint.peer, "no CONNECT within the connect timeout");
            return None;
        }
        Err(ReadError::Closed) => return None,
        Err(ReadError::Io(e)) => {
            debug!(peer = %endpoint.peer, error = %e, "read failed before CONNECT");
            return None;
        }
    };
    let Packet::Connect(connect) = first else {
        debug!(peer = %endpoint.peer, "first packet is not CONNECT; closing (MQTT-3.1.0-1)");
        return None;
    };
    wire.version = connect.version;
    let max_packet_out = max_packet_out(&connect);
    let mut handshake = Handshake {
        broker,
        wire,
        endpoint,
        deadline,
    };
    match handshake.accept(*connect, r, w).await {
        Ok(client) => Some(client),
        Err(Refusal::Connack(reason, why)) => {
            info!(peer = %endpoint.peer, reason = %reason, why = %why, "connection refused");
            let version = handshake.wire.version;
            let mut connack = Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: reason,
                properties: Properties {
                    reason_string: version.is_v5().then(|| why.as_ref().into()),
                    ..Default::default()
                },
            });
            if fit(&mut connack, version, max_packet_out) {
                handshake.wire.packet(&connack);
            }
            None
        }
        Err(Refusal::Close(why)) => {
            info!(peer = %endpoint.peer, why, "connection closed during CONNECT");
            None
        }
    }
}

/// Answers a first packet that could not be decoded, in the version it claimed if known.
fn refuse_undecodable(wire: &mut Wire, endpoint: &Endpoint, e: DecodeError) {
    debug!(peer = %endpoint.peer, error = %e, "bad first packet");
    let unsupported = matches!(e, DecodeError::UnsupportedProtocol { .. });
    let version = match wire.connect_level {
        Some(5) => Version::V5,
        Some(3) => Version::V3_1,
        Some(4) => Version::V3_1_1,
        // An unknown level: answer in the 3.1.1 form, which every client reads (§3.1.2.2).
        _ if unsupported => Version::V3_1_1,
        _ => return,
    };
    if version != Version::V5 && !unsupported {
        // 3.1.1 has no return code for a malformed CONNECT: just close.
        return;
    }
    wire.out.packet(
        &Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: e.reason_code(),
            properties: Properties::default(),
        }),
        version,
    );
}

/// Why a CONNECT is refused.
#[derive(Debug)]
enum Refusal {
    /// Answered with CONNACK and this reason code (the text is its Reason String), then closed.
    Connack(ReasonCode, Cow<'static, str>),
    /// Closed without an answer: the client went away or stopped answering.
    Close(&'static str),
}

impl Refusal {
    fn new(reason: ReasonCode, why: &'static str) -> Refusal {
        Refusal::Connack(reason, Cow::Borrowed(why))
    }
}

impl From<AuthFailure> for Refusal {
    fn from(f: AuthFailure) -> Refusal {
        Refusal::Connack(f.reason, Cow::Owned(f.reason_string))
    }
}

impl From<Violation> for Refusal {
    fn from(v: Violation) -> Refusal {
        Refusal::new(v.reason_code(), v.describe())
    }
}

/// The connect phase of one connection, from a decoded CONNECT to CONNACK.
struct Handshake<'a> {
    broker: &'a Arc<Broker>,
    wire: &'a mut Wire,
    endpoint: &'a Endpoint,
    /// CONNECT and every AUTH round trip must be done by then (`mqtt.connect_timeout`).
    deadline: Instant,
}

impl Handshake<'_> {
    /// The five steps, in order.
    async fn accept<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        c: Connect,
        r: &mut R,
        w: &mut W,
    ) -> Result<Client, Refusal> {
        let config = &self.broker.config;
        let id = identify(&c, config)?;
        if self.broker.connection_count() >= config.max_connections as usize {
            return Err(Refusal::new(
                ReasonCode::QUOTA_EXCEEDED,
                "the broker's connection limit is reached",
            ));
        }
        let method = c.properties.authentication_method.as_ref().map(Method::new);
        let grant = self.authenticate(&c, &id, method.as_ref(), r, w).await?;
        check_will(&c, &grant, config)?;
        let terms = Terms::negotiate(&c, config);
        // Session Present does not change its size: the CONNACK is measured before the
        // session is touched, and a client whose Maximum Packet Size cannot hold it is closed
        // without one (MQTT-3.1.2-25).
        let properties = connack_properties(&c, &id, method.as_ref(), &grant, &terms, config);
        let mut connack = Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::SUCCESS,
            properties,
        });
        if !fit_connack(&mut connack, c.version, max_packet_out(&c)) {
            return Err(Refusal::Close(
                "CONNACK exceeds the client's maximum packet size",
            ));
        }
        let (client, durable_at, resumed) = self.attach(c, id, method, grant, terms, connack).await;
        // CONNACK (already encoded, not yet written) leaves once the session's record and the
        // will are durable: a persistent session acknowledged must survive a crash.
        if let (Some(t), Some(j)) = (durable_at, self.broker.journal())
            && let Err(e) = j.wait(t).await
        {
            warn!(client_id = %client.client_id(), error = %e, "session record not stored; served from memory");
        }
        if resumed {
            self.broker.cluster.resumed(client.client_id());
        }
        Ok(client)
    }

    /// Step 2: the mechanism's verdict, after as many AUTH round trips as it asks for.
    async fn authenticate<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        c: &Connect,
        id: &Identified,
        method: Option<&Method>,
        r: &mut R,
        w: &mut W,
    ) -> Result<Grant, Refusal> {
        let request = ConnectRequest {
            client_id: id.client_id.to_string(),
            username: c.username.as_ref().map(|u| u.to_string()),
            password: c.password.clone(),
            method: method.map(|m| m.name().to_string()),
            data: c.properties.authentication_data.clone(),
            peer: self.endpoint.peer,
            transport: self.endpoint.transport,
            listener: self.endpoint.listener,
            version: c.version,
            certificate: self.endpoint.certificate.clone(),
        };
        let step = self.broker.auth.connect(request).await;
        let mut next = exchange::next(method, step).map_err(during_connect)?;
        loop {
            let mut challenge = match next {
                Next::Granted(grant) => return Ok(grant),
                Next::Challenge(challenge) => challenge,
            };
            // A challenge that waits for a person (onboarding) extends the connect deadline.
            if let Some(within) = challenge.answer_within() {
                self.deadline = self.deadline.max(Instant::now() + within);
            }
            let mut auth = challenge.packet();
            if !fit(&mut auth, c.version, max_packet_out(c)) {
                return Err(Refusal::Close(
                    "AUTH challenge exceeds the client's maximum packet size",
                ));
            }
            self.wire.packet(&auth);
            if self.wire.write_all(w, &self.broker.stats).await.is_err() {
                return Err(Refusal::Close("connection lost during authentication"));
            }
            let answer = match self
                .wire
                .read_packet(r, self.deadline, &self.broker.stats)
                .await
            {
                Ok(p) => p,
                Err(ReadError::Decode(e)) => {
                    return Err(Refusal::Connack(e.reason_code(), e.to_string().into()));
                }
                Err(_) => return Err(Refusal::Close("no answer to the authentication challenge")),
            };
            next = match answer {
                Packet::Auth(auth) => challenge.answer(auth).await.map_err(during_connect)?,
                Packet::Disconnect(_) => {
                    return Err(Refusal::Close("client gave up authenticating"));
                }
                _ => return Err(Violation::ExpectedAuthContinue.into()),
            };
        }
    }

    /// Step 5: registers the connection, opens (or takes over) its session, moving it here
    /// from another node of a cluster, and queues CONNACK. Returns the journal ticket CONNACK
    /// must wait for, if any, and whether the session was moved here.
    async fn attach(
        &mut self,
        c: Connect,
        id: Identified,
        method: Option<Method>,
        grant: Grant,
        terms: Terms,
        mut connack: Packet,
    ) -> (Client, Option<u64>, bool) {
        // In a cluster, the session may be on another node: it moves here
        // (`cluster/sessions.rs`).
        let moved = self
            .broker
            .cluster
            .claim(&id.client_id, c.clean_start, terms.expiry)
            .await;
        let resumed = moved.is_some();
        let endpoint = self.endpoint;
        let since = SystemTime::now();
        self.broker
            .cluster
            .connected(&id.client_id, since, c.clean_start);
        self.broker.register_connection(ConnectionInfo {
            conn_id: endpoint.id,
            client_id: id.client_id.clone(),
            identity: grant.identity.clone(),
            credential: grant.credential.clone(),
            peer: endpoint.peer,
            transport: endpoint.transport,
            version: c.version,
            since,
            control: endpoint.control.clone(),
        });
        let link = ConnLink {
            conn_id: endpoint.id,
            control: endpoint.control.clone(),
        };
        let opened = self.broker.open_session(
            &id.client_id,
            c.clean_start,
            terms.expiry,
            link,
            c.will.as_ref(),
            moved,
        );
        let (session, session_present) = (opened.session, opened.present);
        if let Some(old) = opened.taken_from
            && old.conn_id != endpoint.id
        {
            old.control.send(Control::Disconnect {
                reason: ReasonCode::SESSION_TAKEN_OVER,
                reason_string: Some("another connection took over this session".into()),
            });
        }
        if let Packet::ConnAck(a) = &mut connack {
            a.session_present = session_present;
        }
        self.wire.packet(&connack);
        info!(
            client_id = %id.client_id,
            peer = %endpoint.peer,
            transport = endpoint.transport,
            version = c.version.level(),
            identity = grant.identity.as_deref().unwrap_or(""),
            session_present,
            "client connected"
        );
        if grant.expires_at.is_some_and(|t| t <= SystemTime::now()) {
            warn!(client_id = %id.client_id, "credential expires at connect time");
        }
        let client = Client {
            session,
            keep_alive_window: (terms.keep_alive > 0)
                .then(|| Duration::from_millis(terms.keep_alive as u64 * 1500)),
            receive_maximum: c.properties.receive_maximum.unwrap_or(u16::MAX) as usize,
            max_packet_out: max_packet_out(&c),
            topic_alias_max_out: c.properties.topic_alias_maximum.unwrap_or(0),
            aliases: None,
            problem_info: c.properties.request_problem_information.unwrap_or(1) == 1,
            will: c.will.map(Box::new),
            credential_deadline: deadline_from(grant.expires_at),
            rights: grant.kept(),
            auth_method: method,
            challenge: None,
            expiry_zero_at_connect: terms.requested_expiry == 0,
            resend: session_present,
        };
        (client, opened.durable_at, resumed)
    }
}

/// The properties of a successful CONNACK (5.0): what the broker grants and announces.
fn connack_properties(
    c: &Connect,
    id: &Identified,
    method: Option<&Method>,
    grant: &Grant,
    terms: &Terms,
    config: &MqttConfig,
) -> Properties {
    if !c.version.is_v5() {
        return Properties::default();
    }
    Properties {
        session_expiry_interval: (terms.expiry != terms.requested_expiry).then_some(terms.expiry),
        receive_maximum: (config.receive_maximum != u16::MAX).then_some(config.receive_maximum),
        maximum_qos: (config.max_qos < 2).then_some(config.max_qos),
        retain_available: Some(config.retain_available as u8),
        maximum_packet_size: Some(config.max_packet_size),
        assigned_client_identifier: id.assigned.as_deref().map(Into::into),
        topic_alias_maximum: (config.topic_alias_maximum > 0).then_some(config.topic_alias_maximum),
        wildcard_subscription_available: Some(config.wildcard_subscriptions as u8),
        subscription_identifier_available: Some(config.subscription_identifiers as u8),
        shared_subscription_available: Some(config.shared_subscriptions as u8),
        server_keep_alive: terms.server_keep_alive,
        authentication_method: method.map(|m| m.name().clone()),
        authentication_data: grant.data.clone(),
        user_properties: user_properties(grant),
        ..Default::default()
    }
}

/// Fits a CONNACK into the client's Maximum Packet Size (MQTT-3.1.2-25) by shedding optional
/// properties, least needed first: the Reason String and User Properties (`fit`); the
/// availability flags that say 1, which a client reads the same when absent; Topic Alias
/// Maximum (absent: 0, the client sends no aliases); Maximum Packet Size (absent: no limit, and
/// the broker still refuses an oversized packet with 0x95). What stays changes what the client
/// must do (an assigned identifier, the method and its data, expiry, keep-alive, Receive
/// Maximum, Maximum QoS, a feature that is off): without room for it, no CONNACK.
fn fit_connack(connack: &mut Packet, version: Version, max: usize) -> bool {
    let sheds: [fn(&mut Properties); 3] = [
        |p| {
            for flag in [
                &mut p.retain_available,
                &mut p.wildcard_subscription_available,
                &mut p.subscription_identifier_available,
                &mut p.shared_subscription_available,
            ] {
                if *flag == Some(1) {
                    *flag = None;
                }
            }
        },
        |p| p.topic_alias_maximum = None,
        |p| p.maximum_packet_size = None,
    ];
    for shed in sheds {
        if fit(connack, version, max) {
            return true;
        }
        let Packet::ConnAck(a) = connack else {
            return false;
        };
        shed(&mut a.properties);
    }
    fit(connack, version, max)
}

/// A grant's User Properties as the codec carries them.
pub(crate) fn user_properties(
    grant: &Grant,
) -> Vec<(crate::codec::Utf8Bytes, crate::codec::Utf8Bytes)> {
    grant
        .user_properties
        .iter()
        .map(|(k, v)| {
            let s = |x: &String| crate::codec::Utf8Bytes::from_string(x.clone());
            (s(k), s(v))
        })
        .collect()
}

/// The client's Maximum Packet Size (unlimited when it sets none).
fn max_packet_out(c: &Connect) -> usize {
    c.properties
        .maximum_packet_size
        .map_or(usize::MAX, |m| m as usize)
}

/// A failed exchange during CONNECT: the mechanism's refusal as it is; a client that answered a
/// challenge with anything but AUTH 0x18 of the same method broke the exchange.
fn during_connect(refused: Refused) -> Refusal {
    match refused {
        Refused::Failure(f) => f.into(),
        Refused::Violation(_) => Violation::ExpectedAuthContinue.into(),
    }
}

/// The client identifier of step 1.
struct Identified {
    client_id: Arc<str>,
    /// Set when the broker chose the identifier (sent as Assigned Client Identifier).
    assigned: Option<String>,
}

/// Step 1: the client identifier, assigned when the client sent none and may (§3.1.3.1); it
/// and the user name must be names the broker accepts (`limits.rs`).
fn identify(c: &Connect, config: &MqttConfig) -> Result<Identified, Refusal> {
    if limits::refuses_name(&c.client_id, config) {
        return Err(Refusal::new(
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "client identifier contains a control character",
        ));
    }
    if c.username
        .as_ref()
        .is_some_and(|u| limits::refuses_name(u, config))
    {
        return Err(Refusal::new(
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            "user name contains a control character",
        ));
    }
    if !c.client_id.is_empty() {
        return Ok(Identified {
            client_id: c.client_id.as_str().into(),
            assigned: None,
        });
    }
    // 3.1 requires an identifier; 3.1.1 allows none only with a clean session.
    if c.version == Version::V3_1 || (!c.version.is_v5() && !c.clean_start) {
        return Err(Refusal::new(
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "an empty client identifier needs a clean session",
        ));
    }
    let id = assign_client_id();
    Ok(Identified {
        client_id: id.as_str().into(),
        assigned: Some(id),
    })
}

/// A fresh client identifier for a client that sent an empty one.
fn assign_client_id() -> String {
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

/// Step 3: the will must be one the broker can honour and the client may publish (§3.1.2.5).
fn check_will(c: &Connect, grant: &Grant, config: &MqttConfig) -> Result<(), Refusal> {
    let Some(will) = &c.will else {
        return Ok(());
    };
    if will.qos.as_u8() > config.max_qos {
        return Err(Refusal::new(
            ReasonCode::QOS_NOT_SUPPORTED,
            "will QoS exceeds the broker's maximum QoS",
        ));
    }
    if will.retain && !config.retain_available {
        return Err(Refusal::new(
            ReasonCode::RETAIN_NOT_SUPPORTED,
            "retained wills are not available",
        ));
    }
    if let Err(refusal) = limits::check_topic(will.topic.as_bytes(), config) {
        return Err(Refusal::new(
            ReasonCode::TOPIC_NAME_INVALID,
            refusal.describe(),
        ));
    }
    if !grant.may_publish(&will.topic) {
        return Err(Refusal::new(
            ReasonCode::NOT_AUTHORIZED,
            "not authorized to publish to the will topic",
        ));
    }
    Ok(())
}

/// Step 4: what the broker grants of what CONNECT asked.
struct Terms {
    /// The Session Expiry Interval asked for; 3.1.1's clean session maps to 0 or "never".
    requested_expiry: u32,
    /// ... and granted (bounded by `mqtt.max_session_expiry`, §3.1.2.11).
    expiry: u32,
    /// The keep-alive in force, in seconds; 0 = off.
    keep_alive: u16,
    /// Sent when the broker bounds the keep-alive (§3.2.2.3.14).
    server_keep_alive: Option<u16>,
}

impl Terms {
    fn negotiate(c: &Connect, config: &MqttConfig) -> Terms {
        let v5 = c.version.is_v5();
        let requested_expiry = if v5 {
            c.properties.session_expiry_interval.unwrap_or(0)
        } else if c.clean_start {
            0
        } else {
            u32::MAX
        };
        let mut keep_alive = c.keep_alive;
        let mut server_keep_alive = None;
        if config.max_keep_alive > 0 && (keep_alive == 0 || keep_alive > config.max_keep_alive) {
            keep_alive = config.max_keep_alive;
            if v5 {
                server_keep_alive = Some(keep_alive);
            }
        }
        Terms {
            requested_expiry,
            expiry: requested_expiry.min(config.max_session_expiry),
            keep_alive,
            server_keep_alive,
        }
    }
}

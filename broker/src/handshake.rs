//! The connect phase: the first packet must be CONNECT; the client is authenticated (with AUTH
//! packets when the mechanism challenges), checked against the broker's limits, attached to its
//! session (taking it over from another connection if need be), and answered with CONNACK.
//!
//! Every refusal is a CONNACK with the reason code the specification names (3.1.1: the return
//! code it maps to), then the connection closes.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::auth::{AuthStep, ConnectRequest};
use crate::broker::ConnectionInfo;
use crate::codec::{
    self, Auth, ConnAck, Connect, DecodeError, Packet, Properties, ReasonCode, Utf8Bytes, Version,
};
use crate::connection::{
    Active, Connection, ReadError, Reader, Writer, assign_client_id, bytes_opt, deadline_from,
};
use crate::session::{ConnLink, Control};

impl Connection {
    /// Runs the connect phase. `None` means the connection is to be closed (whatever answer
    /// was due is already buffered).
    pub(crate) async fn handshake<S: AsyncRead + AsyncWrite>(
        &mut self,
        r: &mut Reader<S>,
        w: &mut Writer<S>,
    ) -> Option<Active> {
        let deadline =
            Instant::now() + Duration::from_secs(self.broker.config.connect_timeout as u64);
        let first = match self.read_packet(r, deadline).await {
            Ok(p) => p,
            Err(ReadError::Decode(e)) => {
                self.refuse_undecodable(e, self.connect_level);
                return None;
            }
            Err(ReadError::Timeout) => {
                debug!(peer = %self.peer, "no CONNECT within the connect timeout");
                return None;
            }
            Err(ReadError::Closed) => return None,
            Err(ReadError::Io(e)) => {
                debug!(peer = %self.peer, error = %e, "read failed before CONNECT");
                return None;
            }
        };
        let Packet::Connect(connect) = first else {
            debug!(peer = %self.peer, "first packet is not CONNECT; closing (MQTT-3.1.0-1)");
            return None;
        };
        self.version = connect.version;
        match self.accept(*connect, r, w, deadline).await {
            Ok(active) => Some(active),
            Err(Refusal { reason, why }) => {
                info!(peer = %self.peer, reason = ?reason, why = %why, "connection refused");
                if let Some(reason) = reason {
                    let props = Properties {
                        reason_string: self.version.is_v5().then(|| Utf8Bytes::from(why.as_str())),
                        ..Default::default()
                    };
                    self.out.packet(
                        &Packet::ConnAck(ConnAck {
                            session_present: false,
                            reason_code: reason,
                            properties: props,
                        }),
                        self.version,
                    );
                }
                None
            }
        }
    }

    /// Answers a first packet that could not be decoded.
    fn refuse_undecodable(&mut self, e: DecodeError, level: Option<u8>) {
        debug!(peer = %self.peer, error = %e, "bad first packet");
        let version = match level {
            Some(5) => Version::V5,
            Some(3) => Version::V3_1,
            Some(4) => Version::V3_1_1,
            // An unknown level: answer in the 3.1.1 form, which every client reads (§3.1.2.2).
            _ if matches!(e, DecodeError::UnsupportedProtocol { .. }) => Version::V3_1_1,
            _ => return,
        };
        if version != Version::V5 && !matches!(e, DecodeError::UnsupportedProtocol { .. }) {
            // 3.1.1 has no return code for a malformed CONNECT: just close.
            return;
        }
        self.out.packet(
            &Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: e.reason_code(),
                properties: Properties::default(),
            }),
            version,
        );
    }

    async fn accept<S: AsyncRead + AsyncWrite>(
        &mut self,
        c: Connect,
        r: &mut Reader<S>,
        w: &mut Writer<S>,
        deadline: Instant,
    ) -> Result<Active, Refusal> {
        let cfg = self.broker.config.clone();
        let v5 = c.version.is_v5();

        // Client identifier (§3.1.3.1).
        let mut assigned = None;
        let client_id: Arc<str> = if c.client_id.is_empty() {
            // 3.1 requires an identifier; 3.1.1 allows none only with a clean session.
            if c.version == Version::V3_1 || (!v5 && !c.clean_start) {
                return Err(Refusal::new(
                    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    "an empty client identifier needs a clean session",
                ));
            }
            let id = assign_client_id();
            assigned = Some(id.clone());
            id.into()
        } else {
            c.client_id.as_str().into()
        };

        if self.broker.connection_count() >= cfg.max_connections as usize {
            return Err(Refusal::new(
                ReasonCode::QUOTA_EXCEEDED,
                "the broker's connection limit is reached",
            ));
        }

        // Authentication, with as many AUTH round trips as the mechanism asks for.
        let method = bytes_opt(&c.properties.authentication_method);
        let request = ConnectRequest {
            client_id: client_id.to_string(),
            username: bytes_opt(&c.username),
            password: c.password.clone(),
            method: method.clone(),
            data: c.properties.authentication_data.clone(),
            peer: self.peer,
            transport: self.transport,
            version: c.version,
        };
        let mut step = self.broker.auth.connect(request).await;
        let grant = loop {
            match step {
                AuthStep::Success(grant) => break grant,
                AuthStep::Failure(f) => return Err(Refusal::new(f.reason, f.reason_string)),
                AuthStep::Continue { data, exchange } => {
                    let Some(m) = method.clone() else {
                        return Err(Refusal::new(
                            ReasonCode::BAD_AUTHENTICATION_METHOD,
                            "the mechanism asked for a challenge without a method",
                        ));
                    };
                    self.out.packet(
                        &Packet::Auth(Auth {
                            reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                            properties: Properties {
                                authentication_method: Some(Utf8Bytes::from(m.as_str())),
                                authentication_data: data,
                                ..Default::default()
                            },
                        }),
                        self.version,
                    );
                    if self.write_all(w).await.is_err() {
                        return Err(Refusal::silent("connection lost during authentication"));
                    }
                    let answer = match self.read_packet(r, deadline).await {
                        Ok(p) => p,
                        Err(ReadError::Decode(e)) => {
                            return Err(Refusal::new(e.reason_code(), e.to_string()));
                        }
                        Err(_) => {
                            return Err(Refusal::silent(
                                "no answer to the authentication challenge",
                            ));
                        }
                    };
                    match answer {
                        Packet::Auth(a)
                            if a.reason_code == ReasonCode::CONTINUE_AUTHENTICATION
                                && a.properties.authentication_method.as_deref()
                                    == Some(m.as_str()) =>
                        {
                            step = exchange.step(a.properties.authentication_data).await;
                        }
                        Packet::Disconnect(_) => {
                            return Err(Refusal::silent("client gave up authenticating"));
                        }
                        _ => {
                            return Err(Refusal::new(
                                ReasonCode::PROTOCOL_ERROR,
                                "expected AUTH 0x18 with the same authentication method",
                            ));
                        }
                    }
                }
            }
        };

        // The will must be one the broker can honour and the client may publish (§3.1.2.5).
        if let Some(will) = &c.will {
            if will.qos.as_u8() > cfg.max_qos {
                return Err(Refusal::new(
                    ReasonCode::QOS_NOT_SUPPORTED,
                    "will QoS exceeds the broker's maximum QoS",
                ));
            }
            if will.retain && !cfg.retain_available {
                return Err(Refusal::new(
                    ReasonCode::RETAIN_NOT_SUPPORTED,
                    "retained wills are not available",
                ));
            }
            if !client_may_publish(&*grant.acl, &will.topic) {
                return Err(Refusal::new(
                    ReasonCode::NOT_AUTHORIZED,
                    "not authorized to publish to the will topic",
                ));
            }
        }

        // Session expiry (§3.1.2.11); 3.1.1's clean session maps to 0 or "never".
        let requested_expiry = if v5 {
            c.properties.session_expiry_interval.unwrap_or(0)
        } else if c.clean_start {
            0
        } else {
            u32::MAX
        };
        let expiry = requested_expiry.min(cfg.max_session_expiry);

        // Keep-alive, bounded by the broker's maximum (§3.2.2.3.14).
        let mut server_keep_alive = None;
        let mut keep_alive = c.keep_alive;
        if cfg.max_keep_alive > 0 && (keep_alive == 0 || keep_alive > cfg.max_keep_alive) {
            keep_alive = cfg.max_keep_alive;
            if v5 {
                server_keep_alive = Some(keep_alive);
            }
        }

        let link = ConnLink {
            conn_id: self.id,
            control: self.control.clone(),
        };
        self.broker.register_connection(ConnectionInfo {
            conn_id: self.id,
            client_id: client_id.clone(),
            identity: grant.identity.clone(),
            credential: grant.credential.clone(),
            control: self.control.clone(),
        });
        let (session, session_present, old) =
            self.broker
                .open_session(&client_id, c.clean_start, expiry, link);
        if let Some(old) = old
            && old.conn_id != self.id
        {
            old.control.send(Control::Disconnect {
                reason: ReasonCode::SESSION_TAKEN_OVER,
                reason_string: Some("another connection took over this session".into()),
            });
        }

        let props = if v5 {
            Properties {
                session_expiry_interval: (expiry != requested_expiry).then_some(expiry),
                receive_maximum: (cfg.receive_maximum != u16::MAX).then_some(cfg.receive_maximum),
                maximum_qos: (cfg.max_qos < 2).then_some(cfg.max_qos),
                retain_available: Some(cfg.retain_available as u8),
                maximum_packet_size: Some(cfg.max_packet_size),
                assigned_client_identifier: assigned.map(Utf8Bytes::from),
                topic_alias_maximum: (cfg.topic_alias_maximum > 0)
                    .then_some(cfg.topic_alias_maximum),
                wildcard_subscription_available: Some(cfg.wildcard_subscriptions as u8),
                subscription_identifier_available: Some(cfg.subscription_identifiers as u8),
                shared_subscription_available: Some(cfg.shared_subscriptions as u8),
                server_keep_alive,
                authentication_method: method.as_deref().map(Utf8Bytes::from),
                authentication_data: grant.data.clone(),
                ..Default::default()
            }
        } else {
            Properties::default()
        };
        self.out.packet(
            &Packet::ConnAck(ConnAck {
                session_present,
                reason_code: ReasonCode::SUCCESS,
                properties: props,
            }),
            self.version,
        );
        info!(
            client_id = %client_id,
            peer = %self.peer,
            transport = self.transport,
            version = c.version.level(),
            identity = grant.identity.as_deref().unwrap_or(""),
            session_present,
            "client connected"
        );
        if grant
            .expires_at
            .is_some_and(|t| t <= std::time::SystemTime::now())
        {
            warn!(client_id = %client_id, "credential expires at connect time");
        }
        let credential_deadline = deadline_from(grant.expires_at);
        Ok(Active {
            session,
            client_id,
            keep_alive_window: (keep_alive > 0)
                .then(|| Duration::from_millis(keep_alive as u64 * 1500)),
            receive_maximum: c.properties.receive_maximum.unwrap_or(u16::MAX) as usize,
            max_packet_out: c
                .properties
                .maximum_packet_size
                .map_or(usize::MAX, |m| m as usize),
            topic_alias_max_out: c.properties.topic_alias_maximum.unwrap_or(0),
            aliases: None,
            problem_info: c.properties.request_problem_information.unwrap_or(1) == 1,
            will: c.will.map(Box::new),
            grant,
            credential_deadline,
            auth_method: method,
            reauth: None,
            expiry_zero_at_connect: requested_expiry == 0,
            resend: session_present,
        })
    }
}

/// Whether a client may publish to `topic`: never to `$SYS`, and only where its ACL allows.
pub(crate) fn client_may_publish(acl: &dyn crate::auth::TopicAcl, topic: &str) -> bool {
    !topic.starts_with("$SYS") && acl.can_publish(topic)
}

/// Why a CONNECT is refused. `reason` None: close without CONNACK.
struct Refusal {
    reason: Option<ReasonCode>,
    why: String,
}

impl Refusal {
    fn new(reason: ReasonCode, why: impl Into<String>) -> Refusal {
        Refusal {
            reason: Some(reason),
            why: why.into(),
        }
    }
    fn silent(why: &str) -> Refusal {
        Refusal {
            reason: None,
            why: why.to_string(),
        }
    }
}

/// The protocol level of a CONNECT at the front of `buf`, read without decoding the packet,
/// so a malformed CONNECT can still be answered in the client's version.
pub(crate) fn sniff_connect_level(buf: &[u8]) -> Option<u8> {
    let header = codec::peek_fixed_header(buf).ok()??;
    if header.first != 0x10 {
        return None;
    }
    let body = buf.get(header.header_len..)?;
    let name_len = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    body.get(2 + name_len).copied()
}

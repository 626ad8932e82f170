//! The authentication seam: how the broker asks a mechanism whether a client may connect, runs
//! an MQTT 5 enhanced-authentication exchange (AUTH packets) with it, and learns the client's
//! topic rights.
//!
//! The broker knows nothing of users, passwords or tokens. On CONNECT it hands the mechanism a
//! [`ConnectRequest`]; the mechanism answers with an [`AuthStep`]: success (a [`Grant`]), failure
//! (a reason code and a Reason String), or a challenge to send in AUTH 0x18 together with the
//! [`AuthExchange`] that will read the client's answer. Re-authentication (client AUTH 0x19)
//! goes through [`Authenticator::reauthenticate`] and ends the same way. A mechanism can also end
//! live sessions later through [`crate::BrokerHandle::disconnect_where`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::codec::{ReasonCode, Utf8Bytes, Version};
use crate::tls::ClientCertificate;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a CONNECT (or a re-authentication) presents.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    pub client_id: String,
    pub username: Option<String>,
    /// Never logged.
    pub password: Option<Bytes>,
    /// Authentication Method property (MQTT 5 only).
    pub method: Option<String>,
    /// Authentication Data property. Never logged.
    pub data: Option<Bytes>,
    pub peer: SocketAddr,
    /// Listener kind: "tcp", "tls", "ws" or "wss".
    pub transport: &'static str,
    /// The address the listener is bound to (a loopback one: only this machine can reach it).
    pub listener: SocketAddr,
    pub version: Version,
    /// The client certificate the TLS handshake verified, if any.
    pub certificate: Option<Arc<ClientCertificate>>,
}

/// A client AUTH 0x19 on an established connection.
#[derive(Debug, Clone)]
pub struct ReauthRequest {
    pub client_id: String,
    /// The identity granted at CONNECT (or by the last re-authentication).
    pub identity: Option<String>,
    pub method: String,
    pub data: Option<Bytes>,
    pub peer: SocketAddr,
    /// Listener kind and bound address, as in [`ConnectRequest`].
    pub transport: &'static str,
    pub listener: SocketAddr,
    /// The connection's client certificate (a token bound to one must match it).
    pub certificate: Option<Arc<ClientCertificate>>,
}

/// The next move in an authentication.
pub enum AuthStep {
    /// The client is in. Its rights and, if any, its deadline are in the grant.
    Success(Grant),
    /// Send AUTH 0x18 with `data`, then hand the client's next AUTH 0x18 data to `exchange`.
    Continue {
        data: Option<Bytes>,
        exchange: Box<dyn AuthExchange>,
    },
    /// The client is refused: CONNACK (or, for re-authentication, DISCONNECT) with this code.
    Failure(AuthFailure),
}

/// A refusal. `reason_string` goes to the client and the log: it must never hold a secret.
#[derive(Debug, Clone)]
pub struct AuthFailure {
    pub reason: ReasonCode,
    pub reason_string: String,
}

impl AuthFailure {
    pub fn new(reason: ReasonCode, reason_string: impl Into<String>) -> AuthFailure {
        AuthFailure {
            reason,
            reason_string: reason_string.into(),
        }
    }
}

/// What a successful authentication grants.
#[derive(Clone)]
pub struct Grant {
    /// The user the session acts as (`%u` in ACLs, logs, `disconnect_where`). Shared with
    /// the connection registry's record, as is `credential`: one copy per connection.
    pub identity: Option<Arc<str>>,
    /// Authentication Data for the CONNACK or AUTH 0x00 that ends the exchange.
    pub data: Option<Bytes>,
    /// User Properties for that CONNACK or AUTH 0x00 (MQTT 5 clients).
    pub user_properties: Vec<(String, String)>,
    /// When the credential stops being valid: unless the client re-authenticates first, the
    /// broker then sends DISCONNECT 0xA0 (Maximum connect time).
    pub expires_at: Option<SystemTime>,
    /// An opaque label of the credential used (a token id, never the token), so the mechanism
    /// can later end the sessions that use it.
    pub credential: Option<Arc<str>>,
    /// The client's topic rights for this session.
    pub acl: Arc<dyn TopicAcl>,
}

/// What a connection keeps of its grant once the CONNACK or AUTH 0x00 that carries the
/// Authentication Data and User Properties is built: those are sent once, and the expiry
/// becomes the connection's deadline. Who, with what credential, and the rights: 48 bytes of
/// every idle connection, where the whole grant would be 120 (and, kept whole, a token
/// login's three allocations).
pub struct Rights {
    pub identity: Option<Arc<str>>,
    pub credential: Option<Arc<str>>,
    pub acl: Arc<dyn TopicAcl>,
}

impl Rights {
    /// Whether the client may publish to `topic` (a PUBLISH or its will): never to `$SYS`,
    /// which only the broker writes, and only where its ACL allows.
    pub fn may_publish(&self, topic: &Utf8Bytes) -> bool {
        may_publish(&*self.acl, topic)
    }
}

fn may_publish(acl: &dyn TopicAcl, topic: &Utf8Bytes) -> bool {
    !topic.as_bytes().starts_with(b"$SYS") && acl.can_publish(topic)
}

impl Grant {
    /// As [`Rights::may_publish`], before the connection keeps its rights (a CONNECT's will).
    pub fn may_publish(&self, topic: &Utf8Bytes) -> bool {
        may_publish(&*self.acl, topic)
    }

    /// What a connection keeps of the grant (see [`Rights`]).
    pub fn kept(self) -> Rights {
        Rights {
            identity: self.identity,
            credential: self.credential,
            acl: self.acl,
        }
    }

    /// Everything allowed, no deadline.
    pub fn allow_all(identity: Option<String>) -> Grant {
        Grant {
            identity: identity.map(Arc::from),
            data: None,
            user_properties: Vec::new(),
            expires_at: None,
            credential: None,
            acl: AllowAll::shared(),
        }
    }
}

/// Topic rights of one session.
pub trait TopicAcl: Send + Sync {
    /// `topic` as the client sent it: an ACL without publish rules need not look at it (the
    /// `&str` view checks the bytes again, which the publish path avoids when it can).
    fn can_publish(&self, topic: &Utf8Bytes) -> bool;
    fn can_subscribe(&self, filter: &str) -> bool;
    /// Whether [`TopicAcl::can_receive`] can ever refuse; when not, deliveries skip it.
    fn judges_deliveries(&self) -> bool {
        false
    }
    /// Whether a message on `topic` may be delivered: a subscription can be granted with a
    /// rule refusing part of what it matches (`#` but not `secret/#`).
    fn can_receive(&self, _topic: &Utf8Bytes) -> bool {
        true
    }
}

/// No restriction.
pub struct AllowAll;

impl AllowAll {
    /// The one instance every unrestricted session shares: a connection under no rules and
    /// no scope filters (the default) holds no ACL of its own, only a reference count.
    pub fn shared() -> Arc<dyn TopicAcl> {
        static SHARED: LazyLock<Arc<dyn TopicAcl>> = LazyLock::new(|| Arc::new(AllowAll));
        SHARED.clone()
    }
}

impl TopicAcl for AllowAll {
    fn can_publish(&self, _topic: &Utf8Bytes) -> bool {
        true
    }
    fn can_subscribe(&self, _filter: &str) -> bool {
        true
    }
}

/// One pending challenge of a multi-step exchange.
pub trait AuthExchange: Send {
    /// The client's AUTH 0x18 carried `data`; decide the next step.
    fn step(self: Box<Self>, data: Option<Bytes>) -> BoxFuture<'static, AuthStep>;

    /// How long the client may take to answer this challenge during CONNECT, if longer than
    /// `mqtt.connect_timeout` (an exchange that waits for a person: device onboarding). The
    /// connection has no keep-alive before CONNACK: this is its bound.
    fn answer_within(&self) -> Option<Duration> {
        None
    }
}

/// An authentication mechanism (or a set of them) the broker consults.
pub trait Authenticator: Send + Sync + 'static {
    /// A CONNECT arrived.
    fn connect(&self, request: ConnectRequest) -> BoxFuture<'_, AuthStep>;

    /// A client AUTH 0x19 arrived on an authenticated connection.
    fn reauthenticate(&self, request: ReauthRequest) -> BoxFuture<'_, AuthStep> {
        let _ = request;
        Box::pin(async {
            AuthStep::Failure(AuthFailure::new(
                ReasonCode::BAD_AUTHENTICATION_METHOD,
                "re-authentication is not supported",
            ))
        })
    }
}

/// The embedded default before a token service is configured: anonymous clients are accepted
/// when allowed; any authentication method is unknown (CONNACK 0x8C).
pub struct AnonymousOnly {
    pub allow_anonymous: bool,
}

impl Authenticator for AnonymousOnly {
    fn connect(&self, request: ConnectRequest) -> BoxFuture<'_, AuthStep> {
        let step = if let Some(method) = request.method {
            AuthStep::Failure(AuthFailure::new(
                ReasonCode::BAD_AUTHENTICATION_METHOD,
                format!("authentication method {method:?} is not supported"),
            ))
        } else if request.password.is_some() {
            AuthStep::Failure(AuthFailure::new(
                ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                "password logins are not configured",
            ))
        } else if self.allow_anonymous {
            AuthStep::Success(Grant::allow_all(request.username))
        } else {
            AuthStep::Failure(AuthFailure::new(
                ReasonCode::NOT_AUTHORIZED,
                "anonymous clients are not allowed",
            ))
        };
        Box::pin(async move { step })
    }
}

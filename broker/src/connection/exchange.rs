//! Enhanced authentication (MQTT 5.0 §4.12) as one exchange for both places it happens: during
//! CONNECT, and as re-authentication (client AUTH 0x19) after CONNACK. The mechanism answers each
//! step with an [`AuthStep`]; [`next`] turns that into where the exchange stands, and a
//! [`Challenge`] reads the client's answer. The AUTH packets the broker sends are built here
//! and nowhere else.

use bytes::Bytes;

use super::violation::Violation;
use crate::auth::{AuthExchange, AuthFailure, AuthStep, Grant};
use crate::codec::{Auth, Packet, Properties, ReasonCode, Utf8Bytes};

/// The connection's Authentication Method, fixed by its CONNECT. Every AUTH packet of the
/// connection, and the CONNACK that ends a successful exchange, carries it (MQTT-4.12.0-5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Method(Utf8Bytes);

impl Method {
    /// Kept for the connection's life: its own copy, not a slice of the CONNECT's buffer.
    pub(crate) fn new(name: &Utf8Bytes) -> Method {
        Method(name.detached())
    }

    pub(crate) fn name(&self) -> &Utf8Bytes {
        &self.0
    }

    /// An AUTH packet of this method: 0x18 carries a challenge, 0x00 ends a re-authentication.
    pub(crate) fn auth_packet(&self, reason_code: ReasonCode, data: Option<Bytes>) -> Packet {
        Packet::Auth(Auth {
            reason_code,
            properties: Properties {
                authentication_method: Some(self.0.clone()),
                authentication_data: data,
                ..Default::default()
            },
        })
    }

    /// A client AUTH must name the connection's method.
    pub(crate) fn check(&self, auth: &Auth) -> Result<(), Violation> {
        if auth.properties.authentication_method.as_ref() == Some(&self.0) {
            Ok(())
        } else {
            Err(Violation::AuthMethodChanged)
        }
    }
}

/// Where an exchange stands after the mechanism's answer.
pub(crate) enum Next {
    /// The client is authenticated. The exchange ends with CONNACK (at CONNECT) or AUTH 0x00
    /// (re-authentication), carrying the grant's Authentication Data.
    Granted(Grant),
    /// The broker sends [`Challenge::packet`] and waits for the client's AUTH 0x18.
    Challenge(Challenge),
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The mechanism refused the client.
    Failure(AuthFailure),
    /// The client broke the exchange's rules.
    Violation(Violation),
}

/// A challenge sent (or about to be sent), with the mechanism state that reads the answer.
pub(crate) struct Challenge {
    method: Method,
    data: Option<Bytes>,
    pending: Box<dyn AuthExchange>,
}

/// Reads the mechanism's answer to the last step. A mechanism can challenge only a client that
/// named a method.
pub(crate) fn next(method: Option<&Method>, step: AuthStep) -> Result<Next, Refused> {
    match step {
        AuthStep::Success(grant) => Ok(Next::Granted(grant)),
        AuthStep::Failure(f) => Err(Refused::Failure(f)),
        AuthStep::Continue { data, exchange } => match method {
            Some(m) => Ok(Next::Challenge(Challenge {
                method: m.clone(),
                data,
                pending: exchange,
            })),
            None => Err(Refused::Failure(AuthFailure::new(
                ReasonCode::BAD_AUTHENTICATION_METHOD,
                "the mechanism asked for a challenge without a method",
            ))),
        },
    }
}

impl Challenge {
    /// How long the client may take to answer, if the mechanism says more than the default.
    pub(crate) fn answer_within(&self) -> Option<std::time::Duration> {
        self.pending.answer_within()
    }

    /// The AUTH 0x18 to send (its data is sent once).
    pub(crate) fn packet(&mut self) -> Packet {
        self.method
            .auth_packet(ReasonCode::CONTINUE_AUTHENTICATION, self.data.take())
    }

    /// The client's answer: AUTH 0x18 with the same method, whose data goes to the mechanism.
    pub(crate) async fn answer(self, auth: Auth) -> Result<Next, Refused> {
        if auth.reason_code != ReasonCode::CONTINUE_AUTHENTICATION {
            return Err(Refused::Violation(Violation::AuthOutOfSequence));
        }
        self.method.check(&auth).map_err(Refused::Violation)?;
        let step = self.pending.step(auth.properties.authentication_data).await;
        next(Some(&self.method), step)
    }
}

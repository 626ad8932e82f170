//! The rules a client can break in a packet that decoded well, each with the reason code the
//! specification names for it, mapped here once. (Packets that do not decode are the codec's
//! `DecodeError`, which maps itself.)

use crate::codec::ReasonCode;

/// A well-formed packet that breaks a rule of the protocol or of the broker's advertised
/// limits. The connection ends with DISCONNECT carrying [`Violation::reason_code`] (after
/// CONNACK) or CONNACK with it (during CONNECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    /// MQTT-3.3.4-6: only the server sends Subscription Identifiers.
    SubscriptionIdFromClient,
    /// A Topic Alias of 0 or above the Topic Alias Maximum the broker announced (§3.3.2.3.4).
    TopicAliasOutOfRange,
    /// An empty topic with an alias the client never set.
    UnknownTopicAlias,
    /// An empty topic and no Topic Alias.
    EmptyTopicWithoutAlias,
    /// A PUBLISH above the Maximum QoS the broker announced (MQTT-3.2.2-11).
    QosNotSupported,
    /// A retained PUBLISH when Retain Available is 0 (MQTT-3.2.2-14).
    RetainNotSupported,
    /// More unacknowledged QoS 2 PUBLISH packets than the broker's Receive Maximum
    /// (MQTT-3.3.4-7).
    ReceiveMaximumExceeded,
    /// DISCONNECT sets a Session Expiry Interval after CONNECT set 0 (MQTT-3.14.2-2).
    ExpiryRaisedFromZero,
    /// A second CONNECT (MQTT-3.1.0-2).
    SecondConnect,
    /// CONNACK, SUBACK, UNSUBACK or PINGRESP sent by the client.
    ServerPacketFromClient,
    /// A Subscription Identifier when the broker announced none are available (§3.2.2.3.12).
    SubscriptionIdsNotSupported,
    /// No Local on a shared subscription (MQTT-3.8.3-4).
    NoLocalOnShared,
    /// AUTH on a connection whose CONNECT had no Authentication Method (§3.15).
    AuthWithoutMethod,
    /// AUTH with another Authentication Method than CONNECT's (MQTT-4.12.0-5).
    AuthMethodChanged,
    /// AUTH 0x18 with no challenge pending, or 0x19 while one is.
    AuthOutOfSequence,
    /// During CONNECT, the answer to a challenge was not AUTH 0x18 with the same method.
    ExpectedAuthContinue,
}

impl Violation {
    pub(crate) fn reason_code(self) -> ReasonCode {
        use Violation::*;
        match self {
            TopicAliasOutOfRange => ReasonCode::TOPIC_ALIAS_INVALID,
            QosNotSupported => ReasonCode::QOS_NOT_SUPPORTED,
            RetainNotSupported => ReasonCode::RETAIN_NOT_SUPPORTED,
            ReceiveMaximumExceeded => ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
            SubscriptionIdsNotSupported => ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
            SubscriptionIdFromClient
            | UnknownTopicAlias
            | EmptyTopicWithoutAlias
            | ExpiryRaisedFromZero
            | SecondConnect
            | ServerPacketFromClient
            | NoLocalOnShared
            | AuthWithoutMethod
            | AuthMethodChanged
            | AuthOutOfSequence
            | ExpectedAuthContinue => ReasonCode::PROTOCOL_ERROR,
        }
    }

    /// The Reason String sent with it, and the log line's `why`.
    pub(crate) fn describe(self) -> &'static str {
        use Violation::*;
        match self {
            SubscriptionIdFromClient => "subscription identifier in a client PUBLISH",
            TopicAliasOutOfRange => "topic alias out of range",
            UnknownTopicAlias => "unknown topic alias",
            EmptyTopicWithoutAlias => "empty topic name without a topic alias",
            QosNotSupported => "QoS above the broker's maximum",
            RetainNotSupported => "retained messages are not available",
            ReceiveMaximumExceeded => "more unacknowledged QoS 2 publishes than Receive Maximum",
            ExpiryRaisedFromZero => "session expiry cannot be raised from 0 at DISCONNECT",
            SecondConnect => "second CONNECT on a connection",
            ServerPacketFromClient => "a server-to-client packet sent by the client",
            SubscriptionIdsNotSupported => "subscription identifiers are not available",
            NoLocalOnShared => "No Local on a shared subscription",
            AuthWithoutMethod => "AUTH without enhanced authentication at CONNECT",
            AuthMethodChanged => "AUTH with a different authentication method",
            AuthOutOfSequence => "AUTH reason code out of sequence",
            ExpectedAuthContinue => "expected AUTH 0x18 with the same authentication method",
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

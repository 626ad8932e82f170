//! Decoding: bytes from the network into packets, strictly.
//!
//! `decode` takes one complete packet off the front of a read buffer, or returns `Ok(None)` when
//! the buffer does not hold one yet. The size limit is checked as soon as the fixed header is
//! readable, so an oversized packet is refused before its body is buffered.

use bytes::{Buf, Bytes, BytesMut};

use super::properties::{Context, Properties};
use super::strings::Utf8Bytes;
use super::topic::valid_topic_name;
use super::{
    Auth, ConnAck, Connect, DecodeError, Disconnect, Packet, PubResp, Publish, QoS, ReasonCode,
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Version, Will,
};

/// The fixed header (§2.1.1) of the packet at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// Packet type (high nibble) and flags (low nibble).
    pub first: u8,
    /// Bytes taken by the fixed header itself: 2 to 5.
    pub header_len: usize,
    /// The Remaining Length: bytes after the fixed header.
    pub remaining: usize,
}

impl FixedHeader {
    pub fn total(&self) -> usize {
        self.header_len + self.remaining
    }
}

/// Reads the fixed header at the front of `buf`; `Ok(None)` if it is not complete yet.
pub fn peek_fixed_header(buf: &[u8]) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut remaining: usize = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= ((b & 0x7F) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some(FixedHeader {
                first,
                header_len: 2 + i,
                remaining,
            }));
        }
    }
    Err(DecodeError::Malformed(
        "remaining length longer than 4 bytes",
    ))
}

/// Takes one packet off the front of `buf`.
///
/// `version` is the connection's protocol level (used for every packet but CONNECT, which
/// carries its own); `max_size` bounds the whole packet, fixed header included.
pub fn decode(
    buf: &mut BytesMut,
    version: Version,
    max_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = peek_fixed_header(buf)? else {
        return Ok(None);
    };
    let total = header.total();
    if total > max_size {
        return Err(DecodeError::TooLarge {
            size: total,
            max: max_size,
        });
    }
    if buf.len() < total {
        return Ok(None);
    }
    let mut packet = buf.split_to(total).freeze();
    packet.advance(header.header_len);
    decode_body(header.first, packet, version).map(Some)
}

fn decode_body(first: u8, mut b: Bytes, version: Version) -> Result<Packet, DecodeError> {
    let flags = first & 0x0F;
    let v5 = version.is_v5();
    let expect_flags = |want: u8| {
        if flags == want {
            Ok(())
        } else {
            Err(DecodeError::Malformed("reserved fixed header flags"))
        }
    };
    let packet = match first >> 4 {
        1 => {
            expect_flags(0)?;
            Packet::Connect(Box::new(decode_connect(&mut b)?))
        }
        2 => {
            expect_flags(0)?;
            let ack_flags = read_u8(&mut b)?;
            if ack_flags & 0xFE != 0 {
                return Err(DecodeError::Malformed("reserved CONNACK flags"));
            }
            let code = read_u8(&mut b)?;
            let reason_code = if v5 {
                connack_defines(code)
                    .then_some(ReasonCode(code))
                    .ok_or(DecodeError::Protocol("reason code not defined for CONNACK"))?
            } else {
                v3_connack_reason(code)?
            };
            let properties = if v5 {
                Properties::decode(&mut b, Context::ConnAck)?
            } else {
                Properties::default()
            };
            Packet::ConnAck(ConnAck {
                session_present: ack_flags & 1 == 1,
                reason_code,
                properties,
            })
        }
        3 => Packet::Publish(decode_publish(flags, &mut b, version)?),
        4 => {
            expect_flags(0)?;
            Packet::PubAck(decode_pub_resp(&mut b, v5, PubRespKind::AckOrRec)?)
        }
        5 => {
            expect_flags(0)?;
            Packet::PubRec(decode_pub_resp(&mut b, v5, PubRespKind::AckOrRec)?)
        }
        6 => {
            expect_flags(0b0010)?;
            Packet::PubRel(decode_pub_resp(&mut b, v5, PubRespKind::RelOrComp)?)
        }
        7 => {
            expect_flags(0)?;
            Packet::PubComp(decode_pub_resp(&mut b, v5, PubRespKind::RelOrComp)?)
        }
        8 => {
            expect_flags(0b0010)?;
            Packet::Subscribe(decode_subscribe(&mut b, v5)?)
        }
        9 => {
            expect_flags(0)?;
            let packet_id = read_packet_id(&mut b)?;
            let properties = if v5 {
                Properties::decode(&mut b, Context::SubAck)?
            } else {
                Properties::default()
            };
            let defined = if v5 {
                suback_defines
            } else {
                v3_suback_defines
            };
            if !b.iter().all(|&c| defined(c)) {
                return Err(DecodeError::Protocol("reason code not defined for SUBACK"));
            }
            let reason_codes = b.iter().map(|&c| ReasonCode(c)).collect();
            b.advance(b.len());
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reason_codes,
            })
        }
        10 => {
            expect_flags(0b0010)?;
            let packet_id = read_packet_id(&mut b)?;
            let properties = if v5 {
                Properties::decode(&mut b, Context::Unsubscribe)?
            } else {
                Properties::default()
            };
            let mut filters = Vec::new();
            while b.has_remaining() {
                filters.push(read_filter(&mut b)?);
            }
            if filters.is_empty() {
                return Err(DecodeError::Protocol("UNSUBSCRIBE with no topic filter"));
            }
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        }
        11 => {
            expect_flags(0)?;
            let packet_id = read_packet_id(&mut b)?;
            let (properties, reason_codes) = if v5 {
                let p = Properties::decode(&mut b, Context::UnsubAck)?;
                if !b.iter().all(|&c| unsuback_defines(c)) {
                    return Err(DecodeError::Protocol(
                        "reason code not defined for UNSUBACK",
                    ));
                }
                let codes = b.iter().map(|&c| ReasonCode(c)).collect();
                b.advance(b.len());
                (p, codes)
            } else {
                (Properties::default(), Vec::new())
            };
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reason_codes,
            })
        }
        12 => {
            expect_flags(0)?;
            Packet::PingReq
        }
        13 => {
            expect_flags(0)?;
            Packet::PingResp
        }
        14 => {
            expect_flags(0)?;
            let (reason_code, properties) =
                decode_reason_and_props(&mut b, v5, Context::Disconnect)?;
            if !disconnect_defines(reason_code.0) {
                return Err(DecodeError::Protocol(
                    "reason code not defined for DISCONNECT",
                ));
            }
            Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            })
        }
        15 if v5 => {
            expect_flags(0)?;
            let (reason_code, properties) = decode_reason_and_props(&mut b, v5, Context::Auth)?;
            if !matches!(reason_code.0, 0x00 | 0x18 | 0x19) {
                return Err(DecodeError::Protocol("AUTH with an invalid reason code"));
            }
            Packet::Auth(Auth {
                reason_code,
                properties,
            })
        }
        _ => return Err(DecodeError::Malformed("reserved packet type")),
    };
    if b.has_remaining() {
        return Err(DecodeError::Malformed(
            "bytes left after the packet's fields",
        ));
    }
    Ok(packet)
}

/// DISCONNECT and AUTH: the reason code and properties may each be omitted (§3.14.2.1, §3.15.2.1).
fn decode_reason_and_props(
    b: &mut Bytes,
    v5: bool,
    ctx: Context,
) -> Result<(ReasonCode, Properties), DecodeError> {
    if !v5 || !b.has_remaining() {
        return Ok((ReasonCode::SUCCESS, Properties::default()));
    }
    let code = ReasonCode(read_u8(b)?);
    let props = if b.has_remaining() {
        Properties::decode(b, ctx)?
    } else {
        Properties::default()
    };
    Ok((code, props))
}

fn decode_connect(b: &mut Bytes) -> Result<Connect, DecodeError> {
    let name = read_utf8(b)?;
    let level = read_u8(b)?;
    let version = match (name.as_str(), level) {
        ("MQTT", 4) => Version::V3_1_1,
        ("MQTT", 5) => Version::V5,
        ("MQIsdp", 3) => Version::V3_1,
        _ => return Err(DecodeError::UnsupportedProtocol { level }),
    };
    let flags = read_u8(b)?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("reserved CONNECT flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("will QoS 3"))?;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(DecodeError::Malformed(
            "will QoS or retain set without a will",
        ));
    }
    if version != Version::V5 && password_flag && !username_flag {
        return Err(DecodeError::Malformed("password without user name"));
    }
    let keep_alive = read_u16(b)?;
    let properties = if version.is_v5() {
        Properties::decode(b, Context::Connect)?
    } else {
        Properties::default()
    };
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(DecodeError::Protocol(
            "authentication data without authentication method",
        ));
    }
    let client_id = read_utf8(b)?;
    let will = if will_flag {
        let will_props = if version.is_v5() {
            Properties::decode(b, Context::Will)?
        } else {
            Properties::default()
        };
        let topic = read_utf8(b)?;
        if topic.is_empty() {
            return Err(DecodeError::Protocol("empty will topic"));
        }
        if !valid_topic_name(&topic) {
            return Err(DecodeError::TopicNameInvalid("wildcard in the will topic"));
        }
        let payload = read_binary(b)?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties: will_props,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(read_utf8(b)?)
    } else {
        None
    };
    let password = if password_flag {
        Some(read_binary(b)?)
    } else {
        None
    };
    Ok(Connect {
        version,
        clean_start,
        keep_alive,
        properties,
        client_id,
        will,
        username,
        password,
    })
}

fn decode_publish(flags: u8, b: &mut Bytes, version: Version) -> Result<Publish, DecodeError> {
    let dup = flags & 0x08 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::Malformed("PUBLISH QoS 3"))?;
    let retain = flags & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::Protocol("DUP set on a QoS 0 PUBLISH"));
    }
    let topic = read_utf8(b)?;
    if topic.is_empty() {
        if !version.is_v5() {
            return Err(DecodeError::Malformed("empty topic name"));
        }
    } else if !valid_topic_name(&topic) {
        return Err(DecodeError::TopicNameInvalid("wildcard in a topic name"));
    }
    let packet_id = if qos != QoS::AtMostOnce {
        Some(read_packet_id(b)?)
    } else {
        None
    };
    let properties = if version.is_v5() {
        Properties::decode(b, Context::Publish)?
    } else {
        Properties::default()
    };
    let payload = b.split_to(b.len());
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload,
    })
}

/// A topic filter of SUBSCRIBE or UNSUBSCRIBE: at least one character (MQTT-4.7.3-1). Its
/// syntax beyond that is judged per filter, in SUBACK.
fn read_filter(b: &mut Bytes) -> Result<Utf8Bytes, DecodeError> {
    let filter = read_utf8(b)?;
    if filter.is_empty() {
        return Err(DecodeError::Protocol("empty topic filter"));
    }
    Ok(filter)
}

/// The CONNACK reason codes of §3.2.2.2.
fn connack_defines(code: u8) -> bool {
    matches!(code, 0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F)
}

/// A 3.1.1 CONNACK return code (§3.2.2.3) as the 5.0 reason code it stands for, as the encoder
/// maps them the other way.
fn v3_connack_reason(code: u8) -> Result<ReasonCode, DecodeError> {
    Ok(match code {
        0 => ReasonCode::SUCCESS,
        1 => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        2 => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        3 => ReasonCode::SERVER_UNAVAILABLE,
        4 => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        5 => ReasonCode::NOT_AUTHORIZED,
        _ => return Err(DecodeError::Protocol("CONNACK return code above 5")),
    })
}

/// The SUBACK reason codes of §3.9.3, and 3.1.1's (granted QoS or 0x80 Failure).
fn suback_defines(code: u8) -> bool {
    matches!(
        code,
        0x00..=0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
    )
}

fn v3_suback_defines(code: u8) -> bool {
    matches!(code, 0x00..=0x02 | 0x80)
}

/// The UNSUBACK reason codes of §3.11.3.
fn unsuback_defines(code: u8) -> bool {
    matches!(code, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91)
}

/// The DISCONNECT reason codes of §3.14.2.1.
fn disconnect_defines(code: u8) -> bool {
    matches!(code, 0x00 | 0x04 | 0x80..=0x83 | 0x87 | 0x89 | 0x8B | 0x8D..=0x90 | 0x93..=0xA2)
}

/// Which acknowledgement a PUBACK / PUBREC / PUBREL / PUBCOMP is, for its reason codes.
#[derive(Clone, Copy)]
enum PubRespKind {
    /// PUBACK and PUBREC (§3.4.2.1, §3.5.2.1).
    AckOrRec,
    /// PUBREL and PUBCOMP (§3.6.2.1, §3.7.2.1).
    RelOrComp,
}

impl PubRespKind {
    fn defines(self, code: u8) -> bool {
        match self {
            PubRespKind::AckOrRec => {
                matches!(
                    code,
                    0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
                )
            }
            PubRespKind::RelOrComp => matches!(code, 0x00 | 0x92),
        }
    }
}

fn decode_pub_resp(b: &mut Bytes, v5: bool, kind: PubRespKind) -> Result<PubResp, DecodeError> {
    let packet_id = read_packet_id(b)?;
    let (reason_code, properties) = decode_reason_and_props(b, v5, Context::PubResp)?;
    if !kind.defines(reason_code.0) {
        return Err(DecodeError::Protocol(
            "reason code not defined for this acknowledgement",
        ));
    }
    Ok(PubResp {
        packet_id,
        reason_code,
        properties,
    })
}

fn decode_subscribe(b: &mut Bytes, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = read_packet_id(b)?;
    let properties = if v5 {
        Properties::decode(b, Context::Subscribe)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while b.has_remaining() {
        let filter = read_filter(b)?;
        let o = read_u8(b)?;
        let reserved = if v5 { 0xC0 } else { 0xFC };
        if o & reserved != 0 {
            return Err(DecodeError::Malformed("reserved subscription option bits"));
        }
        let qos = QoS::from_u8(o & 0x03).ok_or(DecodeError::Malformed("subscription QoS 3"))?;
        let retain_handling = RetainHandling::from_u8((o >> 4) & 0x03)
            .ok_or(DecodeError::Protocol("retain handling 3"))?;
        filters.push((
            filter,
            SubscriptionOptions {
                qos,
                no_local: o & 0x04 != 0,
                retain_as_published: o & 0x08 != 0,
                retain_handling,
            },
        ));
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE with no topic filter"));
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

// ---- primitive readers; each checks the remaining length first, so none can panic ----

pub(crate) fn read_u8(b: &mut Bytes) -> Result<u8, DecodeError> {
    if b.remaining() < 1 {
        return Err(DecodeError::Malformed("packet shorter than its fields"));
    }
    Ok(b.get_u8())
}

pub(crate) fn read_u16(b: &mut Bytes) -> Result<u16, DecodeError> {
    if b.remaining() < 2 {
        return Err(DecodeError::Malformed("packet shorter than its fields"));
    }
    Ok(b.get_u16())
}

pub(crate) fn read_u32(b: &mut Bytes) -> Result<u32, DecodeError> {
    if b.remaining() < 4 {
        return Err(DecodeError::Malformed("packet shorter than its fields"));
    }
    Ok(b.get_u32())
}

fn read_packet_id(b: &mut Bytes) -> Result<u16, DecodeError> {
    let id = read_u16(b)?;
    if id == 0 {
        return Err(DecodeError::Protocol("packet identifier 0"));
    }
    Ok(id)
}

/// A Variable Byte Integer (§1.5.5): at most 4 bytes, minimal encoding not required.
pub(crate) fn read_varint(b: &mut Bytes) -> Result<u32, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let byte = read_u8(b)?;
        value |= ((byte & 0x7F) as u32) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::Malformed(
        "variable byte integer longer than 4 bytes",
    ))
}

pub(crate) fn read_binary(b: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = read_u16(b)? as usize;
    if b.remaining() < len {
        return Err(DecodeError::Malformed(
            "string or binary longer than the packet",
        ));
    }
    Ok(b.split_to(len))
}

pub(crate) fn read_utf8(b: &mut Bytes) -> Result<Utf8Bytes, DecodeError> {
    Utf8Bytes::try_from_bytes(read_binary(b)?).ok_or(DecodeError::Malformed("invalid UTF-8 string"))
}

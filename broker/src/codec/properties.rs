//! MQTT 5.0 properties (§2.2.2): one struct for all packet kinds, with the table of which
//! property may appear in which packet, value checks, and their encoding.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::DecodeError;
use super::decode::{read_binary, read_u8, read_u16, read_u32, read_utf8, read_varint};
use super::encode::{put_binary, put_str, put_varint, varint_len};
use super::strings::Utf8Bytes;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<Utf8Bytes>,
    pub response_topic: Option<Utf8Bytes>,
    pub correlation_data: Option<Bytes>,
    /// Several in a PUBLISH sent by the server; at most one in SUBSCRIBE.
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<Utf8Bytes>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<Utf8Bytes>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<Utf8Bytes>,
    pub server_reference: Option<Utf8Bytes>,
    pub reason_string: Option<Utf8Bytes>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(Utf8Bytes, Utf8Bytes)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

/// Where a property list stands; decides which identifiers are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubResp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

/// Whether property `id` may appear in `ctx` (the table in MQTT 5.0 §2.2.2.2).
fn allowed(id: u8, ctx: Context) -> bool {
    use Context::*;
    match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => matches!(ctx, Publish | Will),
        0x0B => matches!(ctx, Publish | Subscribe),
        0x11 => matches!(ctx, Connect | ConnAck | Disconnect),
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => ctx == ConnAck,
        0x15 | 0x16 => matches!(ctx, Connect | ConnAck | Auth),
        0x17 | 0x19 => ctx == Connect,
        0x18 => ctx == Will,
        0x1C => matches!(ctx, ConnAck | Disconnect),
        0x1F => matches!(
            ctx,
            ConnAck | PubResp | SubAck | UnsubAck | Disconnect | Auth
        ),
        0x21 | 0x22 | 0x27 => matches!(ctx, Connect | ConnAck),
        0x23 => ctx == Publish,
        0x26 => true,
        _ => false,
    }
}

fn set_once<T>(slot: &mut Option<T>, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("property included more than once"));
    }
    *slot = Some(v);
    Ok(())
}

fn boolean(v: u8) -> Result<u8, DecodeError> {
    if v > 1 {
        return Err(DecodeError::Protocol("property value must be 0 or 1"));
    }
    Ok(v)
}

impl Properties {
    /// Reads a property length and that many bytes of properties from `buf`.
    pub(crate) fn decode(buf: &mut Bytes, ctx: Context) -> Result<Properties, DecodeError> {
        let len = read_varint(buf)? as usize;
        if len > buf.remaining() {
            return Err(DecodeError::Malformed("property length exceeds packet"));
        }
        let mut p = buf.split_to(len);
        let mut props = Properties::default();
        while p.has_remaining() {
            let id = read_varint(&mut p)?;
            let id = u8::try_from(id).map_err(|_| DecodeError::Malformed("unknown property"))?;
            if !allowed(id, ctx) {
                return Err(DecodeError::Malformed(
                    "property not allowed in this packet",
                ));
            }
            match id {
                0x01 => set_once(
                    &mut props.payload_format_indicator,
                    boolean(read_u8(&mut p)?)?,
                )?,
                0x02 => set_once(&mut props.message_expiry_interval, read_u32(&mut p)?)?,
                0x03 => set_once(&mut props.content_type, read_utf8(&mut p)?)?,
                0x08 => {
                    let t = read_utf8(&mut p)?;
                    // MQTT-3.3.2-14: a Response Topic is a topic name, without wildcards.
                    if !super::topic::valid_topic_name(&t) {
                        return Err(DecodeError::Malformed("response topic is not a topic name"));
                    }
                    set_once(&mut props.response_topic, t)?
                }
                0x09 => set_once(&mut props.correlation_data, read_binary(&mut p)?)?,
                0x0B => {
                    let v = read_varint(&mut p)?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("subscription identifier of 0"));
                    }
                    if ctx == Context::Subscribe && !props.subscription_identifiers.is_empty() {
                        return Err(DecodeError::Protocol("property included more than once"));
                    }
                    props.subscription_identifiers.push(v);
                }
                0x11 => set_once(&mut props.session_expiry_interval, read_u32(&mut p)?)?,
                0x12 => set_once(&mut props.assigned_client_identifier, read_utf8(&mut p)?)?,
                0x13 => set_once(&mut props.server_keep_alive, read_u16(&mut p)?)?,
                0x15 => set_once(&mut props.authentication_method, read_utf8(&mut p)?)?,
                0x16 => set_once(&mut props.authentication_data, read_binary(&mut p)?)?,
                0x17 => set_once(
                    &mut props.request_problem_information,
                    boolean(read_u8(&mut p)?)?,
                )?,
                0x18 => set_once(&mut props.will_delay_interval, read_u32(&mut p)?)?,
                0x19 => set_once(
                    &mut props.request_response_information,
                    boolean(read_u8(&mut p)?)?,
                )?,
                0x1A => set_once(&mut props.response_information, read_utf8(&mut p)?)?,
                0x1C => set_once(&mut props.server_reference, read_utf8(&mut p)?)?,
                0x1F => set_once(&mut props.reason_string, read_utf8(&mut p)?)?,
                0x21 => {
                    let v = read_u16(&mut p)?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("receive maximum of 0"));
                    }
                    set_once(&mut props.receive_maximum, v)?
                }
                0x22 => set_once(&mut props.topic_alias_maximum, read_u16(&mut p)?)?,
                0x23 => set_once(&mut props.topic_alias, read_u16(&mut p)?)?,
                0x24 => set_once(&mut props.maximum_qos, boolean(read_u8(&mut p)?)?)?,
                0x25 => set_once(&mut props.retain_available, boolean(read_u8(&mut p)?)?)?,
                0x26 => {
                    let k = read_utf8(&mut p)?;
                    let v = read_utf8(&mut p)?;
                    props.user_properties.push((k, v));
                }
                0x27 => {
                    let v = read_u32(&mut p)?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("maximum packet size of 0"));
                    }
                    set_once(&mut props.maximum_packet_size, v)?
                }
                0x28 => set_once(
                    &mut props.wildcard_subscription_available,
                    boolean(read_u8(&mut p)?)?,
                )?,
                0x29 => set_once(
                    &mut props.subscription_identifier_available,
                    boolean(read_u8(&mut p)?)?,
                )?,
                0x2A => set_once(
                    &mut props.shared_subscription_available,
                    boolean(read_u8(&mut p)?)?,
                )?,
                _ => return Err(DecodeError::Malformed("unknown property")),
            }
        }
        Ok(props)
    }

    /// Encoded length of the properties, without the length prefix.
    pub fn encoded_len(&self) -> usize {
        let mut n = 0;
        let str_len = |s: &Utf8Bytes| 1 + 2 + s.len();
        let bin_len = |b: &Bytes| 1 + 2 + b.len();
        n += self.payload_format_indicator.map_or(0, |_| 2);
        n += self.message_expiry_interval.map_or(0, |_| 5);
        n += self.content_type.as_ref().map_or(0, str_len);
        n += self.response_topic.as_ref().map_or(0, str_len);
        n += self.correlation_data.as_ref().map_or(0, bin_len);
        n += self
            .subscription_identifiers
            .iter()
            .map(|&v| 1 + varint_len(v as usize))
            .sum::<usize>();
        n += self.session_expiry_interval.map_or(0, |_| 5);
        n += self.assigned_client_identifier.as_ref().map_or(0, str_len);
        n += self.server_keep_alive.map_or(0, |_| 3);
        n += self.authentication_method.as_ref().map_or(0, str_len);
        n += self.authentication_data.as_ref().map_or(0, bin_len);
        n += self.request_problem_information.map_or(0, |_| 2);
        n += self.will_delay_interval.map_or(0, |_| 5);
        n += self.request_response_information.map_or(0, |_| 2);
        n += self.response_information.as_ref().map_or(0, str_len);
        n += self.server_reference.as_ref().map_or(0, str_len);
        n += self.reason_string.as_ref().map_or(0, str_len);
        n += self.receive_maximum.map_or(0, |_| 3);
        n += self.topic_alias_maximum.map_or(0, |_| 3);
        n += self.topic_alias.map_or(0, |_| 3);
        n += self.maximum_qos.map_or(0, |_| 2);
        n += self.retain_available.map_or(0, |_| 2);
        n += self
            .user_properties
            .iter()
            .map(|(k, v)| 1 + 2 + k.len() + 2 + v.len())
            .sum::<usize>();
        n += self.maximum_packet_size.map_or(0, |_| 5);
        n += self.wildcard_subscription_available.map_or(0, |_| 2);
        n += self.subscription_identifier_available.map_or(0, |_| 2);
        n += self.shared_subscription_available.map_or(0, |_| 2);
        n
    }

    /// Writes the length prefix and the properties.
    pub fn encode(&self, buf: &mut BytesMut) {
        put_varint(buf, self.encoded_len());
        self.encode_body(buf);
    }

    /// Writes the properties without the length prefix.
    pub(crate) fn encode_body(&self, buf: &mut BytesMut) {
        fn u8p(buf: &mut BytesMut, id: u8, v: Option<u8>) {
            if let Some(v) = v {
                buf.put_u8(id);
                buf.put_u8(v);
            }
        }
        fn u16p(buf: &mut BytesMut, id: u8, v: Option<u16>) {
            if let Some(v) = v {
                buf.put_u8(id);
                buf.put_u16(v);
            }
        }
        fn u32p(buf: &mut BytesMut, id: u8, v: Option<u32>) {
            if let Some(v) = v {
                buf.put_u8(id);
                buf.put_u32(v);
            }
        }
        fn strp(buf: &mut BytesMut, id: u8, v: &Option<Utf8Bytes>) {
            if let Some(v) = v {
                buf.put_u8(id);
                put_str(buf, v);
            }
        }
        fn binp(buf: &mut BytesMut, id: u8, v: &Option<Bytes>) {
            if let Some(v) = v {
                buf.put_u8(id);
                put_binary(buf, v);
            }
        }
        u8p(buf, 0x01, self.payload_format_indicator);
        u32p(buf, 0x02, self.message_expiry_interval);
        strp(buf, 0x03, &self.content_type);
        strp(buf, 0x08, &self.response_topic);
        binp(buf, 0x09, &self.correlation_data);
        for &id in &self.subscription_identifiers {
            buf.put_u8(0x0B);
            put_varint(buf, id as usize);
        }
        u32p(buf, 0x11, self.session_expiry_interval);
        strp(buf, 0x12, &self.assigned_client_identifier);
        u16p(buf, 0x13, self.server_keep_alive);
        strp(buf, 0x15, &self.authentication_method);
        binp(buf, 0x16, &self.authentication_data);
        u8p(buf, 0x17, self.request_problem_information);
        u32p(buf, 0x18, self.will_delay_interval);
        u8p(buf, 0x19, self.request_response_information);
        strp(buf, 0x1A, &self.response_information);
        strp(buf, 0x1C, &self.server_reference);
        strp(buf, 0x1F, &self.reason_string);
        u16p(buf, 0x21, self.receive_maximum);
        u16p(buf, 0x22, self.topic_alias_maximum);
        u16p(buf, 0x23, self.topic_alias);
        u8p(buf, 0x24, self.maximum_qos);
        u8p(buf, 0x25, self.retain_available);
        for (k, v) in &self.user_properties {
            buf.put_u8(0x26);
            put_str(buf, k);
            put_str(buf, v);
        }
        u32p(buf, 0x27, self.maximum_packet_size);
        u8p(buf, 0x28, self.wildcard_subscription_available);
        u8p(buf, 0x29, self.subscription_identifier_available);
        u8p(buf, 0x2A, self.shared_subscription_available);
    }

    /// The properties of an application message that travel with it from publisher to
    /// subscriber (MQTT-3.3.2-16..20); everything else is per hop.
    pub fn message_properties_len(&self) -> usize {
        let str_len = |s: &Utf8Bytes| 1 + 2 + s.len();
        self.payload_format_indicator.map_or(0, |_| 2)
            + self.content_type.as_ref().map_or(0, str_len)
            + self.response_topic.as_ref().map_or(0, str_len)
            + self.correlation_data.as_ref().map_or(0, |b| 3 + b.len())
            + self
                .user_properties
                .iter()
                .map(|(k, v)| 5 + k.len() + v.len())
                .sum::<usize>()
    }

    /// Writes the forwarded message properties (see `message_properties_len`).
    pub(crate) fn encode_message_properties(&self, buf: &mut BytesMut) {
        if let Some(v) = self.payload_format_indicator {
            buf.put_u8(0x01);
            buf.put_u8(v);
        }
        if let Some(v) = &self.content_type {
            buf.put_u8(0x03);
            put_str(buf, v);
        }
        if let Some(v) = &self.response_topic {
            buf.put_u8(0x08);
            put_str(buf, v);
        }
        if let Some(v) = &self.correlation_data {
            buf.put_u8(0x09);
            put_binary(buf, v);
        }
        for (k, v) in &self.user_properties {
            buf.put_u8(0x26);
            put_str(buf, k);
            put_str(buf, v);
        }
    }
}

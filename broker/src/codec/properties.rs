//! MQTT 5.0 properties (§2.2.2): one struct for all packet kinds, built from one table.
//!
//! Each property is declared once in the `properties!` table below: its identifier, its field,
//! its wire type (which also carries its value rules), the packets it may appear in (the table
//! of §2.2.2.2), and whether it travels with an application message from publisher to
//! subscribers (MQTT-3.3.2-16..20). The macro derives from that one row the struct field, the
//! allowed-in check, decoding, the encoded length, encoding, and the forwarded subset. Rows are
//! in identifier order, which is the order properties are encoded in.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::DecodeError;
use super::decode::{read_binary, read_u8, read_u16, read_u32, read_utf8, read_varint};
use super::encode::{put_binary, put_str, put_varint, varint_len};
use super::strings::Utf8Bytes;

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

/// A property's wire type and value rules: how one value is read into its field, how long the
/// field encodes, and how it is written (nothing for an absent value).
trait WireType {
    type Field;
    fn read(field: &mut Self::Field, p: &mut Bytes, ctx: Context) -> Result<(), DecodeError>;
    fn len(field: &Self::Field) -> usize;
    fn write(id: u8, field: &Self::Field, buf: &mut BytesMut);
}

fn set_once<T>(slot: &mut Option<T>, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("property included more than once"));
    }
    *slot = Some(v);
    Ok(())
}

/// A byte that must be 0 or 1.
struct Bool;
impl WireType for Bool {
    type Field = Option<u8>;
    fn read(f: &mut Option<u8>, p: &mut Bytes, _: Context) -> Result<(), DecodeError> {
        let v = read_u8(p)?;
        if v > 1 {
            return Err(DecodeError::Protocol("property value must be 0 or 1"));
        }
        set_once(f, v)
    }
    fn len(f: &Option<u8>) -> usize {
        f.map_or(0, |_| 2)
    }
    fn write(id: u8, f: &Option<u8>, buf: &mut BytesMut) {
        if let Some(v) = *f {
            buf.put_u8(id);
            buf.put_u8(v);
        }
    }
}

/// A Two Byte Integer.
struct U16;
impl WireType for U16 {
    type Field = Option<u16>;
    fn read(f: &mut Option<u16>, p: &mut Bytes, _: Context) -> Result<(), DecodeError> {
        set_once(f, read_u16(p)?)
    }
    fn len(f: &Option<u16>) -> usize {
        f.map_or(0, |_| 3)
    }
    fn write(id: u8, f: &Option<u16>, buf: &mut BytesMut) {
        if let Some(v) = *f {
            buf.put_u8(id);
            buf.put_u16(v);
        }
    }
}

/// A Two Byte Integer that must not be 0 (Receive Maximum, §3.1.2.11.3).
struct NonZeroU16;
impl WireType for NonZeroU16 {
    type Field = Option<u16>;
    fn read(f: &mut Option<u16>, p: &mut Bytes, _: Context) -> Result<(), DecodeError> {
        let v = read_u16(p)?;
        if v == 0 {
            return Err(DecodeError::Protocol("receive maximum of 0"));
        }
        set_once(f, v)
    }
    fn len(f: &Option<u16>) -> usize {
        U16::len(f)
    }
    fn write(id: u8, f: &Option<u16>, buf: &mut BytesMut) {
        U16::write(id, f, buf)
    }
}

/// A Four Byte Integer.
struct U32;
impl WireType for U32 {
    type Field = Option<u32>;
    fn read(f: &mut Option<u32>, p: &mut Bytes, _: Context) -> Result<(), DecodeError> {
        set_once(f, read_u32(p)?)
    }
    fn len(f: &Option<u32>) -> usize {
        f.map_or(0, |_| 5)
    }
    fn write(id: u8, f: &Option<u32>, buf: &mut BytesMut) {
        if let Some(v) = *f {
            buf.put_u8(id);
            buf.put_u32(v);
        }
    }
}

/// A Four Byte Integer that must not be 0 (Maximum Packet Size, §3.1.2.11.4).
struct NonZeroU32;
impl WireType for NonZeroU32 {
    type Field = Option<u32>;
    fn read(f: &mut Option<u32>, p: &mut Bytes, _: Context) -> Result<(), DecodeError> {
        let v = read_u32(p)?;
        if v == 0 {
            return Err(DecodeError::Protocol("maximum packet size of 0"));
        }
        set_once(f, v)
    }
    fn len(f: &Option<u32>) -> usize {
        U32::len(f)
    }
    fn write(id: u8, f: &Option<u32>, buf: &mut BytesMut) {
        U32::write(id, f, buf)
    }
}

/// A UTF-8 Encoded String.
struct Str;
impl WireType for Str {
    type Field = Option<Utf8Bytes>;
    fn read(f: &mut Option<Utf8Bytes>, p: &mut Bytes, _: Context) -> Result<(), DecodeError> {
        set_once(f, read_utf8(p)?)
    }
    fn len(f: &Option<Utf8Bytes>) -> usize {
        f.as_ref().map_or(0, |s| 3 + s.len())
    }
    fn write(id: u8, f: &Option<Utf8Bytes>, buf: &mut BytesMut) {
        if let Some(v) = f {
            buf.put_u8(id);
            put_str(buf, v);
        }
    }
}

/// A string that must be a topic name, without wildcards (Response Topic, MQTT-3.3.2-14).
struct TopicName;
impl WireType for TopicName {
    type Field = Option<Utf8Bytes>;
    fn read(f: &mut Option<Utf8Bytes>, p: &mut Bytes, _: Context) -> Result<(), DecodeError> {
        let t = read_utf8(p)?;
        if !super::topic::valid_topic_name(&t) {
            return Err(DecodeError::Protocol("response topic is not a topic name"));
        }
        set_once(f, t)
    }
    fn len(f: &Option<Utf8Bytes>) -> usize {
        Str::len(f)
    }
    fn write(id: u8, f: &Option<Utf8Bytes>, buf: &mut BytesMut) {
        Str::write(id, f, buf)
    }
}

/// Binary Data.
struct Bin;
impl WireType for Bin {
    type Field = Option<Bytes>;
    fn read(f: &mut Option<Bytes>, p: &mut Bytes, _: Context) -> Result<(), DecodeError> {
        set_once(f, read_binary(p)?)
    }
    fn len(f: &Option<Bytes>) -> usize {
        f.as_ref().map_or(0, |b| 3 + b.len())
    }
    fn write(id: u8, f: &Option<Bytes>, buf: &mut BytesMut) {
        if let Some(v) = f {
            buf.put_u8(id);
            put_binary(buf, v);
        }
    }
}

/// Subscription Identifiers: Variable Byte Integers, never 0; at most one in SUBSCRIBE, several
/// in a PUBLISH the server sends (MQTT-3.3.4-3).
struct SubscriptionIds;
impl WireType for SubscriptionIds {
    type Field = Vec<u32>;
    fn read(f: &mut Vec<u32>, p: &mut Bytes, ctx: Context) -> Result<(), DecodeError> {
        let v = read_varint(p)?;
        if v == 0 {
            return Err(DecodeError::Protocol("subscription identifier of 0"));
        }
        if ctx == Context::Subscribe && !f.is_empty() {
            return Err(DecodeError::Protocol("property included more than once"));
        }
        f.push(v);
        Ok(())
    }
    fn len(f: &Vec<u32>) -> usize {
        f.iter().map(|&v| 1 + varint_len(v as usize)).sum()
    }
    fn write(id: u8, f: &Vec<u32>, buf: &mut BytesMut) {
        for &v in f {
            buf.put_u8(id);
            put_varint(buf, v as usize);
        }
    }
}

/// User Properties: UTF-8 String Pairs, any number, order kept (MQTT-3.3.2-18).
struct Pairs;
impl WireType for Pairs {
    type Field = Vec<(Utf8Bytes, Utf8Bytes)>;
    fn read(f: &mut Self::Field, p: &mut Bytes, _: Context) -> Result<(), DecodeError> {
        let k = read_utf8(p)?;
        let v = read_utf8(p)?;
        f.push((k, v));
        Ok(())
    }
    fn len(f: &Self::Field) -> usize {
        f.iter().map(|(k, v)| 5 + k.len() + v.len()).sum()
    }
    fn write(id: u8, f: &Self::Field, buf: &mut BytesMut) {
        for (k, v) in f {
            buf.put_u8(id);
            put_str(buf, k);
            put_str(buf, v);
        }
    }
}

macro_rules! properties {
    // Expands the expression only for a row marked `forwarded`.
    (@forwarded [forwarded] $e:expr, else $none:expr) => { $e };
    (@forwarded [] $e:expr, else $none:expr) => { $none };
    ($(
        $(#[$doc:meta])*
        $id:literal $field:ident: $ty:ty = $wire:ident in [$($ctx:ident),+] $(, $forwarded:ident)?;
    )*) => {
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct Properties {
            $( $(#[$doc])* pub $field: $ty, )*
        }

        /// Whether property `id` may appear in `ctx` (the table in MQTT 5.0 §2.2.2.2).
        fn allowed(id: u8, ctx: Context) -> bool {
            match id {
                $( $id => matches!(ctx, $(Context::$ctx)|+), )*
                _ => false,
            }
        }

        impl Properties {
            /// Reads one property value of identifier `id` (already checked to be allowed).
            fn read_one(&mut self, id: u8, p: &mut Bytes, ctx: Context) -> Result<(), DecodeError> {
                match id {
                    $( $id => <$wire as WireType>::read(&mut self.$field, p, ctx), )*
                    _ => Err(DecodeError::Malformed("unknown property")),
                }
            }

            /// No property is set (a present property always encodes to at least two bytes).
            /// Cheaper than comparing with `Properties::default()`, which builds and compares
            /// the whole struct: an acknowledgement asks this for every packet.
            pub fn is_empty(&self) -> bool {
                true $( && <$wire as WireType>::len(&self.$field) == 0 )*
            }

            /// Encoded length of the properties, without the length prefix.
            pub fn encoded_len(&self) -> usize {
                0 $( + <$wire as WireType>::len(&self.$field) )*
            }

            /// Writes the properties without the length prefix, in identifier order.
            pub(crate) fn encode_body(&self, buf: &mut BytesMut) {
                $( <$wire as WireType>::write($id, &self.$field, buf); )*
            }

            /// Length of the properties that travel with an application message from publisher
            /// to subscribers; everything else is per hop.
            pub fn message_properties_len(&self) -> usize {
                0 $( + properties!(@forwarded [$($forwarded)?] <$wire as WireType>::len(&self.$field), else 0) )*
            }

            /// Writes the forwarded message properties (see `message_properties_len`).
            pub(crate) fn encode_message_properties(&self, buf: &mut BytesMut) {
                $( properties!(@forwarded [$($forwarded)?] <$wire as WireType>::write($id, &self.$field, buf), else ()); )*
            }
        }
    };
}

properties! {
    0x01 payload_format_indicator: Option<u8> = Bool in [Publish, Will], forwarded;
    0x02 message_expiry_interval: Option<u32> = U32 in [Publish, Will];
    0x03 content_type: Option<Utf8Bytes> = Str in [Publish, Will], forwarded;
    0x08 response_topic: Option<Utf8Bytes> = TopicName in [Publish, Will], forwarded;
    0x09 correlation_data: Option<Bytes> = Bin in [Publish, Will], forwarded;
    /// Several in a PUBLISH sent by the server; at most one in SUBSCRIBE.
    0x0B subscription_identifiers: Vec<u32> = SubscriptionIds in [Publish, Subscribe];
    0x11 session_expiry_interval: Option<u32> = U32 in [Connect, ConnAck, Disconnect];
    0x12 assigned_client_identifier: Option<Utf8Bytes> = Str in [ConnAck];
    0x13 server_keep_alive: Option<u16> = U16 in [ConnAck];
    0x15 authentication_method: Option<Utf8Bytes> = Str in [Connect, ConnAck, Auth];
    0x16 authentication_data: Option<Bytes> = Bin in [Connect, ConnAck, Auth];
    0x17 request_problem_information: Option<u8> = Bool in [Connect];
    0x18 will_delay_interval: Option<u32> = U32 in [Will];
    0x19 request_response_information: Option<u8> = Bool in [Connect];
    0x1A response_information: Option<Utf8Bytes> = Str in [ConnAck];
    0x1C server_reference: Option<Utf8Bytes> = Str in [ConnAck, Disconnect];
    0x1F reason_string: Option<Utf8Bytes> = Str
        in [ConnAck, PubResp, SubAck, UnsubAck, Disconnect, Auth];
    0x21 receive_maximum: Option<u16> = NonZeroU16 in [Connect, ConnAck];
    0x22 topic_alias_maximum: Option<u16> = U16 in [Connect, ConnAck];
    0x23 topic_alias: Option<u16> = U16 in [Publish];
    0x24 maximum_qos: Option<u8> = Bool in [ConnAck];
    0x25 retain_available: Option<u8> = Bool in [ConnAck];
    0x26 user_properties: Vec<(Utf8Bytes, Utf8Bytes)> = Pairs
        in [Connect, Will, ConnAck, Publish, PubResp, Subscribe, SubAck, Unsubscribe, UnsubAck,
            Disconnect, Auth], forwarded;
    0x27 maximum_packet_size: Option<u32> = NonZeroU32 in [Connect, ConnAck];
    0x28 wildcard_subscription_available: Option<u8> = Bool in [ConnAck];
    0x29 subscription_identifier_available: Option<u8> = Bool in [ConnAck];
    0x2A shared_subscription_available: Option<u8> = Bool in [ConnAck];
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
            props.read_one(id, &mut p, ctx)?;
        }
        Ok(props)
    }

    /// Writes the length prefix and the properties.
    pub fn encode(&self, buf: &mut BytesMut) {
        put_varint(buf, self.encoded_len());
        self.encode_body(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every property set, to check that each row's length and encoding agree.
    fn all() -> Properties {
        let s = || Some(Utf8Bytes::from("x/y"));
        Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(7),
            content_type: s(),
            response_topic: s(),
            correlation_data: Some(Bytes::from_static(b"cd")),
            subscription_identifiers: vec![1, 300, 70_000],
            session_expiry_interval: Some(9),
            assigned_client_identifier: s(),
            server_keep_alive: Some(30),
            authentication_method: s(),
            authentication_data: Some(Bytes::from_static(b"token")),
            request_problem_information: Some(0),
            will_delay_interval: Some(5),
            request_response_information: Some(1),
            response_information: s(),
            server_reference: s(),
            reason_string: s(),
            receive_maximum: Some(10),
            topic_alias_maximum: Some(4),
            topic_alias: Some(2),
            maximum_qos: Some(1),
            retain_available: Some(0),
            user_properties: vec![(Utf8Bytes::from("k"), Utf8Bytes::from("v")); 2],
            maximum_packet_size: Some(1 << 20),
            wildcard_subscription_available: Some(1),
            subscription_identifier_available: Some(1),
            shared_subscription_available: Some(0),
        }
    }

    #[test]
    fn lengths_match_what_is_written() {
        let p = all();
        let mut body = BytesMut::new();
        p.encode_body(&mut body);
        assert_eq!(body.len(), p.encoded_len());
        let mut fwd = BytesMut::new();
        p.encode_message_properties(&mut fwd);
        assert_eq!(fwd.len(), p.message_properties_len());
        // The forwarded subset: payload format, content type, response topic, correlation
        // data and the user properties, nothing per hop.
        let forwarded = Properties {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
            ..Default::default()
        };
        let mut expected = BytesMut::new();
        forwarded.encode_body(&mut expected);
        assert_eq!(fwd, expected);
    }

    #[test]
    fn a_property_outside_its_packets_is_refused() {
        // Receive Maximum belongs to CONNECT and CONNACK only.
        let p = Properties {
            receive_maximum: Some(5),
            ..Default::default()
        };
        let mut buf = BytesMut::new();
        p.encode(&mut buf);
        let bytes = buf.freeze();
        assert!(Properties::decode(&mut bytes.clone(), Context::Connect).is_ok());
        assert!(matches!(
            Properties::decode(&mut bytes.clone(), Context::Publish),
            Err(DecodeError::Malformed(_))
        ));
    }
}

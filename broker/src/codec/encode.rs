//! Encoding: packets into bytes for the network.
//!
//! `encode` writes any packet. The broker's delivery path uses `encode_publish_head` instead: it
//! writes a PUBLISH up to (not including) the payload from the message's shared fields plus the
//! few per-subscriber ones, so the payload `Bytes` can follow without a copy.

use bytes::{BufMut, Bytes, BytesMut};

use super::properties::Properties;
use super::{Packet, PubResp, QoS, ReasonCode, Version};

pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_varint(buf: &mut BytesMut, mut v: usize) {
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if v == 0 {
            break;
        }
    }
}

pub(crate) fn put_str(buf: &mut BytesMut, s: &str) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s.as_bytes());
}

pub(crate) fn put_binary(buf: &mut BytesMut, b: &Bytes) {
    buf.put_u16(b.len() as u16);
    buf.put_slice(b);
}

fn props_len_with_prefix(p: &Properties) -> usize {
    let n = p.encoded_len();
    varint_len(n) + n
}

/// A 3.1.1 CONNACK return code for a 5.0 reason code (MQTT 3.1.1 §3.2.2.3).
fn v3_connack_code(code: ReasonCode) -> u8 {
    match code.0 {
        0x00 => 0,
        0x84 => 1,
        0x85 => 2,
        0x88 | 0x89 | 0x97 | 0x9F => 3,
        0x86 => 4,
        _ => 5,
    }
}

/// A 3.1.1 SUBACK return code: granted QoS or 0x80 Failure.
fn v3_suback_code(code: ReasonCode) -> u8 {
    if code.0 <= 2 { code.0 } else { 0x80 }
}

/// The per-hop view of a PUBLISH as the broker sends it.
#[derive(Debug, Clone, Copy)]
pub struct PublishHead<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// The topic name's UTF-8 bytes (already checked when the message was received), so
    /// writing it per subscriber needs no second check. Empty when `topic_alias` refers to an
    /// alias the receiver already knows.
    pub topic: &'a [u8],
    pub packet_id: Option<u16>,
    /// The message's forwarded properties (payload format, content type, response topic,
    /// correlation data, user properties), already encoded once for every subscriber by
    /// [`encode_message_properties`].
    pub message_properties: &'a [u8],
    /// Remaining message expiry, rewritten per delivery (MQTT-3.3.2-6).
    pub message_expiry: Option<u32>,
    pub topic_alias: Option<u16>,
    pub subscription_ids: &'a [u32],
    pub payload_len: usize,
}

impl PublishHead<'_> {
    fn properties_len(&self) -> usize {
        self.message_properties.len()
            + self.message_expiry.map_or(0, |_| 5)
            + self.topic_alias.map_or(0, |_| 3)
            + self
                .subscription_ids
                .iter()
                .map(|&id| 1 + varint_len(id as usize))
                .sum::<usize>()
    }

    fn remaining_len(&self, version: Version) -> usize {
        let mut n = 2 + self.topic.len() + self.payload_len;
        if self.packet_id.is_some() {
            n += 2;
        }
        if version.is_v5() {
            let p = self.properties_len();
            n += varint_len(p) + p;
        }
        n
    }
}

/// Bytes of the encoded PUBLISH: `(head, total)`, where the payload is `total - head`.
pub fn publish_head_len(head: &PublishHead<'_>, version: Version) -> (usize, usize) {
    let remaining = head.remaining_len(version);
    let total = 1 + varint_len(remaining) + remaining;
    (total - head.payload_len, total)
}

/// Writes a PUBLISH up to the payload; the caller appends exactly `head.payload_len` bytes.
pub fn encode_publish_head(head: &PublishHead<'_>, version: Version, buf: &mut BytesMut) {
    let mut first = 0x30 | (head.qos.as_u8() << 1);
    if head.dup {
        first |= 0x08;
    }
    if head.retain {
        first |= 0x01;
    }
    buf.put_u8(first);
    put_varint(buf, head.remaining_len(version));
    buf.put_u16(head.topic.len() as u16);
    buf.put_slice(head.topic);
    if let Some(id) = head.packet_id {
        buf.put_u16(id);
    }
    if version.is_v5() {
        put_varint(buf, head.properties_len());
        if let Some(v) = head.message_expiry {
            buf.put_u8(0x02);
            buf.put_u32(v);
        }
        for &id in head.subscription_ids {
            buf.put_u8(0x0B);
            put_varint(buf, id as usize);
        }
        if let Some(a) = head.topic_alias {
            buf.put_u8(0x23);
            buf.put_u16(a);
        }
        buf.put_slice(head.message_properties);
    }
}

/// Encodes the properties that travel with a message from publisher to subscribers, once.
pub fn encode_message_properties(p: &Properties) -> Bytes {
    let mut buf = BytesMut::with_capacity(p.message_properties_len());
    p.encode_message_properties(&mut buf);
    buf.freeze()
}

fn put_header(buf: &mut BytesMut, first: u8, remaining: usize) {
    buf.put_u8(first);
    put_varint(buf, remaining);
}

/// The 5.0 short forms of PUBACK..PUBCOMP (§3.4.2.1): omit what is default.
fn encode_pub_resp(buf: &mut BytesMut, first: u8, r: &PubResp, version: Version) {
    let has_props = version.is_v5() && !r.properties.is_empty();
    if !version.is_v5() || (r.reason_code == ReasonCode::SUCCESS && !has_props) {
        put_header(buf, first, 2);
        buf.put_u16(r.packet_id);
    } else if !has_props {
        put_header(buf, first, 3);
        buf.put_u16(r.packet_id);
        buf.put_u8(r.reason_code.0);
    } else {
        put_header(buf, first, 3 + props_len_with_prefix(&r.properties));
        buf.put_u16(r.packet_id);
        buf.put_u8(r.reason_code.0);
        r.properties.encode(buf);
    }
}

/// Writes `packet` as `version` speaks it.
pub fn encode(packet: &Packet, version: Version, buf: &mut BytesMut) {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => {
            let (name, level) = match c.version {
                Version::V3_1 => ("MQIsdp", 3),
                Version::V3_1_1 => ("MQTT", 4),
                Version::V5 => ("MQTT", 5),
            };
            let cv5 = c.version.is_v5();
            let mut n = 2 + name.len() + 1 + 1 + 2;
            if cv5 {
                n += props_len_with_prefix(&c.properties);
            }
            n += 2 + c.client_id.len();
            if let Some(w) = &c.will {
                if cv5 {
                    n += props_len_with_prefix(&w.properties);
                }
                n += 2 + w.topic.len() + 2 + w.payload.len();
            }
            n += c.username.as_ref().map_or(0, |u| 2 + u.len());
            n += c.password.as_ref().map_or(0, |p| 2 + p.len());
            put_header(buf, 0x10, n);
            put_str(buf, name);
            buf.put_u8(level);
            let mut flags = 0u8;
            if c.clean_start {
                flags |= 0x02;
            }
            if let Some(w) = &c.will {
                flags |= 0x04 | (w.qos.as_u8() << 3);
                if w.retain {
                    flags |= 0x20;
                }
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            buf.put_u8(flags);
            buf.put_u16(c.keep_alive);
            if cv5 {
                c.properties.encode(buf);
            }
            put_str(buf, &c.client_id);
            if let Some(w) = &c.will {
                if cv5 {
                    w.properties.encode(buf);
                }
                put_str(buf, &w.topic);
                put_binary(buf, &w.payload);
            }
            if let Some(u) = &c.username {
                put_str(buf, u);
            }
            if let Some(p) = &c.password {
                put_binary(buf, p);
            }
        }
        Packet::ConnAck(a) => {
            if v5 {
                put_header(buf, 0x20, 2 + props_len_with_prefix(&a.properties));
                buf.put_u8(a.session_present as u8);
                buf.put_u8(a.reason_code.0);
                a.properties.encode(buf);
            } else {
                put_header(buf, 0x20, 2);
                buf.put_u8(a.session_present as u8);
                buf.put_u8(v3_connack_code(a.reason_code));
            }
        }
        Packet::Publish(p) => {
            let mut n = 2 + p.topic.len() + p.payload.len();
            if p.packet_id.is_some() {
                n += 2;
            }
            if v5 {
                n += props_len_with_prefix(&p.properties);
            }
            let mut first = 0x30 | (p.qos.as_u8() << 1);
            if p.dup {
                first |= 0x08;
            }
            if p.retain {
                first |= 0x01;
            }
            put_header(buf, first, n);
            put_str(buf, &p.topic);
            if let Some(id) = p.packet_id {
                buf.put_u16(id);
            }
            if v5 {
                p.properties.encode(buf);
            }
            buf.put_slice(&p.payload);
        }
        Packet::PubAck(r) => encode_pub_resp(buf, 0x40, r, version),
        Packet::PubRec(r) => encode_pub_resp(buf, 0x50, r, version),
        Packet::PubRel(r) => encode_pub_resp(buf, 0x62, r, version),
        Packet::PubComp(r) => encode_pub_resp(buf, 0x70, r, version),
        Packet::Subscribe(s) => {
            let mut n = 2 + s
                .filters
                .iter()
                .map(|(f, _)| 2 + f.len() + 1)
                .sum::<usize>();
            if v5 {
                n += props_len_with_prefix(&s.properties);
            }
            put_header(buf, 0x82, n);
            buf.put_u16(s.packet_id);
            if v5 {
                s.properties.encode(buf);
            }
            for (f, o) in &s.filters {
                put_str(buf, f);
                let mut b = o.qos.as_u8();
                if v5 {
                    b |= (o.no_local as u8) << 2
                        | (o.retain_as_published as u8) << 3
                        | o.retain_handling.as_u8() << 4;
                }
                buf.put_u8(b);
            }
        }
        Packet::SubAck(s) => {
            let mut n = 2 + s.reason_codes.len();
            if v5 {
                n += props_len_with_prefix(&s.properties);
            }
            put_header(buf, 0x90, n);
            buf.put_u16(s.packet_id);
            if v5 {
                s.properties.encode(buf);
                for c in &s.reason_codes {
                    buf.put_u8(c.0);
                }
            } else {
                for c in &s.reason_codes {
                    buf.put_u8(v3_suback_code(*c));
                }
            }
        }
        Packet::Unsubscribe(u) => {
            let mut n = 2 + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>();
            if v5 {
                n += props_len_with_prefix(&u.properties);
            }
            put_header(buf, 0xA2, n);
            buf.put_u16(u.packet_id);
            if v5 {
                u.properties.encode(buf);
            }
            for f in &u.filters {
                put_str(buf, f);
            }
        }
        Packet::UnsubAck(u) => {
            if v5 {
                put_header(
                    buf,
                    0xB0,
                    2 + props_len_with_prefix(&u.properties) + u.reason_codes.len(),
                );
                buf.put_u16(u.packet_id);
                u.properties.encode(buf);
                for c in &u.reason_codes {
                    buf.put_u8(c.0);
                }
            } else {
                put_header(buf, 0xB0, 2);
                buf.put_u16(u.packet_id);
            }
        }
        Packet::PingReq => put_header(buf, 0xC0, 0),
        Packet::PingResp => put_header(buf, 0xD0, 0),
        Packet::Disconnect(d) => {
            encode_reason_and_props(buf, 0xE0, d.reason_code, &d.properties, v5)
        }
        Packet::Auth(a) => encode_reason_and_props(buf, 0xF0, a.reason_code, &a.properties, v5),
    }
}

/// DISCONNECT and AUTH: `E0 00` / `F0 00` when the reason is Success and there are no properties.
fn encode_reason_and_props(
    buf: &mut BytesMut,
    first: u8,
    code: ReasonCode,
    props: &Properties,
    v5: bool,
) {
    let has_props = !props.is_empty();
    if !v5 || (code == ReasonCode::SUCCESS && !has_props) {
        put_header(buf, first, 0);
    } else if !has_props {
        put_header(buf, first, 1);
        buf.put_u8(code.0);
    } else {
        put_header(buf, first, 1 + props_len_with_prefix(props));
        buf.put_u8(code.0);
        props.encode(buf);
    }
}

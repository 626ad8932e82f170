//! Codec tests: golden bytes captured from real clients, round trips, and random or truncated
//! input that must never panic. The strictness rules, each with its code, are in `strictness.rs`.

use bytes::{Bytes, BytesMut};

use super::*;

mod strictness;

fn hex(s: &str) -> BytesMut {
    let s: String = s.split_whitespace().collect();
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect();
    BytesMut::from(&bytes[..])
}

fn decode_all(mut buf: BytesMut, version: Version) -> Vec<Packet> {
    let mut out = Vec::new();
    let mut v = version;
    while let Some(p) = decode(&mut buf, v, 1 << 20).unwrap() {
        if let Packet::Connect(c) = &p {
            v = c.version;
        }
        out.push(p);
    }
    assert!(buf.is_empty(), "trailing bytes");
    out
}

fn roundtrip(p: &Packet, version: Version) {
    let mut buf = BytesMut::new();
    encode(p, version, &mut buf);
    let back = decode(&mut buf, version, 1 << 20).unwrap().unwrap();
    assert_eq!(&back, p);
    assert!(buf.is_empty());
}

// mosquitto_pub 2.0 -V mqttv5 -i pubv5 -t a/b -m hello -D publish user-property k v
//   -D publish content-type text/plain
const MOSQUITTO_PUB_V5: &str = "101500044d5154540502003c0321001400057075627635301f0003612f62142600016b00017603000a746578742f706c61696e68656c6c6fe000";
// mosquitto_pub -V mqttv311 -i pub311 -t a/b -m hello -r
const MOSQUITTO_PUB_V311: &str =
    "101200044d5154540402003c0006707562333131310a0003612f6268656c6c6fe000";
// mosquitto_pub -V mqttv5 -i dev1 -D connect authentication-method X-OAUTH2
//   -D connect authentication-data tok123
const MOSQUITTO_AUTH_CONNECT: &str = "102800044d5154540502003c17150008582d4f4155544832160006746f6b31323321001400046465763130050001740078e000";
// mosquitto_sub -V mqttv5 -i sub1 -t 'a/+' -q 2 -D subscribe subscription-identifier 7
const MOSQUITTO_SUB_V5: &str =
    "101400044d5154540502003c03210014000473756231820b0001020b070003612f2b02";

#[test]
fn golden_mosquitto_pub_v5() {
    let packets = decode_all(hex(MOSQUITTO_PUB_V5), Version::V5);
    let Packet::Connect(c) = &packets[0] else {
        panic!()
    };
    assert_eq!(c.version, Version::V5);
    assert_eq!(c.client_id.as_str(), "pubv5");
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 60);
    assert_eq!(c.properties.receive_maximum, Some(20));
    let Packet::Publish(p) = &packets[1] else {
        panic!()
    };
    assert_eq!(p.topic.as_str(), "a/b");
    assert_eq!(&p.payload[..], b"hello");
    assert_eq!(p.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.properties.user_properties.len(), 1);
    assert_eq!(packets[2], Packet::Disconnect(Disconnect::default()));
    // Re-encoding gives the same bytes (property order aside, these are in id order).
    let mut out = BytesMut::new();
    encode(&packets[0], Version::V5, &mut out);
    assert_eq!(&out[..], &hex(MOSQUITTO_PUB_V5)[..out.len()]);
}

#[test]
fn golden_mosquitto_pub_v311_retained() {
    let packets = decode_all(hex(MOSQUITTO_PUB_V311), Version::V3_1_1);
    let Packet::Connect(c) = &packets[0] else {
        panic!()
    };
    assert_eq!(c.version, Version::V3_1_1);
    let Packet::Publish(p) = &packets[1] else {
        panic!()
    };
    assert!(p.retain);
    assert_eq!(p.qos, QoS::AtMostOnce);
    let mut out = BytesMut::new();
    for p in &packets {
        encode(p, Version::V3_1_1, &mut out);
    }
    assert_eq!(out, hex(MOSQUITTO_PUB_V311));
}

#[test]
fn golden_mosquitto_auth_connect() {
    let packets = decode_all(hex(MOSQUITTO_AUTH_CONNECT), Version::V5);
    let Packet::Connect(c) = &packets[0] else {
        panic!()
    };
    assert_eq!(
        c.properties.authentication_method.as_deref(),
        Some("X-OAUTH2")
    );
    assert_eq!(
        c.properties.authentication_data.as_deref(),
        Some(&b"tok123"[..])
    );
}

#[test]
fn golden_mosquitto_subscribe() {
    let packets = decode_all(hex(MOSQUITTO_SUB_V5), Version::V5);
    let Packet::Subscribe(s) = &packets[1] else {
        panic!()
    };
    assert_eq!(s.packet_id, 1);
    assert_eq!(s.properties.subscription_identifiers, vec![7]);
    assert_eq!(s.filters[0].0.as_str(), "a/+");
    assert_eq!(s.filters[0].1.qos, QoS::ExactlyOnce);
    let mut out = BytesMut::new();
    encode(&packets[1], Version::V5, &mut out);
    assert_eq!(&out[..], &hex(MOSQUITTO_SUB_V5)[22..]);
}

// MQTT.js 5 (npm mqtt): connect with sessionExpiryInterval 300, receiveMaximum 16,
// topicAliasMaximum 4; subscribe 's/#' {qos 1, nl, rh 1}; publish 'p/js' with a user property
// and content type.
const MQTTJS: &str = "101f00044d5154540502001e0b110000012c21001022000400076d7174746a733182097cc8000003732f231530220004702f6a73142600016b00017603000a746578742f706c61696e6d7174742e6a73";
// rumqttc 0.25 v5: connect (keep-alive 30), subscribe 's/+' QoS 1, publish 'p/q' QoS 1 retained.
const RUMQTTC: &str = "101100044d5154540502001e00000472756d7182090001000003732f2b01330f0003702f7100020072756d71747463";
// mqtt5 0.49: CONNECT with Authentication Data before Authentication Method (order is free).
const MQTT5_CRATE: &str = "102000044d5154540502003c11160003746f6b150008582d4f415554483200026d35";

#[test]
fn golden_mqttjs() {
    let packets = decode_all(hex(MQTTJS), Version::V5);
    let Packet::Connect(c) = &packets[0] else {
        panic!()
    };
    assert_eq!(c.properties.session_expiry_interval, Some(300));
    assert_eq!(c.properties.topic_alias_maximum, Some(4));
    let Packet::Subscribe(s) = &packets[1] else {
        panic!()
    };
    let o = s.filters[0].1;
    assert!(
        o.no_local
            && o.retain_handling == RetainHandling::OnNewSubscription
            && o.qos == QoS::AtLeastOnce
    );
    let Packet::Publish(p) = &packets[2] else {
        panic!()
    };
    assert_eq!(p.properties.user_properties[0].0.as_str(), "k");
    assert_eq!(&p.payload[..], b"mqtt.js");
    // MQTT.js orders properties differently (the order is free): compare the re-decoded
    // packets, and the bytes of those whose order agrees.
    let mut out = BytesMut::new();
    for p in &packets[..2] {
        encode(p, Version::V5, &mut out);
    }
    assert_eq!(&out[..], &hex(MQTTJS)[..out.len()]);
    roundtrip(&packets[2], Version::V5);
}

#[test]
fn golden_rumqttc() {
    let packets = decode_all(hex(RUMQTTC), Version::V5);
    let Packet::Publish(p) = &packets[2] else {
        panic!()
    };
    assert!(p.retain);
    assert_eq!(p.packet_id, Some(2));
    let mut out = BytesMut::new();
    for p in &packets {
        encode(p, Version::V5, &mut out);
    }
    assert_eq!(out, hex(RUMQTTC));
}

#[test]
fn golden_mqtt5_crate_property_order() {
    let packets = decode_all(hex(MQTT5_CRATE), Version::V5);
    let Packet::Connect(c) = &packets[0] else {
        panic!()
    };
    assert_eq!(
        c.properties.authentication_method.as_deref(),
        Some("X-OAUTH2")
    );
    assert_eq!(
        c.properties.authentication_data.as_deref(),
        Some(&b"tok"[..])
    );
    assert_eq!(c.client_id.as_str(), "m5");
}

#[test]
fn auth_may_be_two_bytes() {
    let p = decode(&mut hex("f000"), Version::V5, 100).unwrap().unwrap();
    assert_eq!(p, Packet::Auth(Auth::default()));
    // AUTH does not exist in 3.1.1.
    assert!(decode(&mut hex("f000"), Version::V3_1_1, 100).is_err());
}

#[test]
fn roundtrips() {
    let mut props = Properties {
        authentication_method: Some("X-OAUTH2".into()),
        authentication_data: Some(Bytes::from_static(b"t")),
        session_expiry_interval: Some(30),
        receive_maximum: Some(10),
        maximum_packet_size: Some(1000),
        topic_alias_maximum: Some(5),
        request_problem_information: Some(1),
        request_response_information: Some(0),
        ..Default::default()
    };
    props.user_properties.push(("a".into(), "b".into()));
    let will = Will {
        topic: "w/t".into(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties {
            will_delay_interval: Some(5),
            message_expiry_interval: Some(9),
            payload_format_indicator: Some(1),
            content_type: Some("text/plain".into()),
            response_topic: Some("r".into()),
            correlation_data: Some(Bytes::from_static(b"c")),
            ..Default::default()
        },
    };
    roundtrip(
        &Packet::Connect(Box::new(Connect {
            version: Version::V5,
            clean_start: false,
            keep_alive: 30,
            properties: props.clone(),
            client_id: "c".into(),
            will: Some(will.clone()),
            username: Some("u".into()),
            password: Some(Bytes::from_static(b"p")),
        })),
        Version::V5,
    );
    let mut v3_will = will;
    v3_will.properties = Properties::default();
    for v in [Version::V3_1, Version::V3_1_1] {
        roundtrip(
            &Packet::Connect(Box::new(Connect {
                version: v,
                clean_start: true,
                keep_alive: 0,
                properties: Properties::default(),
                client_id: "c".into(),
                will: Some(v3_will.clone()),
                username: Some("u".into()),
                password: Some(Bytes::from_static(b"p")),
            })),
            v,
        );
    }
    roundtrip(
        &Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: ReasonCode::SUCCESS,
            properties: Properties {
                assigned_client_identifier: Some("x".into()),
                server_keep_alive: Some(10),
                maximum_qos: Some(1),
                retain_available: Some(1),
                wildcard_subscription_available: Some(1),
                subscription_identifier_available: Some(0),
                shared_subscription_available: Some(1),
                reason_string: Some("ok".into()),
                response_information: Some("ri".into()),
                server_reference: Some("sr".into()),
                ..Default::default()
            },
        }),
        Version::V5,
    );
    roundtrip(
        &Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: "a/b".into(),
            packet_id: Some(7),
            properties: Properties {
                topic_alias: Some(3),
                subscription_identifiers: vec![1, 200_000],
                message_expiry_interval: Some(5),
                ..Default::default()
            },
            payload: Bytes::from_static(b"x"),
        }),
        Version::V5,
    );
    for (code, props) in [
        (ReasonCode::SUCCESS, Properties::default()),
        (ReasonCode::NO_MATCHING_SUBSCRIBERS, Properties::default()),
        (
            ReasonCode::NOT_AUTHORIZED,
            Properties {
                reason_string: Some("no".into()),
                ..Default::default()
            },
        ),
    ] {
        let r = PubResp {
            packet_id: 9,
            reason_code: code,
            properties: props,
        };
        roundtrip(&Packet::PubAck(r.clone()), Version::V5);
        roundtrip(&Packet::PubRec(r.clone()), Version::V5);
        if code != ReasonCode::NO_MATCHING_SUBSCRIBERS {
            roundtrip(
                &Packet::Disconnect(Disconnect {
                    reason_code: code,
                    properties: r.properties.clone(),
                }),
                Version::V5,
            );
        }
        // PUBREL and PUBCOMP define only 0x00 and 0x92.
        let rel = PubResp {
            reason_code: if code == ReasonCode::SUCCESS {
                code
            } else {
                ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
            },
            ..r
        };
        roundtrip(&Packet::PubRel(rel.clone()), Version::V5);
        roundtrip(&Packet::PubComp(rel), Version::V5);
    }
    roundtrip(
        &Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![
                (
                    "a/#".into(),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::Never,
                    },
                ),
                ("b".into(), SubscriptionOptions::default()),
            ],
        }),
        Version::V5,
    );
    roundtrip(
        &Packet::SubAck(SubAck {
            packet_id: 1,
            properties: Properties::default(),
            reason_codes: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::NOT_AUTHORIZED],
        }),
        Version::V5,
    );
    roundtrip(
        &Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            properties: Properties::default(),
            filters: vec!["a".into(), "b/+".into()],
        }),
        Version::V3_1_1,
    );
    roundtrip(
        &Packet::UnsubAck(UnsubAck {
            packet_id: 2,
            properties: Properties::default(),
            reason_codes: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
        }),
        Version::V5,
    );
    roundtrip(&Packet::PingReq, Version::V3_1_1);
    roundtrip(&Packet::PingResp, Version::V5);
    roundtrip(
        &Packet::Auth(Auth {
            reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: Properties {
                authentication_method: Some("X-OAUTH2".into()),
                authentication_data: Some(Bytes::from_static(b"tok")),
                ..Default::default()
            },
        }),
        Version::V5,
    );
}

#[test]
fn publish_head_matches_full_encoding() {
    let props = Properties {
        content_type: Some("ct".into()),
        correlation_data: Some(Bytes::from_static(b"cd")),
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    let payload = Bytes::from_static(b"payload");
    let props = encode_message_properties(&props);
    let head = PublishHead {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: b"t/1",
        packet_id: Some(3),
        message_properties: &props,
        message_expiry: Some(10),
        topic_alias: Some(2),
        subscription_ids: &[4, 5],
        payload_len: payload.len(),
    };
    let mut buf = BytesMut::new();
    encode_publish_head(&head, Version::V5, &mut buf);
    let (head_len, total) = publish_head_len(&head, Version::V5);
    assert_eq!(buf.len(), head_len);
    buf.extend_from_slice(&payload);
    assert_eq!(buf.len(), total);
    let Packet::Publish(p) = decode(&mut buf, Version::V5, 1000).unwrap().unwrap() else {
        panic!()
    };
    assert_eq!(p.properties.subscription_identifiers, vec![4, 5]);
    assert_eq!(p.properties.topic_alias, Some(2));
    assert_eq!(p.properties.message_expiry_interval, Some(10));
    assert_eq!(p.properties.content_type.as_deref(), Some("ct"));
    assert_eq!(p.payload, payload);
    assert!(p.retain);
}

#[test]
fn incomplete_input_waits() {
    let full = hex(MOSQUITTO_PUB_V5);
    for cut in 0..22 {
        let mut part = BytesMut::from(&full[..cut]);
        assert_eq!(
            decode(&mut part, Version::V5, 1 << 20).unwrap(),
            None,
            "{cut}"
        );
        assert_eq!(part.len(), cut, "nothing consumed");
    }
}

/// A small deterministic generator, so failures reproduce.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_and_mutated_bytes_never_panic() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let seeds = [
        hex(MOSQUITTO_PUB_V5),
        hex(MOSQUITTO_PUB_V311),
        hex(MOSQUITTO_AUTH_CONNECT),
        hex(MOSQUITTO_SUB_V5),
        hex(MQTTJS),
        hex(RUMQTTC),
        hex(MQTT5_CRATE),
    ];
    for round in 0..200_000 {
        let mut buf = if round % 2 == 0 {
            let len = (rng.next() % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            BytesMut::from(&bytes[..])
        } else {
            let mut b = seeds[(rng.next() % seeds.len() as u64) as usize].clone();
            for _ in 0..(rng.next() % 4 + 1) {
                let i = (rng.next() as usize) % b.len();
                b[i] = rng.next() as u8;
            }
            let cut = (rng.next() as usize) % (b.len() + 1);
            b.truncate(cut);
            b
        };
        let version = match rng.next() % 3 {
            0 => Version::V3_1,
            1 => Version::V3_1_1,
            _ => Version::V5,
        };
        while let Ok(Some(_)) = decode(&mut buf, version, 1 << 16) {}
    }
}

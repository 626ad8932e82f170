//! Bad input: each answered as the specification says, and only the offending connection
//! closes while another client keeps being served.

use std::time::Duration;

use tessera_broker::codec::{Packet, QoS, ReasonCode};

use crate::harness::TestBroker;
use crate::raw::{Raw, connect_v5};

/// A bystander subscribed to `ok`, and a publisher proving it is still served.
async fn still_served(b: &TestBroker, bystander: &mut Raw) {
    let mut p = Raw::v5(b.tcp, "prover").await;
    p.publish("ok", b"alive", QoS::AtMostOnce, 0).await;
    assert_eq!(&bystander.next_publish().await.payload[..], b"alive");
}

async fn bystander(b: &TestBroker) -> Raw {
    let mut s = Raw::v5(b.tcp, "bystander").await;
    s.subscribe("ok", QoS::AtMostOnce).await;
    s
}

#[tokio::test]
async fn malformed_packets_after_connect_get_disconnect_with_the_named_code() {
    let b = TestBroker::start();
    let mut by = bystander(&b).await;
    let cases: &[(&str, &[u8], ReasonCode)] = &[
        // Remaining length with five bytes.
        (
            "bad remaining length",
            &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            ReasonCode::MALFORMED_PACKET,
        ),
        // Topic with an invalid UTF-8 sequence.
        (
            "bad utf-8",
            &[0x30, 0x05, 0x00, 0x02, 0xC3, 0x28, 0x00],
            ReasonCode::MALFORMED_PACKET,
        ),
        // SUBSCRIBE with reserved flags 0000.
        (
            "wrong flags",
            &[0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, 0x61],
            ReasonCode::MALFORMED_PACKET,
        ),
        // PUBLISH with QoS 3.
        (
            "qos 3",
            &[0x36, 0x05, 0x00, 0x01, 0x61, 0x00, 0x01],
            ReasonCode::MALFORMED_PACKET,
        ),
        // A second CONNECT.
        (
            "second connect",
            &[
                0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x00, 0x00,
                0x00,
            ],
            ReasonCode::PROTOCOL_ERROR,
        ),
        // A duplicate property (two Payload Format Indicators).
        (
            "duplicate property",
            &[0x30, 0x08, 0x00, 0x01, 0x61, 0x04, 0x01, 0x00, 0x01, 0x00],
            ReasonCode::PROTOCOL_ERROR,
        ),
        // A packet the client may not send.
        (
            "server packet",
            &[0x20, 0x03, 0x00, 0x00, 0x00],
            ReasonCode::PROTOCOL_ERROR,
        ),
        // A wildcard in a PUBLISH Topic Name: the code the standard names.
        (
            "wildcard topic",
            &[0x30, 0x04, 0x00, 0x01, b'#', 0x00],
            ReasonCode::TOPIC_NAME_INVALID,
        ),
        // DUP on a QoS 0 PUBLISH.
        (
            "dup on qos 0",
            &[0x38, 0x04, 0x00, 0x01, b'a', 0x00],
            ReasonCode::PROTOCOL_ERROR,
        ),
        // A zero-length topic filter (MQTT-4.7.3-1), in SUBSCRIBE and in UNSUBSCRIBE.
        (
            "empty filter",
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00],
            ReasonCode::PROTOCOL_ERROR,
        ),
        (
            "empty unsubscribe filter",
            &[0xA2, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00],
            ReasonCode::PROTOCOL_ERROR,
        ),
        // A PUBACK with a reason code PUBACK does not define (0x01).
        (
            "undefined ack code",
            &[0x40, 0x03, 0x00, 0x01, 0x01],
            ReasonCode::PROTOCOL_ERROR,
        ),
        // A wildcard Response Topic.
        (
            "wildcard response topic",
            &[0x30, 0x08, 0x00, 0x01, b'a', 0x04, 0x08, 0x00, 0x01, b'+'],
            ReasonCode::PROTOCOL_ERROR,
        ),
    ];
    for (name, bytes, code) in cases {
        let mut c = Raw::v5(b.tcp, name).await;
        c.send_bytes(bytes).await;
        match c.recv().await {
            Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, *code, "{name}"),
            other => panic!("{name}: expected DISCONNECT, got {other:?}"),
        }
        c.expect_closed().await;
    }
    still_served(&b, &mut by).await;
}

#[tokio::test]
async fn truncated_packet_then_close_loses_nothing_else() {
    let b = TestBroker::start();
    let mut by = bystander(&b).await;
    let mut c = Raw::v5(b.tcp, "trunc").await;
    // Announces 100 bytes, sends 3, then closes.
    c.send_bytes(&[0x30, 100, 0x00, 0x01, b'a']).await;
    drop(c);
    still_served(&b, &mut by).await;
}

#[tokio::test]
async fn packet_before_connect_closes_without_answer() {
    let b = TestBroker::start();
    let mut c = Raw::open(b.tcp).await;
    c.send_bytes(&[0xC0, 0x00]).await; // PINGREQ
    c.expect_closed().await;
}

#[tokio::test]
async fn unsupported_protocol_level_gets_0x84_in_a_form_the_client_reads() {
    let b = TestBroker::start();
    let mut c = Raw::open(b.tcp).await;
    c.version = tessera_broker::codec::Version::V3_1_1;
    c.send_bytes(&[
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x09, 0x02, 0x00, 0x3C, 0x00, 0x00,
    ])
    .await;
    // 3.1.1 form: return code 1, unacceptable protocol version.
    let mut raw = [0u8; 4];
    use tokio::io::AsyncReadExt;
    c.stream.read_exact(&mut raw).await.unwrap();
    assert_eq!(raw, [0x20, 0x02, 0x00, 0x01]);
    c.expect_closed().await;
}

#[tokio::test]
async fn malformed_v5_connect_gets_connack_0x81() {
    let b = TestBroker::start();
    let mut c = Raw::open(b.tcp).await;
    // Reserved CONNECT flag set.
    c.send_bytes(&[
        0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x03, 0x00, 0x3C, 0x00, 0x00, 0x01,
        b'c',
    ])
    .await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, ReasonCode::MALFORMED_PACKET),
        other => panic!("{other:?}"),
    }
    c.expect_closed().await;
}

#[tokio::test]
async fn wildcard_will_topic_gets_connack_0x90() {
    let b = TestBroker::start();
    let mut c = connect_v5("willful");
    c.will = Some(tessera_broker::codec::Will {
        topic: "alarms/#".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let mut raw = Raw::open(b.tcp).await;
    raw.send(&Packet::Connect(Box::new(c))).await;
    match raw.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, ReasonCode::TOPIC_NAME_INVALID),
        other => panic!("{other:?}"),
    }
    raw.expect_closed().await;
}

#[tokio::test]
async fn oversized_connect_is_refused() {
    let b = TestBroker::start_with("mqtt:\n  max_packet_size: 64\n");
    let mut c = connect_v5("x");
    c.password = Some(bytes::Bytes::from(vec![b'p'; 200]));
    c.username = Some("u".into());
    let mut raw = Raw::open(b.tcp).await;
    raw.send(&Packet::Connect(Box::new(c))).await;
    match raw.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, ReasonCode::PACKET_TOO_LARGE),
        other => panic!("{other:?}"),
    }
    raw.expect_closed().await;
}

#[tokio::test]
async fn silent_socket_is_closed_after_the_connect_timeout() {
    let b = TestBroker::start_with("mqtt:\n  connect_timeout: 1\n");
    let mut by = bystander(&b).await;
    let mut silent = Raw::open(b.tcp).await;
    let start = std::time::Instant::now();
    silent.expect_closed().await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    still_served(&b, &mut by).await;
}

#[tokio::test]
async fn connection_limit_gets_quota_exceeded() {
    let b = TestBroker::start_with("mqtt:\n  max_connections: 1\n");
    let _first = Raw::v5(b.tcp, "first").await;
    let (_c, ack) = Raw::connect(b.tcp, connect_v5("second")).await;
    assert_eq!(ack.reason_code, ReasonCode::QUOTA_EXCEEDED);
}

#[tokio::test]
async fn unknown_authentication_method_gets_0x8c() {
    let b = TestBroker::start();
    let mut c = connect_v5("m");
    c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let (mut raw, ack) = Raw::connect(b.tcp, c).await;
    assert_eq!(ack.reason_code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    raw.expect_closed().await;
    // mosquitto_pub reports it too.
    let port = b.tcp.port().to_string();
    let out = crate::clients::mosquitto_pub(&[
        "-p",
        &port,
        "-V",
        "mqttv5",
        "-t",
        "t",
        "-m",
        "x",
        "-D",
        "connect",
        "authentication-method",
        "X-UNKNOWN",
    ])
    .await;
    assert!(!out.status.success());
}

/// Sends `bytes` while reading: whether every write succeeded, and the CONNACK or DISCONNECT
/// read (the acknowledgements before it skipped).
async fn write_while_reading(
    stream: tokio::net::TcpStream,
    bytes: Vec<u8>,
) -> (bool, Option<Packet>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        for chunk in bytes.chunks(16 * 1024) {
            if wr.write_all(chunk).await.is_err() {
                return false;
            }
        }
        true
    });
    let mut buf = bytes::BytesMut::new();
    let first = loop {
        match tessera_broker::codec::decode(&mut buf, tessera_broker::codec::Version::V5, 1 << 20) {
            Ok(Some(p @ (Packet::ConnAck(_) | Packet::Disconnect(_)))) => break Some(p),
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(_) => break None,
        }
        buf.reserve(4096);
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break None,
            Ok(_) => {}
        }
    };
    (writer.await.unwrap(), first)
}

/// QoS 2 PUBLISH packets to `t`, 100-byte payloads, identifiers from `first`.
fn qos2_flood(first: u16, n: u16) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    for id in first..first + n {
        let p = crate::raw::publish("t", &[b'x'; 100], QoS::ExactlyOnce, id);
        tessera_broker::codec::encode(
            &Packet::Publish(p),
            tessera_broker::codec::Version::V5,
            &mut b,
        );
    }
    b.to_vec()
}

#[tokio::test]
async fn a_client_still_sending_reads_the_disconnect_instead_of_a_reset() {
    // Receive Maximum 5, and a client that floods QoS 2 without waiting for PUBRECs (the Paho
    // suite's test_flow_control2): the broker answers 0x93 and, closing, reads what still comes.
    let b = TestBroker::start_with("mqtt:\n  receive_maximum: 5\n");
    let c = Raw::v5(b.tcp, "flood").await;
    let (all_written, first) = write_while_reading(c.stream, qos2_flood(1, 20_000)).await;
    match first {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED)
        }
        other => panic!("expected DISCONNECT 0x93, got {other:?}"),
    }
    assert!(
        all_written,
        "the broker reset the connection instead of draining it"
    );
}

#[tokio::test]
async fn a_refused_connect_followed_by_packets_still_gets_its_connack() {
    let b = TestBroker::start();
    let mut c = connect_v5("pipelined");
    c.will = Some(tessera_broker::codec::Will {
        topic: "a/+".into(),
        payload: bytes::Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let mut bytes = bytes::BytesMut::new();
    tessera_broker::codec::encode(
        &Packet::Connect(Box::new(c)),
        tessera_broker::codec::Version::V5,
        &mut bytes,
    );
    bytes.extend_from_slice(&qos2_flood(1, 20_000));
    let stream = tokio::net::TcpStream::connect(b.tcp).await.unwrap();
    let (all_written, first) = write_while_reading(stream, bytes.to_vec()).await;
    match first {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, ReasonCode::TOPIC_NAME_INVALID),
        other => panic!("expected CONNACK 0x90, got {other:?}"),
    }
    assert!(
        all_written,
        "the broker reset the connection instead of draining it"
    );
}

#[tokio::test]
async fn connack_respects_the_clients_maximum_packet_size() {
    let b = TestBroker::start_with("mqtt:\n  max_qos: 1\n");
    let refused = |max: Option<u32>| {
        let mut c = connect_v5("small");
        c.properties.maximum_packet_size = max;
        c.will = Some(tessera_broker::codec::Will {
            topic: "w".into(),
            payload: bytes::Bytes::new(),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Default::default(),
        });
        c
    };
    // Without a limit the refusal carries its Reason String...
    let (_, ack) = Raw::connect(b.tcp, refused(None)).await;
    assert_eq!(ack.reason_code, ReasonCode::QOS_NOT_SUPPORTED);
    assert!(ack.properties.reason_string.is_some());
    // ...which a 20-byte limit cannot hold: the same CONNACK without it (MQTT-3.2.2-19).
    let (mut s, ack) = Raw::connect(b.tcp, refused(Some(20))).await;
    assert_eq!(ack.reason_code, ReasonCode::QOS_NOT_SUPPORTED);
    assert_eq!(ack.properties.reason_string, None);
    s.expect_closed().await;
    // A successful CONNACK in less room: its optional properties go, the flags a client reads
    // the same when absent first, then Topic Alias Maximum and Maximum Packet Size.
    let sized = |max: u32| {
        let mut c = connect_v5("small");
        c.properties.maximum_packet_size = Some(max);
        c
    };
    let size = |ack: &tessera_broker::codec::ConnAck| {
        let mut buf = bytes::BytesMut::new();
        let v5 = tessera_broker::codec::Version::V5;
        tessera_broker::codec::encode(&Packet::ConnAck(ack.clone()), v5, &mut buf);
        buf.len()
    };
    let (_, full) = Raw::connect(b.tcp, connect_v5("full")).await;
    assert!(full.properties.maximum_packet_size.is_some());
    assert_eq!(full.properties.retain_available, Some(1));
    // Receive Maximum 100 and Maximum QoS 1 (this broker's) stay: 10 bytes at least.
    for max in 10..=size(&full) as u32 {
        let (_, ack) = Raw::connect(b.tcp, sized(max)).await;
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
        assert!(size(&ack) <= max as usize, "{max}: {ack:?}");
        let p = &ack.properties;
        assert_eq!(
            (p.receive_maximum, p.maximum_qos),
            (Some(100), Some(1)),
            "{max}"
        );
        if p.retain_available.is_some() || p.topic_alias_maximum.is_some() {
            assert!(p.maximum_packet_size.is_some(), "{max}: {ack:?}");
        }
    }
    let (_, ack) = Raw::connect(b.tcp, sized(10)).await;
    assert_eq!(ack.properties.maximum_packet_size, None, "{ack:?}");
    // An assigned client identifier must be sent: with no room for it, no CONNACK at all
    // (MQTT-3.1.2-25), and nothing of that client stays.
    let mut c = connect_v5("");
    c.properties.maximum_packet_size = Some(10);
    let mut raw = Raw::open(b.tcp).await;
    raw.send(&Packet::Connect(Box::new(c))).await;
    assert!(
        raw.try_recv().await.is_none(),
        "no CONNACK larger than 10 bytes"
    );
    let (_, ack) = Raw::connect(b.tcp, connect_v5("small")).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert!(!ack.session_present);
}

#[tokio::test]
async fn packets_sent_right_behind_connect_are_handled_at_once() {
    // CONNECT, SUBSCRIBE and PINGREQ in one write, as a pipelining client sends them: the
    // SUBACK and PINGRESP come without the client sending anything more.
    let b = TestBroker::start();
    let mut bytes = bytes::BytesMut::new();
    let v5 = tessera_broker::codec::Version::V5;
    tessera_broker::codec::encode(
        &Packet::Connect(Box::new(connect_v5("eager"))),
        v5,
        &mut bytes,
    );
    tessera_broker::codec::encode(
        &Packet::Subscribe(tessera_broker::codec::Subscribe {
            packet_id: 7,
            properties: Default::default(),
            filters: vec![("t".into(), Default::default())],
        }),
        v5,
        &mut bytes,
    );
    tessera_broker::codec::encode(&Packet::PingReq, v5, &mut bytes);
    let mut c = Raw::open(b.tcp).await;
    c.send_bytes(&bytes).await;
    assert!(
        matches!(c.recv().await, Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::SUCCESS)
    );
    assert!(matches!(c.recv().await, Some(Packet::SubAck(a)) if a.packet_id == 7));
    assert!(matches!(c.recv().await, Some(Packet::PingResp)));
}

//! The limits an operator sets in `mqtt:` (control characters, topic length and levels,
//! subscriptions per client, retained messages, inbound rate), each answered with the reason
//! code the standard names, and the log's escaping of whatever is accepted.

use std::time::{Duration, Instant};

use tessera_broker::codec::{Packet, QoS, ReasonCode, Will};

use crate::harness::TestBroker;
use crate::raw::{Raw, connect_v5, publish};

/// The acknowledgement of the QoS 1 publish with identifier `pid`.
async fn puback(c: &mut Raw, pid: u16) -> ReasonCode {
    loop {
        match c.recv().await {
            Some(Packet::PubAck(a)) if a.packet_id == pid => return a.reason_code,
            Some(Packet::PubAck(_)) | Some(Packet::Publish(_)) => continue,
            other => panic!("expected PUBACK {pid}, got {other:?}"),
        }
    }
}

fn will(topic: &str) -> Option<Will> {
    Some(Will {
        topic: topic.into(),
        payload: bytes::Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    })
}

#[tokio::test]
async fn control_characters_are_refused_by_default_with_the_named_codes() {
    let b = TestBroker::start();
    let (_, ack) = Raw::connect(b.tcp, connect_v5("line\nbreak")).await;
    assert_eq!(ack.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    let mut c = connect_v5("named");
    c.username = Some("bell\u{7}".into());
    let (_, ack) = Raw::connect(b.tcp, c).await;
    assert_eq!(ack.reason_code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    let mut c = connect_v5("willing");
    c.will = will("alarm/\u{85}");
    let (_, ack) = Raw::connect(b.tcp, c).await;
    assert_eq!(ack.reason_code, ReasonCode::TOPIC_NAME_INVALID);

    let mut s = Raw::v5(b.tcp, "sub").await;
    s.subscribe("t/#", QoS::AtLeastOnce).await;
    let mut c = Raw::v5(b.tcp, "pub").await;
    c.publish("t/\u{1b}[2J", b"x", QoS::AtLeastOnce, 1).await;
    assert_eq!(puback(&mut c, 1).await, ReasonCode::TOPIC_NAME_INVALID);
    assert_eq!(
        c.subscribe_with("t/\u{7f}", Default::default(), None).await,
        vec![ReasonCode::TOPIC_FILTER_INVALID]
    );
    // The connection stays, and a clean topic goes through; the refused one never arrived.
    c.publish("t/ok", b"y", QoS::AtLeastOnce, 2).await;
    assert_eq!(puback(&mut c, 2).await, ReasonCode::SUCCESS);
    assert_eq!(&s.next_publish().await.topic[..], "t/ok");
}

#[tokio::test]
async fn accepted_control_characters_cannot_forge_a_log_line() {
    let b = TestBroker::start_with("mqtt:\n  allow_control_characters: true\n");
    let forged = "2026-12-02T00:00:00.000000Z  INFO tessera: forged";
    let id = format!("dev\n{forged}");
    let (mut c, ack) = Raw::connect(b.tcp, connect_v5(&id)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    c.publish("x", b"", QoS::AtLeastOnce, 1).await;
    puback(&mut c, 1).await;
    drop(c);
    assert!(
        b.wait_log("dev\\n2026-12-02", Duration::from_secs(10)),
        "{}",
        b.log_text()
    );
    assert!(
        !b.lines().iter().any(|l| l.starts_with(forged)),
        "a client identifier started a log line"
    );
}

#[tokio::test]
async fn topic_length_and_levels_are_bounded() {
    let b = TestBroker::start_with("mqtt:\n  max_topic_length: 16\n  max_topic_levels: 3\n");
    let mut c = Raw::v5(b.tcp, "deep").await;
    c.publish("a/b/c/d", b"x", QoS::AtLeastOnce, 1).await;
    assert_eq!(puback(&mut c, 1).await, ReasonCode::TOPIC_NAME_INVALID);
    c.publish("abcdefghijklmnopq", b"x", QoS::AtLeastOnce, 2)
        .await;
    assert_eq!(puback(&mut c, 2).await, ReasonCode::TOPIC_NAME_INVALID);
    c.publish("a/b/c", b"x", QoS::AtLeastOnce, 3).await;
    assert_eq!(puback(&mut c, 3).await, ReasonCode::NO_MATCHING_SUBSCRIBERS);
    for f in ["+/+/+/+", "abcdefghijklmnop/#"] {
        assert_eq!(
            c.subscribe_with(f, Default::default(), None).await,
            vec![ReasonCode::TOPIC_FILTER_INVALID],
            "{f}"
        );
    }
    assert_eq!(
        c.subscribe_with("+/+/#", Default::default(), None).await,
        vec![ReasonCode::SUCCESS]
    );
    // A shared subscription is measured by its inner filter.
    assert_eq!(
        c.subscribe_with("$share/group/a/+/c", Default::default(), None)
            .await,
        vec![ReasonCode::SUCCESS]
    );
    assert_eq!(
        c.subscribe_with("$share/g/a/b/c/d", Default::default(), None)
            .await,
        vec![ReasonCode::TOPIC_FILTER_INVALID]
    );
}

#[tokio::test]
async fn subscriptions_per_client_are_bounded() {
    let b = TestBroker::start_with("mqtt:\n  max_subscriptions: 2\n");
    let mut c = Raw::v5(b.tcp, "greedy").await;
    for f in ["a", "b"] {
        assert_eq!(
            c.subscribe_with(f, Default::default(), None).await,
            vec![ReasonCode::SUCCESS]
        );
    }
    assert_eq!(
        c.subscribe_with("c", Default::default(), None).await,
        vec![ReasonCode::QUOTA_EXCEEDED]
    );
    // Replacing one it has is not a new one.
    assert_eq!(
        c.subscribe_with("a", Default::default(), None).await,
        vec![ReasonCode::SUCCESS]
    );
    c.send(&Packet::Unsubscribe(tessera_broker::codec::Unsubscribe {
        packet_id: 7,
        properties: Default::default(),
        filters: vec!["b".into()],
    }))
    .await;
    assert!(matches!(c.recv().await, Some(Packet::UnsubAck(_))));
    assert_eq!(
        c.subscribe_with("c", Default::default(), None).await,
        vec![ReasonCode::SUCCESS]
    );
}

#[tokio::test]
async fn retained_messages_are_bounded_in_count_and_bytes() {
    let b = TestBroker::start_with(
        "sys:\n  interval: 0\nmqtt:\n  max_retained_messages: 2\n  max_retained_bytes: 100\n",
    );
    let mut c = Raw::v5(b.tcp, "keeper").await;
    let retained = |topic: &str, payload: &[u8], pid| {
        let mut p = publish(topic, payload, QoS::AtLeastOnce, pid);
        p.retain = true;
        Packet::Publish(p)
    };
    c.send(&retained("r/1", b"one", 1)).await;
    assert_eq!(puback(&mut c, 1).await, ReasonCode::NO_MATCHING_SUBSCRIBERS);
    c.send(&retained("r/2", b"two", 2)).await;
    assert_eq!(puback(&mut c, 2).await, ReasonCode::NO_MATCHING_SUBSCRIBERS);
    c.send(&retained("r/3", b"three", 3)).await;
    assert_eq!(
        puback(&mut c, 3).await,
        ReasonCode::QUOTA_EXCEEDED,
        "a third topic"
    );
    c.send(&retained("r/1", &[b'x'; 100], 4)).await;
    assert_eq!(
        puback(&mut c, 4).await,
        ReasonCode::QUOTA_EXCEEDED,
        "past 100 bytes"
    );
    c.send(&retained("r/1", b"uno", 5)).await;
    assert_eq!(
        puback(&mut c, 5).await,
        ReasonCode::NO_MATCHING_SUBSCRIBERS,
        "a replacement"
    );
    // Clearing one makes room.
    c.send(&retained("r/2", b"", 6)).await;
    puback(&mut c, 6).await;
    c.send(&retained("r/3", b"three", 7)).await;
    assert_eq!(puback(&mut c, 7).await, ReasonCode::NO_MATCHING_SUBSCRIBERS);
    let mut s = Raw::v5(b.tcp, "reader").await;
    s.subscribe("r/#", QoS::AtMostOnce).await;
    let mut got = vec![
        s.next_publish().await.payload.to_vec(),
        s.next_publish().await.payload.to_vec(),
    ];
    got.sort();
    assert_eq!(got, vec![b"three".to_vec(), b"uno".to_vec()]);
    s.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn the_inbound_rate_limit_slows_a_client_and_loses_nothing() {
    let b = TestBroker::start_with("mqtt:\n  max_inbound_messages_per_second: 50\n");
    let mut s = Raw::v5(b.tcp, "counter").await;
    s.subscribe("rate", QoS::AtLeastOnce).await;
    let mut c = Raw::v5(b.tcp, "eager").await;
    let start = Instant::now();
    // One second's burst (50), then 100 more at 50 per second: about 2 s, whatever the pace
    // the client sends at.
    let mut all = bytes::BytesMut::new();
    for pid in 1..=150u16 {
        let p = publish("rate", &pid.to_be_bytes(), QoS::AtLeastOnce, pid);
        tessera_broker::codec::encode(&Packet::Publish(p), c.version, &mut all);
    }
    c.send_bytes(&all).await;
    for pid in 1..=150u16 {
        assert_eq!(puback(&mut c, pid).await, ReasonCode::SUCCESS);
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "150 messages at 50/s took {took:?}"
    );
    for pid in 1..=150u16 {
        assert_eq!(
            &s.next_publish().await.payload[..],
            &pid.to_be_bytes(),
            "in order, none lost"
        );
    }
}

#[tokio::test]
async fn the_inbound_byte_rate_limit_shapes_large_messages() {
    let b = TestBroker::start_with("mqtt:\n  max_inbound_bytes_per_second: 20000\n");
    let mut c = Raw::v5(b.tcp, "bulky").await;
    let start = Instant::now();
    // 60 messages of 1 KiB: 20 KB pass at once, the other 40 KB at 20 KB/s.
    let mut all = bytes::BytesMut::new();
    for pid in 1..=60u16 {
        let p = publish("bulk", &[b'x'; 1024], QoS::AtLeastOnce, pid);
        tessera_broker::codec::encode(&Packet::Publish(p), c.version, &mut all);
    }
    c.send_bytes(&all).await;
    for pid in 1..=60u16 {
        assert_eq!(
            puback(&mut c, pid).await,
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        );
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "61 KB at 20 KB/s took {took:?}"
    );
}

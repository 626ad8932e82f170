//! MQTT 5.0 features one by one: retained messages, shared subscriptions, topic aliases,
//! subscription identifiers, No Local, flow control, packet size limits, keep-alive, and the
//! capabilities CONNACK advertises.

use std::time::Duration;

use tessera_broker::codec::{
    Packet, Properties, PubResp, QoS, ReasonCode, RetainHandling, SubscriptionOptions, Version,
};

use crate::harness::TestBroker;
use crate::raw::{Raw, connect_v5, publish};

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..Default::default()
    }
}

#[tokio::test]
async fn retained_messages_with_every_retain_handling() {
    let b = TestBroker::start();
    let mut publ = Raw::v5(b.tcp, "pub").await;
    let mut m = publish("r/a", b"kept", QoS::AtLeastOnce, 1);
    m.retain = true;
    publ.send(&Packet::Publish(m)).await;
    publ.recv().await;

    let mut s = Raw::v5(b.tcp, "s").await;
    // Handling 0: sent at every subscribe, with RETAIN set.
    s.subscribe_with("r/+", opts(QoS::AtLeastOnce), None).await;
    let p = s.next_publish().await;
    assert!(p.retain && &p.payload[..] == b"kept");
    // Handling 1: only when the subscription is new.
    let rh1 = SubscriptionOptions {
        retain_handling: RetainHandling::OnNewSubscription,
        ..opts(QoS::AtLeastOnce)
    };
    s.subscribe_with("r/+", rh1, None).await;
    s.expect_silence(Duration::from_millis(300)).await;
    s.subscribe_with("r/#", rh1, None).await;
    assert!(s.next_publish().await.retain);
    // Handling 2: never.
    let rh2 = SubscriptionOptions {
        retain_handling: RetainHandling::Never,
        ..opts(QoS::AtLeastOnce)
    };
    s.subscribe_with("+/a", rh2, None).await;
    s.expect_silence(Duration::from_millis(300)).await;

    // Live messages: RETAIN cleared unless Retain As Published.
    let mut live = Raw::v5(b.tcp, "live").await;
    live.subscribe_with("r/a", opts(QoS::AtMostOnce), None)
        .await;
    live.next_publish().await; // the retained one
    let mut rap = Raw::v5(b.tcp, "rap").await;
    let o = SubscriptionOptions {
        retain_as_published: true,
        retain_handling: RetainHandling::Never,
        ..opts(QoS::AtMostOnce)
    };
    rap.subscribe_with("r/a", o, None).await;
    let mut m = publish("r/a", b"new", QoS::AtMostOnce, 0);
    m.retain = true;
    publ.send(&Packet::Publish(m)).await;
    assert!(!live.next_publish().await.retain);
    assert!(rap.next_publish().await.retain);

    // An empty retained payload deletes it.
    let mut del = publish("r/a", b"", QoS::AtLeastOnce, 2);
    del.retain = true;
    publ.send(&Packet::Publish(del)).await;
    publ.recv().await;
    let mut late = Raw::v5(b.tcp, "late").await;
    late.subscribe_with("r/#", opts(QoS::AtMostOnce), None)
        .await;
    late.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn retained_via_mosquitto_tools() {
    let b = TestBroker::start();
    let port = b.tcp.port().to_string();
    let out = crate::clients::mosquitto_pub(&[
        "-p",
        &port,
        "-t",
        "status/door",
        "-m",
        "open",
        "-r",
        "-q",
        "1",
    ])
    .await;
    assert!(out.status.success());
    let out = tokio::process::Command::new("mosquitto_sub")
        .args(["-p", &port, "-t", "status/#", "-C", "1", "-v", "-W", "5"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "status/door open"
    );
}

#[tokio::test]
async fn shared_subscription_delivers_each_message_to_one_member() {
    let b = TestBroker::start();
    let mut m1 = Raw::v5(b.tcp, "m1").await;
    let mut m2 = Raw::v5(b.tcp, "m2").await;
    let mut plain = Raw::v5(b.tcp, "plain").await;
    m1.subscribe("$share/workers/jobs/+", QoS::AtLeastOnce)
        .await;
    m2.subscribe("$share/workers/jobs/+", QoS::AtLeastOnce)
        .await;
    plain.subscribe("jobs/+", QoS::AtLeastOnce).await;
    let mut publ = Raw::v5(b.tcp, "pub").await;
    for i in 1..=10u16 {
        publ.publish("jobs/a", &i.to_be_bytes(), QoS::AtLeastOnce, i)
            .await;
        publ.recv().await;
    }
    let mut seen = Vec::new();
    for _ in 0..10 {
        let p = plain.next_publish().await;
        seen.push(p.payload.clone());
    }
    let mut n1 = 0;
    let mut n2 = 0;
    loop {
        tokio::select! {
            r = m1.recv_within(Duration::from_millis(500)) => match r {
                Ok(Some(Packet::Publish(p))) => { n1 += 1; m1.send(&Packet::PubAck(PubResp { packet_id: p.packet_id.unwrap(), ..Default::default() })).await; }
                _ => break,
            },
            r = m2.recv_within(Duration::from_millis(500)) => match r {
                Ok(Some(Packet::Publish(p))) => { n2 += 1; m2.send(&Packet::PubAck(PubResp { packet_id: p.packet_id.unwrap(), ..Default::default() })).await; }
                _ => break,
            },
        }
    }
    assert_eq!(
        n1 + n2,
        10,
        "each message to exactly one member ({n1} + {n2})"
    );
    assert!(n1 > 0 && n2 > 0, "both members served ({n1}, {n2})");
}

#[tokio::test]
async fn topic_aliases_in_both_directions() {
    let b = TestBroker::start();
    let mut c = connect_v5("aliased");
    c.properties.topic_alias_maximum = Some(5);
    let (mut sub, _) = Raw::connect(b.tcp, c).await;
    sub.subscribe("long/topic/name", QoS::AtMostOnce).await;
    let mut publ = Raw::v5(b.tcp, "pub").await;
    // Client → broker: set alias 1, then publish by alias only.
    let mut first = publish("long/topic/name", b"1", QoS::AtMostOnce, 0);
    first.properties.topic_alias = Some(1);
    publ.send(&Packet::Publish(first)).await;
    let mut by_alias = publish("", b"2", QoS::AtMostOnce, 0);
    by_alias.properties.topic_alias = Some(1);
    publ.send(&Packet::Publish(by_alias)).await;
    // Broker → client: the first carries topic and alias, the second the alias alone.
    let p1 = sub.next_publish().await;
    assert_eq!(
        (p1.topic.as_str(), &p1.payload[..]),
        ("long/topic/name", &b"1"[..])
    );
    let alias = p1.properties.topic_alias.expect("broker assigns an alias");
    let p2 = sub.next_publish().await;
    assert_eq!(p2.topic.as_str(), "");
    assert_eq!(p2.properties.topic_alias, Some(alias));
    assert_eq!(&p2.payload[..], b"2");
    // An unknown alias is a protocol error; an alias above the maximum is 0x94.
    let mut unknown = publish("", b"3", QoS::AtMostOnce, 0);
    unknown.properties.topic_alias = Some(2);
    publ.send(&Packet::Publish(unknown)).await;
    publ.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;
    let mut publ = Raw::v5(b.tcp, "pub2").await;
    let mut big = publish("t", b"4", QoS::AtMostOnce, 0);
    big.properties.topic_alias = Some(1000);
    publ.send(&Packet::Publish(big)).await;
    publ.expect_disconnect(ReasonCode::TOPIC_ALIAS_INVALID)
        .await;
}

#[tokio::test]
async fn subscription_identifiers_and_no_local() {
    let b = TestBroker::start();
    let mut c = Raw::v5(b.tcp, "ids").await;
    c.subscribe_with("a/+", opts(QoS::AtMostOnce), Some(11))
        .await;
    c.subscribe_with("a/#", opts(QoS::AtLeastOnce), Some(22))
        .await;
    let nl = SubscriptionOptions {
        no_local: true,
        ..opts(QoS::AtMostOnce)
    };
    c.subscribe_with("own", nl, None).await;
    let mut other = Raw::v5(b.tcp, "other").await;
    other.publish("a/b", b"x", QoS::AtLeastOnce, 1).await;
    // One copy, with the highest QoS and both identifiers (MQTT-3.3.4-2, -3).
    let p = c.next_publish().await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    let mut ids = p.properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, vec![11, 22]);
    c.expect_silence(Duration::from_millis(300)).await;
    // No Local: its own publish is not sent back.
    c.publish("own", b"mine", QoS::AtMostOnce, 0).await;
    c.expect_silence(Duration::from_millis(300)).await;
    other.publish("own", b"theirs", QoS::AtMostOnce, 0).await;
    assert_eq!(&c.next_publish().await.payload[..], b"theirs");
}

#[tokio::test]
async fn client_receive_maximum_limits_messages_in_flight() {
    let b = TestBroker::start();
    let mut c = connect_v5("slow");
    c.properties.receive_maximum = Some(2);
    let (mut sub, _) = Raw::connect(b.tcp, c).await;
    sub.subscribe("f", QoS::AtLeastOnce).await;
    let mut publ = Raw::v5(b.tcp, "pub").await;
    for i in 1..=5u16 {
        publ.publish("f", &[i as u8], QoS::AtLeastOnce, i).await;
    }
    let mut pids = Vec::new();
    for _ in 0..2 {
        let Some(Packet::Publish(p)) = sub.recv().await else {
            panic!()
        };
        pids.push(p.packet_id.unwrap());
    }
    sub.expect_silence(Duration::from_millis(400)).await;
    sub.send(&Packet::PubAck(PubResp {
        packet_id: pids[0],
        ..Default::default()
    }))
    .await;
    let Some(Packet::Publish(p)) = sub.recv().await else {
        panic!()
    };
    assert_eq!(&p.payload[..], &[3]);
    sub.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn broker_receive_maximum_is_advertised_and_enforced() {
    let b = TestBroker::start_with("mqtt:\n  receive_maximum: 2\n");
    let (mut c, ack) = Raw::connect(b.tcp, connect_v5("greedy")).await;
    assert_eq!(ack.properties.receive_maximum, Some(2));
    for i in 1..=3u16 {
        c.publish("g", b"x", QoS::ExactlyOnce, i).await;
    }
    assert!(matches!(c.recv().await, Some(Packet::PubRec(_))));
    assert!(matches!(c.recv().await, Some(Packet::PubRec(_))));
    c.expect_disconnect(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED)
        .await;
}

#[tokio::test]
async fn maximum_packet_size_in_both_directions() {
    let b = TestBroker::start_with("mqtt:\n  max_packet_size: 1024\n");
    let (mut big, ack) = Raw::connect(b.tcp, connect_v5("big")).await;
    assert_eq!(ack.properties.maximum_packet_size, Some(1024));
    // The client's limit: a message larger than it is not sent; smaller ones are.
    let mut c = connect_v5("small");
    c.properties.maximum_packet_size = Some(100);
    let (mut small, _) = Raw::connect(b.tcp, c).await;
    small.subscribe("p", QoS::AtMostOnce).await;
    big.publish("p", &[1u8; 200], QoS::AtMostOnce, 0).await;
    big.publish("p", b"fits", QoS::AtMostOnce, 0).await;
    assert_eq!(&small.next_publish().await.payload[..], b"fits");
    // The broker's limit: 0x95 and only that connection closes.
    big.publish("p", &[0u8; 2000], QoS::AtMostOnce, 0).await;
    big.expect_disconnect(ReasonCode::PACKET_TOO_LARGE).await;
    big = Raw::v5(b.tcp, "after").await;
    big.publish("p", b"still served", QoS::AtMostOnce, 0).await;
    assert_eq!(&small.next_publish().await.payload[..], b"still served");
}

#[tokio::test]
async fn keep_alive_is_enforced_at_one_and_a_half_times() {
    let b = TestBroker::start();
    let mut c = connect_v5("sleepy");
    c.keep_alive = 1;
    let (mut s, _) = Raw::connect(b.tcp, c).await;
    let start = std::time::Instant::now();
    s.expect_disconnect(ReasonCode::KEEP_ALIVE_TIMEOUT).await;
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(1400), "{waited:?}");
    // Pings keep a connection alive.
    let mut c = connect_v5("pinger");
    c.keep_alive = 1;
    let (mut s, _) = Raw::connect(b.tcp, c).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.send(&Packet::PingReq).await;
        assert_eq!(s.recv().await, Some(Packet::PingResp));
    }
}

#[tokio::test]
async fn connack_advertises_capabilities_truthfully() {
    let b = TestBroker::start_with(
        "mqtt:\n  max_qos: 1\n  retain_available: false\n  shared_subscriptions: false\n  max_keep_alive: 30\n  topic_alias_maximum: 7\n",
    );
    let mut c = connect_v5("");
    c.keep_alive = 0;
    let (mut s, ack) = Raw::connect(b.tcp, c).await;
    let p = &ack.properties;
    assert_eq!(p.maximum_qos, Some(1));
    assert_eq!(p.retain_available, Some(0));
    assert_eq!(p.shared_subscription_available, Some(0));
    assert_eq!(p.wildcard_subscription_available, Some(1));
    assert_eq!(p.subscription_identifier_available, Some(1));
    assert_eq!(p.server_keep_alive, Some(30));
    assert_eq!(p.topic_alias_maximum, Some(7));
    assert!(
        p.assigned_client_identifier
            .as_deref()
            .is_some_and(|id| !id.is_empty())
    );
    // What it says it does not support, it refuses.
    let codes = s
        .subscribe_with("$share/g/t", opts(QoS::AtMostOnce), None)
        .await;
    assert_eq!(codes, vec![ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED]);
    let codes = s.subscribe_with("t", opts(QoS::ExactlyOnce), None).await;
    assert_eq!(codes, vec![ReasonCode::GRANTED_QOS_1]);
    let mut m = publish("t", b"x", QoS::AtMostOnce, 0);
    m.retain = true;
    s.send(&Packet::Publish(m)).await;
    s.expect_disconnect(ReasonCode::RETAIN_NOT_SUPPORTED).await;
}

#[tokio::test]
async fn invalid_filters_get_0x8f_and_sys_topics_are_read_only() {
    let b = TestBroker::start();
    let mut s = Raw::v5(b.tcp, "f").await;
    assert_eq!(
        s.subscribe_with("a/#/b", opts(QoS::AtMostOnce), None).await,
        vec![ReasonCode::TOPIC_FILTER_INVALID]
    );
    assert_eq!(
        s.subscribe_with("$share/g", opts(QoS::AtMostOnce), None)
            .await,
        vec![ReasonCode::TOPIC_FILTER_INVALID]
    );
    s.publish("$SYS/broker/uptime", b"fake", QoS::AtLeastOnce, 1)
        .await;
    assert!(
        matches!(s.recv().await, Some(Packet::PubAck(a)) if a.reason_code == ReasonCode::NOT_AUTHORIZED)
    );
    // `#` does not match `$SYS` topics; `$SYS/#` does.
    s.subscribe_with("#", opts(QoS::AtMostOnce), None).await;
    let mut sys = Raw::v5(b.tcp, "sys").await;
    sys.subscribe_with("$SYS/broker/version", opts(QoS::AtMostOnce), None)
        .await;
    let p = sys.next_publish().await;
    assert!(String::from_utf8_lossy(&p.payload).starts_with("tessera "));
    s.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn v311_client_gets_no_5_0_properties() {
    let b = TestBroker::start();
    let mut c = connect_v5("three");
    c.version = Version::V3_1_1;
    let (mut s, ack) = Raw::connect(b.tcp, c).await;
    assert_eq!(ack.properties, Properties::default());
    s.subscribe("x", QoS::ExactlyOnce).await;
    s.publish("x", b"self", QoS::AtLeastOnce, 3).await;
    let mut got_ack = false;
    let mut got_msg = false;
    while !(got_ack && got_msg) {
        match s.recv().await {
            Some(Packet::PubAck(a)) => got_ack = a.packet_id == 3,
            Some(Packet::Publish(p)) => {
                got_msg = true;
                assert_eq!(p.qos, QoS::AtLeastOnce);
                s.send(&Packet::PubAck(PubResp {
                    packet_id: p.packet_id.unwrap(),
                    ..Default::default()
                }))
                .await;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn mqtt_3_1_clients_are_served() {
    let b = TestBroker::start();
    let mut c = connect_v5("old31");
    c.version = Version::V3_1;
    let (mut s, ack) = Raw::connect(b.tcp, c.clone()).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    s.subscribe("legacy", QoS::AtLeastOnce).await;
    let mut publ = Raw::v5(b.tcp, "pub").await;
    publ.publish("legacy", b"still here", QoS::AtLeastOnce, 1)
        .await;
    assert_eq!(&s.next_publish().await.payload[..], b"still here");
    // 3.1 has no empty client identifier: return code 2.
    c.client_id = "".into();
    let (_s, ack) = Raw::connect(b.tcp, c).await;
    assert_eq!(
        ack.reason_code,
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        "3.1 return code 2: identifier rejected"
    );
}

#[tokio::test]
async fn client_may_not_send_subscription_identifiers_or_wildcard_response_topics() {
    let b = TestBroker::start();
    let mut c = Raw::v5(b.tcp, "sneaky").await;
    let mut p = publish("t", b"x", QoS::AtMostOnce, 0);
    p.properties.subscription_identifiers = vec![5];
    c.send(&Packet::Publish(p)).await;
    c.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;
    let mut c = Raw::v5(b.tcp, "sneaky2").await;
    let mut p = publish("t", b"x", QoS::AtMostOnce, 0);
    p.properties.response_topic = Some("replies/#".into());
    c.send(&Packet::Publish(p)).await;
    c.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn request_response_properties_travel_unaltered() {
    let b = TestBroker::start();
    let mut s = Raw::v5(b.tcp, "responder").await;
    s.subscribe("req", QoS::AtMostOnce).await;
    let mut c = Raw::v5(b.tcp, "requester").await;
    let mut p = publish("req", b"{}", QoS::AtMostOnce, 0);
    p.properties.response_topic = Some("replies/requester".into());
    p.properties.correlation_data = Some(bytes::Bytes::from_static(b"id-42"));
    p.properties.content_type = Some("application/json".into());
    p.properties.payload_format_indicator = Some(1);
    p.properties.user_properties = vec![
        ("a".into(), "1".into()),
        ("b".into(), "2".into()),
        ("a".into(), "3".into()),
    ];
    c.send(&Packet::Publish(p.clone())).await;
    let got = s.next_publish().await;
    assert_eq!(got.properties.response_topic, p.properties.response_topic);
    assert_eq!(
        got.properties.correlation_data,
        p.properties.correlation_data
    );
    assert_eq!(got.properties.content_type, p.properties.content_type);
    assert_eq!(got.properties.payload_format_indicator, Some(1));
    assert_eq!(
        got.properties.user_properties, p.properties.user_properties,
        "order kept"
    );
    // A payload declared UTF-8 that is not: 0x99 for QoS 1.
    let mut bad = publish("req", &[0xFF, 0xFE], QoS::AtLeastOnce, 9);
    bad.properties.payload_format_indicator = Some(1);
    c.send(&Packet::Publish(bad)).await;
    assert!(
        matches!(c.recv().await, Some(Packet::PubAck(a)) if a.reason_code == ReasonCode::PAYLOAD_FORMAT_INVALID)
    );
}

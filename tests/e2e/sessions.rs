//! Sessions across connections: resume with queued messages, redelivery with DUP, takeover,
//! wills with and without delay, session and message expiry.

use std::time::Duration;

use bytes::Bytes;
use tessera_broker::codec::{
    Disconnect, Packet, Properties, PubResp, QoS, ReasonCode, Version, Will,
};

use crate::harness::TestBroker;
use crate::raw::{Raw, connect_v5};

fn persistent(id: &str, expiry: u32) -> tessera_broker::codec::Connect {
    let mut c = connect_v5(id);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(expiry);
    c
}

#[tokio::test]
async fn session_resumes_with_messages_queued_while_offline() {
    let b = TestBroker::start();
    let (mut sub, ack) = Raw::connect(b.tcp, persistent("keeper", 300)).await;
    assert!(!ack.session_present);
    sub.subscribe("q/+", QoS::AtLeastOnce).await;
    sub.send(&Packet::Disconnect(Disconnect::default())).await;
    sub.expect_closed().await;

    let mut publ = Raw::v5(b.tcp, "pub").await;
    for i in 1..=3u16 {
        publ.publish("q/x", format!("m{i}").as_bytes(), QoS::AtLeastOnce, i)
            .await;
        assert!(
            matches!(publ.recv().await, Some(Packet::PubAck(a)) if a.reason_code == ReasonCode::SUCCESS)
        );
    }
    // QoS 0 is not queued for an offline session (mosquitto's default too).
    publ.publish("q/x", b"dropped", QoS::AtMostOnce, 0).await;
    // The broker handles a connection's packets in order: once PINGRESP is back, the QoS 0
    // publish was routed while the session was still offline.
    publ.send(&Packet::PingReq).await;
    assert_eq!(publ.recv().await, Some(Packet::PingResp));

    let (mut sub, ack) = Raw::connect(b.tcp, persistent("keeper", 300)).await;
    assert!(ack.session_present);
    for i in 1..=3 {
        let p = sub.next_publish().await;
        assert_eq!(&p.payload[..], format!("m{i}").as_bytes());
        assert_eq!(p.qos, QoS::AtLeastOnce);
    }
    sub.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn unacknowledged_messages_are_resent_with_dup_on_resume() {
    let b = TestBroker::start();
    let (mut sub, _) = Raw::connect(b.tcp, persistent("dupper", 300)).await;
    sub.subscribe("d", QoS::ExactlyOnce).await;
    let mut publ = Raw::v5(b.tcp, "pub").await;
    publ.publish("d", b"one", QoS::AtLeastOnce, 1).await;
    let Some(Packet::Publish(first)) = sub.recv().await else {
        panic!()
    };
    assert!(!first.dup);
    // Drop the connection without acknowledging.
    drop(sub);
    let (mut sub, ack) = Raw::connect(b.tcp, persistent("dupper", 300)).await;
    assert!(ack.session_present);
    let Some(Packet::Publish(again)) = sub.recv().await else {
        panic!()
    };
    assert!(again.dup, "resent PUBLISH must have DUP set");
    assert_eq!(again.packet_id, first.packet_id);
    assert_eq!(&again.payload[..], b"one");
}

#[tokio::test]
async fn qos2_flow_completes_and_is_delivered_once() {
    let b = TestBroker::start();
    let mut sub = Raw::v5(b.tcp, "sub").await;
    sub.subscribe("e", QoS::ExactlyOnce).await;
    let mut publ = Raw::v5(b.tcp, "pub").await;
    publ.publish("e", b"once", QoS::ExactlyOnce, 7).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(r)) if r.packet_id == 7));
    // A resend before PUBREL must not be delivered twice.
    let mut again = crate::raw::publish("e", b"once", QoS::ExactlyOnce, 7);
    again.dup = true;
    publ.send(&Packet::Publish(again)).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(r)) if r.packet_id == 7));
    publ.send(&Packet::PubRel(PubResp {
        packet_id: 7,
        ..Default::default()
    }))
    .await;
    assert!(
        matches!(publ.recv().await, Some(Packet::PubComp(r)) if r.packet_id == 7 && r.reason_code == ReasonCode::SUCCESS)
    );

    let Some(Packet::Publish(p)) = sub.recv().await else {
        panic!()
    };
    assert_eq!(p.qos, QoS::ExactlyOnce);
    let pid = p.packet_id.unwrap();
    sub.send(&Packet::PubRec(PubResp {
        packet_id: pid,
        ..Default::default()
    }))
    .await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(r)) if r.packet_id == pid));
    sub.send(&Packet::PubComp(PubResp {
        packet_id: pid,
        ..Default::default()
    }))
    .await;
    sub.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn takeover_disconnects_the_old_connection_with_0x8e() {
    let b = TestBroker::start();
    let (mut first, _) = Raw::connect(b.tcp, persistent("same", 300)).await;
    first.subscribe("t", QoS::AtLeastOnce).await;
    let (mut second, ack) = Raw::connect(b.tcp, persistent("same", 300)).await;
    assert!(ack.session_present);
    first
        .expect_disconnect(ReasonCode::SESSION_TAKEN_OVER)
        .await;
    // The subscription moved with the session.
    let mut publ = Raw::v5(b.tcp, "pub").await;
    publ.publish("t", b"to-second", QoS::AtLeastOnce, 1).await;
    assert_eq!(&second.next_publish().await.payload[..], b"to-second");
}

fn with_will(id: &str, delay: Option<u32>, expiry: u32) -> tessera_broker::codec::Connect {
    let mut c = persistent(id, expiry);
    c.clean_start = true;
    c.will = Some(Will {
        topic: "wills/x".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: delay,
            ..Default::default()
        },
    });
    c
}

#[tokio::test]
async fn will_is_published_on_abnormal_close_but_not_on_normal_disconnect() {
    let b = TestBroker::start();
    let mut watcher = Raw::v5(b.tcp, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;

    let (mut normal, _) = Raw::connect(b.tcp, with_will("normal", None, 0)).await;
    normal
        .send(&Packet::Disconnect(Disconnect::default()))
        .await;
    normal.expect_closed().await;
    watcher.expect_silence(Duration::from_millis(400)).await;

    let (abrupt, _) = Raw::connect(b.tcp, with_will("abrupt", None, 0)).await;
    drop(abrupt);
    assert_eq!(&watcher.next_publish().await.payload[..], b"gone");

    let (mut asked, _) = Raw::connect(b.tcp, with_will("asked", None, 0)).await;
    asked
        .send(&Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::DISCONNECT_WITH_WILL,
            properties: Properties::default(),
        }))
        .await;
    assert_eq!(&watcher.next_publish().await.payload[..], b"gone");
}

#[tokio::test]
async fn delayed_will_is_cancelled_by_reconnect_and_sent_otherwise() {
    let b = TestBroker::start();
    let mut watcher = Raw::v5(b.tcp, "watcher").await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;

    // Reconnecting within the delay cancels the will.
    let (c, _) = Raw::connect(b.tcp, with_will("delayed", Some(2), 60)).await;
    drop(c);
    let (_back, ack) = Raw::connect(b.tcp, persistent("delayed", 60)).await;
    assert!(ack.session_present);
    watcher.expect_silence(Duration::from_millis(2600)).await;

    // Without a reconnect it arrives after the delay.
    let (c, _) = Raw::connect(b.tcp, with_will("delayed2", Some(1), 60)).await;
    let closed = std::time::Instant::now();
    drop(c);
    assert_eq!(&watcher.next_publish().await.payload[..], b"gone");
    assert!(
        closed.elapsed() >= Duration::from_millis(900),
        "{:?}",
        closed.elapsed()
    );
}

#[tokio::test]
async fn session_expires_after_its_interval() {
    let b = TestBroker::start();
    let (mut s, _) = Raw::connect(b.tcp, persistent("brief", 1)).await;
    s.subscribe("x", QoS::AtLeastOnce).await;
    drop(s);
    assert!(
        b.wait_log("session expired client_id=brief", Duration::from_secs(10)),
        "{}",
        b.log_text()
    );
    let (_s, ack) = Raw::connect(b.tcp, persistent("brief", 1)).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn expired_messages_are_not_delivered_and_expiry_is_counted_down() {
    let b = TestBroker::start();
    let (mut s, _) = Raw::connect(b.tcp, persistent("exp", 300)).await;
    s.subscribe("m", QoS::AtLeastOnce).await;
    s.send(&Packet::Disconnect(Disconnect::default())).await;
    s.expect_closed().await;
    let mut publ = Raw::v5(b.tcp, "pub").await;
    let mut short = crate::raw::publish("m", b"short", QoS::AtLeastOnce, 1);
    short.properties.message_expiry_interval = Some(1);
    let mut long = crate::raw::publish("m", b"long", QoS::AtLeastOnce, 2);
    long.properties.message_expiry_interval = Some(100);
    publ.send(&Packet::Publish(short)).await;
    publ.send(&Packet::Publish(long)).await;
    publ.recv().await;
    publ.recv().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut s, _) = Raw::connect(b.tcp, persistent("exp", 300)).await;
    let p = s.next_publish().await;
    assert_eq!(&p.payload[..], b"long");
    let left = p.properties.message_expiry_interval.unwrap();
    assert!((1..100).contains(&left), "remaining expiry {left}");
    s.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn v311_clean_session_false_keeps_subscriptions() {
    let b = TestBroker::start();
    let mut c = connect_v5("old-style");
    c.version = Version::V3_1_1;
    c.clean_start = false;
    let (mut s, ack) = Raw::connect(b.tcp, c.clone()).await;
    assert!(!ack.session_present);
    s.subscribe("k", QoS::AtLeastOnce).await;
    drop(s);
    let mut publ = Raw::v5(b.tcp, "pub").await;
    publ.publish("k", b"kept", QoS::AtLeastOnce, 1).await;
    publ.recv().await;
    let (mut s, ack) = Raw::connect(b.tcp, c).await;
    assert!(ack.session_present);
    assert_eq!(&s.next_publish().await.payload[..], b"kept");
}

#[tokio::test]
async fn will_to_a_topic_the_closing_session_subscribes_reaches_it_later() {
    let b = TestBroker::start();
    let mut c = with_will("selfish", None, 60);
    c.clean_start = false;
    let (mut s, _) = Raw::connect(b.tcp, c).await;
    s.subscribe("wills/#", QoS::AtLeastOnce).await;
    drop(s);
    // The broker stays responsive, and the will waits in the session.
    let (mut back, ack) = Raw::connect(b.tcp, persistent("selfish", 60)).await;
    assert!(ack.session_present);
    assert_eq!(&back.next_publish().await.payload[..], b"gone");
}

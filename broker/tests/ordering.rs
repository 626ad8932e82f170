//! Order as a client sees it when the broker routes QoS 0 messages in runs: messages from one
//! publisher arrive in the order sent across topics and QoS levels, and a packet takes effect
//! only after everything the client published before it has been routed.

mod common;

use common::Raw;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tessera_broker::Server;
use tessera_broker::auth::AnonymousOnly;
use tessera_broker::codec::{Packet, Properties, Publish, QoS, Subscribe, SubscriptionOptions};
use tessera_config::Transport;

async fn start() -> (Server, SocketAddr, tempfile::TempDir) {
    start_with("").await
}

async fn start_with(extra: &str) -> (Server, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let auth = Arc::new(AnonymousOnly {
        allow_anonymous: true,
    });
    let server = Server::start(&common::config(dir.path(), extra), auth)
        .await
        .unwrap();
    let addr = server.addr(Transport::Tcp).unwrap();
    (server, addr, dir)
}

async fn connect(addr: SocketAddr, id: &str) -> Raw {
    Raw::connect(addr, id, true, 0).await.0
}

fn subscribe(filter: &str) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![(
            filter.into(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )],
    })
}

fn publish(topic: &str, qos: QoS, n: u32) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(n as u16 + 1),
        properties: Properties::default(),
        payload: Bytes::from(n.to_be_bytes().to_vec()),
    })
}

#[tokio::test]
async fn one_publishers_messages_arrive_in_order_across_topics_and_qos() {
    let (_server, addr, _dir) = start().await;
    let mut sub = connect(addr, "sub").await;
    sub.send(subscribe("order/#")).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));

    // One write, so the broker reads long runs of QoS 0 messages broken by other topics and QoS.
    let mut packets = Vec::new();
    for n in 0..300u32 {
        let (topic, qos) = match n {
            150 => ("order/b", QoS::AtLeastOnce),
            200..=229 => ("order/c", QoS::AtMostOnce),
            n if n % 50 == 7 => ("order/d", QoS::ExactlyOnce),
            _ => ("order/a", QoS::AtMostOnce),
        };
        packets.push(publish(topic, qos, n));
    }
    let mut publ = connect(addr, "pub").await;
    publ.send_all(&packets).await;

    let mut seen = Vec::new();
    while seen.len() < 300 {
        match sub.recv().await {
            Some(Packet::Publish(p)) => {
                seen.push(u32::from_be_bytes(p.payload[..].try_into().unwrap()));
                if let Some(id) = p.packet_id {
                    sub.send(Packet::PubAck(tessera_broker::codec::PubResp {
                        packet_id: id,
                        ..Default::default()
                    }))
                    .await;
                }
            }
            Some(Packet::PubRel(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, (0..300).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_subscription_sent_after_a_publish_does_not_see_it() {
    let (_server, addr, _dir) = start().await;
    let mut c = connect(addr, "self").await;
    c.send_all(&[
        publish("own/t", QoS::AtMostOnce, 1),
        subscribe("own/t"),
        publish("own/t", QoS::AtMostOnce, 2),
        Packet::PingReq,
    ])
    .await;
    // The first message a client gets is the one published after its subscription (a
    // PINGRESP may come before it: answers are not ordered with deliveries).
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
    let first = loop {
        match c.recv().await {
            Some(Packet::Publish(p)) => break p,
            Some(Packet::PingResp) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(&first.payload[..], &2u32.to_be_bytes());
}

#[tokio::test]
async fn a_burst_larger_than_a_small_queue_reaches_a_subscriber_that_keeps_up() {
    // Eight queued messages at most: a burst of 200 QoS 0 messages in one write must still be
    // delivered whole to a subscriber that reads, because the publisher yields to it in time.
    let (_server, addr, _dir) = start_with("mqtt:\n  max_queued_messages: 8\n").await;
    let mut sub = connect(addr, "sub").await;
    sub.send(subscribe("burst/t")).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let packets: Vec<Packet> = (0..200)
        .map(|n| publish("burst/t", QoS::AtMostOnce, n))
        .collect();
    let mut publ = connect(addr, "pub").await;
    publ.send_all(&packets).await;
    publ.send(Packet::PingReq).await;
    assert_eq!(publ.recv().await, Some(Packet::PingResp));
    let mut seen = Vec::new();
    while seen.len() < 200 {
        let Some(Packet::Publish(p)) = sub.recv().await else {
            panic!("expected PUBLISH")
        };
        seen.push(u32::from_be_bytes(p.payload[..].try_into().unwrap()));
    }
    assert_eq!(seen, (0..200).collect::<Vec<_>>());
}

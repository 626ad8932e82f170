//! The engine's side of a cluster, in process, on the recording fake (`RecordingPeers`): what
//! the engine tells the other nodes, what it waits for, and what it does with what they send
//! (through `PeerHandle`). Absence is shown by order, not by waiting: a PINGREQ sent after a
//! packet is answered at once, so a PINGRESP that arrives before an acknowledgement proves the
//! acknowledgement is held back; a message published after another reaches a subscriber after
//! it, so a later message that arrives first proves the earlier one was not delivered.

mod common;

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use common::Raw;
use common::cluster::{
    forwarded, from_peer, next_payload, node, peer_id, publish, subscribe, subscribed,
};
use tessera_broker::cluster::{ClusterCounts, Recorded};
use tessera_broker::codec::{
    self, Disconnect, Packet, Properties, QoS, ReasonCode, Unsubscribe, Version,
};

#[tokio::test]
async fn a_puback_waits_until_the_cluster_stored_the_message_and_says_when_it_could_not() {
    let n = node().await;
    let (mut c, _) = Raw::connect(n.addr, "pub", true, 0).await;

    c.send(publish("a/b", QoS::AtLeastOnce, 1, "one")).await;
    let t = forwarded(&n, "one").await.expect("QoS 1 has a ticket");
    c.send(Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp), "PUBACK held back");
    n.handle.settle(t, true);
    let Some(Packet::PubAck(ack)) = c.recv().await else {
        panic!("no PUBACK")
    };
    // Stored for the other nodes, where subscribers may be: not "no matching subscribers".
    assert_eq!((ack.packet_id, ack.reason_code), (1, ReasonCode::SUCCESS));

    c.send(publish("a/b", QoS::AtLeastOnce, 2, "two")).await;
    let t = forwarded(&n, "two").await.unwrap();
    n.handle.settle(t, false);
    let Some(Packet::PubAck(ack)) = c.recv().await else {
        panic!("no PUBACK")
    };
    assert_eq!(ack.reason_code, ReasonCode::UNSPECIFIED_ERROR);
    assert!(
        ack.properties
            .reason_string
            .as_deref()
            .is_some_and(|s| s.contains("other nodes"))
    );
    // QoS 0 goes out with no ticket; `$` topics stay on their node.
    c.send(publish("$local/x", QoS::AtMostOnce, 0, "dollar"))
        .await;
    c.send(publish("a/b", QoS::AtMostOnce, 0, "zero")).await;
    assert_eq!(forwarded(&n, "zero").await, None);
    assert!(
        !n.peers
            .log()
            .iter()
            .any(|r| r.publish().is_some_and(|p| &p.payload[..] == b"dollar"))
    );
    n.server.shutdown().await;
}

#[tokio::test]
async fn a_message_from_another_node_is_routed_here_and_never_forwarded_again() {
    let n = node().await;
    let (mut sub, _) = Raw::connect(n.addr, "sub", true, 0).await;
    subscribed(&n, &mut sub, 1, &["x/#"]).await;
    n.handle
        .publish(
            from_peer("x/1", QoS::AtLeastOnce, "remote"),
            1_700_000_000_000,
            peer_id(1),
        )
        .unwrap();
    assert_eq!(next_payload(&mut sub).await, "remote");
    assert!(!n.peers.log().iter().any(|r| r.publish().is_some()));
    // Not a PUBLISH: refused, nothing routed.
    let mut b = BytesMut::new();
    codec::encode(&Packet::PingReq, Version::V5, &mut b);
    assert!(n.handle.publish(b.freeze(), 0, peer_id(2)).is_err());
    n.server.shutdown().await;
}

#[tokio::test]
async fn subscriptions_are_reported_as_interest_and_a_suback_waits_for_its_ticket() {
    let n = node().await;
    let (mut c, _) = Raw::connect(n.addr, "c", true, 0).await;
    c.send(subscribe(7, &["a/+", "$share/g/b/#"])).await;
    let t = match n
        .peers
        .wait_for(|r| matches!(r, Recorded::InterestTicket(_)))
        .await
    {
        Recorded::InterestTicket(t) => t,
        _ => unreachable!(),
    };
    let log = n.peers.log();
    let interest = |filter: &str, group: Option<&str>, added| Recorded::Interest {
        filter: filter.into(),
        group: group.map(Into::into),
        added,
    };
    let at = |r: &Recorded| log.iter().position(|x| x == r);
    let ticket_at = at(&Recorded::InterestTicket(t)).unwrap();
    assert!(at(&interest("a/+", None, true)).unwrap() < ticket_at);
    assert!(at(&interest("b/#", Some("g"), true)).unwrap() < ticket_at);

    c.send(Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp), "SUBACK held back");
    n.handle.settle(t, true);
    let Some(Packet::SubAck(ack)) = c.recv().await else {
        panic!("no SUBACK")
    };
    assert_eq!(ack.packet_id, 7);

    c.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 8,
        properties: Properties::default(),
        filters: vec!["a/+".into()],
    }))
    .await;
    assert!(matches!(c.recv().await, Some(Packet::UnsubAck(_))));
    assert!(n.peers.log().contains(&interest("a/+", None, false)));
    // The session ends with the connection (expiry 0): its last entry goes.
    c.send(Packet::Disconnect(Disconnect::default())).await;
    n.peers
        .wait_for(|r| *r == interest("b/#", Some("g"), false))
        .await;
    n.server.shutdown().await;
}

#[tokio::test]
async fn shared_groups_are_left_to_the_cluster_until_it_cannot_pick_their_member() {
    let n = node().await;
    let mut members = Vec::new();
    for id in ["m1", "m2"] {
        let (mut m, _) = Raw::connect(n.addr, id, true, 0).await;
        subscribed(&n, &mut m, 1, &["$share/g/t", "sync"]).await;
        members.push(m);
    }
    let (mut p, _) = Raw::connect(n.addr, "p", true, 0).await;
    // Published here, the group's message goes to the cluster, not to a member here: each
    // member's next message is the one published after it.
    p.send(publish("t", QoS::AtMostOnce, 0, "group")).await;
    p.send(publish("sync", QoS::AtMostOnce, 0, "sync")).await;
    for m in &mut members {
        assert_eq!(next_payload(m).await, "sync");
    }
    // The cluster picked this node: one member here gets it.
    assert!(
        n.handle
            .publish_to_group("g", "t", from_peer("t", QoS::AtMostOnce, "picked"))
            .unwrap()
    );
    p.send(publish("sync", QoS::AtMostOnce, 0, "sync")).await;
    let got: Vec<String> = futures_in_turn(&mut members).await;
    assert_eq!(got.iter().filter(|s| *s == "picked").count(), 1, "{got:?}");
    // NATS lost: this node gives the group's messages to its own members, as when alone.
    n.handle.set_groups_across_nodes(false);
    p.send(publish("t", QoS::AtMostOnce, 0, "alone")).await;
    p.send(publish("sync", QoS::AtMostOnce, 0, "sync")).await;
    let got: Vec<String> = futures_in_turn(&mut members).await;
    assert_eq!(got.iter().filter(|s| *s == "alone").count(), 1, "{got:?}");
    n.server.shutdown().await;
}

/// Each member's messages up to its next "sync", all members together.
async fn futures_in_turn(members: &mut [Raw]) -> Vec<String> {
    let mut got = Vec::new();
    for m in members {
        loop {
            let s = next_payload(m).await;
            if s == "sync" {
                break;
            }
            got.push(s);
        }
    }
    got
}

#[tokio::test]
async fn a_connection_taken_over_on_another_node_ends_here() {
    let n = node().await;
    let (mut c, _) = Raw::connect(n.addr, "dup", true, 0).await;
    let earlier = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(n.handle.taken_over("dup", earlier), 0, "older than ours");
    assert_eq!(n.handle.taken_over("dup", SystemTime::now()), 1);
    let Some(Packet::Disconnect(d)) = c.recv().await else {
        panic!("no DISCONNECT")
    };
    assert_eq!(d.reason_code, ReasonCode::SESSION_TAKEN_OVER);
    n.server.shutdown().await;
}

#[tokio::test]
async fn the_cluster_counts_reach_the_metrics() {
    let n = node().await;
    let counts = ClusterCounts {
        nodes_up: 2,
        nodes_known: 3,
        clients: 40,
        forward_dropped: 1,
    };
    n.peers.set_counts(counts);
    assert_eq!(n.server.handle().metrics().cluster, Some(counts));
    n.server.shutdown().await;
}

/// The reports of `client`'s will, in order: whether there was one and its connection was
/// gone, and its delay.
fn will_reports(log: &[Recorded], client: &str) -> Vec<Option<(bool, u32)>> {
    log.iter()
        .filter_map(|r| match r {
            Recorded::Will { client_id, will } if client_id == client => {
                Some(will.as_ref().map(|(_, delay, lost)| (*lost, *delay)))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_will_is_reported_while_it_may_be_published_and_cleared_once_it_was() {
    let n = node().await;
    let connect = |clean: bool, delay: u32| {
        let mut will = codec::Will {
            topic: "wills/w".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        };
        will.properties.will_delay_interval = Some(delay);
        Packet::Connect(Box::new(codec::Connect {
            version: Version::V5,
            clean_start: clean,
            keep_alive: 0,
            properties: Properties {
                session_expiry_interval: Some(60),
                ..Default::default()
            },
            client_id: "w".into(),
            will: Some(will),
            username: None,
            password: None,
        }))
    };
    // Connected with a will of 1 s: reported attached, with its delay and the PUBLISH the
    // other nodes would send.
    let mut c = Raw::open(n.addr).await;
    c.send(connect(true, 1)).await;
    assert!(matches!(c.recv().await, Some(Packet::ConnAck(_))));
    let r = n
        .peers
        .wait_for(|r| matches!(r, Recorded::Will { .. }))
        .await;
    let Recorded::Will {
        will: Some((packet, 1, false)),
        ..
    } = &r
    else {
        panic!("{r:?}")
    };
    let Ok(Some(Packet::Publish(p))) =
        codec::decode(&mut BytesMut::from(&packet[..]), Version::V5, usize::MAX)
    else {
        panic!("not a PUBLISH")
    };
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("wills/w", &b"gone"[..])
    );
    // Its connection dropped: pending, then published after 1 s and cleared.
    drop(c);
    n.peers
        .wait_until(|log| (will_reports(log, "w").len() >= 3).then_some(()))
        .await;
    assert_eq!(
        will_reports(&n.peers.log(), "w"),
        [Some((false, 1)), Some((true, 1)), None]
    );
    // Back with a will, then a normal DISCONNECT: attached, then cleared.
    let mut c = Raw::open(n.addr).await;
    c.send(connect(false, 30)).await;
    assert!(matches!(c.recv().await, Some(Packet::ConnAck(_))));
    c.send(Packet::Disconnect(Disconnect::default())).await;
    assert_eq!(c.recv().await, None);
    n.peers
        .wait_until(|log| (will_reports(log, "w").len() >= 5).then_some(()))
        .await;
    assert_eq!(
        will_reports(&n.peers.log(), "w")[3..],
        [Some((false, 30)), None]
    );
    n.server.shutdown().await;
}

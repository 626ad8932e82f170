//! The engine's side of a cluster, in process, on the recording fake (`RecordingPeers`): what
//! the engine tells the other nodes, what it waits for, and what it does with what they send
//! (through `PeerHandle`). Absence is shown by order, not by waiting: a PINGREQ sent after a
//! packet is answered at once, so a PINGRESP that arrives before an acknowledgement proves the
//! acknowledgement is held back; a message published after another reaches a subscriber after
//! it, so a later message that arrives first proves the earlier one was not delivered.

mod common;

use common::Raw;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use tessera_broker::Server;
use tessera_broker::auth::AnonymousOnly;
use tessera_broker::cluster::{
    ClusterCounts, ClusterId, MovedSession, PeerHandle, Recorded, RecordingPeers,
};
use tessera_broker::codec::{
    self, Disconnect, Packet, Properties, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions,
    Unsubscribe, Version,
};
use tessera_broker::store::{EntryState, StoredSubscription};
use tessera_config::Transport;

struct Node {
    server: Server,
    addr: SocketAddr,
    peers: Arc<RecordingPeers>,
    handle: PeerHandle,
    _dir: tempfile::TempDir,
}

async fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let auth = Arc::new(AnonymousOnly {
        allow_anonymous: true,
    });
    let server = Server::start(&common::config(dir.path(), ""), auth)
        .await
        .unwrap();
    let addr = server.addr(Transport::Tcp).unwrap();
    let peers = Arc::new(RecordingPeers::default());
    let handle = server.handle().peer_handle();
    assert!(handle.join(peers.clone()));
    Node {
        server,
        addr,
        peers,
        handle,
        _dir: dir,
    }
}

fn publish(topic: &str, qos: QoS, pid: u16, payload: &'static str) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(pid),
        properties: Properties::default(),
        payload: Bytes::from_static(payload.as_bytes()),
    })
}

/// The cluster name of message `seq` of another node, read from the stream at `seq`.
fn peer_id(seq: u64) -> ClusterId {
    ClusterId {
        origin: 77,
        seq,
        stream_seq: seq,
    }
}

/// A PUBLISH as another node forwards it.
fn from_peer(topic: &str, qos: QoS, payload: &'static str) -> Bytes {
    let mut b = BytesMut::new();
    codec::encode(&publish(topic, qos, 1, payload), Version::V5, &mut b);
    b.freeze()
}

fn subscribe(pid: u16, filters: &[&str]) -> Packet {
    subscribe_at(pid, filters, QoS::AtLeastOnce)
}

fn subscribe_at(pid: u16, filters: &[&str], qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid,
        properties: Properties::default(),
        filters: filters
            .iter()
            .map(|f| {
                (
                    (*f).into(),
                    SubscriptionOptions {
                        qos,
                        ..Default::default()
                    },
                )
            })
            .collect(),
    })
}

/// Subscribes and waits for the SUBACK, settling its ticket as the other nodes would.
async fn subscribed(n: &Node, c: &mut Raw, pid: u16, filters: &[&str]) {
    subscribed_at(n, c, pid, filters, QoS::AtLeastOnce).await;
}

async fn subscribed_at(n: &Node, c: &mut Raw, pid: u16, filters: &[&str], qos: QoS) {
    let before = interest_tickets(&n.peers.log()).len();
    c.send(subscribe_at(pid, filters, qos)).await;
    let t = n
        .peers
        .wait_until(|log| interest_tickets(log).get(before).copied())
        .await;
    n.handle.settle(t, true);
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
}

fn interest_tickets(log: &[Recorded]) -> Vec<u64> {
    log.iter()
        .filter_map(|r| match r {
            Recorded::InterestTicket(t) => Some(*t),
            _ => None,
        })
        .collect()
}

/// The payload of the next PUBLISH, acknowledging it if QoS 1.
async fn next_payload(c: &mut Raw) -> String {
    loop {
        match c.recv().await {
            Some(Packet::Publish(p)) => {
                if let Some(pid) = p.packet_id {
                    c.send(Packet::PubAck(codec::PubResp {
                        packet_id: pid,
                        ..Default::default()
                    }))
                    .await;
                }
                return String::from_utf8(p.payload.to_vec()).unwrap();
            }
            Some(_) => continue,
            None => panic!("connection closed"),
        }
    }
}

/// The ticket of the forwarded message with this payload, once recorded.
async fn forwarded(n: &Node, payload: &'static str) -> Option<u64> {
    let r = n
        .peers
        .wait_for(|r| {
            r.publish()
                .is_some_and(|p| &p.payload[..] == payload.as_bytes())
        })
        .await;
    let Recorded::Forward { ticket, .. } = r else {
        unreachable!()
    };
    ticket
}

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
async fn a_session_claimed_from_another_node_opens_here_with_its_subscriptions() {
    let n = node().await;
    n.peers.offer(
        "dev",
        MovedSession {
            expiry_interval: 60,
            subscriptions: vec![StoredSubscription {
                filter: "a/#".into(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
                subscription_id: None,
            }],
            carried: None,
        },
    );
    let (mut dev, present) = Raw::connect(n.addr, "dev", false, 60).await;
    assert!(present, "Session Present for a session moved here");
    n.peers
        .wait_for(|r| *r == Recorded::Resumed("dev".into()))
        .await;
    let log = n.peers.log();
    let at = |r: &Recorded| log.iter().position(|x| x == r).unwrap();
    let claimed = at(&Recorded::Claimed {
        client_id: "dev".into(),
        clean_start: false,
        expiry_interval: 60,
    });
    let connected = at(&Recorded::Connected {
        client_id: "dev".into(),
        clean_start: false,
    });
    assert!(claimed < connected && connected < at(&Recorded::Resumed("dev".into())));
    let snapshot = n.handle.session_snapshot("dev").unwrap();
    assert_eq!(snapshot.subscriptions[0].filter, "a/#");
    assert_eq!(snapshot.offline_since, None);
    assert_eq!(
        n.handle.persistent_sessions(),
        vec![Arc::<str>::from("dev")]
    );

    // The replay: a message queued for it elsewhere reaches it alone.
    assert!(
        n.handle
            .deliver_to(
                "dev",
                from_peer("a/1", QoS::AtLeastOnce, "replayed"),
                5,
                peer_id(3)
            )
            .unwrap()
    );
    assert!(
        !n.handle
            .deliver_to(
                "dev",
                from_peer("b/1", QoS::AtLeastOnce, "not matched"),
                5,
                peer_id(4)
            )
            .unwrap()
    );
    assert_eq!(next_payload(&mut dev).await, "replayed");

    // The session moves on: its connection here ends with 0x8E.
    let last = n.handle.release_session("dev", false).unwrap();
    assert_eq!(last.expiry_interval, 60);
    let Some(Packet::Disconnect(d)) = dev.recv().await else {
        panic!("no DISCONNECT")
    };
    assert_eq!(d.reason_code, ReasonCode::SESSION_TAKEN_OVER);
    assert!(n.handle.session_snapshot("dev").is_none());
    n.server.shutdown().await;
}

#[tokio::test]
async fn a_snapshot_names_when_the_oldest_unacknowledged_message_was_published() {
    let n = node().await;
    let (mut keeper, _) = Raw::connect(n.addr, "keeper", true, 300).await;
    subscribed(&n, &mut keeper, 1, &["k"]).await;
    keeper.send(Packet::Disconnect(Disconnect::default())).await;
    assert!(keeper.recv().await.is_none());
    let before = SystemTime::now();
    // From another node, at the stream's time, and from a client here, at the time it is
    // published: the older one counts.
    n.handle
        .publish(
            from_peer("k", QoS::AtLeastOnce, "remote"),
            1_000,
            peer_id(5),
        )
        .unwrap();
    let (mut p, _) = Raw::connect(n.addr, "p", true, 0).await;
    p.send(publish("k", QoS::AtLeastOnce, 1, "local")).await;
    let t = forwarded(&n, "local").await.unwrap();
    n.handle.settle(t, true);
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    let s = n.handle.session_snapshot("keeper").unwrap();
    assert_eq!(s.oldest_unacked_ms, Some(1_000));
    assert!(s.offline_since.is_some_and(|t| t <= before));
    n.server.shutdown().await;
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

fn resp(packet_id: u16) -> codec::PubResp {
    codec::PubResp {
        packet_id,
        ..Default::default()
    }
}

/// The next PUBLISH's packet identifier, payload and DUP flag.
async fn next_publish(c: &mut Raw) -> (u16, String, bool) {
    loop {
        match c.recv().await {
            Some(Packet::Publish(p)) => {
                let payload = String::from_utf8(p.payload.to_vec()).unwrap();
                return (p.packet_id.unwrap_or(0), payload, p.dup);
            }
            Some(_) => continue,
            None => panic!("connection closed"),
        }
    }
}

#[tokio::test]
async fn a_session_handed_over_carries_its_queue_its_qos2_states_and_what_was_routed() {
    let a = node().await;
    let (mut c, _) = Raw::connect(a.addr, "mover", true, 60).await;
    subscribed_at(&a, &mut c, 1, &["m/#"], QoS::ExactlyOnce).await;
    for (seq, payload) in [(1, "released"), (2, "sent")] {
        a.handle
            .publish(from_peer("m/x", QoS::ExactlyOnce, payload), 0, peer_id(seq))
            .unwrap();
    }
    // The first is released (PUBREC; the PUBREL is not completed), the second only sent.
    let (p1, first, _) = next_publish(&mut c).await;
    assert_eq!(first, "released");
    let (p2, second, _) = next_publish(&mut c).await;
    assert_eq!(second, "sent");
    c.send(Packet::PubRec(resp(p1))).await;
    assert!(matches!(c.recv().await, Some(Packet::PubRel(r)) if r.packet_id == p1));
    // The client's own QoS 2 message, received and not released.
    c.send(publish("up", QoS::ExactlyOnce, 9, "up")).await;
    let t = forwarded(&a, "up").await.unwrap();
    a.handle.settle(t, true);
    assert!(matches!(c.recv().await, Some(Packet::PubRec(r)) if r.packet_id == 9));
    // Gone; one more is queued for it.
    drop(c);
    a.peers
        .wait_for(|r| matches!(r, Recorded::SessionChanged(id) if id == "mover"))
        .await;
    a.handle
        .publish(from_peer("m/x", QoS::ExactlyOnce, "queued"), 0, peer_id(3))
        .unwrap();

    let last = a.handle.release_session("mover", false).unwrap();
    let carried = last.carried.unwrap();
    assert_eq!(carried.incoming_qos2, [9]);
    assert_eq!(carried.cut.peers_routed, 3);
    let states: Vec<_> = carried.entries.iter().map(|e| e.state).collect();
    assert_eq!(
        states,
        [
            EntryState::Released(p1),
            EntryState::Sent(p2),
            EntryState::Queued
        ]
    );

    // Opened on node b: the in-flight message again under its identifier (DUP), the
    // release again, then the queued one; the client's release of 9 is known there.
    let b = node().await;
    b.peers.offer(
        "mover",
        MovedSession {
            expiry_interval: 60,
            subscriptions: last.subscriptions,
            carried: Some(carried),
        },
    );
    let (mut c, present) = Raw::connect(b.addr, "mover", false, 60).await;
    assert!(present);
    let mut got = Vec::new();
    while got.len() < 3 {
        match c.recv().await {
            Some(Packet::Publish(p)) => got.push(format!(
                "{} {} dup={}",
                String::from_utf8_lossy(&p.payload),
                p.packet_id == Some(p2),
                p.dup
            )),
            Some(Packet::PubRel(r)) => got.push(format!("pubrel {}", r.packet_id == p1)),
            other => panic!("{other:?}"),
        }
    }
    got.sort();
    assert_eq!(
        got,
        [
            "pubrel true",
            "queued false dup=false",
            "sent true dup=true"
        ]
    );
    c.send(Packet::PubRel(resp(9))).await;
    let Some(Packet::PubComp(done)) = c.recv().await else {
        panic!("no PUBCOMP")
    };
    assert_eq!(done.reason_code, ReasonCode::SUCCESS);

    // While its replay runs, what it was given here is not given again.
    b.handle
        .publish(from_peer("m/x", QoS::AtLeastOnce, "live"), 0, peer_id(4))
        .unwrap();
    assert_eq!(next_payload(&mut c).await, "live");
    let again = from_peer("m/x", QoS::AtLeastOnce, "live");
    assert!(!b.handle.deliver_to("mover", again, 0, peer_id(4)).unwrap());
    let missed = from_peer("m/x", QoS::AtLeastOnce, "missed");
    assert!(b.handle.deliver_to("mover", missed, 0, peer_id(5)).unwrap());
    assert_eq!(next_payload(&mut c).await, "missed");
    b.handle.replayed("mover");
    let after = from_peer("m/x", QoS::AtLeastOnce, "after");
    assert!(b.handle.deliver_to("mover", after, 0, peer_id(4)).unwrap());
    a.server.shutdown().await;
    b.server.shutdown().await;
}

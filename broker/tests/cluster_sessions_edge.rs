//! The engine's half of a persistent session moving between nodes, in process, on the
//! recording fake (`RecordingPeers`): what a claim opens, what a snapshot says, what a session
//! handed over carries, and QoS 2 exactly once across a node that dies (each step reported to
//! the cluster, the packet behind it held until the cluster recorded it, and a session opened
//! from a dead node's record). Absence is shown by order, as in `cluster_edge.rs`.

mod common;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use common::Raw;
use common::cluster::{
    forwarded, from_peer, next_payload, next_publish, node, peer_id, publish, resp,
    settle_qos2_steps, subscribed, subscribed_at,
};
use tessera_broker::cluster::{Carried, CarriedEntry, MovedSession, Qos2Step, Recorded};
use tessera_broker::codec::{Disconnect, Packet, QoS, ReasonCode, SubscriptionOptions};
use tessera_broker::store::{EntryState, StoredSubscription};

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
async fn a_session_handed_over_carries_its_queue_its_qos2_states_and_what_was_routed() {
    let a = node().await;
    settle_qos2_steps(&a);
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
    settle_qos2_steps(&b);
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
    let got: Vec<_> = next_sent(&mut c, 3)
        .await
        .into_iter()
        .map(|(what, pid, dup)| {
            let known = if what == "pubrel" { p1 } else { p2 };
            (what, pid == known, dup)
        })
        .collect();
    assert_eq!(
        got,
        [
            ("pubrel".to_string(), true, false),
            ("queued".to_string(), false, false),
            ("sent".to_string(), true, true)
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

/// The next `n` PUBLISHes and PUBRELs the client gets, sorted: each one's payload (`pubrel`
/// for a PUBREL), packet identifier and DUP flag.
async fn next_sent(c: &mut Raw, n: usize) -> Vec<(String, u16, bool)> {
    let mut got = Vec::new();
    while got.len() < n {
        match c.recv().await {
            Some(Packet::Publish(p)) => got.push((
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.packet_id.unwrap_or(0),
                p.dup,
            )),
            Some(Packet::PubRel(r)) => got.push(("pubrel".to_string(), r.packet_id, false)),
            other => panic!("{other:?}"),
        }
    }
    got.sort();
    got
}

/// The ticket of `client_id`'s first QoS 2 step recorded after `skip` of them that `step`
/// accepts, with its packet identifier.
async fn qos2_step(
    n: &common::cluster::Node,
    client_id: &str,
    skip: usize,
    step: impl Fn(&Qos2Step) -> bool,
) -> (u16, u64) {
    n.peers
        .wait_until(|log| {
            log.iter()
                .filter_map(|r| match r {
                    Recorded::Qos2 {
                        client_id: id,
                        packet_id,
                        step: s,
                        ticket,
                    } if id == client_id => Some((*packet_id, *s, *ticket)),
                    _ => None,
                })
                .skip(skip)
                .find(|(_, s, _)| step(s))
                .map(|(pid, _, t)| (pid, t))
        })
        .await
}

#[tokio::test]
async fn qos2_packets_of_a_persistent_session_leave_once_the_cluster_recorded_each_step() {
    let n = node().await;
    let (mut c, _) = Raw::connect(n.addr, "keeper", true, 60).await;
    subscribed_at(&n, &mut c, 1, &["k/#"], QoS::ExactlyOnce).await;
    n.handle
        .publish(from_peer("k/x", QoS::ExactlyOnce, "one"), 0, peer_id(1))
        .unwrap();
    // Reported as sent under its identifier, with its cluster name; the PUBLISH waits.
    let (pid, ticket) = qos2_step(
        &n,
        "keeper",
        0,
        |s| matches!(s, Qos2Step::Sent { id, .. } if *id == peer_id(1)),
    )
    .await;
    assert_ne!(ticket, 0);
    c.send(Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));
    n.handle.settle(ticket, true);
    assert_eq!(next_publish(&mut c).await, (pid, "one".to_string(), false));
    // PUBREC: reported as released; the PUBREL waits for its ticket.
    c.send(Packet::PubRec(resp(pid))).await;
    let (released, ticket) = qos2_step(&n, "keeper", 1, |s| *s == Qos2Step::Released).await;
    assert_eq!(released, pid);
    c.send(Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));
    n.handle.settle(ticket, true);
    assert!(matches!(c.recv().await, Some(Packet::PubRel(r)) if r.packet_id == pid));
    // PUBCOMP: reported as completed, and nothing waits for that.
    c.send(Packet::PubComp(resp(pid))).await;
    let (completed, ticket) = qos2_step(&n, "keeper", 2, |s| *s == Qos2Step::Completed).await;
    assert_eq!((completed, ticket), (pid, 0));

    // The client's own QoS 2 message: PUBREC once it is stored for the other nodes and the
    // record names its identifier, PUBCOMP once the record lets it go.
    c.send(publish("up", QoS::ExactlyOnce, 9, "up")).await;
    let stored = forwarded(&n, "up").await.unwrap();
    n.handle.settle(stored, true);
    let (published, ticket) = qos2_step(&n, "keeper", 3, |s| *s == Qos2Step::ClientPublished).await;
    assert_eq!(published, 9);
    c.send(Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));
    n.handle.settle(ticket, true);
    assert!(matches!(c.recv().await, Some(Packet::PubRec(r)) if r.packet_id == 9));
    c.send(Packet::PubRel(resp(9))).await;
    let (released, ticket) = qos2_step(&n, "keeper", 4, |s| *s == Qos2Step::ClientReleased).await;
    assert_eq!(released, 9);
    c.send(Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));
    n.handle.settle(ticket, true);
    assert!(matches!(c.recv().await, Some(Packet::PubComp(r)) if r.packet_id == 9));

    // A session that ends with its connection has nothing for another node to take over:
    // nothing is reported, nothing waits.
    let (mut passing, _) = Raw::connect(n.addr, "passing", true, 0).await;
    subscribed_at(&n, &mut passing, 1, &["p/#"], QoS::ExactlyOnce).await;
    n.handle
        .publish(from_peer("p/x", QoS::ExactlyOnce, "two"), 0, peer_id(2))
        .unwrap();
    assert_eq!(next_publish(&mut passing).await.1, "two");
    assert!(
        !n.peers
            .log()
            .iter()
            .any(|r| matches!(r, Recorded::Qos2 { client_id, .. } if client_id == "passing"))
    );
    n.server.shutdown().await;
}

#[tokio::test]
async fn a_session_from_a_dead_nodes_record_resends_what_was_in_flight_and_nothing_it_had() {
    let n = node().await;
    let subscriptions = vec![StoredSubscription {
        filter: "d/#".into(),
        options: SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            ..Default::default()
        },
        subscription_id: Some(4),
    }];
    // What the cluster makes of the dead node's record: message 1 was sent under 7 (read
    // back from the stream), message 2 released under 8, message 3 completed.
    let sent = CarriedEntry::sent_again(
        &subscriptions,
        from_peer("d/x", QoS::ExactlyOnce, "sent"),
        1_000,
        peer_id(1),
        7,
    )
    .unwrap();
    assert_eq!(sent.subscription_ids, [4]);
    let released = CarriedEntry {
        packet: Bytes::new(),
        qos: QoS::ExactlyOnce,
        retain: false,
        subscription_ids: Vec::new(),
        state: EntryState::Released(8),
        published_ms: 1_000,
        id: Some(peer_id(2)),
    };
    let unmatched = from_peer("d/x", QoS::ExactlyOnce, "x");
    assert!(
        CarriedEntry::sent_again(&[], unmatched, 0, peer_id(9), 9).is_none(),
        "no subscription matches"
    );
    n.peers.offer(
        "survivor",
        MovedSession {
            expiry_interval: 60,
            subscriptions,
            carried: Some(Carried {
                entries: vec![sent, released],
                delivered: vec![peer_id(1), peer_id(2), peer_id(3)],
                ..Default::default()
            }),
        },
    );
    let (mut c, present) = Raw::connect(n.addr, "survivor", false, 60).await;
    assert!(present);
    assert_eq!(
        next_sent(&mut c, 2).await,
        [
            ("pubrel".to_string(), 8, false),
            ("sent".to_string(), 7, true)
        ]
    );
    // Neither the replay nor this node's routing gives it a listed message again; what
    // it did not have, it gets.
    for (seq, payload) in [(1, "sent"), (2, "released"), (3, "completed")] {
        let again = from_peer("d/x", QoS::ExactlyOnce, payload);
        assert!(
            !n.handle
                .deliver_to("survivor", again, 0, peer_id(seq))
                .unwrap()
        );
    }
    n.handle
        .publish(
            from_peer("d/x", QoS::ExactlyOnce, "completed"),
            0,
            peer_id(3),
        )
        .unwrap();
    let missed = from_peer("d/x", QoS::ExactlyOnce, "missed");
    assert!(
        n.handle
            .deliver_to("survivor", missed, 0, peer_id(5))
            .unwrap()
    );
    let (_, ticket) = qos2_step(
        &n,
        "survivor",
        0,
        |s| matches!(s, Qos2Step::Sent { id, .. } if id.seq == 5),
    )
    .await;
    n.handle.settle(ticket, true);
    let (pid, payload, dup) = next_publish(&mut c).await;
    assert_eq!((payload.as_str(), dup), ("missed", false));
    assert!(
        pid != 7 && pid != 8,
        "an identifier the client may hold: {pid}"
    );
    n.server.shutdown().await;
}

//! Shared subscriptions across the nodes of a cluster (cluster/src/shared.rs): a group with
//! members on two nodes gets each message once, QoS 0 and QoS 1, while a plain subscription
//! to the same topics gets every one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tessera_broker::codec::{Packet, QoS, ReasonCode};

use crate::cluster_harness::{NatsCluster, recv_acking, three_nodes};
use crate::harness::TestBroker;
use crate::oauth::{cli_token, login};
use crate::raw::Raw;

/// Takes what arrived at `sub` within `t`, acknowledging QoS 1: (payload, QoS) pairs.
async fn take(sub: &mut Raw, t: Duration) -> Vec<(String, QoS)> {
    let mut got = Vec::new();
    while let Ok(Some(Packet::Publish(p))) = recv_acking(sub, t).await {
        got.push((String::from_utf8_lossy(&p.payload).to_string(), p.qos));
    }
    got
}

#[tokio::test]
async fn a_shared_group_with_members_on_two_nodes_gets_each_message_once() {
    let nats = NatsCluster::start();
    let nodes = three_nodes(&nats);
    let token = cli_token(&nodes[0], "bob", "3600", "mqtt");
    let mut members = Vec::new();
    for (i, node) in nodes[..2].iter().enumerate() {
        let mut m = login(node, &format!("worker-{i}"), &token).await;
        m.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce).await;
        members.push(m);
    }
    let mut watcher = login(&nodes[2], "watcher", &token).await;
    watcher.subscribe("jobs/#", QoS::AtLeastOnce).await;
    let mut publisher = login(&nodes[2], "pub", &token).await;

    // The group's way through NATS exists once a probe of each QoS reaches a member.
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let deadline = Instant::now() + Duration::from_secs(20);
        'probe: loop {
            publisher.publish("jobs/probe", b"probe", qos, 9_999).await;
            if qos == QoS::AtLeastOnce {
                assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
            }
            for m in &mut members {
                if take(m, Duration::from_millis(50))
                    .await
                    .iter()
                    .any(|(_, q)| *q == qos)
                {
                    break 'probe;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the group never got a {qos:?} probe"
            );
        }
    }
    for m in &mut members {
        take(m, Duration::from_millis(300)).await;
    }
    take(&mut watcher, Duration::from_millis(300)).await;

    for i in 0..100u16 {
        publisher
            .publish("jobs/q0", format!("q0 {i}").as_bytes(), QoS::AtMostOnce, 0)
            .await;
        publisher
            .publish(
                "jobs/q1",
                format!("q1 {i}").as_bytes(),
                QoS::AtLeastOnce,
                i + 1,
            )
            .await;
        match publisher.recv().await {
            Some(Packet::PubAck(a)) if a.reason_code == ReasonCode::SUCCESS => {}
            other => panic!("{other:?}"),
        }
    }
    // Each member takes its share; the group as a whole gets every message once.
    let mut times: BTreeMap<String, usize> = BTreeMap::new();
    let mut split = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while times.len() < 200 && Instant::now() < deadline {
        for m in &mut members {
            let got = take(m, Duration::from_millis(100)).await;
            split.push(got.len());
            for (payload, _) in got {
                *times.entry(payload).or_default() += 1;
            }
        }
    }
    for m in &mut members {
        for (payload, _) in take(m, Duration::from_millis(500)).await {
            *times.entry(payload).or_default() += 1;
        }
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(times.len(), 200, "the group missed some: {times:?}");
    println!("shared group split between two nodes (per read): {split:?}");
    // A plain subscription beside the group gets every one.
    let mut plain = take(&mut watcher, Duration::from_millis(500)).await;
    plain.sort();
    plain.dedup();
    assert_eq!(plain.len(), 200, "{plain:?}");
}

#[tokio::test]
async fn a_node_that_lost_nats_gives_its_groups_its_own_clients_messages() {
    let mut nats = NatsCluster::start();
    let a = TestBroker::start_secure(&nats.node_config("a", &[0]));
    assert!(
        a.command(&["user", "add", "bob"], "builder\n")
            .status
            .success()
    );
    let token = cli_token(&a, "bob", "3600", "mqtt");
    let mut member = login(&a, "worker", &token).await;
    member
        .subscribe("$share/workers/jobs/#", QoS::AtMostOnce)
        .await;
    let mut publisher = login(&a, "pub", &token).await;
    // Its own server last: killed first, it would let node a reconnect to one of the others
    // (learnt from the cluster) for the moment before they go too.
    for i in [1, 2, 0] {
        nats.kill(i);
    }
    assert!(
        a.wait_log("NATS connection lost", Duration::from_secs(10)),
        "{}",
        a.log_text()
    );
    publisher
        .publish("jobs/local", b"alone", QoS::AtMostOnce, 0)
        .await;
    let got = take(&mut member, Duration::from_secs(2)).await;
    assert_eq!(got, [("alone".to_string(), QoS::AtMostOnce)]);
}

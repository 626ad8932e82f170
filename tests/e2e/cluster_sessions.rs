//! Persistent sessions across the nodes of a cluster (cluster/src/sessions.rs): a session
//! resumes on another node with what was queued for it, an online one is taken over with
//! its subscriptions, and the sessions of a node killed with -9 (at chosen and at random
//! moments) resume elsewhere with none of their acknowledged messages lost.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;

use tessera_broker::codec::{Connect, Packet, QoS, ReasonCode, Will};

use crate::cluster_harness::{
    NatsCluster, receive_all, recv_acking, three_nodes, two_nodes, until_routed,
};
use crate::harness::TestBroker;
use crate::metrics::scrape;
use crate::oauth::{cli_token, login, x_oauth2};
use crate::raw::Raw;

/// The CONNECT of the persistent client `keeper` (an hour of Session Expiry).
fn keeper(token: &str, clean: bool) -> Connect {
    let mut c = x_oauth2("keeper", None, Some(token));
    c.clean_start = clean;
    c.properties.session_expiry_interval = Some(3600);
    c
}

/// Publishes `n` QoS 1 messages (payloads `<topic> <i>`); returns the acknowledged ones.
async fn publish_acked(publisher: &mut Raw, topic: &str, n: u16) -> BTreeSet<String> {
    let mut acked = BTreeSet::new();
    for i in 0..n {
        let payload = format!("{topic} {i}");
        publisher
            .publish(topic, payload.as_bytes(), QoS::AtLeastOnce, i + 1)
            .await;
        match publisher.recv().await {
            Some(Packet::PubAck(a)) if a.reason_code == ReasonCode::SUCCESS => {
                acked.insert(payload);
            }
            other => panic!("message {i}: {other:?}"),
        }
    }
    acked
}

/// `keeper` subscribed to `load/#` on `node`, with the way from `publisher` to it proven.
async fn subscribed_keeper(node: &TestBroker, publisher: &mut Raw, token: &str) -> Raw {
    let mut sub = Raw::connect(node.tcp, keeper(token, true)).await.0;
    sub.subscribe("load/#", QoS::AtLeastOnce).await;
    until_routed(publisher, &mut sub, "load/probe").await;
    sub
}

#[tokio::test]
async fn a_persistent_session_resumes_on_another_node_with_its_queued_messages() {
    let nats = NatsCluster::start();
    let nodes = three_nodes(&nats);
    let token = cli_token(&nodes[0], "bob", "3600", "mqtt");
    let mut publisher = login(&nodes[2], "pub", &token).await;
    let sub = subscribed_keeper(&nodes[0], &mut publisher, &token).await;
    drop(sub);
    // Queued on node a while keeper is away.
    let acked = publish_acked(&mut publisher, "load/m", 200).await;
    let started = Instant::now();
    let (mut sub, ack) = Raw::connect(nodes[1].tcp, keeper(&token, false)).await;
    assert!(ack.session_present, "{ack:?}");
    receive_all(&mut sub, acked).await;
    println!(
        "resume on another node with 200 queued: {} ms",
        started.elapsed().as_millis()
    );
    // Its subscription moved with it: a new message reaches it on node b without a
    // SUBSCRIBE, and node a holds no session for it any more.
    let more = publish_acked(&mut publisher, "load/more", 1).await;
    receive_all(&mut sub, more).await;
    let out = nodes[0].command(&["--json", "session", "list"], "");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!listed.to_string().contains("keeper"), "{listed}");
}

#[tokio::test]
async fn an_online_session_taken_over_on_another_node_keeps_its_subscriptions() {
    let nats = NatsCluster::start();
    let nodes = three_nodes(&nats);
    let token = cli_token(&nodes[0], "bob", "3600", "mqtt");
    let mut publisher = login(&nodes[2], "pub", &token).await;
    let mut first = subscribed_keeper(&nodes[0], &mut publisher, &token).await;
    let (mut second, ack) = Raw::connect(nodes[1].tcp, keeper(&token, false)).await;
    assert!(ack.session_present, "{ack:?}");
    first
        .expect_disconnect(ReasonCode::SESSION_TAKEN_OVER)
        .await;
    let acked = publish_acked(&mut publisher, "load/m", 50).await;
    receive_all(&mut second, acked).await;
    // Clean Start on a third node ends the session: nothing is present there.
    drop(second);
    let (_third, ack) = Raw::connect(nodes[2].tcp, keeper(&token, true)).await;
    assert!(!ack.session_present, "{ack:?}");
}

#[tokio::test]
async fn the_sessions_of_a_killed_node_resume_elsewhere_with_every_acknowledged_message() {
    let nats = NatsCluster::start();
    let nodes = three_nodes(&nats);
    let token = cli_token(&nodes[0], "bob", "3600", "mqtt");
    let mut publisher = login(&nodes[2], "pub", &token).await;
    let sub = subscribed_keeper(&nodes[0], &mut publisher, &token).await;
    drop(sub);
    let mut acked = publish_acked(&mut publisher, "load/m", 300).await;
    // Node a dies (kill -9) holding keeper's queue; more arrive while it is dead.
    let mut nodes = nodes.into_iter();
    let a = nodes.next().unwrap();
    let (b, _c) = (nodes.next().unwrap(), nodes.next().unwrap());
    let dir = a.kill();
    acked.extend(publish_acked(&mut publisher, "load/late", 100).await);
    let started = Instant::now();
    let (mut sub, ack) = Raw::connect(b.tcp, keeper(&token, false)).await;
    assert!(ack.session_present, "{ack:?}");
    receive_all(&mut sub, acked).await;
    println!(
        "resume after the owner's kill -9: {} ms",
        started.elapsed().as_millis()
    );
    // Node a comes back with keeper's session in its store: the session lives on b now,
    // so a drops its copy (no second owner, nothing routed to a stale queue).
    let a = TestBroker::start_in(dir, &nats.node_config("a", &[0, 1]));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let offline = scrape(&a)
            .await
            .into_iter()
            .find(|s| s.name == "tessera_sessions" && s.labels["state"] == "offline")
            .map(|s| s.value);
        if offline == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node a kept the moved session: {offline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_will_fires_once_from_the_node_that_held_the_connection() {
    let nats = NatsCluster::start();
    let nodes = three_nodes(&nats);
    let token = cli_token(&nodes[0], "bob", "3600", "mqtt");
    let mut watcher = login(&nodes[2], "watcher", &token).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut on_a = login(&nodes[0], "pub", &token).await;
    until_routed(&mut on_a, &mut watcher, "wills/probe").await;
    let mut with_will = keeper(&token, true);
    with_will.will = Some(Will {
        topic: "wills/keeper".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    let mut first = Raw::connect(nodes[0].tcp, with_will).await.0;
    // Taken over from node b: the connection on a closes, and a publishes its will, once.
    let (_second, ack) = Raw::connect(nodes[1].tcp, keeper(&token, false)).await;
    assert!(ack.session_present, "{ack:?}");
    first
        .expect_disconnect(ReasonCode::SESSION_TAKEN_OVER)
        .await;
    let mut wills = 0;
    while let Ok(Some(p)) = recv_acking(&mut watcher, Duration::from_secs(2)).await {
        if let Packet::Publish(p) = p
            && &p.payload[..] == b"gone"
        {
            wills += 1;
        }
    }
    assert_eq!(wills, 1);
}

/// A pseudo-random delay in `[lo, hi)` ms (printed, so a failing run can be replayed).
pub(crate) fn random_ms(lo: u64, hi: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    lo + nanos % (hi - lo)
}

#[tokio::test]
async fn acknowledged_messages_survive_kills_of_the_sessions_node_at_random_moments() {
    let nats = NatsCluster::start();
    let mut nodes: Vec<Option<TestBroker>> = three_nodes(&nats).into_iter().map(Some).collect();
    let configs: Vec<String> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, n)| nats.node_config(n, &[i, (i + 1) % 3]))
        .collect();
    let c = nodes[2].as_ref().unwrap();
    let token = cli_token(c, "bob", "3600", "mqtt");
    // The publisher stays on node c; keeper moves between a and b, whose nodes die under it.
    let mut publisher = login(c, "pub", &token).await;
    let first = nodes[0].as_ref().unwrap();
    let mut sub = subscribed_keeper(first, &mut publisher, &token).await;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishing = {
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let payload = format!("crash {i}");
                let pid = (i % 60_000 + 1) as u16;
                publisher
                    .publish("load/crash", payload.as_bytes(), QoS::AtLeastOnce, pid)
                    .await;
                if let Some(Packet::PubAck(a)) = publisher.recv().await
                    && a.reason_code == ReasonCode::SUCCESS
                {
                    acked.lock().unwrap().insert(payload);
                }
                i += 1;
            }
        })
    };
    let mut received = BTreeSet::new();
    let mut at = 0;
    for round in 0..5 {
        // keeper takes messages for a while; then its node is killed at a random moment.
        let run = random_ms(100, 700);
        println!("round {round}: node {at} killed after {run} ms");
        let until = Instant::now() + Duration::from_millis(run);
        while Instant::now() < until {
            if let Ok(Some(Packet::Publish(p))) =
                recv_acking(&mut sub, Duration::from_millis(20)).await
            {
                received.insert(String::from_utf8_lossy(&p.payload).to_string());
            }
        }
        let dir = nodes[at].take().unwrap().kill();
        // It resumes on the other node while this one is down, which then comes back.
        at = 1 - at;
        let (s, ack) = Raw::connect(nodes[at].as_ref().unwrap().tcp, keeper(&token, false)).await;
        assert!(ack.session_present, "round {round}: {ack:?}");
        sub = s;
        nodes[1 - at] = Some(TestBroker::start_in(dir, &configs[1 - at]));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publishing.await.unwrap();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.len() > 100, "only {} acknowledged", acked.len());
    let missing: BTreeSet<String> = acked.difference(&received).cloned().collect();
    println!(
        "{} acknowledged, {} still to come",
        acked.len(),
        missing.len()
    );
    receive_all(&mut sub, missing).await;
}

/// The session's record once `ready` says it is, polled for up to `within`.
async fn record_when(
    nats: &NatsCluster,
    within: Duration,
    ready: impl Fn(u64, &serde_json::Value) -> bool,
) -> (u64, serde_json::Value) {
    let deadline = Instant::now() + within;
    loop {
        let r = nats.session_record("keeper");
        if let Some((seq, v)) = &r
            && ready(*seq, v)
        {
            return r.unwrap();
        }
        assert!(Instant::now() < deadline, "keeper's record: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An idle session's record is written when the session changes, not at every sweep: a node
/// with 100,000 idle persistent sessions does not rewrite them every 10 s. A message queued
/// to it moves its floor on at the next sweep.
#[tokio::test]
async fn an_idle_sessions_record_is_left_alone_until_a_message_is_queued_to_it() {
    let nats = NatsCluster::start();
    let (a, b, token) = two_nodes(&nats);
    let mut publisher = login(&b, "pub", &token).await;
    let sub = subscribed_keeper(&a, &mut publisher, &token).await;
    drop(sub);
    let (seq, offline) = record_when(&nats, Duration::from_secs(10), |_, r| {
        !r["offline_since_ms"].is_null()
    })
    .await;
    // Longer than a sweep (10 s): nothing rewrites it.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(nats.session_record("keeper").map(|r| r.0), Some(seq));
    // Queued to it while it is away: its floor moves up to that message.
    publish_acked(&mut publisher, "load/idle", 1).await;
    let (_, moved) = record_when(&nats, Duration::from_secs(15), |s, _| s > seq).await;
    assert!(
        moved["floor_ms"].as_u64() > offline["floor_ms"].as_u64(),
        "{offline} then {moved}"
    );
    assert!(!moved["offline_since_ms"].is_null(), "{moved}");
    // And it resumes on the other node with that message.
    let (mut sub, ack) = Raw::connect(b.tcp, keeper(&token, false)).await;
    assert!(ack.session_present, "{ack:?}");
    receive_all(&mut sub, ["load/idle 0".to_string()].into()).await;
}

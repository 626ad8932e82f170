//! QoS 2 between nodes, exactly once: a subscriber whose node is killed with -9 at random
//! moments (and started again from its data) gets every message its publisher on another
//! node had completed, each once, though JetStream delivers again what the dead node had
//! not acknowledged (cluster/src/qos.rs: the stream sequence journaled with each batch).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_broker::codec::{Connect, Packet, PubResp, QoS, ReasonCode};

use crate::cluster_harness::{NatsCluster, three_nodes, until_routed};
use crate::harness::TestBroker;
use crate::oauth::{cli_token, login, x_oauth2};
use crate::raw::Raw;

/// A QoS 2 receiver as an MQTT client keeps it: the packet ids it answered PUBREC to and
/// has no PUBREL for yet (a PUBLISH with one of them is that message again, not a new one),
/// kept across connections, and how many times each payload reached the application.
#[derive(Default)]
struct Receiver {
    awaiting_release: HashSet<u16>,
    got: BTreeMap<String, u32>,
}

impl Receiver {
    /// Takes what `sub` sends within `t`, answering as a QoS 2 client does.
    async fn take(&mut self, sub: &mut Raw, t: Duration) {
        let until = Instant::now() + t;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            let p = match sub.recv_within(left).await {
                Ok(Some(p)) => p,
                _ => return,
            };
            match p {
                Packet::Publish(p) => {
                    let Some(id) = p.packet_id else { continue };
                    if self.awaiting_release.insert(id) {
                        *self
                            .got
                            .entry(String::from_utf8_lossy(&p.payload).into_owned())
                            .or_default() += 1;
                    }
                    let ack = PubResp {
                        packet_id: id,
                        ..Default::default()
                    };
                    if !sub.try_send(&Packet::PubRec(ack)).await {
                        return;
                    }
                }
                Packet::PubRel(r) => {
                    self.awaiting_release.remove(&r.packet_id);
                    let ack = PubResp {
                        packet_id: r.packet_id,
                        ..Default::default()
                    };
                    if !sub.try_send(&Packet::PubComp(ack)).await {
                        return;
                    }
                }
                _ => {}
            }
        }
    }
}

fn keeper(token: &str, clean: bool) -> Connect {
    let mut c = x_oauth2("keeper2", None, Some(token));
    c.clean_start = clean;
    c.properties.session_expiry_interval = Some(3600);
    c
}

/// One QoS 2 exchange from `publisher`: whether it completed (PUBREC success, PUBCOMP).
async fn publish_exactly_once(publisher: &mut Raw, payload: &str, pid: u16) -> bool {
    publisher
        .publish("load/q2", payload.as_bytes(), QoS::ExactlyOnce, pid)
        .await;
    match publisher.recv().await {
        Some(Packet::PubRec(r)) if r.reason_code == ReasonCode::SUCCESS => {}
        other => panic!("{payload}: {other:?}"),
    }
    publisher
        .send(&Packet::PubRel(PubResp {
            packet_id: pid,
            ..Default::default()
        }))
        .await;
    matches!(publisher.recv().await, Some(Packet::PubComp(_)))
}

#[tokio::test]
async fn qos2_messages_reach_a_subscriber_once_through_kills_of_its_node() {
    let nats = NatsCluster::start();
    let mut nodes: Vec<Option<TestBroker>> = three_nodes(&nats).into_iter().map(Some).collect();
    let config_b = nats.node_config("b", &[1, 2]);
    let a = nodes[0].as_ref().unwrap();
    let token = cli_token(a, "bob", "3600", "mqtt");
    let mut publisher = login(a, "pub", &token).await;
    let (mut sub, _) = Raw::connect(nodes[1].as_ref().unwrap().tcp, keeper(&token, true)).await;
    sub.subscribe("load/#", QoS::ExactlyOnce).await;
    until_routed(&mut publisher, &mut sub, "load/probe").await;
    let mut receiver = Receiver::default();
    receiver.take(&mut sub, Duration::from_millis(500)).await;
    receiver.got.clear();

    let completed = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = {
        let (completed, stop) = (completed.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let payload = format!("q2 {i}");
                if publish_exactly_once(&mut publisher, &payload, (i % 60_000 + 1) as u16).await {
                    completed.lock().unwrap().insert(payload);
                }
                i += 1;
            }
        })
    };
    for round in 0..4 {
        let run = crate::cluster_sessions::random_ms(200, 1500);
        println!("round {round}: node b killed after {run} ms");
        receiver.take(&mut sub, Duration::from_millis(run)).await;
        let dir = nodes[1].take().unwrap().kill();
        nodes[1] = Some(TestBroker::start_in(dir, &config_b));
        let (s, ack) = Raw::connect(nodes[1].as_ref().unwrap().tcp, keeper(&token, false)).await;
        assert!(ack.session_present, "round {round}: {ack:?}");
        sub = s;
    }
    stop.store(true, Ordering::Relaxed);
    publishing.await.unwrap();
    let completed = std::mem::take(&mut *completed.lock().unwrap());
    assert!(completed.len() > 100, "only {} completed", completed.len());
    // Everything still to come arrives; nothing comes twice.
    let deadline = Instant::now() + Duration::from_secs(30);
    while completed.iter().any(|p| !receiver.got.contains_key(p)) && Instant::now() < deadline {
        receiver.take(&mut sub, Duration::from_millis(500)).await;
    }
    receiver.take(&mut sub, Duration::from_secs(1)).await;
    let missing: Vec<&String> = completed
        .iter()
        .filter(|p| !receiver.got.contains_key(*p))
        .collect();
    let twice: Vec<(&String, &u32)> = receiver.got.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "{} completed, {} received, {} missing, {} more than once",
        completed.len(),
        receiver.got.len(),
        missing.len(),
        twice.len()
    );
    assert!(missing.is_empty(), "missing: {missing:?}");
    assert!(twice.is_empty(), "more than once: {twice:?}");
}

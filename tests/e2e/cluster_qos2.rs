//! QoS 2 between nodes, exactly once: a subscriber whose node is killed with -9 at random
//! moments (and started again from its data) gets every message its publisher on another
//! node had completed, each once, though JetStream delivers again what the dead node had
//! not acknowledged (cluster/src/qos.rs: the stream sequence journaled with each batch); so
//! does one that moves between live nodes, and one whose node dies and stays down while it
//! opens its session on another (cluster/src/sessions/ledger.rs).

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
    log: Vec<String>,
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
                Packet::Publish(p) if p.qos == QoS::AtLeastOnce => {
                    // The routing probes (QoS 1): acknowledged, not counted.
                    let ack = PubResp {
                        packet_id: p.packet_id.unwrap_or(0),
                        ..Default::default()
                    };
                    if !sub.try_send(&Packet::PubAck(ack)).await {
                        return;
                    }
                }
                Packet::Publish(p) => {
                    let Some(id) = p.packet_id else { continue };
                    self.log.push(format!(
                        "{} pid={id} dup={} new={}",
                        String::from_utf8_lossy(&p.payload),
                        p.dup,
                        !self.awaiting_release.contains(&id)
                    ));
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

impl Receiver {
    /// Takes the rest: every one of `completed` arrives (within 30 s), none twice.
    async fn all_once(&mut self, sub: &mut Raw, completed: BTreeSet<String>) {
        // Enough traffic for the kills and moves to fall between exchanges: 700-1,200 in a
        // debug build alone, under 100 with four runs at once on two cores.
        assert!(completed.len() >= 50, "only {} completed", completed.len());
        let deadline = Instant::now() + Duration::from_secs(30);
        while completed.iter().any(|p| !self.got.contains_key(p)) && Instant::now() < deadline {
            self.take(sub, Duration::from_millis(500)).await;
        }
        self.take(sub, Duration::from_secs(1)).await;
        let missing: Vec<&String> = completed
            .iter()
            .filter(|p| !self.got.contains_key(*p))
            .collect();
        let twice: Vec<(&String, &u32)> = self.got.iter().filter(|(_, n)| **n > 1).collect();
        println!(
            "{} completed, {} received, {} missing, {} more than once",
            completed.len(),
            self.got.len(),
            missing.len(),
            twice.len()
        );
        assert!(missing.is_empty(), "missing: {missing:?}");
        if !twice.is_empty() {
            let first = twice[0].0.clone();
            let mut round = "start".to_string();
            for (i, l) in self.log.iter().enumerate() {
                if l.starts_with("round") {
                    round = l.clone();
                }
                if l.starts_with(&format!("{first} ")) {
                    println!("{i} ({round}): {l}");
                }
            }
            println!("{}", self.log.len());
        }
        assert!(
            twice.is_empty(),
            "more than once: {:?}",
            &twice[..twice.len().min(5)]
        );
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

/// `keeper2` subscribed to `load/#` (QoS 2) on `node`, the way from `publisher` to it proven,
/// and its receiver (the probes not counted).
async fn subscribed_keeper(node: &TestBroker, publisher: &mut Raw, token: &str) -> (Raw, Receiver) {
    let (mut sub, _) = Raw::connect(node.tcp, keeper(token, true)).await;
    sub.subscribe("load/#", QoS::ExactlyOnce).await;
    until_routed(publisher, &mut sub, "load/probe").await;
    let mut receiver = Receiver::default();
    receiver.take(&mut sub, Duration::from_millis(500)).await;
    receiver.got.clear();
    (sub, receiver)
}

/// A publisher sending `q2 <i>` at QoS 2, one exchange after another, until `finish`.
struct Publishing {
    completed: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Publishing {
    fn start(mut publisher: Raw) -> Publishing {
        let completed = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (completed, stop) = (completed.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let payload = format!("q2 {i}");
                    let pid = (i % 60_000 + 1) as u16;
                    if publish_exactly_once(&mut publisher, &payload, pid).await {
                        completed.lock().unwrap().insert(payload);
                    }
                    i += 1;
                }
            })
        };
        Publishing {
            completed,
            stop,
            task,
        }
    }

    /// Stops after the exchange under way; the messages whose exchange completed.
    async fn finish(self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        std::mem::take(&mut *self.completed.lock().unwrap())
    }
}

#[tokio::test]
async fn qos2_messages_reach_a_subscriber_once_through_kills_of_its_node() {
    let nats = NatsCluster::start();
    let mut nodes: Vec<Option<TestBroker>> = three_nodes(&nats).into_iter().map(Some).collect();
    let config_b = nats.node_config("b", &[1, 2]);
    let a = nodes[0].as_ref().unwrap();
    let token = cli_token(a, "bob", "3600", "mqtt");
    let mut publisher = login(a, "pub", &token).await;
    let (mut sub, mut receiver) =
        subscribed_keeper(nodes[1].as_ref().unwrap(), &mut publisher, &token).await;
    let publishing = Publishing::start(publisher);
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
    let completed = publishing.finish().await;
    receiver.all_once(&mut sub, completed).await;
}

#[tokio::test]
async fn qos2_messages_reach_a_subscriber_once_when_its_node_dies_and_stays_down() {
    let nats = NatsCluster::start();
    let mut nodes: Vec<Option<TestBroker>> = three_nodes(&nats).into_iter().map(Some).collect();
    let configs = [
        nats.node_config("a", &[0, 1]),
        nats.node_config("b", &[1, 2]),
    ];
    let token = cli_token(nodes[0].as_ref().unwrap(), "bob", "3600", "mqtt");
    let mut publisher = login(nodes[2].as_ref().unwrap(), "pub", &token).await;
    let (mut sub, mut receiver) =
        subscribed_keeper(nodes[0].as_ref().unwrap(), &mut publisher, &token).await;
    let publishing = Publishing::start(publisher);
    // The subscriber's node is killed at a random moment of the flow and stays down while
    // its client opens the session on the other node, which has only the dead node's
    // record to go by (what was sent, released, completed); then the dead node comes back
    // (and must not take the session back), and the next round kills the other one.
    let mut at = 0;
    for round in 0..4 {
        let run = crate::cluster_sessions::random_ms(200, 1500);
        receiver.take(&mut sub, Duration::from_millis(run)).await;
        let dead = nodes[at].take().unwrap().kill();
        at = 1 - at;
        let started = Instant::now();
        let (s, ack) = Raw::connect(nodes[at].as_ref().unwrap().tcp, keeper(&token, false)).await;
        let took = started.elapsed().as_millis();
        assert!(
            ack.session_present,
            "round {round} (CONNACK in {took} ms): {ack:?}"
        );
        println!(
            "round {round}: node {} killed after {run} ms; CONNACK on node {at} in {took} ms",
            1 - at
        );
        receiver.log.push(format!("round {round}"));
        sub = s;
        receiver.take(&mut sub, Duration::from_millis(300)).await;
        nodes[1 - at] = Some(TestBroker::start_in(dead, &configs[1 - at]));
    }
    let completed = publishing.finish().await;
    for line in nodes[at]
        .as_ref()
        .unwrap()
        .log_text()
        .lines()
        .filter(|l| l.contains("moved here") || l.contains("QoS 2"))
    {
        println!("{line}");
    }
    receiver.all_once(&mut sub, completed).await;
}

#[tokio::test]
async fn qos2_messages_reach_a_subscriber_once_through_moves_between_live_nodes() {
    let nats = NatsCluster::start();
    let nodes = three_nodes(&nats);
    let token = cli_token(&nodes[0], "bob", "3600", "mqtt");
    let mut publisher = login(&nodes[2], "pub", &token).await;
    let (mut sub, mut receiver) = subscribed_keeper(&nodes[0], &mut publisher, &token).await;
    let publishing = Publishing::start(publisher);
    // The session moves between nodes a and b while messages flow, its client taking them
    // until the moment it connects to the other node.
    let mut at = 0;
    for round in 0..6 {
        let run = crate::cluster_sessions::random_ms(100, 800);
        receiver.take(&mut sub, Duration::from_millis(run)).await;
        at = 1 - at;
        let started = Instant::now();
        let (s, ack) = Raw::connect(nodes[at].tcp, keeper(&token, false)).await;
        let took = started.elapsed().as_millis();
        if !ack.session_present {
            for (i, n) in nodes.iter().enumerate() {
                println!("--- node {i}'s log:\n{}", n.log_text());
            }
        }
        assert!(
            ack.session_present,
            "round {round} (CONNACK in {took} ms): {ack:?}"
        );
        println!("round {round}: moved to node {at} after {run} ms, CONNACK in {took} ms");
        receiver.log.push(format!("round {round}"));
        sub = s;
    }
    let completed = publishing.finish().await;
    for n in &nodes[..2] {
        for line in n.log_text().lines().filter(|l| l.contains("moved here")) {
            println!("{line}");
        }
    }
    receiver.all_once(&mut sub, completed).await;
}

#[tokio::test]
async fn a_publisher_moving_mid_qos2_releases_its_message_on_the_new_node_once() {
    publisher_resends_mid_qos2_on_another_node(false).await;
}

#[tokio::test]
async fn a_publisher_whose_node_died_mid_qos2_releases_its_message_on_another_node_once() {
    publisher_resends_mid_qos2_on_another_node(true).await;
}

/// A publisher gets PUBREC for its QoS 2 message on node a, and (as if it had not seen it)
/// sends the PUBLISH again on node b, the session moved there (a live, or `kill_a`: killed
/// with -9 and kept down), then releases it: PUBREC and PUBCOMP there, and the message
/// reaches a watcher once; a new message under the released identifier reaches it too.
async fn publisher_resends_mid_qos2_on_another_node(kill_a: bool) {
    let nats = NatsCluster::start();
    let mut nodes = three_nodes(&nats);
    let token = cli_token(&nodes[0], "bob", "3600", "mqtt");
    let mut watcher = login(&nodes[2], "watcher", &token).await;
    watcher.subscribe("moving/#", QoS::AtLeastOnce).await;
    let mut probe = login(&nodes[0], "probe", &token).await;
    until_routed(&mut probe, &mut watcher, "moving/probe").await;
    let mover = |clean| {
        let mut c = x_oauth2("mover", None, Some(&token));
        c.clean_start = clean;
        c.properties.session_expiry_interval = Some(3600);
        c
    };
    let (mut on_a, _) = Raw::connect(nodes[0].tcp, mover(true)).await;
    on_a.publish("moving/m", b"once", QoS::ExactlyOnce, 7).await;
    assert!(matches!(on_a.recv().await, Some(Packet::PubRec(r)) if r.packet_id == 7));
    let _dead = kill_a.then(|| nodes.remove(0).kill());
    let b = &nodes[if kill_a { 0 } else { 1 }];
    let (mut on_b, ack) = Raw::connect(b.tcp, mover(false)).await;
    assert!(ack.session_present);
    let mut again = crate::raw::publish("moving/m", b"once", QoS::ExactlyOnce, 7);
    again.dup = true;
    on_b.send(&Packet::Publish(again)).await;
    assert!(matches!(on_b.recv().await, Some(Packet::PubRec(r)) if r.packet_id == 7));
    let release = Packet::PubRel(PubResp {
        packet_id: 7,
        ..Default::default()
    });
    on_b.send(&release).await;
    let Some(Packet::PubComp(done)) = on_b.recv().await else {
        panic!("no PUBCOMP")
    };
    assert_eq!(done.reason_code, ReasonCode::SUCCESS);
    on_b.publish("moving/m", b"new", QoS::ExactlyOnce, 7).await;
    assert!(matches!(on_b.recv().await, Some(Packet::PubRec(r)) if r.packet_id == 7));
    on_b.send(&release).await;
    assert!(matches!(on_b.recv().await, Some(Packet::PubComp(_))));
    let mut seen = BTreeMap::<Vec<u8>, u32>::new();
    while let Ok(Some(p)) =
        crate::cluster_harness::recv_acking(&mut watcher, Duration::from_secs(2)).await
    {
        if let Packet::Publish(p) = p {
            *seen.entry(p.payload.to_vec()).or_default() += 1;
        }
    }
    assert_eq!(seen.get(&b"once"[..]), Some(&1), "{seen:?}");
    assert_eq!(seen.get(&b"new"[..]), Some(&1), "{seen:?}");
}

#[tokio::test]
async fn a_new_subscription_gets_no_message_published_before_it_on_another_node() {
    let nats = NatsCluster::start();
    let nodes = three_nodes(&nats);
    let token = cli_token(&nodes[0], "bob", "3600", "mqtt");
    let mut publisher = login(&nodes[0], "pub", &token).await;
    // Node b's consumer is in use (another filter), then 50 messages go to a topic nobody
    // follows yet.
    let mut other = login(&nodes[1], "other", &token).await;
    other.subscribe("elsewhere/#", QoS::AtLeastOnce).await;
    until_routed(&mut publisher, &mut other, "elsewhere/probe").await;
    for i in 0..50u16 {
        publisher
            .publish("early/t", b"before", QoS::AtLeastOnce, i + 1)
            .await;
        assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
    }
    let mut sub = login(&nodes[1], "late", &token).await;
    sub.subscribe("early/#", QoS::AtLeastOnce).await;
    until_routed(&mut publisher, &mut sub, "early/probe").await;
    publisher
        .publish("early/t", b"after", QoS::AtLeastOnce, 99)
        .await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
    let mut got = Vec::new();
    while let Ok(Some(p)) =
        crate::cluster_harness::recv_acking(&mut sub, Duration::from_secs(2)).await
    {
        if let Packet::Publish(p) = p
            && &p.payload[..] != b"probe"
        {
            got.push(String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
    assert_eq!(got, ["after"]);
}

//! Wills of a node that dies (cluster/src/wills.rs): killed with -9 and kept down, its
//! clients' wills are published once by a surviving node, at the time their delay and their
//! session's expiry say; a client back within its will's delay cancels it; the dead node's
//! sessions end as their expiry says; and the node coming back publishes none of them again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_broker::codec::{Connect, Packet, QoS, Will};

use crate::cluster_harness::{NatsCluster, recv_acking, three_nodes, until_routed};
use crate::harness::TestBroker;
use crate::oauth::{cli_token, login, x_oauth2};
use crate::raw::Raw;

/// The CONNECT of `client` with Session Expiry `expiry` and a QoS 1 will on
/// `wills/<client>` waiting `delay` seconds.
fn with_will(token: &str, client: &str, expiry: u32, delay: u32) -> Connect {
    let mut c = x_oauth2(client, None, Some(token));
    c.properties.session_expiry_interval = Some(expiry);
    let mut will = Will {
        topic: format!("wills/{client}").as_str().into(),
        payload: Bytes::from(client.to_string()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    will.properties.will_delay_interval = Some(delay);
    c.will = Some(will);
    c
}

/// Every will `watcher` receives within `within`, by client, with the seconds since `from`.
async fn wills_within(
    watcher: &mut Raw,
    from: Instant,
    within: Duration,
    got: &mut BTreeMap<String, Vec<f64>>,
) {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match recv_acking(watcher, left).await {
            Ok(Some(Packet::Publish(p))) if &p.payload[..] != b"probe" => {
                let client = String::from_utf8_lossy(&p.payload).to_string();
                got.entry(client)
                    .or_default()
                    .push(from.elapsed().as_secs_f64());
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the watcher's connection closed"),
            Err(()) => break,
        }
    }
}

#[tokio::test]
async fn the_wills_of_a_node_killed_and_kept_down_are_published_once_by_a_survivor() {
    let nats = NatsCluster::start();
    let nodes = three_nodes(&nats);
    let token = cli_token(&nodes[0], "bob", "3600", "mqtt");
    let mut watcher = login(&nodes[2], "watcher", &token).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    let mut on_a = login(&nodes[0], "pub", &token).await;
    until_routed(&mut on_a, &mut watcher, "wills/probe").await;
    // Clients of node a, each with a will:
    // - `now`: no delay, no session to keep: due when its connection is lost;
    // - `two`: 2 s of delay, an hour of session: due 2 s after;
    // - `later`: 20 s of delay: due 20 s after a's last heartbeat;
    // - `short`: 600 s of delay but a session of 4 s: due when the session ends;
    // - `back`: 20 s of delay, and its client connects again on node b meanwhile;
    // - `gone`: disconnects normally before the kill: its will is discarded.
    let mut clients = Vec::new();
    for (client, expiry, delay) in [
        ("now", 0, 0),
        ("two", 3600, 2),
        ("later", 3600, 20),
        ("short", 4, 600),
        ("back", 3600, 20),
        ("gone", 3600, 0),
    ] {
        let (conn, ack) =
            Raw::connect(nodes[0].tcp, with_will(&token, client, expiry, delay)).await;
        assert_eq!(ack.reason_code, tessera_broker::codec::ReasonCode::SUCCESS);
        clients.push(conn);
    }
    let mut gone = clients.pop().unwrap();
    gone.send(&Packet::Disconnect(Default::default())).await;
    gone.expect_closed().await;
    // The records reach NATS in the background: wait until all six and the discarded
    // one's deletion are in the bucket's stream.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = nats
            .request(0, "$JS.API.STREAM.INFO.KV_tessera_wills")
            .unwrap_or_default();
        let info: serde_json::Value = serde_json::from_str(&info).unwrap_or_default();
        if info["state"]["last_seq"].as_u64() >= Some(7) {
            break;
        }
        assert!(Instant::now() < deadline, "the wills bucket: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut nodes = nodes.into_iter();
    let a = nodes.next().unwrap();
    let (b, _c) = (nodes.next().unwrap(), nodes.next().unwrap());
    let killed = Instant::now();
    let dir = a.kill();
    drop(clients);
    // `back` resumes its session on b within its will's delay.
    let mut back = x_oauth2("back", None, Some(&token));
    back.clean_start = false;
    back.properties.session_expiry_interval = Some(3600);
    let (_back, ack) = Raw::connect(b.tcp, back).await;
    assert!(ack.session_present, "{ack:?}");

    let mut got = BTreeMap::new();
    wills_within(&mut watcher, killed, Duration::from_secs(30), &mut got).await;
    println!("wills after node a's kill -9 (s): {got:?}");
    let times = |c: &str| got.get(c).cloned().unwrap_or_default();
    for c in ["now", "two", "short", "later"] {
        assert_eq!(times(c).len(), 1, "{c}: {got:?}");
    }
    assert!(!got.contains_key("back"), "{got:?}");
    assert!(!got.contains_key("gone"), "{got:?}");
    // Declared dead 10 s after its last heartbeat (written every 2 s), found within a beat.
    for c in ["now", "two", "short"] {
        let t = times(c)[0];
        assert!((7.0..16.0).contains(&t), "{c} at {t:.1} s");
    }
    let later = times("later")[0];
    assert!((18.0..24.0).contains(&later), "later at {later:.1} s");

    // The dead node's sessions ended as their expiry says: `short`'s (4 s) is gone, `two`'s
    // (an hour) moves to b.
    for (client, present) in [("short", false), ("two", true)] {
        let mut c = x_oauth2(client, None, Some(&token));
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(3600);
        let (_conn, ack) = Raw::connect(b.tcp, c).await;
        assert_eq!(ack.session_present, present, "{client}: {ack:?}");
    }

    // Node a comes back with those wills in its own store: none is published again.
    let a = TestBroker::start_in(dir, &nats.node_config("a", &[0, 1]));
    wills_within(&mut watcher, killed, Duration::from_secs(5), &mut got).await;
    for c in ["now", "two", "short", "later"] {
        assert_eq!(times_of(&got, c), 1, "{c} after node a came back: {got:?}");
    }
    // Its store still held them (how many depends on what its journal had committed when it
    // died): it published none of them itself, and left them to the cluster.
    let log = a.log_text();
    let restored = log
        .lines()
        .find(|l| l.contains("restored state from the store"))
        .unwrap_or_default();
    assert!(
        restored.contains(" wills=0 ") && !restored.contains("wills_left_to_cluster=0"),
        "node a's restore: {restored}"
    );
}

fn times_of(got: &BTreeMap<String, Vec<f64>>, c: &str) -> usize {
    got.get(c).map_or(0, Vec::len)
}

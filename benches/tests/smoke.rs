//! CI's short run of the load generator: every scenario for a second or a few hundred messages
//! against an in-process broker, checking the counts (the full comparison is benches/compare.sh).

use std::sync::Arc;

use tessera_bench::client::Login;
use tessera_bench::scenarios::{self, Target};
use tessera_broker::Server;
use tessera_broker::auth::AnonymousOnly;
use tessera_broker::codec::QoS;
use tessera_config::{Config, Transport};

/// Queues that hold a whole scenario. With the default bound (1,000 messages) a subscriber
/// that falls behind on a loaded machine has its oldest messages dropped, as the broker
/// should, and counted (`queue_full`); this test checks that the counts are exact, so a
/// subscriber's lag must not be able to drop anything.
const QUEUES: &str = "mqtt:\n  max_queued_messages: 1000000\n  max_queued_bytes: 1073741824\n";

async fn broker() -> (Server, Target, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "data_dir: {}\nlisteners:\n  - type: tcp\n    bind: 127.0.0.1:0\nsys:\n  interval: 0\n{QUEUES}",
        dir.path().display()
    );
    let config = Config::parse(&yaml, "smoke.yml").unwrap();
    // Durable, as shipped, on the in-memory store: the journal runs as it does on redb.
    let server = Server::start_with_store(
        &config,
        Arc::new(AnonymousOnly {
            allow_anonymous: true,
        }),
        Arc::new(tessera_broker::store::MemoryStore::default()),
    )
    .await
    .unwrap();
    let addr = server.addr(Transport::Tcp).unwrap();
    let target = Target {
        addr,
        sub_addr: addr,
        login: Login::Anonymous,
        version: tessera_broker::codec::Version::V3_1_1,
        run: "smoke".into(),
        persistent: false,
    };
    (server, target, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_and_counts_exactly() {
    let (server, t, _dir) = broker().await;
    // Messages dropped for full queues so far (shown when a count is not exact).
    let dropped = || {
        let m = server.handle().metrics();
        m.dropped
            .iter()
            .find(|(why, _)| *why == "queue_full")
            .map_or(0, |d| d.1)
    };
    let r = scenarios::fan_in(&t, 2, QoS::AtMostOnce, 64, 0.5)
        .await
        .unwrap();
    assert!(r["msgs_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    let before = dropped();
    let r = scenarios::fan_in(&t, 2, QoS::AtLeastOnce, 1024, 0.5)
        .await
        .unwrap();
    assert_eq!(r["exact"], true, "{r}, dropped: {}", dropped() - before);
    let before = dropped();
    let r = scenarios::pairs(&t, 2, QoS::AtLeastOnce, Some(200), 0.5)
        .await
        .unwrap();
    assert_eq!(r["exact"], true, "{r}, dropped: {}", dropped() - before);
    assert!(r["p99_us"].as_f64().unwrap() > 0.0, "{r}");
    // Persistent subscribers: every message journaled, each PUBACK after its commit.
    let persistent = Target {
        persistent: true,
        ..t.clone()
    };
    let before = dropped();
    let r = scenarios::pairs(&persistent, 2, QoS::AtLeastOnce, Some(200), 0.5)
        .await
        .unwrap();
    assert_eq!(r["exact"], true, "{r}, dropped: {}", dropped() - before);
    assert!(r["ack_p99_us"].as_f64().unwrap() > 0.0, "{r}");
    // QoS 2 both ways: each message completed by the publisher and by the subscriber.
    let before = dropped();
    let r = scenarios::pairs(&persistent, 2, QoS::ExactlyOnce, None, 0.5)
        .await
        .unwrap();
    assert_eq!(r["exact"], true, "{r}, dropped: {}", dropped() - before);
    assert!(r["msgs_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    let before = dropped();
    let r = scenarios::fan_in(&persistent, 2, QoS::AtLeastOnce, 64, 0.5)
        .await
        .unwrap();
    assert_eq!(r["exact"], true, "{r}, dropped: {}", dropped() - before);
    let r = scenarios::fan_out(&t, 20, 64, 0.5).await.unwrap();
    assert!(r["deliveries_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    let r = scenarios::connect_storm(&t, 100, 4, Some(std::process::id()))
        .await
        .unwrap();
    assert!(r["connacks_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    // The broker runs in this process: its CPU time is read (at /proc's 10 ms resolution).
    assert!(r["broker_cpu_us_per_connack"].as_f64().is_some(), "{r}");
    let r = scenarios::retained(&t, 500).await.unwrap();
    assert_eq!(r["complete"], true, "{r}");
    let r = scenarios::idle(&t, 50, std::process::id()).await.unwrap();
    assert!(r["kib_per_connection"].as_f64().is_some(), "{r}");
}

//! Durable broker state end to end: what a client was told (PUBACK, PUBREC, retained, Session
//! Present) survives a graceful stop and `kill -9` of the real binary; wills of clients
//! connected at a crash are published after it; session expiry counts across downtime; the
//! store's files are private and `check-data` reads them.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use bytes::Bytes;
use tessera_broker::codec::{
    Connect, Packet, Properties, PubResp, Publish, QoS, ReasonCode, RetainHandling,
    SubscriptionOptions, Will,
};

use crate::harness::TestBroker;
use crate::raw::{Raw, connect_v5, publish};

pub const ANONYMOUS: &str = "auth:\n  allow_anonymous: true\n";

/// A 5.0 CONNECT that resumes (or creates) a persistent session.
pub fn persistent(id: &str, expiry: u32) -> Connect {
    let mut c = connect_v5(id);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(expiry);
    c
}

fn ack(pid: u16) -> PubResp {
    PubResp {
        packet_id: pid,
        ..Default::default()
    }
}

/// Publishes and completes the acknowledgement flow (PUBACK, or PUBREC/PUBREL/PUBCOMP).
async fn publish_acked(c: &mut Raw, mut p: Publish) {
    let pid = p.packet_id.unwrap_or(0);
    let qos = p.qos;
    p.dup = false;
    c.send(&Packet::Publish(p)).await;
    match (qos, c.recv().await) {
        (QoS::AtLeastOnce, Some(Packet::PubAck(a))) => {
            assert!(!a.reason_code.is_error(), "{a:?}")
        }
        (QoS::ExactlyOnce, Some(Packet::PubRec(r))) => {
            assert!(!r.reason_code.is_error(), "{r:?}");
            c.send(&Packet::PubRel(ack(pid))).await;
            assert!(matches!(c.recv().await, Some(Packet::PubComp(_))));
        }
        (_, other) => panic!("expected an acknowledgement, got {other:?}"),
    }
}

/// Receives `n` messages and acknowledges each fully; returns their payloads in order.
async fn take(c: &mut Raw, n: usize) -> Vec<Publish> {
    let mut got = Vec::new();
    while got.len() < n {
        match c.recv().await {
            Some(Packet::Publish(p)) => {
                match p.qos {
                    QoS::AtLeastOnce => c.send(&Packet::PubAck(ack(p.packet_id.unwrap()))).await,
                    QoS::ExactlyOnce => c.send(&Packet::PubRec(ack(p.packet_id.unwrap()))).await,
                    QoS::AtMostOnce => {}
                }
                got.push(p);
            }
            Some(Packet::PubRel(r)) => c.send(&Packet::PubComp(ack(r.packet_id))).await,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    got
}

fn with_retain(mut p: Publish) -> Publish {
    p.retain = true;
    p
}

/// One persistent subscriber offline with queued QoS 1 and QoS 2 messages, and 100 retained
/// messages, all acknowledged; then the broker goes away by `end` (SIGTERM or SIGKILL).
async fn queued_and_retained_survive(end: fn(TestBroker) -> tempfile::TempDir) {
    let b = TestBroker::start_with("");
    let (mut keeper, ack) = Raw::connect(b.tcp, persistent("keeper", 3600)).await;
    assert!(!ack.session_present);
    let opts = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        retain_as_published: true,
        retain_handling: RetainHandling::OnNewSubscription,
        ..Default::default()
    };
    keeper.subscribe_with("q/#", opts, Some(7)).await;
    keeper.send(&Packet::Disconnect(Default::default())).await;
    keeper.expect_closed().await;

    let mut publ = Raw::v5(b.tcp, "pub").await;
    for i in 0..100u16 {
        let p = publish(
            &format!("r/{i}"),
            format!("kept {i}").as_bytes(),
            QoS::AtLeastOnce,
            i + 1,
        );
        publish_acked(&mut publ, with_retain(p)).await;
    }
    for i in 0..100u16 {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        let p = publish(
            &format!("q/{i}"),
            format!("queued {i}").as_bytes(),
            qos,
            i + 1,
        );
        publish_acked(&mut publ, p).await;
    }
    let dir = end(b);

    let b = TestBroker::start_in(dir, crate::durability::ANONYMOUS);
    let (mut keeper, ack) = Raw::connect(b.tcp, persistent("keeper", 3600)).await;
    assert!(ack.session_present, "the persistent session is back");
    let got = take(&mut keeper, 100).await;
    // Every acknowledged message, each QoS level in the order it was published (MQTT 4.6
    // orders messages of one QoS; a QoS 2 message waits for its packet identifier to be
    // durable, a QoS 1 message does not).
    for (qos, first) in [(QoS::AtLeastOnce, 0), (QoS::ExactlyOnce, 1)] {
        let payloads: Vec<String> = got
            .iter()
            .filter(|p| p.qos == qos)
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
            .collect();
        let want: Vec<String> = (first..100)
            .step_by(2)
            .map(|i| format!("queued {i}"))
            .collect();
        assert_eq!(payloads, want, "{qos:?}");
    }
    for p in &got {
        assert_eq!(
            p.properties.subscription_identifiers,
            vec![7],
            "the subscription's id"
        );
    }
    // The subscription itself was restored with its options: live messages still route.
    let mut publ = Raw::v5(b.tcp, "pub").await;
    publish_acked(&mut publ, publish("q/live", b"live", QoS::AtLeastOnce, 1)).await;
    assert_eq!(&take(&mut keeper, 1).await[0].payload[..], b"live");

    let mut late = Raw::v5(b.tcp, "late").await;
    late.subscribe("r/#", QoS::AtLeastOnce).await;
    let mut retained: Vec<String> = take(&mut late, 100)
        .await
        .iter()
        .map(|p| {
            assert!(p.retain);
            String::from_utf8_lossy(&p.payload).into_owned()
        })
        .collect();
    retained.sort();
    let mut want: Vec<String> = (0..100).map(|i| format!("kept {i}")).collect();
    want.sort();
    assert_eq!(retained, want);
}

#[tokio::test]
async fn queued_and_retained_messages_survive_a_graceful_stop() {
    queued_and_retained_survive(TestBroker::stop).await;
}

#[tokio::test]
async fn queued_and_retained_messages_survive_kill_9() {
    queued_and_retained_survive(TestBroker::kill).await;
}

#[tokio::test]
async fn flows_in_progress_resume_after_kill_9() {
    flows_in_progress_resume(TestBroker::kill).await;
}

#[tokio::test]
async fn flows_in_progress_resume_after_a_graceful_stop() {
    flows_in_progress_resume(TestBroker::stop).await;
}

/// Messages in flight when the broker goes away: resent with DUP and their packet
/// identifiers; a QoS 2 message half received from a publisher is not delivered twice; a
/// released QoS 2 message gets its PUBREL again.
async fn flows_in_progress_resume(end: fn(TestBroker) -> tempfile::TempDir) {
    let b = TestBroker::start_with("");
    let (mut sub, _) = Raw::connect(b.tcp, persistent("sub", 3600)).await;
    sub.subscribe("f/#", QoS::ExactlyOnce).await;
    let mut publ = Raw::v5(b.tcp, "pub").await;
    // QoS 1 sent to the subscriber, not acknowledged.
    publish_acked(&mut publ, publish("f/one", b"unacked", QoS::AtLeastOnce, 1)).await;
    let Some(Packet::Publish(first)) = sub.recv().await else {
        panic!("no PUBLISH")
    };
    // QoS 2 received by the subscriber and released (PUBREC answered with PUBREL), PUBCOMP
    // never sent.
    publish_acked(
        &mut publ,
        publish("f/two", b"released", QoS::ExactlyOnce, 2),
    )
    .await;
    let Some(Packet::Publish(second)) = sub.recv().await else {
        panic!("no PUBLISH")
    };
    let second_pid = second.packet_id.unwrap();
    sub.send(&Packet::PubRec(ack(second_pid))).await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(_))));
    // A publisher with a persistent session, half way through a QoS 2 publish: PUBREC
    // received, PUBREL not sent yet.
    let (mut half, _) = Raw::connect(b.tcp, persistent("half", 3600)).await;
    half.send(&Packet::Publish(publish(
        "f/three",
        b"once",
        QoS::ExactlyOnce,
        11,
    )))
    .await;
    assert!(matches!(half.recv().await, Some(Packet::PubRec(_))));
    let Some(Packet::Publish(third)) = sub.recv().await else {
        panic!("no PUBLISH")
    };
    assert_eq!(&third.payload[..], b"once");
    sub.send(&Packet::PubRec(ack(third.packet_id.unwrap())))
        .await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(_))));
    sub.send(&Packet::PubComp(ack(third.packet_id.unwrap())))
        .await;
    // The broker has handled the PUBCOMP once it answers a later PINGREQ on that connection.
    sub.send(&Packet::PingReq).await;
    assert!(matches!(sub.recv().await, Some(Packet::PingResp)));
    // A retained message is journaled and its PUBACK waits for its commit; batches commit in
    // order, so everything above is on disk once this PUBACK arrives.
    publish_acked(
        &mut publ,
        with_retain(publish("barrier", b"x", QoS::AtLeastOnce, 3)),
    )
    .await;
    let dir = end(b);

    let b = TestBroker::start_in(dir, ANONYMOUS);
    let (mut sub, ack_sub) = Raw::connect(b.tcp, persistent("sub", 3600)).await;
    assert!(ack_sub.session_present);
    let (mut half, ack_half) = Raw::connect(b.tcp, persistent("half", 3600)).await;
    assert!(ack_half.session_present);
    // The publisher resends its PUBLISH (DUP): acknowledged again, not delivered again.
    let mut again = publish("f/three", b"once", QoS::ExactlyOnce, 11);
    again.dup = true;
    half.send(&Packet::Publish(again)).await;
    assert!(matches!(half.recv().await, Some(Packet::PubRec(_))));
    half.send(&Packet::PubRel(ack(11))).await;
    match half.recv().await {
        Some(Packet::PubComp(c)) => assert_eq!(
            c.reason_code,
            ReasonCode::SUCCESS,
            "the identifier was known"
        ),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    // The subscriber gets the unacknowledged QoS 1 again, with DUP and its identifier, and the
    // PUBREL of the released QoS 2; nothing else.
    let mut resent = None;
    let mut rel = None;
    for _ in 0..2 {
        match sub.recv().await {
            Some(Packet::Publish(p)) => resent = Some(p),
            Some(Packet::PubRel(r)) => rel = Some(r),
            other => panic!("unexpected {other:?}"),
        }
    }
    let resent = resent.expect("the in-flight QoS 1 message");
    assert!(resent.dup, "resent with DUP");
    assert_eq!(
        resent.packet_id, first.packet_id,
        "under its packet identifier"
    );
    assert_eq!(&resent.payload[..], b"unacked");
    assert_eq!(rel.expect("PUBREL resent").packet_id, second_pid);
    sub.send(&Packet::PubAck(ack(resent.packet_id.unwrap())))
        .await;
    sub.send(&Packet::PubComp(ack(second_pid))).await;
    sub.expect_silence(Duration::from_millis(500)).await;
}

fn will(topic: &str, payload: &'static [u8], delay: Option<u32>) -> Will {
    Will {
        topic: topic.into(),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: delay,
            ..Default::default()
        },
    }
}

/// Wills of connections that were open when the broker crashed are published after it
/// restarts, as if the connections had dropped (after their Will Delay).
#[tokio::test]
async fn wills_of_connections_open_at_a_crash_are_published() {
    let b = TestBroker::start_with("");
    let (mut watcher, _) = Raw::connect(b.tcp, persistent("watcher", 3600)).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    watcher.send(&Packet::Disconnect(Default::default())).await;
    let mut now = connect_v5("now");
    now.will = Some(will("wills/now", b"gone", None));
    let (_now, ack) = Raw::connect(b.tcp, now).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let mut later = persistent("later", 60);
    later.will = Some(will("wills/later", b"gone after 1 s", Some(1)));
    let (_later, _) = Raw::connect(b.tcp, later).await;
    // The CONNACKs above were sent once the wills were durable.
    let dir = b.kill();

    let b = TestBroker::start_in(dir, ANONYMOUS);
    let (mut watcher, ack) = Raw::connect(b.tcp, persistent("watcher", 3600)).await;
    assert!(ack.session_present);
    let mut got: Vec<String> = take(&mut watcher, 2)
        .await
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    got.sort();
    assert_eq!(got, vec!["gone", "gone after 1 s"]);
}

/// A session's expiry counts while the broker is down.
#[tokio::test]
async fn session_expiry_counts_across_downtime() {
    let b = TestBroker::start_with("");
    for (id, expiry) in [("brief", 1), ("lasting", 3600)] {
        let (mut c, _) = Raw::connect(b.tcp, persistent(id, expiry)).await;
        c.subscribe("x/#", QoS::AtLeastOnce).await;
        c.send(&Packet::Disconnect(Default::default())).await;
        c.expect_closed().await;
    }
    let dir = b.stop();
    // Downtime longer than the brief session's expiry is what this test is about.
    std::thread::sleep(Duration::from_millis(1500));
    let b = TestBroker::start_in(dir, ANONYMOUS);
    let (_brief, ack) = Raw::connect(b.tcp, persistent("brief", 1)).await;
    assert!(!ack.session_present, "expired while the broker was down");
    let (_lasting, ack) = Raw::connect(b.tcp, persistent("lasting", 3600)).await;
    assert!(ack.session_present);
}

/// The data directory and both stores are readable by the broker's user alone, and
/// `check-data` reads every record of a stopped broker's stores.
#[tokio::test]
async fn stores_are_private_and_check_data_reads_them() {
    let b = TestBroker::start_with("");
    let (mut c, _) = Raw::connect(b.tcp, persistent("keeper", 3600)).await;
    c.subscribe("a/#", QoS::AtLeastOnce).await;
    let mut publ = Raw::v5(b.tcp, "pub").await;
    publish_acked(
        &mut publ,
        with_retain(publish("a/b", b"r", QoS::AtLeastOnce, 1)),
    )
    .await;
    let data = b.dir.path().join("data");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("tessera.redb")), 0o600);
    assert_eq!(mode(&data.join("broker.redb")), 0o600);
    assert_eq!(mode(&data.join("tls/dev-key.pem")), 0o600);

    let running = b.command(&["check-data"], "");
    assert!(
        !running.status.success(),
        "a running server holds the files"
    );
    assert!(
        String::from_utf8_lossy(&running.stdout).contains("stop it first"),
        "{running:?}"
    );
    let dir = b.stop();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("--config")
        .arg(dir.path().join("tessera.yml"))
        .args(["--json", "check-data"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sound"], true);
    assert_eq!(report["broker"]["retained"], 1);
    assert_eq!(report["broker"]["sessions"], 1);
    assert_eq!(report["broker"]["subscriptions"], 1);
}

/// A store written by a newer release is refused with a clear error, and nothing starts.
#[tokio::test]
async fn a_store_from_a_newer_release_is_refused() {
    let b = TestBroker::start_with("");
    let dir = b.stop();
    let path = dir.path().join("data/broker.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(redb::TableDefinition::<&str, u64>::new("meta"))
            .unwrap()
            .insert("schema_version", 99)
            .unwrap();
        tx.commit().unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("--config")
        .arg(dir.path().join("tessera.yml"))
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("schema version 99") && err.contains("newer Tessera"),
        "{err}"
    );
}

/// `durability: on_stop` keeps the state across a graceful stop (written then) and loses what a
/// crash cut short since the last snapshot; `none` keeps nothing.
#[tokio::test]
async fn on_stop_and_none_keep_what_they_say() {
    for (durability, kept_by_stop) in [("on_stop", true), ("none", false)] {
        let extra = format!("storage:\n  durability: {durability}\n  snapshot_interval: 0\n");
        let b = TestBroker::start_with(&extra);
        let (mut keeper, _) = Raw::connect(b.tcp, persistent("keeper", 3600)).await;
        keeper.subscribe("q/#", QoS::AtLeastOnce).await;
        keeper.send(&Packet::Disconnect(Default::default())).await;
        keeper.expect_closed().await;
        let mut publ = Raw::v5(b.tcp, "pub").await;
        publish_acked(&mut publ, publish("q/1", b"queued", QoS::AtLeastOnce, 1)).await;
        publish_acked(
            &mut publ,
            with_retain(publish("r", b"kept", QoS::AtLeastOnce, 2)),
        )
        .await;
        let dir = b.stop();
        let b = TestBroker::start_in(dir, &format!("{ANONYMOUS}{extra}"));
        let (mut keeper, ack) = Raw::connect(b.tcp, persistent("keeper", 3600)).await;
        assert_eq!(ack.session_present, kept_by_stop, "{durability}");
        if kept_by_stop {
            assert_eq!(&take(&mut keeper, 1).await[0].payload[..], b"queued");
            let mut late = Raw::v5(b.tcp, "late").await;
            late.subscribe("r", QoS::AtLeastOnce).await;
            assert_eq!(&take(&mut late, 1).await[0].payload[..], b"kept");
            // A crash loses what came after the last snapshot (here, the one at the stop).
            publish_acked(
                &mut publ_after(&b).await,
                publish("q/2", b"lost", QoS::AtLeastOnce, 1),
            )
            .await;
            keeper.send(&Packet::Disconnect(Default::default())).await;
            let dir = b.kill();
            let b = TestBroker::start_in(dir, &format!("{ANONYMOUS}{extra}"));
            let (mut keeper, ack) = Raw::connect(b.tcp, persistent("keeper", 3600)).await;
            assert!(ack.session_present, "the session of the last snapshot");
            // As it was then: q/1 still queued (its acknowledgement came later), q/2 unknown.
            assert_eq!(&take(&mut keeper, 1).await[0].payload[..], b"queued");
            keeper.expect_silence(Duration::from_millis(300)).await;
        }
    }
}

async fn publ_after(b: &TestBroker) -> Raw {
    Raw::v5(b.tcp, "pub").await
}

//! Publish and subscribe with real client libraries and tools, at every QoS.

use std::process::Stdio;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::Packet as Packet5;
use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};
use rumqttc::{
    AsyncClient as Client3, Event as Event3, MqttOptions as Options3, Packet as Packet3,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::harness::TestBroker;

const WAIT: Duration = Duration::from_secs(10);

/// A rumqttc 5.0 client whose incoming PUBLISH payloads arrive on a channel.
pub async fn rumqttc_v5(
    opts: Options5,
) -> (
    Client5,
    mpsc::UnboundedReceiver<(String, Vec<u8>, u8, bool)>,
) {
    let (client, mut el) = Client5::new(opts, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event5::Incoming(Packet5::Publish(p))) => {
                    let topic = String::from_utf8_lossy(&p.topic).to_string();
                    let _ = tx.send((topic, p.payload.to_vec(), p.qos as u8, p.retain));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    (client, rx)
}

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for a message")
        .expect("client stopped")
}

#[tokio::test]
async fn rumqttc_v5_roundtrip_at_every_qos() {
    let b = TestBroker::start();
    let (sub, mut rx) = rumqttc_v5(Options5::new("sub5", "127.0.0.1", b.tcp.port())).await;
    sub.subscribe("q/#", QoS5::ExactlyOnce).await.unwrap();
    // Wait for the SUBACK by round-tripping a message.
    let (publ, _prx) = rumqttc_v5(Options5::new("pub5", "127.0.0.1", b.tcp.port())).await;
    for (i, qos) in [QoS5::AtMostOnce, QoS5::AtLeastOnce, QoS5::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        loop {
            publ.publish(format!("q/{i}"), qos, false, format!("m{i}"))
                .await
                .unwrap();
            let got = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
            if let Ok(Some((topic, payload, got_qos, retain))) = got {
                assert_eq!(topic, format!("q/{i}"));
                assert_eq!(payload, format!("m{i}").as_bytes());
                assert_eq!(got_qos, i as u8);
                assert!(!retain);
                break;
            }
            assert!(i == 0, "QoS {i} message lost");
        }
    }
}

#[tokio::test]
async fn rumqttc_v311_roundtrip_at_every_qos() {
    let b = TestBroker::start();
    let (sub, mut sel) = Client3::new(Options3::new("sub3", "127.0.0.1", b.tcp.port()), 100);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = sel.poll().await {
            match ev {
                Event3::Incoming(Packet3::Publish(p)) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec(), p.qos as u8));
                }
                Event3::Incoming(Packet3::SubAck(_)) => {
                    let _ = ready_tx.send(());
                }
                _ => {}
            }
        }
    });
    sub.subscribe("v3/+", rumqttc::QoS::ExactlyOnce)
        .await
        .unwrap();
    recv(&mut ready).await;
    let (publ, mut pel) = Client3::new(Options3::new("pub3", "127.0.0.1", b.tcp.port()), 100);
    tokio::spawn(async move { while pel.poll().await.is_ok() {} });
    for (i, qos) in [
        rumqttc::QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce,
    ]
    .into_iter()
    .enumerate()
    {
        publ.publish(format!("v3/{i}"), qos, false, vec![i as u8; 3])
            .await
            .unwrap();
        let (topic, payload, got_qos) = recv(&mut rx).await;
        assert_eq!(
            (topic, payload, got_qos),
            (format!("v3/{i}"), vec![i as u8; 3], i as u8)
        );
    }
}

/// Starts mosquitto_sub and waits until its SUBACK arrived; returns the child and its
/// message lines.
pub async fn mosquitto_sub(
    args: &[&str],
) -> (tokio::process::Child, mpsc::UnboundedReceiver<String>) {
    // Line-buffered stdout, so each line arrives when printed.
    let mut child = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub"])
        .args(args)
        .arg("-d")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub (Debian mosquitto-clients) must be installed");
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    loop {
        let line = recv(&mut rx).await;
        if line.contains("received SUBACK") {
            break;
        }
    }
    let (mtx, mrx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if !line.starts_with("Client ") && !line.starts_with("Subscribed") {
                let _ = mtx.send(line);
            }
        }
    });
    (child, mrx)
}

pub async fn mosquitto_pub(args: &[&str]) -> std::process::Output {
    Command::new("mosquitto_pub")
        .args(args)
        .output()
        .await
        .expect("mosquitto_pub (Debian mosquitto-clients) must be installed")
}

#[tokio::test]
async fn mosquitto_tools_v5_and_v311_at_every_qos() {
    let b = TestBroker::start();
    let port = b.tcp.port().to_string();
    for version in ["mqttv5", "mqttv311"] {
        let (_sub, mut lines) =
            mosquitto_sub(&["-p", &port, "-V", version, "-t", "m/#", "-q", "2", "-v"]).await;
        for qos in ["0", "1", "2"] {
            let topic = format!("m/{version}/{qos}");
            let out = mosquitto_pub(&[
                "-p", &port, "-V", version, "-t", &topic, "-m", "hi", "-q", qos,
            ])
            .await;
            assert!(out.status.success(), "{out:?}");
            assert_eq!(recv(&mut lines).await, format!("{topic} hi"));
        }
    }
}

#[tokio::test]
async fn mosquitto_sub_will_with_delay_is_published_when_it_is_killed() {
    let b = TestBroker::start();
    let port = b.tcp.port().to_string();
    let (_watch, mut wills) =
        mosquitto_sub(&["-p", &port, "-V", "mqttv5", "-t", "wills/#", "-v"]).await;
    let (mut dying, _) = mosquitto_sub(&[
        "-p",
        &port,
        "-V",
        "mqttv5",
        "-i",
        "dying",
        "-t",
        "x",
        "--will-topic",
        "wills/dying",
        "--will-payload",
        "lost",
        "--will-qos",
        "1",
        "-D",
        "will",
        "will-delay-interval",
        "1",
        "-x",
        "60",
    ])
    .await;
    let killed = std::time::Instant::now();
    dying.start_kill().unwrap();
    assert_eq!(recv(&mut wills).await, "wills/dying lost");
    assert!(
        killed.elapsed() >= Duration::from_millis(900),
        "will delay honoured"
    );
}

#[tokio::test]
async fn mosquitto_subs_share_a_subscription() {
    let b = TestBroker::start();
    let port = b.tcp.port().to_string();
    // Two members of one share group.
    let member = [
        "-p",
        &port,
        "-V",
        "mqttv5",
        "-t",
        "$share/g/jobs",
        "-q",
        "1",
    ];
    let (_a, mut ra) = mosquitto_sub(&member).await;
    let (_b, mut rb) = mosquitto_sub(&member).await;
    let (publ, _rx) = rumqttc_v5(Options5::new("jobber", "127.0.0.1", b.tcp.port())).await;
    for i in 0..20 {
        publ.publish("jobs", QoS5::AtLeastOnce, false, format!("job{i}"))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    let (mut na, mut nb) = (0, 0);
    while got.len() < 20 {
        tokio::select! {
            Some(l) = ra.recv() => { na += 1; got.push(l); }
            Some(l) = rb.recv() => { nb += 1; got.push(l); }
            _ = tokio::time::sleep(WAIT) => panic!("only {} of 20 jobs arrived", got.len()),
        }
    }
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 20, "each job exactly once");
    assert!(na > 0 && nb > 0, "both members got work ({na}, {nb})");
}

#[tokio::test]
async fn rumqttc_session_resumes_with_queued_messages_and_expired_ones_are_dropped() {
    let b = TestBroker::start();
    let port = b.tcp.port().to_string();
    let mut opts = Options5::new("resumer", "127.0.0.1", b.tcp.port());
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(300));
    let (client, mut rx) = rumqttc_v5(opts.clone()).await;
    client
        .subscribe("inbox/#", QoS5::AtLeastOnce)
        .await
        .unwrap();
    // Prove the subscription is in place, then leave.
    loop {
        let out = mosquitto_pub(&[
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-t",
            "inbox/probe",
            "-m",
            "p",
            "-q",
            "1",
        ])
        .await;
        assert!(out.status.success());
        if tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_ok()
        {
            break;
        }
    }
    client.disconnect().await.unwrap();
    while tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("eventloop ends")
        .is_some()
    {}

    for (i, expiry) in [(1, None), (2, Some("1")), (3, None)] {
        let topic = format!("inbox/{i}");
        let mut args = vec![
            "-p", &port, "-V", "mqttv5", "-t", &topic, "-m", "queued", "-q", "1",
        ];
        if let Some(e) = expiry {
            args.extend(["-D", "publish", "message-expiry-interval", e]);
        }
        assert!(mosquitto_pub(&args).await.status.success());
    }
    // Let the one-second message expire while the client is away.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_client, mut rx) = rumqttc_v5(opts).await;
    let mut topics = Vec::new();
    for _ in 0..2 {
        topics.push(recv(&mut rx).await.0);
    }
    assert_eq!(topics, vec!["inbox/1", "inbox/3"]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn rumqttc_takeover_sends_session_taken_over() {
    use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
    use rumqttc::v5::{ConnectionError, StateError};
    let b = TestBroker::start();
    let opts = Options5::new("twin", "127.0.0.1", b.tcp.port());
    let (_c1, mut el1) = Client5::new(opts.clone(), 10);
    loop {
        if let Event5::Incoming(Packet5::ConnAck(_)) = el1.poll().await.unwrap() {
            break;
        }
    }
    let (_c2, _rx2) = rumqttc_v5(opts).await;
    let reason = tokio::time::timeout(WAIT, async {
        loop {
            match el1.poll().await {
                Ok(_) => {}
                Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                    reason_code,
                    ..
                })) => return reason_code,
                Err(e) => panic!("closed without DISCONNECT: {e}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(reason, DisconnectReasonCode::SessionTakenOver);
}

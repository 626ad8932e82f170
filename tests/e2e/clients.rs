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

//! TLS (with the generated development certificate), WebSocket and TLS WebSocket.

use std::time::Duration;

use rumqttc::v5::MqttOptions;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::{TlsConfiguration, Transport};

use crate::clients::rumqttc_v5;
use crate::harness::TestBroker;

fn tls_config(b: &TestBroker) -> TlsConfiguration {
    TlsConfiguration::Rustls(crate::https::client_config(&b.cert_path()))
}

async fn roundtrip(mut opts: MqttOptions, transport: Transport) {
    opts.set_transport(transport);
    let (client, mut rx) = rumqttc_v5(opts).await;
    client.subscribe("tr/x", QoS::AtLeastOnce).await.unwrap();
    for _ in 0..50 {
        client
            .publish("tr/x", QoS::AtLeastOnce, false, "over the wire")
            .await
            .unwrap();
        if let Ok(Some((topic, payload, _, _))) =
            tokio::time::timeout(Duration::from_millis(300), rx.recv()).await
        {
            assert_eq!(topic, "tr/x");
            assert_eq!(payload, b"over the wire");
            return;
        }
    }
    panic!("no message came back");
}

#[tokio::test]
async fn tls_with_the_development_certificate() {
    let b = TestBroker::start();
    assert!(b.log_text().contains("sha256="), "fingerprint is logged");
    let opts = MqttOptions::new("tls", "localhost", b.tls.port());
    roundtrip(opts, Transport::Tls(tls_config(&b))).await;
    // mosquitto_sub trusts the same file.
    let out = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "localhost",
            "-p",
            &b.tls.port().to_string(),
            "--cafile",
        ])
        .arg(b.cert_path())
        .args(["-t", "$SYS/broker/version", "-C", "1", "-W", "5"])
        .output()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("tessera"),
        "{out:?}"
    );
}

fn logged_fingerprint(b: &TestBroker) -> String {
    let log = b.log_text();
    let tail = log.split("sha256=").nth(1).expect("fingerprint is logged");
    tail.split_whitespace().next().unwrap().to_string()
}

#[tokio::test]
async fn development_certificate_is_reused_across_restarts() {
    let b = TestBroker::start();
    let cert = std::fs::read(b.cert_path()).unwrap();
    let fp = logged_fingerprint(&b);
    assert_eq!(fp.len(), 95, "SHA-256 as colon-separated hex: {fp}");
    let dir = b.stop();
    let b = TestBroker::start_in(dir, "");
    assert_eq!(std::fs::read(b.cert_path()).unwrap(), cert);
    assert_eq!(logged_fingerprint(&b), fp);
    assert!(!b.log_text().contains("generated a self-signed"));
}

#[tokio::test]
async fn websocket_and_tls_websocket() {
    let b = TestBroker::start();
    let ws = MqttOptions::new(
        "ws",
        format!("ws://127.0.0.1:{}/mqtt", b.ws.port()),
        b.ws.port(),
    );
    roundtrip(ws, Transport::Ws).await;
    let wss = MqttOptions::new(
        "wss",
        format!("wss://localhost:{}/mqtt", b.wss.port()),
        b.wss.port(),
    );
    roundtrip(wss, Transport::Wss(tls_config(&b))).await;
}

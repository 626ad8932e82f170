//! What an operator sees: graceful shutdown, configuration errors, `$SYS` topics.

use std::time::Duration;

use tessera_broker::codec::{Packet, QoS, ReasonCode};

use crate::harness::TestBroker;
use crate::raw::Raw;

#[tokio::test]
async fn sigterm_disconnects_clients_with_0x8b_and_exits_cleanly() {
    let mut b = TestBroker::start();
    let mut c = Raw::v5(b.tcp, "stayer").await;
    c.subscribe("x", QoS::AtMostOnce).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = b.terminate();
        (s, b)
    });
    match c.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::SERVER_SHUTTING_DOWN),
        other => panic!("{other:?}"),
    }
    let (status, _b) = status.await.unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn sys_topics_report_the_broker() {
    let b = TestBroker::start_with("sys:\n  interval: 1\n");
    let mut s = Raw::v5(b.tcp, "ops").await;
    s.subscribe("$SYS/broker/clients/connected", QoS::AtMostOnce)
        .await;
    // Retained from the last tick, then refreshed every second.
    let mut values = Vec::new();
    while values.len() < 2 {
        let p = s.next_publish().await;
        values.push(String::from_utf8_lossy(&p.payload).to_string());
    }
    assert!(values.iter().any(|v| v == "1"), "{values:?}");
    let mut u = Raw::v5(b.tcp, "ops2").await;
    u.subscribe("$SYS/broker/uptime", QoS::AtMostOnce).await;
    let p = u.next_publish().await;
    assert!(String::from_utf8_lossy(&p.payload).ends_with(" seconds"));
}

#[test]
fn check_config_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "mqtt:\n  max_qos: 1\n  max_qoss: 2\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yml:3:"), "{err}");
    assert!(err.contains("max_qoss"), "{err}");

    let good = dir.path().join("good.yml");
    std::fs::write(&good, "mqtt:\n  max_qos: 1\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());

    // serve refuses a bad file the same way, before binding anything.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bind_failure_names_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir: {}\nlisteners:\n  - type: tcp\n    bind: 127.0.0.1:{port}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("tcp listener on 127.0.0.1:{port}")),
        "{err}"
    );
    let _ = Duration::ZERO;
}

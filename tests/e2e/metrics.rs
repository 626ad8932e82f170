//! The operations listener as Prometheus and an orchestrator see it: `/metrics` parsed by the
//! Prometheus project's own text parser and checked against a scripted workload, `/healthz`,
//! and `/readyz` turning 503 while the stores cannot write and 200 again after.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_broker::codec::{Packet, QoS, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::TestBroker;
use crate::oauth::{login, password_grant, setup, token, x_oauth2};
use crate::raw::{Raw, publish};

/// A plain-HTTP GET: the status and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// One sample as the parser read it.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// Scrapes `/metrics` and parses it with `prometheus_client.parser` (tests/py/parse_metrics.py).
pub async fn scrape(b: &TestBroker) -> Vec<Sample> {
    let (status, body) = http_get(b.metrics, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("/usr/bin/python3")
            .arg("tests/py/parse_metrics.py")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3 with prometheus_client (scripts/test.sh installs it)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| Sample {
            name: s["name"].as_str().unwrap().to_string(),
            labels: serde_json::from_value(s["labels"].clone()).unwrap(),
            value: s["value"].as_f64().unwrap(),
        })
        .collect()
}

/// The value of the sample `name` with exactly these labels (besides none others).
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

fn must(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(samples, name, labels).unwrap_or_else(|| {
        let names: Vec<_> = samples.iter().map(|s| (&s.name, &s.labels)).collect();
        panic!("no sample {name}{labels:?} in {names:?}")
    })
}

#[tokio::test]
async fn metrics_count_a_scripted_workload() {
    let b = setup("sys:\n  interval: 0\n");
    // Before any event, the label sets known in advance are there at 0 (`rate()` works).
    let fresh = scrape(&b).await;
    for (name, labels) in [
        (
            "tessera_authentications_total",
            &[("method", "X-OAUTH2"), ("result", "success")][..],
        ),
        (
            "tessera_authentications_total",
            &[("method", "password"), ("result", "0x86")][..],
        ),
        (
            "tessera_tokens_issued_total",
            &[("grant_type", "refresh_token")][..],
        ),
    ] {
        assert_eq!(must(&fresh, name, labels), 0.0, "{name}{labels:?}");
    }
    let tok = token(&b, "alice", "wonderland", "mqtt").await;
    let refused = password_grant(&b, "alice", "not-her-password", "mqtt", None).await;
    assert_eq!(refused.status, 400, "{}", refused.body);

    let mut sub = login(&b, "metrics-sub", &tok).await;
    sub.subscribe("w/#", QoS::AtLeastOnce).await;
    let (_, ack) = Raw::connect(b.tcp, x_oauth2("intruder", None, Some("not-a-token"))).await;
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    let mut publisher = login(&b, "metrics-pub", &tok).await;

    // 5 QoS 0 of 10 bytes, 3 QoS 1 of 20, 2 QoS 2 of 30; then a retained QoS 0 of 3 bytes
    // on a topic nobody subscribed to.
    for _ in 0..5 {
        publisher
            .publish("w/0", &[b'a'; 10], QoS::AtMostOnce, 0)
            .await;
    }
    for pid in 1..=3 {
        publisher
            .publish("w/1", &[b'b'; 20], QoS::AtLeastOnce, pid)
            .await;
        assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
    }
    for pid in 4..=5 {
        publisher
            .publish("w/2", &[b'c'; 30], QoS::ExactlyOnce, pid)
            .await;
        assert!(matches!(publisher.recv().await, Some(Packet::PubRec(_))));
        publisher.release(pid).await;
    }
    let mut retained = publish("r/x", b"abc", QoS::AtMostOnce, 0);
    retained.retain = true;
    publisher.send(&Packet::Publish(retained)).await;
    for _ in 0..10 {
        sub.next_publish().await;
    }
    // The retained message is routed after the PUBCOMPs above; a ping's answer orders it.
    publisher.send(&Packet::PingReq).await;
    assert!(matches!(publisher.recv().await, Some(Packet::PingResp)));

    let m = scrape(&b).await;
    let v = |name: &str, labels: &[(&str, &str)]| must(&m, name, labels);
    assert_eq!(v("tessera_connections", &[("transport", "tcp")]), 2.0);
    assert_eq!(v("tessera_connections", &[("transport", "tls")]), 0.0);
    assert_eq!(v("tessera_sessions", &[("state", "online")]), 2.0);
    assert_eq!(v("tessera_subscriptions", &[]), 1.0);
    assert_eq!(v("tessera_retained_messages", &[]), 1.0);
    assert_eq!(v("tessera_retained_bytes", &[]), 6.0);
    for (qos, n, bytes) in [("0", 6.0, 53.0), ("1", 3.0, 60.0), ("2", 2.0, 60.0)] {
        assert_eq!(
            v("tessera_messages_received_total", &[("qos", qos)]),
            n,
            "qos {qos}"
        );
        assert_eq!(
            v("tessera_payload_received_bytes_total", &[("qos", qos)]),
            bytes
        );
    }
    // The subscription is QoS 1: QoS 2 messages went out at QoS 1.
    for (qos, n, bytes) in [("0", 5.0, 50.0), ("1", 5.0, 120.0), ("2", 0.0, 0.0)] {
        assert_eq!(
            v("tessera_messages_sent_total", &[("qos", qos)]),
            n,
            "qos {qos}"
        );
        assert_eq!(
            v("tessera_payload_sent_bytes_total", &[("qos", qos)]),
            bytes
        );
    }
    assert_eq!(
        v(
            "tessera_messages_dropped_total",
            &[("reason", "queue_full")]
        ),
        0.0
    );
    assert!(v("tessera_network_received_bytes_total", &[]) > 263.0);
    assert!(v("tessera_connections_accepted_total", &[]) >= 3.0);
    let auth = |result: &str| {
        v(
            "tessera_authentications_total",
            &[("method", "X-OAUTH2"), ("result", result)],
        )
    };
    assert_eq!(auth("success"), 2.0);
    assert_eq!(auth("0x87"), 1.0);
    assert_eq!(
        v("tessera_tokens_issued_total", &[("grant_type", "password")]),
        1.0
    );
    let requests = |status: &str| {
        v(
            "tessera_oauth_requests_total",
            &[("endpoint", "/oauth/token"), ("status", status)],
        )
    };
    assert_eq!(requests("200"), 1.0);
    assert_eq!(requests("400"), 1.0);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        v(
            "tessera_build_info",
            &[("version", version), ("arch", std::env::consts::ARCH)]
        ),
        1.0
    );
    // The commit histogram: cumulative buckets ending in +Inf = count.
    let count = v("tessera_store_commit_duration_seconds_count", &[]);
    let inf = v(
        "tessera_store_commit_duration_seconds_bucket",
        &[("le", "+Inf")],
    );
    assert_eq!(count, inf);
    let mut buckets: Vec<(f64, f64)> = m
        .iter()
        .filter(|s| s.name == "tessera_store_commit_duration_seconds_bucket")
        .map(|s| (s.labels["le"].parse::<f64>().unwrap(), s.value))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");

    // Revoking the token: one revocation, counted.
    let out = b.command(&["token", "revoke", "--user", "alice"], "");
    assert!(out.status.success(), "{out:?}");
    sub.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
    let m = scrape(&b).await;
    assert_eq!(
        must(&m, "tessera_token_revocations_total", &[("what", "user")]),
        1.0
    );
}

#[tokio::test]
async fn healthz_answers_and_readyz_follows_the_stores() {
    let b = TestBroker::start_with_file_limit_allowed("auth:\n  allow_anonymous: true\n");
    assert_eq!(http_get(b.metrics, "/healthz").await.0, 200);
    assert_eq!(
        http_get(b.metrics, "/readyz").await,
        (200, "ready\n".into())
    );
    // Every write past the first 4 KiB of any file now fails (EFBIG): a full disk.
    set_file_limit(b.pid(), "4096");
    let (status, body) = wait_readyz(&b, 503).await;
    assert!(body.contains("store"), "{body}");
    assert_eq!(
        http_get(b.metrics, "/healthz").await.0,
        200,
        "alive, if not ready"
    );
    // A QoS 1 publish to a persistent session is refused, not silently acknowledged.
    let mut keeper = Raw::connect(b.tcp, {
        let mut c = crate::raw::connect_v5("keeper");
        c.clean_start = true;
        c.properties.session_expiry_interval = Some(3600);
        c
    })
    .await
    .0;
    keeper.subscribe("k", QoS::AtLeastOnce).await;
    let mut p = Raw::v5(b.tcp, "p").await;
    p.publish("k", b"x", QoS::AtLeastOnce, 1).await;
    match p.recv().await {
        Some(Packet::PubAck(a)) => assert!(a.reason_code.is_error(), "{a:?}"),
        other => panic!("{other:?} ({status})"),
    }
    // A 3.1.1 PUBACK has no reason code: the publisher's connection ends instead of being
    // told "stored", and it sends the message again on its next connection.
    let mut old = Raw::connect(b.tcp, {
        let mut c = crate::raw::connect_v5("p311");
        c.version = tessera_broker::codec::Version::V3_1_1;
        c
    })
    .await
    .0;
    old.publish("k", b"y", QoS::AtLeastOnce, 2).await;
    assert_eq!(old.recv().await, None, "closed, not acknowledged");
    set_file_limit(b.pid(), "unlimited");
    wait_readyz(&b, 200).await;
}

fn set_file_limit(pid: u32, limit: &str) {
    let out = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--fsize={limit}:unlimited"),
        ])
        .output()
        .expect("prlimit (util-linux)");
    assert!(out.status.success(), "{out:?}");
}

/// Polls `/readyz` until it answers `want` (the journal's heartbeat commits every 5 s).
async fn wait_readyz(b: &TestBroker, want: u16) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http_get(b.metrics, "/readyz").await;
        if status == want {
            return (status, body);
        }
        assert!(Instant::now() < deadline, "readyz stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The session gauges are kept as sessions change, not counted at each scrape: they must follow
/// a persistent subscriber through offline queueing, a resume with a small Receive Maximum, and
/// the end of its session.
#[tokio::test]
async fn session_gauges_follow_a_persistent_subscriber() {
    let b = TestBroker::start();
    let keeper = |clean_start: bool| {
        let mut c = crate::raw::connect_v5("keeper");
        c.clean_start = clean_start;
        c.properties.session_expiry_interval = Some(3600);
        c.properties.receive_maximum = Some(2);
        c
    };
    let gauges = |m: &[Sample]| {
        [
            must(m, "tessera_sessions", &[("state", "online")]),
            must(m, "tessera_sessions", &[("state", "offline")]),
            must(m, "tessera_queued_messages", &[]),
            must(m, "tessera_queued_bytes", &[]),
            must(m, "tessera_queue_longest_messages", &[]),
            must(m, "tessera_inflight_messages", &[]),
        ]
    };
    let mut k = Raw::connect(b.tcp, keeper(true)).await.0;
    k.subscribe("g/#", QoS::AtLeastOnce).await;
    k.send(&Packet::Disconnect(Default::default())).await;
    k.expect_closed().await;
    let mut p = Raw::v5(b.tcp, "gauge-pub").await;
    // The keeper's DISCONNECT may still be on its way through the broker: a PING from the
    // publisher cannot order it, so wait for the gauge to show it offline.
    let deadline = Instant::now() + Duration::from_secs(10);
    while must(
        &scrape(&b).await,
        "tessera_sessions",
        &[("state", "offline")],
    ) != 1.0
    {
        assert!(Instant::now() < deadline, "the keeper never went offline");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for pid in 1..=5 {
        p.publish("g/1", &[b'x'; 10], QoS::AtLeastOnce, pid).await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    }
    // online, offline, queued, bytes, longest (5 reads 7), in flight
    assert_eq!(gauges(&scrape(&b).await), [1.0, 1.0, 5.0, 50.0, 7.0, 0.0]);

    // Resumed with Receive Maximum 2 and nothing acknowledged: two in flight, three queued.
    let (mut k, ack) = Raw::connect(b.tcp, keeper(false)).await;
    assert!(ack.session_present);
    for _ in 0..2 {
        let got = k.recv().await;
        assert!(matches!(got, Some(Packet::Publish(_))), "{got:?}");
    }
    k.send(&Packet::PingReq).await;
    let pong = k.recv().await;
    assert!(matches!(pong, Some(Packet::PingResp)), "{pong:?}");
    assert_eq!(gauges(&scrape(&b).await), [2.0, 0.0, 3.0, 30.0, 3.0, 2.0]);

    // A clean start ends that session: its queue and what was in flight are gone.
    let (_k, ack) = Raw::connect(b.tcp, keeper(true)).await;
    assert!(!ack.session_present);
    assert_eq!(gauges(&scrape(&b).await), [2.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
}

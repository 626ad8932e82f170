//! The crash loop: publishers at QoS 1 and QoS 2 send to a persistent subscriber while the
//! broker is killed (SIGKILL) at random moments, also while it is starting, restarted, and
//! everyone resumes. Then every message a publisher was told is stored (PUBACK, PUBREC) must
//! have reached the subscriber: QoS 1 at least once, QoS 2 exactly once.
//!
//! `CRASH_KILLS` sets the number of kills (default 10, about a minute); `CRASH_SEED` replays
//! a run (the seed is printed). `scripts/crash-loop.sh 100` runs the long version.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_broker::codec::{Packet, PubResp, Publish, QoS, ReasonCode};

use crate::durability::{ANONYMOUS, persistent};
use crate::harness::TestBroker;
use crate::raw::{Raw, connect_v5, publish};

/// A small deterministic generator, so a failing run can be replayed from its seed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn ack(pid: u16) -> PubResp {
    PubResp {
        packet_id: pid,
        ..Default::default()
    }
}

/// What a publisher knows across the broker's deaths.
#[derive(Default)]
struct Publisher {
    qos: u8,
    next: u64,
    next_pid: u16,
    /// pid → (message number, PUBREC received)
    inflight: BTreeMap<u16, (u64, bool)>,
    /// Messages the broker acknowledged (PUBACK, or PUBREC for QoS 2).
    acked: BTreeSet<u64>,
}

/// What the subscriber knows across the broker's deaths.
#[derive(Default)]
struct Subscriber {
    /// (publisher QoS, message number) → deliveries.
    received: HashMap<(u8, u64), u32>,
    /// QoS 2 identifiers received and not yet released (the receiver side of MQTT 4.3.3).
    awaiting_release: BTreeSet<u16>,
}

impl Publisher {
    fn alloc(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.next_pid) {
                return self.next_pid;
            }
        }
    }

    /// Publishes until the connection dies, keeping up to 16 messages in flight. A QoS 2
    /// publisher resumes its session: unacknowledged PUBLISH packets again (DUP), PUBREL for
    /// those already received.
    async fn run(&mut self, addr: SocketAddr) {
        let qos = if self.qos == 1 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        let id = format!("pub{}", self.qos);
        let connect = if self.qos == 2 {
            persistent(&id, 3600)
        } else {
            connect_v5(&id)
        };
        let Ok(Ok(mut c)) =
            tokio::time::timeout(Duration::from_secs(5), try_connect(addr, connect)).await
        else {
            return;
        };
        if self.qos == 1 {
            // A clean session: what was in flight is simply not known to be stored.
            self.inflight.clear();
        }
        for (pid, (n, released)) in self.inflight.clone() {
            let ok = if released {
                c.try_send(&Packet::PubRel(ack(pid))).await
            } else {
                let mut p = message(qos, pid, n);
                p.dup = true;
                c.try_send(&Packet::Publish(p)).await
            };
            if !ok {
                return;
            }
        }
        loop {
            while self.inflight.len() < 16 {
                let pid = self.alloc();
                let n = self.next;
                self.next += 1;
                self.inflight.insert(pid, (n, false));
                if !c.try_send(&Packet::Publish(message(qos, pid, n))).await {
                    return;
                }
            }
            match c.try_recv().await {
                Some(Packet::PubAck(a)) if !a.reason_code.is_error() => {
                    if let Some((n, _)) = self.inflight.remove(&a.packet_id) {
                        self.acked.insert(n);
                    }
                }
                Some(Packet::PubRec(r)) if !r.reason_code.is_error() => {
                    if let Some((n, released)) = self.inflight.get_mut(&r.packet_id) {
                        self.acked.insert(*n);
                        *released = true;
                    }
                    if !c.try_send(&Packet::PubRel(ack(r.packet_id))).await {
                        return;
                    }
                }
                Some(Packet::PubComp(p)) => {
                    self.inflight.remove(&p.packet_id);
                }
                Some(Packet::PubAck(a)) | Some(Packet::PubRec(a)) => {
                    // Refused: not stored, so not counted.
                    self.inflight.remove(&a.packet_id);
                }
                Some(_) => {}
                None => return,
            }
        }
    }
}

fn message(qos: QoS, pid: u16, n: u64) -> Publish {
    let mut p = publish("crash/m", &[], qos, pid);
    p.payload = Bytes::from(format!("{}:{n}", qos as u8));
    p
}

impl Subscriber {
    /// Receives until the connection dies or `quiet` passes without a packet.
    async fn run(&mut self, addr: SocketAddr, quiet: Duration) -> bool {
        let Ok(Ok(mut c)) = tokio::time::timeout(
            Duration::from_secs(5),
            try_connect(addr, persistent("sub", 3600)),
        )
        .await
        else {
            return false;
        };
        loop {
            let packet = match tokio::time::timeout(quiet, c.try_recv()).await {
                Err(_) => return true,
                Ok(None) => return false,
                Ok(Some(p)) => p,
            };
            let reply = match packet {
                Packet::Publish(p) => {
                    let text = String::from_utf8_lossy(&p.payload).into_owned();
                    let (q, n) = text.split_once(':').expect("qos:n");
                    let key = (q.parse().unwrap(), n.parse().unwrap());
                    let pid = p.packet_id.unwrap();
                    match p.qos {
                        QoS::ExactlyOnce => {
                            // Method B of MQTT 4.3.3: deliver on PUBLISH unless the identifier
                            // is still awaiting its PUBREL (a resend).
                            if self.awaiting_release.insert(pid) {
                                *self.received.entry(key).or_default() += 1;
                            }
                            Packet::PubRec(ack(pid))
                        }
                        _ => {
                            *self.received.entry(key).or_default() += 1;
                            Packet::PubAck(ack(pid))
                        }
                    }
                }
                Packet::PubRel(r) => {
                    self.awaiting_release.remove(&r.packet_id);
                    Packet::PubComp(ack(r.packet_id))
                }
                _ => continue,
            };
            if !c.try_send(&reply).await {
                return false;
            }
        }
    }
}

async fn try_connect(
    addr: SocketAddr,
    connect: tessera_broker::codec::Connect,
) -> std::io::Result<Raw> {
    let mut raw = Raw::try_open(addr).await?;
    if !raw.try_send(&Packet::Connect(Box::new(connect))).await {
        return Err(std::io::ErrorKind::BrokenPipe.into());
    }
    match raw.try_recv().await {
        Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::SUCCESS => Ok(raw),
        other => Err(std::io::Error::other(format!("no CONNACK: {other:?}"))),
    }
}

#[tokio::test]
async fn every_acknowledged_message_survives_kill_9_at_random_moments() {
    let kills: u64 = std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("crash loop: {kills} kills, CRASH_SEED={seed}");
    let mut rng = Lcg(seed);
    let mut publishers = [
        Publisher {
            qos: 1,
            ..Default::default()
        },
        Publisher {
            qos: 2,
            ..Default::default()
        },
    ];
    let mut sub = Subscriber::default();

    let b = TestBroker::start_with("");
    {
        let (mut s, _) = Raw::connect(b.tcp, persistent("sub", 3600)).await;
        s.subscribe("crash/#", QoS::ExactlyOnce).await;
    }
    let mut b = Some(b);
    let started = Instant::now();
    for k in 0..kills {
        let broker = b.take().unwrap();
        let addr = broker.tcp;
        let run_for = Duration::from_millis(200 + rng.below(1300));
        let [p1, p2] = &mut publishers;
        let traffic = async {
            tokio::join!(
                p1.run(addr),
                p2.run(addr),
                sub.run(addr, Duration::from_secs(30)),
            );
        };
        let killed = async {
            tokio::time::sleep(run_for).await;
            // SIGKILL while the traffic flows: mid-commit, mid-packet, anywhere.
            tokio::task::spawn_blocking(move || broker.kill())
                .await
                .unwrap()
        };
        let (dir, ()) = tokio::join!(killed, traffic);
        // Every third time, also a kill while the broker recovers its state.
        let dir = if k % 3 == 2 {
            let after = Duration::from_millis(rng.below(150));
            tokio::task::spawn_blocking(move || {
                TestBroker::kill_while_starting(dir, ANONYMOUS, after)
            })
            .await
            .unwrap()
        } else {
            dir
        };
        b = Some(
            tokio::task::spawn_blocking(move || TestBroker::start_in(dir, ANONYMOUS))
                .await
                .unwrap(),
        );
    }
    // Let every flow complete on a broker that lives, then drain the subscriber.
    let broker = b.take().unwrap();
    let addr = broker.tcp;
    for p in &mut publishers {
        p.next_pid = p.next_pid.max(1);
    }
    let [p1, p2] = &mut publishers;
    let settle = async {
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            tokio::join!(p1.run(addr), p2.run(addr));
        })
        .await;
    };
    tokio::join!(settle, async {
        assert!(
            sub.run(addr, Duration::from_secs(3)).await,
            "the subscriber drained"
        );
    });
    println!(
        "crash loop: {kills} kills in {:.1} s; acknowledged QoS 1: {}, QoS 2: {}",
        started.elapsed().as_secs_f64(),
        publishers[0].acked.len(),
        publishers[1].acked.len()
    );
    for p in &publishers {
        assert!(
            !p.acked.is_empty(),
            "QoS {} publisher got acknowledgements",
            p.qos
        );
        let missing: Vec<u64> = p
            .acked
            .iter()
            .copied()
            .filter(|n| !sub.received.contains_key(&(p.qos, *n)))
            .collect();
        assert!(
            missing.is_empty(),
            "QoS {}: {} acknowledged messages lost (first: {:?}); CRASH_SEED={seed}",
            p.qos,
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }
    let twice: Vec<u64> = sub
        .received
        .iter()
        .filter(|((q, _), c)| *q == 2 && **c > 1)
        .map(|((_, n), _)| *n)
        .collect();
    assert!(
        twice.is_empty(),
        "QoS 2 delivered more than once: {twice:?}; CRASH_SEED={seed}"
    );
    drop(broker);
}

//! The benchmark scenarios. Each is bounded in time and count, counts at the subscribers after
//! a warm-up, and reports one JSON object. QoS 1 runs end with an exact count check.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use tessera_broker::codec::{Packet, QoS, Version};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{self, Error, Login};

/// Unacknowledged QoS 1 publishes per publisher.
const WINDOW: usize = 64;
/// Publishes queued per write.
const BATCH: usize = 64;

#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// Where subscribers connect: `addr`, or another node of a cluster (publishers stay on
    /// `addr`), for cross-node figures.
    pub sub_addr: SocketAddr,
    pub login: Login,
    /// Protocol of every client (3.1.1 is what all compared brokers implement fully).
    pub version: Version,
    /// Prefix of client ids, unique per run.
    pub run: String,
    /// Subscribers keep persistent sessions (whose messages a durable broker stores).
    pub persistent: bool,
}

/// A tag unique to one scenario call, so topics and client ids never meet those of an earlier
/// run whose last messages the broker may still be delivering.
fn tag(t: &Target) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{}-{}", t.run, NEXT.fetch_add(1, Ordering::Relaxed))
}

fn payload(size: usize) -> Bytes {
    Bytes::from(vec![b'x'; size.max(8)])
}

fn now_nanos(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// A subscriber that counts messages (and, with `epoch`, records latencies from an 8-byte
/// timestamp at the start of each payload). Acknowledges QoS 1 and 2.
async fn counting_subscriber(
    t: &Target,
    id: String,
    filter: &str,
    qos: QoS,
    counter: Arc<AtomicU64>,
    latencies: Option<(Instant, Arc<std::sync::Mutex<Vec<u64>>>)>,
    stop: Arc<AtomicBool>,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let (mut r, mut w) =
        client::connect_session(t.sub_addr, &id, &t.login, t.version, t.persistent).await?;
    client::subscribe(&mut r, &mut w, filter, qos).await?;
    Ok(tokio::spawn(async move {
        let mut local = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            // A timer only when a read is needed: one per packet would cost more than the packet.
            let p = if r.has_packet() {
                r.recv().await
            } else {
                match tokio::time::timeout(Duration::from_millis(200), r.recv()).await {
                    Ok(p) => p,
                    Err(_) => continue,
                }
            };
            let Ok(p) = p else { continue };
            if let Packet::Publish(p) = p {
                counter.fetch_add(1, Ordering::Relaxed);
                if let Some((epoch, _)) = &latencies
                    && p.payload.len() >= 8
                {
                    let sent = u64::from_be_bytes(p.payload[..8].try_into().unwrap_or_default());
                    local.push(now_nanos(*epoch).saturating_sub(sent));
                }
                match (p.qos, p.packet_id) {
                    (QoS::ExactlyOnce, Some(id)) => w.queue(&client::ack(Packet::PubRec, id)),
                    (_, Some(id)) => w.queue(&client::ack(Packet::PubAck, id)),
                    _ => {}
                }
            } else if let Packet::PubRel(r) = p {
                w.queue(&client::ack(Packet::PubComp, r.packet_id));
            }
            // Acknowledge in batches: write once the read buffer holds no further packet.
            if w.buffered() > 0 && !r.has_packet() {
                let _ = w.flush().await;
            }
        }
        if let Some((_, all)) = latencies {
            all.lock().unwrap().extend(local);
        }
    }))
}

/// A measured run: a warm-up (up to a fifth of the run, at most 1 s) that is not counted,
/// then `secs` that are.
struct Window {
    warm_until: Instant,
    deadline: Instant,
}

impl Window {
    fn new(secs: f64) -> Window {
        let warm_until = Instant::now() + Duration::from_secs_f64((secs * 0.2).min(1.0));
        Window {
            warm_until,
            deadline: warm_until + Duration::from_secs_f64(secs),
        }
    }

    /// Waits out the warm-up; returns the count reached by then, and when.
    async fn warmed(&self, counter: &AtomicU64) -> (u64, Instant) {
        tokio::time::sleep_until(self.warm_until.into()).await;
        (counter.load(Ordering::Relaxed), Instant::now())
    }
}

/// What one publisher sends.
struct Pub {
    id: String,
    topic: String,
    qos: QoS,
    size: usize,
    deadline: Instant,
    /// Messages per second; flat out if absent.
    rate: Option<u64>,
    /// Stamp each payload with the send time since this instant (for latency).
    epoch: Option<Instant>,
    /// Record each QoS 1 message's time from PUBLISH written to PUBACK read (QoS 2: to
    /// PUBREC read), in nanoseconds.
    ack_latencies: Option<Arc<std::sync::Mutex<Vec<u64>>>>,
}

/// A publisher sending until its deadline, at its rate if given; QoS 1 and 2 keep at most
/// `WINDOW` unacknowledged (QoS 2: not completed). Returns how many the broker accepted.
async fn publisher(t: Target, spec: Pub) -> Result<u64, Error> {
    let Pub {
        id,
        topic,
        qos,
        size,
        deadline,
        rate,
        epoch,
        ack_latencies,
    } = spec;
    let (mut r, mut w) = client::connect(t.addr, &id, &t.login, t.version).await?;
    let base = payload(size);
    let acked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let window = Arc::new(Semaphore::new(WINDOW));
    // When each packet identifier was written, for PUBLISH-to-PUBACK latency.
    let sent_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..=u16::MAX as usize).map(|_| AtomicU64::new(0)).collect());
    let clock = Instant::now();
    // QoS 2: the PUBRECs read, for the writer to answer with PUBREL.
    let (received_tx, mut received) = tokio::sync::mpsc::unbounded_channel::<u16>();
    let reader = if qos != QoS::AtMostOnce {
        let (acked, refused) = (acked.clone(), refused.clone());
        let window = window.clone();
        let sent_at = sent_at.clone();
        let latencies = ack_latencies.clone();
        Some(tokio::spawn(async move {
            while let Ok(p) = r.recv().await {
                // A PUBACK or a refusing PUBREC ends the exchange, as PUBCOMP does; an
                // accepting PUBREC asks the writer for a PUBREL.
                let a = match p {
                    Packet::PubComp(_) => {
                        window.add_permits(1);
                        continue;
                    }
                    Packet::PubRec(a) if !a.reason_code.is_error() => {
                        let _ = received_tx.send(a.packet_id);
                        a
                    }
                    Packet::PubRec(a) | Packet::PubAck(a) => {
                        window.add_permits(1);
                        a
                    }
                    _ => continue,
                };
                if a.reason_code.is_error() {
                    // Not accepted (a cluster node without JetStream says 0x80).
                    REFUSED.fetch_add(1, Ordering::Relaxed);
                    refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                acked.fetch_add(1, Ordering::Relaxed);
                // Recorded at once: this task is aborted when the publisher is done.
                if let Some(all) = &latencies {
                    let t0 = sent_at[a.packet_id as usize].load(Ordering::Relaxed);
                    all.lock()
                        .unwrap()
                        .push(now_nanos(clock).saturating_sub(t0));
                }
            }
        }))
    } else {
        None
    };
    let mut sent: u64 = 0;
    let mut pid: u16 = 0;
    let mut tick =
        rate.map(|r| tokio::time::interval(Duration::from_nanos(1_000_000_000 / r.max(1))));
    'outer: while Instant::now() < deadline {
        let batch = if tick.is_some() { 1 } else { BATCH };
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        for _ in 0..batch {
            if qos != QoS::AtMostOnce {
                while let Ok(id) = received.try_recv() {
                    w.queue(&client::ack(Packet::PubRel, id));
                }
                if w.buffered() > 0 && window.available_permits() == 0 {
                    w.flush().await?;
                }
                let permit = loop {
                    let got = tokio::time::timeout_at(deadline.into(), async {
                        tokio::select! {
                            p = window.acquire() => Ok(p),
                            id = received.recv() => Err(id),
                        }
                    });
                    match got.await {
                        Ok(Ok(Ok(p))) => break p,
                        Ok(Err(Some(id))) => {
                            w.queue(&client::ack(Packet::PubRel, id));
                            w.flush().await?;
                        }
                        _ => break 'outer,
                    }
                };
                permit.forget();
                pid = if pid == u16::MAX { 1 } else { pid + 1 };
            }
            let body = match epoch {
                Some(e) => {
                    let mut v = base.to_vec();
                    v[..8].copy_from_slice(&now_nanos(e).to_be_bytes());
                    Bytes::from(v)
                }
                None => base.clone(),
            };
            if ack_latencies.is_some() && qos != QoS::AtMostOnce {
                // Stamped before the write, so the PUBACK can never be read first.
                sent_at[pid as usize].store(now_nanos(clock), Ordering::Relaxed);
            }
            w.queue(&client::publish(&topic, body, qos, pid, false));
            sent += 1;
        }
        w.flush().await?;
    }
    w.flush().await?;
    if qos != QoS::AtMostOnce {
        // Wait for the outstanding acknowledgements (QoS 2: completions).
        let until = Instant::now() + Duration::from_secs(10);
        while (acked.load(Ordering::Relaxed) + refused.load(Ordering::Relaxed) < sent
            || window.available_permits() < WINDOW)
            && Instant::now() < until
        {
            while let Ok(id) = received.try_recv() {
                w.queue(&client::ack(Packet::PubRel, id));
            }
            w.flush().await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Some(r) = reader {
            r.abort();
        }
        Ok(acked.load(Ordering::Relaxed))
    } else {
        Ok(sent)
    }
}

/// Waits until `counter` reaches `want` or `timeout` passes; returns when it stopped changing.
async fn wait_count(counter: &AtomicU64, want: u64, timeout: Duration) -> Instant {
    let until = Instant::now() + timeout;
    let mut last = counter.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while Instant::now() < until {
        let now = counter.load(Ordering::Relaxed);
        if now >= want {
            return Instant::now();
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    last_change
}

/// Scenario 1: N publishers → 1 subscriber.
pub async fn fan_in(
    t: &Target,
    publishers: usize,
    qos: QoS,
    size: usize,
    secs: f64,
) -> Result<Value, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicU64::new(0));
    let k = tag(t);
    let sub = counting_subscriber(
        t,
        format!("{k}-fanin-sub"),
        &format!("fanin/{k}/#"),
        qos,
        got.clone(),
        None,
        stop.clone(),
    )
    .await?;
    let window = Window::new(secs);
    let deadline = window.deadline;
    let mut set = JoinSet::new();
    for i in 0..publishers {
        set.spawn(publisher(
            t.clone(),
            Pub {
                id: format!("{k}-fanin-pub{i}"),
                topic: format!("fanin/{k}/{i}"),
                qos,
                size,
                deadline,
                rate: None,
                epoch: None,
                ack_latencies: None,
            },
        ));
    }
    let (at_warm, warm_at) = window.warmed(&got).await;
    let mut accepted = 0;
    while let Some(r) = set.join_next().await {
        accepted += r??;
    }
    let mut result = json!({ "scenario": "fan_in", "publishers": publishers, "qos": qos as u8, "payload": size });
    if qos == QoS::AtLeastOnce {
        let end = wait_count(&got, accepted, Duration::from_secs(30)).await;
        let received = got.load(Ordering::Relaxed);
        result["sent"] = json!(accepted);
        result["received"] = json!(received);
        result["exact"] = json!(received == accepted);
        result["msgs_per_sec"] =
            json!((received - at_warm) as f64 / end.duration_since(warm_at).as_secs_f64());
    } else {
        let received = got.load(Ordering::Relaxed) - at_warm;
        result["sent"] = json!(accepted);
        result["msgs_per_sec"] = json!(received as f64 / warm_at.elapsed().as_secs_f64().max(1e-9));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sub.await;
    Ok(result)
}

pub(crate) fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// PUBACKs with an error reason code, over the whole process (one scenario per run).
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Scenario 2: N publisher/subscriber pairs at QoS 1, at `rate` per pair or flat out: throughput
/// and end-to-end latency.
pub async fn pairs(
    t: &Target,
    n: usize,
    qos: QoS,
    rate: Option<u64>,
    secs: f64,
) -> Result<Value, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ack_lat = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut subs = Vec::new();
    let k = tag(t);
    for i in 0..n {
        subs.push(
            counting_subscriber(
                t,
                format!("{k}-pair-sub{i}"),
                &format!("pair/{k}/{i}"),
                qos,
                got.clone(),
                Some((epoch, lat.clone())),
                stop.clone(),
            )
            .await?,
        );
    }
    // Across nodes too: a SUBACK comes once the other nodes route the subscription's messages.
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut set = JoinSet::new();
    for i in 0..n {
        set.spawn(publisher(
            t.clone(),
            Pub {
                id: format!("{k}-pair-pub{i}"),
                topic: format!("pair/{k}/{i}"),
                qos,
                size: 64,
                deadline,
                rate,
                epoch: Some(epoch),
                ack_latencies: Some(ack_lat.clone()),
            },
        ));
    }
    let mut accepted = 0;
    while let Some(r) = set.join_next().await {
        accepted += r??;
    }
    let end = wait_count(&got, accepted, Duration::from_secs(30)).await;
    let on_time = got.load(Ordering::Relaxed);
    // Paced runs (the cluster's fault figures): what did not come by the lull may come late,
    // redelivered after JetStream's 30 s acknowledgement wait; waited for, and told apart.
    let patience = Instant::now() + Duration::from_secs(40);
    while rate.is_some() && got.load(Ordering::Relaxed) < accepted && Instant::now() < patience {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late_by = end.elapsed();
    stop.store(true, Ordering::Relaxed);
    for s in subs {
        let _ = s.await;
    }
    let received = got.load(Ordering::Relaxed);
    let mut l = lat.lock().unwrap().clone();
    l.sort_unstable();
    let mut a = ack_lat.lock().unwrap().clone();
    a.sort_unstable();
    let mut result = json!({
        "scenario": "pairs", "pairs": n, "qos": qos as u8, "rate_per_pair": rate, "persistent": t.persistent,
        "sent": accepted, "received": received, "exact": received == accepted,
        "refused": REFUSED.load(Ordering::Relaxed),
        "msgs_per_sec": received as f64 / end.duration_since(start).as_secs_f64(),
        "p50_us": percentile(&l, 0.5), "p99_us": percentile(&l, 0.99), "p999_us": percentile(&l, 0.999),
    });
    if rate.is_some() {
        result["received"] = json!(on_time);
        result["exact"] = json!(on_time == accepted);
        result["late"] = json!(received - on_time);
        result["late_ms"] = json!(if received > on_time {
            late_by.as_millis() as u64
        } else {
            0
        });
        result["all_in_the_end"] = json!(received >= accepted);
        // Publish to PUBACK: what a durable broker's acknowledgement costs the publisher.
        result["ack_p50_us"] = json!(percentile(&a, 0.5));
        result["ack_p99_us"] = json!(percentile(&a, 0.99));
    }
    Ok(result)
}

/// Scenario 3: 1 publisher → N subscribers at QoS 0: deliveries per second.
pub async fn fan_out(
    t: &Target,
    subscribers: usize,
    size: usize,
    secs: f64,
) -> Result<Value, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicU64::new(0));
    let mut subs = Vec::new();
    let k = tag(t);
    let topic = format!("fanout/{k}");
    for i in 0..subscribers {
        subs.push(
            counting_subscriber(
                t,
                format!("{k}-fanout-sub{i}"),
                &topic,
                QoS::AtMostOnce,
                got.clone(),
                None,
                stop.clone(),
            )
            .await?,
        );
    }
    let window = Window::new(secs);
    let deadline = window.deadline;
    let publ = tokio::spawn(publisher(
        t.clone(),
        Pub {
            id: format!("{k}-fanout-pub"),
            topic: topic.clone(),
            qos: QoS::AtMostOnce,
            size,
            deadline,
            rate: None,
            epoch: None,
            ack_latencies: None,
        },
    ));
    let (at_warm, warm_at) = window.warmed(&got).await;
    let sent = publ.await??;
    let delivered = got.load(Ordering::Relaxed) - at_warm;
    let rate = delivered as f64 / warm_at.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for s in subs {
        let _ = s.await;
    }
    Ok(
        json!({ "scenario": "fan_out", "subscribers": subscribers, "payload": size, "published": sent, "deliveries_per_sec": rate }),
    )
}

/// Scenario 4: M clients connecting and disconnecting, `concurrency` at a time.
pub async fn connect_storm(
    t: &Target,
    total: usize,
    concurrency: usize,
    pid: Option<u32>,
) -> Result<Value, Error> {
    let next = Arc::new(AtomicU64::new(0));
    let k = tag(t);
    let cpu_before = pid.and_then(cpu_ticks);
    let start = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..concurrency {
        let t = t.clone();
        let next = next.clone();
        let k = k.clone();
        set.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i as usize >= total {
                    break;
                }
                let began = Instant::now();
                let login = t.login.for_client(i as usize);
                let (_r, mut w) =
                    client::connect(t.addr, &format!("{k}-storm{i}"), &login, t.version).await?;
                lat.push(began.elapsed().as_nanos() as u64);
                w.send(&Packet::Disconnect(Default::default())).await?;
            }
            Ok::<_, Error>(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    // The broker may still be closing the last connections: their cost belongs to the storm.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let broker_cpu_us = match (cpu_before, pid.and_then(cpu_ticks)) {
        (Some(a), Some(b)) if !all.is_empty() => {
            Some((b - a) as f64 * 1e6 / clock_ticks_per_sec() / all.len() as f64)
        }
        _ => None,
    };
    all.sort_unstable();
    Ok(json!({
        "scenario": "connect_storm", "clients": total, "concurrency": concurrency,
        "connacks_per_sec": all.len() as f64 / elapsed, "p99_us": percentile(&all, 0.99),
        "broker_cpu_us_per_connack": broker_cpu_us,
        "connacks_per_broker_cpu_sec": broker_cpu_us.filter(|&us| us > 0.0).map(|us| 1e6 / us),
    }))
}

/// User + system CPU time a process has used, in clock ticks (/proc/PID/stat fields 14, 15).
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// USER_HZ, the unit of /proc/PID/stat times: 100 on every Linux architecture's ABI.
pub(crate) fn clock_ticks_per_sec() -> f64 {
    100.0
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Scenario 5: N idle connections: broker resident memory per connection.
pub async fn idle(t: &Target, n: usize, broker_pid: u32) -> Result<Value, Error> {
    let before = rss_kib(broker_pid).ok_or("cannot read the broker's RSS")?;
    let mut conns = Vec::with_capacity(n);
    let mut set = JoinSet::new();
    let next = Arc::new(AtomicU64::new(0));
    let k = tag(t);
    for _ in 0..64 {
        let t = t.clone();
        let next = next.clone();
        let k = k.clone();
        set.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i as usize >= n {
                    break;
                }
                mine.push(
                    client::connect(t.addr, &format!("{k}-idle{i}"), &t.login, t.version).await?,
                );
            }
            Ok::<_, Error>(mine)
        });
    }
    while let Some(r) = set.join_next().await {
        conns.extend(r??);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(broker_pid).ok_or("cannot read the broker's RSS")?;
    drop(conns);
    Ok(json!({
        "scenario": "idle", "connections": n, "rss_before_kib": before, "rss_after_kib": after,
        "kib_per_connection": (after.saturating_sub(before)) as f64 / n as f64,
    }))
}

/// The next packet, or an error after 30 s (a broker that stops answering ends the run).
async fn recv_within(r: &mut client::Reader) -> Result<Packet, Error> {
    tokio::time::timeout(Duration::from_secs(30), r.recv())
        .await
        .map_err(|_| -> Error { "no answer from the broker within 30 s".into() })?
}

/// Scenario 6: N retained topics; time for a `#` subscriber to receive all of them.
pub async fn retained(t: &Target, n: u64) -> Result<Value, Error> {
    let k = tag(t);
    let (mut r, mut w) =
        client::connect(t.addr, &format!("{k}-ret-pub"), &t.login, t.version).await?;
    let body = payload(16);
    let mut pid: u16 = 0;
    let mut outstanding = 0usize;
    for i in 0..n {
        pid = if pid == u16::MAX { 1 } else { pid + 1 };
        w.queue(&client::publish(
            &format!("ret/{k}/{}/{i}", i / 1000),
            body.clone(),
            QoS::AtLeastOnce,
            pid,
            true,
        ));
        outstanding += 1;
        if outstanding >= WINDOW {
            w.flush().await?;
            while outstanding > WINDOW / 2 {
                if let Packet::PubAck(_) = recv_within(&mut r).await? {
                    outstanding -= 1;
                }
            }
        }
    }
    w.flush().await?;
    while outstanding > 0 {
        if let Packet::PubAck(_) = recv_within(&mut r).await? {
            outstanding -= 1;
        }
    }
    let (mut sr, mut sw) =
        client::connect(t.addr, &format!("{k}-ret-sub"), &t.login, t.version).await?;
    let start = Instant::now();
    client::subscribe(&mut sr, &mut sw, &format!("ret/{k}/#"), QoS::AtMostOnce).await?;
    let mut got = 0u64;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(30), sr.recv()).await {
            Ok(Ok(Packet::Publish(_))) => got += 1,
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
    Ok(
        json!({ "scenario": "retained", "topics": n, "received": got, "complete": got == n, "seconds": start.elapsed().as_secs_f64() }),
    )
}

/// Publishes `n` retained QoS 1 messages (`{prefix}/{i/1000}/{i}`), `window` unacknowledged
/// at most; returns when the broker has acknowledged them all.
async fn publish_retained(
    t: &Target,
    id: &str,
    prefix: &str,
    n: u64,
    window: usize,
) -> Result<(), Error> {
    let (mut r, mut w) = client::connect(t.addr, id, &t.login, t.version).await?;
    let body = payload(16);
    let mut pid: u16 = 0;
    let mut outstanding = 0usize;
    for i in 0..n {
        pid = if pid == u16::MAX { 1 } else { pid + 1 };
        w.queue(&client::publish(
            &format!("{prefix}/{}/{i}", i / 1000),
            body.clone(),
            QoS::AtLeastOnce,
            pid,
            true,
        ));
        outstanding += 1;
        if outstanding >= window {
            w.flush().await?;
            while outstanding > window / 2 {
                if let Packet::PubAck(_) = recv_within(&mut r).await? {
                    outstanding -= 1;
                }
            }
        }
    }
    w.flush().await?;
    while outstanding > 0 {
        if let Packet::PubAck(_) = recv_within(&mut r).await? {
            outstanding -= 1;
        }
    }
    Ok(())
}

/// Restart benchmark, first half: fills the broker with `retained` retained topics and
/// `sessions` persistent sessions (one subscription each, left offline) for a restart to load.
pub async fn fill(t: &Target, retained: u64, sessions: usize) -> Result<Value, Error> {
    let k = tag(t);
    let start = Instant::now();
    publish_retained(t, &format!("{k}-fill-pub"), "fill", retained, 1024).await?;
    let retained_secs = start.elapsed().as_secs_f64();
    let next = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for _ in 0..64 {
        let t = t.clone();
        let next = next.clone();
        let k = k.clone();
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i as usize >= sessions {
                    return Ok::<_, Error>(());
                }
                let (mut r, mut w) = client::connect_session(
                    t.addr,
                    &format!("{k}-sess{i}"),
                    &t.login,
                    t.version,
                    true,
                )
                .await?;
                client::subscribe(&mut r, &mut w, &format!("sess/{i}/#"), QoS::AtLeastOnce).await?;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(json!({
        "scenario": "fill", "retained": retained, "sessions": sessions,
        "retained_secs": retained_secs, "secs": start.elapsed().as_secs_f64(),
    }))
}

/// Restart benchmark, second half: connects until a CONNACK comes back (the broker has loaded
/// its state and serves); reports how long that took from this call.
pub async fn ready(t: &Target, timeout: Duration) -> Result<Value, Error> {
    let start = Instant::now();
    let k = tag(t);
    loop {
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_secs(5),
            client::connect(t.addr, &format!("{k}-ready"), &t.login, t.version),
        )
        .await
        {
            return Ok(
                json!({ "scenario": "ready", "ms": start.elapsed().as_secs_f64() * 1000.0 }),
            );
        }
        if start.elapsed() > timeout {
            return Err("the broker did not answer CONNECT in time".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

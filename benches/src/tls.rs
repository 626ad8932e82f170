//! Scenarios over TLS, with or without a client certificate: a storm of full handshakes (TCP,
//! TLS, CONNECT, CONNACK, DISCONNECT; no session resumption, so each is a whole handshake),
//! idle TLS connections for the broker's memory per connection, and pairs streaming QoS 0
//! messages for the broker's record layer. Kept apart from the
//! plain-TCP client, whose hot path stays free of a TLS layer.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tessera_broker::codec::{self, Packet, ReasonCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::client::{Error, Login, connect_packet};
use crate::scenarios::{clock_ticks_per_sec, cpu_ticks, percentile, rss_kib};

/// How the load generator's clients do TLS.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    /// The name the broker's certificate is checked against.
    server_name: ServerName<'static>,
}

impl TlsClient {
    /// Trusting the certificates in `ca` (PEM); presenting `cert` and `key` if given.
    pub fn new(
        ca: &Path,
        identity: Option<(&Path, &Path)>,
        server_name: &str,
    ) -> Result<TlsClient, Error> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca)? {
            roots.add(c?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match identity {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
                builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key)?)?
            }
            None => builder.with_no_client_auth(),
        };
        // Every connection a whole handshake, as a fleet of devices coming up does.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            server_name: ServerName::try_from(server_name.to_string())?,
        })
    }

    /// TCP, TLS, CONNECT and its CONNACK.
    async fn connect(
        &self,
        addr: SocketAddr,
        id: &str,
        login: &Login,
        version: Version,
    ) -> Result<TlsStream<TcpStream>, Error> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await?;
        let mut buf = BytesMut::with_capacity(256);
        let connect = connect_packet(id, login, version, false);
        codec::encode(&Packet::Connect(Box::new(connect)), version, &mut buf);
        tls.write_all(&buf).await?;
        buf.clear();
        loop {
            if let Some(p) = codec::decode(&mut buf, version, 1 << 20)? {
                return match p {
                    Packet::ConnAck(a) if a.reason_code == ReasonCode::SUCCESS => Ok(tls),
                    Packet::ConnAck(a) => Err(format!("CONNACK {}", a.reason_code).into()),
                    other => Err(format!("expected CONNACK, got {:?}", other.packet_type()).into()),
                };
            }
            let read = tokio::time::timeout(Duration::from_secs(30), tls.read_buf(&mut buf));
            if read.await?? == 0 {
                return Err("connection closed before CONNACK".into());
            }
        }
    }
}

/// M clients connecting over TLS and disconnecting, `concurrency` at a time: handshakes per
/// second, p99, and (with `pid`) the broker's CPU time per handshake.
pub async fn handshake_storm(
    addr: SocketAddr,
    tls: &TlsClient,
    login: &Login,
    version: Version,
    total: usize,
    concurrency: usize,
    pid: Option<u32>,
) -> Result<Value, Error> {
    let next = Arc::new(AtomicU64::new(0));
    let run = std::process::id();
    let cpu_before = pid.and_then(cpu_ticks);
    let start = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..concurrency {
        let (tls, login, next) = (tls.clone(), login.clone(), next.clone());
        set.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i as usize >= total {
                    break;
                }
                let began = Instant::now();
                let mut s = tls
                    .connect(addr, &format!("tls{run}-{i}"), &login, version)
                    .await?;
                lat.push(began.elapsed().as_nanos() as u64);
                let mut buf = BytesMut::new();
                codec::encode(&Packet::Disconnect(Default::default()), version, &mut buf);
                s.write_all(&buf).await?;
                let _ = s.shutdown().await;
            }
            Ok::<_, Error>(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let broker_cpu_us = match (cpu_before, pid.and_then(cpu_ticks)) {
        (Some(a), Some(b)) if !all.is_empty() => {
            Some((b - a) as f64 * 1e6 / clock_ticks_per_sec() / all.len() as f64)
        }
        _ => None,
    };
    all.sort_unstable();
    Ok(json!({
        "scenario": "tls_handshakes", "clients": total, "concurrency": concurrency,
        "handshakes_per_sec": all.len() as f64 / elapsed, "p99_us": percentile(&all, 0.99),
        "broker_cpu_us_per_handshake": broker_cpu_us,
        "handshakes_per_broker_cpu_sec": broker_cpu_us.filter(|&us| us > 0.0).map(|us| 1e6 / us),
    }))
}

/// `pairs` publisher and subscriber pairs over TLS, a topic each; every publisher sends QoS 0
/// messages of `payload` bytes as fast as its socket takes them for `secs`: messages
/// delivered per second (all pairs).
pub async fn stream(
    addr: SocketAddr,
    tls: &TlsClient,
    login: &Login,
    version: Version,
    pairs: usize,
    payload: usize,
    secs: f64,
) -> Result<Value, Error> {
    let run = std::process::id();
    let mut set = JoinSet::new();
    let start = tokio::sync::Barrier::new(pairs * 2);
    let start = Arc::new(start);
    for i in 0..pairs {
        let topic = format!("tls/{run}/{i}");
        let mut sub = tls
            .connect(addr, &format!("tlssub{run}-{i}"), login, version)
            .await?;
        let mut buf = BytesMut::new();
        let filter = (topic.as_str().into(), Default::default());
        let subscribe = codec::Subscribe {
            packet_id: 1,
            properties: Default::default(),
            filters: vec![filter],
        };
        codec::encode(&Packet::Subscribe(subscribe), version, &mut buf);
        sub.write_all(&buf).await?;
        buf.clear();
        loop {
            match codec::decode(&mut buf, version, 1 << 20)? {
                Some(Packet::SubAck(_)) => break,
                Some(_) => {}
                None if sub.read_buf(&mut buf).await? == 0 => return Err("closed".into()),
                None => {}
            }
        }
        let mut publisher = tls
            .connect(addr, &format!("tlspub{run}-{i}"), login, version)
            .await?;
        let deadline = Duration::from_secs_f64(secs);
        let gate = start.clone();
        set.spawn(async move {
            gate.wait().await;
            let began = Instant::now();
            let mut got = 0u64;
            let mut buf = BytesMut::with_capacity(64 * 1024);
            while began.elapsed() < deadline {
                while let Some(p) = codec::decode(&mut buf, version, 1 << 20)? {
                    got += matches!(p, Packet::Publish(_)) as u64;
                }
                buf.reserve(16 * 1024);
                match tokio::time::timeout_at((began + deadline).into(), sub.read_buf(&mut buf))
                    .await
                {
                    Ok(Ok(0)) => return Err("the subscriber's connection closed".into()),
                    Ok(r) => drop(r?),
                    Err(_) => break,
                }
            }
            Ok::<_, Error>(got)
        });
        let gate = start.clone();
        set.spawn(async move {
            let message = crate::client::publish(
                &topic,
                bytes::Bytes::from(vec![b'x'; payload]),
                codec::QoS::AtMostOnce,
                0,
                false,
            );
            let mut batch = BytesMut::new();
            for _ in 0..32 {
                codec::encode(&message, version, &mut batch);
            }
            gate.wait().await;
            let began = Instant::now();
            while began.elapsed() < deadline {
                publisher.write_all(&batch).await?;
            }
            Ok::<_, Error>(0)
        });
    }
    let mut delivered = 0;
    while let Some(r) = set.join_next().await {
        delivered += r??;
    }
    Ok(json!({
        "scenario": "tls_stream", "pairs": pairs, "payload": payload, "secs": secs,
        "msgs_per_sec": delivered as f64 / secs,
    }))
}

/// N idle TLS connections; the broker's RSS growth per connection.
pub async fn idle(
    addr: SocketAddr,
    tls: &TlsClient,
    login: &Login,
    version: Version,
    n: usize,
    broker_pid: u32,
) -> Result<Value, Error> {
    let before = rss_kib(broker_pid).ok_or("cannot read the broker's RSS")?;
    let next = Arc::new(AtomicU64::new(0));
    let run = std::process::id();
    let mut set = JoinSet::new();
    for _ in 0..64 {
        let (tls, login, next) = (tls.clone(), login.clone(), next.clone());
        set.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i as usize >= n {
                    break;
                }
                mine.push(
                    tls.connect(addr, &format!("tlsidle{run}-{i}"), &login, version)
                        .await?,
                );
            }
            Ok::<_, Error>(mine)
        });
    }
    let mut conns = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        conns.extend(r??);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(broker_pid).ok_or("cannot read the broker's RSS")?;
    drop(conns);
    Ok(json!({
        "scenario": "tls_idle", "connections": n, "rss_before_kib": before, "rss_after_kib": after,
        "kib_per_connection": (after.saturating_sub(before)) as f64 / n as f64,
    }))
}

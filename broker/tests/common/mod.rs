//! A byte-level MQTT 5 client on the broker's codec, shared by the in-process tests.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub mod cluster;

use bytes::BytesMut;
use tessera_broker::codec::{self, Connect, Packet, Properties, ReasonCode, Version};
use tessera_config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A broker configuration for an in-process test: data in `dir`, one TCP listener on a free
/// port, no `$SYS` updates, then `extra` (whole top-level YAML sections).
#[allow(dead_code)] // Each test binary compiles this module; not all of them use this.
pub fn config(dir: &Path, extra: &str) -> Config {
    let yaml = format!(
        "data_dir: {}\nlisteners:\n  - type: tcp\n    bind: 127.0.0.1:0\nsys:\n  interval: 0\n{extra}",
        dir.display()
    );
    Config::parse(&yaml, "test.yml").unwrap()
}

pub struct Raw {
    s: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub async fn open(addr: SocketAddr) -> Raw {
        Raw {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, p: Packet) {
        let mut b = BytesMut::new();
        codec::encode(&p, Version::V5, &mut b);
        self.s.write_all(&b).await.unwrap();
    }

    /// Connects with MQTT 5 (Clean Start and Session Expiry as given); panics unless the
    /// CONNACK is a success. Returns the client and Session Present.
    #[allow(dead_code)] // Each test binary compiles this module; not all of them use this.
    pub async fn connect(addr: SocketAddr, id: &str, clean: bool, expiry: u32) -> (Raw, bool) {
        let mut raw = Raw::open(addr).await;
        raw.send(Packet::Connect(Box::new(Connect {
            version: Version::V5,
            clean_start: clean,
            keep_alive: 0,
            properties: Properties {
                session_expiry_interval: Some(expiry),
                ..Default::default()
            },
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
        })))
        .await;
        let Some(Packet::ConnAck(ack)) = raw.recv().await else {
            panic!("no CONNACK")
        };
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
        (raw, ack.session_present)
    }

    /// Several packets in one write, so the broker reads them together.
    #[allow(dead_code)] // Each test binary compiles this module; not all of them use this.
    pub async fn send_all(&mut self, packets: &[Packet]) {
        let mut b = BytesMut::new();
        for p in packets {
            codec::encode(p, Version::V5, &mut b);
        }
        self.s.write_all(&b).await.unwrap();
    }

    /// The next packet, `None` once the broker closed the connection; panics after 10 s.
    pub async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = codec::decode(&mut self.buf, Version::V5, 1 << 20).unwrap() {
                return Some(p);
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.s.read_buf(&mut self.buf))
                .await
                .expect("timed out")
                .unwrap();
            if n == 0 {
                return None;
            }
        }
    }
}

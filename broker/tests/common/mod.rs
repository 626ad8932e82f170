//! A byte-level MQTT 5 client on the broker's codec, shared by the in-process tests.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tessera_broker::codec::{self, Packet, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

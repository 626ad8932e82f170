//! `relay`: the raw ceiling for the fan-in scenario. It answers CONNECT and SUBSCRIBE just enough
//! for the load generator's 3.1.1 clients, then copies every PUBLISH frame from publishers to
//! the (single) subscriber byte for byte: no routing, no sessions, no MQTT logic. What a broker
//! achieves relative to this is how close it comes to what the machine can move. For the connect
//! storm it gives the floor of a connection's cost (accept, CONNECT, CONNACK, close).
//! Usage: relay ADDR (loopback only).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tessera_broker::codec::peek_fixed_header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Mutex;

type Sink = Arc<Mutex<Option<tokio::sync::mpsc::Sender<Bytes>>>>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| "127.0.0.1:1885".parse().unwrap());
    if !addr.ip().is_loopback() {
        eprintln!("error: relay only binds loopback addresses");
        std::process::exit(2);
    }
    let listener = TcpListener::bind(addr).await?;
    eprintln!("relay ready addr={}", listener.local_addr()?);
    let sink: Sink = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let sink = sink.clone();
        tokio::spawn(async move {
            let (mut r, w) = stream.into_split();
            let mut w = Some(w);
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(64 * 1024);
                }
                match r.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                // Take all complete frames; forward the PUBLISH ones as one chunk.
                let mut forward = 0;
                while let Ok(Some(h)) = peek_fixed_header(&buf[forward..]) {
                    if buf.len() - forward < h.total() {
                        break;
                    }
                    match h.first >> 4 {
                        3 => forward += h.total(),
                        kind => {
                            let frame = buf[forward..forward + h.total()].to_vec();
                            flush(&sink, &mut buf, forward).await;
                            forward = 0;
                            let _ = buf.split_to(frame.len());
                            if !answer(kind, &frame, &mut w, &sink).await {
                                return;
                            }
                        }
                    }
                }
                flush(&sink, &mut buf, forward).await;
            }
        });
    }
}

async fn flush(sink: &Sink, buf: &mut BytesMut, n: usize) {
    if n == 0 {
        return;
    }
    let chunk = buf.split_to(n).freeze();
    let tx = sink.lock().await.clone();
    if let Some(tx) = tx {
        let _ = tx.send(chunk).await;
    }
}

/// CONNACK for CONNECT, SUBACK (and becoming the sink) for SUBSCRIBE; false to close.
async fn answer(kind: u8, frame: &[u8], w: &mut Option<OwnedWriteHalf>, sink: &Sink) -> bool {
    let Some(writer) = w.as_mut() else {
        return kind != 14;
    };
    match kind {
        1 => writer.write_all(&[0x20, 0x02, 0x00, 0x00]).await.is_ok(),
        8 => {
            let pid = peek_fixed_header(frame)
                .ok()
                .flatten()
                .and_then(|h| Some([*frame.get(h.header_len)?, *frame.get(h.header_len + 1)?]))
                .unwrap_or([0, 1]);
            if writer
                .write_all(&[0x90, 0x03, pid[0], pid[1], 0x00])
                .await
                .is_err()
            {
                return false;
            }
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
            *sink.lock().await = Some(tx);
            let mut out = w.take().unwrap();
            tokio::spawn(async move {
                while let Some(chunk) = rx.recv().await {
                    if out.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
            true
        }
        12 => writer.write_all(&[0xD0, 0x00]).await.is_ok(),
        14 => false,
        _ => true,
    }
}

//! The byte side of one connection: a read buffer that grows with the traffic and shrinks when
//! the client is quiet, packets decoded off its front, and encoded packets waiting for the
//! socket ([`OutBuf`]). Knows the codec and the stream; nothing of sessions or the broker.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::time::Instant;

use super::outbuf::OutBuf;
use crate::codec::{self, DecodeError, Packet, Version};
use crate::stats::Stats;

/// A stream a connection reads and writes at once, split into its two halves. A TCP socket
/// splits into two handles on one socket (`into_split`: a 48-byte allocation); the others
/// through tokio's lock around the stream (64 bytes for TCP, were it split that way).
pub trait Split: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    type Read: AsyncRead + Send + Unpin + 'static;
    type Write: AsyncWrite + Send + Unpin + 'static;
    fn split(self) -> (Self::Read, Self::Write);
}

impl Split for tokio::net::TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

/// A TLS connection splits into two handles on one lock of its own (see `tls/stream.rs`).
impl Split for crate::tls::TlsStream {
    type Read = crate::tls::TlsHalf;
    type Write = crate::tls::TlsHalf;
    fn split(self) -> (Self::Read, Self::Write) {
        crate::tls::TlsStream::split(self)
    }
}

/// Streams split through tokio's lock.
macro_rules! split_with_lock {
    ($($stream:ty),*) => {$(
        impl Split for $stream {
            type Read = ReadHalf<$stream>;
            type Write = WriteHalf<$stream>;
            fn split(self) -> (Self::Read, Self::Write) {
                tokio::io::split(self)
            }
        }
    )*};
}
split_with_lock!(
    crate::websocket::WsStream<tokio::net::TcpStream>,
    crate::websocket::WsStream<crate::tls::TlsStream>,
    tokio::io::DuplexStream
);

/// Read buffer growth: a read asks for `read_size` spare bytes, which doubles (up to the
/// maximum) while reads fill the buffer and halves when they do not. An idle connection thus
/// holds a small buffer; a busy one reads in large chunks.
const MIN_READ: usize = 512;
const MAX_READ: usize = 64 * 1024;
/// The most a quiet connection's read takes in one go (into the stack: see [`poll_read_some`]).
const IDLE_READ: usize = 64;
/// How long a closing connection may take to flush its last packets.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// How long, and for how many bytes, a closed connection still reads what the client sends
/// (see [`Wire::linger`]).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 8 << 20;

pub(crate) struct Wire {
    /// The protocol level every packet after CONNECT is read and written in.
    pub version: Version,
    pub rbuf: BytesMut,
    pub out: OutBuf,
    /// The broker's Maximum Packet Size.
    pub max_packet_in: usize,
    /// Spare capacity to ask for before the next read (see `MIN_READ`).
    read_size: usize,
    /// Protocol level of a CONNECT seen at the front of the read buffer, kept so a CONNECT
    /// that fails to decode can still be answered in its version.
    pub connect_level: Option<u8>,
}

/// Why no packet could be read before CONNACK.
#[derive(Debug)]
pub(crate) enum ReadError {
    Decode(DecodeError),
    Timeout,
    Closed,
    Io(std::io::Error),
}

impl Wire {
    pub(crate) fn new(max_packet_in: usize) -> Wire {
        Wire {
            version: Version::V5,
            rbuf: BytesMut::new(),
            out: OutBuf::default(),
            max_packet_in,
            read_size: MIN_READ,
            connect_level: None,
        }
    }

    /// Takes the next complete packet off the read buffer, if there is one.
    pub(crate) fn decode(&mut self) -> Result<Option<Packet>, DecodeError> {
        codec::decode(&mut self.rbuf, self.version, self.max_packet_in)
    }

    /// Like [`Wire::decode`], but from a copy of just the packet's bytes: what a connection
    /// keeps of its CONNECT (the will) then holds those bytes, not the first read buffer
    /// (whose spare room is most of it). For the connect phase, where it costs one small copy.
    fn decode_alone(&mut self) -> Result<Option<Packet>, DecodeError> {
        let total = match codec::peek_fixed_header(&self.rbuf)? {
            Some(h) if h.total() <= self.max_packet_in && h.total() <= self.rbuf.len() => h.total(),
            // Not complete yet, or too large: `decode` says which.
            _ => return self.decode(),
        };
        let mut alone = BytesMut::from(&self.rbuf[..total]);
        self.rbuf.advance(total);
        codec::decode(&mut alone, self.version, self.max_packet_in)
    }

    /// Queues a packet for the socket, in the connection's version.
    pub(crate) fn packet(&mut self, packet: &Packet) {
        self.out.packet(packet, self.version);
    }

    /// Readies the read buffer before waiting for bytes; returns the spare room offered, for
    /// [`Wire::read_done`]. A quiet connection waits holding no read buffer at all: its read
    /// ([`poll_read_some`]) takes what comes into the stack and keeps only that, and most idle
    /// connections only ever send PINGREQ.
    pub(crate) fn ready_to_read(&mut self) -> usize {
        if self.rbuf.is_empty() && self.read_size == MIN_READ {
            self.rbuf = BytesMut::new();
            // A stack read that fills up says the client is busy: the next reads get a buffer.
            return IDLE_READ;
        }
        self.make_room();
        self.rbuf.capacity() - self.rbuf.len()
    }

    /// Adapts the read size to a read of `n` bytes into `spare` bytes of room.
    pub(crate) fn read_done(&mut self, n: usize, spare: usize) {
        if n >= spare {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        } else if n < self.read_size / 4 {
            self.read_size = (self.read_size / 2).max(MIN_READ);
        }
    }

    /// Ensures spare room for the next read, releasing a large empty buffer first.
    fn make_room(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > MAX_READ {
            self.rbuf = BytesMut::new();
        }
        if self.rbuf.capacity() - self.rbuf.len() < self.read_size / 4 {
            self.rbuf.reserve(self.read_size);
        }
    }

    /// Reads until one packet is decoded, or `deadline` passes (the connect phase).
    pub(crate) async fn read_packet<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        deadline: Instant,
        stats: &Stats,
    ) -> Result<Packet, ReadError> {
        loop {
            if self.rbuf.first() == Some(&0x10) {
                self.connect_level = sniff_connect_level(&self.rbuf);
            }
            match self.decode_alone() {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Decode(e)),
            }
            self.make_room();
            match tokio::time::timeout_at(deadline, r.read_buf(&mut self.rbuf)).await {
                Err(_) => return Err(ReadError::Timeout),
                Ok(Ok(0)) => return Err(ReadError::Closed),
                Ok(Err(e)) => return Err(ReadError::Io(e)),
                Ok(Ok(n)) => {
                    stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
    }

    /// Writes everything buffered now (the connect phase, when nothing else runs).
    pub(crate) async fn write_all<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        stats: &Stats,
    ) -> std::io::Result<()> {
        while !self.out.is_empty() {
            let n = poll_fn(|cx| self.out.poll_write(cx, w)).await?;
            stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        w.flush().await
    }

    /// Writes what is buffered (bounded in time) and closes the write side; false if that
    /// took too long.
    pub(crate) async fn flush_and_close<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> bool {
        let flush = async {
            while !self.out.is_empty() {
                if poll_fn(|cx| self.out.poll_write(cx, w)).await.is_err() {
                    return;
                }
            }
            let _ = w.flush().await;
            let _ = w.shutdown().await;
        };
        tokio::time::timeout(CLOSE_FLUSH, flush).await.is_ok()
    }
}

/// Reads what the socket has into `rbuf`. A buffer with room is read into directly. One with
/// none (a quiet connection's, see [`Wire::ready_to_read`]) is not given any while the read
/// waits, as `read_buf` would (`BytesMut::chunk_mut` reserves 64 bytes before the first poll):
/// the read goes to the stack, [`IDLE_READ`] bytes at most, and only what came is copied in.
/// The array lives in one poll, not in the connection's future.
pub(crate) fn poll_read_some<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    r: &mut R,
    rbuf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    if rbuf.capacity() > rbuf.len() {
        // `read_buf`'s future keeps nothing between polls: one per poll is the same read.
        return pin!(r.read_buf(rbuf)).poll(cx);
    }
    let mut probe = [0u8; IDLE_READ];
    let mut buf = ReadBuf::new(&mut probe);
    ready!(Pin::new(r).poll_read(cx, &mut buf))?;
    rbuf.extend_from_slice(buf.filled());
    Poll::Ready(Ok(buf.filled().len()))
}

impl Wire {
    /// Lingering close: after the write side is closed, reads and discards what the client
    /// still sends until it closes its side, [`LINGER`] passes or [`LINGER_BYTES`] arrived.
    /// Closing a socket with unread bytes makes the kernel answer with a reset, which can
    /// destroy the DISCONNECT or CONNACK still in flight: a client flooding QoS 2 would read
    /// a broken pipe instead of 0x93, a device a reset instead of 0x87 or 0xA0.
    pub(crate) async fn linger<R: AsyncRead + Unpin>(&mut self, r: &mut R) {
        let drain = async {
            let mut read = 0;
            while read < LINGER_BYTES {
                self.rbuf.clear();
                self.rbuf.reserve(MIN_READ);
                match r.read_buf(&mut self.rbuf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => read += n,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
        self.rbuf = BytesMut::new();
    }
}

/// The protocol level of a CONNECT at the front of `buf`, read without decoding the packet,
/// so a malformed CONNECT can still be answered in the client's version.
fn sniff_connect_level(buf: &[u8]) -> Option<u8> {
    let header = codec::peek_fixed_header(buf).ok()??;
    if header.first != 0x10 {
        return None;
    }
    let body = buf.get(header.header_len..)?;
    let name_len = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    body.get(2 + name_len).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_quiet_connection_waits_for_bytes_holding_no_read_buffer() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut wire = Wire::new(1 << 20);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert_eq!(wire.ready_to_read(), IDLE_READ);
        let poll = poll_read_some(&mut cx, &mut server, &mut wire.rbuf);
        assert!(poll.is_pending());
        assert_eq!(wire.rbuf.capacity(), 0, "an idle wait took a buffer");

        // What comes is kept, a quiet read's worth at a time; then reads go to the buffer.
        client.write_all(&[7u8; 100]).await.unwrap();
        let n = poll_fn(|cx| poll_read_some(cx, &mut server, &mut wire.rbuf)).await;
        assert_eq!(n.unwrap(), IDLE_READ);
        // A full stack read: the client is busy, and reads get a buffer.
        wire.read_done(IDLE_READ, IDLE_READ);
        let spare = wire.ready_to_read();
        assert!(spare >= MIN_READ, "{spare}");
        let n = poll_fn(|cx| poll_read_some(cx, &mut server, &mut wire.rbuf)).await;
        assert_eq!(n.unwrap(), 100 - IDLE_READ);
        wire.read_done(100 - IDLE_READ, spare);
        assert_eq!(&wire.rbuf[..], &[7u8; 100][..]);

        // Emptied, and quiet again (small reads bring the read size down): the buffer goes.
        wire.rbuf.advance(100);
        for _ in 0..4 {
            wire.read_done(2, MIN_READ);
        }
        assert_eq!(wire.ready_to_read(), IDLE_READ);
        assert_eq!(wire.rbuf.capacity(), 0);
        drop(client);
        let n = poll_fn(|cx| poll_read_some(cx, &mut server, &mut wire.rbuf)).await;
        assert_eq!(n.unwrap(), 0, "the end of the stream reads as 0");
    }
}

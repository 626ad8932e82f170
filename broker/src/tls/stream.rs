//! [`TlsStream`]: an MQTT listener's TLS connection on rustls' unbuffered API, where the
//! connection owns its buffers, so an idle one holds none. rustls' buffered connection (what
//! tokio-rustls drives) sizes its record buffer to 4 KiB before every read and never gives
//! it back: with thousands of quiet devices that buffer was a third of a TLS connection's
//! memory. The handshake, records, alerts and key updates are rustls'; this file only moves
//! bytes between the socket and rustls.
//!
//! Invariants:
//! - a buffer with nothing in it is freed (`incoming`, `plaintext`, `outgoing`);
//! - the reader runs rustls over every complete record it read before it waits, so
//!   `incoming` holds at most a partial record then: the writer, which runs rustls over the
//!   same bytes to reach the state that encrypts, never finds plaintext the reader is not
//!   woken for;
//! - only the writer waits for the socket to take bytes; what the reader has to send (a key
//!   update's answer) goes with `try_write`, and the writer sends the rest.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use parking_lot::Mutex;
use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What one socket read asks for: a whole record's worth. rustls' own 4 KiB made a
/// publisher's burst four reads, and its subscribers' writes four times as many (0.82 of the
/// buffered build's throughput in `benches/tls.sh`); the room is freed once the socket is
/// drained, so an idle connection does not keep it.
const READ_SIZE: usize = 16 * 1024;
/// Room first given to a handshake record (a certificate chain may ask for more).
const HANDSHAKE_ROOM: usize = 4096;
/// Encrypted bytes waiting for the socket past which a write waits for it.
const WRITE_BACKLOG: usize = 64 * 1024;
/// Room for one record's header, tag and padding beyond its plaintext (TLS 1.2 GCM: 29).
const RECORD_OVERHEAD: usize = 64;
const MAX_FRAGMENT: usize = 16 * 1024;

pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Records read and not yet run through rustls.
    incoming: Vec<u8>,
    /// Decrypted bytes the reader has not taken; `read_at` is how far it got.
    plaintext: Vec<u8>,
    read_at: usize,
    /// Encrypted bytes for the socket; `sent` is how much of them went.
    outgoing: Vec<u8>,
    sent: usize,
    /// The peer's close_notify arrived: the end of its data.
    peer_closed: bool,
    /// The socket's end of file (with or without close_notify before it).
    eof: bool,
    /// Our close_notify is queued.
    closing: bool,
}

/// Where running rustls over the buffered records stopped.
#[derive(PartialEq)]
enum Step {
    /// Application data may be written (the handshake may still await the client's flight).
    Traffic,
    /// The handshake needs more bytes from the peer.
    Blocked,
}

/// Runs the TLS handshake of `tcp` as a server of `config`, up to the client's Finished (so
/// its certificate, if it sent one, is verified and known).
pub async fn accept(config: Arc<ServerConfig>, tcp: TcpStream) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut s = TlsStream {
        tcp,
        conn,
        incoming: Vec::new(),
        plaintext: Vec::new(),
        read_at: 0,
        outgoing: Vec::new(),
        sent: 0,
        peer_closed: false,
        eof: false,
        closing: false,
    };
    loop {
        let step = s.process(&mut None, false)?;
        poll_fn(|cx| s.poll_send(cx)).await?;
        if step == Step::Traffic && !s.conn.is_handshaking() {
            break;
        }
        if s.eof || s.peer_closed {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed the connection during the TLS handshake",
            ));
        }
        poll_fn(|cx| s.poll_read_tls(cx)).await?;
    }
    s.free_empty();
    Ok(s)
}

impl TlsStream {
    /// The certificates the client presented (rustls verified them in the handshake).
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// Bytes held in this connection's own buffers (0 when idle).
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.incoming.capacity() + self.plaintext.capacity() + self.outgoing.capacity()
    }

    /// Runs rustls over `incoming` until it needs more bytes or application data may be
    /// written; encrypts `app` (taking it) and queues close_notify (`close`) at that point.
    fn process(&mut self, app: &mut Option<&[u8]>, close: bool) -> io::Result<Step> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let stop = match state {
                Err(e) => {
                    self.incoming.drain(..discard);
                    self.send_alert();
                    return Err(tls_error(e));
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                    None
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    append(&mut self.outgoing, HANDSHAKE_ROOM, |out| {
                        data.encode(out).map_err(|e| match e {
                            EncodeError::InsufficientSize(short) => Append::Short(short),
                            e => Append::Failed(e.to_string()),
                        })
                    })?;
                    None
                }
                // What was encoded goes out in order, before anything queued after it.
                Ok(ConnectionState::TransmitTlsData(data)) => {
                    data.done();
                    None
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    None
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    if app.is_some() {
                        return Err(io::ErrorKind::BrokenPipe.into());
                    }
                    Some(Step::Traffic)
                }
                Ok(ConnectionState::BlockedHandshake) => Some(Step::Blocked),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    if let Some(data) = app.take() {
                        let room = data.len() + (data.len() / MAX_FRAGMENT + 1) * RECORD_OVERHEAD;
                        append(&mut self.outgoing, room, |out| {
                            traffic.encrypt(data, out).map_err(encrypt_error)
                        })?;
                    }
                    if close && !self.closing {
                        self.closing = true;
                        append(&mut self.outgoing, RECORD_OVERHEAD, |out| {
                            traffic.queue_close_notify(out).map_err(encrypt_error)
                        })?;
                    }
                    Some(Step::Traffic)
                }
                // Early data is not enabled; rustls adds states only with new features.
                Ok(_) => return Err(invalid("an unexpected TLS state")),
            };
            self.incoming.drain(..discard);
            if let Some(step) = stop {
                return Ok(step);
            }
        }
    }

    /// After an error rustls may have an alert for the peer: sent if the socket takes it now.
    fn send_alert(&mut self) {
        for _ in 0..4 {
            let status = self.conn.process_tls_records(&mut []);
            let Ok(ConnectionState::EncodeTlsData(mut data)) = status.state else {
                break;
            };
            let encoded = append(&mut self.outgoing, RECORD_OVERHEAD, |out| {
                data.encode(out).map_err(|e| match e {
                    EncodeError::InsufficientSize(short) => Append::Short(short),
                    e => Append::Failed(e.to_string()),
                })
            });
            if encoded.is_err() {
                break;
            }
        }
        let _ = self.send_without_waiting();
    }

    /// Reads what the socket has into `incoming`; `Ready` once something came (or its end).
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            self.incoming.reserve(READ_SIZE);
            match self.tcp.try_read_buf(&mut self.incoming) {
                Ok(0) => {
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.free_empty(),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_read_plain(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.read_at < self.plaintext.len() {
                let n = buf.remaining().min(self.plaintext.len() - self.read_at);
                buf.put_slice(&self.plaintext[self.read_at..self.read_at + n]);
                self.read_at += n;
                if self.read_at == self.plaintext.len() {
                    self.plaintext = Vec::new();
                    self.read_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if self.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection without a TLS close_notify",
                )));
            }
            ready!(self.poll_read_tls(cx))?;
            self.process(&mut None, false)?;
            self.send_without_waiting()?;
            self.free_empty();
        }
    }

    fn poll_write_plain(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.outgoing.len() - self.sent >= WRITE_BACKLOG {
            ready!(self.poll_send(cx))?;
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut app = Some(buf);
        if self.process(&mut app, false)? == Step::Blocked || app.is_some() {
            return Poll::Ready(Err(invalid("TLS application data before the handshake")));
        }
        // Sent as far as the socket takes it now; the rest by the next write or flush.
        if let Poll::Ready(Err(e)) = self.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    /// The connection's queued packets are many slices (a header, a payload shared with the
    /// publisher): gathered into one run, so they go out as full records and one socket write,
    /// not a record and a write per slice.
    fn poll_write_slices(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut taken = slices.iter().filter(|s| !s.is_empty());
        let Some(first) = taken.next() else {
            return Poll::Ready(Ok(0));
        };
        let mut run = Vec::new();
        for slice in taken {
            if run.is_empty() {
                run.extend_from_slice(first);
            }
            if run.len() + slice.len() > WRITE_BACKLOG {
                break;
            }
            run.extend_from_slice(slice);
        }
        match run.is_empty() {
            true => self.poll_write_plain(cx, first),
            false => self.poll_write_plain(cx, &run),
        }
    }

    fn poll_shutdown_plain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closing {
            self.process(&mut None, true)?;
        }
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    /// Writes `outgoing` out, waiting for the socket.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes what the socket takes now without waiting for it (the reader's way).
    fn send_without_waiting(&mut self) -> io::Result<()> {
        while self.sent < self.outgoing.len() {
            match self.tcp.try_write(&self.outgoing[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Ok(())
    }

    fn free_empty(&mut self) {
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        if self.read_at == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.read_at = 0;
        }
        if self.sent == self.outgoing.len() {
            self.outgoing = Vec::new();
            self.sent = 0;
        }
    }
}

/// How an encoder into a slice failed: short by some bytes, or for good.
enum Append {
    Short(InsufficientSizeError),
    Failed(String),
}

/// Appends what `write` puts into a slice to `out`, giving it `room` bytes first and what it
/// asks for if that was short.
fn append(
    out: &mut Vec<u8>,
    room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Append>,
) -> io::Result<()> {
    let start = out.len();
    out.resize(start + room, 0);
    let written = match write(&mut out[start..]) {
        Err(Append::Short(short)) => {
            out.resize(start + short.required_size, 0);
            write(&mut out[start..])
        }
        other => other,
    };
    match written {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            let why = match e {
                Append::Short(s) => format!("a TLS record needs {} bytes", s.required_size),
                Append::Failed(e) => e,
            };
            Err(io::Error::new(io::ErrorKind::InvalidData, why))
        }
    }
}

fn encrypt_error(e: EncryptError) -> Append {
    match e {
        EncryptError::InsufficientSize(short) => Append::Short(short),
        e => Append::Failed(e.to_string()),
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().poll_read_plain(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_plain(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_slices(cx, slices)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_shutdown_plain(cx)
    }
}

/// One half of a split [`TlsStream`]: both halves share the connection under a lock held only
/// while a poll runs.
pub struct TlsHalf(Arc<Mutex<TlsStream>>);

impl TlsStream {
    pub fn split(self) -> (TlsHalf, TlsHalf) {
        let shared = Arc::new(Mutex::new(self));
        (TlsHalf(shared.clone()), TlsHalf(shared))
    }
}

impl AsyncRead for TlsHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.0.lock().poll_read_plain(cx, buf)
    }
}

impl AsyncWrite for TlsHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.lock().poll_write_plain(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.0.lock().poll_write_slices(cx, slices)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.lock().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.lock().poll_shutdown_plain(cx)
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;

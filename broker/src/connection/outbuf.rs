//! The write side of a connection: encoded packets waiting for the socket.
//!
//! Small packets are encoded into one growing buffer; a large payload is queued as its own
//! `Bytes` (a reference to the publisher's read buffer, not a copy) and written with vectored
//! I/O, so one message fanned out to many subscribers is copied by the kernel only.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

use crate::codec::{Packet, PublishHead, Version, encode, encode_publish_head};

/// Payloads up to this size are copied into the buffer; larger ones are queued by reference.
const INLINE_PAYLOAD_MAX: usize = 2048;
/// Slices handed to one vectored write.
const MAX_IOVECS: usize = 64;
/// An empty buffer larger than this is released, so idle connections hold little memory.
const KEEP_CAPACITY: usize = 16 * 1024;
/// An empty buffer with less room left than this is released too: it held a few small
/// packets (a CONNACK, a PUBACK), and a quiet connection then waits holding none. A busy
/// connection's buffer has usually grown past it and is kept (a written-out `BytesMut`
/// reuses its room from the front); one filled to within 256 bytes of its end is made
/// again, which costs an allocation, not a copy.
const KEEP_SPARE_MIN: usize = 256;

#[derive(Default)]
pub struct OutBuf {
    /// Sealed byte runs, written before `tail`.
    chunks: VecDeque<Bytes>,
    tail: BytesMut,
    len: usize,
}

impl OutBuf {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn packet(&mut self, packet: &Packet, version: Version) {
        let before = self.tail.len();
        encode(packet, version, &mut self.tail);
        self.len += self.tail.len() - before;
    }

    pub fn publish(&mut self, head: &PublishHead<'_>, version: Version, payload: &Bytes) {
        let before = self.tail.len();
        encode_publish_head(head, version, &mut self.tail);
        if payload.len() <= INLINE_PAYLOAD_MAX {
            self.tail.extend_from_slice(payload);
            self.len += self.tail.len() - before;
        } else {
            self.len += self.tail.len() - before;
            let sealed = self.tail.split().freeze();
            self.chunks.push_back(sealed);
            self.chunks.push_back(payload.clone());
            self.len += payload.len();
        }
    }

    /// One write attempt of as much as the socket takes. Cancel-safe: each poll is a whole
    /// write, and only what was written is consumed.
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
    ) -> Poll<io::Result<usize>> {
        let n = if self.chunks.is_empty() {
            std::task::ready!(Pin::new(&mut *w).poll_write(cx, &self.tail))?
        } else {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(MAX_IOVECS);
            for c in self.chunks.iter().take(MAX_IOVECS - 1) {
                slices.push(IoSlice::new(c));
            }
            // The tail follows the chunks, so it may go only if every chunk went.
            if self.chunks.len() < MAX_IOVECS && !self.tail.is_empty() {
                slices.push(IoSlice::new(&self.tail));
            }
            std::task::ready!(Pin::new(&mut *w).poll_write_vectored(cx, &slices))?
        };
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.consume(n);
        Poll::Ready(Ok(n))
    }

    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            if let Some(front) = self.chunks.front_mut() {
                if n >= front.len() {
                    n -= front.len();
                    self.chunks.pop_front();
                } else {
                    front.advance(n);
                    n = 0;
                }
            } else {
                self.tail.advance(n);
                n = 0;
            }
        }
        if self.len == 0 && !(KEEP_SPARE_MIN..=KEEP_CAPACITY).contains(&self.tail.capacity()) {
            self.tail = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Properties, QoS};

    /// A writer that takes at most `max` bytes per call, to exercise partial writes.
    struct Trickle {
        got: Vec<u8>,
        max: usize,
    }
    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = b.len().min(self.max);
            self.got.extend_from_slice(&b[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.max - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.max {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn large_payloads_are_shared_and_order_is_kept() {
        let props = crate::codec::encode_message_properties(&Properties::default());
        let big = Bytes::from(vec![7u8; 5000]);
        let mut out = OutBuf::default();
        let mut expected = BytesMut::new();
        for (i, payload) in [
            Bytes::from_static(b"small"),
            big.clone(),
            Bytes::from_static(b"x"),
        ]
        .iter()
        .enumerate()
        {
            let head = PublishHead {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: b"t",
                packet_id: None,
                message_properties: &props,
                message_expiry: None,
                topic_alias: None,
                subscription_ids: &[],
                payload_len: payload.len(),
            };
            out.publish(&head, Version::V5, payload);
            encode_publish_head(&head, Version::V5, &mut expected);
            expected.extend_from_slice(payload);
            if i == 1 {
                out.packet(&Packet::PingResp, Version::V5);
                encode(&Packet::PingResp, Version::V5, &mut expected);
            }
        }
        assert_eq!(out.len(), expected.len());
        let mut w = Trickle {
            got: Vec::new(),
            max: 777,
        };
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        while !out.is_empty() {
            assert!(matches!(
                out.poll_write(&mut cx, &mut w),
                Poll::Ready(Ok(_))
            ));
        }
        assert_eq!(w.got, expected.to_vec());
    }
}

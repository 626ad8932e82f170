//! The two frames nodes exchange on NATS besides KV records, each parsed in one place.
//!
//! - [`Frame`]: a message between nodes (core NATS, the QoS 1/2 stream, the retained stream):
//!   the origin (a random id of the sending process, 8 bytes, big-endian), its sequence number
//!   (8 bytes), then the MQTT 5 PUBLISH the broker encoded. The origin lets a node drop its
//!   own messages; origin and sequence let it drop a copy it already routed.
//! - [`Takeover`]: a CONNECT on some node: origin, the time in nanoseconds since the epoch
//!   (8 bytes: an older connection on another node must compare as older), Clean Start (one
//!   byte, 1 or 0), then the client id (UTF-8).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use tessera_broker::cluster::ClusterId;

/// The header of a message between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    pub origin: u64,
    pub seq: u64,
}

impl Frame {
    const LEN: usize = 16;

    /// The frame with `packet` after it.
    pub fn wrap(self, packet: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(Self::LEN + packet.len());
        b.put_u64(self.origin);
        b.put_u64(self.seq);
        b.put_slice(packet);
        b.freeze()
    }

    /// The message's name for the broker: `own` (this process's origin) is 0 there.
    pub fn id(self, own: u64, stream_seq: u64) -> ClusterId {
        ClusterId {
            origin: origin_for_engine(self.origin, own),
            seq: self.seq,
            stream_seq,
        }
    }

    /// The header and the PUBLISH after it; `None` if too short to be a frame.
    pub fn parse(bytes: &Bytes) -> Option<(Frame, Bytes)> {
        if bytes.len() < Self::LEN {
            return None;
        }
        let frame = Frame {
            origin: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            seq: u64::from_be_bytes(bytes[8..16].try_into().ok()?),
        };
        Some((frame, bytes.slice(Self::LEN..)))
    }
}

/// An origin as the engine names it: `own` (this process's) is 0 there.
pub(crate) fn origin_for_engine(origin: u64, own: u64) -> u64 {
    if origin == own { 0 } else { origin }
}

/// An origin the engine gave, as the other nodes name it: its 0 is `own`.
pub(crate) fn origin_from_engine(origin: u64, own: u64) -> u64 {
    if origin == 0 { own } else { origin }
}

/// A client connected on some node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Takeover {
    pub origin: u64,
    pub since: SystemTime,
    pub clean_start: bool,
    pub client_id: String,
}

impl Takeover {
    pub fn encode(&self) -> Bytes {
        let ns = self
            .since
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut b = BytesMut::with_capacity(17 + self.client_id.len());
        b.put_u64(self.origin);
        b.put_u64(ns);
        b.put_u8(self.clean_start as u8);
        b.put_slice(self.client_id.as_bytes());
        b.freeze()
    }

    /// `None` for a frame too short or whose client id is not UTF-8.
    pub fn parse(b: &[u8]) -> Option<Takeover> {
        if b.len() < 17 {
            return None;
        }
        let origin = u64::from_be_bytes(b[..8].try_into().ok()?);
        let ns = u64::from_be_bytes(b[8..16].try_into().ok()?);
        Some(Takeover {
            origin,
            since: UNIX_EPOCH + Duration::from_nanos(ns),
            clean_start: b[16] == 1,
            client_id: std::str::from_utf8(&b[17..]).ok()?.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_a_short_one_is_refused() {
        let f = Frame {
            origin: 0x0102_0304_0506_0708,
            seq: 42,
        };
        let wrapped = f.wrap(b"publish");
        assert_eq!(wrapped.len(), 16 + 7);
        let (back, packet) = Frame::parse(&wrapped).unwrap();
        assert_eq!(back, f);
        assert_eq!(&packet[..], b"publish");
        assert_eq!(Frame::parse(&Bytes::from_static(&[0; 15])), None);
    }

    #[test]
    fn a_takeover_round_trips_to_the_nanosecond() {
        let t = Takeover {
            origin: 7,
            since: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            clean_start: true,
            client_id: "dev:1".into(),
        };
        assert_eq!(Takeover::parse(&t.encode()), Some(t));
        assert_eq!(Takeover::parse(&[0; 16]), None);
        let mut bad = Takeover {
            origin: 7,
            since: UNIX_EPOCH,
            clean_start: false,
            client_id: String::new(),
        }
        .encode()
        .to_vec();
        bad.push(0xff);
        assert_eq!(Takeover::parse(&bad), None);
    }
}

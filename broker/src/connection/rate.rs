//! The inbound rate limit of one connection (`mqtt.max_inbound_messages_per_second` and
//! `max_inbound_bytes_per_second`): a token bucket for each, refilled continuously and holding
//! one second's worth, so a client may burst up to its rate. Each packet is counted as it is
//! handled; over either limit the connection handles nothing more of its read buffer and reads
//! nothing until the bucket is back to zero, and TCP pushes back on the client. Nothing is
//! dropped: the limit shapes, it never loses a QoS 1/2 message.

use tokio::time::Instant;

use tessera_config::MqttConfig;

struct Bucket {
    /// Tokens per second, and the most the bucket holds.
    rate: f64,
    /// May go below zero: what was read before the limit could act is owed.
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u64, now: Instant) -> Option<Bucket> {
        (rate > 0).then_some(Bucket {
            rate: rate as f64,
            level: rate as f64,
            at: now,
        })
    }

    fn take(&mut self, n: u64, now: Instant) {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.level = (self.level + refill).min(self.rate) - n as f64;
        self.at = now;
    }

    /// When the bucket is back to zero, if it is below.
    fn ready_at(&self) -> Option<Instant> {
        (self.level < 0.0)
            .then(|| self.at + std::time::Duration::from_secs_f64(-self.level / self.rate))
    }
}

pub(crate) struct RateLimit {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl RateLimit {
    /// `None` when neither limit is set: an unlimited connection carries nothing.
    pub(crate) fn new(cfg: &MqttConfig) -> Option<Box<RateLimit>> {
        let now = Instant::now();
        let messages = Bucket::new(cfg.max_inbound_messages_per_second as u64, now);
        let bytes = Bucket::new(cfg.max_inbound_bytes_per_second, now);
        (messages.is_some() || bytes.is_some()).then(|| Box::new(RateLimit { messages, bytes }))
    }

    /// Counts one packet handled (`messages` is 1 for a PUBLISH); returns until when the
    /// connection must handle and read nothing more.
    pub(crate) fn record(&mut self, messages: u64, bytes: u64, now: Instant) -> Option<Instant> {
        if let Some(b) = &mut self.messages {
            b.take(messages, now);
        }
        if let Some(b) = &mut self.bytes {
            b.take(bytes, now);
        }
        let m = self.messages.as_ref().and_then(Bucket::ready_at);
        let b = self.bytes.as_ref().and_then(Bucket::ready_at);
        m.max(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limit(messages: u32, bytes: u64) -> Option<Box<RateLimit>> {
        RateLimit::new(&MqttConfig {
            max_inbound_messages_per_second: messages,
            max_inbound_bytes_per_second: bytes,
            ..MqttConfig::default()
        })
    }

    #[test]
    fn no_limit_costs_nothing() {
        assert!(limit(0, 0).is_none());
    }

    #[test]
    fn a_burst_of_one_second_passes_then_the_excess_waits_its_time() {
        let mut r = limit(100, 0).unwrap();
        let t0 = Instant::now();
        assert_eq!(
            r.record(100, 1 << 20, t0),
            None,
            "one second's worth at once"
        );
        // 50 more: half a second owed.
        let until = r.record(50, 0, t0).unwrap();
        let owed = until - t0;
        assert!(
            owed > Duration::from_millis(490) && owed < Duration::from_millis(510),
            "{owed:?}"
        );
        // Half a second later the bucket is even, and refills from there at the rate.
        assert_eq!(r.record(0, 0, until), None);
        assert!(r.record(10, 0, until + Duration::from_millis(50)).is_some());
        assert_eq!(r.record(0, 0, until + Duration::from_millis(100)), None);
    }

    #[test]
    fn the_tighter_of_the_two_limits_decides() {
        let mut r = limit(1000, 1000).unwrap();
        let t0 = Instant::now();
        let until = r.record(1, 3000, t0).unwrap();
        assert!(until - t0 >= Duration::from_millis(1990), "bytes: 2 s owed");
    }
}

//! Time, in one place. The broker runs on the monotonic clock ([`Instant`]: timers, expiry,
//! keep-alive) and records the wall clock ([`SystemTime`]) only where a time must outlive the
//! process or cross to another node: the store (message expiry, when a session went offline)
//! and the cluster (when a message was published). These convert between them.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    ms_since_epoch(SystemTime::now())
}

/// Milliseconds since the epoch at `t` (0 before it).
pub fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A runtime instant on the wall clock.
pub(crate) fn wall_clock(t: Instant) -> SystemTime {
    let now = Instant::now();
    match t.checked_duration_since(now) {
        Some(ahead) => SystemTime::now() + ahead,
        None => SystemTime::now() - now.duration_since(t),
    }
}

/// A wall-clock time on the runtime clock (a past time is now).
pub(crate) fn runtime_clock(t: SystemTime) -> Instant {
    Instant::now() + t.duration_since(SystemTime::now()).unwrap_or_default()
}

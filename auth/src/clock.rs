//! The token service's clock, on the system clock since the Unix epoch: what outlives a restart,
//! and what the nodes of a cluster share. Expiries are milliseconds, so a token lives exactly
//! as long as it was issued for (whole seconds, computed from the second a token was issued in,
//! had cut a 3 s token after 2.1-2.9 s); record times (`created_at`, `issued_at`) are seconds,
//! as RFC 7662 and the operator commands show them.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch now (0 if the system clock is before it).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch now (0 if the system clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

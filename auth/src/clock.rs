//! The token service's clock. Record times and expiries are whole seconds since the Unix epoch
//! on the system clock: what outlives a restart, and what the nodes of a cluster share.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch now (0 if the system clock is before it).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

//! Devices onboarding in-band (RFC 8628 over MQTT AUTH packets, `mechanism/in_band.rs`): each
//! pending exchange is a connection that has sent CONNECT and waits, without CONNACK, until a
//! person approves or denies its user code. They are listed here for the operator (`tessera
//! session list`, the console) and capped: at most `PER_ADDRESS` pending from one address
//! (an IPv6 /64 counts as one) and `IN_ALL` in all, so idle half-open exchanges cannot pile up.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::Serialize;

/// Pending exchanges from one address, at most.
pub const PER_ADDRESS: usize = 4;
/// Pending exchanges in all, at most.
pub const IN_ALL: usize = 10_000;

/// One pending onboarding, as the operator sees it (never the device code).
#[derive(Debug, Clone, Serialize)]
pub struct Pending {
    /// The MQTT client identifier of the waiting connection.
    pub client_id: String,
    /// The OAuth client it onboards as.
    pub oauth_client: String,
    pub peer: IpAddr,
    /// The listener kind it came over ("tls", "wss", ...).
    pub transport: &'static str,
    /// The code a person types at the verification page.
    pub user_code: String,
    pub started_ms: u64,
    pub expires_ms: u64,
}

#[derive(Default)]
pub struct Onboardings {
    pending: Mutex<HashMap<u64, (String, Pending)>>,
    next: AtomicU64,
}

/// A place among the pending exchanges; dropped when the exchange ends, however it ends.
pub struct Slot {
    id: u64,
    registry: Arc<Onboardings>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.pending.lock().remove(&self.id);
    }
}

impl Onboardings {
    /// Whether `address_key` may start one more: asked before any work, `begin` decides.
    pub fn has_room(&self, address_key: &str) -> bool {
        room(&self.pending.lock(), address_key)
    }

    /// Takes a place for `p`, counted under `address_key`; `None` if its address or the broker
    /// has as many pending as allowed.
    pub fn begin(self: &Arc<Self>, address_key: String, p: Pending) -> Option<Slot> {
        let mut pending = self.pending.lock();
        if !room(&pending, &address_key) {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        pending.insert(id, (address_key, p));
        Some(Slot {
            id,
            registry: self.clone(),
        })
    }

    /// Every pending exchange, oldest first.
    pub fn list(&self) -> Vec<Pending> {
        let mut all: Vec<Pending> = self
            .pending
            .lock()
            .values()
            .map(|(_, p)| p.clone())
            .collect();
        all.sort_by_key(|p| p.started_ms);
        all
    }
}

/// The caps: fewer than `PER_ADDRESS` pending from `address_key`, `IN_ALL` in all.
fn room(pending: &HashMap<u64, (String, Pending)>, address_key: &str) -> bool {
    pending.len() < IN_ALL
        && pending.values().filter(|(k, _)| k == address_key).count() < PER_ADDRESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(client_id: &str) -> Pending {
        Pending {
            client_id: client_id.into(),
            oauth_client: "tv".into(),
            peer: "192.0.2.1".parse().unwrap(),
            transport: "tls",
            user_code: "ABCD-EFGH".into(),
            started_ms: 1,
            expires_ms: 2,
        }
    }

    #[test]
    fn pending_exchanges_are_capped_per_address_and_leave_with_their_slot() {
        let o = Arc::new(Onboardings::default());
        let mut slots: Vec<Slot> = (0..PER_ADDRESS)
            .map(|i| o.begin("a".into(), pending(&format!("c{i}"))).unwrap())
            .collect();
        assert!(o.begin("a".into(), pending("one too many")).is_none());
        assert!(o.begin("b".into(), pending("elsewhere")).is_some());
        assert_eq!(o.list().len(), PER_ADDRESS);
        slots.pop();
        assert!(o.begin("a".into(), pending("again")).is_some());
    }
}

//! Persistence through the store seam (`crate::store`): writing persistent sessions at
//! shutdown, and rebuilding retained messages and sessions from the store at start.
//!
//! A retained message is written when it changes (`routing.rs`), a session when its connection
//! goes away (`lifecycle.rs`) and here at shutdown; ending a session deletes its record.

use std::sync::Arc;

use tracing::{info, warn};

use crate::broker::Broker;
use crate::session::{Inflight, Session, SessionState};
use crate::store::{
    StoredDelivery, StoredInflight, StoredSession, StoredState, StoredSubscription,
};

impl Broker {
    /// Writes every persistent session to the store (at shutdown, so queued messages survive).
    pub fn save_sessions(&self) {
        let Some(store) = &self.store else {
            return;
        };
        let sessions: Vec<Arc<Session>> = self.sessions.lock().values().cloned().collect();
        for session in sessions {
            let record = {
                let mut st = session.state.lock();
                if st.attachment.is_ended() || st.expiry_interval == 0 {
                    continue;
                }
                st.persisted = true;
                snapshot(&session.client_id, &st)
            };
            if let Err(e) = store.put_session(&record) {
                warn!(client_id = %session.client_id, error = %e, "store: cannot save session");
            }
        }
    }

    /// Rebuilds retained messages and sessions from the store (at start, before listening).
    pub fn restore(self: &Arc<Self>, state: StoredState) {
        let now = std::time::SystemTime::now();
        {
            let mut retained = self.retained.write();
            for m in &state.retained {
                if m.expires_at.is_none_or(|t| t > now) {
                    retained.insert(Arc::new(m.to_message()));
                }
            }
        }
        let mut restored = 0;
        for rec in state.sessions {
            let elapsed = now
                .duration_since(rec.saved_at)
                .unwrap_or_default()
                .as_secs();
            let remaining = match rec.expiry_interval {
                u32::MAX => u32::MAX,
                e if elapsed >= e as u64 => {
                    if let Some(store) = &self.store {
                        let _ = store.delete_session(&rec.client_id);
                    }
                    continue;
                }
                e => e - elapsed as u32,
            };
            let detached = self.next_id();
            let session = Session::new(
                self.next_id(),
                rec.client_id.as_str().into(),
                rec.expiry_interval,
                detached,
            );
            {
                let mut st = session.state.lock();
                st.persisted = true;
                for d in &rec.pending {
                    st.pending.push_back(d.to_delivery());
                }
                for (pid, i) in &rec.inflight {
                    let entry = match i {
                        StoredInflight::Published(d) => Inflight::Published(d.to_delivery()),
                        StoredInflight::Released => Inflight::Released,
                    };
                    st.inflight.insert(*pid, entry);
                }
                st.incoming_qos2.extend(rec.incoming_qos2.iter().copied());
            }
            for sub in &rec.subscriptions {
                self.subscribe(&session, &sub.filter, sub.options, sub.subscription_id);
            }
            self.sessions
                .lock()
                .insert(session.client_id.clone(), session.clone());
            if remaining != u32::MAX {
                self.schedule_expiry(&session, detached, remaining);
            }
            restored += 1;
        }
        if restored > 0 || !state.retained.is_empty() {
            info!(
                sessions = restored,
                retained = self.retained_count(),
                "restored state from the store"
            );
        }
    }
}

/// The session as a store record.
pub(crate) fn snapshot(client_id: &str, st: &SessionState) -> StoredSession {
    StoredSession {
        client_id: client_id.to_string(),
        expiry_interval: st.expiry_interval,
        subscriptions: st
            .subscriptions
            .iter()
            .map(|(f, r)| StoredSubscription {
                filter: f.clone(),
                options: r.options,
                subscription_id: r.subscription_id,
            })
            .collect(),
        inflight: st
            .inflight
            .iter()
            .map(|(pid, i)| {
                let rec = match i {
                    Inflight::Published(d) => {
                        StoredInflight::Published(Box::new(StoredDelivery::from_delivery(d)))
                    }
                    Inflight::Released => StoredInflight::Released,
                };
                (*pid, rec)
            })
            .collect(),
        pending: st
            .pending
            .iter()
            .map(StoredDelivery::from_delivery)
            .collect(),
        incoming_qos2: st.incoming_qos2.iter().copied().collect(),
        saved_at: std::time::SystemTime::now(),
    }
}

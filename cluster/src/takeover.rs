//! One connection per client id across nodes, as on one: a CONNECT on any node is announced
//! on `<prefix>.takeover` (a [`Takeover`] frame, sent by the publishing task); every other
//! node ends its older connections with that client id (0x8E), and with Clean Start its
//! session too (a newer connection here wins). Persistent sessions move through
//! `sessions.rs`.

use futures_util::StreamExt;
use tessera_broker::cluster::PeerHandle;
use tracing::warn;

use crate::Nats;
use crate::frame::Takeover;

/// Follows the other nodes' takeovers for the life of the process.
pub(crate) fn spawn_follower(nats: &Nats, broker: PeerHandle, origin: u64) {
    let (client, subject) = (nats.client.clone(), nats.subject("takeover"));
    nats.spawn(async move {
        let mut sub = match client.subscribe(subject).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot follow takeovers on NATS");
                return;
            }
        };
        while let Some(m) = sub.next().await {
            let Some(t) = Takeover::parse(&m.payload) else {
                continue;
            };
            if t.origin == origin {
                continue;
            }
            let told = broker.taken_over(&t.client_id, t.since);
            let offline = broker
                .session_snapshot(&t.client_id)
                .is_some_and(|s| s.offline_since.is_some());
            if t.clean_start && (told > 0 || offline) {
                broker.release_session(&t.client_id, true);
            }
        }
    });
}

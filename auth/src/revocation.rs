//! Ends live MQTT sessions whose token is revoked: follows the store's change stream and asks
//! the broker to disconnect (0x87) every connection whose grant used a deleted token. Revoking a
//! user's tokens, removing a client, deleting a user or changing a password all delete tokens,
//! so all of them arrive here; so does another issuer's token revoked by `jti` (a record in
//! `Bucket::Revocations` under its label). Expired tokens are cut by the broker itself (0xA0).

use std::sync::Arc;

use tessera_broker::BrokerHandle;
use tessera_broker::codec::ReasonCode;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::kv::{Bucket, ChangeKind};
use crate::service::TokenService;

pub fn spawn(service: Arc<TokenService>, broker: BrokerHandle) -> JoinHandle<()> {
    let mut changes = service.store.watch();
    tokio::spawn(async move {
        loop {
            match changes.recv().await {
                Ok(c) if c.bucket == Bucket::Revocations && c.kind == ChangeKind::Put => {
                    let n = broker.disconnect_where(
                        |conn| conn.credential.as_deref() == Some(c.key.as_str()),
                        ReasonCode::NOT_AUTHORIZED,
                        "token revoked",
                    );
                    if n > 0 {
                        info!(
                            token = crate::secrets::token_id(&c.key),
                            sessions = n,
                            "revoked external token: sessions ended"
                        );
                    }
                }
                Ok(c) if c.bucket == Bucket::AccessTokens && c.kind == ChangeKind::Deleted => {
                    let n = broker.disconnect_where(
                        |conn| conn.credential.as_deref() == Some(c.key.as_str()),
                        ReasonCode::NOT_AUTHORIZED,
                        "token revoked",
                    );
                    if n > 0 {
                        info!(
                            token = crate::secrets::token_id(&c.key),
                            sessions = n,
                            "revoked token: sessions ended"
                        );
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    // Changes were lost: check every live session against the store instead.
                    warn!(missed, "revocation stream lagged; rechecking live sessions");
                    for conn in broker.connected_clients() {
                        let Some(key) = &conn.credential else {
                            continue;
                        };
                        let revoked = if key.starts_with("ext:") {
                            matches!(service.store.get(Bucket::Revocations, key), Ok(Some(_)))
                        } else {
                            matches!(service.store.get(Bucket::AccessTokens, key), Ok(None))
                        };
                        if revoked {
                            broker.disconnect_where(
                                |c| c.conn_id == conn.conn_id,
                                ReasonCode::NOT_AUTHORIZED,
                                "token revoked",
                            );
                        }
                    }
                }
                Err(RecvError::Closed) => break,
            }
        }
    })
}

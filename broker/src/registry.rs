//! The connection registry: every live connection that completed CONNECT, so the broker can
//! count them, list them and tell some of them to go (takeover, revocation, shutdown).
//!
//! Its one lock guards only the map; it is never held while another broker lock is taken.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::codec::{ReasonCode, Version};
use crate::session::{Control, ControlSlot};

/// What a connection registers so it can be found and told to disconnect.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub conn_id: u64,
    pub client_id: Arc<str>,
    /// The identity granted by authentication.
    pub identity: Option<Arc<str>>,
    /// The credential label from the grant (a token id, never a token).
    pub credential: Option<Arc<str>>,
    pub peer: SocketAddr,
    /// Listener kind: "tcp", "tls", "ws" or "wss".
    pub transport: &'static str,
    /// The MQTT protocol version the client speaks.
    pub version: Version,
    /// When CONNECT succeeded.
    pub since: SystemTime,
    pub control: Arc<ControlSlot>,
}

#[derive(Default)]
pub(crate) struct Registry {
    /// Boxed: a map's spare slots (up to half of them after it grows) would each be the size
    /// of a whole record, about 150 bytes, where a box is 8.
    connections: Mutex<HashMap<u64, Box<ConnectionInfo>>>,
}

impl Registry {
    /// Adds a connection; returns whether it was new.
    pub(crate) fn register(&self, info: ConnectionInfo) -> bool {
        let id = info.conn_id;
        self.connections.lock().insert(id, Box::new(info)).is_none()
    }

    /// Records the identity and credential of a re-authentication.
    pub(crate) fn update(
        &self,
        conn_id: u64,
        identity: Option<Arc<str>>,
        credential: Option<Arc<str>>,
    ) {
        if let Some(c) = self.connections.lock().get_mut(&conn_id) {
            c.identity = identity;
            c.credential = credential;
        }
    }

    /// Removes a connection; returns it if it was registered.
    pub(crate) fn unregister(&self, conn_id: u64) -> Option<ConnectionInfo> {
        self.connections.lock().remove(&conn_id).map(|c| *c)
    }

    pub(crate) fn len(&self) -> usize {
        self.connections.lock().len()
    }

    pub(crate) fn list(&self) -> Vec<ConnectionInfo> {
        self.connections
            .lock()
            .values()
            .map(|c| ConnectionInfo::clone(c))
            .collect()
    }

    /// Leaves DISCONNECT `reason` for every connection `pred` selects; returns how many.
    pub(crate) fn disconnect_where(
        &self,
        pred: impl Fn(&ConnectionInfo) -> bool,
        reason: ReasonCode,
        reason_string: &str,
    ) -> usize {
        let conns = self.connections.lock();
        let mut n = 0;
        for c in conns.values().filter(|c| pred(c)) {
            c.control.send(Control::Disconnect {
                reason,
                reason_string: Some(reason_string.to_string()),
            });
            n += 1;
        }
        n
    }
}

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

    /// The first `limit` connections `pred` selects in client id order whose client id comes
    /// after `after` (0: no limit); a page of a million connections copies the page
    /// ([`crate::page`]).
    pub(crate) fn page(
        &self,
        after: Option<&str>,
        limit: usize,
        pred: impl Fn(&ConnectionInfo) -> bool,
    ) -> Vec<ConnectionInfo> {
        let conns = self.connections.lock();
        let selected = conns
            .values()
            .map(|c| &**c)
            .filter(|c| after.is_none_or(|a| &*c.client_id > a) && pred(c));
        // By client id, then connection id (two share a client id for a takeover's moment).
        crate::page::first_by(selected, limit, |a, b| {
            (&*a.client_id, a.conn_id).cmp(&(&*b.client_id, b.conn_id))
        })
        .into_iter()
        .cloned()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::ControlSlot;

    fn info(conn_id: u64, client_id: &str, identity: &str) -> ConnectionInfo {
        ConnectionInfo {
            conn_id,
            client_id: client_id.into(),
            identity: Some(identity.into()),
            credential: None,
            peer: "127.0.0.1:1883".parse().unwrap(),
            transport: "tcp",
            version: Version::V5,
            since: SystemTime::UNIX_EPOCH,
            control: Arc::new(ControlSlot::default()),
        }
    }

    fn ids(page: &[ConnectionInfo]) -> Vec<&str> {
        page.iter().map(|c| &*c.client_id).collect()
    }

    #[test]
    fn pages_walk_every_connection_once_in_client_id_order() {
        let r = Registry::default();
        // Registered out of order, so the map's order is not the answer.
        for (i, n) in [7, 3, 9, 0, 5, 1, 8, 2, 6, 4].into_iter().enumerate() {
            let user = if n % 2 == 0 { "even" } else { "odd" };
            assert!(r.register(info(i as u64, &format!("c{n}"), user)));
        }
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = r.page(after.as_deref(), 3, |_| true);
            assert!(page.len() <= 3);
            if page.is_empty() {
                break;
            }
            after = page.last().map(|c| c.client_id.to_string());
            seen.extend(ids(&page).into_iter().map(str::to_string));
        }
        let all: Vec<String> = (0..10).map(|n| format!("c{n}")).collect();
        assert_eq!(seen, all);
        assert_eq!(ids(&r.page(None, 0, |_| true)).len(), 10);
        let odd = r.page(Some("c2"), 2, |c| c.identity.as_deref() == Some("odd"));
        assert_eq!(ids(&odd), ["c3", "c5"]);
        assert!(r.page(Some("c9"), 5, |_| true).is_empty());
    }
}

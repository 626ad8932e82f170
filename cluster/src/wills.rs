//! Wills across nodes: the will of a client whose node dies is published by another node,
//! once, at the time the standard says.
//!
//! Every will a session has on a node (its connection's, or one waiting out its delay) has a
//! record in the KV bucket `<prefix>_wills`, key `<client id>.<node>` (both escaped), written
//! from the engine's `Event::Will` and deleted when the will is published or discarded there.
//! A record names its holder: the node, and which run of it (`boot`), that will publish it.
//!
//! A record is orphaned when its holder is gone: its heartbeat is older than `UP_WITHIN`
//! (judged only by a node whose own heartbeats have been written for that long, so a
//! JetStream outage that stopped every heartbeat declares no one dead), or, for this node's
//! own records, they are from an earlier run (a crash; the engine leaves such wills to this
//! file, `Broker::restore`). A node claims an orphaned record by compare-and-set, making
//! itself the holder (another claimant, or the holder writing, makes the claim fail), waits
//! out what is left of the will's delay from when its connection was lost (the dead node's
//! last heartbeat when that is not known), deletes the record (compare-and-set again) and
//! only then publishes the will as its own: published at most once, even if the old node
//! comes back. A client that is connected again by then (here, or on a live node that owns
//! its session's record) cancels the will, as a reconnect within the Will Delay does.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::Store;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tessera_auth::clock::now_ms;
use tessera_broker::cluster::PeerHandle;
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use crate::keys::escape;
use crate::nodes::{NodeStatus, UP_WITHIN};
use crate::scan::scan;
use crate::sessions::Sessions;
use crate::{ClusterError, Nats};

/// A failed write is tried again after this.
const RETRY: Duration = Duration::from_secs(1);

/// A will as the engine reported it: the PUBLISH, its delay (seconds), and when its
/// connection was lost (ms since the epoch; `None` while attached).
pub(crate) type WillNow = Option<(Bytes, u32, Option<u64>)>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    client_id: String,
    /// The node that publishes the will, and which run of it.
    holder: String,
    boot: String,
    /// Seconds after `lost_at_ms` (the smaller of Will Delay and session expiry).
    delay: u32,
    lost_at_ms: Option<u64>,
}

/// A record's value: the header as JSON (which has no raw newline), a newline, the PUBLISH.
fn encode(h: &Header, packet: &[u8]) -> Bytes {
    let mut v = serde_json::to_vec(h).unwrap_or_default();
    v.push(b'\n');
    v.extend_from_slice(packet);
    Bytes::from(v)
}

fn decode(v: &Bytes) -> Option<(Header, Bytes)> {
    let at = v.iter().position(|b| *b == b'\n')?;
    let header = serde_json::from_slice(&v[..at]).ok()?;
    Some((header, v.slice(at + 1..)))
}

/// The nodes as the last heartbeat read saw them.
#[derive(Default)]
struct View {
    nodes: HashMap<String, NodeStatus>,
    /// Whether this node's own heartbeats have been written for `UP_WITHIN`: only then may it
    /// judge another node dead.
    may_judge: bool,
    /// The nodes that were down at the last complete scan.
    scanned_down: Option<BTreeSet<String>>,
}

pub(crate) struct Wills {
    store: Store,
    bucket: String,
    node: String,
    boot: String,
    broker: PeerHandle,
    nats: Arc<Nats>,
    sessions: Arc<Sessions>,
    changes: mpsc::UnboundedSender<(String, WillNow)>,
    /// This node's last heartbeat before this run (ms), read before this run's first.
    previous_seen_ms: Option<u64>,
    view: Mutex<View>,
    rescan: Notify,
}

impl Wills {
    /// Opens the bucket, reads this node's last heartbeat of its previous run, and starts
    /// the writer and the scanner. Blocking; before this run's first heartbeat.
    pub(crate) fn start(
        nats: Arc<Nats>,
        broker: PeerHandle,
        sessions: Arc<Sessions>,
        boot: String,
    ) -> Result<Arc<Wills>, ClusterError> {
        let bucket = nats.name("wills");
        let store = crate::kv::open_bucket(&nats, &bucket)?;
        let previous_seen_ms = {
            let (js, nodes, node) = (
                nats.jetstream.clone(),
                nats.name("nodes"),
                nats.config.node.clone(),
            );
            nats.wait(crate::nodes::read_node(js, nodes, node))
                .ok()
                .flatten()
                .map(|s| s.seen_at_ms)
        };
        let (changes, changes_rx) = mpsc::unbounded_channel();
        let wills = Arc::new(Wills {
            store,
            bucket,
            node: nats.config.node.clone(),
            boot,
            broker,
            nats: nats.clone(),
            sessions,
            changes,
            previous_seen_ms,
            view: Mutex::default(),
            rescan: Notify::new(),
        });
        nats.spawn(wills.clone().write(changes_rx));
        Ok(wills)
    }

    /// `Event::Will`.
    pub(crate) fn changed(&self, client_id: &str, will: WillNow) {
        let _ = self.changes.send((client_id.to_string(), will));
    }

    /// Claims what this node's previous run left (once it has joined: a will is published
    /// as this node's, to every node), then follows the heartbeats. Blocking.
    pub(crate) fn claim_left_behind(self: &Arc<Self>) {
        let this = self.clone();
        let claimed = self
            .nats
            .wait(async move { this.claim_orphans(false).await });
        if let Err(e) = claimed.map_err(|e| e.to_string()).and_then(|r| r) {
            warn!(error = %e, "reading the wills this node left; tried again");
            // The scanner claims this node's earlier records too, again until it can.
            self.rescan.notify_one();
        }
        self.nats.spawn(self.clone().scan_when_told());
    }

    /// From each heartbeat read: every node's status, and how long this node's own
    /// heartbeats have been written without a failure.
    pub(crate) fn seen(&self, nodes: &[NodeStatus], writing_for: Duration) {
        let mut view = self.view.lock();
        view.nodes = nodes.iter().map(|n| (n.node.clone(), n.clone())).collect();
        view.may_judge = writing_for >= UP_WITHIN;
        let down: BTreeSet<String> = nodes
            .iter()
            .filter(|n| !n.up)
            .map(|n| n.node.clone())
            .collect();
        if view.may_judge && view.scanned_down.as_ref() != Some(&down) {
            drop(view);
            self.rescan.notify_one();
        }
    }

    async fn scan_when_told(self: Arc<Self>) {
        loop {
            self.rescan.notified().await;
            if let Err(e) = self.claim_orphans(true).await {
                debug!(error = %e, "claiming the wills of nodes that are down; again soon");
                tokio::time::sleep(RETRY).await;
                self.rescan.notify_one();
            }
        }
    }

    /// Claims every orphaned record (`others`: of other nodes too, not only this node's
    /// earlier runs) and ends the sessions of dead nodes.
    async fn claim_orphans(self: &Arc<Self>, others: bool) -> Result<(), String> {
        let (dead, may_judge) = {
            let view = self.view.lock();
            let dead: HashMap<String, u64> = view
                .nodes
                .values()
                .filter(|n| !n.up)
                .map(|n| (n.node.clone(), n.seen_at_ms))
                .collect();
            (dead, view.may_judge)
        };
        let others = others && may_judge;
        let now = now_ms();
        let records = scan(&self.nats.jetstream, &self.bucket, "").await?;
        let mut claimed = 0;
        for r in records {
            let Some((h, packet)) = decode(&r.value) else {
                continue;
            };
            // When its holder was last known alive, if it is gone.
            let gone_since = if h.holder == self.node {
                (h.boot != self.boot).then(|| self.previous_seen_ms.unwrap_or(now))
            } else if others {
                // A holder whose heartbeat was never read is taken to be starting.
                dead.get(&h.holder).copied()
            } else {
                None
            };
            let Some(gone_since) = gone_since else {
                continue;
            };
            let mine = Header {
                holder: self.node.clone(),
                boot: self.boot.clone(),
                lost_at_ms: h.lost_at_ms.or(Some(gone_since)),
                ..h.clone()
            };
            let value = encode(&mine, &packet);
            if let Ok(revision) = self.store.update(&r.key, value, r.revision).await {
                claimed += 1;
                let this = self.clone();
                let key = r.key.clone();
                self.nats.spawn(async move {
                    this.publish_when_due(key, revision, mine, h.holder, packet)
                        .await
                });
            }
        }
        if claimed > 0 {
            info!(
                wills = claimed,
                "claimed the wills of clients of nodes that are down"
            );
        }
        if others {
            self.sessions.end_orphaned(&dead).await?;
            self.view.lock().scanned_down = Some(dead.into_keys().collect());
        }
        Ok(())
    }

    /// Publishes a claimed will when it is due, unless its client is back or the record
    /// changed meanwhile.
    async fn publish_when_due(
        self: Arc<Self>,
        key: String,
        revision: u64,
        h: Header,
        dead: String,
        packet: Bytes,
    ) {
        let due = h.lost_at_ms.unwrap_or(0) + h.delay as u64 * 1000;
        let wait = due.saturating_sub(now_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let back = self.client_is_back(&h.client_id, &dead).await;
        loop {
            match self
                .store
                .delete_expect_revision(&key, Some(revision))
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    // Changed: another node, or its holder alive again, has it now.
                    match self.store.entry(&key).await {
                        Ok(Some(entry)) if entry.revision == revision => {
                            debug!(error = %e, "deleting a claimed will; again soon");
                            tokio::time::sleep(RETRY).await;
                        }
                        Ok(_) => return,
                        Err(_) => tokio::time::sleep(RETRY).await,
                    }
                }
            }
        }
        if back {
            info!(client_id = %h.client_id, node = %dead, "a will of a client of a node that is down is not published: the client is connected again");
            return;
        }
        match self.broker.publish_will(packet) {
            Ok(()) => {
                info!(client_id = %h.client_id, node = %dead, "published the will of a client of a node that is down")
            }
            Err(e) => {
                warn!(client_id = %h.client_id, error = %e, "a will from another node could not be read")
            }
        }
    }

    /// Whether `client_id` is connected again: here, or on a live node that owns its
    /// session's record (other than `dead`).
    async fn client_is_back(&self, client_id: &str, dead: &str) -> bool {
        if self
            .broker
            .session_snapshot(client_id)
            .is_some_and(|s| s.offline_since.is_none())
        {
            return true;
        }
        let up = |node: &str| self.view.lock().nodes.get(node).is_some_and(|n| n.up);
        match self.sessions.online_owner(client_id).await {
            Some(owner) => owner != dead && (owner == self.node || up(&owner)),
            None => false,
        }
    }

    /// Writes the engine's reports, the latest per client id; failed writes again later.
    async fn write(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<(String, WillNow)>) {
        let mut failed: HashMap<String, WillNow> = HashMap::new();
        let mut failing = false;
        loop {
            let mut due = std::mem::take(&mut failed);
            tokio::select! {
                got = rx.recv() => match got {
                    Some((id, will)) => { due.insert(id, will); }
                    None => return,
                },
                _ = tokio::time::sleep(RETRY), if !due.is_empty() => {}
            }
            while let Ok((id, will)) = rx.try_recv() {
                due.insert(id, will);
            }
            for (id, will) in due {
                match self.write_one(&id, &will).await {
                    Ok(()) => {
                        if std::mem::take(&mut failing) {
                            info!("writing wills to NATS again");
                        }
                    }
                    Err(e) => {
                        if !failing {
                            warn!(error = %e, "cannot write a will to NATS; trying again every second");
                        }
                        failing = true;
                        failed.entry(id).or_insert(will);
                    }
                }
            }
        }
    }

    async fn write_one(&self, client_id: &str, will: &WillNow) -> Result<(), String> {
        let key = format!("{}.{}", escape(client_id), escape(&self.node));
        let write = async {
            match will {
                Some((packet, delay, lost_at_ms)) => {
                    let h = Header {
                        client_id: client_id.to_string(),
                        holder: self.node.clone(),
                        boot: self.boot.clone(),
                        delay: *delay,
                        lost_at_ms: *lost_at_ms,
                    };
                    self.store
                        .put(&key, encode(&h, packet))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
                None => self.store.delete(&key).await.map_err(|e| e.to_string()),
            }
        };
        match tokio::time::timeout(crate::DEADLINE, write).await {
            Ok(r) => r,
            Err(_) => Err("timed out".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back() {
        let h = Header {
            client_id: "a\nb".into(),
            holder: "n1".into(),
            boot: "00ff".into(),
            delay: 2,
            lost_at_ms: Some(5),
        };
        let packet = b"\x30\x05\x00\x01t\nx";
        let (back, p) = decode(&encode(&h, packet)).unwrap();
        assert_eq!(back, h);
        assert_eq!(&p[..], packet);
        assert!(decode(&Bytes::from_static(b"{}")).is_none());
    }
}

//! What a session holds ([`SessionState`]) and the invariant that ties it to the broker's
//! gauges (`gauges.rs`): the attachment, the queue ([`Pending`]) and the in-flight map change
//! only through the methods here, each moving the gauges with it, and a dropped state takes
//! back what it was counted for.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use super::{Attachment, ConnLink, Inflight, SubRecord};
use crate::cluster::Cut;
use crate::gauges::{Counted, SessionGauges};
use crate::message::{Delivery, Message};
use crate::tickets::Wait;

/// Messages waiting for the client, in order, with their payload bytes counted: the queue's
/// bound is in messages and in bytes, and this type is the only place that counts them. Only
/// `SessionState` changes it, keeping the broker's gauges with it.
#[derive(Debug, Default)]
pub struct Pending {
    queue: VecDeque<Delivery>,
    bytes: usize,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Payload bytes of the queued messages.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn front(&self) -> Option<&Delivery> {
        self.queue.front()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Delivery> {
        self.queue.iter()
    }

    fn push_back(&mut self, d: Delivery) {
        self.bytes += d.message.payload.len();
        self.queue.push_back(d);
    }

    fn pop_back(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_back()?;
        self.bytes -= d.message.payload.len();
        Some(d)
    }

    fn pop_front(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.bytes -= d.message.payload.len();
        Some(d)
    }

    fn clear(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }
}

/// Invariant: the broker's [`SessionGauges`] count this session's attachment, queue and
/// in-flight messages as they are. So those three fields change only through the methods
/// below, and dropping the state takes back what it was counted for.
pub struct SessionState {
    attachment: Attachment,
    /// Seconds the session outlives its connection; `u32::MAX` = forever.
    pub expiry_interval: u32,
    /// Full filter (with any `$share/group/` prefix) → options.
    pub subscriptions: HashMap<String, SubRecord>,
    pending: Pending,
    inflight: BTreeMap<u16, Inflight>,
    gauges: Arc<SessionGauges>,
    next_packet_id: u16,
    /// Incoming QoS 2 packet identifiers received and not yet released (PUBREL).
    pub incoming_qos2: BTreeSet<u16>,
    /// A record of this session was written to the store (so ending it must delete it).
    pub persisted: bool,
    /// The sequence number of the next journaled queue entry.
    pub next_seq: u64,
    /// QoS 2 messages given a packet identifier but not yet written to the client, with the
    /// tickets of that assignment (journal; in a cluster, the record the other nodes read): a
    /// PUBLISH goes out only once its identifier is durable, so a crash cannot make the
    /// broker (or the node that takes the session over) resend it under another one.
    pub(crate) unsent: VecDeque<(u16, Wait)>,
    /// A will waiting for its Will Delay Interval; cleared when a connection attaches.
    pub pending_will: Option<Arc<Message>>,
    /// The cluster was last told of a will of this session (`Broker::report_will`).
    pub will_reported: bool,
    /// A message was queued to it since the cluster last read it (`session_snapshot`): the
    /// floor of its cluster record is behind (`Broker::note_queued`).
    pub record_behind: bool,
    /// A session moved here from a live node, while its replay runs: the cluster names of
    /// the messages queued to it since it opened here, which the replay does not queue again
    /// (`cluster/sessions.rs`).
    /// Boxed, as `moved_from`: 8 bytes of every session instead of 48, for a rare state.
    #[allow(clippy::box_collection)]
    pub moved_seen: Option<Box<HashSet<(u64, u64)>>>,
    /// A session handed over by a live node: that node (its `ClusterId::origin`) and the
    /// cut of what it routed to the session, which this node does not queue to it again
    /// (its consumer may be behind that node's).
    pub moved_from: Option<Box<(u64, Cut)>>,
    /// The attached connection left messages in `pending` because the client is not taking
    /// them (its socket is full or its Receive Maximum is reached), as opposed to its task not
    /// having run yet. Set by the connection each time it drains the queue.
    pub stalled_by_client: bool,
}

impl SessionState {
    /// Offline since now (`detached` names that state); counted in `gauges` from now on.
    pub(super) fn new(expiry_interval: u32, detached: u64, gauges: &Arc<SessionGauges>) -> Self {
        gauges.moved(Counted::Not, Counted::Offline);
        SessionState {
            attachment: Attachment::Offline {
                detached,
                since: SystemTime::now(),
            },
            expiry_interval,
            subscriptions: HashMap::new(),
            pending: Pending::default(),
            inflight: BTreeMap::new(),
            gauges: gauges.clone(),
            next_packet_id: 1,
            incoming_qos2: BTreeSet::new(),
            pending_will: None,
            will_reported: false,
            record_behind: false,
            moved_seen: None,
            moved_from: None,
            persisted: false,
            next_seq: 1,
            unsent: VecDeque::new(),
            stalled_by_client: false,
        }
    }
}

fn counted(a: &Attachment) -> Counted {
    match a {
        Attachment::Online(_) => Counted::Online,
        Attachment::Offline { .. } => Counted::Offline,
        Attachment::Ended => Counted::Not,
    }
}

impl SessionState {
    pub fn attachment(&self) -> &Attachment {
        &self.attachment
    }

    /// Messages waiting for the client.
    pub fn pending(&self) -> &Pending {
        &self.pending
    }

    /// Outgoing QoS 1/2 messages awaiting their acknowledgement, by packet identifier.
    pub fn inflight(&self) -> &BTreeMap<u16, Inflight> {
        &self.inflight
    }

    fn set_attachment(&mut self, to: Attachment) -> Attachment {
        self.gauges.moved(counted(&self.attachment), counted(&to));
        std::mem::replace(&mut self.attachment, to)
    }

    /// Attaches a connection; returns the one it replaced, if any.
    pub fn attach(&mut self, link: ConnLink) -> Option<ConnLink> {
        match self.set_attachment(Attachment::Online(link)) {
            Attachment::Online(old) => Some(old),
            _ => None,
        }
    }

    /// Detaches `conn_id` if it is the attached connection; the session is then offline (the
    /// detachment `detached`) from now. Returns whether it was attached.
    pub fn detach(&mut self, conn_id: u64, detached: u64) -> bool {
        if !self.attachment.is_attached(conn_id) {
            return false;
        }
        self.set_offline(detached, SystemTime::now());
        true
    }

    /// Offline since `since` (a session loaded from the store).
    pub(crate) fn set_offline(&mut self, detached: u64, since: SystemTime) {
        self.set_attachment(Attachment::Offline { detached, since });
    }

    /// Ends the session: nothing is queued or in flight any more.
    pub(crate) fn end(&mut self) {
        self.set_attachment(Attachment::Ended);
        self.gauges
            .queue_changed(self.pending.len(), 0, -(self.pending.bytes() as i64));
        self.pending.clear();
        self.gauges.inflight(-(self.inflight.len() as i64));
        self.inflight.clear();
        self.unsent.clear();
        self.moved_seen = None;
    }

    pub(crate) fn push_pending(&mut self, d: Delivery) {
        let bytes = d.message.payload.len() as i64;
        self.pending.push_back(d);
        let len = self.pending.len();
        self.gauges.queue_changed(len - 1, len, bytes);
    }

    pub(crate) fn pop_pending_front(&mut self) -> Option<Delivery> {
        let d = self.pending.pop_front()?;
        Some(self.taken(d))
    }

    pub(crate) fn pop_pending_back(&mut self) -> Option<Delivery> {
        let d = self.pending.pop_back()?;
        Some(self.taken(d))
    }

    /// `d` left the queue: the gauges follow.
    fn taken(&mut self, d: Delivery) -> Delivery {
        let len = self.pending.len();
        let bytes = d.message.payload.len() as i64;
        self.gauges.queue_changed(len + 1, len, -bytes);
        d
    }

    /// Puts `i` in flight under `pid`; returns what was there.
    pub(crate) fn insert_inflight(&mut self, pid: u16, i: Inflight) -> Option<Inflight> {
        let old = self.inflight.insert(pid, i);
        if old.is_none() {
            self.gauges.inflight(1);
        }
        old
    }

    pub(crate) fn remove_inflight(&mut self, pid: u16) -> Option<Inflight> {
        let old = self.inflight.remove(&pid);
        if old.is_some() {
            self.gauges.inflight(-1);
        }
        old
    }

    /// The shared message bodies referenced by the session's journaled entries (queued and
    /// in flight).
    pub(crate) fn stored_messages(&self) -> Vec<u64> {
        let queued = self.pending.iter().filter_map(Delivery::stored_ref);
        let inflight = self.inflight.values().filter_map(|i| match i {
            Inflight::Published(d) => d.stored_ref(),
            Inflight::Released(r) => *r,
        });
        queued.chain(inflight).filter_map(|r| r.message).collect()
    }

    /// A packet identifier not used by any in-flight outgoing message.
    pub fn allocate_packet_id(&mut self) -> Option<u16> {
        if self.inflight.len() >= u16::MAX as usize {
            return None;
        }
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.contains_key(&id) {
                return Some(id);
            }
        }
    }

    /// Counts outgoing QoS 1/2 messages toward the client's Receive Maximum.
    pub fn inflight_count(&self) -> usize {
        self.inflight.len()
    }
}

impl Drop for SessionState {
    fn drop(&mut self) {
        self.gauges.moved(counted(&self.attachment), Counted::Not);
        self.gauges
            .queue_changed(self.pending.len(), 0, -(self.pending.bytes() as i64));
        self.gauges.inflight(-(self.inflight.len() as i64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap() {
        let mut st = SessionState::new(0, 0, &Arc::default());
        st.next_packet_id = u16::MAX;
        assert_eq!(st.allocate_packet_id(), Some(u16::MAX));
        st.insert_inflight(1, Inflight::Released(None));
        assert_eq!(st.allocate_packet_id(), Some(2));
    }
}

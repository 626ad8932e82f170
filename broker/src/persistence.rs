//! Persistence through the store seam (`crate::store`): rebuilding the broker from what the
//! store holds at start, including what a crash left, and whole snapshots for `on_stop`
//! durability.
//!
//! A crash leaves sessions whose connection was attached (`Presence::Online`): restored, they
//! count as disconnected when the broker last ran (`StoredState::last_alive`), so their
//! expiry keeps counting across the downtime and their wills are published after the Will
//! Delay, as if the connection had dropped. A session whose expiry passed while the broker was
//! down ends at start, its will published.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use crate::broker::Broker;
use crate::journal::{MessageRefs, Record};
use crate::lifecycle::head;
use crate::message::{Delivery, Message, Stored, StoredRef};
use crate::session::{Inflight, Session};
use crate::store::{
    Batch, Change, EntryState, Presence, StoreError, StoredEntry, StoredMessage, StoredState,
    StoredSubscription, StoredWill,
};

/// The message bodies of one snapshot: each written once, numbered from 1.
#[derive(Default)]
struct Bodies {
    ids: HashMap<*const Message, u64>,
}

impl Bodies {
    fn id(&mut self, m: &Arc<Message>, changes: &mut Vec<Change>) -> u64 {
        let next = self.ids.len() as u64 + 1;
        *self.ids.entry(Arc::as_ptr(m)).or_insert_with(|| {
            changes.push(Change::PutMessage(
                next,
                Arc::new(StoredMessage::from_message(m)),
            ));
            next
        })
    }
}

/// Where the journal starts from a loaded state: the references to stored message bodies,
/// the next message id, and bodies nothing references any more (left by a crash between an
/// entry's removal and its body's).
pub(crate) fn journal_start(state: &StoredState) -> (MessageRefs, u64, Vec<u64>) {
    let mut counts: HashMap<u64, u32> = HashMap::new();
    // Ids must not repeat, shared bodies or not.
    let mut last_id = state.messages.keys().max().copied().unwrap_or(0);
    for s in &state.sessions {
        for e in &s.entries {
            last_id = last_id.max(e.message_id);
            if e.body.is_none() && state.messages.contains_key(&e.message_id) {
                *counts.entry(e.message_id).or_default() += 1;
            }
        }
    }
    let mut refs = MessageRefs::default();
    let mut orphans = Vec::new();
    for id in state.messages.keys() {
        match counts.get(id) {
            Some(&n) => refs.loaded(*id, n),
            None => orphans.push(*id),
        }
    }
    (refs, last_id + 1, orphans)
}

impl Broker {
    /// Rebuilds retained messages and sessions from the store (at start, before listening).
    /// `orphans` are message bodies to drop (see [`journal_start`]). `wills_to_cluster`: this
    /// node is one of a cluster, whose record of every will (`Event::Will`) is the one that
    /// counts: a will left here by a crash is published by whichever node claims that record
    /// first (this one once it joins, or another while it was down), not from here.
    pub(crate) fn restore(
        self: &Arc<Self>,
        state: StoredState,
        orphans: Vec<u64>,
        wills_to_cluster: bool,
    ) {
        let now = SystemTime::now();
        let journal = self.journal();
        if let Some(j) = journal {
            for id in orphans {
                j.append(Record::DropMessage(id));
            }
        }
        {
            let mut retained = self.retained.write();
            for m in &state.retained {
                if m.expires_at.is_none_or(|t| t > now) {
                    retained.insert(Arc::new(m.to_message()));
                }
            }
        }
        let messages: HashMap<u64, Arc<Message>> = state
            .messages
            .iter()
            .map(|(id, m)| {
                let message = m.to_message();
                if journal.is_some() {
                    let _ = message.stored_id.set(*id);
                }
                (*id, Arc::new(message))
            })
            .collect();
        self.cluster
            .restore_peers_routed(state.peers_routed.unwrap_or(0));
        let down_since = state.last_alive.unwrap_or(now);
        let (mut restored, mut ended) = (0, 0);
        let mut wills_now = Vec::new();
        let mut left_to_cluster = 0;
        for rec in state.sessions {
            let head_rec = rec.head;
            let expiry = head_rec.expiry_interval;
            // When the session lost its connection, and how long a will waits from then.
            let (since, crashed) = match head_rec.presence {
                Presence::Online => (down_since, true),
                Presence::Offline { since } => (since, false),
            };
            // An attached connection's will waits the smaller of its delay and the expiry; a
            // pending one was stored with that already.
            let will = head_rec.will.map(|w| {
                let delay = if crashed {
                    w.delay.min(expiry)
                } else {
                    w.delay
                };
                (Arc::new(w.message.to_message()), delay)
            });
            let will = match will {
                Some(_) if wills_to_cluster => {
                    left_to_cluster += 1;
                    None
                }
                will => will,
            };
            let will_delay = will.as_ref().map_or(0, |(_, d)| *d);
            let elapsed = now.duration_since(since).unwrap_or_default();
            let left = match expiry {
                u32::MAX => None,
                e => Some(Duration::from_secs(e as u64).saturating_sub(elapsed)),
            };
            let client: Arc<str> = head_rec.client_id.as_str().into();
            if left == Some(Duration::ZERO) {
                // Ended while the broker was down (or at the crash, for Session Expiry 0).
                if let Some((w, _)) = will {
                    wills_now.push(w);
                }
                if let Some(j) = journal {
                    j.append(Record::EndSession {
                        client,
                        messages: rec
                            .entries
                            .iter()
                            .filter(|e| e.body.is_none())
                            .map(|e| e.message_id)
                            .collect(),
                    });
                }
                ended += 1;
                continue;
            }
            let detached = self.next_id();
            let session = Session::new(
                self.next_id(),
                client.clone(),
                expiry,
                detached,
                &self.gauges,
            );
            let mut will_left = None;
            {
                let mut st = session.state.lock();
                st.set_offline(detached, since);
                st.persisted = true;
                for e in &rec.entries {
                    let shared = e.body.is_none();
                    let message = match &e.body {
                        Some(body) => Some(Arc::new({
                            let m = body.to_message();
                            if journal.is_some() {
                                let _ = m.stored_id.set(e.message_id);
                            }
                            m
                        })),
                        None => messages.get(&e.message_id).cloned(),
                    };
                    let Some(message) = message else {
                        if !matches!(e.state, EntryState::Released(_)) {
                            warn!(client_id = %client, seq = e.seq, "stored entry without its message; skipped");
                            continue;
                        }
                        if let EntryState::Released(pid) = e.state {
                            st.insert_inflight(pid, Inflight::Released(None));
                        }
                        continue;
                    };
                    let stored = journal.map(|_| Stored { seq: e.seq, shared });
                    match e.state {
                        EntryState::Released(pid) => {
                            let r = stored.map(|s| StoredRef {
                                seq: s.seq,
                                message: shared.then_some(e.message_id),
                            });
                            st.insert_inflight(pid, Inflight::Released(r));
                        }
                        state => {
                            let d = Delivery {
                                message,
                                qos: e.qos,
                                retain: e.retain,
                                subscription_ids: e.subscription_ids.clone(),
                                stored,
                            };
                            match state {
                                EntryState::Sent(pid) => {
                                    st.insert_inflight(pid, Inflight::Published(d));
                                }
                                _ => st.push_pending(d),
                            }
                        }
                    }
                    st.next_seq = st.next_seq.max(e.seq + 1);
                }
                st.incoming_qos2.extend(rec.incoming_qos2.iter().copied());
                if let Some((w, delay)) = will {
                    let due = since + Duration::from_secs(delay as u64);
                    match due.duration_since(now) {
                        Ok(left) if !left.is_zero() => {
                            st.pending_will = Some(w);
                            will_left = Some(left);
                        }
                        _ => wills_now.push(w),
                    }
                }
                if crashed && let Some(j) = journal {
                    // From now on the record says when the connection was lost, so a second
                    // crash keeps counting from the same moment.
                    let pending = st.pending_will.as_ref().map(|w| StoredWill {
                        message: StoredMessage::from_message(w),
                        delay: will_delay,
                    });
                    j.append(Record::Session(Box::new(head(&session, &st, pending))));
                }
            }
            for sub in &rec.subscriptions {
                self.add_subscription(
                    &session,
                    &sub.filter,
                    sub.options,
                    sub.subscription_id,
                    false,
                );
            }
            self.sessions
                .lock()
                .insert(session.client_id.clone(), session.clone());
            if let Some(left) = left {
                self.schedule_expiry(&session, detached, left);
            }
            if let Some(left) = will_left {
                self.schedule_will(&session, detached, left);
            }
            restored += 1;
        }
        let wills = wills_now.len();
        for w in wills_now {
            self.publish(w);
        }
        if restored > 0 || ended > 0 || !state.retained.is_empty() {
            info!(
                sessions = restored,
                ended,
                wills,
                wills_left_to_cluster = left_to_cluster,
                retained = self.retained_count(),
                "restored state from the store"
            );
        }
    }

    /// Everything the store should hold, as one batch that replaces what it holds (`on_stop`
    /// durability). A connection attached now is recorded as such, without its will (which
    /// lives in the connection): a crash before the next snapshot loses it.
    pub(crate) fn snapshot(&self) -> Vec<Change> {
        let now = Instant::now();
        let mut changes = vec![Change::Clear];
        for m in self.retained.read().all(now) {
            changes.push(Change::PutRetained(Box::new(StoredMessage::from_message(
                &m,
            ))));
        }
        let sessions: Vec<Arc<Session>> = self.sessions.lock().values().cloned().collect();
        // Message bodies once per snapshot, however many sessions hold them.
        let mut bodies = Bodies::default();
        for session in sessions {
            let st = session.state.lock();
            if st.attachment().is_ended() || st.expiry_interval == 0 {
                continue;
            }
            let client = session.client_id.clone();
            let will = st.pending_will.as_ref().map(|w| StoredWill {
                message: StoredMessage::from_message(w),
                delay: 0,
            });
            changes.push(Change::PutSession(Box::new(head(&session, &st, will))));
            for (f, r) in &st.subscriptions {
                changes.push(Change::PutSubscription(
                    client.clone(),
                    StoredSubscription {
                        filter: f.clone(),
                        options: r.options,
                        subscription_id: r.subscription_id,
                    },
                ));
            }
            let inflight = st.inflight().iter().map(|(pid, i)| match i {
                Inflight::Published(d) => (Some(d), EntryState::Sent(*pid)),
                Inflight::Released(_) => (None, EntryState::Released(*pid)),
            });
            let queued = st.pending().iter().map(|d| (Some(d), EntryState::Queued));
            for (seq, (d, state)) in (1..).zip(inflight.chain(queued)) {
                let entry = StoredEntry {
                    seq,
                    message_id: d.map_or(0, |d| bodies.id(&d.message, &mut changes)),
                    body: None,
                    qos: d.map_or(crate::codec::QoS::ExactlyOnce, |d| d.qos),
                    retain: d.is_some_and(|d| d.retain),
                    subscription_ids: d.map(|d| d.subscription_ids.clone()).unwrap_or_default(),
                    state,
                };
                changes.push(Change::PutEntry(client.clone(), entry));
            }
            for pid in &st.incoming_qos2 {
                changes.push(Change::PutIncoming(client.clone(), *pid));
            }
        }
        changes
    }

    /// Writes a snapshot now (`on_stop` durability: at shutdown and every interval).
    pub(crate) fn save_snapshot(&self) -> Result<(), StoreError> {
        let Some(store) = self.store() else {
            return Ok(());
        };
        // Read first: a message routed meanwhile may be in the snapshot and come again
        // (at least once), but none routed after it is skipped as if it were in it.
        let routed = self.cluster.peers_routed();
        let changes = self.snapshot();
        let n = changes.len();
        store.commit(&Batch {
            changes,
            alive_at: Some(SystemTime::now()),
            peers_routed: (routed > 0).then_some(routed),
        })?;
        info!(records = n, "state snapshot written");
        Ok(())
    }
}

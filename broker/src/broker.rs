//! The broker's shared state and the operations connections perform on it: opening and ending
//! sessions (takeover included), subscribing, routing a message to every matching session,
//! retained messages, wills and session expiry, and ending connections on request.
//!
//! Connections own the protocol; this file owns what they share. Locks are held for
//! microseconds and never across an await.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tessera_config::{MqttConfig, QueueFullPolicy};
use tracing::{info, warn};

use crate::auth::Authenticator;
use crate::codec::topic::parse_shared;
use crate::codec::{QoS, ReasonCode, SubscriptionOptions};
use crate::message::{Delivery, Message};
use crate::retained::RetainedTree;
use crate::session::{
    Attachment, ConnLink, Control, Enqueued, Inflight, QueueLimits, Session, SubRecord,
};
use crate::stats::Stats;
use crate::store::{
    Store, StoredDelivery, StoredInflight, StoredMessage, StoredSession, StoredState,
    StoredSubscription,
};
use crate::subscriptions::{Subscriber, SubscriptionTree};

/// What a connection registers so it can be found and told to disconnect.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub conn_id: u64,
    pub client_id: Arc<str>,
    /// The identity granted by authentication.
    pub identity: Option<String>,
    /// The credential label from the grant (a token id, never a token).
    pub credential: Option<String>,
    pub control: Arc<crate::session::ControlSlot>,
}

/// Result of routing one message (or a run of them).
#[derive(Debug, Clone, Copy, Default)]
pub struct Routed {
    /// Sessions the message was offered to.
    pub matched: usize,
    /// Some session refused it because its queue was full (policy `reject`).
    pub rejected: bool,
    /// Some online subscriber's queue is filling faster than its task runs (see
    /// [`Enqueued::QueuedBehind`]): the publisher should yield before its next message.
    pub subscribers_behind: bool,
}

pub struct Broker {
    pub config: MqttConfig,
    pub limits: QueueLimits,
    pub auth: Arc<dyn Authenticator>,
    /// Where retained messages and persistent sessions are written through; `None` when
    /// nothing outlives this broker, so no copies are made at all.
    pub store: Option<Arc<dyn Store>>,
    pub stats: Stats,
    pub started: Instant,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    subscriptions: RwLock<SubscriptionTree>,
    retained: RwLock<RetainedTree>,
    connections: Mutex<HashMap<u64, ConnectionInfo>>,
    next_id: AtomicU64,
}

/// A cloneable handle for code outside the broker (the auth service, the binary).
#[derive(Clone)]
pub struct BrokerHandle(pub(crate) Arc<Broker>);

impl BrokerHandle {
    /// Sends DISCONNECT `reason` to every live connection `pred` selects and closes them.
    /// Returns how many were told.
    pub fn disconnect_where(
        &self,
        pred: impl Fn(&ConnectionInfo) -> bool,
        reason: ReasonCode,
        reason_string: &str,
    ) -> usize {
        self.0.disconnect_where(pred, reason, reason_string)
    }

    /// Client identifiers of the live connections.
    pub fn connected_clients(&self) -> Vec<ConnectionInfo> {
        self.0.connections.lock().values().cloned().collect()
    }
}

impl Broker {
    pub fn new(
        config: MqttConfig,
        auth: Arc<dyn Authenticator>,
        store: Option<Arc<dyn Store>>,
    ) -> Arc<Broker> {
        let limits = QueueLimits {
            max_messages: config.max_queued_messages as usize,
            max_bytes: config.max_queued_bytes as usize,
            drop_oldest: config.queue_full == QueueFullPolicy::DropOldest,
            queue_qos0_offline: config.queue_qos0_offline,
        };
        Arc::new(Broker {
            config,
            limits,
            auth,
            store,
            stats: Stats::default(),
            started: Instant::now(),
            sessions: Mutex::new(HashMap::new()),
            subscriptions: RwLock::new(SubscriptionTree::default()),
            retained: RwLock::new(RetainedTree::default()),
            connections: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn register_connection(&self, info: ConnectionInfo) {
        self.connections.lock().insert(info.conn_id, info);
        self.stats.clients_connected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn update_connection(
        &self,
        conn_id: u64,
        identity: Option<String>,
        credential: Option<String>,
    ) {
        if let Some(c) = self.connections.lock().get_mut(&conn_id) {
            c.identity = identity;
            c.credential = credential;
        }
    }

    pub fn unregister_connection(&self, conn_id: u64) {
        if self.connections.lock().remove(&conn_id).is_some() {
            self.stats.clients_connected.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn connection_count(&self) -> usize {
        self.connections.lock().len()
    }

    pub fn disconnect_where(
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

    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.read().len()
    }

    pub fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    /// Attaches a connection to the session of `client_id`, creating or replacing it as Clean
    /// Start asks (§3.1.2.4). Returns the session, whether it existed (Session Present) and
    /// the connection it was taken from, which the caller must tell to go (0x8E).
    pub fn open_session(
        self: &Arc<Self>,
        client_id: &str,
        clean_start: bool,
        expiry_interval: u32,
        link: ConnLink,
    ) -> (Arc<Session>, bool, Option<ConnLink>) {
        let mut sessions = self.sessions.lock();
        if let Some(existing) = sessions.get(client_id).cloned() {
            let mut st = existing.state.lock();
            if !clean_start && !st.attachment.is_ended() {
                let old_link = st.attach(link);
                st.expiry_interval = expiry_interval;
                // A reconnect before the will delay elapsed cancels the will (§3.1.3.2.2).
                st.pending_will = None;
                drop(st);
                return (existing, true, old_link);
            }
            let old_link = match &st.attachment {
                Attachment::Online(l) => Some(l.clone()),
                _ => None,
            };
            drop(st);
            sessions.remove(client_id);
            drop(sessions);
            self.end_session(&existing);
            sessions = self.sessions.lock();
            let session = Session::new(self.next_id(), client_id.into(), expiry_interval, 0);
            session.state.lock().attach(link);
            sessions.insert(session.client_id.clone(), session.clone());
            return (session, false, old_link);
        }
        let session = Session::new(self.next_id(), client_id.into(), expiry_interval, 0);
        session.state.lock().attach(link);
        sessions.insert(session.client_id.clone(), session.clone());
        (session, false, None)
    }

    /// Discards a session: its subscriptions leave the tree, its queue is dropped, and a will
    /// waiting on its delay is published now (the session ended, §3.1.2.5).
    pub fn end_session(&self, session: &Arc<Session>) {
        let (subs, will, persisted) = {
            let mut st = session.state.lock();
            if st.attachment.is_ended() {
                return;
            }
            st.attachment = Attachment::Ended;
            st.pending.clear();
            st.inflight.clear();
            let subs: Vec<String> = st.subscriptions.drain().map(|(f, _)| f).collect();
            (
                subs,
                st.pending_will.take(),
                std::mem::take(&mut st.persisted),
            )
        };
        {
            let mut tree = self.subscriptions.write();
            for f in &subs {
                let (group, filter) = split_shared(f);
                tree.remove(filter, group, session.id);
            }
            session.set_subscription_count(0);
        }
        {
            let mut sessions = self.sessions.lock();
            if sessions
                .get(&session.client_id)
                .is_some_and(|s| s.id == session.id)
            {
                sessions.remove(&session.client_id);
            }
        }
        if persisted
            && let Some(store) = &self.store
            && let Err(e) = store.delete_session(&session.client_id)
        {
            warn!(client_id = %session.client_id, error = %e, "store: cannot delete session");
        }
        if let Some(w) = will {
            self.publish(w);
        }
    }

    /// A connection attached to `session` closed. `will` is its will message unless the client
    /// disconnected normally; `will_delay` its Will Delay Interval.
    pub fn connection_closed(
        self: &Arc<Self>,
        session: &Arc<Session>,
        conn_id: u64,
        will: Option<Arc<Message>>,
        will_delay: u32,
    ) {
        // Decide under the session lock; publish and end the session after releasing it, since
        // both take the subscription tree (lock order: tree, then session).
        let (publish_now, end_now, snapshot) = {
            let mut st = session.state.lock();
            let detached = self.next_id();
            let was_attached = st.detach(conn_id, detached);
            let ended = st.attachment.is_ended();
            let mut publish_now = None;
            if let Some(w) = will {
                if ended || will_delay == 0 {
                    publish_now = Some(w);
                } else if was_attached {
                    // The will waits for the smaller of its delay and the session's expiry.
                    let delay = will_delay.min(st.expiry_interval);
                    st.pending_will = Some(w);
                    self.schedule_will(session, detached, delay);
                }
                // Taken over while the session continues: a delayed will is cancelled.
            }
            let mut end_now = false;
            if was_attached && !ended {
                match st.expiry_interval {
                    0 => end_now = true,
                    u32::MAX => {}
                    secs => self.schedule_expiry(session, detached, secs),
                }
            }
            let snapshot =
                (self.store.is_some() && was_attached && !end_now && !ended).then(|| {
                    st.persisted = true;
                    snapshot(&session.client_id, &st)
                });
            (publish_now, end_now, snapshot)
        };
        if let Some(record) = snapshot
            && let Some(store) = &self.store
            && let Err(e) = store.put_session(&record)
        {
            warn!(client_id = %session.client_id, error = %e, "store: cannot save session");
        }
        if let Some(w) = publish_now {
            self.publish(w);
        }
        if end_now {
            self.end_session(session);
        }
    }

    /// Publishes the session's pending will after `secs` unless the session is no longer in
    /// the detachment `detached` (a connection attached, which cancels it, or the session
    /// ended, which already published it).
    fn schedule_will(self: &Arc<Self>, session: &Arc<Session>, detached: u64, secs: u32) {
        self.after(secs, session, detached, |broker, session| {
            let will = session.state.lock().pending_will.take();
            if let Some(w) = will {
                broker.publish(w);
            }
        });
    }

    /// Ends the session after `secs` unless it is no longer in the detachment `detached`.
    fn schedule_expiry(self: &Arc<Self>, session: &Arc<Session>, detached: u64, secs: u32) {
        self.after(secs, session, detached, |broker, session| {
            info!(client_id = %session.client_id, "session expired");
            broker.end_session(session);
        });
    }

    /// Runs `action` after `secs` if the broker still runs and the session is still offline in
    /// the detachment `detached` (the state the timer was set for).
    fn after(
        self: &Arc<Self>,
        secs: u32,
        session: &Arc<Session>,
        detached: u64,
        action: impl FnOnce(&Arc<Broker>, &Arc<Session>) + Send + 'static,
    ) {
        let broker = Arc::downgrade(self);
        let session = session.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs as u64)).await;
            let Some(broker) = broker.upgrade() else {
                return;
            };
            {
                let st = session.state.lock();
                if !matches!(st.attachment, Attachment::Offline { detached: d } if d == detached) {
                    return;
                }
            }
            action(&broker, &session);
        });
    }

    /// Stores or clears the retained message and routes `message` to every matching session.
    pub fn publish(&self, message: Arc<Message>) -> Routed {
        self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        self.publish_internal(message)
    }

    /// `publish` without counting the message as received (the broker's own `$SYS` updates).
    pub fn publish_internal(&self, message: Arc<Message>) -> Routed {
        if message.retain && self.config.retain_available {
            let delete = message.payload.is_empty();
            {
                let mut retained = self.retained.write();
                if delete {
                    retained.remove(&message.topic);
                } else {
                    retained.insert(message.clone());
                }
            }
            let written = match &self.store {
                None => Ok(()),
                Some(store) if delete => store.delete_retained(&message.topic),
                Some(store) => store.put_retained(&StoredMessage::from_message(&message)),
            };
            if let Err(e) = written {
                warn!(topic = %message.topic, error = %e, "store: cannot save retained message");
            }
        }
        self.route(std::slice::from_ref(&message))
    }

    /// Routes a run of QoS 0 messages one client published to one topic, none retained, in
    /// order. The run is matched once and each subscriber's queue is locked once for all of
    /// it: a publisher streaming to many subscribers pays per run, not per message.
    pub fn publish_run(&self, run: &[Arc<Message>]) -> Routed {
        debug_assert!(run.iter().all(|m| !m.retain
            && m.qos == QoS::AtMostOnce
            && m.topic == run[0].topic
            && m.publisher == run[0].publisher));
        self.stats
            .messages_received
            .fetch_add(run.len() as u64, Ordering::Relaxed);
        self.route(run)
    }

    /// Routes `messages`, which share one topic and one publisher, in order.
    fn route(&self, messages: &[Arc<Message>]) -> Routed {
        let Some(message) = messages.first() else {
            return Routed::default();
        };
        struct Target<'t> {
            session: &'t Arc<Session>,
            qos: QoS,
            retain_as_published: bool,
            ids: Vec<u32>,
            shared: bool,
        }
        let tree = self.subscriptions.read();
        let mut targets: Vec<Target<'_>> = Vec::new();
        tree.for_each_match(&message.topic, &mut |m| {
            let s = m.subscriber;
            if s.options.no_local && !m.shared && s.session.id == message.publisher {
                return;
            }
            targets.push(Target {
                session: &s.session,
                qos: s.options.qos,
                retain_as_published: s.options.retain_as_published,
                ids: s.subscription_id.into_iter().collect(),
                shared: m.shared,
            });
        });
        // One copy per session for overlapping subscriptions: the highest QoS and every
        // Subscription Identifier (MQTT-3.3.4-2, -3). Shared ones are delivered apart. Only a
        // session with several subscriptions can match twice, so only those are sorted.
        let mut merged: Vec<Target<'_>> = Vec::with_capacity(targets.len());
        let mut several: Vec<Target<'_>> = Vec::new();
        for t in targets {
            if !t.shared && t.session.subscription_count() > 1 {
                several.push(t);
            } else {
                merged.push(t);
            }
        }
        several.sort_by_key(|t| t.session.id);
        let mut last_merged: Option<usize> = None;
        for t in several {
            if let Some(i) = last_merged
                && merged[i].session.id == t.session.id
            {
                let last = &mut merged[i];
                last.qos = last.qos.max(t.qos);
                last.retain_as_published |= t.retain_as_published;
                last.ids.extend(t.ids);
                continue;
            }
            merged.push(t);
            last_merged = Some(merged.len() - 1);
        }
        let mut routed = Routed {
            matched: merged.len(),
            rejected: false,
            subscribers_behind: false,
        };
        for mut t in merged {
            let mut st = t.session.state.lock();
            for (i, m) in messages.iter().enumerate() {
                // The last delivery takes the identifiers; only a run's earlier ones copy them.
                let subscription_ids = if i + 1 == messages.len() {
                    std::mem::take(&mut t.ids)
                } else {
                    t.ids.clone()
                };
                let d = Delivery {
                    message: m.clone(),
                    qos: m.qos.min(t.qos),
                    retain: t.retain_as_published && m.retain,
                    subscription_ids,
                };
                match t.session.enqueue(&mut st, d, &self.limits) {
                    Enqueued::Queued | Enqueued::Skipped => {}
                    Enqueued::QueuedBehind => routed.subscribers_behind = true,
                    Enqueued::QueuedDroppedOldest => {
                        self.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Enqueued::Rejected => {
                        self.stats.messages_dropped.fetch_add(1, Ordering::Relaxed);
                        routed.rejected = true;
                    }
                }
            }
        }
        routed
    }

    /// Adds (or replaces) a subscription of `session`. Returns whether it replaced one.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &str,
        options: SubscriptionOptions,
        subscription_id: Option<u32>,
    ) -> bool {
        let (group, inner) = split_shared(filter);
        let mut tree = self.subscriptions.write();
        let mut st = session.state.lock();
        if st.attachment.is_ended() {
            return false;
        }
        st.subscriptions.insert(
            filter.to_string(),
            SubRecord {
                options,
                subscription_id,
            },
        );
        session.set_subscription_count(st.subscriptions.len());
        drop(st);
        tree.insert(
            inner,
            group,
            Subscriber {
                session: session.clone(),
                options,
                subscription_id,
            },
        )
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &str) -> bool {
        let (group, inner) = split_shared(filter);
        let mut tree = self.subscriptions.write();
        let existed = {
            let mut st = session.state.lock();
            let existed = st.subscriptions.remove(filter).is_some();
            session.set_subscription_count(st.subscriptions.len());
            existed
        };
        tree.remove(inner, group, session.id);
        existed
    }

    /// The live retained messages matching `filter`.
    pub fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        self.retained.read().matching(filter, Instant::now())
    }

    /// Tells every connection the server is going away (DISCONNECT 0x8B).
    pub fn shutdown_connections(&self) -> usize {
        self.disconnect_where(
            |_| true,
            ReasonCode::SERVER_SHUTTING_DOWN,
            "server shutting down",
        )
    }

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

    pub fn handle(self: &Arc<Self>) -> BrokerHandle {
        BrokerHandle(self.clone())
    }
}

/// The session as a store record.
fn snapshot(client_id: &str, st: &crate::session::SessionState) -> StoredSession {
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

/// `$share/g/a/b` → `(Some("g"), "a/b")`; other filters → `(None, filter)`.
pub fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match parse_shared(filter) {
        Ok(Some(s)) => (Some(s.group), s.filter),
        _ => (None, filter),
    }
}

//! Session lifecycle: attaching a connection to its session (creating, resuming or replacing
//! it as Clean Start asks, taking it over from another connection), detaching it when the
//! connection closes, the will and its delay, and session expiry.
//!
//! Timers (will delay, expiry) are tasks that act only if the session is still in the
//! detachment they were set for (`Attachment::Offline { detached }`), so a reconnect cancels
//! them without bookkeeping.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::broker::Broker;
use crate::message::Message;
use crate::persistence::snapshot;
use crate::session::{Attachment, ConnLink, Session};
use crate::subscribe::split_shared;

impl Broker {
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
    pub(crate) fn schedule_expiry(
        self: &Arc<Self>,
        session: &Arc<Session>,
        detached: u64,
        secs: u32,
    ) {
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
}

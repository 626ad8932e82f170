//! Session lifecycle: attaching a connection to its session (creating, resuming or replacing
//! it as Clean Start asks, taking it over from another connection), detaching it when the
//! connection closes, the will and its delay, and session expiry. With durability on, each of
//! these writes the session's head to the journal.
//!
//! Timers (will delay, expiry) are tasks that act only if the session is still in the
//! detachment they were set for (`Attachment::Offline { detached }`), so a reconnect cancels
//! them without bookkeeping.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::info;

use crate::broker::Broker;
use crate::cluster::MovedSession;
use crate::codec::Will;
use crate::codec::topic::split_shared;
use crate::journal::Record;
use crate::message::Message;
use crate::session::{Attachment, ConnLink, Session, SessionState};
use crate::store::{Presence, SessionHead, StoredMessage, StoredWill};

/// A connection attached to its session.
pub(crate) struct Opened {
    pub session: Arc<Session>,
    /// Session Present: the session existed and was resumed.
    pub present: bool,
    /// The connection the session was taken from, which must be told to go (0x8E).
    pub taken_from: Option<ConnLink>,
    /// The journal ticket after which the session's head (and its will) is durable.
    pub durable_at: Option<u64>,
}

impl Broker {
    /// Attaches a connection to the session of `client_id`, creating or replacing it as Clean
    /// Start asks (§3.1.2.4). `will` is the connection's will, recorded with the session so a
    /// crash does not lose it. `moved`: the session another node held (`cluster/sessions.rs`), which
    /// replaces any this node still has.
    pub(crate) fn open_session(
        self: &Arc<Self>,
        client_id: &str,
        clean_start: bool,
        expiry_interval: u32,
        link: ConnLink,
        will: Option<&Will>,
        moved: Option<MovedSession>,
    ) -> Opened {
        let (session, present, taken_from) = self.attach(
            client_id,
            clean_start || moved.is_some(),
            expiry_interval,
            link,
        );
        let mut durable_at = None;
        let will = will.map(|w| {
            let delay = w.properties.will_delay_interval.unwrap_or(0);
            (Message::from_will(w.clone()), delay)
        });
        {
            let mut st = session.state.lock();
            if let Some(j) = self.journal()
                && (st.persisted || expiry_interval > 0 || will.is_some())
            {
                st.persisted = true;
                let will = will.as_ref().map(|(m, delay)| StoredWill {
                    message: StoredMessage::from_message(m),
                    delay: *delay,
                });
                durable_at = Some(j.append(Record::Session(Box::new(head(&session, &st, will)))));
            }
            // An attached connection's will waits the smaller of its delay and the expiry.
            let will = will
                .as_ref()
                .map(|(m, d)| (m, (*d).min(expiry_interval), None));
            self.report_will(&session, &mut st, will);
        }
        let present = present || moved.is_some();
        if let Some(moved) = moved {
            // Journaled after the head, so CONNACK (waiting for the head's ticket) leaves
            // once they are durable too.
            self.adopt(&session, moved);
            durable_at = durable_at.and(self.journal().map(|j| j.last_ticket()));
        }
        self.cluster.session_changed(client_id);
        Opened {
            session,
            present,
            taken_from,
            durable_at,
        }
    }

    fn attach(
        self: &Arc<Self>,
        client_id: &str,
        clean_start: bool,
        expiry_interval: u32,
        link: ConnLink,
    ) -> (Arc<Session>, bool, Option<ConnLink>) {
        let mut sessions = self.sessions.lock();
        if let Some(existing) = sessions.get(client_id).cloned() {
            let mut st = existing.state.lock();
            if !clean_start && !st.attachment().is_ended() {
                let old_link = st.attach(link);
                st.expiry_interval = expiry_interval;
                // A reconnect before the will delay elapsed cancels the will (§3.1.3.2.2).
                st.pending_will = None;
                drop(st);
                return (existing, true, old_link);
            }
            let old_link = match &st.attachment() {
                Attachment::Online(l) => Some(l.clone()),
                _ => None,
            };
            drop(st);
            sessions.remove(client_id);
            drop(sessions);
            self.end_session(&existing);
            sessions = self.sessions.lock();
            let session = Session::new(
                self.next_id(),
                client_id.into(),
                expiry_interval,
                0,
                &self.gauges,
            );
            session.state.lock().attach(link);
            sessions.insert(session.client_id.clone(), session.clone());
            return (session, false, old_link);
        }
        let session = Session::new(
            self.next_id(),
            client_id.into(),
            expiry_interval,
            0,
            &self.gauges,
        );
        session.state.lock().attach(link);
        sessions.insert(session.client_id.clone(), session.clone());
        (session, false, None)
    }

    /// Discards a session: its subscriptions leave the tree, its queue is dropped, its record
    /// is deleted, and a will waiting on its delay is published now (the session ended,
    /// §3.1.2.5).
    pub(crate) fn end_session(&self, session: &Arc<Session>) {
        self.end_session_with(session, |_| {});
    }

    /// `end_session`; `last` sees the session just before it ends, under the subscription
    /// tree's write lock and the session's lock (nothing is routed to it meanwhile).
    pub(crate) fn end_session_with(
        &self,
        session: &Arc<Session>,
        last: impl FnOnce(&SessionState),
    ) {
        let mut tree = self.subscriptions.write();
        let will = {
            let mut st = session.state.lock();
            if st.attachment().is_ended() {
                return;
            }
            last(&st);
            if std::mem::take(&mut st.persisted)
                && let Some(j) = self.journal()
            {
                j.append(Record::EndSession {
                    client: session.client_id.clone(),
                    messages: st.stored_messages(),
                });
            }
            st.end();
            for (f, _) in st.subscriptions.drain() {
                let (group, filter) = split_shared(&f);
                if tree.remove(filter, group, session.id) {
                    self.cluster.interest(filter, group, false);
                }
            }
            session.set_subscription_count(0);
            self.report_will(session, &mut st, None);
            st.pending_will.take()
        };
        drop(tree);
        {
            let mut sessions = self.sessions.lock();
            if sessions
                .get(&session.client_id)
                .is_some_and(|s| s.id == session.id)
            {
                sessions.remove(&session.client_id);
            }
        }
        self.cluster.session_changed(&session.client_id);
        if let Some(w) = will {
            self.publish(w);
        }
    }

    /// A connection attached to `session` closed. `will` is its will message unless the client
    /// disconnected normally; `will_delay` its Will Delay Interval.
    pub(crate) fn connection_closed(
        self: &Arc<Self>,
        session: &Arc<Session>,
        conn_id: u64,
        will: Option<Arc<Message>>,
        will_delay: u32,
    ) {
        // Decide under the session lock; publish and end the session after releasing it, since
        // both take the subscription tree (lock order: tree, then session).
        let (publish_now, end_now) = {
            let mut st = session.state.lock();
            let detached = self.next_id();
            let was_attached = st.detach(conn_id, detached);
            let ended = st.attachment().is_ended();
            let mut publish_now = None;
            let mut stored_will = None;
            if let Some(w) = will {
                if ended || will_delay == 0 {
                    publish_now = Some(w);
                } else if was_attached {
                    // The will waits for the smaller of its delay and the session's expiry.
                    let delay = will_delay.min(st.expiry_interval);
                    stored_will = Some(StoredWill {
                        message: StoredMessage::from_message(&w),
                        delay,
                    });
                    st.pending_will = Some(w);
                    self.schedule_will(session, detached, secs(delay));
                }
                // Taken over while the session continues: a delayed will is cancelled.
            }
            if was_attached {
                let pending = st.pending_will.clone();
                let will = stored_will
                    .as_ref()
                    .zip(pending.as_deref())
                    .map(|(s, m)| (m, s.delay, Some(SystemTime::now())));
                self.report_will(session, &mut st, will);
            }
            let mut end_now = false;
            if was_attached && !ended {
                match st.expiry_interval {
                    0 => end_now = true,
                    u32::MAX => {}
                    s => self.schedule_expiry(session, detached, secs(s)),
                }
            }
            if was_attached
                && !end_now
                && st.persisted
                && let Some(j) = self.journal()
            {
                j.append(Record::Session(Box::new(head(session, &st, stored_will))));
            }
            (publish_now, end_now)
        };
        self.cluster.session_changed(&session.client_id);
        if let Some(w) = publish_now {
            self.publish(w);
        }
        if end_now {
            self.end_session(session);
        }
    }

    /// Publishes the session's pending will after `delay` unless the session is no longer in
    /// the detachment `detached` (a connection attached, which cancels it, or the session
    /// ended, which already published it).
    pub(crate) fn schedule_will(
        self: &Arc<Self>,
        session: &Arc<Session>,
        detached: u64,
        delay: Duration,
    ) {
        self.after(delay, session, detached, |broker, session| {
            let will = {
                let mut st = session.state.lock();
                let will = st.pending_will.take();
                broker.report_will(session, &mut st, None);
                if will.is_some()
                    && st.persisted
                    && let Some(j) = broker.journal()
                {
                    j.append(Record::Session(Box::new(head(session, &st, None))));
                }
                will
            };
            if let Some(w) = will {
                broker.publish(w);
            }
        });
    }

    /// Tells the cluster the session's will now: the connection's (attached, `lost_at`
    /// `None`), a pending one, or none. Under the session's lock, so one client id's reports
    /// keep the order of its changes; "none" only after a will was reported.
    fn report_will(
        &self,
        session: &Session,
        st: &mut SessionState,
        will: Option<(&Message, u32, Option<SystemTime>)>,
    ) {
        if will.is_none() && !st.will_reported {
            return;
        }
        st.will_reported = will.is_some();
        let (message, delay, lost_at) = match will {
            Some((m, d, at)) => (Some(m), d, at),
            None => (None, 0, None),
        };
        self.cluster
            .will(&session.client_id, message, delay, lost_at);
    }

    /// Ends the session after `delay` unless it is no longer in the detachment `detached`.
    pub(crate) fn schedule_expiry(
        self: &Arc<Self>,
        session: &Arc<Session>,
        detached: u64,
        delay: Duration,
    ) {
        self.after(delay, session, detached, |broker, session| {
            info!(client_id = %session.client_id, "session expired");
            broker.end_session(session);
        });
    }

    /// Runs `action` after `delay` if the broker still runs and the session is still offline
    /// in the detachment `detached` (the state the timer was set for).
    fn after(
        self: &Arc<Self>,
        delay: Duration,
        session: &Arc<Session>,
        detached: u64,
        action: impl FnOnce(&Arc<Broker>, &Arc<Session>) + Send + 'static,
    ) {
        let broker = Arc::downgrade(self);
        let session = session.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(broker) = broker.upgrade() else {
                return;
            };
            {
                let st = session.state.lock();
                if !matches!(st.attachment(), Attachment::Offline { detached: d, .. } if *d == detached)
                {
                    return;
                }
            }
            action(&broker, &session);
        });
    }
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(s as u64)
}

/// The session's head as the store keeps it. `will`: the attached connection's will when
/// online, the pending will when offline.
pub(crate) fn head(session: &Session, st: &SessionState, will: Option<StoredWill>) -> SessionHead {
    let presence = match st.attachment() {
        Attachment::Online(_) => Presence::Online,
        Attachment::Offline { since, .. } => Presence::Offline { since: *since },
        Attachment::Ended => Presence::Offline {
            since: SystemTime::now(),
        },
    };
    SessionHead {
        client_id: session.client_id.to_string(),
        expiry_interval: st.expiry_interval,
        presence,
        will,
    }
}

//! Subscribing and unsubscribing: a session's subscriptions are kept twice, in its own state
//! (what it subscribed to, for the store and for ending it) and in the subscription tree (for
//! routing); both change under the tree's write lock, then the session's lock.

use std::sync::Arc;
use std::time::Instant;

use crate::broker::Broker;
use crate::codec::SubscriptionOptions;
use crate::codec::topic::split_shared;
use crate::journal::Record;
use crate::message::Message;
use crate::session::{Session, SubRecord};
use crate::store::StoredSubscription;
use crate::subscriptions::Subscriber;

impl Broker {
    /// Adds (or replaces) a subscription of `session`. Returns whether it replaced one.
    pub(crate) fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &str,
        options: SubscriptionOptions,
        subscription_id: Option<u32>,
    ) -> bool {
        self.add_subscription(session, filter, options, subscription_id, true)
    }

    /// `subscribe`; `journal` false for subscriptions restored from the store.
    pub(crate) fn add_subscription(
        &self,
        session: &Arc<Session>,
        filter: &str,
        options: SubscriptionOptions,
        subscription_id: Option<u32>,
        journal: bool,
    ) -> bool {
        let (group, inner) = split_shared(filter);
        let mut tree = self.subscriptions.write();
        let mut st = session.state.lock();
        if st.attachment().is_ended() {
            return false;
        }
        // Not waited for: a message acknowledged later is in a later batch, which commits
        // after this one.
        if journal
            && st.persisted
            && let Some(j) = self.journal()
        {
            j.append(Record::Subscribe(
                session.client_id.clone(),
                StoredSubscription {
                    filter: filter.to_string(),
                    options,
                    subscription_id,
                },
            ));
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
        let replaced = tree.insert(
            inner,
            group,
            Subscriber {
                session: session.clone(),
                options,
                subscription_id,
            },
        );
        if !replaced {
            self.cluster.interest(inner, group, true);
        }
        drop(tree);
        if journal {
            self.cluster.session_changed(&session.client_id);
        }
        replaced
    }

    /// Removes a subscription; returns whether it existed.
    pub(crate) fn unsubscribe(&self, session: &Arc<Session>, filter: &str) -> bool {
        let (group, inner) = split_shared(filter);
        let mut tree = self.subscriptions.write();
        let existed = {
            let mut st = session.state.lock();
            let existed = st.subscriptions.remove(filter).is_some();
            session.set_subscription_count(st.subscriptions.len());
            if existed
                && st.persisted
                && let Some(j) = self.journal()
            {
                j.append(Record::Unsubscribe(
                    session.client_id.clone(),
                    filter.to_string(),
                ));
            }
            existed
        };
        if tree.remove(inner, group, session.id) {
            self.cluster.interest(inner, group, false);
        }
        drop(tree);
        if existed {
            self.cluster.session_changed(&session.client_id);
        }
        existed
    }

    /// The live retained messages matching `filter`.
    pub(crate) fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        self.retained.read().matching(filter, Instant::now())
    }
}

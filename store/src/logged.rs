//! The batches in the log, folded into their net effect on the tables: what the next checkpoint
//! writes. Kept in memory beside the log, and rebuilt from it at start.
//!
//! Most of what a busy broker journals cancels out within a batch or two: a queue entry is put
//! when its message is acknowledged to the publisher and deleted when the subscriber
//! acknowledges it, usually one batch later. Folded here, such a pair never reaches the tables.
//!
//! The fold keeps the effect of the order: `Clear` drops everything before it, and
//! `DeleteSession` everything logged for the session before it (the checkpoint deletes the
//! session's rows first, then writes what came after). An entry or message body put and
//! deleted within the log is dropped outright, which is right because the broker never puts a
//! key it has stored before (see [`Change::PutEntry`]) except after clearing it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tessera_broker::store::{
    Change, EntryState, SessionHead, StoreError, StoredEntry, StoredMessage, StoredSubscription,
};

use crate::tables::Tables;

/// A key's net change: the value last put, or a delete.
enum Net<T> {
    /// `fresh`: the first change of the key since the last checkpoint, so the tables cannot
    /// hold it and a later delete cancels this put.
    Put {
        value: T,
        fresh: bool,
    },
    Delete,
}

enum EntryNet {
    Put {
        entry: StoredEntry,
        fresh: bool,
    },
    /// The entry is in the tables; only its state changed.
    State(EntryState),
    Delete,
}

#[derive(Default)]
struct SessionNet {
    /// The session ended: its rows in the tables go before anything below is written.
    ended: bool,
    head: Option<Box<SessionHead>>,
    subscriptions: HashMap<String, Option<StoredSubscription>>,
    // Ordered maps: sequence numbers grow, so an entry goes in at the end and out at the front.
    entries: BTreeMap<u64, EntryNet>,
    incoming: BTreeMap<u16, bool>,
}

#[derive(Default)]
pub(crate) struct Logged {
    clear: bool,
    retained: HashMap<String, Option<Box<StoredMessage>>>,
    messages: BTreeMap<u64, Net<Arc<StoredMessage>>>,
    sessions: HashMap<Arc<str>, SessionNet>,
}

impl Logged {
    pub(crate) fn is_empty(&self) -> bool {
        !self.clear
            && self.retained.is_empty()
            && self.messages.is_empty()
            && self.sessions.is_empty()
    }

    pub(crate) fn fold(&mut self, change: &Change) {
        match change {
            Change::Clear => {
                *self = Logged {
                    clear: true,
                    ..Logged::default()
                }
            }
            Change::PutRetained(m) => {
                self.retained.insert(m.topic.to_string(), Some(m.clone()));
            }
            Change::DeleteRetained(t) => {
                self.retained.insert(t.clone(), None);
            }
            Change::PutMessage(id, m) => {
                let fresh = !self.messages.contains_key(id);
                self.messages.insert(
                    *id,
                    Net::Put {
                        value: m.clone(),
                        fresh,
                    },
                );
            }
            Change::DeleteMessage(id) => {
                if let Some(Net::Put { fresh: true, .. }) = self.messages.get(id) {
                    self.messages.remove(id);
                } else {
                    self.messages.insert(*id, Net::Delete);
                }
            }
            Change::PutSession(h) => {
                let client: Arc<str> = h.client_id.as_str().into();
                self.session(&client).head = Some(h.clone());
            }
            Change::DeleteSession(c) => {
                self.sessions.insert(
                    c.clone(),
                    SessionNet {
                        ended: true,
                        ..SessionNet::default()
                    },
                );
            }
            Change::PutSubscription(c, s) => {
                self.session(c)
                    .subscriptions
                    .insert(s.filter.clone(), Some(s.clone()));
            }
            Change::DeleteSubscription(c, f) => {
                self.session(c).subscriptions.insert(f.clone(), None);
            }
            Change::PutEntry(c, e) => {
                let entries = &mut self.session(c).entries;
                let fresh = !entries.contains_key(&e.seq);
                entries.insert(
                    e.seq,
                    EntryNet::Put {
                        entry: e.clone(),
                        fresh,
                    },
                );
            }
            Change::SetEntryState(c, seq, state) => {
                let entries = &mut self.session(c).entries;
                match entries.get_mut(seq) {
                    Some(EntryNet::Put { entry, .. }) => entry.state = *state,
                    Some(EntryNet::Delete) => {}
                    Some(EntryNet::State(s)) => *s = *state,
                    None => {
                        entries.insert(*seq, EntryNet::State(*state));
                    }
                }
            }
            Change::DeleteEntry(c, seq) => {
                let entries = &mut self.session(c).entries;
                if let Some(EntryNet::Put { fresh: true, .. }) = entries.get(seq) {
                    entries.remove(seq);
                } else {
                    entries.insert(*seq, EntryNet::Delete);
                }
            }
            Change::PutIncoming(c, pid) => {
                self.session(c).incoming.insert(*pid, true);
            }
            Change::DeleteIncoming(c, pid) => {
                self.session(c).incoming.insert(*pid, false);
            }
        }
    }

    fn session(&mut self, client: &Arc<str>) -> &mut SessionNet {
        self.sessions.entry(client.clone()).or_default()
    }

    /// Writes the net effect into `t`. The fold is left as it is: if the transaction fails,
    /// the log still holds it all.
    pub(crate) fn write(&self, t: &mut Tables<'_>) -> Result<(), StoreError> {
        if self.clear {
            t.clear()?;
        }
        for (topic, m) in &self.retained {
            match m {
                Some(m) => t.put_retained(m)?,
                None => t.delete_retained(topic)?,
            }
        }
        for (id, m) in &self.messages {
            match m {
                Net::Put { value, .. } => t.put_message(*id, value)?,
                Net::Delete => t.delete_message(*id)?,
            }
        }
        for (client, s) in &self.sessions {
            if s.ended {
                t.delete_session(client)?;
            }
            if let Some(h) = &s.head {
                t.put_session(h)?;
            }
            for (filter, sub) in &s.subscriptions {
                match sub {
                    Some(sub) => t.put_subscription(client, sub)?,
                    None => t.delete_subscription(client, filter)?,
                }
            }
            for (seq, e) in &s.entries {
                match e {
                    EntryNet::Put { entry, .. } => t.put_entry(client, entry)?,
                    EntryNet::State(state) => t.set_entry_state(client, *seq, *state)?,
                    EntryNet::Delete => t.delete_entry(client, *seq)?,
                }
            }
            for (pid, present) in &s.incoming {
                if *present {
                    t.put_incoming(client, *pid)?;
                } else {
                    t.delete_incoming(client, *pid)?;
                }
            }
        }
        Ok(())
    }
}

//! The tables of the broker store and the one place that writes and reads them. Keys are
//! typed; values are the broker's record encodings. A session's rows share the client id as the
//! first part of their keys, so ending a session is a range delete.

use std::time::{Duration, UNIX_EPOCH};

use redb::{
    ReadTransaction, ReadableTable, ReadableTableMetadata, Table, TableDefinition, WriteTransaction,
};
use tessera_broker::store::encoding::{
    decode_entry, decode_head, decode_message, decode_subscription, encode_entry, encode_head,
    encode_message, encode_subscription,
};
use tessera_broker::store::{
    Change, EntryState, SessionHead, StoreError, StoredEntry, StoredMessage, StoredSession,
    StoredState, StoredSubscription,
};

use crate::{corrupt, failed};

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
pub(crate) const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
pub(crate) const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
pub(crate) const SUBSCRIPTIONS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("subscriptions");
pub(crate) const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entries");
pub(crate) const INCOMING: TableDefinition<(&str, u16), ()> = TableDefinition::new("incoming");
/// Batches committed since the last checkpoint, by number from 0 (see the crate docs).
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

fn write_error(e: impl Into<redb::Error>) -> StoreError {
    failed("write", e)
}

/// The state tables open in a write transaction.
pub(crate) struct Tables<'t> {
    retained: Table<'t, &'static str, &'static [u8]>,
    messages: Table<'t, u64, &'static [u8]>,
    sessions: Table<'t, &'static str, &'static [u8]>,
    subscriptions: Table<'t, (&'static str, &'static str), &'static [u8]>,
    entries: Table<'t, (&'static str, u64), &'static [u8]>,
    incoming: Table<'t, (&'static str, u16), ()>,
}

impl<'t> Tables<'t> {
    pub(crate) fn open(tx: &'t WriteTransaction) -> Result<Tables<'t>, StoreError> {
        Ok(Tables {
            retained: tx.open_table(RETAINED).map_err(write_error)?,
            messages: tx.open_table(MESSAGES).map_err(write_error)?,
            sessions: tx.open_table(SESSIONS).map_err(write_error)?,
            subscriptions: tx.open_table(SUBSCRIPTIONS).map_err(write_error)?,
            entries: tx.open_table(ENTRIES).map_err(write_error)?,
            incoming: tx.open_table(INCOMING).map_err(write_error)?,
        })
    }

    pub(crate) fn apply(&mut self, change: &Change) -> Result<(), StoreError> {
        match change {
            Change::Clear => self.clear(),
            Change::PutRetained(m) => self.put_retained(m),
            Change::DeleteRetained(t) => self.delete_retained(t),
            Change::PutMessage(id, m) => self.put_message(*id, m),
            Change::DeleteMessage(id) => self.delete_message(*id),
            Change::PutSession(h) => self.put_session(h),
            Change::DeleteSession(c) => self.delete_session(c),
            Change::PutSubscription(c, s) => self.put_subscription(c, s),
            Change::DeleteSubscription(c, f) => self.delete_subscription(c, f),
            Change::PutEntry(c, e) => self.put_entry(c, e),
            Change::SetEntryState(c, seq, state) => self.set_entry_state(c, *seq, *state),
            Change::DeleteEntry(c, seq) => self.delete_entry(c, *seq),
            Change::PutIncoming(c, pid) => self.put_incoming(c, *pid),
            Change::DeleteIncoming(c, pid) => self.delete_incoming(c, *pid),
        }
    }

    pub(crate) fn clear(&mut self) -> Result<(), StoreError> {
        self.retained.retain(|_, _| false).map_err(write_error)?;
        self.messages.retain(|_, _| false).map_err(write_error)?;
        self.sessions.retain(|_, _| false).map_err(write_error)?;
        self.subscriptions
            .retain(|_, _| false)
            .map_err(write_error)?;
        self.entries.retain(|_, _| false).map_err(write_error)?;
        self.incoming.retain(|_, _| false).map_err(write_error)?;
        Ok(())
    }

    pub(crate) fn put_retained(&mut self, m: &StoredMessage) -> Result<(), StoreError> {
        self.retained
            .insert(m.topic.as_str(), encode_message(m).as_slice())
            .map_err(write_error)?;
        Ok(())
    }

    pub(crate) fn delete_retained(&mut self, topic: &str) -> Result<(), StoreError> {
        self.retained.remove(topic).map_err(write_error)?;
        Ok(())
    }

    pub(crate) fn put_message(&mut self, id: u64, m: &StoredMessage) -> Result<(), StoreError> {
        self.messages
            .insert(id, encode_message(m).as_slice())
            .map_err(write_error)?;
        Ok(())
    }

    pub(crate) fn delete_message(&mut self, id: u64) -> Result<(), StoreError> {
        self.messages.remove(id).map_err(write_error)?;
        Ok(())
    }

    pub(crate) fn put_session(&mut self, h: &SessionHead) -> Result<(), StoreError> {
        self.sessions
            .insert(h.client_id.as_str(), encode_head(h).as_slice())
            .map_err(write_error)?;
        Ok(())
    }

    /// The session's head, subscriptions, entries and incoming identifiers.
    pub(crate) fn delete_session(&mut self, c: &str) -> Result<(), StoreError> {
        self.sessions.remove(c).map_err(write_error)?;
        let filters: Vec<String> = self
            .subscriptions
            .range((c, "")..)
            .map_err(write_error)?
            .map_while(|row| {
                let (k, _) = row.ok()?;
                let (client, filter) = k.value();
                (client == c).then(|| filter.to_string())
            })
            .collect();
        for f in &filters {
            self.subscriptions
                .remove((c, f.as_str()))
                .map_err(write_error)?;
        }
        self.entries
            .retain_in((c, 0u64)..=(c, u64::MAX), |_, _| false)
            .map_err(write_error)?;
        self.incoming
            .retain_in((c, 0u16)..=(c, u16::MAX), |_, _| false)
            .map_err(write_error)?;
        Ok(())
    }

    pub(crate) fn put_subscription(
        &mut self,
        c: &str,
        s: &StoredSubscription,
    ) -> Result<(), StoreError> {
        self.subscriptions
            .insert((c, s.filter.as_str()), encode_subscription(s).as_slice())
            .map_err(write_error)?;
        Ok(())
    }

    pub(crate) fn delete_subscription(&mut self, c: &str, filter: &str) -> Result<(), StoreError> {
        self.subscriptions
            .remove((c, filter))
            .map_err(write_error)?;
        Ok(())
    }

    pub(crate) fn put_entry(&mut self, c: &str, e: &StoredEntry) -> Result<(), StoreError> {
        self.entries
            .insert((c, e.seq), encode_entry(e).as_slice())
            .map_err(write_error)?;
        Ok(())
    }

    /// Nothing if the entry is gone.
    pub(crate) fn set_entry_state(
        &mut self,
        c: &str,
        seq: u64,
        state: EntryState,
    ) -> Result<(), StoreError> {
        let current = self
            .entries
            .get((c, seq))
            .map_err(write_error)?
            .map(|v| decode_entry(v.value()));
        if let Some(Ok(mut entry)) = current {
            entry.state = state;
            self.put_entry(c, &entry)?;
        }
        Ok(())
    }

    pub(crate) fn delete_entry(&mut self, c: &str, seq: u64) -> Result<(), StoreError> {
        self.entries.remove((c, seq)).map_err(write_error)?;
        Ok(())
    }

    pub(crate) fn put_incoming(&mut self, c: &str, pid: u16) -> Result<(), StoreError> {
        self.incoming.insert((c, pid), ()).map_err(write_error)?;
        Ok(())
    }

    pub(crate) fn delete_incoming(&mut self, c: &str, pid: u16) -> Result<(), StoreError> {
        self.incoming.remove((c, pid)).map_err(write_error)?;
        Ok(())
    }
}

/// Everything the tables hold (the log must have been checkpointed into them).
pub(crate) fn read(tx: &ReadTransaction) -> Result<StoredState, StoreError> {
    let mut state = StoredState::default();
    let meta = tx.open_table(META).map_err(|e| failed("meta", e))?;
    state.last_alive = meta
        .get("last_alive")
        .map_err(|e| failed("meta", e))?
        .map(|v| UNIX_EPOCH + Duration::from_millis(v.value()));
    state.peers_routed = meta
        .get("peers_routed")
        .map_err(|e| failed("meta", e))?
        .map(|v| v.value());
    let retained = tx.open_table(RETAINED).map_err(|e| failed("retained", e))?;
    for row in retained.iter().map_err(|e| failed("retained", e))? {
        let (k, v) = row.map_err(|e| failed("retained", e))?;
        let m = decode_message(v.value())
            .map_err(|e| corrupt(&format!("retained {:?}", k.value()), e))?;
        state.retained.push(m);
    }
    let messages = tx.open_table(MESSAGES).map_err(|e| failed("messages", e))?;
    for row in messages.iter().map_err(|e| failed("messages", e))? {
        let (k, v) = row.map_err(|e| failed("messages", e))?;
        let m =
            decode_message(v.value()).map_err(|e| corrupt(&format!("message {}", k.value()), e))?;
        state.messages.insert(k.value(), m);
    }
    // Every session table is keyed by the client id first and read in key order: the rows of
    // one session follow each other, in the sessions' order, so each table is merged into the
    // sessions with a cursor that only moves forward (no map: with a million sessions, its
    // growth alone was a quarter of a restart).
    let heads = tx.open_table(SESSIONS).map_err(|e| failed("sessions", e))?;
    let mut sessions = Vec::with_capacity(heads.len().unwrap_or(0) as usize);
    for row in heads.iter().map_err(|e| failed("sessions", e))? {
        let (k, v) = row.map_err(|e| failed("sessions", e))?;
        let mut head =
            decode_head(v.value()).map_err(|e| corrupt(&format!("session {:?}", k.value()), e))?;
        // The key is what the other tables name the session by.
        if head.client_id != k.value() {
            head.client_id = k.value().to_string();
        }
        sessions.push(StoredSession {
            head,
            subscriptions: Vec::new(),
            entries: Vec::new(),
            incoming_qos2: Vec::new(),
        });
    }
    let mut at = 0;
    let subs = tx
        .open_table(SUBSCRIPTIONS)
        .map_err(|e| failed("subscriptions", e))?;
    for row in subs.iter().map_err(|e| failed("subscriptions", e))? {
        let (k, v) = row.map_err(|e| failed("subscriptions", e))?;
        let (client, filter) = k.value();
        let s = decode_subscription(v.value())
            .map_err(|e| corrupt(&format!("subscription {filter:?} of {client:?}"), e))?;
        if let Some(session) = session_of(&mut sessions, &mut at, client) {
            session.subscriptions.push(s);
        }
    }
    at = 0;
    // Entries come in key order: by client, then by sequence number.
    let entries = tx.open_table(ENTRIES).map_err(|e| failed("entries", e))?;
    for row in entries.iter().map_err(|e| failed("entries", e))? {
        let (k, v) = row.map_err(|e| failed("entries", e))?;
        let (client, seq) = k.value();
        let e = decode_entry(v.value())
            .map_err(|e| corrupt(&format!("entry {seq} of {client:?}"), e))?;
        if let Some(session) = session_of(&mut sessions, &mut at, client) {
            session.entries.push(e);
        }
    }
    at = 0;
    let incoming = tx.open_table(INCOMING).map_err(|e| failed("incoming", e))?;
    for row in incoming.iter().map_err(|e| failed("incoming", e))? {
        let (k, _) = row.map_err(|e| failed("incoming", e))?;
        let (client, pid) = k.value();
        if let Some(session) = session_of(&mut sessions, &mut at, client) {
            session.incoming_qos2.push(pid);
        }
    }
    state.sessions = sessions;
    Ok(state)
}

/// The session `client` of `sessions` (in client id order), looked for from `at` on, where
/// the row before it was; `None` for a row whose session is gone (skipped, as before).
fn session_of<'s>(
    sessions: &'s mut [StoredSession],
    at: &mut usize,
    client: &str,
) -> Option<&'s mut StoredSession> {
    while *at < sessions.len() && sessions[*at].head.client_id.as_str() < client {
        *at += 1;
    }
    sessions.get_mut(*at).filter(|s| s.head.client_id == client)
}

//! Acknowledgements that are promises: a PUBACK or PUBREC says the message is durable, a
//! PUBCOMP that its packet identifier is free again (durably, or a crash could make the broker
//! drop the client's next message under it as a duplicate), a PUBREL that the broker will not
//! send that PUBLISH again (the client forgets the identifier on it). Each waits for the
//! journal batch that holds what it promises, and they leave in the order their packets
//! arrived (MQTT 4.6), while the connection goes on reading.
//!
//! The queue exists only while something waits, so an idle connection pays one pointer.

use std::collections::VecDeque;

use super::Connection;
use super::client::Client;
use crate::codec::{Packet, Properties, ReasonCode};
use crate::journal::Record;
use crate::store::StoreError;

/// Acknowledgements waiting for their journal tickets, in arrival order.
#[derive(Default)]
pub(crate) struct DeferredAcks {
    queue: VecDeque<(u64, Packet)>,
    /// The highest ticket the session's wake-up is registered for.
    registered: u64,
}

impl Connection {
    /// Sends `packet` (PUBACK, PUBREC, PUBREL or PUBCOMP) once the journal batch `durable_at` is done,
    /// and after every acknowledgement queued before it.
    pub(crate) fn acknowledge(&mut self, c: &Client, packet: Packet, durable_at: Option<u64>) {
        let journal = self.broker.journal();
        let ready = durable_at.is_none_or(|t| journal.is_some_and(|j| j.done() >= t));
        if self.acks.is_none() && ready {
            let packet = match (journal, durable_at) {
                (Some(j), Some(t)) => self.outcome(c, packet, j.outcome(t)),
                _ => packet,
            };
            self.send(c, packet);
            return;
        }
        let ticket = durable_at.unwrap_or(0);
        let acks = self.acks.get_or_insert_default();
        if ticket > acks.registered
            && let Some(j) = journal
        {
            acks.registered = ticket;
            j.wake_after(ticket, &c.session);
        }
        acks.queue.push_back((ticket, packet));
    }

    /// Sends the acknowledgements whose batches are done, in order.
    pub(crate) fn release_acks(&mut self, c: &Client) {
        let broker = self.broker.clone();
        let Some(journal) = broker.journal() else {
            return;
        };
        let done = journal.done();
        while let Some(acks) = self.acks.as_mut() {
            let Some((ticket, _)) = acks.queue.front() else {
                self.acks = None;
                break;
            };
            if *ticket > done {
                break;
            }
            let Some((ticket, packet)) = acks.queue.pop_front() else {
                break;
            };
            let outcome = if ticket == 0 {
                Ok(())
            } else {
                journal.outcome(ticket)
            };
            let packet = self.outcome(c, packet, outcome);
            self.send(c, packet);
        }
    }

    /// The acknowledgement as the batch's outcome makes it: a failed commit turns PUBACK and
    /// PUBREC into 0x97 (disk full) or 0x80 with a Reason String. A PUBCOMP has no failure code;
    /// its release is journaled again instead.
    fn outcome(&self, c: &Client, mut packet: Packet, outcome: Result<(), StoreError>) -> Packet {
        let Err(e) = outcome else {
            return packet;
        };
        self.broker
            .stats
            .store_refusals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (code, why) = match &e {
            StoreError::Full(_) => (
                ReasonCode::QUOTA_EXCEEDED,
                "the broker's storage is full; the message was not stored",
            ),
            StoreError::Failed(_) => (
                ReasonCode::UNSPECIFIED_ERROR,
                "the broker could not store the message",
            ),
        };
        let is_pubrec = matches!(packet, Packet::PubRec(_));
        match &mut packet {
            Packet::PubAck(r) | Packet::PubRec(r) if r.reason_code.0 < 0x80 => {
                r.reason_code = code;
                r.properties = Properties {
                    reason_string: Some(why.into()),
                    ..Default::default()
                };
                if is_pubrec {
                    // Refused: the client may use the identifier again for a new message.
                    let pid = r.packet_id;
                    c.session.state.lock().incoming_qos2.remove(&pid);
                    if let Some(j) = self.broker.journal() {
                        j.append(Record::IncomingRemove(c.session.client_id.clone(), pid));
                    }
                }
            }
            Packet::PubComp(r) => {
                if let Some(j) = self.broker.journal() {
                    j.append(Record::IncomingRemove(
                        c.session.client_id.clone(),
                        r.packet_id,
                    ));
                }
            }
            _ => {}
        }
        packet
    }
}

//! Acknowledgements that are promises: a PUBACK or PUBREC says the message is durable, a
//! PUBCOMP that its packet identifier is free again (durably, or a crash could make the broker
//! drop the client's next message under it as a duplicate), a PUBREL that the broker will not
//! send that PUBLISH again (the client forgets the identifier on it). Each waits for the
//! journal batch that holds what it promises, and they leave in the order their packets
//! arrived (MQTT 4.6), while the connection goes on reading.
//!
//! The queue exists only while something waits, so an idle connection pays one pointer, and
//! holds a few bytes per acknowledgement (the packet is built when it leaves).

use std::collections::VecDeque;

use super::Connection;
use super::client::Client;
use crate::codec::{Packet, Properties, PubResp, ReasonCode};
use crate::journal::Record;
use crate::store::StoreError;

/// Which acknowledgement, named as the packets are.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

/// An acknowledgement to send: the packet, as small as it can be kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ack {
    pub kind: AckKind,
    pub packet_id: u16,
    pub code: ReasonCode,
}

impl Ack {
    pub(crate) fn new(kind: AckKind, packet_id: u16, code: ReasonCode) -> Ack {
        Ack {
            kind,
            packet_id,
            code,
        }
    }

    fn packet(self, reason_string: Option<&'static str>) -> Packet {
        let r = PubResp {
            packet_id: self.packet_id,
            reason_code: self.code,
            properties: Properties {
                reason_string: reason_string.map(Into::into),
                ..Default::default()
            },
        };
        match self.kind {
            AckKind::PubAck => Packet::PubAck(r),
            AckKind::PubRec => Packet::PubRec(r),
            AckKind::PubRel => Packet::PubRel(r),
            AckKind::PubComp => Packet::PubComp(r),
        }
    }
}

/// Acknowledgements waiting for their journal tickets, in arrival order.
#[derive(Default)]
pub(crate) struct DeferredAcks {
    queue: VecDeque<(u64, Ack)>,
    /// The highest ticket the session's wake-up is registered for.
    registered: u64,
}

impl Connection {
    /// Sends `ack` once the journal batch `durable_at` is done, and after every acknowledgement
    /// queued before it.
    pub(crate) fn acknowledge(&mut self, c: &Client, ack: Ack, durable_at: Option<u64>) {
        let broker = self.broker.clone();
        let journal = broker.journal();
        let ready = durable_at.is_none_or(|t| journal.is_some_and(|j| j.done() >= t));
        if self.acks.is_none() && ready {
            let outcome = match (journal, durable_at) {
                (Some(j), Some(t)) => j.outcome(t),
                _ => Ok(()),
            };
            let packet = self.outcome(c, ack, outcome);
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
        acks.queue.push_back((ticket, ack));
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
            let Some((ticket, ack)) = acks.queue.pop_front() else {
                break;
            };
            let outcome = if ticket == 0 {
                Ok(())
            } else {
                journal.outcome(ticket)
            };
            let packet = self.outcome(c, ack, outcome);
            self.send(c, packet);
        }
    }

    /// The packet as the batch's outcome makes it: a failed commit turns PUBACK and PUBREC
    /// into 0x97 (disk full) or 0x80 with a Reason String. PUBREL and PUBCOMP have no failure
    /// code; a PUBCOMP's release is journaled again instead.
    fn outcome(&self, c: &Client, mut ack: Ack, outcome: Result<(), StoreError>) -> Packet {
        let Err(e) = outcome else {
            return ack.packet(None);
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
        match ack.kind {
            AckKind::PubAck | AckKind::PubRec if !ack.code.is_error() => {
                if ack.kind == AckKind::PubRec {
                    // Refused: the client may use the identifier again for a new message.
                    c.session.state.lock().incoming_qos2.remove(&ack.packet_id);
                    if let Some(j) = self.broker.journal() {
                        j.append(Record::IncomingRemove(
                            c.session.client_id.clone(),
                            ack.packet_id,
                        ));
                    }
                }
                ack.code = code;
                return ack.packet(Some(why));
            }
            AckKind::PubComp => {
                if let Some(j) = self.broker.journal() {
                    j.append(Record::IncomingRemove(
                        c.session.client_id.clone(),
                        ack.packet_id,
                    ));
                }
            }
            _ => {}
        }
        ack.packet(None)
    }
}

//! Acknowledgements that are promises: a PUBACK or PUBREC says the message is durable, a
//! PUBCOMP that its packet identifier is free again (durably, or a crash could make the broker
//! drop the client's next message under it as a duplicate), a PUBREL that the broker will not
//! send that PUBLISH again (the client forgets the identifier on it). Each waits for the
//! journal batch that holds what it promises, and they leave in the order their packets
//! arrived (MQTT 4.6), while the connection goes on reading. In a cluster a PUBACK / PUBREC
//! also waits for the cluster's ticket (the message stored for the other nodes), and a SUBACK
//! for the cluster's ticket alone (the other nodes route the subscription's messages here):
//! both kinds of ticket are `tickets.rs`'s.
//!
//! The queue exists only while something waits, so an idle connection pays one pointer, and
//! holds a few bytes per acknowledgement (the packet is built when it leaves).

use std::collections::VecDeque;

use super::client::Client;
use super::{Connection, Ending};
use crate::cluster::Qos2Step;
use crate::codec::{Packet, Properties, PubResp, ReasonCode, SubAck};
use crate::journal::Record;
use crate::message::Delivery;
use crate::store::StoreError;
use crate::tickets::Wait;

/// Which acknowledgement, named as the packets are.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    /// In a cluster, SUBACK waits until the other nodes send this node the subscriptions'
    /// messages (its reason codes wait in `DeferredAcks::subacks`).
    SubAck,
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
            AckKind::SubAck => unreachable!("built by `Connection::suback`"),
        }
    }
}

/// Why what an acknowledgement promises did not happen.
enum Unstored {
    Store(StoreError),
    /// The other nodes of the cluster could not be given the message durably.
    Cluster,
}

/// Acknowledgements waiting for their tickets, in arrival order.
#[derive(Default)]
pub(crate) struct DeferredAcks {
    queue: VecDeque<(Wait, Ack)>,
    /// The reason codes of the SUBACKs in `queue`, in order, and the retained messages that
    /// follow each.
    subacks: VecDeque<(Vec<ReasonCode>, Vec<Delivery>)>,
    /// The highest tickets the session's wake-ups are registered for.
    registered: Wait,
}

impl Connection {
    /// Sends the SUBACK of `packet_id` once the cluster has settled `cluster_ticket` (the
    /// other nodes route the new subscriptions' messages here; 0: nothing to wait for), after
    /// every acknowledgement queued before it; the `retained` messages follow it.
    pub(crate) fn acknowledge_subscribe(
        &mut self,
        c: &Client,
        packet_id: u16,
        codes: Vec<ReasonCode>,
        retained: Vec<Delivery>,
        cluster_ticket: u64,
    ) {
        let ack = Ack::new(AckKind::SubAck, packet_id, ReasonCode::SUCCESS);
        if cluster_ticket == 0 && self.acks.is_none() {
            self.suback(c, ack, codes, retained);
            return;
        }
        let acks = self.acks.get_or_insert_default();
        acks.subacks.push_back((codes, retained));
        // A SUBACK is queued whatever is before it: nothing to refuse here.
        let wait = Wait {
            journal: 0,
            cluster: cluster_ticket,
        };
        self.defer(c, wait, ack);
    }

    /// Sends a SUBACK and queues the retained messages behind it, through the session queue
    /// so flow control and packet identifiers apply (they are not bounded by the live-message
    /// queue). Its subscriptions stand whatever the cluster answered (they are this node's).
    fn suback(
        &mut self,
        c: &Client,
        ack: Ack,
        reason_codes: Vec<ReasonCode>,
        retained: Vec<Delivery>,
    ) {
        self.send(
            c,
            Packet::SubAck(SubAck {
                packet_id: ack.packet_id,
                properties: Properties::default(),
                reason_codes,
            }),
        );
        if !retained.is_empty() {
            let mut st = c.session.state.lock();
            for d in retained {
                st.push_pending(d);
            }
        }
    }

    /// Sends `ack` once the tickets of `wait` are done, and after every acknowledgement
    /// queued before it. `Err` when what it promises failed for a client before 5.0, which
    /// has no reason code to say so: the connection ends instead (its client sends the
    /// message again).
    pub(crate) fn acknowledge(&mut self, c: &Client, ack: Ack, wait: Wait) -> Result<(), Ending> {
        if self.acks.is_none() && self.broker.is_done(wait) {
            let packet = self.outcome(c, ack, self.settled(wait))?;
            self.send(c, packet);
            return Ok(());
        }
        self.defer(c, wait, ack);
        Ok(())
    }

    /// Queues `ack` behind the others, waking the session when its tickets are done.
    fn defer(&mut self, c: &Client, wait: Wait, ack: Ack) {
        let acks = self.acks.get_or_insert_default();
        // Only the tickets past those already registered (0: nothing to register).
        let beyond = |t: u64, registered: u64| if t > registered { t } else { 0 };
        let new = Wait {
            journal: beyond(wait.journal, acks.registered.journal),
            cluster: beyond(wait.cluster, acks.registered.cluster),
        };
        if new != Wait::default() {
            self.broker.wake_after(new, &c.session.waker());
            acks.registered = acks.registered.and(wait);
        }
        acks.queue.push_back((wait, ack));
    }

    /// How the tickets of a done wait ended.
    fn settled(&self, w: Wait) -> Result<(), Unstored> {
        if w.journal != 0
            && let Some(j) = self.broker.journal()
        {
            j.outcome(w.journal).map_err(Unstored::Store)?;
        }
        if w.cluster != 0 && !self.broker.cluster.kept(w.cluster) {
            return Err(Unstored::Cluster);
        }
        Ok(())
    }

    /// Sends the acknowledgements whose tickets are done, in order.
    pub(crate) fn release_acks(&mut self, c: &Client) -> Result<(), Ending> {
        while let Some(acks) = self.acks.as_ref() {
            let Some(&(wait, _)) = acks.queue.front() else {
                self.acks = None;
                break;
            };
            if !self.broker.is_done(wait) {
                break;
            }
            let Some((wait, ack)) = self.acks.as_mut().and_then(|a| a.queue.pop_front()) else {
                break;
            };
            if ack.kind == AckKind::SubAck {
                let (codes, retained) = self
                    .acks
                    .as_mut()
                    .and_then(|a| a.subacks.pop_front())
                    .unwrap_or_default();
                self.suback(c, ack, codes, retained);
                continue;
            }
            let packet = self.outcome(c, ack, self.settled(wait))?;
            self.send(c, packet);
        }
        Ok(())
    }

    /// The packet as the batch's outcome makes it: a failed commit turns PUBACK and PUBREC
    /// into 0x97 (disk full) or 0x80 with a Reason String. PUBREL and PUBCOMP have no failure
    /// code; a PUBCOMP's release is journaled again instead.
    fn outcome(
        &self,
        c: &Client,
        mut ack: Ack,
        outcome: Result<(), Unstored>,
    ) -> Result<Packet, Ending> {
        let Err(e) = outcome else {
            return Ok(ack.packet(None));
        };
        self.broker
            .stats
            .store_refusals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (code, why) = match &e {
            Unstored::Store(StoreError::Full(_)) => (
                ReasonCode::QUOTA_EXCEEDED,
                "the broker's storage is full; the message was not stored",
            ),
            Unstored::Store(StoreError::Failed(_)) => (
                ReasonCode::UNSPECIFIED_ERROR,
                "the broker could not store the message",
            ),
            Unstored::Cluster => (
                ReasonCode::UNSPECIFIED_ERROR,
                "the message could not be stored for the other nodes of the cluster",
            ),
        };
        match ack.kind {
            AckKind::PubAck | AckKind::PubRec if !ack.code.is_error() => {
                if ack.kind == AckKind::PubRec {
                    // Refused: the client may use the identifier again for a new message.
                    let mut st = c.session.state.lock();
                    st.incoming_qos2.remove(&ack.packet_id);
                    let step = Qos2Step::ClientReleased;
                    self.broker
                        .report_qos2(&c.session, &st, ack.packet_id, step, false);
                    drop(st);
                    if let Some(j) = self.broker.journal() {
                        j.append(Record::IncomingRemove(
                            c.session.client_id.clone(),
                            ack.packet_id,
                        ));
                    }
                }
                if !self.wire.version.is_v5() {
                    // A 3.1.1 PUBACK cannot refuse: it would say stored. The client sends
                    // the message again on its next connection.
                    return Err(Ending::server(code, why));
                }
                ack.code = code;
                return Ok(ack.packet(Some(why)));
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
        Ok(ack.packet(None))
    }
}

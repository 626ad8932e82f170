//! Moving messages from a session to its client: filling the write buffer from the session's
//! queue within the client's Receive Maximum and Maximum Packet Size, encoding each PUBLISH for
//! this client (topic alias, remaining expiry, subscription identifiers), and sending the
//! broker's own packets without the reason strings a client asked not to get.

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tracing::debug;

use super::client::Client;
use super::{Connection, Ending};
use crate::cluster::Qos2Step;
use crate::codec::{self, Packet, Properties, PublishHead, QoS, ReasonCode, Version};
use crate::journal::Record;
use crate::message::Delivery;
use crate::session::{Inflight, Session};
use crate::stats::{Dropped, SentTally};
use crate::store::EntryState;
use crate::tickets::Wait;

impl Connection {
    /// Moves messages from the session into the write buffer, within the client's Receive
    /// Maximum and Maximum Packet Size. Fails if the session was taken away.
    ///
    /// With durability on, a journaled message's packet identifier is journaled when it is
    /// given; in a cluster, a QoS 2 message's identifier to a persistent session is recorded
    /// where the other nodes read it (`Qos2Step::Sent`). A QoS 2 message is written only once
    /// both are durable (`SessionState::unsent`): after a crash it is resent under the same
    /// identifier, here or by the node that takes the session over, so the client can tell
    /// it is a duplicate. Order is kept among QoS 2 messages; other QoS levels are not held
    /// back (MQTT 4.6 orders messages of one QoS).
    pub(crate) fn fill(&mut self, c: &mut Client) -> Result<(), Ending> {
        let session = c.session.clone();
        let mut st = session.state.lock();
        if !st.attachment().is_attached(self.endpoint.id) {
            return Err(Ending::server(
                ReasonCode::SESSION_TAKEN_OVER,
                "session taken over",
            ));
        }
        let now = std::time::Instant::now();
        let broker = self.broker.clone();
        let journal = broker.journal();
        let mut sent = SentTally::new(&broker.stats);
        // A subscription granted with a rule refusing part of what it matches (`acl.rs` of
        // the token service): each message is judged by its topic before it leaves.
        let judged = c.rights.acl.judges_deliveries();
        if c.resend {
            c.resend = false;
            let ids: Vec<u16> = st.inflight().keys().copied().collect();
            for pid in ids {
                if st.unsent.iter().any(|(p, _)| *p == pid) {
                    // Never written; it goes out in order below, once durable.
                    continue;
                }
                match st.inflight().get(&pid) {
                    Some(Inflight::Published(d)) => {
                        let d = d.clone();
                        self.write_publish(c, &d, Some(pid), true, now, &mut sent);
                    }
                    Some(Inflight::Released(_)) => {
                        self.wire.packet(&Packet::PubRel(codec::PubResp {
                            packet_id: pid,
                            ..Default::default()
                        }))
                    }
                    None => {}
                }
            }
        }
        while let Some(&(pid, wait)) = st.unsent.front() {
            if !broker.is_done(wait) || self.wire.out.len() >= self.high_water {
                break;
            }
            st.unsent.pop_front();
            let Some(Inflight::Published(d)) = st.inflight().get(&pid) else {
                continue;
            };
            let d = d.clone();
            if !self.write_publish(c, &d, Some(pid), false, now, &mut sent) {
                st.remove_inflight(pid);
                self.discard(&session, &d, Dropped::TooLarge);
                broker.report_qos2(&session, &st, pid, Qos2Step::Completed, false);
            }
        }
        while self.wire.out.len() < self.high_water {
            let Some(front) = st.pending().front() else {
                break;
            };
            if front.qos != QoS::AtMostOnce && st.inflight_count() >= c.receive_maximum {
                break;
            }
            let Some(d) = st.pop_pending_front() else {
                break;
            };
            if d.message.is_expired(now) {
                self.discard(&session, &d, Dropped::Expired);
                continue;
            }
            if judged && !c.rights.acl.can_receive(&d.message.topic) {
                self.discard(&session, &d, Dropped::DeniedDelivery);
                continue;
            }
            let pid = if d.qos == QoS::AtMostOnce {
                None
            } else {
                st.allocate_packet_id()
            };
            let mut wait = Wait::default();
            if let (Some(j), Some(seq), Some(pid)) = (journal, d.stored.map(|s| s.seq), pid) {
                wait.journal = j.append(Record::Entry {
                    client: session.client_id.clone(),
                    seq,
                    state: EntryState::Sent(pid),
                });
            }
            if let (QoS::ExactlyOnce, Some(pid), Some(&id)) =
                (d.qos, pid, d.message.cluster_id.get())
            {
                let published_ms = d.message.published_ms.load(Ordering::Relaxed);
                let step = Qos2Step::Sent { id, published_ms };
                wait.cluster = broker.report_qos2(&session, &st, pid, step, true);
            }
            if let (QoS::ExactlyOnce, Some(pid)) = (d.qos, pid)
                && (!broker.is_done(wait) || !st.unsent.is_empty())
            {
                if st.unsent.back().is_none_or(|(_, w)| *w != wait) {
                    broker.wake_after(wait, &session.waker());
                }
                st.unsent.push_back((pid, wait));
                st.insert_inflight(pid, Inflight::Published(d));
                continue;
            }
            if self.write_publish(c, &d, pid, false, now, &mut sent) {
                if let Some(pid) = pid {
                    st.insert_inflight(pid, Inflight::Published(d));
                }
            } else {
                // Larger than the client accepts: discarded as if delivered (MQTT-3.1.2-25).
                self.discard(&session, &d, Dropped::TooLarge);
                if let (QoS::ExactlyOnce, Some(pid)) = (d.qos, pid) {
                    broker.report_qos2(&session, &st, pid, Qos2Step::Completed, false);
                }
            }
        }
        // Whatever is left waits for the client (a full buffer or its Receive Maximum).
        st.stalled_by_client = !st.pending().is_empty();
        Ok(())
    }

    /// Drops a delivery that will not reach the client (expired, or too large for it),
    /// counted, and gone from the store too.
    fn discard(&self, session: &Session, d: &Delivery, why: Dropped) {
        self.broker.stats.drop_one(why);
        if let (Some(j), Some(r)) = (self.broker.journal(), d.stored_ref()) {
            j.append(Record::Remove {
                client: session.client_id.clone(),
                seq: r.seq,
                message: r.message,
            });
        }
    }

    /// Encodes one PUBLISH for this client; false if it exceeds the client's maximum size.
    fn write_publish(
        &mut self,
        c: &mut Client,
        d: &Delivery,
        packet_id: Option<u16>,
        dup: bool,
        now: std::time::Instant,
        sent: &mut SentTally<'_>,
    ) -> bool {
        let m = &d.message;
        let v5 = self.wire.version.is_v5();
        let mut topic: &[u8] = m.topic.as_bytes();
        let mut alias = None;
        if v5 && c.topic_alias_max_out > 0 {
            let out = &mut c.aliases.get_or_insert_default().outbound;
            if let Some(&existing) = out.get(&m.topic) {
                alias = Some(existing);
                topic = b"";
            } else if out.len() < c.topic_alias_max_out as usize {
                let next = out.len() as u16 + 1;
                out.insert(m.topic.clone(), next);
                alias = Some(next);
            }
        }
        let head = PublishHead {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic,
            packet_id,
            message_properties: m.wire_properties(),
            message_expiry: m.remaining_expiry(now),
            topic_alias: alias,
            subscription_ids: &d.subscription_ids,
            payload_len: m.payload.len(),
        };
        let (_, total) = codec::publish_head_len(&head, self.wire.version);
        if total > c.max_packet_out {
            if alias.is_some() && !topic.is_empty() {
                // The alias was not announced after all.
                if let Some(aliases) = c.aliases.as_mut() {
                    aliases.outbound.remove(&m.topic);
                }
            }
            return false;
        }
        self.wire.out.publish(&head, self.wire.version, &m.payload);
        sent.add(d.qos, m.payload.len());
        true
    }

    /// Queues a non-PUBLISH packet, dropping the Reason String and User Properties where the
    /// client asked for no problem information or where they would exceed its maximum size.
    pub(crate) fn send(&mut self, c: &Client, mut packet: Packet) {
        let exempt = matches!(
            packet,
            Packet::Publish(_) | Packet::ConnAck(_) | Packet::Disconnect(_)
        );
        if !c.problem_info
            && !exempt
            && let Some(props) = properties_mut(&mut packet)
        {
            props.reason_string = None;
            props.user_properties.clear();
        }
        if !fit(&mut packet, self.wire.version, c.max_packet_out) {
            // MQTT-3.1.2-25: a packet too large for the client is not sent.
            debug!(
                conn = self.endpoint.id,
                "packet exceeds the client's maximum packet size; not sent"
            );
            return;
        }
        self.wire.packet(&packet);
    }
}

/// Makes `packet` fit the client's Maximum Packet Size (MQTT-3.1.2-24): if it is larger, its
/// Reason String and User Properties go first (MQTT-3.2.2-19/20 and the same rule for every
/// acknowledgement); false if it is still too large.
pub(super) fn fit(packet: &mut Packet, version: Version, max: usize) -> bool {
    let encoded_len = |p: &Packet| {
        let mut scratch = BytesMut::new();
        codec::encode(p, version, &mut scratch);
        scratch.len()
    };
    let trimmable = properties_mut(packet)
        .is_some_and(|p| p.reason_string.is_some() || !p.user_properties.is_empty());
    // The hot path: a bare acknowledgement is at most 5 bytes, less than any sensible limit,
    // so it is not encoded twice to be measured.
    let bare_ack = matches!(
        packet,
        Packet::PubAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
            | Packet::PingResp
    );
    if max == usize::MAX || (bare_ack && !trimmable) || encoded_len(packet) <= max {
        return true;
    }
    let Some(props) = properties_mut(packet).filter(|_| trimmable) else {
        return false;
    };
    props.reason_string = None;
    props.user_properties.clear();
    encoded_len(packet) <= max
}

fn properties_mut(p: &mut Packet) -> Option<&mut Properties> {
    match p {
        Packet::ConnAck(x) => Some(&mut x.properties),
        Packet::PubAck(x) | Packet::PubRec(x) | Packet::PubRel(x) | Packet::PubComp(x) => {
            Some(&mut x.properties)
        }
        Packet::SubAck(x) => Some(&mut x.properties),
        Packet::UnsubAck(x) => Some(&mut x.properties),
        Packet::Disconnect(x) => Some(&mut x.properties),
        Packet::Auth(x) => Some(&mut x.properties),
        _ => None,
    }
}

//! The connected phase, one packet at a time: PUBLISH and its acknowledgements in both
//! directions, SUBSCRIBE / UNSUBSCRIBE, PINGREQ, DISCONNECT, and AUTH re-authentication.
//!
//! Each handler queues its answer and returns `Ok`, or returns how the connection ends: a
//! [`Violation`] carries the reason code the specification names.

use std::sync::Arc;

use tracing::{debug, info};

use super::acks::{Ack, AckKind};
use super::client::Client;
use super::exchange::{self, Next, Refused};
use super::violation::Violation;
use super::{Connection, Ending};
use crate::auth::ReauthRequest;
use crate::broker::Broker;
use crate::cluster::Qos2Step;
use crate::codec::topic::{has_wildcard, parse_shared, valid_topic_filter};
use crate::codec::{
    Auth, Packet, Properties, Publish, QoS, ReasonCode, RetainHandling, Subscribe, UnsubAck,
    Unsubscribe,
};
use crate::journal::Record;
use crate::limits;
use crate::message::{Delivery, Message, StoredRef};
use crate::session::{Inflight, Session};
use crate::stats::Dropped;
use crate::store::EntryState;
use crate::tickets::Wait;

/// What handling a packet asks of the connection next.
pub(crate) enum Handled {
    /// Go on with the next packet.
    Done,
    /// An AUTH packet: the (asynchronous) authenticator must see it before the next packet.
    Auth(Box<Auth>),
}

impl Connection {
    /// Handles one packet. Synchronous, so no decoded packet is ever part of the connection
    /// future's state; AUTH, which waits on the authenticator, is handed back instead.
    pub(crate) fn handle(&mut self, c: &mut Client, packet: Packet) -> Result<Handled, Ending> {
        match packet {
            Packet::Publish(p) => self.on_publish(c, p)?,
            Packet::PubAck(r) => {
                let mut st = c.session.state.lock();
                if matches!(st.inflight().get(&r.packet_id), Some(Inflight::Published(d)) if d.qos == QoS::AtLeastOnce)
                    && let Some(Inflight::Published(d)) = st.remove_inflight(r.packet_id)
                {
                    self.forget(&c.session, d.stored_ref());
                }
            }
            Packet::PubRec(r) => {
                let reply = {
                    let mut st = c.session.state.lock();
                    match st.inflight().get(&r.packet_id) {
                        Some(Inflight::Published(d)) if d.qos == QoS::ExactlyOnce => {
                            let stored = d.stored_ref();
                            if r.reason_code.is_error() {
                                st.remove_inflight(r.packet_id);
                                self.forget(&c.session, stored);
                                let done = Qos2Step::Completed;
                                self.broker
                                    .report_qos2(&c.session, &st, r.packet_id, done, false);
                                None
                            } else {
                                st.insert_inflight(r.packet_id, Inflight::Released(stored));
                                // PUBREL lets the client forget the identifier: it leaves once
                                // the release is durable (here, and in a cluster where the
                                // other nodes read it), or a crash would make the broker send
                                // the PUBLISH again, now a duplicate to the client.
                                let mut durable = Wait::default();
                                if let (Some(j), Some(s)) = (self.broker.journal(), stored) {
                                    durable.journal = j.append(Record::Entry {
                                        client: c.session.client_id.clone(),
                                        seq: s.seq,
                                        state: EntryState::Released(r.packet_id),
                                    });
                                }
                                let step = Qos2Step::Released;
                                durable.cluster = self.broker.report_qos2(
                                    &c.session,
                                    &st,
                                    r.packet_id,
                                    step,
                                    true,
                                );
                                Some((ReasonCode::SUCCESS, durable))
                            }
                        }
                        Some(Inflight::Released(_)) => Some((ReasonCode::SUCCESS, Wait::default())),
                        _ => Some((ReasonCode::PACKET_IDENTIFIER_NOT_FOUND, Wait::default())),
                    }
                };
                if let Some((code, durable)) = reply {
                    self.acknowledge(c, Ack::new(AckKind::PubRel, r.packet_id, code), durable)?;
                }
            }
            Packet::PubRel(r) => {
                let (known, durable) = {
                    let mut st = c.session.state.lock();
                    let known = st.incoming_qos2.remove(&r.packet_id);
                    // The identifier is free for the client's next message once PUBCOMP is
                    // sent: a crash must not bring it back (here, or on the node that takes
                    // the session over).
                    let mut durable = Wait::default();
                    if let Some(j) = self.broker.journal()
                        && known
                        && st.persisted
                    {
                        durable.journal = j.append(Record::IncomingRemove(
                            c.session.client_id.clone(),
                            r.packet_id,
                        ));
                    }
                    if known {
                        let step = Qos2Step::ClientReleased;
                        durable.cluster =
                            self.broker
                                .report_qos2(&c.session, &st, r.packet_id, step, true);
                    }
                    (known, durable)
                };
                let code = if known {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.acknowledge(c, Ack::new(AckKind::PubComp, r.packet_id, code), durable)?;
            }
            Packet::PubComp(r) => {
                let mut st = c.session.state.lock();
                if matches!(st.inflight().get(&r.packet_id), Some(Inflight::Released(_)))
                    && let Some(Inflight::Released(stored)) = st.remove_inflight(r.packet_id)
                {
                    self.forget(&c.session, stored);
                    let done = Qos2Step::Completed;
                    self.broker
                        .report_qos2(&c.session, &st, r.packet_id, done, false);
                }
            }
            Packet::Subscribe(s) => self.on_subscribe(c, s)?,
            Packet::Unsubscribe(u) => self.on_unsubscribe(c, u),
            Packet::PingReq => self.send(c, Packet::PingResp),
            Packet::Disconnect(d) => {
                if let Some(secs) = d.properties.session_expiry_interval {
                    if c.expiry_zero_at_connect && secs != 0 {
                        return Err(Violation::ExpiryRaisedFromZero.into());
                    }
                    c.session.state.lock().expiry_interval =
                        secs.min(self.broker.config.max_session_expiry);
                }
                return Err(Ending::ClientDisconnect {
                    publish_will: d.reason_code != ReasonCode::SUCCESS,
                });
            }
            Packet::Auth(auth) => return Ok(Handled::Auth(Box::new(auth))),
            Packet::Connect(_) => return Err(Violation::SecondConnect.into()),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                return Err(Violation::ServerPacketFromClient.into());
            }
        }
        Ok(Handled::Done)
    }

    fn on_publish(&mut self, c: &mut Client, p: Publish) -> Result<(), Ending> {
        let cfg = &self.broker.config;
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(Violation::SubscriptionIdFromClient.into());
        }
        // A topic the broker does not accept (`limits.rs`) is refused like a denied one, and
        // never becomes an alias. A topic that came by alias was checked when it was set.
        let refused_topic = (!p.topic.is_empty())
            .then(|| limits::check_topic(p.topic.as_bytes(), cfg).err())
            .flatten();
        // Topic Alias (§3.3.2.3.4).
        let topic = match p.properties.topic_alias {
            Some(alias) if alias == 0 || alias > cfg.topic_alias_maximum => {
                return Err(Violation::TopicAliasOutOfRange.into());
            }
            Some(alias) if p.topic.is_empty() => {
                match c.aliases.as_ref().and_then(|al| al.inbound.get(&alias)) {
                    Some(t) => t.clone(),
                    None => return Err(Violation::UnknownTopicAlias.into()),
                }
            }
            Some(alias) => {
                if refused_topic.is_none() {
                    c.aliases
                        .get_or_insert_default()
                        .inbound
                        .insert(alias, p.topic.clone());
                }
                p.topic.clone()
            }
            None if p.topic.is_empty() => return Err(Violation::EmptyTopicWithoutAlias.into()),
            None => p.topic.clone(),
        };
        if p.qos.as_u8() > cfg.max_qos {
            return Err(Violation::QosNotSupported.into());
        }
        if p.retain && !cfg.retain_available {
            return Err(Violation::RetainNotSupported.into());
        }
        let pid = p.packet_id.unwrap_or(0);
        if p.qos == QoS::ExactlyOnce {
            let st = c.session.state.lock();
            if st.incoming_qos2.contains(&pid) {
                // A resend of a message already received: acknowledge, do not deliver twice.
                drop(st);
                self.acknowledge(
                    c,
                    Ack::new(AckKind::PubRec, pid, ReasonCode::SUCCESS),
                    Wait::default(),
                )?;
                return Ok(());
            }
            if st.incoming_qos2.len() >= cfg.receive_maximum as usize {
                return Err(Violation::ReceiveMaximumExceeded.into());
            }
        }
        let qos = p.qos;
        let mut durable = Wait::default();
        // A QoS 2 message of a persistent session and its packet identifier commit in one
        // batch: with either alone on disk, a crash would lose the message (the resend would
        // be taken for a duplicate) or deliver it twice.
        let broker = (qos == QoS::ExactlyOnce).then(|| self.broker.clone());
        let _together = broker
            .as_deref()
            .and_then(Broker::journal)
            .filter(|_| c.session.state.lock().persisted)
            .map(|j| j.pin());
        let code = if let Some(refusal) = refused_topic {
            debug!(client_id = %c.client_id(), why = refusal.describe(), "topic refused");
            ReasonCode::TOPIC_NAME_INVALID
        } else if p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            ReasonCode::PAYLOAD_FORMAT_INVALID
        } else if !c.rights.may_publish(&topic) {
            debug!(client_id = %c.client_id(), topic = %topic, "publish denied");
            ReasonCode::NOT_AUTHORIZED
        } else {
            let message = Arc::new(Message::from_publish(p, topic, c.session.id));
            let routed = if qos == QoS::AtMostOnce && !message.retain {
                // Held back to be routed with the client's next messages to the same topic.
                self.run.push(&self.broker, message)
            } else {
                self.broker.publish(message)
            };
            self.subscribers_behind |= routed.subscribers_behind;
            if qos == QoS::AtMostOnce {
                return Ok(());
            }
            durable = routed.durable;
            if routed.rejected || routed.retained_refused {
                ReasonCode::QUOTA_EXCEEDED
            } else if routed.matched == 0 && routed.durable.cluster == 0 {
                ReasonCode::NO_MATCHING_SUBSCRIBERS
            } else {
                ReasonCode::SUCCESS
            }
        };
        match qos {
            QoS::AtMostOnce => {
                // Refused above (topic, payload format or rights): dropped, and counted.
                self.broker.stats.drop_one(Dropped::Refused);
            }
            QoS::AtLeastOnce => {
                self.acknowledge(c, Ack::new(AckKind::PubAck, pid, code), durable)?;
            }
            QoS::ExactlyOnce => {
                if !code.is_error() {
                    let mut st = c.session.state.lock();
                    st.incoming_qos2.insert(pid);
                    // The identifier is durable with the message, or a crash could let the
                    // client's resend of it through as a second message.
                    if st.persisted
                        && let Some(j) = self.broker.journal()
                    {
                        let t = j.append(Record::IncomingAdd(c.session.client_id.clone(), pid));
                        durable.journal = durable.journal.max(t);
                    }
                    // And known to the node that takes the session over if this one dies.
                    let step = Qos2Step::ClientPublished;
                    let t = self.broker.report_qos2(&c.session, &st, pid, step, true);
                    durable.cluster = durable.cluster.max(t);
                }
                self.acknowledge(c, Ack::new(AckKind::PubRec, pid, code), durable)?;
            }
        }
        Ok(())
    }

    fn on_subscribe(&mut self, c: &mut Client, s: Subscribe) -> Result<(), Ending> {
        let cfg = self.broker.config.clone();
        let sub_id = s.properties.subscription_identifiers.first().copied();
        if sub_id.is_some() && !cfg.subscription_identifiers {
            return Err(Violation::SubscriptionIdsNotSupported.into());
        }
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for (filter, opts) in &s.filters {
            let shared = parse_shared(filter);
            let code = match shared {
                Err(_) => ReasonCode::TOPIC_FILTER_INVALID,
                Ok(_) if !valid_topic_filter(filter) => ReasonCode::TOPIC_FILTER_INVALID,
                // A shared subscription's limits are its inner filter's; its group name may
                // not hold control characters either.
                Ok(inner)
                    if limits::check_topic(
                        inner.map_or(filter.as_str(), |s| s.filter).as_bytes(),
                        &cfg,
                    )
                    .is_err()
                        || limits::refuses_name(filter, &cfg) =>
                {
                    ReasonCode::TOPIC_FILTER_INVALID
                }
                Ok(Some(_)) if !cfg.shared_subscriptions => {
                    ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
                }
                Ok(Some(_)) if opts.no_local => return Err(Violation::NoLocalOnShared.into()),
                Ok(inner)
                    if !cfg.wildcard_subscriptions
                        && has_wildcard(inner.map_or(filter.as_str(), |s| s.filter)) =>
                {
                    ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
                }
                Ok(_) if !c.rights.acl.can_subscribe(filter) => ReasonCode::NOT_AUTHORIZED,
                Ok(_)
                    if c.session
                        .at_subscription_limit(filter, cfg.max_subscriptions) =>
                {
                    ReasonCode::QUOTA_EXCEEDED
                }
                Ok(inner) => {
                    let mut opts = *opts;
                    opts.qos = opts
                        .qos
                        .min(QoS::from_u8(cfg.max_qos).unwrap_or(QoS::ExactlyOnce));
                    let existed = self.broker.subscribe(&c.session, filter, opts, sub_id);
                    let send_retained = inner.is_none()
                        && match opts.retain_handling {
                            RetainHandling::OnSubscribe => true,
                            RetainHandling::OnNewSubscription => !existed,
                            RetainHandling::Never => false,
                        };
                    if send_retained {
                        for m in self.broker.retained_matching(filter) {
                            retained.push(Delivery {
                                qos: m.qos.min(opts.qos),
                                message: m,
                                retain: true,
                                subscription_ids: sub_id.into_iter().collect(),
                                stored: None,
                            });
                        }
                    }
                    ReasonCode(opts.qos.as_u8())
                }
            };
            if code.is_error() {
                debug!(client_id = %c.client_id(), filter = %filter, reason = %code, "subscription refused");
            }
            codes.push(code);
        }
        let cluster_ticket = if codes.iter().any(|c| !c.is_error()) {
            self.broker.cluster.interest_ticket()
        } else {
            0
        };
        self.acknowledge_subscribe(c, s.packet_id, codes, retained, cluster_ticket);
        Ok(())
    }

    fn on_unsubscribe(&mut self, c: &mut Client, u: Unsubscribe) {
        let codes = u
            .filters
            .iter()
            .map(|f| {
                let cfg = &self.broker.config;
                if !valid_topic_filter(f) || limits::check_topic(f.as_bytes(), cfg).is_err() {
                    ReasonCode::TOPIC_FILTER_INVALID
                } else if self.broker.unsubscribe(&c.session, f) {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        self.send(
            c,
            Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                properties: Properties::default(),
                reason_codes: codes,
            }),
        );
    }

    /// AUTH after CONNACK: re-authentication (§4.12.1), started by the client's AUTH 0x19 and
    /// continued by AUTH 0x18 while the mechanism challenges.
    pub(crate) async fn on_auth(&mut self, c: &mut Client, auth: Auth) -> Result<(), Ending> {
        let Some(method) = c.auth_method.clone() else {
            return Err(Violation::AuthWithoutMethod.into());
        };
        method.check(&auth)?;
        let next = match (auth.reason_code, c.challenge.take()) {
            (ReasonCode::REAUTHENTICATE, None) => {
                let step = self
                    .broker
                    .auth
                    .reauthenticate(ReauthRequest {
                        client_id: c.client_id().to_string(),
                        identity: c.rights.identity.as_deref().map(str::to_string),
                        method: method.name().to_string(),
                        data: auth.properties.authentication_data,
                        peer: self.endpoint.peer,
                        transport: self.endpoint.transport,
                        listener: self.endpoint.listener,
                        certificate: self.endpoint.certificate.clone(),
                    })
                    .await;
                exchange::next(Some(&method), step)
            }
            (ReasonCode::CONTINUE_AUTHENTICATION, Some(challenge)) => challenge.answer(auth).await,
            _ => return Err(Violation::AuthOutOfSequence.into()),
        };
        match next {
            Ok(Next::Granted(grant)) => {
                info!(client_id = %c.client_id(), "client re-authenticated");
                self.broker.update_connection(
                    self.endpoint.id,
                    grant.identity.clone(),
                    grant.credential.clone(),
                );
                let mut done = method.auth_packet(ReasonCode::SUCCESS, grant.data.clone());
                if let Packet::Auth(a) = &mut done {
                    a.properties.user_properties = super::handshake::user_properties(&grant);
                }
                c.renew(grant);
                self.send(c, done);
                Ok(())
            }
            Ok(Next::Challenge(mut challenge)) => {
                self.send(c, challenge.packet());
                c.challenge = Some(Box::new(challenge));
                Ok(())
            }
            Err(Refused::Failure(f)) => Err(Ending::server(f.reason, f.reason_string)),
            Err(Refused::Violation(v)) => Err(v.into()),
        }
    }
}

impl Connection {
    /// A delivery the client acknowledged (or refused): its journaled entry goes.
    fn forget(&self, session: &Session, stored: Option<StoredRef>) {
        if let (Some(j), Some(r)) = (self.broker.journal(), stored) {
            j.append(Record::Remove {
                client: session.client_id.clone(),
                seq: r.seq,
                message: r.message,
            });
        }
    }
}

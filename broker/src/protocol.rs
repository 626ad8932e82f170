//! The connected phase, one packet at a time: PUBLISH and its acknowledgements in both
//! directions, SUBSCRIBE / UNSUBSCRIBE, PINGREQ, DISCONNECT, and AUTH re-authentication.
//!
//! Each handler either queues the answer and returns `None`, or returns how the connection
//! ends with the reason code the specification names.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{debug, info};

use crate::auth::{AuthStep, ReauthRequest};
use crate::codec::topic::{has_wildcard, parse_shared, valid_topic_filter};
use crate::codec::{
    Auth, Packet, Properties, PubResp, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    UnsubAck, Unsubscribe, Utf8Bytes,
};
use crate::connection::{Active, Connection, Ending, RUN_MAX, deadline_from};
use crate::handshake::client_may_publish;
use crate::message::{Delivery, Message};
use crate::session::Inflight;

impl Connection {
    /// Handles every packet but AUTH, which may wait on the authenticator and goes to
    /// [`Connection::on_auth`] instead: keeping this function synchronous keeps the state of
    /// an idle connection's future small.
    pub(crate) fn handle(&mut self, a: &mut Active, packet: Packet) -> Option<Ending> {
        if !matches!(packet, Packet::Publish(_)) {
            // What the client published before this packet is routed before it takes effect.
            self.route_qos0_run();
        }
        match packet {
            Packet::Publish(p) => self.on_publish(a, p),
            Packet::PubAck(r) => {
                let mut st = a.session.state.lock();
                if matches!(st.inflight.get(&r.packet_id), Some(Inflight::Published(d)) if d.qos == QoS::AtLeastOnce)
                {
                    st.inflight.remove(&r.packet_id);
                }
                None
            }
            Packet::PubRec(r) => {
                let reply = {
                    let mut st = a.session.state.lock();
                    match st.inflight.get(&r.packet_id) {
                        Some(Inflight::Published(d)) if d.qos == QoS::ExactlyOnce => {
                            if r.reason_code.is_error() {
                                st.inflight.remove(&r.packet_id);
                                None
                            } else {
                                st.inflight.insert(r.packet_id, Inflight::Released);
                                Some(ReasonCode::SUCCESS)
                            }
                        }
                        Some(Inflight::Released) => Some(ReasonCode::SUCCESS),
                        _ => Some(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND),
                    }
                };
                if let Some(code) = reply {
                    self.send(a, Packet::PubRel(resp(r.packet_id, code)));
                }
                None
            }
            Packet::PubRel(r) => {
                let known = a.session.state.lock().incoming_qos2.remove(&r.packet_id);
                let code = if known {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.send(a, Packet::PubComp(resp(r.packet_id, code)));
                None
            }
            Packet::PubComp(r) => {
                let mut st = a.session.state.lock();
                if matches!(st.inflight.get(&r.packet_id), Some(Inflight::Released)) {
                    st.inflight.remove(&r.packet_id);
                }
                None
            }
            Packet::Subscribe(s) => self.on_subscribe(a, s),
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(a, u);
                None
            }
            Packet::PingReq => {
                self.send(a, Packet::PingResp);
                None
            }
            Packet::Disconnect(d) => {
                if let Some(secs) = d.properties.session_expiry_interval {
                    if a.expiry_zero_at_connect && secs != 0 {
                        return Some(Ending::server(
                            ReasonCode::PROTOCOL_ERROR,
                            "session expiry cannot be raised from 0 at DISCONNECT",
                        ));
                    }
                    a.session.state.lock().expiry_interval =
                        secs.min(self.broker.config.max_session_expiry);
                }
                Some(Ending::ClientDisconnect {
                    publish_will: d.reason_code != ReasonCode::SUCCESS,
                })
            }
            Packet::Auth(_) => {
                debug_assert!(false, "AUTH is handled by on_auth");
                None
            }
            Packet::Connect(_) => Some(Ending::server(
                ReasonCode::PROTOCOL_ERROR,
                "second CONNECT on a connection",
            )),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Some(Ending::server(
                    ReasonCode::PROTOCOL_ERROR,
                    "a server-to-client packet sent by the client",
                ))
            }
        }
    }

    fn on_publish(&mut self, a: &mut Active, p: Publish) -> Option<Ending> {
        let cfg = &self.broker.config;
        if !p.properties.subscription_identifiers.is_empty() {
            // MQTT-3.3.4-6: only the server sends Subscription Identifiers.
            return Some(Ending::server(
                ReasonCode::PROTOCOL_ERROR,
                "subscription identifier in a client PUBLISH",
            ));
        }
        // Topic Alias (§3.3.2.3.4).
        let topic = match p.properties.topic_alias {
            Some(alias) => {
                if alias == 0 || alias > cfg.topic_alias_maximum {
                    return Some(Ending::server(
                        ReasonCode::TOPIC_ALIAS_INVALID,
                        "topic alias out of range",
                    ));
                }
                if p.topic.is_empty() {
                    match a.aliases.as_ref().and_then(|al| al.inbound.get(&alias)) {
                        Some(t) => t.clone(),
                        None => {
                            return Some(Ending::server(
                                ReasonCode::PROTOCOL_ERROR,
                                "unknown topic alias",
                            ));
                        }
                    }
                } else {
                    a.aliases
                        .get_or_insert_default()
                        .inbound
                        .insert(alias, p.topic.clone());
                    p.topic.clone()
                }
            }
            None if p.topic.is_empty() => {
                return Some(Ending::server(
                    ReasonCode::PROTOCOL_ERROR,
                    "empty topic name without a topic alias",
                ));
            }
            None => p.topic.clone(),
        };
        if p.qos.as_u8() > cfg.max_qos {
            return Some(Ending::server(
                ReasonCode::QOS_NOT_SUPPORTED,
                "QoS above the broker's maximum",
            ));
        }
        if p.retain && !cfg.retain_available {
            return Some(Ending::server(
                ReasonCode::RETAIN_NOT_SUPPORTED,
                "retained messages are not available",
            ));
        }
        let pid = p.packet_id.unwrap_or(0);
        if p.qos == QoS::ExactlyOnce {
            let st = a.session.state.lock();
            if st.incoming_qos2.contains(&pid) {
                // A resend of a message already received: acknowledge, do not deliver twice.
                drop(st);
                self.send(a, Packet::PubRec(resp(pid, ReasonCode::SUCCESS)));
                return None;
            }
            if st.incoming_qos2.len() >= cfg.receive_maximum as usize {
                return Some(Ending::server(
                    ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    "more unacknowledged QoS 2 publishes than Receive Maximum",
                ));
            }
        }
        let qos = p.qos;
        let code = if p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            ReasonCode::PAYLOAD_FORMAT_INVALID
        } else if !client_may_publish(&*a.grant.acl, &topic) {
            debug!(client_id = %a.client_id, topic = %topic, "publish denied");
            ReasonCode::NOT_AUTHORIZED
        } else {
            let message = Arc::new(Message::from_publish(p, topic, a.session.id));
            if qos == QoS::AtMostOnce && !message.retain {
                // A run must not overflow a small queue before the publisher has had a chance
                // to see its subscribers fall behind (`subscribers_behind`, at half a queue).
                let run_max = RUN_MAX.min(cfg.max_queued_messages as usize / 4).max(1);
                if self
                    .qos0_run
                    .first()
                    .is_some_and(|m| m.topic != message.topic)
                {
                    self.route_qos0_run();
                }
                self.qos0_run.push(message);
                if self.qos0_run.len() >= run_max {
                    self.route_qos0_run();
                }
                return None;
            }
            self.route_qos0_run();
            let routed = self.broker.publish(message);
            self.subscribers_behind |= routed.subscribers_behind;
            if routed.rejected && qos != QoS::AtMostOnce {
                ReasonCode::QUOTA_EXCEEDED
            } else if routed.matched == 0 {
                ReasonCode::NO_MATCHING_SUBSCRIBERS
            } else {
                ReasonCode::SUCCESS
            }
        };
        match qos {
            QoS::AtMostOnce => {
                if code.is_error() {
                    self.broker
                        .stats
                        .messages_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            QoS::AtLeastOnce => self.send(a, Packet::PubAck(resp(pid, code))),
            QoS::ExactlyOnce => {
                if !code.is_error() {
                    a.session.state.lock().incoming_qos2.insert(pid);
                }
                self.send(a, Packet::PubRec(resp(pid, code)));
            }
        }
        None
    }

    fn on_subscribe(&mut self, a: &mut Active, s: Subscribe) -> Option<Ending> {
        let cfg = self.broker.config.clone();
        let sub_id = s.properties.subscription_identifiers.first().copied();
        if sub_id.is_some() && !cfg.subscription_identifiers {
            return Some(Ending::server(
                ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                "subscription identifiers are not available",
            ));
        }
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for (filter, opts) in &s.filters {
            let shared = parse_shared(filter);
            let code = match shared {
                Err(_) => ReasonCode::TOPIC_FILTER_INVALID,
                Ok(_) if !valid_topic_filter(filter) => ReasonCode::TOPIC_FILTER_INVALID,
                Ok(Some(_)) if !cfg.shared_subscriptions => {
                    ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
                }
                Ok(Some(_)) if opts.no_local => {
                    return Some(Ending::server(
                        ReasonCode::PROTOCOL_ERROR,
                        "No Local on a shared subscription",
                    ));
                }
                Ok(inner)
                    if !cfg.wildcard_subscriptions
                        && has_wildcard(inner.map_or(filter.as_str(), |s| s.filter)) =>
                {
                    ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
                }
                Ok(_) if !a.grant.acl.can_subscribe(filter) => ReasonCode::NOT_AUTHORIZED,
                Ok(inner) => {
                    let mut opts = *opts;
                    opts.qos = opts
                        .qos
                        .min(QoS::from_u8(cfg.max_qos).unwrap_or(QoS::ExactlyOnce));
                    let existed = self.broker.subscribe(&a.session, filter, opts, sub_id);
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
                            });
                        }
                    }
                    ReasonCode(opts.qos.as_u8())
                }
            };
            if code.is_error() {
                debug!(client_id = %a.client_id, filter = %filter, reason = %code, "subscription refused");
            }
            codes.push(code);
        }
        self.send(
            a,
            Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                properties: Properties::default(),
                reason_codes: codes,
            }),
        );
        if !retained.is_empty() {
            // Retained messages follow the SUBACK through the session queue, so flow control
            // and packet identifiers apply; they are not bounded by the live-message queue.
            let mut st = a.session.state.lock();
            for d in retained {
                st.pending.push_back(d);
            }
        }
        None
    }

    fn on_unsubscribe(&mut self, a: &mut Active, u: Unsubscribe) {
        let codes = u
            .filters
            .iter()
            .map(|f| {
                if self.broker.unsubscribe(&a.session, f) {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        self.send(
            a,
            Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                properties: Properties::default(),
                reason_codes: codes,
            }),
        );
    }

    /// AUTH after CONNACK: re-authentication (§4.12.1).
    pub(crate) async fn on_auth(&mut self, a: &mut Active, auth: Auth) -> Option<Ending> {
        let Some(method) = a.auth_method.clone() else {
            return Some(Ending::server(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH without enhanced authentication at CONNECT",
            ));
        };
        if auth.properties.authentication_method.as_deref() != Some(method.as_str()) {
            return Some(Ending::server(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH with a different authentication method",
            ));
        }
        let data = auth.properties.authentication_data;
        let step = match (auth.reason_code, a.reauth.take()) {
            (ReasonCode::REAUTHENTICATE, None) => {
                self.broker
                    .auth
                    .reauthenticate(ReauthRequest {
                        client_id: a.client_id.to_string(),
                        identity: a.grant.identity.clone(),
                        method: method.clone(),
                        data,
                        peer: self.peer,
                    })
                    .await
            }
            (ReasonCode::CONTINUE_AUTHENTICATION, Some(exchange)) => exchange.step(data).await,
            _ => {
                return Some(Ending::server(
                    ReasonCode::PROTOCOL_ERROR,
                    "AUTH reason code out of sequence",
                ));
            }
        };
        match step {
            AuthStep::Success(grant) => {
                info!(client_id = %a.client_id, "client re-authenticated");
                a.credential_deadline = deadline_from(grant.expires_at);
                self.broker.update_connection(
                    self.id,
                    grant.identity.clone(),
                    grant.credential.clone(),
                );
                let data = grant.data.clone();
                a.grant = grant;
                self.send(
                    a,
                    Packet::Auth(Auth {
                        reason_code: ReasonCode::SUCCESS,
                        properties: Properties {
                            authentication_method: Some(Utf8Bytes::from(method.as_str())),
                            authentication_data: data,
                            ..Default::default()
                        },
                    }),
                );
                None
            }
            AuthStep::Continue { data, exchange } => {
                a.reauth = Some(exchange);
                self.send(
                    a,
                    Packet::Auth(Auth {
                        reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                        properties: Properties {
                            authentication_method: Some(Utf8Bytes::from(method.as_str())),
                            authentication_data: data,
                            ..Default::default()
                        },
                    }),
                );
                None
            }
            AuthStep::Failure(f) => Some(Ending::server(f.reason, f.reason_string)),
        }
    }
}

fn resp(packet_id: u16, code: ReasonCode) -> PubResp {
    PubResp {
        packet_id,
        reason_code: code,
        properties: Properties::default(),
    }
}

//! A session's handoff between live nodes: the node a client connects to asks the session's
//! owner on `<prefix>.handoff.<owner>`; the owner ends the session there and answers with its
//! record and what it [`Carried`] (its queue, what was in flight, the client's unreleased
//! QoS 2 identifiers, the cut of what was routed to it), so the new node opens it with all of
//! that and replays only what the owner never routed to it.
//!
//! The answer is a JSON head (which has no raw newline), a newline, then each entry's
//! PUBLISH, one after another (their lengths are in the head). An answer too large for the
//! NATS server's payload limit leaves out what was carried: the new node then replays from
//! the record's floor (at least once), as for an owner that does not answer.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tessera_broker::cluster::{Carried, CarriedEntry, ClusterId, Cut};
use tessera_broker::codec::QoS;
use tessera_broker::store::EntryState;
use tracing::{debug, info, warn};

use super::{HANDOFF_WITHIN, Record, Sessions};
use crate::frame::{origin_for_engine, origin_from_engine};
use crate::keys::escape;

#[derive(Serialize, Deserialize)]
pub(super) struct HandoffRequest {
    pub client_id: String,
    pub clean: bool,
}

/// What the owner answers: its last record of the session, its origin, what it carried.
#[derive(Debug, Clone)]
pub(super) struct Answer {
    pub record: Record,
    /// The owner's process (`Frame::origin`): the cut's `next_seq` counts its messages.
    pub origin: u64,
    pub carried: Option<Carried>,
}

#[derive(Serialize, Deserialize)]
struct Head {
    record: Record,
    origin: u64,
    carried: Option<CarriedHead>,
}

#[derive(Serialize, Deserialize)]
struct CarriedHead {
    incoming_qos2: Vec<u16>,
    peers_routed: u64,
    next_seq: u64,
    entries: Vec<EntryHead>,
}

#[derive(Serialize, Deserialize)]
struct EntryHead {
    qos: u8,
    retain: bool,
    ids: Vec<u32>,
    /// `q` queued, `s` sent, `r` released.
    state: char,
    pid: u16,
    len: usize,
    /// Publication time (ms), for the new owner's floor.
    #[serde(default)]
    at: u64,
    /// Its origin (never 0: the owner's own is its origin) and number (`Frame`).
    #[serde(default)]
    id: Option<(u64, u64)>,
}

fn encode(answer: &Answer) -> Bytes {
    let mut packets = BytesMut::new();
    let carried = answer.carried.as_ref().map(|c| CarriedHead {
        incoming_qos2: c.incoming_qos2.clone(),
        peers_routed: c.cut.peers_routed,
        next_seq: c.cut.next_seq,
        entries: c
            .entries
            .iter()
            .map(|e| {
                packets.extend_from_slice(&e.packet);
                let (state, pid) = match e.state {
                    EntryState::Queued => ('q', 0),
                    EntryState::Sent(pid) => ('s', pid),
                    EntryState::Released(pid) => ('r', pid),
                };
                EntryHead {
                    qos: e.qos.as_u8(),
                    retain: e.retain,
                    ids: e.subscription_ids.clone(),
                    state,
                    pid,
                    len: e.packet.len(),
                    at: e.published_ms,
                    id: e
                        .id
                        .map(|id| (origin_from_engine(id.origin, answer.origin), id.seq)),
                }
            })
            .collect(),
    });
    let head = Head {
        record: answer.record.clone(),
        origin: answer.origin,
        carried,
    };
    let mut out = BytesMut::from(&serde_json::to_vec(&head).unwrap_or_default()[..]);
    out.extend_from_slice(b"\n");
    out.extend_from_slice(&packets);
    out.freeze()
}

/// `own`: this process's origin, which the engine calls 0.
fn decode(bytes: &Bytes, own: u64) -> Option<Answer> {
    let at = bytes.iter().position(|b| *b == b'\n')?;
    let head: Head = serde_json::from_slice(&bytes[..at]).ok()?;
    let mut rest = bytes.slice(at + 1..);
    let carried = match head.carried {
        None => None,
        Some(c) => {
            let mut entries = Vec::with_capacity(c.entries.len());
            for e in c.entries {
                if e.len > rest.len() {
                    return None;
                }
                let state = match e.state {
                    'q' => EntryState::Queued,
                    's' => EntryState::Sent(e.pid),
                    'r' => EntryState::Released(e.pid),
                    _ => return None,
                };
                entries.push(CarriedEntry {
                    packet: rest.split_to(e.len),
                    qos: QoS::from_u8(e.qos)?,
                    retain: e.retain,
                    subscription_ids: e.ids,
                    state,
                    published_ms: e.at,
                    id: e.id.map(|(origin, seq)| ClusterId {
                        origin: origin_for_engine(origin, own),
                        seq,
                        stream_seq: 0,
                    }),
                });
            }
            Some(Carried {
                entries,
                incoming_qos2: c.incoming_qos2,
                cut: Cut {
                    peers_routed: c.peers_routed,
                    next_seq: c.next_seq,
                },
                origin: head.origin,
                delivered: Vec::new(),
            })
        }
    };
    Some(Answer {
        record: head.record,
        origin: head.origin,
        carried,
    })
}

impl Sessions {
    /// Asks `owner` to let the session go; its answer, if it gave one.
    pub(super) async fn handoff(
        &self,
        owner: &str,
        client_id: &str,
        clean: bool,
    ) -> Option<Answer> {
        let request = HandoffRequest {
            client_id: client_id.to_string(),
            clean,
        };
        let subject = format!("{}.{}", self.nats.subject("handoff"), escape(owner));
        let body = Bytes::from(serde_json::to_vec(&request).ok()?);
        let asked = self.nats.client.request(subject, body);
        match tokio::time::timeout(HANDOFF_WITHIN, asked).await {
            Ok(Ok(reply)) => decode(&reply.payload, self.origin),
            Ok(Err(e)) => {
                debug!(owner, error = %e, "the session's owner did not answer (down?)");
                None
            }
            Err(_) => {
                info!(
                    owner,
                    client_id,
                    "the session's owner did not answer in time; its last record is used"
                );
                None
            }
        }
    }

    pub(super) async fn respond_to_handoffs(self: Arc<Self>) {
        let subject = format!("{}.{}", self.nats.subject("handoff"), escape(&self.node));
        let mut sub = match self.nats.client.subscribe(subject).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot answer session handoffs on NATS");
                return;
            }
        };
        while let Some(m) = sub.next().await {
            let Some(reply) = m.reply else { continue };
            let Ok(req) = serde_json::from_slice::<HandoffRequest>(&m.payload) else {
                continue;
            };
            let answer = {
                // Between two writes of the record writer (see `Sessions::turn`).
                let _turn = self.turn.write().await;
                // Forgotten first: the session's end below must not delete the record.
                let owned = self.owned.lock().remove(&req.client_id);
                let answer = self
                    .broker
                    .release_session(&req.client_id, req.clean)
                    .map(|mut s| {
                        let inherited = owned.filter(|o| o.replaying).map(|o| o.record.floor_ms);
                        Answer {
                            record: self.record_of(&req.client_id, &s, inherited),
                            origin: self.origin,
                            carried: s.carried.take(),
                        }
                    });
                self.forget_qos2(&req.client_id);
                answer
            };
            let body = match answer {
                None => Bytes::from_static(b"null"),
                Some(mut a) => {
                    let mut body = encode(&a);
                    let limit = self
                        .nats
                        .client
                        .server_info()
                        .max_payload
                        .saturating_sub(1024);
                    if body.len() > limit && a.carried.take().is_some() {
                        warn!(
                            client_id = req.client_id,
                            bytes = body.len(),
                            "a moving session's queue is too large to hand over; the new node replays it from the stream (at least once)"
                        );
                        body = encode(&a);
                    }
                    body
                }
            };
            if let Err(e) = self.nats.client.publish(reply, body).await {
                debug!(error = %e, "answering a session handoff");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ledger::Qos2;
    use super::*;

    #[test]
    fn an_answer_reads_back_with_its_packets() {
        let record = Record {
            owner: "a".into(),
            expiry: 60,
            subs: Vec::new(),
            floor_ms: 5,
            offline_since_ms: None,
            qos2: vec![Qos2 {
                origin: 9,
                seq: 4,
                at: 6,
                pid: 7,
                released: false,
            }],
            incoming: vec![3],
        };
        let entry = |packet: &'static [u8], state| CarriedEntry {
            packet: Bytes::from_static(packet),
            qos: QoS::ExactlyOnce,
            retain: false,
            subscription_ids: vec![3],
            state,
            published_ms: 12,
            id: Some(ClusterId {
                origin: 0,
                seq: 5,
                stream_seq: 0,
            }),
        };
        let answer = Answer {
            record,
            origin: 9,
            carried: Some(Carried {
                entries: vec![
                    entry(b"\x34\x01\n", EntryState::Sent(7)),
                    entry(b"", EntryState::Released(8)),
                    entry(b"abc", EntryState::Queued),
                ],
                incoming_qos2: vec![4],
                cut: Cut {
                    peers_routed: 10,
                    next_seq: 11,
                },
                origin: 9,
                delivered: Vec::new(),
            }),
        };
        // Read on another node: the owner's own messages are named by its origin there.
        let back = decode(&encode(&answer), 2).unwrap();
        assert_eq!(back.record, answer.record);
        assert_eq!(back.origin, 9);
        let named = |c: &Carried| c.entries.iter().map(|e| e.id).collect::<Vec<_>>();
        let elsewhere = ClusterId {
            origin: 9,
            seq: 5,
            stream_seq: 0,
        };
        assert_eq!(named(back.carried.as_ref().unwrap()), [Some(elsewhere); 3]);
        let mut carried = back.carried.unwrap();
        for e in &mut carried.entries {
            e.id = answer.carried.as_ref().unwrap().entries[0].id;
        }
        assert_eq!(Some(carried), answer.carried);
        // Read back on the owner, its own are its own again.
        let home = decode(&encode(&answer), 9).unwrap().carried.unwrap();
        assert_eq!(Some(home), answer.carried);
        assert!(decode(&Bytes::from_static(b"null"), 2).is_none());
    }
}

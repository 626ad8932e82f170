//! A node of a cluster in process, on the recording fake (`RecordingPeers`), and what the
//! tests of the engine's cluster side (`cluster_edge.rs`, `cluster_sessions_edge.rs`) do with it.
#![allow(dead_code)] // Each test binary compiles this module; not all of them use all of it.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tessera_broker::Server;
use tessera_broker::auth::AnonymousOnly;
use tessera_broker::cluster::{ClusterId, PeerHandle, Recorded, RecordingPeers};
use tessera_broker::codec::{
    self, Packet, Properties, Publish, QoS, Subscribe, SubscriptionOptions, Version,
};
use tessera_config::Transport;

use super::Raw;

pub struct Node {
    pub server: Server,
    pub addr: SocketAddr,
    pub peers: Arc<RecordingPeers>,
    pub handle: PeerHandle,
    _dir: tempfile::TempDir,
}

pub async fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let auth = Arc::new(AnonymousOnly {
        allow_anonymous: true,
    });
    let server = Server::start(&super::config(dir.path(), ""), auth)
        .await
        .unwrap();
    let addr = server.addr(Transport::Tcp).unwrap();
    let peers = Arc::new(RecordingPeers::default());
    let handle = server.handle().peer_handle();
    assert!(handle.join(peers.clone()));
    Node {
        server,
        addr,
        peers,
        handle,
        _dir: dir,
    }
}

pub fn publish(topic: &str, qos: QoS, pid: u16, payload: &'static str) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(pid),
        properties: Properties::default(),
        payload: Bytes::from_static(payload.as_bytes()),
    })
}

/// The cluster name of message `seq` of another node, read from the stream at `seq`.
pub fn peer_id(seq: u64) -> ClusterId {
    ClusterId {
        origin: 77,
        seq,
        stream_seq: seq,
    }
}

/// A PUBLISH as another node forwards it.
pub fn from_peer(topic: &str, qos: QoS, payload: &'static str) -> Bytes {
    let mut b = BytesMut::new();
    codec::encode(&publish(topic, qos, 1, payload), Version::V5, &mut b);
    b.freeze()
}

pub fn subscribe(pid: u16, filters: &[&str]) -> Packet {
    subscribe_at(pid, filters, QoS::AtLeastOnce)
}

pub fn subscribe_at(pid: u16, filters: &[&str], qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid,
        properties: Properties::default(),
        filters: filters
            .iter()
            .map(|f| {
                (
                    (*f).into(),
                    SubscriptionOptions {
                        qos,
                        ..Default::default()
                    },
                )
            })
            .collect(),
    })
}

/// Subscribes and waits for the SUBACK, settling its ticket as the other nodes would.
pub async fn subscribed(n: &Node, c: &mut Raw, pid: u16, filters: &[&str]) {
    subscribed_at(n, c, pid, filters, QoS::AtLeastOnce).await;
}

pub async fn subscribed_at(n: &Node, c: &mut Raw, pid: u16, filters: &[&str], qos: QoS) {
    let before = interest_tickets(&n.peers.log()).len();
    c.send(subscribe_at(pid, filters, qos)).await;
    let t = n
        .peers
        .wait_until(|log| interest_tickets(log).get(before).copied())
        .await;
    n.handle.settle(t, true);
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
}

pub fn interest_tickets(log: &[Recorded]) -> Vec<u64> {
    log.iter()
        .filter_map(|r| match r {
            Recorded::InterestTicket(t) => Some(*t),
            _ => None,
        })
        .collect()
}

/// The payload of the next PUBLISH, acknowledging it if QoS 1.
pub async fn next_payload(c: &mut Raw) -> String {
    loop {
        match c.recv().await {
            Some(Packet::Publish(p)) => {
                if let Some(pid) = p.packet_id {
                    c.send(Packet::PubAck(codec::PubResp {
                        packet_id: pid,
                        ..Default::default()
                    }))
                    .await;
                }
                return String::from_utf8(p.payload.to_vec()).unwrap();
            }
            Some(_) => continue,
            None => panic!("connection closed"),
        }
    }
}

/// The ticket of the forwarded message with this payload, once recorded.
pub async fn forwarded(n: &Node, payload: &'static str) -> Option<u64> {
    let r = n
        .peers
        .wait_for(|r| {
            r.publish()
                .is_some_and(|p| &p.payload[..] == payload.as_bytes())
        })
        .await;
    let Recorded::Forward { ticket, .. } = r else {
        unreachable!()
    };
    ticket
}

pub fn resp(packet_id: u16) -> codec::PubResp {
    codec::PubResp {
        packet_id,
        ..Default::default()
    }
}

/// The next PUBLISH's packet identifier, payload and DUP flag.
pub async fn next_publish(c: &mut Raw) -> (u16, String, bool) {
    loop {
        match c.recv().await {
            Some(Packet::Publish(p)) => {
                let payload = String::from_utf8(p.payload.to_vec()).unwrap();
                return (p.packet_id.unwrap_or(0), payload, p.dup);
            }
            Some(_) => continue,
            None => panic!("connection closed"),
        }
    }
}

/// Settles every QoS 2 step's ticket as it is recorded, as the cluster does once the
/// session's record holds it (for tests about something else).
pub fn settle_qos2_steps(n: &Node) {
    let (peers, handle) = (n.peers.clone(), n.handle.clone());
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let tickets = peers
                .wait_until(|log| {
                    (log.len() > seen).then(|| {
                        let new: Vec<u64> = log[seen..]
                            .iter()
                            .filter_map(|r| match r {
                                Recorded::Qos2 { ticket, .. } if *ticket != 0 => Some(*ticket),
                                _ => None,
                            })
                            .collect();
                        (log.len(), new)
                    })
                })
                .await;
            seen = tickets.0;
            for t in tickets.1 {
                handle.settle(t, true);
            }
        }
    });
}

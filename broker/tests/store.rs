//! The store seam: a second `Server` on the same store restores retained messages and
//! persistent sessions (subscriptions and the messages queued for them); ended sessions are
//! not restored.

mod common;

use common::Raw;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tessera_broker::Server;
use tessera_broker::auth::AnonymousOnly;
use tessera_broker::codec::{
    Disconnect, Packet, Properties, PubResp, Publish, QoS, Subscribe, SubscriptionOptions,
};
use tessera_broker::store::{MemoryStore, Store};
use tessera_config::Transport;

async fn start(store: Arc<MemoryStore>) -> (Server, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let auth = Arc::new(AnonymousOnly {
        allow_anonymous: true,
    });
    let server = Server::start_with_store(&common::config(dir.path(), ""), auth, store)
        .await
        .unwrap();
    let addr = server.addr(Transport::Tcp).unwrap();
    (server, addr, dir)
}

fn publish(topic: &str, payload: &'static [u8], retain: bool, pid: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain,
        topic: topic.into(),
        packet_id: Some(pid),
        properties: Properties::default(),
        payload: Bytes::from_static(payload),
    })
}

#[tokio::test]
async fn restart_restores_retained_and_persistent_sessions() {
    let store = Arc::new(MemoryStore::default());
    let (server, addr, _dir) = start(store.clone()).await;
    let (mut keeper, _) = Raw::connect(addr, "keeper", false, 3600).await;
    keeper
        .send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(
                "news/#".into(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            )],
        }))
        .await;
    assert!(matches!(keeper.recv().await, Some(Packet::SubAck(_))));
    keeper.send(Packet::Disconnect(Disconnect::default())).await;
    assert!(keeper.recv().await.is_none());
    let (mut fleeting, _) = Raw::connect(addr, "fleeting", true, 0).await;
    fleeting
        .send(Packet::Disconnect(Disconnect::default()))
        .await;

    let (mut publ, _) = Raw::connect(addr, "pub", true, 0).await;
    publ.send(publish("news/today", b"queued while offline", false, 1))
        .await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    publ.send(publish("status", b"retained", true, 2)).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    server.shutdown().await;

    let state = store.load().unwrap();
    assert_eq!(
        state.sessions.len(),
        1,
        "only the persistent session is stored"
    );
    assert_eq!(state.sessions[0].entries.len(), 1);

    let (server, addr, _dir) = start(store.clone()).await;
    let (mut keeper, present) = Raw::connect(addr, "keeper", false, 3600).await;
    assert!(present, "session restored");
    let Some(Packet::Publish(p)) = keeper.recv().await else {
        panic!()
    };
    assert_eq!(&p.payload[..], b"queued while offline");
    keeper
        .send(Packet::PubAck(PubResp {
            packet_id: p.packet_id.unwrap(),
            ..Default::default()
        }))
        .await;
    // The restored subscription still routes.
    let (mut publ, _) = Raw::connect(addr, "pub2", true, 0).await;
    publ.send(publish("news/later", b"live", false, 1)).await;
    let Some(Packet::Publish(p)) = keeper.recv().await else {
        panic!()
    };
    assert_eq!(&p.payload[..], b"live");
    // And the retained message is back.
    let (mut late, _) = Raw::connect(addr, "late", true, 0).await;
    late.send(Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![("status".into(), SubscriptionOptions::default())],
    }))
    .await;
    assert!(matches!(late.recv().await, Some(Packet::SubAck(_))));
    let Some(Packet::Publish(p)) = late.recv().await else {
        panic!()
    };
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"retained");

    // Ending the session (clean start) deletes its record.
    drop(keeper);
    let (_k, present) = Raw::connect(addr, "keeper", true, 0).await;
    assert!(!present);
    server.handle().sync().await.unwrap();
    assert!(
        store
            .load()
            .unwrap()
            .sessions
            .iter()
            .all(|s| s.head.client_id != "keeper")
    );
}

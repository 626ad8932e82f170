//! A store that cannot commit (a full disk, a failed write) is answered, never hidden: a QoS 1
//! publisher whose message could not be made durable gets PUBACK 0x97 (full) or 0x80 with a
//! Reason String, the failure is counted, and the broker keeps serving; once the store works
//! again, so do acknowledgements.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bytes::Bytes;
use common::Raw;
use tessera_broker::Server;
use tessera_broker::auth::AnonymousOnly;
use tessera_broker::codec::{
    Packet, Properties, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};
use tessera_broker::store::{Batch, MemoryStore, Store, StoreError, StoredState};
use tessera_config::Transport;

/// The in-memory store with a switch: 0 works, 1 fails as a full disk, 2 fails otherwise.
#[derive(Default)]
struct Switchable {
    inner: MemoryStore,
    mode: AtomicU8,
}

impl Store for Switchable {
    fn load(&self) -> Result<StoredState, StoreError> {
        self.inner.load()
    }
    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        match self.mode.load(Ordering::SeqCst) {
            0 => self.inner.commit(batch),
            1 => Err(StoreError::Full("No space left on device".into())),
            _ => Err(StoreError::Failed("input/output error".into())),
        }
    }
}

fn publish(pid: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "d/x".into(),
        packet_id: Some(pid),
        properties: Properties::default(),
        payload: Bytes::from_static(b"m"),
    })
}

#[tokio::test]
async fn a_failed_commit_is_answered_and_the_broker_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Switchable::default());
    let auth = Arc::new(AnonymousOnly {
        allow_anonymous: true,
    });
    let server = Server::start_with_store(&common::config(dir.path(), ""), auth, store.clone())
        .await
        .unwrap();
    let addr = server.addr(Transport::Tcp).unwrap();
    // A persistent subscriber makes the messages durable ones.
    let (mut sub, _) = Raw::connect(addr, "sub", false, 3600).await;
    sub.send(Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![(
            "d/#".into(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )],
    }))
    .await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let (mut publ, _) = Raw::connect(addr, "pub", true, 0).await;

    for (mode, pid, code) in [
        (1, 1, ReasonCode::QUOTA_EXCEEDED),
        (2, 2, ReasonCode::UNSPECIFIED_ERROR),
        (0, 3, ReasonCode::SUCCESS),
    ] {
        store.mode.store(mode, Ordering::SeqCst);
        publ.send(publish(pid)).await;
        let Some(Packet::PubAck(a)) = publ.recv().await else {
            panic!("no PUBACK")
        };
        assert_eq!((a.packet_id, a.reason_code), (pid, code));
        if code.is_error() {
            let why = a.properties.reason_string.expect("a Reason String");
            assert!(
                why.contains("not stored") || why.contains("could not store"),
                "{why}"
            );
        }
    }
    server.shutdown().await;
}

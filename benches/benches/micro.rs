//! Micro-benchmarks of the hot paths: decoding and encoding PUBLISH, matching a topic against
//! 100,000 subscriptions, and validating a token against the redb store.
//! Run: `cargo bench -p tessera-bench --bench micro`.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tessera_auth::redb_store::RedbStore;
use tessera_auth::service::TokenService;
use tessera_broker::codec::{
    self, Packet, Properties, PublishHead, QoS, SubscriptionOptions, Version,
    encode_message_properties,
};
use tessera_broker::{Session, SessionGauges, Subscriber, SubscriptionTree};

fn main() {
    divan::main();
}

fn publish_bytes() -> BytesMut {
    let p = Packet::Publish(codec::Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "devices/sensor-42/telemetry/temperature".into(),
        packet_id: Some(7),
        properties: Properties {
            user_properties: vec![("unit".into(), "celsius".into())],
            ..Default::default()
        },
        payload: Bytes::from(vec![b'x'; 64]),
    });
    let mut buf = BytesMut::new();
    codec::encode(&p, Version::V5, &mut buf);
    buf
}

#[divan::bench]
fn decode_publish_v5(bencher: divan::Bencher) {
    let bytes = publish_bytes();
    bencher.bench_local(|| {
        let mut b = bytes.clone();
        codec::decode(divan::black_box(&mut b), Version::V5, 1 << 20).unwrap()
    });
}

#[divan::bench]
fn encode_publish_head_v5(bencher: divan::Bencher) {
    let props = encode_message_properties(&Properties {
        user_properties: vec![("unit".into(), "celsius".into())],
        ..Default::default()
    });
    let mut out = BytesMut::with_capacity(1 << 16);
    bencher.bench_local(|| {
        out.clear();
        let head = PublishHead {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: b"devices/sensor-42/telemetry/temperature",
            packet_id: Some(9),
            message_properties: &props,
            message_expiry: None,
            topic_alias: None,
            subscription_ids: &[],
            payload_len: 64,
        };
        codec::encode_publish_head(divan::black_box(&head), Version::V5, &mut out);
    });
}

/// 100,000 subscriptions: one exact and one `+` filter per device, and some `#` filters.
fn tree() -> SubscriptionTree {
    let mut t = SubscriptionTree::default();
    let gauges = Arc::new(SessionGauges::default());
    for i in 0..50_000u64 {
        let s = Session::new(i, format!("c{i}").into(), 0, 0, &gauges);
        let sub = |session: &Arc<Session>| Subscriber {
            session: session.clone(),
            options: SubscriptionOptions::default(),
            subscription_id: None,
        };
        t.insert(&format!("devices/d{i}/telemetry/temp"), None, sub(&s));
        t.insert(&format!("devices/d{i}/+/status"), None, sub(&s));
    }
    for i in 0..10u64 {
        let s = Session::new(1_000_000 + i, format!("w{i}").into(), 0, 0, &gauges);
        t.insert(
            &format!("devices/d{i}/#"),
            None,
            Subscriber {
                session: s,
                options: SubscriptionOptions::default(),
                subscription_id: None,
            },
        );
    }
    t
}

#[divan::bench]
fn match_topic_in_100k_subscriptions(bencher: divan::Bencher) {
    let t = tree();
    assert!(t.len() >= 100_000);
    let mut i = 0u64;
    bencher.bench_local(|| {
        i = (i + 7919) % 50_000;
        let topic = format!("devices/d{i}/telemetry/temp");
        let mut n = 0;
        t.for_each_match(divan::black_box(topic.as_bytes()), &mut |_| n += 1);
        n
    });
}

#[divan::bench]
fn validate_token_against_redb(bencher: divan::Bencher) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("bench.redb")).unwrap();
    let service = TokenService::new(store, tessera_config::OAuthConfig::default());
    service.add_user("bench", "pw").unwrap();
    let tokens: Vec<String> = (0..1000)
        .map(|_| {
            service
                .issue("bench", None, vec!["mqtt".into()], Some(3600), false, None)
                .unwrap()
                .access_token
        })
        .collect();
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) % tokens.len();
        service
            .validate(divan::black_box(&tokens[i]))
            .unwrap()
            .unwrap()
    });
}

//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz) and for the tests that replay their
//! corpus and every input that ever crashed them (`broker/tests/fuzz_corpus.rs`). Each takes
//! arbitrary bytes and must return, without a panic, in bounded time. Not part of the broker's
//! API (hidden from its documentation).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

use crate::auth::AnonymousOnly;
use crate::broker::{Broker, Persistence};
use crate::codec::{self, Connect, Packet, Properties, Version};

/// The version the first byte picks for the rest.
fn version(b: u8) -> Version {
    match b % 3 {
        0 => Version::V3_1,
        1 => Version::V3_1_1,
        _ => Version::V5,
    }
}

/// Decodes `data[1..]` as packets of the version `data[0]` picks, as the broker reads them. A
/// packet that decodes must encode and decode back to itself: what the broker forwards or
/// answers is what it understood.
pub fn decode(data: &[u8]) {
    let Some((&v, rest)) = data.split_first() else {
        return;
    };
    let version = version(v);
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(packet)) = codec::decode(&mut buf, version, 1 << 20) {
        let mut out = BytesMut::new();
        codec::encode(&packet, version, &mut out);
        let again = codec::decode(&mut out, version, 1 << 20);
        assert!(
            matches!(&again, Ok(Some(p)) if *p == packet),
            "{packet:?} encoded as {out:?} decodes as {again:?}"
        );
        assert!(out.is_empty(), "bytes left after re-decoding {packet:?}");
    }
}

/// The broker every `connection` input meets: small limits, so the inputs reach them.
fn broker() -> &'static (Runtime, Arc<Broker>) {
    static BROKER: OnceLock<(Runtime, Arc<Broker>)> = OnceLock::new();
    BROKER.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let config = tessera_config::MqttConfig {
            max_packet_size: 4096,
            receive_maximum: 4,
            topic_alias_maximum: 4,
            max_queued_messages: 8,
            max_subscriptions: 8,
            max_retained_messages: 16,
            max_topic_levels: 8,
            ..Default::default()
        };
        let broker = rt.block_on(async {
            Broker::new(
                config,
                Arc::new(AnonymousOnly {
                    allow_anonymous: true,
                }),
                Persistence::None,
            )
        });
        (rt, broker)
    })
}

/// One client connection on an in-memory stream: a CONNECT in the version `data[0]` picks,
/// then `data[1..]` as whatever the client sends after it, then the client's end of the
/// stream. The connection must end (or answer and wait for more) without a panic; its task's
/// panic is re-raised here, where the fuzzer sees it.
pub fn connection(data: &[u8]) {
    let Some((&v, rest)) = data.split_first() else {
        return;
    };
    let version = match version(v) {
        Version::V3_1 => Version::V3_1_1,
        v => v,
    };
    let (rt, broker) = broker();
    let mut bytes = BytesMut::new();
    codec::encode(
        &Packet::Connect(Box::new(Connect {
            version,
            clean_start: true,
            keep_alive: 0,
            properties: Properties::default(),
            client_id: "fuzz".into(),
            will: None,
            username: None,
            password: None,
        })),
        version,
        &mut bytes,
    );
    bytes.extend_from_slice(rest);
    rt.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let task = tokio::spawn(crate::connection::serve(
            broker.clone(),
            server,
            crate::connection::Accepted {
                peer,
                transport: "fuzz",
                listener: peer,
                certificate: None,
            },
        ));
        let (mut r, mut w) = tokio::io::split(client);
        let writer = async move {
            let _ = w.write_all(&bytes).await;
            let _ = w.shutdown().await;
        };
        let reader = async move {
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink).await;
            if std::env::var_os("FUZZ_SHOW").is_some() {
                eprintln!("broker sent {:02x?}", sink);
            }
        };
        tokio::join!(writer, reader);
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("connection task failed: {e}"),
            Err(_) => panic!("the connection did not end after the client's end of stream"),
        }
    });
}

/// Runs `run` on every file of `fuzz/corpus/<target>` and `fuzz/regressions/<target>` (the
/// inputs cargo-fuzz kept, and each input that once crashed the target); returns how many.
pub fn replay(target: &str, run: impl Fn(&[u8])) -> usize {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            // A file a running fuzzer just replaced is no longer an input.
            let Ok(data) = std::fs::read(&path) else {
                continue;
            };
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&data)));
            assert!(outcome.is_ok(), "{target}: {} fails", path.display());
            n += 1;
        }
    }
    n
}

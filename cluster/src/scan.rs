//! Reading a whole KV bucket at once: one ordered consumer on the bucket's stream, the last
//! value of every key, delivered in batches, instead of a request per key (`Store::keys`
//! then `entry` for each). The keys that hold a value now are returned with their revision,
//! so a caller can compare-and-set on what it read.

use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use bytes::Bytes;
use futures_util::StreamExt;

/// One key's value as the scan found it.
#[derive(Debug, Clone)]
pub(crate) struct Scanned {
    pub key: String,
    pub value: Bytes,
    pub revision: u64,
}

/// Every key of `bucket` (a KV bucket's name) starting with `prefix` that holds a value, in
/// stream order. Deleted and purged keys are left out.
pub(crate) async fn scan(js: &Context, bucket: &str, prefix: &str) -> Result<Vec<Scanned>, String> {
    let mut stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .map_err(|e| e.to_string())?;
    // Anything up to here is what the bucket holds now; later writes are not waited for.
    let state = &stream.info().await.map_err(|e| e.to_string())?.state;
    let (last, messages) = (state.last_sequence, state.messages);
    if messages == 0 {
        return Ok(Vec::new());
    }
    let subjects = format!("$KV.{bucket}.");
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("{subjects}>"),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut found = Vec::new();
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| e.to_string())?;
        let info = m.info().map_err(|e| e.to_string())?;
        let (revision, pending) = (info.stream_sequence, info.pending);
        let deleted = m
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        if let Some(key) = m.subject.as_str().strip_prefix(&subjects)
            && key.starts_with(prefix)
            && !deleted
        {
            found.push(Scanned {
                key: key.to_string(),
                value: m.payload.clone(),
                revision,
            });
        }
        if pending == 0 || revision >= last {
            break;
        }
    }
    Ok(found)
}

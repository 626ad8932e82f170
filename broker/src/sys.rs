//! `$SYS/broker/...` topics, as mosquitto publishes them: retained status messages refreshed
//! every `sys.interval` seconds.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::codec::{QoS, Utf8Bytes};
use crate::message::Message;

pub const VERSION: &str = concat!("tessera ", env!("CARGO_PKG_VERSION"));

pub fn spawn(
    broker: Arc<Broker>,
    interval: u32,
    mut stop: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    if interval == 0 {
        return None;
    }
    Some(tokio::spawn(async move {
        publish(&broker, "$SYS/broker/version", VERSION.to_string());
        let mut tick = tokio::time::interval(Duration::from_secs(interval as u64));
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => publish_all(&broker),
            }
        }
    }))
}

fn publish_all(b: &Broker) {
    let s = &b.stats;
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed).to_string();
    publish(
        b,
        "$SYS/broker/uptime",
        format!("{} seconds", b.started.elapsed().as_secs()),
    );
    publish(
        b,
        "$SYS/broker/clients/connected",
        s.connected_total().to_string(),
    );
    publish(
        b,
        "$SYS/broker/clients/total",
        b.session_count().to_string(),
    );
    publish(b, "$SYS/broker/connections/total", n(&s.connections_total));
    publish(
        b,
        "$SYS/broker/messages/received",
        s.messages_received.total().to_string(),
    );
    publish(
        b,
        "$SYS/broker/messages/sent",
        s.messages_sent.total().to_string(),
    );
    publish(
        b,
        "$SYS/broker/publish/messages/dropped",
        s.dropped_total().to_string(),
    );
    publish(b, "$SYS/broker/bytes/received", n(&s.bytes_received));
    publish(b, "$SYS/broker/bytes/sent", n(&s.bytes_sent));
    publish(
        b,
        "$SYS/broker/subscriptions/count",
        b.subscription_count().to_string(),
    );
    publish(
        b,
        "$SYS/broker/retained messages/count",
        b.retained_count().to_string(),
    );
    publish(
        b,
        "$SYS/broker/retained messages/bytes",
        b.retained_bytes().to_string(),
    );
    if let Some(c) = b.cluster.counts() {
        publish(b, "$SYS/cluster/nodes/up", c.nodes_up.to_string());
        publish(b, "$SYS/cluster/nodes/known", c.nodes_known.to_string());
        publish(b, "$SYS/cluster/clients/connected", c.clients.to_string());
    }
    if let Some(j) = b.journal() {
        let (commits, failures) = j.counts();
        publish(b, "$SYS/broker/store/commits", commits.to_string());
        publish(b, "$SYS/broker/store/failures", failures.to_string());
        publish(
            b,
            "$SYS/broker/store/refused acknowledgements",
            n(&s.store_refusals),
        );
    }
}

fn publish(b: &Broker, topic: &'static str, value: String) {
    let topic = Utf8Bytes::from_static(topic);
    let message = Message::plain(topic, Bytes::from(value), QoS::AtMostOnce, true);
    // $SYS updates are not counted as received messages.
    b.publish_sys(Arc::new(message));
}

//! The operations listener (`metrics.bind`, plain HTTP, loopback by default): `GET /metrics`
//! in the Prometheus text format (0.0.4), `GET /healthz` (the process answers) and
//! `GET /readyz` (the listeners are bound and both stores take a write).
//!
//! Metrics come from prometheus-client (the Prometheus project's Rust client). The broker's
//! message counters stay its own relaxed atomics (`tessera_broker::Metrics`, read once per
//! scrape by [`BrokerCollector`]), so counting costs the message path no lock and no
//! allocation; the token service's counters are prometheus-client families
//! (`tessera_auth::metrics`), bumped once per login or request.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tessera_auth::service::TokenService;
use tessera_broker::BrokerHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

#[derive(Clone)]
struct Ops {
    registry: Arc<Registry>,
    broker: BrokerHandle,
    service: Arc<TokenService>,
}

/// Binds `addr` and serves the operations endpoints until the task is aborted.
pub async fn serve(
    addr: std::net::SocketAddr,
    broker: BrokerHandle,
    service: Arc<TokenService>,
) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot bind the metrics listener on {addr} (metrics.bind): {e}"),
        )
    })?;
    let mut registry = Registry::default();
    registry.register(
        "tessera_build",
        "The running build",
        Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("arch", std::env::consts::ARCH.to_string()),
        ]),
    );
    service.metrics.register(&mut registry);
    registry.register_collector(Box::new(BrokerCollector(broker.clone())));
    let ops = Ops {
        registry: Arc::new(registry),
        broker,
        service,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(ops);
    if let Ok(a) = listener.local_addr() {
        info!(addr = %a, "metrics endpoint ready");
    }
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "metrics listener stopped");
        }
    }))
}

async fn metrics(State(ops): State<Ops>) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut out, &ops.registry) {
        Ok(()) => {
            let mut r = out.into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            r
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
    }
}

/// 200 when the broker's store took its last commit and the token store takes a write now;
/// 503 naming what is not ready otherwise. (The listeners are bound before this one is.)
async fn readyz(State(ops): State<Ops>) -> Response {
    let mut problems = Vec::new();
    if !ops.broker.store_writable() {
        problems.push("broker store: the last commit failed");
    }
    let service = ops.service.clone();
    let token_store = tokio::task::spawn_blocking(move || service.store.probe()).await;
    if !matches!(token_store, Ok(Ok(()))) {
        problems.push("token store: a write failed");
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let body = format!("not ready\n{}\n", problems.join("\n"));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// The broker's counters and gauges, read at scrape time.
struct BrokerCollector(BrokerHandle);

impl std::fmt::Debug for BrokerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerCollector")
    }
}

const QOS: [&str; 3] = ["0", "1", "2"];

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let g = ConstGauge::new(v as i64);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// A counter family with one label.
fn counters<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (l, v) in values {
        let labels = [(label, l)];
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauges<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (l, v) in values {
        let labels = [(label, l)];
        ConstGauge::new(v as i64).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for BrokerCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = self.0.metrics();
        let by_qos = |v: [u64; 3]| QOS.into_iter().zip(v);
        gauges(
            &mut e,
            "tessera_connections",
            "Open MQTT connections that completed CONNECT, by transport",
            "transport",
            m.connections.iter().copied(),
        )?;
        counter(
            &mut e,
            "tessera_connections_accepted",
            "Network connections accepted since start",
            m.connections_accepted,
        )?;
        gauges(
            &mut e,
            "tessera_sessions",
            "Sessions: online (a connection attached) or offline (persistent, waiting)",
            "state",
            [
                ("online", m.sessions_online),
                ("offline", m.sessions_offline),
            ],
        )?;
        counters(
            &mut e,
            "tessera_messages_received",
            "PUBLISH packets received from clients, by QoS",
            "qos",
            by_qos(m.messages_received),
        )?;
        counters(
            &mut e,
            "tessera_messages_sent",
            "PUBLISH packets sent to clients, by QoS of the delivery",
            "qos",
            by_qos(m.messages_sent),
        )?;
        counters(
            &mut e,
            "tessera_payload_received_bytes",
            "Payload bytes of the PUBLISH packets received, by QoS",
            "qos",
            by_qos(m.payload_bytes_received),
        )?;
        counters(
            &mut e,
            "tessera_payload_sent_bytes",
            "Payload bytes of the PUBLISH packets sent, by QoS",
            "qos",
            by_qos(m.payload_bytes_sent),
        )?;
        counter(
            &mut e,
            "tessera_network_received_bytes",
            "Bytes read from client sockets (all packets)",
            m.network_bytes_received,
        )?;
        counter(
            &mut e,
            "tessera_network_sent_bytes",
            "Bytes written to client sockets (all packets)",
            m.network_bytes_sent,
        )?;
        counters(
            &mut e,
            "tessera_messages_dropped",
            "Messages not delivered, by reason",
            "reason",
            m.dropped.iter().copied(),
        )?;
        gauge(
            &mut e,
            "tessera_queued_messages",
            "Messages waiting in session queues",
            m.queued_messages,
        )?;
        gauge(
            &mut e,
            "tessera_queued_bytes",
            "Payload bytes waiting in session queues",
            m.queued_bytes,
        )?;
        gauge(
            &mut e,
            "tessera_queue_longest_messages",
            "The longest single session queue, to a power of two (5 to 7 reads 7; a full queue its bound)",
            m.longest_queue,
        )?;
        gauge(
            &mut e,
            "tessera_inflight_messages",
            "QoS 1 and 2 messages sent and not yet acknowledged",
            m.inflight_messages,
        )?;
        gauge(
            &mut e,
            "tessera_retained_messages",
            "Retained messages",
            m.retained_messages,
        )?;
        gauge(
            &mut e,
            "tessera_retained_bytes",
            "Topic and payload bytes of the retained messages",
            m.retained_bytes,
        )?;
        gauge(
            &mut e,
            "tessera_subscriptions",
            "Subscriptions in the routing tree",
            m.subscriptions,
        )?;
        let up = prometheus_client::metrics::gauge::ConstGauge::new(m.uptime_seconds);
        up.encode(e.encode_descriptor(
            "tessera_uptime_seconds",
            "Seconds since the broker started",
            None,
            up.metric_type(),
        )?)?;
        if let Some(c) = m.cluster {
            gauges(
                &mut e,
                "tessera_cluster_nodes",
                "Cluster nodes with a recent heartbeat (up), and all that ever joined (known)",
                "state",
                [("up", c.nodes_up), ("known", c.nodes_known)],
            )?;
            gauge(
                &mut e,
                "tessera_cluster_clients",
                "MQTT connections on the cluster's nodes that are up",
                c.clients,
            )?;
            counter(
                &mut e,
                "tessera_cluster_forward_dropped",
                "Messages the other nodes did not get because the way to NATS was full",
                c.forward_dropped,
            )?;
        }
        if let Some(s) = m.store {
            counter(
                &mut e,
                "tessera_store_commits",
                "Broker store commits (one fsync each)",
                s.commits,
            )?;
            counter(
                &mut e,
                "tessera_store_commit_failures",
                "Broker store commits that failed",
                s.failures,
            )?;
            counter(
                &mut e,
                "tessera_store_refused_acknowledgements",
                "PUBACK/PUBREC turned into refusals because the store failed",
                s.refused_acknowledgements,
            )?;
            let h = s.commit_latency;
            let mut enc = e.encode_descriptor(
                "tessera_store_commit_duration_seconds",
                "Time of one broker store commit, fsync included",
                None,
                MetricType::Histogram,
            )?;
            enc.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                h.sum_seconds,
                h.count,
                &h.buckets,
                None,
            )?;
        }
        Ok(())
    }
}

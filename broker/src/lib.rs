//! Tessera's MQTT engine: the wire codec, sessions, routing, retained messages, wills, flow
//! control and the listeners. It knows authentication only through the [`auth`] seam, storage
//! only through the [`store`] seam, and the other nodes of a cluster only through the
//! [`cluster`] seam.
//!
//! The public surface is what the token service, the binary, the cluster and the benchmarks
//! use: the codec, the three seams ([`auth`], [`store`], [`cluster`]), [`Server`] and
//! [`BrokerHandle`], and the few types re-exported below.
//! Everything else is private; `ARCHITECTURE.md` maps it.

pub mod auth;
pub mod cluster;
pub mod codec;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod store;

mod broker;
mod clock;
mod connection;
mod gauges;
mod journal;
mod lifecycle;
mod limits;
mod listener;
mod message;
mod operator;
mod page;
mod persistence;
mod registry;
mod retained;
mod routing;
mod server;
mod session;
mod stats;
mod subscribe;
mod subscriptions;
mod sys;
mod tickets;
pub mod tls;
mod websocket;

pub use broker::BrokerHandle;
pub use operator::{Metrics, RetainedInfo, StoreMetrics};
pub use registry::ConnectionInfo;
pub use server::Server;
pub use stats::HistogramValues;
pub use sys::VERSION;

/// The subscription index and the session it points to (counted in gauges), for the matching
/// micro-benchmark.
pub use gauges::SessionGauges;
pub use session::Session;
pub use subscriptions::{Subscriber, SubscriptionTree};

//! Tessera's load generator: a lean MQTT client on the broker's own codec and the benchmark
//! scenarios, each bounded in time and count, checking that nothing was lost (QoS 1 counts are
//! exact and made at the subscribers).

pub mod client;
pub mod scenarios;
pub mod tls;

//! End-to-end tests: the real `tessera` binary on free loopback ports, driven by real clients
//! (rumqttc 5.0 and 3.1.1, mosquitto_pub / mosquitto_sub) and by a byte-level client for the
//! exact packets the specification requires.

mod harness;
mod https;
mod idp;
mod in_band;
mod pki;
mod raw;

mod bad_input;
mod certificates;
mod clients;
mod cluster;
mod cluster_harness;
mod cluster_qos2;
mod cluster_sessions;
mod cluster_shared;
mod cluster_wills;
mod console;
mod crash;
mod durability;
mod features;
mod issuers;
mod js_clients;
mod limits;
mod metrics;
mod oauth;
mod oauth_flows;
mod operations;
mod sessions;
mod transports;

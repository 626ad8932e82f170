//! Tessera's MQTT engine.
pub mod codec;

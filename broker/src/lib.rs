//! Tessera's MQTT engine: the wire codec, sessions, routing, retained messages, wills, flow
//! control and the listeners. It knows authentication only through the [`auth`] seam.

pub mod auth;
pub mod broker;
pub mod codec;
mod connection;
mod delivery;
mod handshake;
pub mod message;
mod outbuf;
mod protocol;
pub mod retained;
pub mod session;
pub mod stats;
pub mod store;
pub mod subscriptions;

pub use broker::{Broker, BrokerHandle, ConnectionInfo};
pub use connection::serve;
pub mod listener;
pub mod server;
pub mod sys;
pub mod tls;
mod websocket;

pub use server::Server;

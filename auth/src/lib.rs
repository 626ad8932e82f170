//! Tessera's token service: users, OAuth clients and tokens in a store behind [`kv::KvStore`]
//! (redb by default), the OAuth2 HTTPS endpoint, the operator commands, and the `X-OAUTH2`
//! mechanism that implements the broker's authentication seam.

pub mod acl;
pub mod admin;
pub mod audit;
pub mod backoff;
pub mod clock;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod issuers;
pub mod kv;
pub mod mechanism;
pub mod metrics;
pub mod model;
pub mod redb_store;
pub mod revocation;
pub mod secrets;
pub mod service;

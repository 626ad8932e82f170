//! JWTs already verified, by the SHA-256 of the whole token (signature included, so only the
//! very token verified matches): a device reconnecting with its token pays a hash and a lookup,
//! not a signature check (61 µs for ES256 here). An entry is good while the token's `exp` and
//! `nbf` say so (checked again on every hit) and while its issuer's keys are the ones it was
//! verified under (a fetch that brings another set of keys makes every entry of that issuer
//! stale, so a key the provider withdrew verifies nothing more). Revocation by `jti` is
//! checked on every login after this (`mechanism::token`).

use std::collections::HashMap;

use parking_lot::RwLock;

use super::ExternalToken;

/// Entries kept at most; past it, expired ones go first, then all.
const KEPT: usize = 100_000;

pub(super) struct Entry {
    /// Which issuer (its place in `Issuers`), and under which of its key sets.
    pub issuer: usize,
    pub generation: u64,
    pub token: ExternalToken,
    /// `exp` and `nbf` in seconds since the epoch.
    pub exp: f64,
    pub nbf: Option<f64>,
}

#[derive(Default)]
pub(super) struct Verified {
    map: RwLock<HashMap<[u8; 32], Entry>>,
}

impl Verified {
    /// The token verified as `digest`, if still good under `generation(issuer)` at `now`
    /// with `leeway(issuer)` seconds.
    pub fn get(
        &self,
        digest: &[u8; 32],
        now: f64,
        generation: impl Fn(usize) -> u64,
        leeway: impl Fn(usize) -> f64,
    ) -> Option<ExternalToken> {
        let map = self.map.read();
        let e = map.get(digest)?;
        let l = leeway(e.issuer);
        let good = e.generation == generation(e.issuer)
            && e.exp + l > now
            && e.nbf.is_none_or(|nbf| nbf <= now + l);
        good.then(|| e.token.clone())
    }

    pub fn insert(&self, digest: [u8; 32], entry: Entry, now: f64) {
        let mut map = self.map.write();
        if map.len() >= KEPT {
            map.retain(|_, e| e.exp > now);
            if map.len() >= KEPT {
                map.clear();
            }
        }
        map.insert(digest, entry);
    }
}

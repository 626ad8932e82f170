//! The fuzz targets' corpora and every input that once crashed one (`fuzz/corpus`,
//! `fuzz/regressions`), replayed through the same entry points, so the normal test suite keeps
//! what fuzzing found fixed. `scripts/fuzz.sh` grows the corpora.

use tessera_broker::fuzzing::{connection, decode, replay};

#[test]
fn decoder_corpus() {
    assert!(replay("decode", decode) > 0, "no corpus for decode");
}

#[test]
fn connection_corpus() {
    assert!(
        replay("connection", connection) > 0,
        "no corpus for connection"
    );
}

#[test]
fn config_corpus() {
    let n = replay("config", |data| {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = tessera_config::Config::parse(text, "fuzz.yml");
        }
    });
    assert!(n > 0, "no corpus for config");
}

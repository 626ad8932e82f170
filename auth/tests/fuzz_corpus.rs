//! The token service's fuzz corpora and every input that once crashed a target
//! (`fuzz/corpus`, `fuzz/regressions`), replayed through the same entry points, so the normal
//! test suite keeps what fuzzing found fixed. `scripts/fuzz.sh` grows the corpora.

use tessera_auth::fuzzing::{oauth_form, x_oauth2};
use tessera_broker::fuzzing::replay;

#[test]
fn oauth_form_corpus() {
    assert!(
        replay("oauth_form", oauth_form) > 0,
        "no corpus for oauth_form"
    );
}

#[test]
fn x_oauth2_corpus() {
    assert!(replay("x_oauth2", x_oauth2) > 0, "no corpus for x_oauth2");
}

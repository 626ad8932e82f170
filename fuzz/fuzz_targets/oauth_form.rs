#![no_main]
//! See `tessera_auth::fuzzing::oauth_form`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_auth::fuzzing::oauth_form(data));

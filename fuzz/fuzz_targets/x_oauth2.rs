#![no_main]
//! See `tessera_auth::fuzzing::x_oauth2`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_auth::fuzzing::x_oauth2(data));

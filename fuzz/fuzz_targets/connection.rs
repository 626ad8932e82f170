#![no_main]
//! See `tessera_broker::fuzzing::connection`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_broker::fuzzing::connection(data));

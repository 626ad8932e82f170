#![no_main]
//! See `tessera_broker::fuzzing::decode`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tessera_broker::fuzzing::decode(data));

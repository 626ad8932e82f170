#![no_main]
//! The configuration parser: any text gets a configuration or an error naming where, never a
//! panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tessera_config::Config::parse(text, "fuzz.yml");
    }
});

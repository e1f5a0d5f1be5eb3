//! `SERVING_READINESS_PROBE` (single and multi-container forms): any input parses or errors,
//! never panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = queue_proxy::probe::parse_specs(text, false);
        let _ = queue_proxy::probe::parse_specs(text, true);
    }
});

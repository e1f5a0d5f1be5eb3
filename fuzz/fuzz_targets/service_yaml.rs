//! `activator local`'s Service YAML, including the autoscaling annotations it validates.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = activator::local::manifest::parse(
            &[("fuzz.yaml", text)],
            &autoscaler::Config::default(),
        );
    }
});

//! The activator's file source (`--source file:`): JSON or YAML catalog documents.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = activator::source::file::parse(std::path::Path::new("fuzz.yaml"), text);
    }
});

//! The HTTP/1 framing tracker behind the `400` for ambiguous requests (`shared::http::framing`):
//! arbitrary bytes in arbitrary read sizes never panic, and splitting the input differently
//! never changes the verdicts.
#![no_main]

use shared::http::framing::{Tracker, Verdict};

fn run(data: &[u8], split: usize) -> (Vec<Verdict>, bool) {
    let mut t = Tracker::new(64 * 1024, 100);
    let mut out = Vec::new();
    for chunk in data.chunks(split.max(1)) {
        t.feed(chunk, &mut |v| out.push(v));
    }
    (out, t.is_passthrough())
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    assert_eq!(run(rest, usize::from(split)), run(rest, rest.len().max(1)));
});

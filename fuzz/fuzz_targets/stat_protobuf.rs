//! The `Stat` protobuf decoders: a queue-proxy scrape (`Stat`) and the activator's websocket
//! frames (`WireStatMessages`). A decoded message must re-encode and decode to itself.
#![no_main]

use prost::Message;
use shared::stats::{Stat, WireStatMessages};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Stat::decode(data) {
        let again = Stat::decode(s.encode_to_vec().as_slice()).expect("re-encoded Stat decodes");
        // NaN != NaN, so compare the encodings.
        assert_eq!(again.encode_to_vec(), s.encode_to_vec());
    }
    if let Ok(m) = WireStatMessages::decode(data) {
        let again = WireStatMessages::decode(m.encode_to_vec().as_slice())
            .expect("re-encoded WireStatMessages decodes");
        assert_eq!(again.encode_to_vec(), m.encode_to_vec());
    }
});

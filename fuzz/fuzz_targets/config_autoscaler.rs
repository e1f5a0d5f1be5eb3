//! `config-autoscaler` values: the input is `key=value` lines (a ConfigMap's data), plus each
//! value through the Go-compatible scalar parsers on its own.
#![no_main]

use std::collections::BTreeMap;

use autoscaler::goparse;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        let _ = goparse::parse_bool(v);
        let _ = goparse::parse_float(v);
        let _ = goparse::parse_int32(v);
        let _ = goparse::parse_atoi(v);
        let _ = goparse::parse_duration(v);
        map.insert(k.to_owned(), v.to_owned());
    }
    let _ = autoscaler::Config::from_map(&map);
});

//! Policy loading over three arbitrary files: people.yaml, hosts.yaml and one contract.
//!
//! Input: the three texts separated by NUL bytes (YAML never needs one, so the fuzzer can
//! mutate each part freely); missing parts are empty. Bytes are read as lossy UTF-8, as an
//! editor would have saved them.
//!
//! Properties: `load_texts` never panics, and every problem it reports points at a real
//! place (`line >= 1`, `col >= 1`), because `policy check` prints `file:line:col`.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (people, hosts, contract) = (next(), next(), next());
    let files = [
        (PathBuf::from("people.yaml"), people),
        (PathBuf::from("hosts.yaml"), hosts),
        (PathBuf::from("c.yaml"), contract),
    ];
    if let Err(problems) = ramp_ca::domain::policy::load_texts(&files) {
        assert!(!problems.0.is_empty(), "Err with no problems");
        for p in &problems.0 {
            assert!(
                p.line >= 1 && p.col >= 1,
                "problem without a position: {p:?}"
            );
        }
        // The text `policy check` prints must render too.
        let _ = problems.to_string();
    }
});

//! The small string parsers that sit on trust boundaries: the SSH login name
//! (`PRINCIPAL@TARGET`), durations, host globs and principal names.
//!
//! Input: lossy UTF-8. For `glob_match` it is split at the first NUL into pattern and text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ramp_ca::domain::login::parse_login_name;
use ramp_ca::domain::policy::{
    format_duration, glob_match, parse_duration, principal_problem, MAX_DURATION,
};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let s = s.as_ref();

    // Login name: the target is after the last `@`, so it can never contain one (host names
    // have none), and nothing is lost or invented.
    let (principal, target) = parse_login_name(s);
    assert!(!target.contains('@'), "target {target:?} from {s:?}");
    match principal {
        Some(p) => assert_eq!(format!("{p}@{target}"), s),
        None => assert_eq!(target, s),
    }

    // Durations: accepted ones are in range and survive formatting.
    if let Some(d) = parse_duration(s) {
        assert!(d.as_secs() > 0 && d <= MAX_DURATION, "{s:?} -> {d:?}");
        assert_eq!(parse_duration(&format_duration(d)), Some(d), "{s:?}");
    }

    // Principals: an accepted one is safe to put in a certificate.
    if principal_problem(s).is_none() {
        assert!(!s.is_empty() && s.len() <= 256, "{s:?}");
        assert!(!s.contains([',', '*', '?', '"', '\'']), "{s:?}");
        assert!(
            !s.chars().any(|c| c.is_whitespace() || c.is_control()),
            "{s:?}"
        );
    }

    // Globs: never panic; a pattern matches itself (`?` and `*` match their own characters)
    // and `*` matches everything.
    let (pattern, text) = s.split_once('\0').unwrap_or((s, ""));
    let _ = glob_match(pattern, text);
    assert!(
        glob_match(pattern, pattern),
        "{pattern:?} does not match itself"
    );
    assert!(glob_match("*", text));
});

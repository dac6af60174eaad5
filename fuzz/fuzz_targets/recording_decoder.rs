//! Session recordings as the recording files hold them, and everything that reviews them.
//!
//! Input: the events of one recording file. Properties: `decode_events` never panics; the
//! whole-event prefix that `whole_len` measures (what a follower reads, and a restart keeps)
//! decodes, and is everything exactly when the whole input decodes; input it accepts
//! re-encodes to exactly the same bytes; asciicast export, JSON export and grep never panic
//! over the events, and every asciicast line is valid JSON (what `asciinema play` needs).
#![no_main]

use chrono::TimeZone;
use libfuzzer_sys::fuzz_target;
use ramp_ca::domain::session::{SessionMeta, SessionState};
use ramp_ca::recordings::export;
use ramp_ca::recordings::format::{decode_events, encode_event, whole_len};
use ramp_ca::recordings::search;

fn meta() -> SessionMeta {
    SessionMeta {
        id: "s-fuzz".into(),
        user: "alice".into(),
        key_id: "ramp:alice:prod-db:observe:g-fuzz".into(),
        principal: "readonly".into(),
        target: "db-1".into(),
        kind: "shell".into(),
        term: Some("xterm-256color".into()),
        cols: 80,
        rows: 24,
        start: chrono::Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap(),
        state: SessionState::Ended,
        exit_status: Some(0),
        ..SessionMeta::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let kept = whole_len(data);
    assert!(
        decode_events(&data[..kept]).is_ok(),
        "the whole-event prefix must decode"
    );
    let Ok(events) = decode_events(data) else {
        assert!(kept < data.len(), "an undecodable recording cannot be all whole events");
        return;
    };
    assert_eq!(kept, data.len(), "a decodable recording is all whole events");
    let mut again = Vec::with_capacity(data.len());
    for e in &events {
        encode_event(&mut again, e.at_ms, e.kind, &e.data);
    }
    assert_eq!(again, data, "decode/encode is not a round trip");

    let meta = meta();
    let cast = export::to_asciicast(&meta, &events);
    let lines: Vec<&str> = cast.lines().collect();
    assert_eq!(
        lines.len(),
        events.len() + 1,
        "one header line plus one per event"
    );
    for line in lines {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(line) {
            panic!("asciicast line is not JSON ({e}): {line:?}");
        }
    }
    let _ = export::to_json(&meta, &events).to_string();
    let hits = search::grep(&meta, &events, "x", 10);
    assert!(hits.len() <= 10);
    assert!(hits.iter().all(|h| h.line.contains('x')));
});

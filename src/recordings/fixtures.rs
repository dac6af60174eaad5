//! Test data for recordings: a session's metadata and events of each kind.

use chrono::TimeZone;

use super::format::{Event, EventKind};
use crate::domain::session::{SessionMeta, SessionState};

pub fn meta() -> SessionMeta {
    SessionMeta {
        id: "s-1".into(),
        user: "alice".into(),
        grant: "g-1".into(),
        serial: 7,
        key_id: "alice-g-1".into(),
        principal: "postgres".into(),
        target: "db1".into(),
        client: "192.0.2.1:50000".into(),
        kind: "exec".into(),
        command: Some("psql".into()),
        term: None,
        cols: 100,
        rows: 30,
        start: chrono::Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap(),
        state: SessionState::Ended,
        exit_status: Some(0),
        ..SessionMeta::default()
    }
}

pub fn ev(at_ms: u64, kind: EventKind, data: &[u8]) -> Event {
    Event {
        at_ms,
        kind,
        data: data.to_vec(),
    }
}

pub fn out(at_ms: u64, data: &[u8]) -> Event {
    ev(at_ms, EventKind::Output, data)
}

pub fn inp(at_ms: u64, data: &[u8]) -> Event {
    ev(at_ms, EventKind::Input, data)
}

pub fn resize(at_ms: u64, data: &[u8]) -> Event {
    ev(at_ms, EventKind::Resize, data)
}

/// A session with every kind of event and the two decoding hazards.
pub fn session() -> Vec<Event> {
    vec![
        out(0, b"caf\xc3"),
        inp(1200, b"ls\r"),
        out(1500, b"\xa9 \x1b[1mbold\x1b[0m\r\n"),
        out(2250, b"bad\xff\r\n"),
        resize(3000, b"120x40"),
    ]
}

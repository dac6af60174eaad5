//! A recording's timed events and their compact binary encoding (what a recording file
//! holds after its header line). Pure: no IO, no clock.
//!
//! Encoding of one event: `kind: u8` (`o` output, `i` input, `r` resize), `at_ms: u64` BE
//! (milliseconds since the session started), `len: u32` BE, then `len` bytes. A resize's
//! bytes are `COLSxROWS` in ASCII. A recording is these events back to back.

use serde::{Deserialize, Serialize};

use crate::domain::session::terminal_size;

/// What one event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Output,
    Input,
    Resize,
}

impl EventKind {
    fn code(self) -> u8 {
        match self {
            EventKind::Output => b'o',
            EventKind::Input => b'i',
            EventKind::Resize => b'r',
        }
    }

    fn from_code(c: u8) -> Option<EventKind> {
        match c {
            b'o' => Some(EventKind::Output),
            b'i' => Some(EventKind::Input),
            b'r' => Some(EventKind::Resize),
            _ => None,
        }
    }
}

/// One timed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Milliseconds since the session started.
    pub at_ms: u64,
    pub kind: EventKind,
    pub data: Vec<u8>,
}

impl Event {
    /// A resize's size, when this is one.
    pub fn size(&self) -> Option<(u32, u32)> {
        if self.kind != EventKind::Resize {
            return None;
        }
        let text = std::str::from_utf8(&self.data).ok()?;
        let (c, r) = text.split_once('x')?;
        Some(terminal_size(c.parse().ok()?, r.parse().ok()?))
    }
}

const HEADER: usize = 1 + 8 + 4;

/// Appends one encoded event to `out`.
pub fn encode_event(out: &mut Vec<u8>, at_ms: u64, kind: EventKind, data: &[u8]) {
    out.reserve(HEADER + data.len());
    out.push(kind.code());
    out.extend_from_slice(&at_ms.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// Sizes of one encoded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Its data bytes.
    pub data: usize,
    /// Header and data.
    pub total: usize,
}

/// The kind and size of the event at the start of `bytes`, if it is complete and valid.
pub fn event_extent(bytes: &[u8]) -> Option<(EventKind, Extent)> {
    let kind = EventKind::from_code(*bytes.first()?)?;
    let len = u32::from_be_bytes(bytes.get(9..HEADER)?.try_into().expect("4 bytes")) as usize;
    let total = HEADER.checked_add(len)?;
    (bytes.len() >= total).then_some((kind, Extent { data: len, total }))
}

/// Why a chunk could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("event at byte {0} is truncated")]
    Truncated(usize),
    #[error("unknown event kind {kind:#04x} at byte {at}")]
    UnknownKind { kind: u8, at: usize },
}

/// Decodes a chunk of events.
pub fn decode_events(mut bytes: &[u8]) -> Result<Vec<Event>, DecodeError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while !bytes.is_empty() {
        let Some((kind, extent)) = event_extent(bytes) else {
            return Err(match EventKind::from_code(bytes[0]) {
                None if bytes.len() >= HEADER => DecodeError::UnknownKind {
                    kind: bytes[0],
                    at: offset,
                },
                _ => DecodeError::Truncated(offset),
            });
        };
        out.push(Event {
            at_ms: u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes")),
            kind,
            data: bytes[HEADER..extent.total].to_vec(),
        });
        bytes = &bytes[extent.total..];
        offset += extent.total;
    }
    Ok(out)
}

/// How many leading bytes of `bytes` are whole events (the rest is an event still being
/// written, or cut by a crash).
pub fn whole_len(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Some((_, extent)) = event_extent(&bytes[at..]) {
        at += extent.total;
    }
    at
}

/// Each event's bytes as text, index for index: output and input are each decoded as one
/// UTF-8 stream, so a character split across two events of the same direction (whatever
/// comes between them) is emitted whole with the later one. Invalid bytes become U+FFFD,
/// as does a character still incomplete at the end of its stream. Resize bytes are ASCII
/// and decoded on their own. Lazy, so a search that stops early decodes no further.
pub fn texts(events: &[Event]) -> impl Iterator<Item = String> + '_ {
    // The last event of each direction flushes its stream's leftovers instead of carrying.
    let last_output = events.iter().rposition(|e| e.kind == EventKind::Output);
    let last_input = events.iter().rposition(|e| e.kind == EventKind::Input);
    let mut carry_output = Vec::new();
    let mut carry_input = Vec::new();
    events.iter().enumerate().map(move |(i, event)| {
        let (carry, last) = match event.kind {
            EventKind::Output => (&mut carry_output, last_output == Some(i)),
            EventKind::Input => (&mut carry_input, last_input == Some(i)),
            EventKind::Resize => {
                return match event.size() {
                    Some((cols, rows)) => format!("{cols}x{rows}"),
                    None => String::from_utf8_lossy(&event.data).into_owned(),
                }
            }
        };
        let mut bytes = std::mem::take(carry);
        bytes.extend_from_slice(&event.data);
        let mut text = String::with_capacity(bytes.len());
        let mut rest = &bytes[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    text.push_str(valid);
                    break;
                }
                Err(e) => {
                    let (valid, tail) = rest.split_at(e.valid_up_to());
                    text.push_str(std::str::from_utf8(valid).expect("checked by from_utf8"));
                    match e.error_len() {
                        // A byte sequence that can never become a character.
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = &tail[bad..];
                        }
                        // A character cut short by the event boundary: its rest is coming.
                        None if !last => {
                            *carry = tail.to_vec();
                            break;
                        }
                        None => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            break;
                        }
                    }
                }
            }
        }
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recordings::fixtures::{inp, out, resize};

    #[test]
    fn events_round_trip_and_bad_chunks_are_errors() {
        let mut buf = Vec::new();
        encode_event(&mut buf, 0, EventKind::Output, b"hello\r\n");
        encode_event(&mut buf, 1500, EventKind::Resize, b"120x40");
        encode_event(&mut buf, 1501, EventKind::Input, b"");
        let events = decode_events(&buf).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].data, b"hello\r\n");
        assert_eq!(events[1].size(), Some((120, 40)));
        assert_eq!(events[2].at_ms, 1501);
        assert_eq!(
            decode_events(&buf[..buf.len() - 1]),
            Err(DecodeError::Truncated(buf.len() - 13))
        );
        assert_eq!(decode_events(&buf[..5]), Err(DecodeError::Truncated(0)));
        assert!(matches!(
            decode_events(b"zzzzzzzzzzzzzzzz"),
            Err(DecodeError::UnknownKind { .. })
        ));
        let mut huge = vec![b'o'];
        huge.extend_from_slice(&0u64.to_be_bytes());
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode_events(&huge), Err(DecodeError::Truncated(0)));
    }

    #[test]
    fn streams_decode_per_direction() {
        fn check(name: &str, events: &[Event], expected: &[&str]) {
            assert_eq!(texts(events).collect::<Vec<_>>(), expected, "{name}");
        }
        check("ascii", &[out(0, b"hi")], &["hi"]);
        check(
            "split é",
            &[out(0, b"caf\xc3"), out(1, b"\xa9!")],
            &["caf", "é!"],
        );
        check(
            "input between the halves does not break the output stream",
            &[
                out(0, b"\xc3"),
                inp(1, b"\xe2\x82"),
                out(2, b"\xa9"),
                inp(3, b"\xac"),
            ],
            &["", "", "é", "€"],
        );
        check(
            "4 bytes over 3 events",
            &[out(0, b"\xf0\x9f"), out(1, b"\x98"), out(2, b"\x80")],
            &["", "", "😀"],
        );
        check("invalid byte", &[out(0, b"a\xffb")], &["a\u{fffd}b"]);
        check(
            "broken sequence",
            &[out(0, b"\xc3"), out(1, b"x")],
            &["", "\u{fffd}x"],
        );
        check("cut at the end", &[out(0, b"ok\xe2\x82")], &["ok\u{fffd}"]);
        check("resize", &[resize(0, b"120x40")], &["120x40"]);
    }
}

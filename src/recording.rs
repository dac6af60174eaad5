//! Session recordings as data: the metadata of a session and its timed events, with the
//! compact binary encoding the ledger stores them in. Pure: no IO, no clock.
//!
//! Encoding of one event: `kind: u8` (`o` output, `i` input, `r` resize), `at_ms: u64` BE
//! (milliseconds since the session started), `len: u32` BE, then `len` bytes. A resize's
//! bytes are `COLSxROWS` in ASCII. A recording is these events back to back.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The terminal size a client asked for, where zero (what `ssh -tt` from a script often
/// reports) means the usual 80x24.
pub fn terminal_size(cols: u32, rows: u32) -> (u32, u32) {
    (
        if cols == 0 { 80 } else { cols },
        if rows == 0 { 24 } else { rows },
    )
}

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Running now (or the daemon died while it ran and has not restarted yet).
    Live,
    Ended,
    /// The daemon stopped without ending it (kill -9, power loss): everything up to the
    /// last flush is there.
    Interrupted,
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SessionState::Live => "live",
            SessionState::Ended => "ended",
            SessionState::Interrupted => "interrupted",
        })
    }
}

/// Everything known about one recorded session (one channel through the bastion).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMeta {
    pub id: String,
    pub user: String,
    pub grant: String,
    pub serial: u64,
    pub key_id: String,
    /// The account on the target.
    pub principal: String,
    pub target: String,
    /// Address of the engineer's client.
    pub client: String,
    /// `shell`, `exec`, `subsystem`, or `direct-tcpip`.
    pub kind: String,
    /// The command (exec), subsystem name, or `host:port` (direct-tcpip).
    pub command: Option<String>,
    pub term: Option<String>,
    /// Terminal size at the start (80x24 when no pty was asked for).
    pub cols: u32,
    pub rows: u32,
    pub start: DateTime<Utc>,
    /// Set when the session ends; for an interrupted one, the time of its last flush.
    pub end: Option<DateTime<Utc>>,
    pub state: SessionState,
    pub exit_status: Option<u32>,
    /// Why it ended, when the bastion ended it (expiry, revocation, shutdown).
    pub end_reason: Option<String>,
    /// Bytes from the client to the target.
    pub bytes_in: u64,
    /// Bytes from the target to the client.
    pub bytes_out: u64,
    /// Files an sftp or scp session touched, as `op path`.
    pub files: Vec<String>,
    /// Environment variables the client passed to the target, as `NAME=value`.
    #[serde(default)]
    pub env: Vec<String>,
    /// Length and hash of the recording file, set when the session ends or is found
    /// interrupted.
    #[serde(default)]
    pub recording: Option<RecordingSeal>,
    /// The audit record that ended the session and carries the same seal, so a read checks
    /// the two against each other without scanning the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_in: Option<u64>,
}

impl SessionMeta {
    /// The terminal size at the start, zero read as the default (older recordings kept 0x0).
    pub fn size(&self) -> (u32, u32) {
        terminal_size(self.cols, self.rows)
    }
}

/// What a finished recording must be: its event bytes and their BLAKE3 hash (hex; `b3sum`
/// of the file without its header line). BLAKE3 rather than SHA-256 because every recorded
/// byte is hashed on the bastion: SHA-256 was 19% of its CPU in a bulk transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingSeal {
    pub bytes: u64,
    pub blake3: String,
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
}

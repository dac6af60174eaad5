//! Reviewing recordings: asciicast and JSON export, timed playback, search. Pure except
//! [`play`], which writes to a terminal with real timing.
//!
//! A recording stores raw bytes exactly as they crossed the channel, so one character can be
//! split over two events and the text is full of terminal escape sequences. Everything here
//! that turns bytes into text goes through `decode_streams`, and search additionally
//! through `AnsiStripper`, so that export and search always agree on what the text is.

use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::recording::{Event, EventKind, SessionMeta};

/// asciicast v2 (<https://docs.asciinema.org/manual/asciicast/v2/>) that stock `asciinema play`
/// plays.
///
/// Header line `{"version":2,"width":cols,"height":rows,"timestamp":start unix secs,
/// "title":"<user>@<target> as <principal> (<kind> <command>)","env":{"TERM":term or
/// "xterm-256color","SHELL":"/bin/sh"}}`, then one line per event: `[seconds with 6 decimals,
/// "o"|"i"|"r", text]`. Resize text is `COLSxROWS`.
///
/// Output and input bytes are decoded as UTF-8 *as a stream per direction*: a multi-byte
/// character split across two events comes out whole in the later one; invalid bytes (and
/// a character still incomplete when its stream ends) become U+FFFD. Every line is valid JSON.
pub fn to_asciicast(meta: &SessionMeta, events: &[Event]) -> String {
    let header = CastHeader {
        version: 2,
        width: meta.size().0,
        height: meta.size().1,
        timestamp: meta.start.timestamp(),
        title: title(meta),
        env: CastEnv {
            term: meta.term.as_deref().unwrap_or("xterm-256color"),
            shell: "/bin/sh",
        },
    };
    // Serializing plain strings and integers cannot fail.
    let mut out = serde_json::to_string(&header).expect("header serializes");
    out.push('\n');
    for (event, text) in events.iter().zip(decode_streams(events)) {
        let code = match event.kind {
            EventKind::Output => "o",
            EventKind::Input => "i",
            EventKind::Resize => "r",
        };
        // serde_json does the string escaping (control bytes, quotes, U+2028...); the time is
        // written by hand because serde_json prints the shortest float, not 6 fixed decimals.
        let _ = writeln!(
            out,
            "[{}, \"{code}\", {}]",
            seconds(event.at_ms),
            Value::String(text)
        );
    }
    out
}

/// The whole session as one JSON document, for tools rather than players:
/// `{"session": meta, "events": [{"t": secs, "kind": "output"|"input"|"resize",
/// "text": ..., "size": [cols, rows]}]}`.
///
/// `text` is decoded exactly as in [`to_asciicast`] (a UTF-8 stream per direction, lossy);
/// `size` is only present on resize events (and `null` if the resize bytes are malformed).
pub fn to_json(meta: &SessionMeta, events: &[Event]) -> Value {
    let events: Vec<Value> = events
        .iter()
        .zip(decode_streams(events))
        .map(|(event, text)| {
            let kind = match event.kind {
                EventKind::Output => "output",
                EventKind::Input => "input",
                EventKind::Resize => "resize",
            };
            let mut v = json!({ "t": event.at_ms as f64 / 1000.0, "kind": kind, "text": text });
            if event.kind == EventKind::Resize {
                v["size"] = json!(event.size());
            }
            v
        })
        .collect();
    json!({ "session": meta, "events": events })
}

/// One match of a search: which session, when, and the line of text.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hit {
    /// The session's id ([`SessionMeta::id`]), so hits from many sessions can be merged.
    pub session: String,
    /// Milliseconds since the session started, of the event where the line's text started:
    /// where to seek a player to see it.
    pub at_ms: u64,
    /// The matching line, without escape sequences or control characters (tabs stay).
    pub line: String,
}

/// Searches a session's *output and input* text for `pattern` (plain substring,
/// case-sensitive).
///
/// Text is the stream-decoded UTF-8 (as in [`to_asciicast`]) with ANSI escape sequences
/// (CSI `ESC [ ... final byte`, OSC `ESC ] ... BEL or ESC \`, other ESC sequences) and
/// control characters other than tab removed, split into lines on `\n`. In input `\r` also
/// ends a line, because that is what the Enter key sends; in output it is dropped (`\r\n`
/// line ends, progress redraws). Output and input are separate streams, so keystrokes never
/// interleave with the echo. A line may span several events; its `at_ms` is the time of the
/// event holding its first character. Empty lines are skipped.
///
/// Returns every matching line ordered by `at_ms` (output first on a tie), at most `limit`.
pub fn grep(meta: &SessionMeta, events: &[Event], pattern: &str, limit: usize) -> Vec<Hit> {
    let mut output = LineStream::new(false);
    let mut input = LineStream::new(true);
    // Each stream's lines come in time order, so the first `limit` hits overall are among the
    // first `limit` of each stream: capping per stream bounds memory on huge sessions.
    let mut out_hits = Matches::new(&meta.id, pattern, limit);
    let mut in_hits = Matches::new(&meta.id, pattern, limit);
    for (event, text) in events.iter().zip(decode_streams(events)) {
        if out_hits.full() && in_hits.full() {
            break;
        }
        match event.kind {
            EventKind::Output => output.feed(event.at_ms, &text, |t, l| out_hits.line(t, l)),
            EventKind::Input => input.feed(event.at_ms, &text, |t, l| in_hits.line(t, l)),
            EventKind::Resize => {}
        }
    }
    // A session that ended mid-line (a prompt, a killed command) still has that line.
    output.finish(|t, l| out_hits.line(t, l));
    input.finish(|t, l| in_hits.line(t, l));
    let mut hits = out_hits.hits;
    hits.append(&mut in_hits.hits);
    // Stable, so on equal times output stays ahead of input.
    hits.sort_by_key(|h| h.at_ms);
    hits.truncate(limit);
    hits
}

/// Plays output events to `out` with their real timing divided by `speed` (> 0), capping any
/// idle gap at `idle_cap` (in real seconds, before speed is applied: the wait is
/// `min(gap, idle_cap) / speed`).
///
/// Gaps are measured between output events, as `asciinema play` does, because only output is
/// shown. Resize events print nothing. Input events are not replayed: what the user typed is
/// already in the output as the remote echo, and replaying passwords typed without echo
/// would leak them. Flushes after each event so a terminal shows it at its time. Waits are
/// measured from the start of playback, not from the previous write, so slow writes do not
/// accumulate drift. A `speed` that is not a positive number is `InvalidInput`.
pub async fn play(
    events: &[Event],
    speed: f64,
    idle_cap: Duration,
    out: &mut (impl AsyncWrite + Unpin),
) -> io::Result<()> {
    if !(speed.is_finite() && speed > 0.0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("playback speed must be a positive number, not {speed}"),
        ));
    }
    let too_long = || io::Error::new(io::ErrorKind::InvalidInput, "playback delay out of range");
    let cap = idle_cap.as_secs_f64();
    let mut deadline = tokio::time::Instant::now();
    let mut prev_ms = 0;
    for event in events.iter().filter(|e| e.kind == EventKind::Output) {
        let gap = event.at_ms.saturating_sub(prev_ms) as f64 / 1000.0;
        prev_ms = prev_ms.max(event.at_ms);
        let wait = Duration::try_from_secs_f64(gap.min(cap) / speed).map_err(|_| too_long())?;
        deadline = deadline.checked_add(wait).ok_or_else(too_long)?;
        tokio::time::sleep_until(deadline).await;
        out.write_all(&event.data).await?;
        out.flush().await?;
    }
    Ok(())
}

/// Field order matters only to humans reading `head -1`, but a struct keeps it (a `json!`
/// map would sort the keys).
#[derive(Serialize)]
struct CastHeader<'a> {
    version: u8,
    width: u32,
    height: u32,
    timestamp: i64,
    title: String,
    env: CastEnv<'a>,
}

#[derive(Serialize)]
struct CastEnv<'a> {
    #[serde(rename = "TERM")]
    term: &'a str,
    #[serde(rename = "SHELL")]
    shell: &'a str,
}

/// `alice@db1 as postgres (exec pg_dump)`; a shell has no command: `(shell)`.
fn title(meta: &SessionMeta) -> String {
    let what = match &meta.command {
        Some(command) => format!("{} {command}", meta.kind),
        None => meta.kind.clone(),
    };
    format!(
        "{}@{} as {} ({what})",
        meta.user, meta.target, meta.principal
    )
}

/// Milliseconds as seconds with exactly 6 decimals, in integer arithmetic so large times
/// stay exact (an f64 would round them).
fn seconds(ms: u64) -> String {
    format!("{}.{:06}", ms / 1000, (ms % 1000) * 1000)
}

/// Each event's bytes as text, index for index: output and input are each decoded as one
/// UTF-8 stream, so a character split across two events of the same direction (whatever
/// comes between them) is emitted whole with the later one. Invalid bytes become U+FFFD,
/// as does a character still incomplete at the end of its stream. Resize bytes are ASCII
/// and decoded on their own. Lazy, so a search that stops early decodes no further.
fn decode_streams(events: &[Event]) -> impl Iterator<Item = String> + '_ {
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

/// Where [`AnsiStripper`] is inside an escape sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ansi {
    Text,
    /// After ESC.
    Esc,
    /// After ESC and intermediate bytes (`ESC ( B` selects a character set: three bytes).
    EscIntermediate,
    /// After `ESC [`, until the final byte.
    Csi,
    /// Inside an OSC (`ESC ]`) or another string (DCS, SOS, PM, APC), until BEL or ST.
    Str,
    /// ESC inside a string: `\` ends it, anything else starts a new sequence.
    StrEsc,
}

/// Removes terminal escape sequences from text one character at a time, so a sequence split
/// across events (or lines) is still recognized. Follows the usual VT parser rules: C0
/// controls inside CSI and ESC sequences still take effect, CAN and SUB abort a sequence.
#[derive(Debug)]
struct AnsiStripper {
    state: Ansi,
}

impl AnsiStripper {
    fn new() -> Self {
        AnsiStripper { state: Ansi::Text }
    }

    /// Whether `c` is text (or a control that acts on text, like `\n`) rather than part of
    /// an escape sequence.
    fn keep(&mut self, c: char) -> bool {
        const ESC: char = '\x1b';
        // Cancel and substitute abort any sequence.
        if matches!(c, '\x18' | '\x1a') {
            self.state = Ansi::Text;
            return false;
        }
        match self.state {
            Ansi::Text => {
                if c == ESC {
                    self.state = Ansi::Esc;
                    return false;
                }
                true
            }
            Ansi::Esc => match c {
                ESC => false,
                '[' => {
                    self.state = Ansi::Csi;
                    false
                }
                ']' | 'P' | 'X' | '^' | '_' => {
                    self.state = Ansi::Str;
                    false
                }
                '\x20'..='\x2f' => {
                    self.state = Ansi::EscIntermediate;
                    false
                }
                // A control in the middle of a sequence is still executed.
                '\0'..='\x1f' => true,
                _ => {
                    self.state = Ansi::Text;
                    false
                }
            },
            Ansi::EscIntermediate => self.sequence(c, '\x20'..='\x2f', '\x30'..='\x7e'),
            Ansi::Csi => self.sequence(c, '\x20'..='\x3f', '\x40'..='\x7e'),
            Ansi::Str => {
                match c {
                    '\x07' => self.state = Ansi::Text,
                    ESC => self.state = Ansi::StrEsc,
                    _ => {}
                }
                false
            }
            Ansi::StrEsc => {
                if c == '\\' {
                    self.state = Ansi::Text;
                    false
                } else {
                    self.state = Ansi::Esc;
                    self.keep(c)
                }
            }
        }
    }

    /// A sequence that continues with `middle` bytes and ends with a `last` byte.
    fn sequence(
        &mut self,
        c: char,
        middle: std::ops::RangeInclusive<char>,
        last: std::ops::RangeInclusive<char>,
    ) -> bool {
        if middle.contains(&c) {
            false
        } else if last.contains(&c) {
            self.state = Ansi::Text;
            false
        } else if c == '\x1b' {
            self.state = Ansi::Esc;
            false
        } else if c < '\x20' {
            true
        } else {
            // Not valid in a sequence (DEL, non-ASCII): the sequence was broken, show the text.
            self.state = Ansi::Text;
            c != '\x7f'
        }
    }
}

/// Cuts one direction's decoded text into stripped lines, remembering where each started.
#[derive(Debug)]
struct LineStream {
    ansi: AnsiStripper,
    /// Input: Enter sends `\r`. Output: terminals end lines with `\r\n`.
    cr_ends_line: bool,
    line: String,
    start_ms: u64,
}

impl LineStream {
    fn new(cr_ends_line: bool) -> Self {
        LineStream {
            ansi: AnsiStripper::new(),
            cr_ends_line,
            line: String::new(),
            start_ms: 0,
        }
    }

    /// Feeds one event's text; calls `done(start_ms, line)` for each line it completes.
    fn feed(&mut self, at_ms: u64, text: &str, mut done: impl FnMut(u64, &str)) {
        for c in text.chars() {
            if !self.ansi.keep(c) {
                continue;
            }
            match c {
                '\n' => self.end_line(&mut done),
                '\r' if self.cr_ends_line => self.end_line(&mut done),
                // BEL, backspace, a lone \r in output...: not text anyone searches for.
                c if c.is_control() && c != '\t' => {}
                c => {
                    if self.line.is_empty() {
                        self.start_ms = at_ms;
                    }
                    self.line.push(c);
                }
            }
        }
    }

    /// Ends the stream: a last line without a newline is still a line.
    fn finish(&mut self, mut done: impl FnMut(u64, &str)) {
        self.end_line(&mut done);
    }

    fn end_line(&mut self, done: &mut impl FnMut(u64, &str)) {
        if !self.line.is_empty() {
            done(self.start_ms, &self.line);
            self.line.clear();
        }
    }
}

/// The hits of one stream in [`grep`]: the first `limit` lines containing `pattern`.
struct Matches<'a> {
    session: &'a str,
    pattern: &'a str,
    limit: usize,
    hits: Vec<Hit>,
}

impl<'a> Matches<'a> {
    fn new(session: &'a str, pattern: &'a str, limit: usize) -> Self {
        Matches {
            session,
            pattern,
            limit,
            hits: Vec::new(),
        }
    }

    fn full(&self) -> bool {
        self.hits.len() >= self.limit
    }

    fn line(&mut self, at_ms: u64, line: &str) {
        if !self.full() && line.contains(self.pattern) {
            self.hits.push(Hit {
                session: self.session.to_string(),
                at_ms,
                line: line.to_string(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn meta() -> SessionMeta {
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
            end: None,
            state: crate::recording::SessionState::Ended,
            exit_status: Some(0),
            end_reason: None,
            bytes_in: 0,
            bytes_out: 0,
            files: Vec::new(),
            env: Vec::new(),
            recording: None,
            sealed_in: None,
        }
    }

    fn ev(at_ms: u64, kind: EventKind, data: &[u8]) -> Event {
        Event {
            at_ms,
            kind,
            data: data.to_vec(),
        }
    }

    fn out(at_ms: u64, data: &[u8]) -> Event {
        ev(at_ms, EventKind::Output, data)
    }

    fn inp(at_ms: u64, data: &[u8]) -> Event {
        ev(at_ms, EventKind::Input, data)
    }

    fn resize(at_ms: u64, data: &[u8]) -> Event {
        ev(at_ms, EventKind::Resize, data)
    }

    #[test]
    fn streams_decode_per_direction() {
        fn check(name: &str, events: &[Event], expected: &[&str]) {
            assert_eq!(
                decode_streams(events).collect::<Vec<_>>(),
                expected,
                "{name}"
            );
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

    /// A session with every kind of event and the two decoding hazards.
    fn session() -> Vec<Event> {
        vec![
            out(0, b"caf\xc3"),
            inp(1200, b"ls\r"),
            out(1500, b"\xa9 \x1b[1mbold\x1b[0m\r\n"),
            out(2250, b"bad\xff\r\n"),
            resize(3000, b"120x40"),
        ]
    }

    #[test]
    fn asciicast_header_and_lines_are_json() {
        let cast = to_asciicast(&meta(), &session());
        let lines: Vec<&str> = cast.lines().collect();
        assert!(cast.ends_with('\n'));
        let header: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(
            header,
            json!({
                "version": 2,
                "width": 100,
                "height": 30,
                "timestamp": 1735787045,
                "title": "alice@db1 as postgres (exec psql)",
                "env": {"TERM": "xterm-256color", "SHELL": "/bin/sh"},
            })
        );
        assert!(
            lines[0].starts_with(r#"{"version":2,"width":100,"#),
            "{}",
            lines[0]
        );
        let expected = [
            (0.0, "o", "caf"),
            (1.2, "i", "ls\r"),
            (1.5, "o", "é \x1b[1mbold\x1b[0m\r\n"),
            (2.25, "o", "bad\u{fffd}\r\n"),
            (3.0, "r", "120x40"),
        ];
        assert_eq!(lines.len(), 1 + expected.len());
        for (line, (t, code, text)) in lines[1..].iter().zip(expected) {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(v, json!([t, code, text]), "{line}");
        }
        assert!(lines[3].starts_with("[1.500000, \"o\", "), "{}", lines[3]);
        assert_eq!(seconds(u64::MAX), "18446744073709551.615000");
    }

    /// Regression: `ssh -tt` from a script reports 0x0; the export said width 0, height 0.
    #[test]
    fn a_zero_terminal_size_exports_as_the_default() {
        let mut m = meta();
        (m.cols, m.rows) = (0, 0);
        let cast = to_asciicast(&m, &[resize(10, b"0x0"), resize(20, b"100x0")]);
        let lines: Vec<serde_json::Value> = cast
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            (lines[0]["width"].as_u64(), lines[0]["height"].as_u64()),
            (Some(80), Some(24))
        );
        assert_eq!(lines[1][2], "80x24");
        assert_eq!(lines[2][2], "100x24");
    }

    #[test]
    fn asciicast_title_and_term() {
        let mut m = meta();
        m.kind = "shell".into();
        m.command = None;
        m.term = Some("screen".into());
        let cast = to_asciicast(&m, &[]);
        let header: Value = serde_json::from_str(cast.trim_end()).unwrap();
        assert_eq!(header["title"], "alice@db1 as postgres (shell)");
        assert_eq!(header["env"]["TERM"], "screen");
    }

    #[test]
    fn json_export() {
        let v = to_json(&meta(), &session());
        assert_eq!(v["session"], serde_json::to_value(meta()).unwrap());
        let events = v["events"].as_array().unwrap();
        assert_eq!(events.len(), 5);
        assert_eq!(
            events[0],
            json!({"t": 0.0, "kind": "output", "text": "caf"})
        );
        assert_eq!(
            events[1],
            json!({"t": 1.2, "kind": "input", "text": "ls\r"})
        );
        assert_eq!(events[2]["text"], "é \x1b[1mbold\x1b[0m\r\n");
        assert_eq!(events[3]["text"], "bad\u{fffd}\r\n");
        assert_eq!(
            events[4],
            json!({"t": 3.0, "kind": "resize", "text": "120x40", "size": [120, 40]})
        );
    }

    /// The real player accepts the file and shows the output. `asciinema cat` would be the
    /// natural command, but 2.2 opens /dev/tty unconditionally and fails without a
    /// controlling terminal (CI, `cargo test` under a service), so this uses `play`, which
    /// falls back to no keyboard input.
    #[tokio::test]
    async fn asciinema_plays_the_cast() {
        let mut events = session();
        events.push(out(9000, "ünïcode done\r\n".as_bytes()));
        let file = tempfile::Builder::new().suffix(".cast").tempfile().unwrap();
        std::fs::write(file.path(), to_asciicast(&meta(), &events)).unwrap();
        let mut cmd = tokio::process::Command::new("asciinema");
        cmd.args(["play", "-i", "0.01"])
            .arg(file.path())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let run = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("asciinema play timed out")
            .expect("asciinema is installed (scripts/install-deps)");
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{}: {stdout}{}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        );
        for text in ["café \x1b[1mbold", "bad\u{fffd}", "ünïcode done"] {
            assert!(stdout.contains(text), "{text:?} not in {stdout:?}");
        }
        assert!(!stdout.contains("ls"), "input is not played: {stdout:?}");
    }

    #[test]
    fn grep_lines() {
        fn check(
            name: &str,
            events: &[Event],
            pattern: &str,
            limit: usize,
            expected: &[(u64, &str)],
        ) {
            let got = grep(&meta(), events, pattern, limit);
            let got: Vec<(u64, &str)> = got
                .iter()
                .inspect(|h| assert_eq!(h.session, "s-1"))
                .map(|h| (h.at_ms, h.line.as_str()))
                .collect();
            assert_eq!(got, expected, "{name}");
        }
        check(
            "a line split across events starts at its first event",
            &[
                out(100, b"first\r\nhel"),
                out(200, b"lo wor"),
                out(300, b"ld\r\nlast\r\n"),
            ],
            "hello world",
            10,
            &[(100, "hello world")],
        );
        check(
            "colors are stripped",
            &[out(
                0,
                b"\x1b[01;32malice@db1\x1b[00m:\x1b[01;34m~\x1b[00m$ ls\r\n",
            )],
            "alice@db1:~$ ls",
            10,
            &[(0, "alice@db1:~$ ls")],
        );
        check(
            "OSC titles, charsets and 2-byte sequences are stripped",
            &[out(
                0,
                b"\x1b]0;title\x07\x1b]2;t2\x1b\\\x1b(B\x1b7\x1b=x\x07y\r\n",
            )],
            "",
            10,
            &[(0, "xy")],
        );
        check(
            "an escape split across events, line starts at the first text",
            &[out(10, b"\x1b[3"), out(20, b"1mred\x1b"), out(30, b"[0m\n")],
            "red",
            10,
            &[(20, "red")],
        );
        check(
            "a split character matches",
            &[out(0, b"caf\xc3"), out(5, b"\xa9\n")],
            "café",
            10,
            &[(0, "café")],
        );
        check(
            "limit",
            &[out(0, b"a1\na2\n"), out(10, b"a3\nb\na4\n")],
            "a",
            2,
            &[(0, "a1"), (0, "a2")],
        );
        check("limit 0", &[out(0, b"a\n")], "a", 0, &[]);
        check("case-sensitive", &[out(0, b"Secret\n")], "secret", 10, &[]);
        check(
            "input lines end at Enter; output and input interleave by time",
            &[
                inp(100, b"echo se"),
                out(101, b"echo se"),
                inp(200, b"cret\r"),
                out(201, b"cret\r\nsecret\r\n"),
                inp(300, b"exit secret\r"),
            ],
            "secret",
            10,
            &[
                (100, "echo secret"),
                (101, "echo secret"),
                (201, "secret"),
                (300, "exit secret"),
            ],
        );
        check(
            "the last line needs no newline; empty lines never match",
            &[out(0, b"\r\n\r\n$ "), inp(50, b"tail")],
            "",
            10,
            &[(0, "$ "), (50, "tail")],
        );
        check(
            "resizes are not text",
            &[resize(0, b"80x24")],
            "80",
            10,
            &[],
        );
    }

    #[tokio::test]
    async fn play_writes_output_with_capped_gaps() {
        let events = [
            out(0, b"one "),
            inp(50, b"typed"),
            resize(60, b"120x40"),
            out(100, b"two "),
            out(5100, b"three\r\n"),
        ];
        let mut written = Vec::new();
        let started = tokio::time::Instant::now();
        play(&events, 1000.0, Duration::from_millis(10), &mut written)
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(written, b"one two three\r\n");
    }

    #[tokio::test]
    async fn play_rejects_bad_speeds() {
        for speed in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = play(
                &[out(0, b"x")],
                speed,
                Duration::from_secs(1),
                &mut Vec::new(),
            )
            .await
            .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{speed}");
        }
        let err = play(
            &[out(u64::MAX, b"x")],
            f64::MIN_POSITIVE,
            Duration::MAX,
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}

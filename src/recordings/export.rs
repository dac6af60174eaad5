//! Recordings as people take them away: asciicast v2 (plays in stock `asciinema play`), JSON
//! with every event, and timed playback to a terminal. Pure except [`play`], which writes
//! with real timing. Text is decoded by [`super::format::texts`], as search decodes it, so
//! export and search always agree on what the text is.

use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::format::{texts, Event, EventKind};
use crate::domain::session::SessionMeta;
use crate::wire::sessions::Session;

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
    for (event, text) in events.iter().zip(texts(events)) {
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
        .zip(texts(events))
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
    json!({ "session": Session::from(meta.clone()), "events": events })
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
    play_from(events, 0, speed, idle_cap, out).await
}

/// [`play`] from `from_ms` into the session: everything before it is written at once (so the
/// terminal shows what it showed then), the rest with its timing.
pub async fn play_from(
    events: &[Event],
    from_ms: u64,
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
    let output = || events.iter().filter(|e| e.kind == EventKind::Output);
    for event in output().take_while(|e| e.at_ms < from_ms) {
        out.write_all(&event.data).await?;
    }
    out.flush().await?;
    let mut deadline = tokio::time::Instant::now();
    let mut prev_ms = from_ms;
    for event in output().skip_while(|e| e.at_ms < from_ms) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recordings::fixtures::{inp, meta, out, resize, session};

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

    /// Issue 12: `sessions play --from OFFSET`.
    #[tokio::test]
    async fn play_from_an_offset_shows_what_came_before_at_once() {
        let events = [out(0, b"one "), out(1000, b"two "), out(4000, b"three")];
        let mut written = Vec::new();
        play_from(&events, 3000, 1000.0, Duration::from_secs(60), &mut written)
            .await
            .unwrap();
        assert_eq!(written, b"one two three");
        let mut late = Vec::new();
        play_from(&events, 9000, 1000.0, Duration::from_secs(60), &mut late)
            .await
            .unwrap();
        assert_eq!(
            late, b"one two three",
            "past the end: the whole screen, at once"
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

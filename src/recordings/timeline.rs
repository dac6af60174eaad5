//! A session's command timeline (`sessions show ID --commands`): the exec command, the lines
//! typed at its terminal as the terminal showed them at Enter (line editing, history recall,
//! Tab completion and paste resolved through a terminal emulator, see [`TypedLines`]; raw
//! keys with line editing applied, [`LineCutter`], for a session without a pty), and its
//! flags, each with its offset into the recording. Pure.

use serde::Serialize;

use super::format::{Event, EventKind};
use super::typed::TypedLines;
use crate::domain::flags::LineCutter;
use crate::domain::session::SessionMeta;
use crate::domain::Vocabulary;

/// One entry of the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Milliseconds into the recording (where to seek a player).
    pub at_ms: u64,
    /// `exec`, `typed`, `keys` (typed at a terminal that did not show it: echo off),
    /// `file` or `flag`.
    pub kind: &'static str,
    pub line: String,
}

/// The timeline of `meta`'s session from its `events`, oldest first. File operations carry
/// no time of their own (the session keeps them as a set): they come at 0.
pub fn commands(meta: &SessionMeta, events: &[Event]) -> Vec<Entry> {
    let mut out = Vec::new();
    let entry = |at_ms, kind, line: &str| Entry {
        at_ms,
        kind,
        line: crate::shown::shown(line).into_owned(),
    };
    if meta.kind == "exec" {
        if let Some(cmd) = &meta.command {
            out.push(entry(0, "exec", cmd));
        }
    }
    out.extend(meta.files.iter().map(|f| entry(0, "file", f)));
    if meta.term.is_some() {
        let (cols, rows) = meta.size();
        let mut typed = TypedLines::new(cols, rows);
        for e in events {
            typed.feed(e);
        }
        out.extend(
            typed
                .finish()
                .into_iter()
                .map(|t| entry(t.at_ms, t.kind, &t.line)),
        );
    } else if meta.kind == "shell" {
        // No pty: no screen to read the line off (and no line editing by a shell to see).
        let mut typed = LineCutter::typed();
        for e in events.iter().filter(|e| e.kind == EventKind::Input) {
            for line in typed.feed(&e.data) {
                out.push(entry(e.at_ms, "typed", &line));
            }
        }
    }
    for f in &meta.flags {
        let what = if f.blocked { "blocked" } else { "flagged" };
        let line = format!("{what} by {} ({}): {}", f.rule, f.on.label(), f.line);
        // Already escaped when it was kept.
        out.push(Entry {
            at_ms: f.at_ms,
            kind: "flag",
            line,
        });
    }
    out.sort_by_key(|e| e.at_ms);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recordings::fixtures::{ev, meta};

    #[test]
    fn typed_lines_come_with_their_time_edited() {
        let m = SessionMeta {
            kind: "shell".into(),
            term: Some("xterm".into()),
            command: None,
            files: vec!["read /etc/hosts".into()],
            ..meta()
        };
        let events = [
            ev(100, EventKind::Input, b"ls -l"),
            ev(150, EventKind::Output, b"ls -l"),
            ev(200, EventKind::Input, b"a\r"),
            ev(900, EventKind::Input, b"rm -rx\x7ff x\r"),
        ];
        let got: Vec<(u64, &str, String)> = commands(&m, &events)
            .into_iter()
            .map(|e| (e.at_ms, e.kind, e.line))
            .collect();
        assert_eq!(
            got,
            [
                (0, "file", "read /etc/hosts".to_string()),
                (200, "typed", "ls -la".to_string()),
                (900, "typed", "rm -rf x".to_string()),
            ]
        );
        let exec = commands(&meta(), &[]);
        assert_eq!((exec[0].kind, exec[0].line.as_str()), ("exec", "psql"));
    }
}

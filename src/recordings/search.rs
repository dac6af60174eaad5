//! Searching recordings: the lines of text a session's output and input hold, without
//! escape sequences, matched against a pattern.

use super::format::{texts, Event, EventKind};
use crate::domain::session::SessionMeta;

/// One match of a search: which session, when, and the line of text.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The session's id ([`SessionMeta::id`]), so hits from many sessions can be merged.
    pub session: String,
    /// Milliseconds since the session started, of the event where the line's text started:
    /// where to seek a player to see it.
    pub at_ms: u64,
    /// The matching line, without escape sequences or control characters (tabs stay).
    pub line: String,
    /// Where the line was: what the session printed, what was typed, or the exec command.
    pub stream: Stream,
}

/// Where a hit was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Output,
    Input,
    /// The command line of an exec session (`ssh host CMD`).
    Command,
}

impl Stream {
    pub fn label(self) -> &'static str {
        match self {
            Stream::Output => "output",
            Stream::Input => "input",
            Stream::Command => "command",
        }
    }
}

/// Longest pattern a search takes, and the most memory its regular expression may compile to.
pub const MAX_PATTERN: usize = 1000;
const MAX_REGEX_BYTES: usize = 1 << 20;

/// What a search looks for: text (as typed, or ignoring case) or a regular expression. The
/// `regex` crate matches in linear time, and its compiled size is bounded, so a pattern from
/// a reviewer cannot make the search blow up.
#[derive(Debug, Clone)]
pub enum Needle {
    Text(String),
    /// Lowercased text, matched against lowercased lines.
    Folded(String),
    Regex(regex::Regex),
}

impl Needle {
    /// Text as typed.
    pub fn plain(text: &str) -> Needle {
        Needle::Text(text.to_string())
    }

    /// The needle for `pattern`, ignoring case or as a regular expression (which can say
    /// `(?i)` itself); an empty, over-long or invalid pattern is an error that says why.
    pub fn new(pattern: &str, ignore_case: bool, regex: bool) -> Result<Needle, String> {
        if pattern.is_empty() {
            return Err("the search pattern is empty".into());
        }
        if pattern.chars().count() > MAX_PATTERN {
            return Err(format!(
                "the search pattern is longer than {MAX_PATTERN} characters"
            ));
        }
        if regex {
            return regex::RegexBuilder::new(pattern)
                .case_insensitive(ignore_case)
                .size_limit(MAX_REGEX_BYTES)
                .build()
                .map(Needle::Regex)
                .map_err(|e| format!("invalid regular expression: {e}"));
        }
        Ok(match ignore_case {
            true => Needle::Folded(pattern.to_lowercase()),
            false => Needle::Text(pattern.to_string()),
        })
    }

    pub fn matches(&self, line: &str) -> bool {
        match self {
            Needle::Text(t) => line.contains(t.as_str()),
            Needle::Folded(t) => line.to_lowercase().contains(t.as_str()),
            Needle::Regex(re) => re.is_match(line),
        }
    }
}

/// Searches a session's *output and input* text for `pattern` (plain substring,
/// case-sensitive).
///
/// Text is the stream-decoded UTF-8 (as [`texts`] decodes it for export too) with ANSI escape sequences
/// (CSI `ESC [ ... final byte`, OSC `ESC ] ... BEL or ESC \`, other ESC sequences) and
/// control characters other than tab removed, split into lines on `\n`. In input `\r` also
/// ends a line, because that is what the Enter key sends; in output it is dropped (`\r\n`
/// line ends, progress redraws). Output and input are separate streams, so keystrokes never
/// interleave with the echo. A line may span several events; its `at_ms` is the time of the
/// event holding its first character. Empty lines are skipped.
///
/// Returns every matching line ordered by `at_ms` (output first on a tie), at most `limit`.
///
/// An exec session's command line is searched too, as a hit at 0 ms.
pub fn grep(meta: &SessionMeta, events: &[Event], needle: &Needle, limit: usize) -> Vec<Hit> {
    let mut output = LineStream::new(false);
    let mut input = LineStream::new(true);
    // Each stream's lines come in time order, so the first `limit` hits overall are among the
    // first `limit` of each stream: capping per stream bounds memory on huge sessions.
    let mut out_hits = Matches::new(&meta.id, needle, limit, Stream::Output);
    let mut in_hits = Matches::new(&meta.id, needle, limit, Stream::Input);
    let mut command = Matches::new(&meta.id, needle, limit, Stream::Command);
    if let (Some(cmd), "exec") = (&meta.command, meta.kind.as_str()) {
        let line: String = cmd
            .chars()
            .filter(|c| !crate::shown::is_control(*c))
            .collect();
        command.line(0, &line);
    }
    for (event, text) in events.iter().zip(texts(events)) {
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
    let mut hits = command.hits;
    hits.append(&mut out_hits.hits);
    hits.append(&mut in_hits.hits);
    // Stable, so on equal times output stays ahead of input.
    hits.sort_by_key(|h| h.at_ms);
    hits.truncate(limit);
    hits
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
    needle: &'a Needle,
    limit: usize,
    stream: Stream,
    hits: Vec<Hit>,
}

impl<'a> Matches<'a> {
    fn new(session: &'a str, needle: &'a Needle, limit: usize, stream: Stream) -> Self {
        Matches {
            session,
            needle,
            limit,
            stream,
            hits: Vec::new(),
        }
    }

    fn full(&self) -> bool {
        self.hits.len() >= self.limit
    }

    fn line(&mut self, at_ms: u64, line: &str) {
        if !self.full() && self.needle.matches(line) {
            self.hits.push(Hit {
                session: self.session.to_string(),
                at_ms,
                line: line.to_string(),
                stream: self.stream,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recordings::fixtures::{inp, meta, out, resize};

    #[test]
    fn grep_lines() {
        fn check(
            name: &str,
            events: &[Event],
            pattern: &str,
            limit: usize,
            expected: &[(u64, &str)],
        ) {
            let shell = SessionMeta {
                kind: "shell".into(),
                command: None,
                ..meta()
            };
            let got = grep(&shell, events, &Needle::plain(pattern), limit);
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

    #[test]
    fn exec_commands_are_searched_and_each_hit_says_where_it_was() {
        let events = [out(5, b"DROP TABLE users;\r\n"), inp(9, b"drop table t\r")];
        let needle = Needle::new("drop table", true, false).unwrap();
        let hits = grep(&meta(), &events, &needle, 10);
        let got: Vec<(u64, Stream, &str)> = hits
            .iter()
            .map(|h| (h.at_ms, h.stream, h.line.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (5, Stream::Output, "DROP TABLE users;"),
                (9, Stream::Input, "drop table t")
            ]
        );
        let psql = Needle::new("^ps.l$", false, true).unwrap();
        let hits = grep(&meta(), &events, &psql, 10);
        assert_eq!(hits.len(), 1);
        assert_eq!((hits[0].at_ms, hits[0].stream), (0, Stream::Command));
        assert!(!Needle::plain("DROP table").matches("DROP TABLE"));
    }

    #[test]
    fn a_bad_pattern_says_what_is_wrong() {
        let err = Needle::new("(unclosed", false, true).unwrap_err();
        assert!(err.starts_with("invalid regular expression"), "{err}");
        assert_eq!(
            Needle::new("", true, false).unwrap_err(),
            "the search pattern is empty"
        );
        let long = "a".repeat(MAX_PATTERN + 1);
        assert!(Needle::new(&long, false, false)
            .unwrap_err()
            .contains("longer than"));
        // A pattern that would compile to a huge automaton is refused, not built.
        let err = Needle::new("\\w{1000}\\w{1000}\\w{1000}", false, true).unwrap_err();
        assert!(err.contains("invalid regular expression"), "{err}");
    }
}

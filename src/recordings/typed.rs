//! Lines typed at a terminal as the terminal showed them: the session's output goes through
//! a terminal emulator (`vt100`, as for the browser's screens), and each Enter's line is
//! read off the screen, so line editing, history recall, Tab completion and paste come out
//! as the shell ran them, not as the keys were pressed.
//!
//! When the first key of a line is pressed, the cursor's column and the row's text before it
//! (the prompt) are noted. An Enter waits for the newline the shell echoes for it; just
//! before that newline the logical line under the cursor (rows joined where they wrap),
//! minus the prompt, is the command. The raw keys (line editing applied, see
//! [`LineCutter`]) stand in where the screen cannot tell: a line whose keys and Enter came
//! with no output in between (pasted, or typed ahead before its prompt was printed: what
//! the screen shows then may be something else), a full-screen program (alternate screen),
//! or a session that ended before the echo. A line the screen shows empty although keys were typed (echo
//! off: a password, or someone hiding what they type) is kept as its raw keys, marked
//! `keys`, so nothing typed is lost from review. Bounded: the screen is at most
//! 500x200 cells and a line at most [`MAX_LINE`] bytes.

use std::collections::VecDeque;

use super::format::{Event, EventKind};
use super::screen::{nz, MAX_COLS, MAX_ROWS};
use crate::domain::flags::{LineCutter, MAX_LINE};

/// A line read at Enter: what the terminal showed (`typed`), or the raw keys of a line
/// the terminal did not show (`keys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Typed {
    pub at_ms: u64,
    /// `typed` or `keys`.
    pub kind: &'static str,
    pub line: String,
}

/// Where a line began: the cursor's column and the row's text before it.
#[derive(Debug, Clone)]
struct Prompt {
    col: u16,
    text: String,
}

/// An Enter waiting for its echo's newline.
struct Pending {
    at_ms: u64,
    /// Which Enter it was, so lines of one event keep their order.
    nth: usize,
    /// The raw keys' line.
    raw: Option<String>,
    prompt: Prompt,
    /// The terminal printed something between the line's first key and its Enter (its
    /// echo); without that, the line was pasted or typed ahead, and the raw keys are it.
    echoed: bool,
}

/// Reads typed lines off an emulated terminal (see the module's doc).
pub struct TypedLines {
    parser: vt100::Parser,
    raw: LineCutter,
    /// The line being typed: `Some(None)` when it is read from the raw keys only.
    start: Option<Option<Prompt>>,
    /// Output arrived since the line's first key.
    echoed: bool,
    pending: VecDeque<Pending>,
    /// Enters pressed so far.
    enters: usize,
    /// Each line with the number of its Enter.
    out: Vec<(usize, Typed)>,
}

fn cut(mut line: String) -> String {
    if line.len() > MAX_LINE {
        let mut end = MAX_LINE;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

impl TypedLines {
    /// A terminal of the session's starting size.
    pub fn new(cols: u32, rows: u32) -> TypedLines {
        TypedLines {
            parser: vt100::Parser::new(nz(rows, 24, MAX_ROWS), nz(cols, 80, MAX_COLS), 0),
            raw: LineCutter::typed(),
            start: None,
            echoed: false,
            pending: VecDeque::new(),
            enters: 0,
            out: Vec::new(),
        }
    }

    /// Applies one recorded event.
    pub fn feed(&mut self, e: &Event) {
        match e.kind {
            EventKind::Input => self.keys(e.at_ms, &e.data),
            EventKind::Output => self.output(&e.data),
            EventKind::Resize => {
                if let Some((cols, rows)) = e.size() {
                    self.parser
                        .set_size(nz(rows, 24, MAX_ROWS), nz(cols, 80, MAX_COLS));
                }
            }
        }
    }

    /// The lines, in the order their Enters were pressed; an Enter still waiting for its
    /// echo is read from its raw keys.
    pub fn finish(mut self) -> Vec<Typed> {
        while let Some(p) = self.pending.pop_front() {
            self.keep((p.at_ms, p.nth), "typed", p.raw);
        }
        self.out.sort_by_key(|(nth, t)| (t.at_ms, *nth));
        self.out.into_iter().map(|(_, t)| t).collect()
    }

    fn keep(&mut self, (at_ms, nth): (u64, usize), kind: &'static str, line: Option<String>) {
        if let Some(line) = line.map(|l| cut(l.trim_end().to_string())) {
            if !line.is_empty() {
                self.out.push((nth, Typed { at_ms, kind, line }));
            }
        }
    }

    fn keys(&mut self, at_ms: u64, data: &[u8]) {
        let mut from = 0;
        for (i, &b) in data.iter().enumerate() {
            if b == b'\r' || b == b'\n' {
                let raw = self.raw.feed(&data[from..=i]).pop();
                from = i + 1;
                let nth = self.enters;
                self.enters += 1;
                let echoed = std::mem::take(&mut self.echoed);
                match self.start.take().flatten() {
                    Some(prompt) if !self.parser.screen().alternate_screen() => {
                        self.pending.push_back(Pending {
                            at_ms,
                            nth,
                            raw,
                            prompt,
                            echoed,
                        })
                    }
                    _ => self.keep((at_ms, nth), "typed", raw),
                }
            } else if self.start.is_none() {
                // Typed ahead while a line is still waiting for its echo: the screen is
                // not showing this line's prompt.
                self.start = Some(self.pending.is_empty().then(|| self.prompt()));
                self.echoed = false;
            }
        }
        self.raw.feed(&data[from..]);
    }

    fn output(&mut self, mut data: &[u8]) {
        if self.start.is_some() && !data.is_empty() {
            self.echoed = true;
        }
        while !self.pending.is_empty() {
            let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                break;
            };
            self.parser.process(&data[..nl]);
            if let Some(p) = self.pending.pop_front() {
                let shown = self.line_under_cursor(&p.prompt);
                let at = (p.at_ms, p.nth);
                match (shown, p.raw) {
                    (Some(s), raw) if s.trim().is_empty() => self.keep(at, "keys", raw),
                    (Some(s), _) if p.echoed => self.keep(at, "typed", Some(s)),
                    (_, raw) => self.keep(at, "typed", raw),
                }
            }
            data = &data[nl..];
            self.parser.process(&data[..1]);
            data = &data[1..];
        }
        self.parser.process(data);
    }

    /// The cursor's column and the row's text before it.
    fn prompt(&self) -> Prompt {
        let screen = self.parser.screen();
        let (row, col) = screen.cursor_position();
        let text = screen
            .rows(0, col)
            .nth(usize::from(row))
            .unwrap_or_default();
        Prompt { col, text }
    }

    /// The logical line under the cursor (rows joined where they wrap), minus `prompt`;
    /// `None` on the alternate screen (a full-screen program draws what it likes).
    fn line_under_cursor(&self, prompt: &Prompt) -> Option<String> {
        let screen = self.parser.screen();
        if screen.alternate_screen() {
            return None;
        }
        let (rows, cols) = screen.size();
        let (rows, cols) = (rows.get(), cols.get());
        let (row, _) = screen.cursor_position();
        let mut first = row;
        while first > 0 && screen.row_wrapped(first - 1) {
            first -= 1;
        }
        let mut last = row;
        while last + 1 < rows && screen.row_wrapped(last) {
            last += 1;
        }
        let text: String = screen
            .rows(0, cols)
            .skip(usize::from(first))
            .take(usize::from(last - first) + 1)
            .collect();
        Some(match text.strip_prefix(&prompt.text) {
            Some(rest) => rest.to_string(),
            None => text.chars().skip(usize::from(prompt.col)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recordings::fixtures::{inp, out};

    fn lines(cols: u32, events: &[Event]) -> Vec<(u64, &'static str, String)> {
        let mut t = TypedLines::new(cols, 24);
        for e in events {
            t.feed(e);
        }
        t.finish()
            .into_iter()
            .map(|t| (t.at_ms, t.kind, t.line))
            .collect()
    }

    fn check(cols: u32, events: &[Event], expected: &[(u64, &str, &str)]) {
        let got = lines(cols, events);
        let want: Vec<(u64, &str, String)> = expected
            .iter()
            .map(|(at, k, l)| (*at, *k, l.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    const PROMPT: &[u8] = b"bash-5.2$ ";

    #[test]
    fn history_recall_is_read_as_the_shell_redrew_it() {
        // bash: `echo one`, then up arrow (the shell redraws the line), ` two`, Enter.
        check(
            80,
            &[
                out(0, PROMPT),
                inp(10, b"echo one"),
                out(11, b"echo one"),
                inp(20, b"\r"),
                out(21, b"\r\none\r\n"),
                out(22, PROMPT),
                inp(30, b"\x1b[A"),
                out(31, b"echo one"),
                inp(40, b" two"),
                out(41, b" two"),
                inp(50, b"\r"),
                out(51, b"\r\none two\r\n"),
                out(52, PROMPT),
            ],
            &[(20, "typed", "echo one"), (50, "typed", "echo one two")],
        );
    }

    #[test]
    fn tab_completion_backspaces_and_cursor_moves_are_resolved() {
        check(
            80,
            &[
                out(0, PROMPT),
                // Tab completes `/etc/hostn` to `/etc/hostname `.
                inp(10, b"ls /etc/hostn\t"),
                out(11, b"ls /etc/hostname "),
                inp(20, b"\r"),
                out(21, b"\r\n/etc/hostname\r\n"),
                out(22, PROMPT),
                // A typo fixed by moving left and inserting (readline redraws the rest).
                inp(30, b"cat fle"),
                out(31, b"cat fle"),
                inp(40, b"\x1b[D\x1b[D"),
                out(41, b"\x08\x08"),
                inp(50, b"i"),
                out(51, b"ile\x08\x08"),
                inp(60, b"\r"),
                out(61, b"\r\n"),
                out(62, PROMPT),
                // Erased with backspaces and retyped.
                inp(70, b"rm -rx\x7f"),
                out(71, b"rm -rx\x08 \x08"),
                inp(80, b"f\r"),
                out(81, b"f\r\n"),
            ],
            &[
                (20, "typed", "ls /etc/hostname"),
                (60, "typed", "cat file"),
                (80, "typed", "rm -rf"),
            ],
        );
    }

    #[test]
    fn wrapped_lines_join_and_unechoed_keys_are_kept_as_keys() {
        let long = "x".repeat(30);
        check(
            20,
            &[
                out(0, b"$ "),
                inp(10, format!("echo {long}").as_bytes()),
                out(11, format!("echo {long}").as_bytes()),
                inp(20, b"\r"),
                out(21, b"\r\n"),
                out(22, b"Password: "),
                inp(30, b"hunter2\r"),
                out(31, b"\r\n"),
            ],
            &[
                (20, "typed", &format!("echo {long}")),
                (30, "keys", "hunter2"),
            ],
        );
    }

    #[test]
    fn a_line_typed_before_the_prompt_is_not_read_off_the_banner() {
        check(
            80,
            &[
                inp(5, b"echo early\r"),
                out(
                    10,
                    b"Last login: Mon Nov 30 01:29:35 2026 from 127.0.0.1\r\n",
                ),
                out(11, PROMPT),
                out(12, b"echo early\r\nearly\r\n"),
            ],
            &[(5, "typed", "echo early")],
        );
    }

    #[test]
    fn typed_ahead_pasted_and_unanswered_lines_fall_back_to_the_keys() {
        check(
            80,
            &[
                out(0, PROMPT),
                // Two lines pasted at once: the first read off the screen, the second typed
                // ahead of its prompt.
                inp(10, b"echo a\recho b\r"),
                out(11, b"echo a\r\na\r\n"),
                out(12, PROMPT),
                out(13, b"echo b\r\nb\r\n"),
                // A full-screen program: the keys.
                out(20, b"\x1b[?1049h"),
                inp(30, b":q\r"),
                out(31, b"\x1b[?1049l"),
                // The session ends before the echo.
                inp(40, b"exit\r"),
            ],
            &[
                (10, "typed", "echo a"),
                (10, "typed", "echo b"),
                (30, "typed", ":q"),
                (40, "typed", "exit"),
            ],
        );
    }
}

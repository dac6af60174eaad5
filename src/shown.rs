//! Text from users (login names, commands, reasons, file names) shown in a terminal or a log:
//! control characters are escaped, so nobody's input moves an auditor's cursor, retitles
//! their terminal, or starts a forged log line. Pure.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` would act on a terminal or a line-based log instead of being shown: C0 and C1
/// controls and DEL.
pub fn is_control(c: char) -> bool {
    c.is_control()
}

/// `text` with every control character written as an escape (`\n`, `\x1b`, `\u{9b}`); text
/// without one is returned as is.
pub fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && is_control(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_control(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`shown`] for `format!` and tracing fields: `%Shown(&name)`.
pub struct Shown<'a>(pub &'a str);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so `{:<10}` lines tables up as it does for plain strings.
        f.pad(&shown(self.0))
    }
}

/// A log line as written: every control character escaped but the line's own final newline,
/// so one event is one line whatever text it carries.
pub fn log_line(line: &str) -> Cow<'_, str> {
    match line.strip_suffix('\n') {
        Some(body) if !body.chars().any(is_control) => Cow::Borrowed(line),
        Some(body) => Cow::Owned(format!("{}\n", shown(body))),
        None => shown(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_plain_text_is_kept() {
        let check = |input: &str, want: &str| assert_eq!(shown(input), want, "{input:?}");
        check("alice", "alice");
        check("db-1 ünïcode ✓", "db-1 ünïcode ✓");
        check("\x1b[2J", "\\x1b[2J");
        check("\x1b]0;owned\x07", "\\x1b]0;owned\\x07");
        check("x\nroot logged in", "x\\nroot logged in");
        check("a\rb\tc\x7f", "a\\rb\\tc\\x7f");
        check("\u{9b}31m", "\\u{9b}31m");
    }

    #[test]
    fn a_log_line_keeps_only_its_own_newline() {
        assert_eq!(log_line("login refused\n"), "login refused\n");
        assert_eq!(
            log_line("login=a\nINFO forged\n"),
            "login=a\\nINFO forged\n"
        );
        assert_eq!(log_line("no newline\x1b"), "no newline\\x1b");
    }
}

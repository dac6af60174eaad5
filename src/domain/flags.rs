//! A contract's flag rules run over one session as it happens: exact operations (an exec
//! command, a subsystem, an sftp/scp file operation) are matched whole and may be refused;
//! lines typed at a terminal and lines of output are cut from the byte stream and matched.
//! Pure: the caller gives the bytes and the time offset, and acts on the flags returned.
//!
//! The cost is bounded whatever a session sends: every byte is looked at once, a line is
//! cut at [`MAX_LINE`] bytes (the rest of it is skipped), and after [`MAX_FLAGS`] flags the
//! typed and output streams are no longer matched (blocking still is).

use serde::{Deserialize, Serialize};

use super::policy::{FlagOn, FlagRule};

/// Flags kept (audited, announced, marked) per session; past it only blocking goes on.
pub const MAX_FLAGS: usize = 100;
/// Bytes of one line matched; the rest of a longer line is skipped.
pub const MAX_LINE: usize = 4096;
/// Characters of a flagged line kept in the flag (escaped).
const SHOWN_LINE: usize = 300;

/// One flagged line of a session: the marker playback jumps to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flag {
    /// The rule's name.
    pub rule: String,
    pub on: FlagOn,
    /// Milliseconds into the recording.
    pub at_ms: u64,
    /// The line (or operation) that matched, control characters escaped, cut to 300
    /// characters.
    pub line: String,
    /// The operation was refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blocked: bool,
}

/// The flag rules of one session, with the lines being typed and printed.
#[derive(Debug)]
pub struct Flagger {
    rules: Vec<FlagRule>,
    typed: LineCutter,
    output: LineCutter,
    /// Flags handed out so far.
    count: usize,
}

/// What an exact operation is worth: the flags it raised, and the blocking rule that refuses
/// it, if one does.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    pub flags: Vec<Flag>,
    pub blocked_by: Option<String>,
}

impl Flagger {
    pub fn new(rules: Vec<FlagRule>) -> Flagger {
        Flagger {
            rules,
            typed: LineCutter::typed(),
            output: LineCutter::output(),
            count: 0,
        }
    }

    /// Whether any rule looks at `on`.
    pub fn watches(&self, on: FlagOn) -> bool {
        self.rules.iter().any(|r| r.on == on)
    }

    /// An exact operation (`on` is `command` for an exec command, `file` for a file operation
    /// or subsystem): every matching rule flags it, and a blocking one refuses it.
    pub fn operation(&mut self, on: FlagOn, text: &str, at_ms: u64) -> Verdict {
        let text = cut(text);
        let mut v = Verdict::default();
        for r in self.rules.iter().filter(|r| r.on == on) {
            if !r.pattern.is_match(text) {
                continue;
            }
            if r.block && v.blocked_by.is_none() {
                v.blocked_by = Some(r.name.clone());
            }
            if self.count < MAX_FLAGS {
                self.count += 1;
                v.flags.push(flag(r, text, at_ms, r.block));
            }
        }
        v
    }

    /// Bytes the client sent to a terminal: lines typed up to Enter, with backspace, ^U, ^W
    /// and ^C applied and escape sequences (arrows, history recall) skipped; flagged, never
    /// blocked.
    pub fn typed(&mut self, data: &[u8], at_ms: u64) -> Vec<Flag> {
        self.stream(FlagOn::Command, data, at_ms)
    }

    /// Bytes the target printed.
    pub fn output(&mut self, data: &[u8], at_ms: u64) -> Vec<Flag> {
        self.stream(FlagOn::Output, data, at_ms)
    }

    fn stream(&mut self, on: FlagOn, data: &[u8], at_ms: u64) -> Vec<Flag> {
        if self.count >= MAX_FLAGS || !self.watches(on) {
            return Vec::new();
        }
        let cutter = match on {
            FlagOn::Output => &mut self.output,
            _ => &mut self.typed,
        };
        let lines = cutter.feed(data);
        let mut out = Vec::new();
        for line in lines {
            for r in self.rules.iter().filter(|r| r.on == on) {
                if self.count < MAX_FLAGS && r.pattern.is_match(&line) {
                    self.count += 1;
                    out.push(flag(r, &line, at_ms, false));
                }
            }
        }
        out
    }
}

fn cut(text: &str) -> &str {
    match text.char_indices().nth(MAX_LINE) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

fn flag(rule: &FlagRule, line: &str, at_ms: u64, blocked: bool) -> Flag {
    let line: String = line.chars().take(SHOWN_LINE).collect();
    Flag {
        rule: rule.name.clone(),
        on: rule.on,
        at_ms,
        line: crate::shown::shown(&line).into_owned(),
        blocked,
    }
}

/// Where a cutter stands in an escape sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    None,
    /// After ESC.
    Start,
    /// In `ESC [ ...` (CSI) or `ESC ] ...` (OSC, to BEL or ESC \).
    Csi,
    Osc,
    /// After `ESC O` (SS3): one more byte.
    Ss3,
}

/// Cuts a byte stream into lines, skipping escape sequences and control characters.
#[derive(Debug)]
pub struct LineCutter {
    line: Vec<u8>,
    esc: Esc,
    /// Line editing keys apply (typed input).
    editing: bool,
}

impl LineCutter {
    /// For bytes typed at a terminal: line editing keys apply.
    pub fn typed() -> LineCutter {
        LineCutter {
            line: Vec::new(),
            esc: Esc::None,
            editing: true,
        }
    }

    /// For output: lines end at newlines.
    pub fn output() -> LineCutter {
        LineCutter {
            editing: false,
            ..LineCutter::typed()
        }
    }

    /// The lines `data` completes.
    pub fn feed(&mut self, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in data {
            match (self.esc, b) {
                (Esc::Start, b'[') => self.esc = Esc::Csi,
                (Esc::Start, b']') => self.esc = Esc::Osc,
                (Esc::Start, b'O') => self.esc = Esc::Ss3,
                (Esc::Start | Esc::Ss3, _) => self.esc = Esc::None,
                (Esc::Csi, 0x40..=0x7e) => self.esc = Esc::None,
                (Esc::Osc, 0x07 | 0x1b) => self.esc = Esc::None,
                (Esc::Csi | Esc::Osc, _) => {}
                (Esc::None, 0x1b) => self.esc = Esc::Start,
                (Esc::None, b'\r' | b'\n') => {
                    if !self.line.is_empty() {
                        out.push(String::from_utf8_lossy(&self.line).into_owned());
                    }
                    self.line.clear();
                }
                (Esc::None, 0x7f | 0x08) if self.editing => {
                    // Drop the last character, with all its UTF-8 continuation bytes.
                    while let Some(last) = self.line.pop() {
                        if last & 0xc0 != 0x80 {
                            break;
                        }
                    }
                }
                (Esc::None, 0x15 | 0x03) if self.editing => self.line.clear(),
                (Esc::None, 0x17) if self.editing => {
                    while self.line.last() == Some(&b' ') {
                        self.line.pop();
                    }
                    while self.line.last().is_some_and(|&c| c != b' ') {
                        self.line.pop();
                    }
                }
                (Esc::None, b'\t') => self.push(b' '),
                (Esc::None, 0x00..=0x1f) => {}
                (Esc::None, b) => self.push(b),
            }
        }
        out
    }

    /// Past [`MAX_LINE`] bytes the rest of the line is skipped.
    fn push(&mut self, b: u8) {
        if self.line.len() < MAX_LINE {
            self.line.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<FlagRule> {
        let rule = |name: &str, pattern: &str, on, block| FlagRule {
            name: name.into(),
            pattern: regex::Regex::new(pattern).unwrap(),
            on,
            block,
        };
        vec![
            rule("drop-table", "(?i)drop table", FlagOn::Command, true),
            rule("rm-rf", r"rm -rf /", FlagOn::Command, false),
            rule("etc-write", "^(write|upload) /etc/", FlagOn::File, true),
            rule("key", "PRIVATE KEY", FlagOn::Output, false),
        ]
    }

    /// Feeds `typed` in one go and checks the lines flagged.
    fn check(typed: &[u8], expected: &[&str]) {
        let mut f = Flagger::new(rules());
        let got: Vec<String> = f.typed(typed, 5).into_iter().map(|f| f.line).collect();
        assert_eq!(got, expected, "typed {:?}", String::from_utf8_lossy(typed));
    }

    #[test]
    fn typed_lines_are_edited_before_they_are_matched() {
        check(b"rm -rf /tmp/x\r", &["rm -rf /tmp/x"]);
        check(b"rm -rf /tmpx\x7f\x7f\x7fy\r", &["rm -rf /ty"]);
        check(b"rm -rf /\x15ls\r", &[]);
        check(b"rm -r\x1b[D\x1b[Cf /\r", &["rm -rf /"]);
        check(b"ls; rm -rf /\x17\x17echo\r", &[]);
        check(b"echo hi\rrm\t-rf /\n", &["rm -rf /"]);
        check(b"psql -c 'DROP TABLE x'\r", &["psql -c 'DROP TABLE x'"]);
    }

    #[test]
    fn exact_operations_block_and_flag() {
        let mut f = Flagger::new(rules());
        let v = f.operation(FlagOn::Command, "psql -c 'drop table users'", 0);
        assert_eq!(v.blocked_by.as_deref(), Some("drop-table"));
        assert!(v.flags[0].blocked);
        let v = f.operation(FlagOn::File, "write /etc/passwd", 1200);
        assert_eq!(v.blocked_by.as_deref(), Some("etc-write"));
        assert_eq!(v.flags[0].at_ms, 1200);
        assert_eq!(
            f.operation(FlagOn::File, "write /tmp/x", 0),
            Verdict::default()
        );
        let v = f.operation(FlagOn::Command, "rm -rf /\x1b[2J", 0);
        assert_eq!(
            (v.blocked_by, v.flags[0].line.as_str()),
            (None, "rm -rf /\\x1b[2J")
        );
    }

    #[test]
    fn output_lines_split_across_chunks() {
        let mut f = Flagger::new(rules());
        assert!(f.output(b"-----BEGIN PRIVATE", 10).is_empty());
        let flags = f.output(b" KEY-----\r\nabc\n", 20);
        assert_eq!(flags.len(), 1);
        assert_eq!((flags[0].at_ms, flags[0].on), (20, FlagOn::Output));
    }

    #[test]
    fn a_hostile_stream_costs_bounded_memory_and_flags() {
        let mut f = Flagger::new(rules());
        let long = vec![b'a'; 10 * MAX_LINE];
        assert!(f.output(&long, 0).is_empty());
        assert!(f.output.line.len() <= MAX_LINE);
        let many = b"PRIVATE KEY\n".repeat(3 * MAX_FLAGS);
        assert_eq!(f.output(&many, 0).len(), MAX_FLAGS);
        assert!(f.output(b"PRIVATE KEY\n", 0).is_empty());
        // Blocking goes on past the cap; only the flag is not kept.
        let v = f.operation(FlagOn::Command, "DROP TABLE x", 0);
        assert_eq!(
            (v.blocked_by.as_deref(), v.flags.len()),
            (Some("drop-table"), 0)
        );
    }
}

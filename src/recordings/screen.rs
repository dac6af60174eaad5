//! Terminal screens for the browser: a recording's output is fed through a terminal emulator
//! (`vt100`) here, and the browser gets rendered rows of HTML, never raw escape sequences.
//! Playback sends frames of changed rows only; the page applies them in order, so it can
//! play, pause, seek and change speed without a terminal emulator of its own.

use std::fmt::Write;
use std::num::NonZeroU16;

use super::format::{Event, EventKind};
use crate::wire::dashboard::{Frame, Playback};

/// The largest terminal emulated: a client may claim any size, and every row is rendered.
pub(crate) const MAX_COLS: u16 = 500;
pub(crate) const MAX_ROWS: u16 = 200;
/// Most bytes of row HTML one playback holds; past it the frames are merged further, and a
/// recording too busy even then is cut short (and says so).
pub const MAX_PLAYBACK_BYTES: usize = 48 << 20;

pub(crate) fn nz(n: u32, default: u16, max: u16) -> NonZeroU16 {
    NonZeroU16::new(u16::try_from(n).unwrap_or(u16::MAX).clamp(1, max))
        .unwrap_or(NonZeroU16::new(default).expect("non-zero default"))
}

/// A terminal that remembers what it last reported.
pub struct Terminal {
    parser: vt100::Parser,
    shown: Vec<String>,
    resized: bool,
    /// The session had no pty: its output ends lines with a bare `\n`, which the client's
    /// own terminal turned into `\r\n`.
    cooked: bool,
    /// The last output byte, so a `\r\n` split across two events is not doubled.
    last: u8,
}

impl Terminal {
    /// A terminal of the session's size; `pty` says whether the session had one.
    pub fn new(cols: u32, rows: u32, pty: bool) -> Terminal {
        Terminal {
            parser: vt100::Parser::new(nz(rows, 24, MAX_ROWS), nz(cols, 80, MAX_COLS), 0),
            shown: Vec::new(),
            resized: true,
            cooked: !pty,
            last: 0,
        }
    }

    /// Applies one recorded event (input is not shown: the target echoes what it wants seen).
    pub fn feed(&mut self, event: &Event) {
        match event.kind {
            EventKind::Output if self.cooked => {
                let mut data = Vec::with_capacity(event.data.len() + 16);
                for &b in &event.data {
                    if b == b'\n' && self.last != b'\r' {
                        data.push(b'\r');
                    }
                    data.push(b);
                    self.last = b;
                }
                self.parser.process(&data);
            }
            EventKind::Output => self.parser.process(&event.data),
            EventKind::Resize => {
                if let Some((cols, rows)) = event.size() {
                    self.parser
                        .set_size(nz(rows, 24, MAX_ROWS), nz(cols, 80, MAX_COLS));
                    self.resized = true;
                }
            }
            EventKind::Input => {}
        }
    }

    /// The rows changed since the last frame (every row after a resize), as a frame at `t`;
    /// None when nothing visible changed.
    pub fn frame(&mut self, t: u64) -> Option<Frame> {
        let screen = self.parser.screen();
        let (rows, cols) = screen.size();
        let (rows, cols) = (rows.get(), cols.get());
        let resized = std::mem::take(&mut self.resized);
        if resized {
            self.shown = vec![String::new(); rows as usize];
        }
        let mut changed = Vec::new();
        for r in 0..rows {
            let html = row_html(screen, r, cols);
            if resized || self.shown[r as usize] != html {
                self.shown[r as usize] = html.clone();
                changed.push((r, html));
            }
        }
        let cursor = (!screen.hide_cursor()).then(|| screen.cursor_position());
        if changed.is_empty() && !resized {
            return None;
        }
        Some(Frame {
            t,
            size: resized.then_some((cols, rows)),
            rows: changed,
            cursor,
        })
    }

    /// Every row, for a viewer that joins late.
    pub fn full_frame(&mut self, t: u64) -> Frame {
        self.resized = true;
        self.frame(t)
            .expect("a resized terminal always has a frame")
    }
}

/// Renders a recording as frames at least `step_ms` apart, widening the step until there are
/// at most `max_frames`.
pub fn playback(size: (u32, u32, bool), events: &[Event], max_frames: usize) -> Playback {
    playback_within(size, events, max_frames, MAX_PLAYBACK_BYTES)
}

fn playback_within(
    (cols, rows, pty): (u32, u32, bool),
    events: &[Event],
    max_frames: usize,
    max_bytes: usize,
) -> Playback {
    let duration_ms = events.last().map_or(0, |e| e.at_ms);
    let (start_rows, start_cols) = Terminal::new(cols, rows, pty).parser.screen().size();
    let mut step_ms = 40;
    loop {
        let (frames, whole) = render(Terminal::new(cols, rows, pty), events, step_ms, max_bytes);
        if (whole && frames.len() <= max_frames) || step_ms >= 60_000 {
            return Playback {
                cols: start_cols.get(),
                rows: start_rows.get(),
                duration_ms,
                step_ms,
                frames,
                truncated: !whole,
            };
        }
        step_ms *= 2;
    }
}

/// Frames at least `step_ms` apart, and whether they reach the end within `max_bytes`.
fn render(
    mut term: Terminal,
    events: &[Event],
    step_ms: u64,
    max_bytes: usize,
) -> (Vec<Frame>, bool) {
    let mut frames = vec![term.full_frame(0)];
    let size = |f: &Frame| f.rows.iter().map(|(_, h)| h.len() + 8).sum::<usize>();
    let mut bytes = size(&frames[0]);
    let mut last_t = 0;
    let mut dirty = false;
    for (i, e) in events.iter().enumerate() {
        term.feed(e);
        dirty |= e.kind != EventKind::Input;
        let next_far = events
            .get(i + 1)
            .is_none_or(|n| n.at_ms >= last_t + step_ms);
        if dirty && next_far {
            if let Some(f) = term.frame(e.at_ms) {
                bytes += size(&f);
                if bytes > max_bytes {
                    return (frames, false);
                }
                frames.push(f);
            }
            last_t = e.at_ms;
            dirty = false;
        }
    }
    (frames, true)
}

/// How one cell looks, as the CSS it needs.
#[derive(PartialEq, Eq, Clone, Default)]
struct Style {
    class: String,
    css: String,
}

fn color_css(c: vt100::Color) -> Option<String> {
    match c {
        vt100::Color::Default => None,
        vt100::Color::Idx(i) if i < 16 => Some(format!("var(--c{i})")),
        vt100::Color::Idx(i) => {
            let (r, g, b) = xterm_rgb(i);
            Some(format!("#{r:02x}{g:02x}{b:02x}"))
        }
        vt100::Color::Rgb(r, g, b) => Some(format!("#{r:02x}{g:02x}{b:02x}")),
    }
}

/// The xterm 256-colour palette beyond the first 16.
fn xterm_rgb(i: u8) -> (u8, u8, u8) {
    if i >= 232 {
        let v = 8 + (i - 232) * 10;
        return (v, v, v);
    }
    let i = i - 16;
    let level = |n: u8| if n == 0 { 0 } else { 55 + n * 40 };
    (level(i / 36), level((i / 6) % 6), level(i % 6))
}

fn style_of(cell: &vt100::Cell) -> Style {
    let (mut fg, mut bg) = (color_css(cell.fgcolor()), color_css(cell.bgcolor()));
    if cell.inverse() {
        std::mem::swap(&mut fg, &mut bg);
        fg.get_or_insert_with(|| "var(--bg)".into());
        bg.get_or_insert_with(|| "var(--fg)".into());
    }
    let mut css = String::new();
    if let Some(fg) = fg {
        let _ = write!(css, "color:{fg};");
    }
    if let Some(bg) = bg {
        let _ = write!(css, "background:{bg};");
    }
    let mut class = Vec::new();
    for (on, name) in [
        (cell.bold(), "b"),
        (cell.dim(), "d"),
        (cell.italic(), "i"),
        (cell.underline(), "u"),
    ] {
        if on {
            class.push(name);
        }
    }
    Style {
        class: class.join(" "),
        css,
    }
}

fn escape_into(out: &mut String, text: &str) {
    for ch in text.chars() {
        match ch {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            c => out.push(c),
        }
    }
}

/// One screen row as HTML: runs of equally styled text in spans, trailing blanks dropped.
fn row_html(screen: &vt100::Screen, row: u16, cols: u16) -> String {
    let mut runs: Vec<(Style, String)> = Vec::new();
    for col in 0..cols {
        let Some(cell) = screen.cell(row, col) else {
            continue;
        };
        if cell.is_wide_continuation() {
            continue;
        }
        let style = style_of(cell);
        let text = if cell.has_contents() {
            cell.contents()
        } else {
            " "
        };
        match runs.last_mut() {
            Some((s, t)) if *s == style => t.push_str(text),
            _ => runs.push((style, text.to_string())),
        }
    }
    // Trailing blanks in the default style carry nothing.
    if let Some((s, t)) = runs.last_mut() {
        if *s == Style::default() {
            let kept = t.trim_end_matches(' ').len();
            t.truncate(kept);
        }
    }
    let mut out = String::new();
    for (style, text) in runs {
        if text.is_empty() {
            continue;
        }
        if style == Style::default() {
            escape_into(&mut out, &text);
            continue;
        }
        out.push_str("<span");
        if !style.class.is_empty() {
            let _ = write!(out, " class=\"{}\"", style.class);
        }
        if !style.css.is_empty() {
            let _ = write!(out, " style=\"{}\"", style.css);
        }
        out.push('>');
        escape_into(&mut out, &text);
        out.push_str("</span>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(at_ms: u64, text: &str) -> Event {
        Event {
            at_ms,
            kind: EventKind::Output,
            data: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn escapes_become_styled_rows_and_frames_carry_only_changes() {
        let events = vec![
            out(0, "$ ls\r\n"),
            out(10, "\x1b[1;31mred <bold>\x1b[0m plain\r\n"),
            out(2000, "\x1b[2J\x1b[H\x1b[7minverse\x1b[0m"),
            Event {
                at_ms: 3000,
                kind: EventKind::Resize,
                data: b"100x30".to_vec(),
            },
        ];
        let p = playback((80, 24, true), &events, 1000);
        assert_eq!((p.cols, p.rows, p.duration_ms), (80, 24, 3000));
        // The first two outputs are 10 ms apart: one frame.
        let first = &p.frames[1];
        assert_eq!(first.t, 10);
        assert_eq!(first.rows[0], (0, "$ ls".to_string()));
        assert_eq!(
            first.rows[1].1,
            "<span class=\"b\" style=\"color:var(--c1);\">red &lt;bold&gt;</span> plain"
        );
        // Clearing the screen changes both rows; the inverse text uses the swapped defaults.
        let cleared = &p.frames[2];
        assert_eq!(cleared.t, 2000);
        assert!(
            cleared.rows[0].1.contains("background:var(--fg)"),
            "{cleared:?}"
        );
        assert_eq!(cleared.rows[1], (1, String::new()));
        // A resize sends every row with the new size.
        let resized = p.frames.last().unwrap();
        assert_eq!(resized.size, Some((100, 30)));
        assert_eq!(resized.rows.len(), 30);
        // Many frames are merged to fit the limit.
        let many: Vec<Event> = (0..500).map(|i| out(i * 50, &format!("{i}\r\n"))).collect();
        let p = playback((80, 24, true), &many, 100);
        assert!(
            p.frames.len() <= 100 && p.step_ms > 40,
            "{} frames",
            p.frames.len()
        );
        assert!(xterm_rgb(196) == (255, 0, 0) && xterm_rgb(244) == (128, 128, 128));
        // A client claiming a huge terminal gets a bounded one, and a screen that changes
        // wholesale all the time is merged, then cut short, within the byte budget.
        let mut huge = vec![Event {
            at_ms: 0,
            kind: EventKind::Resize,
            data: b"65000x65000".to_vec(),
        }];
        let noisy: String = (0..500).map(|i| format!("\x1b[{}m#", 31 + i % 7)).collect();
        for i in 0..20u64 {
            huge.push(out(i * 61_000, &format!("{noisy}\x1b[S")));
        }
        let p = playback_within((65000, 65000, true), &huge, 3000, 200 << 10);
        let size = p.frames.iter().find_map(|f| f.size);
        assert_eq!(size, Some((500, 200)), "clamped");
        let bytes: usize = p
            .frames
            .iter()
            .flat_map(|f| &f.rows)
            .map(|(_, h)| h.len())
            .sum();
        assert!(bytes <= 200 << 10 && p.truncated, "{bytes} bytes");
        // Without a pty a bare newline starts the next line at its first column, as the
        // client's terminal shows it.
        let plain = vec![out(0, "one\ntwo\r\nthree\n")];
        let p = playback((80, 24, false), &plain, 10);
        let rows: Vec<&str> = p.frames[1].rows.iter().map(|(_, h)| h.as_str()).collect();
        assert_eq!(&rows[..3], &["one", "two", "three"]);
    }
}

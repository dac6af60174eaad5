//! Windows asked for ahead (`sign|request --start`): when a grant's window may open, and how
//! a start is written. Pure: the clock is an argument.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};

use super::model::{format_duration, parse_duration};

/// How far ahead a window may be asked for.
pub const MAX_AHEAD: Duration = Duration::from_secs(30 * 86400);

/// Reads a start as people write it: RFC 3339 (`2026-12-01T22:00:00Z`,
/// `2026-12-01T23:00:00+01:00`) or a duration from `now` (`+2h`, `+1d12h`).
pub fn parse_start(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    let bad = || {
        format!(
            "bad start `{}`: write an RFC 3339 time like 2026-12-01T22:00:00Z, or +DURATION like +2h",
            crate::shown::shown(text)
        )
    };
    if let Some(ahead) = text.strip_prefix('+') {
        let d = parse_duration(ahead).ok_or_else(bad)?;
        let d = chrono::Duration::from_std(d).map_err(|_| bad())?;
        return Ok(now + d);
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| bad())
}

/// Why `start` cannot open a window asked for at `now`, if it cannot: it has passed, or it
/// is more than [`MAX_AHEAD`] away.
pub fn start_refusal(start: DateTime<Utc>, now: DateTime<Utc>) -> Option<String> {
    if start <= now {
        return Some(format!(
            "start {} is in the past (now is {}): give a later time, or no --start to begin at once",
            stamp(start),
            stamp(now)
        ));
    }
    let ahead = (start - now).to_std().unwrap_or_default();
    (ahead > MAX_AHEAD).then(|| {
        format!(
            "start {} is {} ahead: windows may be asked for at most {} ahead",
            stamp(start),
            format_duration(Duration::from_secs(ahead.as_secs())),
            format_duration(MAX_AHEAD)
        )
    })
}

/// A time as messages write it.
pub fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// How long until `t`, in words (`in 2h`), for countdowns in messages.
pub fn until(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let left = (t - now).to_std().unwrap_or_default();
    format!(
        "in {}",
        format_duration(Duration::from_secs(left.as_secs()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_900_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn starts_are_read_relative_or_absolute_and_bounded() {
        assert_eq!(parse_start("+2h", t(0)), Ok(t(7200)));
        assert_eq!(parse_start(&stamp(t(60)), t(0)), Ok(t(60)));
        assert_eq!(
            parse_start("2030-03-17T18:46:40+01:00", t(0)).map(stamp),
            Ok("2030-03-17T17:46:40Z".into())
        );
        for bad in ["", "+", "+2x", "tomorrow", "2h", "+-1h", "\x1b[2J"] {
            let err = parse_start(bad, t(0)).unwrap_err();
            assert!(err.contains("RFC 3339"), "{err}");
            assert!(
                !err.contains('\x1b'),
                "control characters are not echoed: {err:?}"
            );
        }
        assert!(start_refusal(t(0), t(0)).unwrap().contains("in the past"));
        assert!(start_refusal(t(-5), t(0)).unwrap().contains("in the past"));
        assert_eq!(start_refusal(t(1), t(0)), None);
        assert_eq!(start_refusal(t(30 * 86400), t(0)), None);
        let far = start_refusal(t(30 * 86400 + 1), t(0)).unwrap();
        assert!(far.contains("at most 30d ahead"), "{far}");
        assert_eq!(until(t(5400), t(0)), "in 1h30m");
    }
}

//! What a contract asks after a session: who reviews its sessions and by when (`review:` on
//! a step), and which lines are risky enough to flag or refuse (`flag:` rules).

use std::time::Duration;

use super::model::{Contract, Policies, Step, ROLE_AUDITOR};

/// How long a break-glass step's sessions wait for review when the step does not say.
pub const BREAK_GLASS_REVIEW_WITHIN: Duration = Duration::from_secs(86400);

/// Who reviews a step's sessions, and how long after a session ends they have
/// (`review: {by: [ROLE...], within: DURATION}`; `review: none` for none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewRule {
    /// Roles whose holders may sign off (never the session's own user).
    pub by: Vec<String>,
    /// Due this long after the session ends.
    pub within: Duration,
}

impl ReviewRule {
    /// The review a break-glass step gets when it says nothing: an auditor within a day.
    pub fn break_glass_default() -> ReviewRule {
        ReviewRule {
            by: vec![ROLE_AUDITOR.to_string()],
            within: BREAK_GLASS_REVIEW_WITHIN,
        }
    }

    /// The rule in words, as `policy explain` says it.
    pub fn words(&self) -> String {
        format!(
            "its sessions need a review by {} (not their own user) within {} of their end",
            self.by.join(" or "),
            super::format_duration(self.within)
        )
    }
}

/// What a step says about review, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ReviewSetting {
    /// No `review:`: none, unless the step is break-glass.
    #[default]
    Unsaid,
    /// `review: none`: not even for break-glass.
    Never,
    /// `review: {by, within}`.
    Rule(ReviewRule),
}

impl Step {
    /// The review the sessions of one of its grants need: [`Step::review`], or, when an
    /// `approvals.auto` rule approved the grant (it holds no approval though the step takes
    /// some) and the step does not say `review: none`, a review by the step's approvers within
    /// a day: a rule skips the approvers before, never the look after.
    pub fn review_of(&self, approved_by_people: bool) -> Option<ReviewRule> {
        match (&self.review, &self.approvals) {
            (ReviewSetting::Unsaid, Some(a))
                if a.count > 0 && !approved_by_people && !self.break_glass =>
            {
                Some(ReviewRule {
                    by: a.from.clone(),
                    within: std::time::Duration::from_secs(86400),
                })
            }
            _ => self.review(),
        }
    }

    /// The review this step's sessions need, if any.
    pub fn review(&self) -> Option<ReviewRule> {
        match &self.review {
            ReviewSetting::Rule(r) => Some(r.clone()),
            ReviewSetting::Unsaid if self.break_glass => Some(ReviewRule::break_glass_default()),
            ReviewSetting::Unsaid | ReviewSetting::Never => None,
        }
    }
}

/// Where a flag rule looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlagOn {
    /// Command lines: exec commands (exact) and lines typed at a shell (approximate).
    Command,
    /// Lines the target printed.
    Output,
    /// sftp/scp operations, as `op path` (`write /etc/passwd`, `upload /etc`).
    File,
}

impl crate::domain::Vocabulary for FlagOn {
    const ALL: &'static [FlagOn] = &[FlagOn::Command, FlagOn::Output, FlagOn::File];

    fn label(self) -> &'static str {
        match self {
            FlagOn::Command => "command",
            FlagOn::Output => "output",
            FlagOn::File => "file",
        }
    }
}

/// A contract's `flag:` rule: lines matching `pattern` in `on` are flagged (audited,
/// announced, marked in the recording); with `block`, an exact operation is refused.
#[derive(Debug, Clone)]
pub struct FlagRule {
    pub name: String,
    /// Searched in each line (so anchor it with `^` to match from the start).
    pub pattern: regex::Regex,
    pub on: FlagOn,
    /// Refuse the operation (only for `command` and `file`, where the bastion sees the
    /// operation whole before it runs).
    pub block: bool,
}

impl Policies {
    /// Whether someone holding `roles` reviews anything these policies ask a review of: a
    /// role some step's review names (its `review: by`, the break-glass default, or its
    /// approvers for sessions an `approvals.auto` rule let in). Who the dashboard's Review
    /// page is for; each session's own review still decides who signs it off.
    pub fn reviews_any(&self, roles: &[String]) -> bool {
        self.contracts
            .values()
            .flat_map(|c| &c.steps)
            .flat_map(|s| [s.review_of(true), s.review_of(false)])
            .flatten()
            .any(|r| r.by.iter().any(|by| roles.contains(by)))
    }
}

/// What a contract asks after a session of `step`, in words (`policy explain`): its review,
/// and its flag rules.
pub fn after_session(contract: &Contract, step: &Step) -> Vec<String> {
    use crate::domain::Vocabulary;
    let mut out = vec![match step.review() {
        Some(r) => r.words(),
        None => "its sessions need no review".to_string(),
    }];
    out.push(keep_words(contract.keep));
    for f in &contract.flags {
        out.push(format!(
            "flag rule `{}`: {} lines matching `{}` are {}",
            f.name,
            f.on.label(),
            f.pattern.as_str(),
            if f.block {
                "refused and flagged"
            } else {
                "flagged"
            }
        ));
    }
    out
}

/// A contract's `keep:` in words (`policy explain`, `sessions show`).
pub fn keep_words(keep: Option<Duration>) -> String {
    match keep {
        None => "its recordings are kept forever (no `keep:`)".to_string(),
        Some(k) => format!(
            "its recordings are kept {} after each session ends, then deleted (the deletion audited), never before the session's review is done",
            super::format_duration(k)
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{check, load, CONTRACT};
    use super::*;

    const FLAGS: &str = "flag:
  - {name: drop-table, pattern: '(?i)DROP TABLE', on: command, block: true}
  - {name: etc-write, pattern: '^write /etc/', on: file, block: true}
  - {name: secrets, pattern: 'BEGIN .*PRIVATE KEY', on: output}
";

    #[test]
    fn review_and_flags_load() {
        let text = CONTRACT.replace(
            "    max_ttl: 2h
",
            "    max_ttl: 2h
    review: {by: [sre-lead], within: 4h}
",
        ) + "  - name: break-glass
    principals: [root]
    max_ttl: 1h
  - name: quiet-glass
    principals: [root]
    max_ttl: 1h
    break_glass: true
    review: none
" + FLAGS;
        let p = load(&text).unwrap();
        let c = &p.contracts["prod-db"];
        let review = |s: &str| c.step(s).unwrap().review();
        assert_eq!(review("observe"), None);
        assert_eq!(
            review("operate"),
            Some(ReviewRule {
                by: vec!["sre-lead".into()],
                within: Duration::from_secs(4 * 3600)
            })
        );
        assert_eq!(
            review("break-glass"),
            Some(ReviewRule::break_glass_default())
        );
        assert_eq!(review("quiet-glass"), None);
        let flags: Vec<(&str, FlagOn, bool)> = c
            .flags
            .iter()
            .map(|f| (f.name.as_str(), f.on, f.block))
            .collect();
        assert_eq!(
            flags,
            [
                ("drop-table", FlagOn::Command, true),
                ("etc-write", FlagOn::File, true),
                ("secrets", FlagOn::Output, false)
            ]
        );
        let words = after_session(c, c.step("operate").unwrap());
        assert!(words[0].contains("by sre-lead"), "{words:?}");
        assert!(words[1].contains("kept forever"), "{words:?}");
        assert!(words[2].contains("refused and flagged"), "{words:?}");
    }

    #[test]
    fn keep_is_a_duration_or_forever() {
        let keep =
            |text: &str| load(&format!("{CONTRACT}{text}")).map(|p| p.contracts["prod-db"].keep);
        assert_eq!(keep("").unwrap(), None, "forever by default");
        assert_eq!(keep("keep: forever\n").unwrap(), None);
        assert_eq!(
            keep("keep: 30d\n").unwrap(),
            Some(Duration::from_secs(30 * 86400))
        );
        let p = load(&format!("{CONTRACT}keep: 2s\n")).unwrap();
        let c = &p.contracts["prod-db"];
        let words = after_session(c, c.step("operate").unwrap());
        assert!(
            words[1].contains("kept 2s after each session ends"),
            "{words:?}"
        );
        let line = CONTRACT.lines().count() + 1;
        check(
            &format!("{CONTRACT}keep: soon\n"),
            &[(line, 7, "keep: bad duration `soon`")],
        );
        check(&format!("{CONTRACT}keep: [1d]\n"), &[(line, 7, "keep")]);
    }

    #[test]
    fn bad_review_and_flags_name_the_place() {
        check(
            &CONTRACT.replace(
                "    max_ttl: 30m
",
                "    max_ttl: 30m
    review: {by: [sre-leed], within: soon}
",
            ),
            &[
                (9, 19, "unknown role `sre-leed`"),
                (9, 38, "bad duration `soon`"),
            ],
        );
        check(
            &CONTRACT.replace(
                "    max_ttl: 30m
",
                "    max_ttl: 30m
    review: always
",
            ),
            &[(9, 13, "review must be `none`")],
        );
        check(
            &format!(
                "{CONTRACT}flag:
  - {{name: a, pattern: 'DROP (TABLE', on: command}}
  - {{name: b, pattern: x, on: output, block: true}}
  - {{name: c, pattern: x, on: stdin}}
  - {{name: d, pattern: x, on: file, when: now}}
"
            ),
            &[
                (16, 24, "is not a regular expression"),
                (17, 46, "cannot block output"),
                (18, 31, "on `stdin` is not one of command, output, file"),
                (19, 37, "unknown key `when`"),
            ],
        );
    }

    #[test]
    fn a_grant_approved_by_rule_is_reviewed_by_the_steps_approvers() {
        let p = load(CONTRACT).unwrap();
        let operate = p.contracts["prod-db"].step("operate").unwrap();
        let by_rule = operate
            .review_of(false)
            .expect("reviewed after a rule approved it");
        assert_eq!(by_rule.by, ["sre-lead"]);
        assert_eq!(by_rule.within, Duration::from_secs(86400));
        assert_eq!(
            operate.review_of(true),
            None,
            "approved by people: as the step says"
        );
        let observe = p.contracts["prod-db"].step("observe").unwrap();
        assert_eq!(observe.review_of(false), None, "a step without approvals");
        let unasked =
            load(&CONTRACT.replace("    max_ttl: 2h\n", "    max_ttl: 2h\n    review: none\n"))
                .unwrap();
        let quiet = unasked.contracts["prod-db"].step("operate").unwrap();
        assert_eq!(quiet.review_of(false), None, "review: none is respected");
        let roles = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(
            p.reviews_any(&roles(&["sre", "sre-lead"])),
            "operate's approvers"
        );
        assert!(!p.reviews_any(&roles(&["sre"])));
        assert!(
            !unasked.reviews_any(&roles(&["sre-lead"])),
            "nothing asks them"
        );
    }
}

//! The validated policy model: what `load` produces and `decide` reads.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use ipnet::IpNet;
use russh::keys::ssh_key::PublicKey;

/// Built-in role that may revoke, ship KRLs, sign host certificates and read everything.
pub const ROLE_ADMIN: &str = "ramp-admin";
/// Built-in role that may read the audit log and recordings.
pub const ROLE_AUDITOR: &str = "ramp-auditor";
/// A step with this name is a break-glass step unless it sets `break_glass: false`.
pub const BREAK_GLASS: &str = "break-glass";

/// Every policy file of an installation, validated as a whole.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    /// People by name (`people.yaml`).
    pub users: BTreeMap<String, User>,
    /// Target inventory by name (`hosts.yaml`).
    pub hosts: BTreeMap<String, Host>,
    /// Contracts by name (one `*.yaml` file each).
    pub contracts: BTreeMap<String, Contract>,
    /// Roles held for now (`oncall.yaml`).
    pub oncall: Vec<OnCall>,
}

/// A role someone holds for now (`oncall.yaml`), until `until` when it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnCall {
    pub role: String,
    pub user: String,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

/// A person who may sign requests.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    /// Keys that may sign API requests; certificates are minted for these keys only.
    pub keys: Vec<PublicKey>,
    pub roles: Vec<String>,
}

/// A target host the bastion may hop to.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    /// `host:port` the bastion connects to.
    pub address: String,
    /// Labels contracts select on.
    pub labels: BTreeMap<String, String>,
    /// Pinned host key; `None` means the host must present a host-ca certificate.
    pub host_key: Option<PublicKey>,
}

/// A named ramp: who may climb it, to which targets, in which steps.
#[derive(Debug, Clone)]
pub struct Contract {
    pub name: String,
    pub description: String,
    pub targets: Targets,
    /// Roles that may request any step.
    pub requesters: Vec<String>,
    /// Whether a request must carry a reason, and the form it must take.
    pub reason: ReasonRule,
    /// The longest any step of this contract may last.
    pub max_ttl: Duration,
    pub steps: Vec<Step>,
    /// Lines to flag (and operations to refuse) in this contract's sessions (`flag:`).
    pub flags: Vec<super::FlagRule>,
    /// How long its sessions' recordings are kept after each session ends (`keep:`);
    /// `None`: forever (the default, and `keep: forever`).
    pub keep: Option<Duration>,
}

/// What a contract asks of a request's reason (`reason: required`, or
/// `reason: {required: true, pattern: '^INC-[0-9]+', example: INC-1234}`).
#[derive(Debug, Clone, Default)]
pub struct ReasonRule {
    pub required: bool,
    /// The form a reason must have when one is given (searched, so anchor it with `^`).
    pub pattern: Option<regex::Regex>,
    /// A reason of that form, shown to whoever gets it wrong.
    pub example: Option<String>,
}

impl ReasonRule {
    /// Why `reason` does not do, for contract `contract`; None when it does.
    pub fn refusal(&self, contract: &str, reason: Option<&str>) -> Option<String> {
        let given = reason.map(str::trim).filter(|r| !r.is_empty());
        match (given, &self.pattern) {
            (None, _) if self.required => Some(format!(
                "contract `{contract}` requires a reason (--reason \"{}\")",
                self.example.as_deref().unwrap_or("INC-42 ...")
            )),
            (Some(r), Some(p)) if !p.is_match(r) => Some(format!(
                "the reason `{}` does not have contract `{contract}`'s form `{}`{}",
                crate::shown::shown(r),
                p.as_str(),
                self.example
                    .as_deref()
                    .map(|e| format!("; for example: {e}"))
                    .unwrap_or_default()
            )),
            _ => None,
        }
    }
}

/// Which hosts a contract covers: a host matches if it matches any selector given.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// Name globs (`*` and `?`).
    pub names: Vec<String>,
    /// Labels that must all match.
    pub labels: BTreeMap<String, String>,
}

/// One rung of a contract.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    /// A step that must be held (actively granted) first.
    pub after: Option<String>,
    /// Never empty; validated to be safe in a certificate.
    pub principals: Vec<String>,
    pub max_ttl: Duration,
    /// `None`: granted on request.
    pub approvals: Option<Approvals>,
    pub options: CertOptions,
    /// An emergency step: its grants are announced loudly (`break-glass` webhooks). Set
    /// with `break_glass:`; a step named `break-glass` is one unless it says `false`.
    pub break_glass: bool,
    /// Who reviews its sessions, as written (see [`Step::review`]).
    pub review: super::ReviewSetting,
}

/// Who must approve a step and how many distinct people.
#[derive(Debug, Clone)]
pub struct Approvals {
    pub from: Vec<String>,
    pub count: u32,
    /// Rules that approve a matching request at once, in order (`auto:`).
    pub auto: Vec<AutoRule>,
}

/// An approval by rule: a request matching every condition given is approved at once, and the
/// audit chain names the rule (`approvals: {auto: [{name, role, reason}]}`).
#[derive(Debug, Clone)]
pub struct AutoRule {
    pub name: String,
    /// The requester holds this role (say `on-call`).
    pub role: Option<String>,
    /// The request's reason has this form (searched, so anchor it).
    pub reason: Option<regex::Regex>,
}

impl AutoRule {
    /// Whether a request by `user` with `reason` meets every condition of the rule.
    pub fn matches(&self, p: &Policies, user: &str, reason: Option<&str>) -> bool {
        self.role.as_deref().is_none_or(|r| p.has_role(user, r))
            && self
                .reason
                .as_ref()
                .is_none_or(|re| reason.is_some_and(|r| re.is_match(r.trim())))
    }

    /// The conditions in words, for reasons and the audit chain.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.role {
            parts.push(format!("the requester holds role `{r}`"));
        }
        if let Some(re) = &self.reason {
            parts.push(format!("the reason matches `{}`", re.as_str()));
        }
        parts.join(" and ")
    }
}

/// Certificate options a step grants; everything else is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertOptions {
    pub pty: bool,
    pub port_forwarding: bool,
    pub agent_forwarding: bool,
    pub x11_forwarding: bool,
    pub user_rc: bool,
    /// Becomes the `source-address` critical option when not empty.
    pub source_address: Vec<IpNet>,
    /// Becomes the `force-command` critical option.
    pub force_command: Option<String>,
}

impl Default for CertOptions {
    fn default() -> Self {
        CertOptions {
            pty: true,
            port_forwarding: false,
            agent_forwarding: false,
            x11_forwarding: false,
            user_rc: false,
            source_address: Vec::new(),
            force_command: None,
        }
    }
}

impl CertOptions {
    /// What the options allow beyond a plain login, in words an approver reads before
    /// approving (`pty`, `port forwarding`, `source-address 10.0.0.0/8`, ...).
    pub fn describe(&self) -> Vec<String> {
        let flags = [
            (self.pty, "pty"),
            (self.port_forwarding, "port forwarding"),
            (self.agent_forwarding, "agent forwarding"),
            (self.x11_forwarding, "X11 forwarding"),
            (self.user_rc, "user rc"),
        ];
        let mut out: Vec<String> = flags
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| name.to_string())
            .collect();
        if !self.source_address.is_empty() {
            let nets: Vec<String> = self.source_address.iter().map(|n| n.to_string()).collect();
            out.push(format!("source-address {}", nets.join(",")));
        }
        if let Some(cmd) = &self.force_command {
            out.push(format!("force-command `{cmd}`"));
        }
        out
    }
}

impl Policies {
    /// The user who registered this key, if any.
    pub fn user_by_key(&self, key: &PublicKey) -> Option<&User> {
        self.users
            .values()
            .find(|u| u.keys.iter().any(|k| k.key_data() == key.key_data()))
    }

    /// Whether `user` holds `role`.
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.has_role_at(user, role, chrono::Utc::now())
    }

    /// Whether `user` holds `role` at `now`: in people.yaml, or on call (`oncall.yaml`) and
    /// not past its `until`.
    pub fn has_role_at(&self, user: &str, role: &str, now: chrono::DateTime<chrono::Utc>) -> bool {
        self.roles_at(user, now).iter().any(|r| r == role)
    }

    /// Every role `user` holds at `now`: people.yaml's, then those on call.
    pub fn roles_at(&self, user: &str, now: chrono::DateTime<chrono::Utc>) -> Vec<String> {
        let Some(u) = self.users.get(user) else {
            return Vec::new();
        };
        let mut roles = u.roles.clone();
        for o in &self.oncall {
            if o.user == user && o.until.is_none_or(|t| now < t) && !roles.contains(&o.role) {
                roles.push(o.role.clone());
            }
        }
        roles
    }

    /// [`Policies::roles_at`] now.
    pub fn roles_of(&self, user: &str) -> Vec<String> {
        self.roles_at(user, chrono::Utc::now())
    }

    /// Hosts a contract covers, by name.
    pub fn targets_of<'a>(&'a self, contract: &'a Contract) -> impl Iterator<Item = &'a Host> {
        self.hosts.values().filter(|h| contract.targets.matches(h))
    }
}

impl Host {
    /// The host part of `address`: what a host certificate must name besides the host's
    /// own name (`10.0.3.7`, `db-1.internal`, `::1` without its brackets).
    pub fn address_host(&self) -> &str {
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

impl Contract {
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }
}

impl Targets {
    /// Whether a host is covered: by any name glob, or by all labels (when labels are given).
    pub fn matches(&self, host: &Host) -> bool {
        let by_name = self.names.iter().any(|g| glob_match(g, &host.name));
        let by_labels = !self.labels.is_empty()
            && self
                .labels
                .iter()
                .all(|(k, v)| host.labels.get(k) == Some(v));
        by_name || by_labels
    }
}

/// Shell-style glob with `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        // `*` first: it is always a wildcard, even where the text has a `*` too.
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Longest duration accepted anywhere (ten years): keeps time arithmetic far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86400);

/// Parses `90s`, `30m`, `2h`, `1d`, or combinations like `1h30m`, up to [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return None,
        };
        let n: u64 = digits.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        digits.clear();
    }
    (digits.is_empty() && total > 0 && total <= MAX_DURATION.as_secs())
        .then(|| Duration::from_secs(total))
}

/// Formats a duration the way policies write it (`1h30m`).
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, name) in [(86400, 'd'), (3600, 'h'), (60, 'm'), (1, 's')] {
        if secs >= unit {
            out.push_str(&format!("{}{}", secs / unit, name));
            secs %= unit;
        }
    }
    out
}

/// Why a principal is unsafe to put in a certificate, if it is.
pub fn principal_problem(p: &str) -> Option<&'static str> {
    if p.is_empty() {
        Some("is empty")
    } else if p.contains(',') {
        Some("contains `,` (OpenSSH would read it as two principals)")
    } else if p.contains('*') || p.contains('?') {
        Some("contains a wildcard")
    } else if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("contains whitespace")
    } else if p.contains('"') || p.contains('\'') {
        Some("contains a quote")
    } else if p.len() > 256 {
        Some("is longer than 256 characters")
    } else {
        None
    }
}

/// Whether a user, contract or step name can be embedded in a key id (`ramp:<user>:...`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl fmt::Display for CertOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = [
            ("pty", self.pty),
            ("port-forwarding", self.port_forwarding),
            ("agent-forwarding", self.agent_forwarding),
            ("x11-forwarding", self.x11_forwarding),
            ("user-rc", self.user_rc),
        ];
        let on: Vec<&str> = flags.iter().filter(|f| f.1).map(|f| f.0).collect();
        write!(
            f,
            "{}",
            if on.is_empty() {
                "none".into()
            } else {
                on.join(",")
            }
        )?;
        if !self.source_address.is_empty() {
            let nets: Vec<String> = self.source_address.iter().map(|n| n.to_string()).collect();
            write!(f, " source-address={}", nets.join(","))?;
        }
        if let Some(cmd) = &self.force_command {
            write!(f, " force-command={cmd:?}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let check = |s: &str, want: Option<u64>| {
            assert_eq!(parse_duration(s).map(|d| d.as_secs()), want, "{s}")
        };
        check("90s", Some(90));
        check("30m", Some(1800));
        check("2h", Some(7200));
        check("1d", Some(86400));
        check("1h30m", Some(5400));
        check("0s", None);
        check("10", None);
        check("h", None);
        check("2 hours", None);
        check("-1h", None);
        check("99999999999999999999d", None);
        check("3651d", None);
        check("3650d", Some(3650 * 86400));
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }

    #[test]
    fn globs() {
        let check = |p: &str, t: &str, want: bool| assert_eq!(glob_match(p, t), want, "{p} {t}");
        check("db-*", "db-1", true);
        check("db-*", "web-1", false);
        check("*", "", true);
        check("db-?", "db-12", false);
        check("*-1", "db-1", true);
        check("a*b*c", "axxbyyc", true);
        check("a*b*c", "axxbyy", false);
    }

    #[test]
    fn principals() {
        for bad in ["", "a,b", "root*", "a b", "\"x\"", "it's", "tab\there"] {
            assert!(principal_problem(bad).is_some(), "{bad:?}");
        }
        assert_eq!(principal_problem("readonly"), None);
    }

    /// Found by fuzz/fuzz_targets/login_name.rs (minimised input `\0*\0`): a `*` in the
    /// pattern was matched as a literal when the text had a `*` at that place, and no
    /// backtracking point was kept, so `*` did not match `*x`.
    #[test]
    fn glob_star_is_a_wildcard_even_where_the_text_has_a_star() {
        assert!(glob_match("*", "*\0"));
        assert!(glob_match("*", "*x"));
        assert!(glob_match("db-*", "db-*1"));
        assert!(glob_match("a*b", "a*xb"));
        assert!(glob_match("a*b", "a*b"));
    }
}

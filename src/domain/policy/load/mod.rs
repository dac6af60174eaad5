//! Validating policy files as a whole, collecting every problem with its position: the
//! loader's helpers, people and hosts here; contracts in [`contract`].

mod contract;
mod oncall;
mod review;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use russh::keys::ssh_key::PublicKey;

use super::model::*;
use super::yaml::{self, Kind, Node, Pos};

/// Longest a contract may allow when it does not say (`max_ttl` at the top of a contract).
pub const DEFAULT_CONTRACT_MAX_TTL: Duration = Duration::from_secs(86400);

/// One thing wrong in a policy file, with where and what would be right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Every problem found in a policy directory.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Validates policy texts given as (path, contents); the file name decides its role.
pub fn load_texts(files: &[(PathBuf, String)]) -> Result<Policies, Problems> {
    let mut ctx = Loader::default();
    let mut policies = Policies::default();
    let named = |name: &'static str| {
        files
            .iter()
            .filter(move |(p, _)| p.file_name().and_then(|n| n.to_str()) == Some(name))
    };
    let mut roles: BTreeSet<String> = [ROLE_ADMIN, ROLE_AUDITOR].map(String::from).into();
    for (path, text) in named("people.yaml") {
        if let Some(root) = ctx.parse(path, text) {
            let (users, declared) = ctx.people(&root);
            policies.users = users;
            roles.extend(declared);
        }
    }
    for (path, text) in named("oncall.yaml") {
        if let Some(root) = ctx.parse(path, text) {
            let (oncall, named_roles) = ctx.oncall(&root, &policies.users);
            policies.oncall = oncall;
            roles.extend(named_roles);
        }
    }
    for (path, text) in named("hosts.yaml") {
        if let Some(root) = ctx.parse(path, text) {
            policies.hosts = ctx.hosts(&root);
        }
    }
    roles.extend(
        policies
            .users
            .values()
            .flat_map(|u| u.roles.iter().cloned()),
    );
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for (path, text) in files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "people.yaml" || name == "hosts.yaml" || name == "oncall.yaml" {
            continue;
        }
        let Some(root) = ctx.parse(path, text) else {
            continue;
        };
        let Some((contract, pos)) = ctx.contract(&root, &roles, &policies.hosts) else {
            continue;
        };
        if let Some(other) = seen.get(&contract.name) {
            let msg = format!(
                "duplicate contract name `{}` (also defined in {}); rename one",
                contract.name,
                other.display()
            );
            ctx.problem(pos, msg);
            continue;
        }
        seen.insert(contract.name.clone(), path.clone());
        policies.contracts.insert(contract.name.clone(), contract);
    }
    if ctx.problems.is_empty() {
        Ok(policies)
    } else {
        Err(Problems(ctx.problems))
    }
}

/// The file being read and the problems found so far.
#[derive(Default)]
pub(super) struct Loader {
    file: PathBuf,
    problems: Vec<Problem>,
}

/// The fields of a mapping, after unknown and duplicate keys were reported.
struct Fields<'n> {
    pairs: Vec<(&'n str, &'n Node)>,
    pos: Pos,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

impl Loader {
    fn problem(&mut self, pos: Pos, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            line: pos.line,
            col: pos.col,
            message: message.into(),
        });
    }

    fn parse(&mut self, path: &Path, text: &str) -> Option<Node> {
        self.file = path.to_path_buf();
        match yaml::parse(text) {
            Ok(root) => Some(root),
            Err(e) => {
                self.problem(e.pos, format!("invalid YAML: {}", e.message));
                None
            }
        }
    }

    /// A mapping's fields; reports a non-mapping, unknown keys (with the allowed ones) and duplicates.
    fn fields<'n>(&mut self, node: &'n Node, what: &str, allowed: &[&str]) -> Fields<'n> {
        let mut fields = Fields {
            pairs: Vec::new(),
            pos: node.pos,
        };
        let pairs = match &node.kind {
            Kind::Map(pairs) => pairs,
            _ if node.is_null() => return fields,
            _ => {
                self.problem(
                    node.pos,
                    format!("{what} must be a mapping, found {}", node.describe()),
                );
                return fields;
            }
        };
        for (k, v) in pairs {
            let Some(key) = k.as_str() else {
                self.problem(k.pos, format!("{what}: keys must be plain names"));
                continue;
            };
            if !allowed.is_empty() && !allowed.contains(&key) {
                self.problem(
                    k.pos,
                    format!(
                        "unknown key `{key}` in {what}; expected one of: {}",
                        allowed.join(", ")
                    ),
                );
            } else if fields.get(key).is_some() {
                self.problem(k.pos, format!("duplicate key `{key}` in {what}; keep one"));
            } else {
                fields.pairs.push((key, v));
            }
        }
        fields
    }

    /// A mapping whose keys are names (users, hosts, labels), each key's position with it.
    fn entries<'n>(&mut self, node: &'n Node, what: &str) -> Vec<(&'n str, Pos, &'n Node)> {
        let mut out: Vec<(&'n str, Pos, &'n Node)> = Vec::new();
        match &node.kind {
            Kind::Map(pairs) => {
                for (k, v) in pairs {
                    match k.as_str() {
                        Some(key) if out.iter().any(|(n, _, _)| *n == key) => self.problem(
                            k.pos,
                            format!("duplicate name `{key}` in {what}; names must be unique"),
                        ),
                        Some(key) => out.push((key, k.pos, v)),
                        None => self.problem(k.pos, format!("{what}: keys must be plain names")),
                    }
                }
            }
            _ if node.is_null() => {}
            _ => self.problem(
                node.pos,
                format!("{what} must be a mapping, found {}", node.describe()),
            ),
        }
        out
    }

    fn required<'n>(&mut self, fields: &Fields<'n>, key: &str, what: &str) -> Option<&'n Node> {
        let node = fields.get(key);
        if node.is_none() {
            self.problem(
                fields.pos,
                format!("{what} is missing required key `{key}`"),
            );
        }
        node
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.as_str() {
            Some(s) if !node.is_null() => Some(s.to_string()),
            _ => {
                self.problem(
                    node.pos,
                    format!("{what} must be a string, found {}", node.describe()),
                );
                None
            }
        }
    }

    fn bool(&mut self, node: &Node, what: &str) -> Option<bool> {
        match node.as_str() {
            Some("true") => Some(true),
            Some("false") => Some(false),
            _ => {
                self.problem(node.pos, format!("{what} must be true or false"));
                None
            }
        }
    }

    fn strings(&mut self, node: &Node, what: &str) -> Vec<(String, Pos)> {
        match &node.kind {
            Kind::Seq(items) => items
                .iter()
                .filter_map(|item| Some((self.string(item, &format!("each of {what}"))?, item.pos)))
                .collect(),
            _ if node.is_null() => Vec::new(),
            _ => {
                self.problem(node.pos, format!("{what} must be a list, like [a, b]"));
                Vec::new()
            }
        }
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let text = self.string(node, what)?;
        let d = parse_duration(&text);
        if d.is_none() {
            self.problem(
                node.pos,
                format!("{what}: bad duration `{text}`; write a positive number with s, m, h or d, like 90s, 30m, 2h, 1d"),
            );
        }
        d
    }

    fn name(&mut self, name: &str, pos: Pos, what: &str) -> bool {
        let ok = valid_name(name);
        if !ok {
            self.problem(
                pos,
                format!("{what} `{name}` must be 1-64 letters, digits, `-`, `_` or `.`"),
            );
        }
        ok
    }

    fn public_key(&mut self, text: &str, pos: Pos, what: &str) -> Option<PublicKey> {
        match PublicKey::from_openssh(text.trim()) {
            Ok(k) => Some(k),
            Err(e) => {
                self.problem(
                    pos,
                    format!("{what} is not an OpenSSH public key ({e}); paste a line like `ssh-ed25519 AAAA... comment`"),
                );
                None
            }
        }
    }

    fn roles_known(&mut self, roles: &[(String, Pos)], known: &BTreeSet<String>, what: &str) {
        for (role, pos) in roles {
            if !known.contains(role) {
                let known: Vec<&str> = known.iter().map(String::as_str).collect();
                self.problem(
                    *pos,
                    format!("{what}: unknown role `{role}` (neither declared under `roles:` in people.yaml nor held by a user); known roles: {}", known.join(", ")),
                );
            }
        }
    }

    /// The users, and the roles people.yaml declares (which stay known with nobody holding them).
    fn people(&mut self, root: &Node) -> (BTreeMap<String, User>, Vec<String>) {
        let top = self.fields(root, "people.yaml", &["roles", "users"]);
        let mut users = BTreeMap::new();
        let mut declared = Vec::new();
        if let Some(node) = top.get("roles") {
            for (role, pos) in self.strings(node, "people.yaml roles") {
                if self.name(&role, pos, "role") {
                    declared.push(role);
                }
            }
        }
        let Some(node) = self.required(&top, "users", "people.yaml") else {
            return (users, declared);
        };
        let mut owners: HashMap<Vec<u8>, String> = HashMap::new();
        for (name, pos, body) in self.entries(node, "users") {
            self.name(name, pos, "user name");
            let what = format!("user `{name}`");
            let f = self.fields(body, &what, &["keys", "roles"]);
            let mut user = User {
                name: name.to_string(),
                keys: Vec::new(),
                roles: Vec::new(),
            };
            if let Some(keys) = self.required(&f, "keys", &what) {
                for (text, kpos) in self.strings(keys, &format!("{what} keys")) {
                    let Some(key) = self.public_key(&text, kpos, &format!("{what} key")) else {
                        continue;
                    };
                    let blob = key.to_bytes().unwrap_or_default();
                    if let Some(other) = owners.insert(blob, name.to_string()) {
                        self.problem(kpos, format!("{what}: this key is already registered to `{other}`; a key identifies one person"));
                    }
                    user.keys.push(key);
                }
                if user.keys.is_empty() {
                    self.problem(keys.pos, format!("{what} needs at least one key"));
                }
            }
            if let Some(roles) = f.get("roles") {
                for (role, rpos) in self.strings(roles, &format!("{what} roles")) {
                    if self.name(&role, rpos, "role") {
                        user.roles.push(role);
                    }
                }
            }
            users.insert(name.to_string(), user);
        }
        (users, declared)
    }

    fn hosts(&mut self, root: &Node) -> BTreeMap<String, Host> {
        let top = self.fields(root, "hosts.yaml", &["hosts"]);
        let mut hosts = BTreeMap::new();
        let Some(node) = self.required(&top, "hosts", "hosts.yaml") else {
            return hosts;
        };
        for (name, pos, body) in self.entries(node, "hosts") {
            self.name(name, pos, "host name");
            let what = format!("host `{name}`");
            let f = self.fields(body, &what, &["address", "labels", "host_key"]);
            let address = self
                .required(&f, "address", &what)
                .and_then(|n| Some((self.string(n, &format!("{what} address"))?, n.pos)));
            let address = match address {
                Some((a, apos)) => {
                    match normalize_address(&a) {
                        Some(a) => a,
                        None => {
                            self.problem(apos, format!("{what} address `{a}` must be host:port or host, like 10.0.3.7:22"));
                            continue;
                        }
                    }
                }
                None => continue,
            };
            let mut labels = BTreeMap::new();
            if let Some(node) = f.get("labels") {
                for (k, _, v) in self.entries(node, &format!("{what} labels")) {
                    if let Some(v) = self.string(v, &format!("{what} label `{k}`")) {
                        labels.insert(k.to_string(), v);
                    }
                }
            }
            let host_key = f.get("host_key").filter(|n| !n.is_null()).and_then(|n| {
                let text = self.string(n, &format!("{what} host_key"))?;
                self.public_key(&text, n.pos, &format!("{what} host_key"))
            });
            hosts.insert(
                name.to_string(),
                Host {
                    name: name.to_string(),
                    address,
                    labels,
                    host_key,
                },
            );
        }
        hosts
    }
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a bare address as a single-host network.
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

/// `host:port`, `[v6]:port` or a bare host (port 22).
fn normalize_address(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() || text.contains(char::is_whitespace) {
        return None;
    }
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        return Some(addr.to_string());
    }
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Some(std::net::SocketAddr::new(ip, 22).to_string());
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
            (!host.is_empty()).then(|| format!("{host}:{port}"))
        }
        None => Some(format!("{text}:22")),
        _ => None,
    }
}

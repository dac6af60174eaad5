//! What a refused login tells the person at the keyboard: the reason the service log has,
//! and what to run next. Told only to someone who proved a key this CA knows (a certificate
//! user-ca signed, or a registered key), so a stranger learns nothing about hosts or grants.

use super::login::{parse_login_name, Refusal};
use super::policy::Policies;
use crate::shown::shown;

/// The lines to show for a refusal of `user`'s login as `login_name`: the reason, then a
/// hint when there is a next step. Every name is escaped: a login name is the client's text.
pub fn refusal_notice(p: &Policies, user: &str, login_name: &str, refusal: &Refusal) -> String {
    let mut lines = vec![format!(
        "ramp-ca refused this login: {}",
        shown(&refusal.to_string())
    )];
    if let Some(hint) = hint(p, user, login_name, refusal) {
        lines.push(format!("hint: {}", shown(&hint)));
    }
    lines.join("\n")
}

fn hint(p: &Policies, user: &str, login_name: &str, refusal: &Refusal) -> Option<String> {
    let (_, target) = parse_login_name(login_name);
    match refusal {
        Refusal::NotCovered { .. } | Refusal::WrongPrincipal(_) => Some(ask_for(p, user, target)),
        Refusal::UnknownTarget(_) => Some(
            "the bastion knows the targets in hosts.yaml; log in as PRINCIPAL@TARGET \
             (ramp-ca ssh-config writes the Host patterns)"
                .into(),
        ),
        Refusal::GrantEnded { .. } | Refusal::Expired(_) | Refusal::KeyExpired { .. } => {
            Some(format!(
                "{} (ramp-ca grants lists what you hold)",
                ask_for(p, user, target)
            ))
        }
        Refusal::Revoked(_) => Some("ramp-ca grants --all shows who revoked it and why".into()),
        Refusal::NotEntitled { .. } => {
            Some("your roles changed in people.yaml; ask a ramp-ca admin".into())
        }
        Refusal::PlainKey(_) => Some(format!(
            "{} and log in with its certificate",
            ask_for(p, user, target)
        )),
        Refusal::Busy { .. } => Some("log out of a session you no longer use".into()),
        Refusal::NotOpenYet { .. } => {
            Some("log in again once it opens (ramp-ca grants counts down to it)".into())
        }
        Refusal::Ledger(_) => Some("the ledger is unavailable; try again shortly".into()),
        _ => None,
    }
}

/// Which contracts this person may ask for that cover the target, as the commands to run.
fn ask_for(p: &Policies, user: &str, target: &str) -> String {
    let Some(host) = p.hosts.get(target) else {
        return format!("`{target}` is not a target in hosts.yaml");
    };
    let roles = p.roles_of(user);
    let commands: Vec<String> = p
        .contracts
        .values()
        .filter(|c| c.targets.matches(host) && roles.iter().any(|r| c.requesters.contains(r)))
        .filter_map(|c| {
            let first = c.steps.iter().find(|s| s.after.is_none())?;
            Some(format!("ramp-ca sign {} {}", c.name, first.name))
        })
        .collect();
    if commands.is_empty() {
        format!("no contract you may request covers `{target}`")
    } else {
        format!("`{target}` is covered by: {}", commands.join("; "))
    }
}

//! Short ids: `approve 3f2a`, `sessions show 9c1d` work when the prefix names one grant or
//! session the caller may see. Candidates others' grants or sessions would be are never
//! named, so a prefix reveals nothing a full id would not.

use super::access::{is_reviewer, may_see};
use super::{Result, Service, ServiceError};
use crate::shown::shown;

/// Shortest prefix looked up; anything shorter is taken as a whole id.
pub const MIN_PREFIX: usize = 4;
/// Ids are this long: a full one is never looked up as a prefix.
const FULL: usize = 12;
/// Candidates read at most.
const CANDIDATES: usize = 20;

impl Service {
    /// The grant id `given` stands for: itself when it is whole or names no single grant
    /// `who` may see (the command then says what it says of an unknown id); the one grant
    /// it starts; or an error naming the ones it could be.
    pub async fn grant_id(&self, who: &str, given: &str) -> Result<String> {
        if given.len() < MIN_PREFIX
            || given.len() >= FULL
            || self.store.grant(given).await?.is_some()
        {
            return Ok(given.to_string());
        }
        let p = self.policies();
        let mut seen = Vec::new();
        for id in self.store.ids_starting(false, given, CANDIDATES).await? {
            if let Some(g) = self.store.grant(&id).await? {
                if may_see(&p, who, &g) {
                    seen.push(id);
                }
            }
        }
        one_of(given, "grant", seen)
    }

    /// [`Service::grant_id`] for sessions: those a reviewer may read, or one's own.
    pub async fn session_id(&self, who: &str, given: &str) -> Result<String> {
        if given.len() < MIN_PREFIX
            || given.len() >= FULL
            || self.store.session(given).await?.is_some()
        {
            return Ok(given.to_string());
        }
        let reviewer = is_reviewer(&self.policies(), who);
        let mut seen = Vec::new();
        for id in self.store.ids_starting(true, given, CANDIDATES).await? {
            if let Some(s) = self.store.session(&id).await? {
                if reviewer || s.user == who {
                    seen.push(id);
                }
            }
        }
        one_of(given, "session", seen)
    }
}

fn one_of(given: &str, what: &str, mut seen: Vec<String>) -> Result<String> {
    match seen.len() {
        0 => Ok(given.to_string()),
        1 => Ok(seen.remove(0)),
        _ => Err(ServiceError::BadRequest(format!(
            "`{}` starts several {what}s: {}; give more of the id",
            shown(given),
            seen.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_stands_for_the_one_id_it_starts_and_names_them_when_several() {
        assert_eq!(one_of("3f2a", "grant", vec![]).unwrap(), "3f2a");
        assert_eq!(
            one_of("3f2a", "grant", vec!["3f2a01020304".into()]).unwrap(),
            "3f2a01020304"
        );
        let err = one_of("3f2a", "grant", vec!["3f2a01".into(), "3f2a02".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`3f2a` starts several grants: 3f2a01, 3f2a02; give more of the id"
        );
    }
}

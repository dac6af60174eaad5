//! The installation directory as files: `keys/` ([`keys`]), `policies/` ([`load_policies`]),
//! what `init` creates ([`init`]) and what targets and clients must trust ([`trust`]).
//! `data/` is not here: only the store (through the service) opens it.

pub mod init;
pub mod keys;
pub mod trust;

use std::path::{Path, PathBuf};

use crate::domain::policy::{load_texts, Policies, Problem, Problems};

/// Reads the policy directory and validates it as a whole: `people.yaml`, `hosts.yaml` and
/// every other `*.yaml` (a contract each).
pub fn load_policies(dir: &Path) -> Result<Policies, Problems> {
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    let mut problems = Vec::new();
    let whole = |file: &Path, message: String| Problem {
        file: file.to_path_buf(),
        line: 1,
        col: 1,
        message,
    };
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .collect();
            paths.sort();
            for path in paths {
                match std::fs::read_to_string(&path) {
                    Ok(text) => files.push((path, text)),
                    Err(e) => problems.push(whole(&path, format!("cannot read: {e}"))),
                }
            }
        }
        Err(e) => {
            return Err(Problems(vec![whole(
                dir,
                format!("cannot read policy directory: {e}"),
            )]))
        }
    }
    for required in ["people.yaml", "hosts.yaml"] {
        if !files
            .iter()
            .any(|(p, _)| p.file_name() == Some(required.as_ref()))
        {
            problems.push(whole(
                &dir.join(required),
                format!("missing: every policy directory needs {required}"),
            ));
        }
    }
    match load_texts(&files) {
        Ok(policies) if problems.is_empty() => Ok(policies),
        Ok(_) => Err(Problems(problems)),
        Err(Problems(more)) => {
            problems.extend(more);
            Err(Problems(problems))
        }
    }
}

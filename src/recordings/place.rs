//! Where recordings are kept (`serve --recordings URL`, config `recordings:`, env
//! `RAMP_RECORDINGS`): this node's `DIR/data/recordings` (the default), or a directory
//! every node mounts (`file:///PATH`), so any node reads every session's recording.

use std::path::{Path, PathBuf};

/// Where recordings are kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Place {
    /// `DIR/data/recordings`, this node's own.
    #[default]
    Local,
    /// A directory every node mounts (NFS, a cluster file system): each node writes the
    /// sessions it records there and reads everyone's.
    Shared(PathBuf),
}

impl Place {
    /// What `--recordings` (or `recordings:`, or `RAMP_RECORDINGS`) says: nothing (or
    /// `local`) for `DIR/data/recordings`; `file:///PATH` (or an absolute path) for a shared
    /// directory. Object storage is refused by name, saying what is possible.
    pub fn parse(text: Option<&str>) -> Result<Place, String> {
        let text = match text.map(str::trim) {
            None | Some("") | Some("local") => return Ok(Place::Local),
            Some(t) => t,
        };
        let path = if let Some(rest) = text.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(format!(
                    "--recordings `{text}`: a file URL names an absolute path, like file:///srv/ramp/recordings (three slashes)"
                ));
            }
            rest
        } else if let Some((scheme, _)) = text.split_once("://") {
            let known = ["s3", "gs", "az", "abfs", "abfss", "azure", "http", "https"];
            let why = if known.contains(&scheme) {
                "object storage is not supported by this build yet"
            } else {
                "unknown scheme"
            };
            return Err(format!(
                "--recordings `{text}`: {why}: give file:///PATH (a directory every node mounts), or leave it out for DIR/data/recordings"
            ));
        } else if text.starts_with('/') {
            text
        } else {
            return Err(format!(
                "--recordings `{text}`: not a URL: give file:///PATH (a directory every node mounts), or leave it out for DIR/data/recordings"
            ));
        };
        Ok(Place::Shared(PathBuf::from(path)))
    }

    /// The directory recordings are written to, for an installation whose data is `data`.
    pub fn dir(&self, data: &Path) -> PathBuf {
        match self {
            Place::Local => data.join("recordings"),
            Place::Shared(dir) => dir.clone(),
        }
    }

    /// What to log.
    pub fn shown(&self) -> String {
        match self {
            Place::Local => "DIR/data/recordings".into(),
            Place::Shared(dir) => format!("file://{}", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: Option<&str>, expected: Result<Place, &str>) {
        match (Place::parse(text), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{text:?}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{text:?}: {got}"),
            (got, want) => panic!("{text:?}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn recordings_urls() {
        let shared = |p: &str| Ok(Place::Shared(PathBuf::from(p)));
        check(None, Ok(Place::Local));
        check(Some("local"), Ok(Place::Local));
        check(Some(" "), Ok(Place::Local));
        check(Some("file:///srv/rec"), shared("/srv/rec"));
        check(Some("/srv/rec"), shared("/srv/rec"));
        check(Some("file://srv/rec"), Err("names an absolute path"));
        check(
            Some("s3://bucket/prefix"),
            Err("object storage is not supported"),
        );
        check(Some("ftp://x/y"), Err("unknown scheme"));
        check(Some("recordings"), Err("not a URL"));
    }
}

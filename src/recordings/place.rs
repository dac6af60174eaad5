//! Where recordings are kept (`serve --recordings URL`, config `recordings:`, env
//! `RAMP_RECORDINGS`): this node's `DIR/data/recordings` (the default), a directory every
//! node mounts (`file:///PATH`), or object storage (`s3://BUCKET/PREFIX`), so that any node
//! reads every session's recording.

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
    /// Object storage (`s3://BUCKET/PREFIX`): each node spools what it records under its
    /// `data/recordings` and uploads it (see [`super::remote`]).
    Object(String),
}

impl Place {
    /// What `--recordings` (or `recordings:`, or `RAMP_RECORDINGS`) says: nothing (or
    /// `local`) for `DIR/data/recordings`; `file:///PATH` (or an absolute path) for a shared
    /// directory; `s3://BUCKET/PREFIX` for object storage (other object stores are refused
    /// by name, saying what is possible).
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
        } else if let Some((scheme, rest)) = text.split_once("://") {
            if scheme == "s3" {
                if rest.split('/').next().is_none_or(str::is_empty) {
                    return Err(format!(
                        "--recordings `{text}`: names no bucket (s3://BUCKET/PREFIX)"
                    ));
                }
                return Ok(Place::Object(text.to_string()));
            }
            let known = ["gs", "az", "abfs", "abfss", "azure", "http", "https"];
            let why = if known.contains(&scheme) {
                "this object store is not supported (s3:// and S3-compatible servers are)"
            } else {
                "unknown scheme"
            };
            return Err(format!(
                "--recordings `{text}`: {why}: give file:///PATH (a directory every node mounts), s3://BUCKET/PREFIX, or leave it out for DIR/data/recordings"
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
            Place::Local | Place::Object(_) => data.join("recordings"),
            Place::Shared(dir) => dir.clone(),
        }
    }

    /// What to log.
    pub fn shown(&self) -> String {
        match self {
            Place::Local => "DIR/data/recordings".into(),
            Place::Shared(dir) => format!("file://{}", dir.display()),
            Place::Object(url) => url.clone(),
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
            Ok(Place::Object("s3://bucket/prefix".into())),
        );
        check(Some("s3:///prefix"), Err("names no bucket"));
        check(
            Some("gs://bucket/prefix"),
            Err("this object store is not supported"),
        );
        check(Some("ftp://x/y"), Err("unknown scheme"));
        check(Some("recordings"), Err("not a URL"));
    }
}

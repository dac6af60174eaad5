//! Recordings in object storage (`--recordings s3://BUCKET/PREFIX`), through the
//! `object_store` crate. The bastion keeps writing each recording to this node's spool
//! (`DIR/data/recordings`, see [`super::files`]); [`super::upload`] copies it out: a live
//! recording as segments (`PREFIX/live/ID/OFFSET.seg`, each the file's bytes from OFFSET),
//! so other nodes can follow it, and a sealed one as one object (`PREFIX/ID.rec`, byte for
//! byte the file), after which its segments and its spool file go. Readers on any node
//! read the spool first, then the sealed object, then the segments.
//!
//! Credentials and the endpoint come from the environment as the AWS tools name them
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT` for an
//! S3-compatible server, `AWS_ALLOW_HTTP=true` for one on plain HTTP), never from the URL.

use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{ClientConfigKey, ObjectStore, PutPayload, RetryConfig};

use super::files::RecordingError;

type Result<T> = std::result::Result<T, RecordingError>;

/// A request to the object store gives up after this (the uploader retries later).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Checking the bucket at start gives up after this.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// One bucket and prefix where recordings are kept.
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// The URL as given, for messages.
    url: String,
    /// For reads made on blocking threads (checking and reading whole recordings).
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

/// A segment's name: its offset, zero-padded so names sort by it.
fn segment_offset(name: &str) -> Option<u64> {
    name.strip_suffix(".seg")?.parse().ok()
}

impl Remote {
    /// Connects to `s3://BUCKET/PREFIX` and checks, by writing and removing a probe
    /// object, that this node can keep recordings there; an unreachable or refusing bucket
    /// is named before anything serves.
    pub async fn open(url: &str) -> Result<Remote> {
        let bad = |why: String| RecordingError::Remote {
            url: url.to_string(),
            why,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("only s3:// object storage is supported".into()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("names no bucket (s3://BUCKET/PREFIX)".into()));
        }
        let prefix = ObjectPath::parse(prefix.trim_matches('/'))
            .map_err(|e| bad(format!("bad prefix: {e}")))?;
        // Timeouts through the configuration, so the environment's client settings (like
        // AWS_ALLOW_HTTP) stay.
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                format!("{}s", REQUEST_TIMEOUT.as_secs()),
            )
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                "5s",
            )
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(20),
                ..RetryConfig::default()
            })
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let remote = Remote {
            store: Arc::new(store),
            prefix,
            url: url.to_string(),
            runtime: tokio::runtime::Handle::current(),
        };
        let probe = remote.at(&format!(
            ".probe-{}",
            hex::encode(rand::random::<[u8; 6]>())
        ));
        let checked = async {
            remote
                .store
                .put(&probe, PutPayload::from_static(b""))
                .await?;
            remote.store.delete(&probe).await
        };
        match tokio::time::timeout(PROBE_TIMEOUT, checked).await {
            Ok(Ok(())) => Ok(remote),
            Ok(Err(e)) => Err(bad(format!("cannot write there: {e}"))),
            Err(_) => Err(bad(format!("no answer within {PROBE_TIMEOUT:?}"))),
        }
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn at(&self, name: &str) -> ObjectPath {
        self.prefix.child(name)
    }

    /// Where a sealed recording is kept.
    fn sealed(&self, id: &str) -> ObjectPath {
        self.at(&format!("{id}.rec"))
    }

    /// Where a live recording's segments are kept.
    fn live(&self, id: &str) -> ObjectPath {
        self.prefix.child("live").child(id)
    }

    fn error(&self, e: object_store::Error) -> RecordingError {
        RecordingError::Remote {
            url: self.url.clone(),
            why: e.to_string(),
        }
    }

    /// Uploads bytes `offset..` of a live recording.
    pub async fn put_segment(&self, id: &str, offset: u64, bytes: Vec<u8>) -> Result<()> {
        let at = self.live(id).child(format!("{offset:016}.seg"));
        self.store
            .put(&at, PutPayload::from(bytes))
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Uploads a sealed recording whole, then removes its segments.
    pub async fn put_sealed(&self, id: &str, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&self.sealed(id), PutPayload::from(bytes))
            .await
            .map_err(|e| self.error(e))?;
        for (at, _, _) in self.segments(id).await? {
            self.store.delete(&at).await.map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    /// Whether a sealed recording's object is there.
    pub async fn has_sealed(&self, id: &str) -> Result<bool> {
        match self.store.head(&self.sealed(id)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Deletes a recording: its sealed object and any segments left (retention); what is
    /// not there is fine, so a repeated removal does no harm.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let mut gone = vec![self.sealed(id)];
        gone.extend(self.segments(id).await?.into_iter().map(|(at, _, _)| at));
        for at in gone {
            match self.store.delete(&at).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error(e)),
            }
        }
        Ok(())
    }

    /// A live recording's segments, by offset: where each is, its offset and its size.
    async fn segments(&self, id: &str) -> Result<Vec<(ObjectPath, u64, u64)>> {
        let listed: Vec<_> = self
            .store
            .list(Some(&self.live(id)))
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;
        let mut out: Vec<_> = listed
            .into_iter()
            .filter_map(|m| {
                let offset = segment_offset(m.location.filename()?)?;
                Some((m.location, offset, m.size))
            })
            .collect();
        out.sort_by_key(|(_, offset, _)| *offset);
        Ok(out)
    }

    /// A recording's bytes from `from` on (header included, as in the file), and whether
    /// they are the sealed object's (so nothing more comes): the sealed object's, else what
    /// its segments hold; `None` when there is neither.
    pub async fn fetch_from(&self, id: &str, from: u64) -> Result<Option<(Vec<u8>, bool)>> {
        match self.store.get(&self.sealed(id)).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(|e| self.error(e))?;
                let rest = bytes.get(from as usize..).unwrap_or_default().to_vec();
                return Ok(Some((rest, true)));
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.error(e)),
        }
        let segments = self.segments(id).await?;
        if segments.is_empty() {
            return Ok(None);
        }
        // Segments may overlap (an upload repeated after a restart): each adds what lies
        // past what is already there.
        let mut out = Vec::new();
        let mut have = from;
        for (at, offset, size) in segments {
            if offset + size <= have || offset > have {
                continue;
            }
            let got = match self.store.get(&at).await {
                Ok(got) => got.bytes().await.map_err(|e| self.error(e))?,
                // Sealed meanwhile: read again from the sealed object.
                Err(object_store::Error::NotFound { .. }) => {
                    return Box::pin(self.fetch_from(id, from)).await
                }
                Err(e) => return Err(self.error(e)),
            };
            let skip = (have - offset) as usize;
            out.extend_from_slice(got.get(skip..).unwrap_or_default());
            have = offset + got.len() as u64;
        }
        Ok(Some((out, false)))
    }

    /// [`Remote::fetch_from`] the start, from a blocking thread.
    pub fn fetch_blocking(&self, id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .runtime
            .block_on(self.fetch_from(id, 0))?
            .map(|(b, _)| b))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn segment_names_sort_by_offset() {
        assert_eq!(super::segment_offset("0000000000000021.seg"), Some(21));
        assert_eq!(super::segment_offset("x.seg"), None);
        assert!(format!("{:016}.seg", 9) < format!("{:016}.seg", 10));
    }
}

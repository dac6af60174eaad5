//! Request nonces, against replay: each one recorded with its time (`nonces`), and indexed
//! by time (`nonce_times`) so the old ones are forgotten without walking them all.

use chrono::{DateTime, Utc};

use super::{Result, SledLedger};

/// The `nonce_times` key: the big-endian unix time, then the nonce.
fn nonce_time_key(at: &[u8; 8], nonce: &[u8]) -> Vec<u8> {
    let mut key = at.to_vec();
    key.extend_from_slice(nonce);
    key
}

impl SledLedger {
    /// Ledgers written before `nonce_times` existed: index their nonces once, so they are
    /// forgotten like the rest.
    pub(super) fn index_old_nonces(&self) -> Result<()> {
        if !self.nonce_times.is_empty() {
            return Ok(());
        }
        for kv in self.nonces.iter() {
            let (nonce, at) = kv?;
            let at: [u8; 8] = at.as_ref().try_into().unwrap_or([0; 8]);
            self.nonce_times.insert(nonce_time_key(&at, &nonce), &[])?;
        }
        Ok(())
    }

    /// Records a request nonce; false when it was seen before (a replay). Nothing else
    /// happens on this path: forgetting old nonces is [`SledLedger::forget_nonces`]' job, on a
    /// timer, so no client's input decides when a sweep runs.
    pub fn remember_nonce(&self, nonce: &str, now: DateTime<Utc>) -> Result<bool> {
        let at = now.timestamp().to_be_bytes();
        let fresh = self
            .nonces
            .compare_and_swap(nonce.as_bytes(), None as Option<&[u8]>, Some(&at[..]))?
            .is_ok();
        if fresh {
            self.nonce_times
                .insert(nonce_time_key(&at, nonce.as_bytes()), &[])?;
        }
        Ok(fresh)
    }

    /// Forgets nonces recorded before `cutoff` (their timestamps are refused anyway); walks
    /// only those, in time order. Returns how many went.
    pub fn forget_nonces(&self, cutoff: DateTime<Utc>) -> Result<usize> {
        // Timestamps are signed; before 1970 sorts after (big-endian two's complement), and
        // no request is stamped then.
        let end = cutoff.timestamp().max(0).to_be_bytes();
        let mut gone = 0;
        for kv in self.nonce_times.range(..&end[..]) {
            let (k, _) = kv?;
            self.nonces.remove(&k[8..])?;
            self.nonce_times.remove(&k)?;
            gone += 1;
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a nonce starting with `00` made the request that sent it sweep every
    /// stored nonce inline; now remembering does no sweep, and forgetting walks only the old.
    #[test]
    fn nonces_are_refused_twice_and_forgotten_by_age_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledLedger::open(dir.path(), Default::default()).unwrap();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let later = t0 + chrono::Duration::seconds(600);
        assert!(store.remember_nonce("00aa", t0).unwrap());
        assert!(store.remember_nonce("00bb", t0).unwrap());
        assert!(store.remember_nonce("cc", later).unwrap());
        assert!(!store.remember_nonce("00aa", later).unwrap(), "a replay");
        // Nothing was swept by the requests themselves.
        assert_eq!(store.nonces.len(), 3);
        assert_eq!(store.forget_nonces(t0).unwrap(), 0, "cutoff is exclusive");
        assert_eq!(
            store
                .forget_nonces(t0 + chrono::Duration::seconds(1))
                .unwrap(),
            2
        );
        assert_eq!(store.nonces.len(), 1);
        assert!(!store.remember_nonce("cc", later).unwrap(), "still refused");
        assert!(store.remember_nonce("00aa", later).unwrap(), "forgotten");
    }
}

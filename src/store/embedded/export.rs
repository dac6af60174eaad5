//! The embedded ledger read out whole for `store copy`, a page at a time, each record with
//! the exact bytes sled holds (see [`crate::store::copy`]).

use serde::de::DeserializeOwned;
use sled::Tree;
use tokio::sync::mpsc::Sender;

use super::{decode, key_u64, Result, SledLedger, META_HEAD, META_SERIAL};
use crate::store::checkpoints::Checkpoints;
use crate::store::copy::{Rows, PAGE};
use crate::store::StoreError;

/// Sends pages until the target stops listening; false once it has.
fn send(to: &Sender<Rows>, rows: Rows) -> bool {
    to.blocking_send(rows).is_ok()
}

/// A tree's records a page at a time, each as `(key, parsed, exact text)`; `page` turns a
/// page into what is sent. False once the target stopped listening.
fn pages<T: DeserializeOwned>(
    name: &'static str,
    tree: &Tree,
    to: &Sender<Rows>,
    page: impl Fn(Vec<(Vec<u8>, T, String)>) -> Rows,
) -> Result<bool> {
    let mut batch = Vec::with_capacity(PAGE);
    for kv in tree.iter() {
        let (k, v) = kv?;
        let record: T = decode(name, &k, &v)?;
        let text = String::from_utf8(v.to_vec()).map_err(|e| StoreError::Corrupt {
            tree: name,
            key: String::from_utf8_lossy(&k).into_owned(),
            reason: e.to_string(),
        })?;
        batch.push((k.to_vec(), record, text));
        if batch.len() == PAGE && !send(to, page(std::mem::take(&mut batch))) {
            return Ok(false);
        }
    }
    Ok(batch.is_empty() || send(to, page(batch)))
}

/// Drops the keys of a page.
fn records<T>(page: Vec<(Vec<u8>, T, String)>) -> Vec<(T, String)> {
    page.into_iter().map(|(_, r, t)| (r, t)).collect()
}

impl SledLedger {
    /// Sends every record, tree by tree, then the checkpoints kept beside the ledger, then
    /// the chain's head and the serial counter. Stops quietly when the target stops
    /// listening (it failed, and says why).
    pub fn export(&self, checkpoints: &Checkpoints, to: &Sender<Rows>) -> Result<()> {
        let done = pages("grants", &self.grants, to, |p| Rows::Grants(records(p)))?
            && pages("certs", &self.certs, to, |p| Rows::Certs(records(p)))?
            && pages("revoked", &self.revoked, to, |p| {
                let serials = p.into_iter().map(
                    |(k, _, t): (Vec<u8>, crate::domain::grant::RevokeTarget, String)| {
                        (key_u64(&k), t)
                    },
                );
                Rows::Revoked(serials.collect())
            })?
            && pages("revocations", &self.revocations, to, |p| {
                Rows::Revocations(records(p))
            })?
            && pages("audit", &self.audit, to, |p| Rows::Audit(records(p)))?
            && self.export_nonces(to)?
            && pages("sessions", &self.sessions, to, |p| {
                Rows::Sessions(records(p))
            })?
            && export_checkpoints(checkpoints, to)?;
        if !done {
            return Ok(());
        }
        let head = match self.meta.get(META_HEAD)? {
            Some(b) => decode("meta", META_HEAD, &b)?,
            None => crate::domain::audit::Head::genesis(),
        };
        let serial = self.meta.get(META_SERIAL)?.as_deref().map_or(0, key_u64);
        send(to, Rows::End { head, serial });
        Ok(())
    }

    /// Nonces are kept as the nonce and its time (big-endian unix seconds), not JSON.
    fn export_nonces(&self, to: &Sender<Rows>) -> Result<bool> {
        let mut batch = Vec::with_capacity(PAGE);
        for kv in self.nonces.iter() {
            let (nonce, at) = kv?;
            let at: [u8; 8] = at.as_ref().try_into().unwrap_or([0; 8]);
            batch.push((
                String::from_utf8_lossy(&nonce).into_owned(),
                i64::from_be_bytes(at),
            ));
            if batch.len() == PAGE && !send(to, Rows::Nonces(std::mem::take(&mut batch))) {
                return Ok(false);
            }
        }
        Ok(batch.is_empty() || send(to, Rows::Nonces(batch)))
    }
}

/// The checkpoint files, oldest first, each as the record it vouches for and its text.
fn export_checkpoints(checkpoints: &Checkpoints, to: &Sender<Rows>) -> Result<bool> {
    let mut kept = Vec::new();
    for (path, text) in checkpoints.stored()?.into_iter().rev() {
        let parsed =
            crate::checkpoint::Signed::parse_all(&text).map_err(|e| StoreError::Corrupt {
                tree: "checkpoints",
                key: path.display().to_string(),
                reason: e.to_string(),
            })?;
        for signed in parsed {
            kept.push((signed.checkpoint.seq, signed.text()));
        }
    }
    Ok(kept.is_empty() || send(to, Rows::Checkpoints(kept)))
}

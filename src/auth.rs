//! Signed API requests: an SSHSIG (namespace `ramp-ca`) over the method, path, a timestamp,
//! a nonce and the body's SHA-256, made with a key registered in `people.yaml`.
//!
//! Both halves live here so they cannot drift: [`Signer`] for the client, [`verify`] for the daemon.

use base64::Engine;
use chrono::{DateTime, Utc};
use russh::keys::ssh_encoding::{Decode, Encode};
use russh::keys::ssh_key::{HashAlg, PrivateKey, PublicKey, SshSig};
use sha2::{Digest, Sha256};

use crate::domain::policy::Policies;

/// SSHSIG namespace of every API request.
pub const NAMESPACE: &str = "ramp-ca";
/// How far a request's timestamp may be from the daemon's clock.
pub const MAX_SKEW_SECS: i64 = 300;
/// Header carrying unix seconds.
pub const HDR_TIMESTAMP: &str = "x-ramp-timestamp";
/// Header carrying a random hex nonce, never accepted twice.
pub const HDR_NONCE: &str = "x-ramp-nonce";
/// Header carrying the base64 SSHSIG blob.
pub const HDR_SIGNATURE: &str = "x-ramp-signature";

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing header {0}: requests must be signed (use the ramp-ca client)")]
    Missing(&'static str),
    #[error("bad {0} header: {1}")]
    Malformed(&'static str, String),
    #[error("request timestamp is {0}s away from the server clock (limit {MAX_SKEW_SECS}s); check your clock")]
    Stale(i64),
    #[error("signature namespace is `{0}`, expected `ramp-ca`")]
    Namespace(String),
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("key {0} is not registered to anyone in people.yaml")]
    UnknownKey(String),
    #[error("nonce already used: this request was replayed")]
    Replay,
}

/// The bytes a request signature covers.
pub fn signed_message(
    method: &str,
    path: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    let digest = hex::encode(Sha256::digest(body));
    format!("ramp-ca-request-v1\n{method}\n{path}\n{timestamp}\n{nonce}\n{digest}\n").into_bytes()
}

/// The signature headers of a request, as received.
#[derive(Debug, Clone, Default)]
pub struct Headers<'a> {
    pub timestamp: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Who signed a request.
#[derive(Debug, Clone)]
pub struct Signed {
    pub user: String,
    pub key: PublicKey,
    pub nonce: String,
}

/// Checks a request's signature and freshness and finds its signer. The caller must still
/// record the nonce (see `Service::fresh_nonce`) to refuse replays.
pub fn verify(
    policies: &Policies,
    method: &str,
    path: &str,
    headers: &Headers<'_>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Signed, AuthError> {
    let ts_text = headers.timestamp.ok_or(AuthError::Missing(HDR_TIMESTAMP))?;
    let nonce = headers.nonce.ok_or(AuthError::Missing(HDR_NONCE))?;
    let sig_text = headers.signature.ok_or(AuthError::Missing(HDR_SIGNATURE))?;
    let ts: i64 = ts_text
        .parse()
        .map_err(|_| AuthError::Malformed(HDR_TIMESTAMP, "expected unix seconds".into()))?;
    let skew = ts.saturating_sub(now.timestamp());
    if skew.unsigned_abs() > MAX_SKEW_SECS as u64 {
        return Err(AuthError::Stale(skew));
    }
    if !(16..=64).contains(&nonce.len()) || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthError::Malformed(
            HDR_NONCE,
            "expected 16-64 hex digits".into(),
        ));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(sig_text)
        .map_err(|e| AuthError::Malformed(HDR_SIGNATURE, e.to_string()))?;
    let sig = SshSig::decode(&mut blob.as_slice())
        .map_err(|e| AuthError::Malformed(HDR_SIGNATURE, format!("not an SSHSIG: {e}")))?;
    if sig.namespace() != NAMESPACE {
        return Err(AuthError::Namespace(sig.namespace().to_string()));
    }
    let key = PublicKey::from(sig.public_key().clone());
    let user = policies
        .user_by_key(&key)
        .ok_or_else(|| AuthError::UnknownKey(key.fingerprint(HashAlg::Sha256).to_string()))?;
    let msg = signed_message(method, path, ts, nonce, body);
    key.verify(NAMESPACE, &msg, &sig)
        .map_err(|e| AuthError::BadSignature(e.to_string()))?;
    Ok(Signed {
        user: user.name.clone(),
        key,
        nonce: nonce.to_ascii_lowercase(),
    })
}

/// Where a client's signatures come from.
pub enum Signer {
    /// A private key read from a file.
    Key(Box<PrivateKey>),
    /// A key held by ssh-agent (`SSH_AUTH_SOCK`).
    Agent(PublicKey),
}

/// Errors making a signature.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot sign: {0}")]
    Key(#[from] russh::keys::ssh_key::Error),
    #[error("ssh-agent: {0}")]
    Agent(String),
}

impl Signer {
    /// The public half, which the daemon uses to find the user.
    pub fn public_key(&self) -> PublicKey {
        match self {
            Signer::Key(k) => k.public_key().clone(),
            Signer::Agent(k) => k.clone(),
        }
    }

    /// Signs a request; returns the three header values (timestamp, nonce, signature).
    pub async fn sign_request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<[(&'static str, String); 3], SignError> {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let ts = now.timestamp();
        let msg = signed_message(method, path, ts, &nonce, body);
        let sig = match self {
            Signer::Key(k) => k.sign(NAMESPACE, HashAlg::Sha512, &msg)?,
            Signer::Agent(k) => agent_sign(k, &msg).await?,
        };
        let blob = sig
            .encode_vec()
            .map_err(|e| SignError::Agent(e.to_string()))?;
        Ok([
            (HDR_TIMESTAMP, ts.to_string()),
            (HDR_NONCE, nonce),
            (
                HDR_SIGNATURE,
                base64::engine::general_purpose::STANDARD.encode(blob),
            ),
        ])
    }
}

/// Asks ssh-agent to sign the SSHSIG data for `msg` with `key`.
async fn agent_sign(key: &PublicKey, msg: &[u8]) -> Result<SshSig, SignError> {
    let err = |e: russh::keys::Error| SignError::Agent(e.to_string());
    let mut agent = russh::keys::agent::client::AgentClient::connect_env()
        .await
        .map_err(err)?;
    let data = SshSig::signed_data(NAMESPACE, HashAlg::Sha512, msg)?;
    let signature = agent
        .sign_request_signature(key, None, &data)
        .await
        .map_err(err)?;
    Ok(SshSig::new(
        key.key_data().clone(),
        NAMESPACE,
        HashAlg::Sha512,
        signature,
    )?)
}

/// The agent's identities, for picking the key to sign with.
pub async fn agent_keys() -> Result<Vec<PublicKey>, SignError> {
    let err = |e: russh::keys::Error| SignError::Agent(e.to_string());
    let mut agent = russh::keys::agent::client::AgentClient::connect_env()
        .await
        .map_err(err)?;
    let ids = agent.request_identities().await.map_err(err)?;
    Ok(ids
        .into_iter()
        .filter_map(|id| match id {
            russh::keys::agent::AgentIdentity::PublicKey { key, .. } => Some(key),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use chrono::TimeZone;
    use russh::keys::ssh_key::Algorithm;

    use super::*;

    fn setup() -> (Policies, PrivateKey, PrivateKey) {
        let alice = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let stranger = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let people = format!(
            "users:\n  alice:\n    keys: [\"{}\"]\n    roles: [sre]\n",
            alice.public_key().to_openssh().unwrap()
        );
        let p = crate::domain::policy::load_texts(&[
            (PathBuf::from("people.yaml"), people),
            (PathBuf::from("hosts.yaml"), "hosts: {}\n".into()),
        ])
        .unwrap();
        (p, alice, stranger)
    }

    #[tokio::test]
    async fn signed_requests_verify_and_tampering_fails() {
        let (p, alice, stranger) = setup();
        let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        let [ts, nonce, sig] = Signer::Key(Box::new(alice))
            .sign_request("POST", "/v1/requests", b"{}", now)
            .await
            .unwrap();
        let h = Headers {
            timestamp: Some(&ts.1),
            nonce: Some(&nonce.1),
            signature: Some(&sig.1),
        };
        let check = |method: &str, path: &str, body: &[u8], at: i64| {
            verify(
                &p,
                method,
                path,
                &h,
                body,
                Utc.timestamp_opt(at, 0).unwrap(),
            )
        };
        assert_eq!(
            check("POST", "/v1/requests", b"{}", 1_800_000_000)
                .unwrap()
                .user,
            "alice"
        );
        assert!(matches!(
            check("POST", "/v1/requests", b"{ }", 1_800_000_000),
            Err(AuthError::BadSignature(_))
        ));
        assert!(matches!(
            check("POST", "/v1/revoke", b"{}", 1_800_000_000),
            Err(AuthError::BadSignature(_))
        ));
        assert!(matches!(
            check("GET", "/v1/requests", b"{}", 1_800_000_000),
            Err(AuthError::BadSignature(_))
        ));
        assert_eq!(
            check("POST", "/v1/requests", b"{}", 1_800_000_301).unwrap_err(),
            AuthError::Stale(-301)
        );

        let [ts, nonce, sig] = Signer::Key(Box::new(stranger))
            .sign_request("GET", "/", b"", now)
            .await
            .unwrap();
        let h = Headers {
            timestamp: Some(&ts.1),
            nonce: Some(&nonce.1),
            signature: Some(&sig.1),
        };
        assert!(matches!(
            verify(&p, "GET", "/", &h, b"", now),
            Err(AuthError::UnknownKey(_))
        ));
        let garbage = Headers {
            signature: Some("bm90IGEgc2lnbmF0dXJl"),
            ..h.clone()
        };
        assert!(matches!(
            verify(&p, "GET", "/", &garbage, b"", now),
            Err(AuthError::Malformed(..))
        ));
        assert_eq!(
            verify(&p, "GET", "/", &Headers::default(), b"", now).unwrap_err(),
            AuthError::Missing(HDR_TIMESTAMP)
        );
    }
}

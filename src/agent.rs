//! Adding a certificate to the running ssh-agent with a lifetime, so an engineer holding
//! several grants has every certificate offered by ssh, each gone from the agent when its
//! grant ends (as `step ssh login` does). russh's agent client adds plain keys only; the
//! message for a certificate is short and written here (draft-miller-ssh-agent, 3.2 and 3.2.6).

use std::path::Path;

use russh::keys::ssh_key::private::KeypairData;
use russh::keys::ssh_key::{Certificate, PrivateKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADD_ID_CONSTRAINED: u8 = 25;
const CONSTRAIN_LIFETIME: u8 = 1;
const SUCCESS: u8 = 6;
/// An agent answers within this long or is given up on.
const AGENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a certificate could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no ssh-agent (SSH_AUTH_SOCK is not set)")]
    NoAgent,
    #[error("only Ed25519 keys can be added with their certificate here; use -i KEY (KEY-cert.pub beside it)")]
    KeyType,
    #[error("ssh-agent at {socket}: {why}")]
    Agent { socket: String, why: String },
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The ADD_ID_CONSTRAINED message for an Ed25519 key's certificate, living `lifetime` seconds.
fn add_message(
    key: &PrivateKey,
    cert: &Certificate,
    comment: &str,
    lifetime: u32,
) -> Result<Vec<u8>, AgentError> {
    let KeypairData::Ed25519(pair) = key.key_data() else {
        return Err(AgentError::KeyType);
    };
    let blob = cert.to_bytes().map_err(|e| AgentError::Agent {
        socket: String::new(),
        why: e.to_string(),
    })?;
    let public = pair.public.0;
    let mut secret = pair.private.to_bytes().to_vec();
    secret.extend_from_slice(&public);
    let mut body = vec![ADD_ID_CONSTRAINED];
    put_string(&mut body, cert.algorithm().to_certificate_type().as_bytes());
    put_string(&mut body, &blob);
    put_string(&mut body, &public);
    put_string(&mut body, &secret);
    put_string(&mut body, comment.as_bytes());
    body.push(CONSTRAIN_LIFETIME);
    body.extend_from_slice(&lifetime.to_be_bytes());
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.append(&mut body);
    Ok(out)
}

/// Adds `cert` (for `key`) to the agent at `SSH_AUTH_SOCK` for `lifetime` seconds.
pub async fn add_certificate(
    key: &PrivateKey,
    cert: &Certificate,
    comment: &str,
    lifetime: u32,
) -> Result<(), AgentError> {
    let socket = std::env::var_os("SSH_AUTH_SOCK").ok_or(AgentError::NoAgent)?;
    let message = add_message(key, cert, comment, lifetime)?;
    let shown = Path::new(&socket).display().to_string();
    let fail = |why: String| AgentError::Agent {
        socket: shown.clone(),
        why,
    };
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(&socket).await?;
        stream.write_all(&message).await?;
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len).min(1 << 16) as usize;
        let mut answer = vec![0u8; len];
        stream.read_exact(&mut answer).await?;
        std::io::Result::Ok(answer)
    };
    let answer = tokio::time::timeout(AGENT_TIMEOUT, exchange)
        .await
        .map_err(|_| fail("no answer within 5s".into()))?
        .map_err(|e| fail(e.to_string()))?;
    if answer.first() == Some(&SUCCESS) {
        Ok(())
    } else {
        Err(fail("it refused the certificate".into()))
    }
}

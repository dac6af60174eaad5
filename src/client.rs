//! The client half of the API: signs each request with the engineer's key and turns the
//! daemon's answers into typed values or clear errors.

use std::path::{Path, PathBuf};

use chrono::Utc;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::auth::{self, Signer};
use crate::install::keys;
use crate::tls;

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach ramp-ca at {server}: {reason} (is `ramp-ca serve` running? set --server or RAMP_SERVER)")]
    Connect { server: String, reason: String },
    /// The TLS handshake failed: the server's certificate is not trusted, not for the name
    /// asked for, or the server does not speak TLS; `reason` says which and what to do.
    #[error("{server}: {reason}")]
    Tls { server: String, reason: String },
    /// `--ca-cert` cannot be used, or there is nothing to verify an https server with.
    #[error("{0}")]
    Trust(String),
    /// The daemon refused; `status` tells whether it was a denial, a bad request, ...
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("unexpected answer from {server}: {reason}")]
    Protocol { server: String, reason: String },
    #[error("no usable identity key: {0}")]
    Identity(String),
    #[error(transparent)]
    Sign(#[from] auth::SignError),
}

/// A signed-request client for one daemon.
pub struct Client {
    /// Like `http://127.0.0.1:7400`, without a trailing slash.
    server: String,
    http: reqwest::Client,
    signer: Signer,
    /// `--ca-cert`, named in the advice when the server's certificate is not trusted.
    ca_cert: Option<PathBuf>,
}

impl Client {
    /// A client for `server`; an `https://` server's certificate is verified (chain and host
    /// name) against the CA certificates in `ca_cert` when given, else the system's.
    pub fn new(
        server: &str,
        ca_cert: Option<&Path>,
        signer: Signer,
    ) -> Result<Client, ClientError> {
        let server = server_url(server, ca_cert.is_some());
        let builder = reqwest::Client::builder();
        let builder = if server.starts_with("https://") || ca_cert.is_some() {
            let roots = tls::roots(ca_cert).map_err(|e| {
                ClientError::Trust(match e {
                    tls::TlsError::NoSystemRoots => format!(
                        "{e} to verify {server} with; pass --ca-cert F (the CA certificate that signed the server's)"
                    ),
                    e => format!("--ca-cert {e}"),
                })
            })?;
            let config =
                tls::client_config(roots).map_err(|e| ClientError::Trust(e.to_string()))?;
            builder.use_preconfigured_tls(config)
        } else {
            builder
        };
        let http = builder
            .build()
            .map_err(|e| ClientError::Trust(root_cause(&e)))?;
        Ok(Client {
            server,
            http,
            signer,
            ca_cert: ca_cert.map(Path::to_path_buf),
        })
    }

    /// The key requests are signed with (certificates are minted for it).
    pub fn public_key(&self) -> russh::keys::ssh_key::PublicKey {
        self.signer.public_key()
    }

    /// Sends a signed request and returns the raw body of a 2xx answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Vec<u8>, ClientError> {
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| ClientError::Protocol {
                server: self.server.clone(),
                reason: e.to_string(),
            })?,
            None => Vec::new(),
        };
        let headers = self
            .signer
            .sign_request(method.as_str(), path, &bytes, Utc::now())
            .await?;
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.server))
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let resp = req
            .body(bytes)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| ClientError::Connect {
            server: self.server.clone(),
            reason: root_cause(&e),
        })?;
        if status.is_success() {
            return Ok(body.to_vec());
        }
        let message = serde_json::from_slice::<crate::wire::ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| {
                format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim())
            });
        Err(ClientError::Refused {
            status: status.as_u16(),
            message,
        })
    }

    /// Why a request got no answer: a TLS failure explained, else the innermost cause.
    fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        match tls_failure(e) {
            Some(rustls) => ClientError::Tls {
                server: self.server.clone(),
                reason: explain_tls(rustls, self.ca_cert.as_deref()),
            },
            None => ClientError::Connect {
                server: self.server.clone(),
                reason: root_cause(e),
            },
        }
    }

    /// Sends a signed request and decodes a JSON answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let bytes = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            server: self.server.clone(),
            reason: e.to_string(),
        })
    }
}

/// The innermost error message, which names the actual cause (connection refused, ...).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The rustls error somewhere in `e`'s causes. An `io::Error`'s `source()` skips the error it
/// wraps (tokio-rustls hands rustls's over wrapped, maybe more than once), so the walk steps
/// into what each `io::Error` holds instead.
fn tls_failure<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// What a failed handshake means to whoever runs the command, and what to do about it.
fn explain_tls(e: &rustls::Error, ca_cert: Option<&Path>) -> String {
    use rustls::CertificateError as C;
    let trusted = match ca_cert {
        Some(path) => format!("a CA certificate in {}", path.display()),
        None => "a CA the system trusts".to_string(),
    };
    let advice = "; pass --ca-cert F with the CA certificate that signed it";
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => format!(
            "the server's certificate is not trusted: it is not signed by {trusted}{advice}"
        ),
        rustls::Error::InvalidCertificate(
            name @ (C::NotValidForName | C::NotValidForNameContext { .. }),
        ) => format!(
            "the server's certificate is not for the name in --server: {name}; use a --server \
             URL with a name the certificate holds"
        ),
        rustls::Error::InvalidCertificate(
            when @ (C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. }),
        ) => format!(
            "the server's certificate is not trusted: {when} (renew it, or check this machine's clock)"
        ),
        rustls::Error::InvalidCertificate(other) => {
            format!("the server's certificate is not trusted: {other}{advice}")
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "the server does not speak TLS there ({e}); if it serves plain HTTP, use an http:// --server"
        ),
        other => format!("the TLS handshake failed: {other}"),
    }
}

/// `~/.ssh/id_ed25519`, where the client looks for its identity by default.
pub fn default_key_path() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_default();
    Path::new(&home).join(".ssh").join("id_ed25519")
}

/// `--server` as a URL: `127.0.0.1:7400` (no scheme) is taken as `http://127.0.0.1:7400`, or
/// `https://` when a CA to verify it with was given; no trailing slash.
pub fn server_url(server: &str, tls: bool) -> String {
    let server = server.trim().trim_end_matches('/');
    if server.contains("://") {
        server.to_string()
    } else {
        format!("{}://{server}", if tls { "https" } else { "http" })
    }
}

/// The signer for `--key PATH`: the private key file when it is readable and unencrypted,
/// else the ssh-agent key matching `PATH.pub`, else the agent's first key.
pub async fn signer_for(path: &Path) -> Result<Signer, ClientError> {
    if path.extension().is_some_and(|e| e == "pub") {
        let private = path.with_extension("");
        return Err(ClientError::Identity(format!(
            "{} is the public half of a key; pass the private key file (--key {}), or leave --key out to use ssh-agent",
            path.display(),
            private.display()
        )));
    }
    let file_err = match keys::read_private(path) {
        Ok(k) => return Ok(Signer::Key(Box::new(k))),
        Err(e) => e,
    };
    if std::env::var_os("SSH_AUTH_SOCK").is_none() {
        return Err(ClientError::Identity(file_err.to_string()));
    }
    let agent_keys = auth::agent_keys()
        .await
        .map_err(|e| ClientError::Identity(format!("{file_err}; and {e}")))?;
    let wanted = keys::read_public(&keys::pub_path(path)).ok();
    let chosen = match &wanted {
        Some(w) => agent_keys
            .into_iter()
            .find(|k| k.key_data() == w.key_data()),
        None => agent_keys.into_iter().next(),
    };
    chosen.map(Signer::Agent).ok_or_else(|| {
        ClientError::Identity(match wanted {
            Some(_) => format!(
                "{file_err}; and ssh-agent does not hold {}",
                keys::pub_path(path).display()
            ),
            None => format!("{file_err}; and ssh-agent holds no keys"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::server_url;

    #[test]
    fn a_server_without_a_scheme_gets_one() {
        assert_eq!(server_url("127.0.0.1:7400", false), "http://127.0.0.1:7400");
        assert_eq!(
            server_url("ramp.example:7400/", true),
            "https://ramp.example:7400"
        );
        assert_eq!(
            server_url("https://ramp.example/", false),
            "https://ramp.example"
        );
        assert_eq!(
            server_url(" http://127.0.0.1:7400 ", true),
            "http://127.0.0.1:7400"
        );
    }
}

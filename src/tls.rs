//! rustls from PEM files, for both ends of a connection: the API's certificate chain and
//! private key (checked as they are read, swapped in place on reload), and the certificate
//! authorities a client trusts (a file, or the system's). Everything runs on ring, the
//! provider reqwest and the PostgreSQL client already use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::Deserialize;

/// What is wrong with a TLS file or setting.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file that cannot be read or does not hold what it should; the message names it.
    #[error("{}: {why}", path.display())]
    File { path: PathBuf, why: String },
    /// No CA file was given and the system has no CA certificates to fall back on.
    #[error("no system CA certificates found")]
    NoSystemRoots,
    /// rustls refused the configuration (no protocol version in common with the provider).
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The `tls:` section of the service config (`serve --tls-cert F --tls-key F`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key of that certificate: PKCS#8, RSA (PKCS#1) or EC (SEC1), unencrypted.
    pub key: PathBuf,
}

/// ring, as every TLS user in ramp-ca has it.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA certificates to verify a server with: every certificate in `file` when given (and
/// only those), else the system's.
pub fn roots(file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match file {
        Some(path) => {
            let bad = |why: String| TlsError::File {
                path: path.to_path_buf(),
                why,
            };
            let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
            let certs = certificates(&bytes).map_err(&bad)?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(bad("holds no usable PEM certificate".into()));
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    Ok(roots)
}

/// A client configuration that verifies servers (chain and host name) against `roots`.
pub fn client_config(roots: RootCertStore) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Every `CERTIFICATE` block of a PEM text, in order; an error says what is unreadable.
fn certificates(pem_text: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem_text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM: {e}"))
}

/// The API's certificate and key, from the files [`Settings`] names. It is the server
/// configuration's certificate resolver, so [`ServerCert::reload`] takes effect for the next
/// handshake without touching connections already open.
#[derive(Debug)]
pub struct ServerCert {
    /// Where the certificate and key are (re)read from.
    files: Settings,
    /// What new handshakes present.
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCert {
    /// Reads and checks the certificate chain and the key (that the key is the certificate's
    /// included); errors name the file.
    pub fn load(files: &Settings) -> Result<Arc<ServerCert>, TlsError> {
        Ok(Arc::new(ServerCert {
            current: RwLock::new(certified_key(files)?),
            files: files.clone(),
        }))
    }

    /// Rereads both files; on an error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = certified_key(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// The files it is read from.
    pub fn files(&self) -> &Settings {
        &self.files
    }

    /// A server configuration presenting this certificate: TLS 1.2 and 1.3, HTTP/1.1 by
    /// ALPN (the only protocol the API serves), no client certificates (requests are signed).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The chain and key of `files`, checked to belong together.
fn certified_key(files: &Settings) -> Result<Arc<CertifiedKey>, TlsError> {
    let (cert_path, key_path) = (&files.cert, &files.key);
    let bad = |path: &Path, why: String| TlsError::File {
        path: path.to_path_buf(),
        why,
    };
    let cert_pem = std::fs::read(cert_path)
        .map_err(|e| bad(cert_path, format!("cannot read the TLS certificate: {e}")))?;
    let chain = certificates(&cert_pem).map_err(|why| bad(cert_path, why))?;
    if chain.is_empty() {
        return Err(bad(
            cert_path,
            "holds no certificate (PEM `BEGIN CERTIFICATE` blocks, the server's first, then \
             any intermediates)"
                .into(),
        ));
    }
    let key_pem = std::fs::read(key_path)
        .map_err(|e| bad(key_path, format!("cannot read the TLS private key: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let why = match e {
            pem::Error::NoItemsFound if contains(&key_pem, b"ENCRYPTED PRIVATE KEY") => {
                "the private key is encrypted; give it unencrypted (and readable only by ramp-ca)"
                    .to_string()
            }
            pem::Error::NoItemsFound => "holds no private key (PEM `BEGIN PRIVATE KEY`, \
                                         `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY`)"
                .to_string(),
            e => format!("not a PEM private key: {e}"),
        };
        bad(key_path, why)
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad(key_path, format!("not a usable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(bad(
                key_path,
                format!(
                    "is not the key of the certificate in {} (the first certificate there must \
                     be the server's own)",
                    cert_path.display()
                ),
            ))
        }
        Err(e) => return Err(bad(cert_path, format!("not a usable certificate: {e}"))),
    }
    Ok(Arc::new(certified))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that is not what it should be is named, with what is wrong (the key's checks
    /// need a real certificate: tests/it/tls.rs makes one).
    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let empty = write("empty.pem", "");
        let missing = dir.path().join("missing.pem");
        let check = |cert: &Path, key: &Path, expected: &[&str]| {
            let files = Settings {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            };
            let err = ServerCert::load(&files).unwrap_err().to_string();
            for part in expected {
                assert!(err.contains(part), "{err}\nwants {part}");
            }
        };
        let (missing_s, empty_s) = (missing.display().to_string(), empty.display().to_string());
        check(
            &missing,
            &empty,
            &[&missing_s, "cannot read the TLS certificate"],
        );
        check(&empty, &empty, &[&empty_s, "holds no certificate"]);
        let roots_err = roots(Some(&empty)).unwrap_err().to_string();
        assert!(
            roots_err.contains(&empty_s) && roots_err.contains("no usable PEM certificate"),
            "{roots_err}"
        );
        let roots_err = roots(Some(&missing)).unwrap_err().to_string();
        assert!(roots_err.contains(&missing_s), "{roots_err}");
    }
}

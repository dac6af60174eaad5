//! A certificate authority of a test's own, made with the `openssl` command line (which
//! scripts/install-deps installs): the TLS tests' servers (the API, PostgreSQL) present
//! certificates it signs, and their clients trust it by file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A CA in a directory: `ca.pem` (its certificate) and `ca.key`, valid two days.
pub struct TestCa {
    /// Where the CA's files and the certificates it issues are written.
    dir: PathBuf,
}

/// A new EC P-256 key, unencrypted (PKCS#8 `BEGIN PRIVATE KEY`), for `openssl req`.
const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

impl TestCa {
    /// A new CA named `cn`, in `dir`.
    pub fn new(dir: &Path, cn: &str) -> TestCa {
        openssl(
            dir,
            &[
                &["req", "-x509"][..],
                &EC_KEY,
                &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"],
                &["-subj", &format!("/CN={cn}")],
                &["-addext", "basicConstraints=critical,CA:TRUE"],
                &["-addext", "keyUsage=critical,keyCertSign"],
            ]
            .concat(),
        );
        TestCa {
            dir: dir.to_path_buf(),
        }
    }

    /// The CA's certificate (PEM), what clients are told to trust.
    pub fn pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate signed by the CA for `alt_names` (like `DNS:localhost`, comma
    /// separated) with a new EC key: `NAME.pem` and `NAME.key` in the CA's directory.
    pub fn issue(&self, name: &str, alt_names: &str) -> (PathBuf, PathBuf) {
        let key = format!("{name}.key");
        openssl(
            &self.dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &key,
            ],
        );
        let key = self.dir.join(key);
        (self.issue_for(name, alt_names, &key), key)
    }

    /// A server certificate signed by the CA for `alt_names` and the existing `key` (any
    /// type openssl reads): `NAME.pem` in the CA's directory. Its subject is the first name.
    pub fn issue_for(&self, name: &str, alt_names: &str, key: &Path) -> PathBuf {
        let (pem, csr, ext) = (
            format!("{name}.pem"),
            format!("{name}.csr"),
            format!("{name}.ext"),
        );
        let cn = alt_names
            .split(',')
            .next()
            .and_then(|n| n.split_once(':'))
            .map_or(name, |(_, n)| n);
        let key = key.to_str().expect("a UTF-8 key path");
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-key",
                key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "subjectAltName={alt_names}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .expect("write the extensions file");
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ],
        );
        self.dir.join(pem)
    }
}

/// Runs `openssl ARGS` in `dir`; fails the test with openssl's stderr if it fails.
pub fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn openssl (scripts/install-deps installs it): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// base64 of the SHA-256 of a certificate's public key (its DER SubjectPublicKeyInfo): the pin
/// Chromium's `--ignore-certificate-errors-spki-list` takes.
pub fn spki_sha256(cert: &Path) -> String {
    use base64::Engine;
    use sha2::Digest;
    let dir = cert.parent().expect("the certificate's directory");
    let cert = cert.to_str().expect("a UTF-8 path");
    let public = openssl(dir, &["x509", "-in", cert, "-noout", "-pubkey"]);
    let public_pem = dir.join("spki.pem");
    std::fs::write(&public_pem, public).expect("write the public key");
    let der = openssl(
        dir,
        &["pkey", "-pubin", "-in", "spki.pem", "-outform", "der"],
    );
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(der))
}

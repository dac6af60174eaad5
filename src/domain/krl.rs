//! OpenSSH key revocation lists (PROTOCOL.krl), written from the ledger's revocations.
//!
//! Only the certificate parts of the format are produced: one
//! `KRL_SECTION_CERTIFICATES` section per CA, holding a serial list and/or a
//! key-id list. KRLs are left unsigned on purpose: OpenSSH 9.4 and later refuse
//! to load KRLs carrying the legacy signature section, so integrity has to come
//! from how the file is distributed.
use russh::keys::ssh_key::PublicKey;

/// `"SSHKRL\n\0"`, the eight magic bytes every KRL starts with.
const KRL_MAGIC: &[u8; 8] = b"SSHKRL\n\0";
/// The only KRL format version OpenSSH defines.
const KRL_FORMAT_VERSION: u32 = 1;
/// Section revoking certificates issued by one CA.
const KRL_SECTION_CERTIFICATES: u8 = 1;
/// Certificate subsection listing revoked serial numbers.
const KRL_SECTION_CERT_SERIAL_LIST: u8 = 0x20;
/// Certificate subsection listing revoked key ids.
const KRL_SECTION_CERT_KEY_ID: u8 = 0x23;

/// What one CA's certificates a KRL revokes.
pub struct RevokedCerts<'a> {
    /// The CA that signed the revoked certificates.
    pub ca: &'a PublicKey,
    /// Serial numbers revoked (any order, may contain duplicates).
    pub serials: Vec<u64>,
    /// Key ids revoked (any order, may contain duplicates).
    pub key_ids: Vec<String>,
}

/// Encodes a KRL. `krl_version` should increase with each KRL issued; `generated` is unix seconds.
///
/// Serial number 0 is never written: OpenSSH rejects the whole KRL as invalid
/// if it lists serial 0 (checked with ssh-keygen 9.2), so a certificate issued
/// with serial 0 can only be revoked through its key id. A CA with nothing
/// revoked gets no section at all.
pub fn encode(
    sections: &[RevokedCerts<'_>],
    krl_version: u64,
    generated: u64,
    comment: &str,
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(KRL_MAGIC);
    put_u32(&mut out, KRL_FORMAT_VERSION);
    put_u64(&mut out, krl_version);
    put_u64(&mut out, generated);
    // No flags are defined, and the reserved field must be present but empty.
    put_u64(&mut out, 0);
    put_string(&mut out, b"");
    put_string(&mut out, comment.as_bytes());

    for section in sections {
        if let Some(body) = certificates_section(section) {
            out.push(KRL_SECTION_CERTIFICATES);
            put_string(&mut out, &body);
        }
    }
    out
}

/// The KRL of everything the ledger revoked: every revoked serial under each CA that signs
/// with the ledger's serials (user-ca; node-ca, whose hop certificates carry the user's
/// serial; host-ca, for clients that trust it). It depends on the revocations only: its
/// version is how many there were and its time the last one's, so it is byte for byte the
/// same until the next revocation (and a file deployed from it changes only then).
pub fn of_revocations(
    cas: &[&PublicKey],
    serials: &[u64],
    revocations: &[super::grant::Revocation],
) -> Vec<u8> {
    let version = revocations.len() as u64;
    let generated = revocations
        .iter()
        .map(|r| r.at.timestamp())
        .max()
        .unwrap_or(0);
    let sections: Vec<RevokedCerts<'_>> = cas
        .iter()
        .map(|ca| RevokedCerts {
            ca,
            serials: serials.to_vec(),
            key_ids: Vec::new(),
        })
        .collect();
    encode(&sections, version, generated.max(0) as u64, "ramp-ca")
}

/// Builds the body of one `KRL_SECTION_CERTIFICATES` section, or `None` when it
/// would revoke nothing.
fn certificates_section(section: &RevokedCerts<'_>) -> Option<Vec<u8>> {
    // Sorted and deduplicated so that the same ledger state always yields the
    // same bytes, which keeps published KRLs diffable.
    let mut serials: Vec<u64> = section
        .serials
        .iter()
        .copied()
        .filter(|&s| s != 0)
        .collect();
    serials.sort_unstable();
    serials.dedup();
    let mut key_ids: Vec<&str> = section.key_ids.iter().map(String::as_str).collect();
    key_ids.sort_unstable();
    key_ids.dedup();

    if serials.is_empty() && key_ids.is_empty() {
        return None;
    }

    // Writing into a Vec does no I/O, so this can only fail on a field longer
    // than u32::MAX bytes, which no real public key has.
    let ca_blob = section
        .ca
        .to_bytes()
        .expect("a public key always encodes to its wire blob");

    let mut body = Vec::new();
    put_string(&mut body, &ca_blob);
    put_string(&mut body, b""); // reserved

    // Both subsections are optional, but PROTOCOL.krl requires each present
    // one to list at least one entry, hence the emptiness checks.
    if !serials.is_empty() {
        let mut list = Vec::with_capacity(serials.len() * 8);
        for serial in serials {
            put_u64(&mut list, serial);
        }
        body.push(KRL_SECTION_CERT_SERIAL_LIST);
        put_string(&mut body, &list);
    }
    if !key_ids.is_empty() {
        let mut list = Vec::new();
        for key_id in key_ids {
            put_string(&mut list, key_id.as_bytes());
        }
        body.push(KRL_SECTION_CERT_KEY_ID);
        put_string(&mut body, &list);
    }
    Some(body)
}

/// Appends a big-endian `uint32`.
fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// Appends a big-endian `uint64`.
fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// Appends an SSH `string`: a `uint32` length followed by the bytes.
fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    // Silently truncating the length would corrupt every following field, so
    // an impossible 4 GiB string is a bug worth stopping on.
    let len = u32::try_from(bytes.len()).expect("SSH string longer than u32::MAX bytes");
    put_u32(out, len);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A CA and two user certificates signed by it, all made by `ssh-keygen`.
    struct Fixture {
        /// Keeps the key files alive for the duration of the test.
        dir: tempfile::TempDir,
        /// The CA's public key.
        ca: PublicKey,
        /// Certificate with key id `keyid-1` and serial 7.
        cert1: PathBuf,
        /// Certificate with key id `keyid-2` and serial 8.
        cert2: PathBuf,
    }

    /// Runs `ssh-keygen` with `args`, panicking with its stderr if it fails.
    fn ssh_keygen(args: &[&str]) {
        let out = Command::new("ssh-keygen")
            .args(args)
            .output()
            .expect("run ssh-keygen");
        assert!(
            out.status.success(),
            "ssh-keygen {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Generates an unencrypted ed25519 key pair at `path` and `path.pub`.
    fn new_key(path: &Path) {
        ssh_keygen(&[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            path.to_str().unwrap(),
        ]);
    }

    /// Loads the OpenSSH public key stored at `path`.
    fn load_public(path: &Path) -> PublicKey {
        PublicKey::from_openssh(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// Signs `user.pub` in `dir` with the CA key and returns the certificate path.
    fn sign(dir: &Path, user: &str, key_id: &str, serial: u64) -> PathBuf {
        let user_key = dir.join(user);
        new_key(&user_key);
        let ca = dir.join("ca");
        let pub_path = dir.join(format!("{user}.pub"));
        ssh_keygen(&[
            "-q",
            "-s",
            ca.to_str().unwrap(),
            "-I",
            key_id,
            "-n",
            "someone",
            "-z",
            &serial.to_string(),
            pub_path.to_str().unwrap(),
        ]);
        dir.join(format!("{user}-cert.pub"))
    }

    /// Builds a fresh CA with two signed user certificates.
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        new_key(&dir.path().join("ca"));
        let ca = load_public(&dir.path().join("ca.pub"));
        let cert1 = sign(dir.path(), "user1", "keyid-1", 7);
        let cert2 = sign(dir.path(), "user2", "keyid-2", 8);
        Fixture {
            dir,
            ca,
            cert1,
            cert2,
        }
    }

    /// Writes `krl` next to the fixture's keys and asks `ssh-keygen -Q` about
    /// `cert`, returning its exit code and stdout.
    fn query(fx: &Fixture, krl: &[u8], cert: &Path) -> (i32, String) {
        let krl_path = fx.dir.path().join("krl");
        std::fs::write(&krl_path, krl).unwrap();
        let out = Command::new("ssh-keygen")
            .arg("-Q")
            .arg("-f")
            .arg(&krl_path)
            .arg(cert)
            .output()
            .expect("run ssh-keygen");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        // A missing exit code means a signal; that must fail the test, not
        // pass as "revoked".
        let code = out.status.code().expect("ssh-keygen killed by a signal");
        assert!(
            code == 0 || code == 1,
            "ssh-keygen -Q could not check the KRL: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (code, stdout)
    }

    /// Asserts `ssh-keygen -Q` reports `cert` as revoked by `krl`.
    fn assert_revoked(fx: &Fixture, krl: &[u8], cert: &Path) {
        let (code, stdout) = query(fx, krl, cert);
        assert_eq!(code, 1, "expected revoked, got: {stdout}");
        assert!(
            stdout.contains("REVOKED"),
            "expected revoked, got: {stdout}"
        );
    }

    /// Asserts `ssh-keygen -Q` reports `cert` as not revoked by `krl`.
    fn assert_ok(fx: &Fixture, krl: &[u8], cert: &Path) {
        let (code, stdout) = query(fx, krl, cert);
        assert_eq!(code, 0, "expected ok, got: {stdout}");
        assert!(!stdout.contains("REVOKED"), "expected ok, got: {stdout}");
    }

    #[test]
    fn header_layout() {
        let krl = encode(&[], 3, 1_700_000_000, "hi");
        let mut expected = b"SSHKRL\n\0".to_vec();
        expected.extend_from_slice(&1u32.to_be_bytes());
        expected.extend_from_slice(&3u64.to_be_bytes());
        expected.extend_from_slice(&1_700_000_000u64.to_be_bytes());
        expected.extend_from_slice(&0u64.to_be_bytes());
        expected.extend_from_slice(&0u32.to_be_bytes());
        expected.extend_from_slice(&2u32.to_be_bytes());
        expected.extend_from_slice(b"hi");
        assert_eq!(krl, expected);
    }

    #[test]
    fn revokes_by_serial() {
        let fx = fixture();
        let krl = encode(
            &[RevokedCerts {
                ca: &fx.ca,
                // Unsorted, duplicated and an unrelated serial, as the ledger may hand them over.
                serials: vec![42, 7, 42, 7],
                key_ids: vec![],
            }],
            1,
            1_700_000_000,
            "serial test",
        );
        assert_revoked(&fx, &krl, &fx.cert1);
        assert_ok(&fx, &krl, &fx.cert2);
    }

    #[test]
    fn revokes_by_key_id() {
        let fx = fixture();
        let krl = encode(
            &[RevokedCerts {
                ca: &fx.ca,
                serials: vec![],
                key_ids: vec!["zzz".into(), "keyid-1".into(), "keyid-1".into()],
            }],
            2,
            1_700_000_000,
            "key id test",
        );
        assert_revoked(&fx, &krl, &fx.cert1);
        assert_ok(&fx, &krl, &fx.cert2);
    }

    #[test]
    fn empty_krl_is_accepted() {
        let fx = fixture();
        let krl = encode(&[], 1, 1_700_000_000, "");
        assert_ok(&fx, &krl, &fx.cert1);
        assert_ok(&fx, &krl, &fx.cert2);

        // A CA with nothing revoked must not produce an empty, invalid section.
        let krl = encode(
            &[RevokedCerts {
                ca: &fx.ca,
                serials: vec![],
                key_ids: vec![],
            }],
            1,
            1_700_000_000,
            "",
        );
        assert_ok(&fx, &krl, &fx.cert1);
        assert_ok(&fx, &krl, &fx.cert2);
    }

    #[test]
    fn serial_zero_does_not_invalidate_krl() {
        let fx = fixture();
        let krl = encode(
            &[RevokedCerts {
                ca: &fx.ca,
                serials: vec![0, 8],
                key_ids: vec![],
            }],
            1,
            1_700_000_000,
            "",
        );
        assert_ok(&fx, &krl, &fx.cert1);
        assert_revoked(&fx, &krl, &fx.cert2);
    }

    #[test]
    fn other_cas_revocations_do_not_apply() {
        let fx = fixture();
        let other_path = fx.dir.path().join("other-ca");
        new_key(&other_path);
        let other = load_public(&fx.dir.path().join("other-ca.pub"));
        let krl = encode(
            &[RevokedCerts {
                ca: &other,
                serials: vec![7, 8],
                key_ids: vec!["keyid-1".into(), "keyid-2".into()],
            }],
            1,
            1_700_000_000,
            "",
        );
        assert_ok(&fx, &krl, &fx.cert1);
        assert_ok(&fx, &krl, &fx.cert2);
    }
}

//! `ramp-ca trust`: what targets and clients need to trust this CA, as text to paste.

use std::path::Path;

use crate::install::keys::{self, AUDIT_SIGNER, HOST_CA, NODE_CA};
use crate::Error;

fn public_line(dir: &Path, name: &str) -> Result<String, Error> {
    let key = keys::read_public(&keys::pub_path(&dir.join("keys").join(name)))?;
    Ok(key
        .to_openssh()
        .map_err(crate::domain::cert::CertError::from)?)
}

/// sshd_config lines and key file for a target: it trusts node-ca only, so every login
/// comes through the bastion and its recording.
pub fn sshd(dir: &Path) -> Result<String, Error> {
    let node_ca = public_line(dir, NODE_CA)?;
    Ok(format!(
        "# On each target, add to /etc/ssh/sshd_config:\n\
         TrustedUserCAKeys /etc/ssh/ramp_node_ca.pub\n\
         RevokedKeys /etc/ssh/ramp_revoked.krl\n\
         # and, once `ramp-ca sign-host --name NAME --pubkey /etc/ssh/ssh_host_ed25519_key.pub` made it:\n\
         HostCertificate /etc/ssh/ssh_host_ed25519_key-cert.pub\n\
         # Logins map certificate principals to accounts by name (readonly -> account readonly);\n\
         # use AuthorizedPrincipalsFile to map them otherwise.\n\
         #\n\
         # /etc/ssh/ramp_node_ca.pub:\n\
         {node_ca}\n\
         #\n\
         # /etc/ssh/ramp_revoked.krl: from `ramp-ca krl --out ramp_revoked.krl` (refresh it on every revocation)\n"
    ))
}

/// The `known_hosts` line that makes clients trust every host certificate from host-ca.
pub fn known_hosts(dir: &Path) -> Result<String, Error> {
    let host_ca = public_line(dir, HOST_CA)?;
    Ok(format!("@cert-authority * {host_ca}\n"))
}

/// The audit-signer's public key, for auditors to pin (`audit verify --signer`), with the
/// `allowed_signers` line `ssh-keygen -Y verify` takes.
pub fn audit_signer(dir: &Path) -> Result<String, Error> {
    let key = public_line(dir, AUDIT_SIGNER)?;
    let ns = crate::checkpoint::NAMESPACE;
    Ok(format!(
        "# ramp-ca's audit-signer: it signs checkpoints of the audit chain (SSHSIG, namespace {ns}).\n\
         # Save this output as audit-signer.pub and check checkpoints you keep with\n\
         #   ramp-ca audit verify --checkpoint FILE --signer audit-signer.pub\n\
         # For ssh-keygen -Y verify -f allowed_signers -I {ns} -n {ns}, allowed_signers holds:\n\
         #   {ns} namespaces=\"{ns}\" {key}\n\
         {key}\n"
    ))
}

//! `ssh-config`: plain `ssh TARGET` through the bastion, for the targets of the caller's
//! grants.

use std::path::Path;

use reqwest::Method;

use super::{connect, write_atomic, CliError, ClientOpts, Result};
use crate::domain::grant::State;
use crate::wire::grants::{GrantView, Whoami};
use crate::wire::{self as routes};

/// `ssh-config`: Host blocks for the targets of the caller's grants (active or scheduled),
/// through the bastion.
pub(super) async fn ssh_config(
    opts: &ClientOpts,
    bastion: Option<&str>,
    out: Option<&Path>,
) -> Result {
    let client = connect(opts).await?;
    let grants: Vec<GrantView> = client
        .call(Method::GET, routes::GRANTS, None::<&()>)
        .await?;
    let me: Whoami = client
        .call(Method::GET, routes::WHOAMI, None::<&()>)
        .await?;
    let server = crate::client::server_url(&opts.server, opts.ca_cert.is_some());
    let (host, port) = bastion_address(bastion, &server)?;
    let mut targets: Vec<String> = grants
        .iter()
        // A window not open yet too: the block is written ahead, and the bastion tells
        // whoever logs in before the start when it opens.
        .filter(|g| g.grant.user == me.user)
        .filter(|g| matches!(g.grant.state, State::Active | State::Scheduled))
        .flat_map(|g| g.targets.iter().cloned())
        .collect();
    targets.sort();
    targets.dedup();
    let text = ssh_config_text(&host, port, &targets);
    match out {
        Some(path) => {
            write_atomic(path, text.as_bytes())?;
            println!(
                "wrote {} ({} targets); add `Include {}` at the top of ~/.ssh/config",
                path.display(),
                targets.len(),
                path.display()
            );
            Ok(())
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// `--bastion HOST[:PORT]`, or the API server's host and port 2222.
pub(super) fn bastion_address(bastion: Option<&str>, server: &str) -> Result<(String, u16)> {
    let given = match bastion {
        Some(b) => b.to_string(),
        None => {
            let url = reqwest::Url::parse(server)
                .map_err(|e| CliError::Usage(format!("--server {server}: {e}")))?;
            url.host_str().unwrap_or("127.0.0.1").to_string()
        }
    };
    match given.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
            let port = port
                .parse()
                .map_err(|_| CliError::Usage(format!("--bastion {given}: bad port `{port}`")))?;
            Ok((host.trim_matches(['[', ']']).to_string(), port))
        }
        _ => Ok((given.trim_matches(['[', ']']).to_string(), 2222)),
    }
}

/// One Host block a target: `ssh TARGET` logs in to the bastion as `TARGET` (its first
/// principal there), checking the bastion's host certificate under its `ramp-bastion` name.
fn ssh_config_text(host: &str, port: u16, targets: &[String]) -> String {
    let mut out = String::from(
        "# ramp-ca: reach these targets through the bastion (`ramp-ca ssh-config`).\n\
         # Another principal: ssh -l PRINCIPAL@TARGET TARGET. The bastion's host certificate is\n\
         # checked against the host CA (`ramp-ca trust known-hosts` prints the line to add).\n",
    );
    for t in targets {
        out.push_str(&format!(
            "Host {t}\n    HostName {host}\n    Port {port}\n    User {t}\n    HostKeyAlias ramp-bastion\n"
        ));
    }
    if targets.is_empty() {
        out.push_str("# (no active grant yet: `ramp-ca sign` first)\n");
    }
    out
}

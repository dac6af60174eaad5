//! Client commands about access: `sign`, `request`, `approve`, `deny`, `grants`, `revoke`,
//! `krl`, `sign-host`, `dashboard`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use reqwest::Method;
use serde_json::json;

use super::output::{describe_grant, grants_table, reasons_text, unix_time};
use super::{connect, emit, key_path, write_atomic, CliError, ClientOpts, Result, StepArgs};
use crate::client::Client;
use crate::domain::grant::State;
use crate::domain::policy;
use crate::install::keys;
use crate::shown::Shown;
use crate::wire::dashboard::LinkBody;
use crate::wire::grants::{
    GrantView, HostCertificate, Outcome, ReasonBody, RequestBody, Revocation, RevokeBody,
    SignHostBody,
};
use crate::wire::{self as routes, path};

/// An empty JSON object, the body of a signed `POST` that needs none.
fn no_body() -> serde_json::Value {
    json!({})
}

impl StepArgs {
    /// The request body, certifying the signing key when `certify`.
    fn body(self, certify: bool) -> Result<RequestBody> {
        let contract = self.contract.ok_or_else(|| {
            CliError::Usage("--contract C is required (or --grant ID for sign)".into())
        })?;
        Ok(RequestBody {
            contract,
            step: self.step,
            ttl: self.ttl,
            reason: self.reason,
            certify,
            start: self.start,
        })
    }
}

/// `request`: a step asked for, without minting.
pub(super) async fn request(opts: &ClientOpts, ask: StepArgs) -> Result {
    let body = ask.body(false)?;
    let client = connect(opts).await?;
    let out: Outcome = client
        .call(Method::POST, routes::REQUESTS, Some(&body))
        .await?;
    // Say what comes next: a certificate to pick up, now or once approved.
    let next = match out.grant.grant.state {
        State::Pending => format!(
            "once approved, pick the certificate up with: {}\n",
            pick_up_command(opts, &out.grant.grant.id)
        ),
        State::Active | State::Scheduled => format!(
            "get its certificate with: {}\n",
            pick_up_command(opts, &out.grant.grant.id)
        ),
        _ => String::new(),
    };
    emit(opts, &out, || {
        format!(
            "{}{}{next}",
            describe_grant(&out.grant),
            reasons_text(&out.reasons)
        )
    })
}

/// The command that writes a grant's certificate beside the key this command signed with.
fn pick_up_command(opts: &ClientOpts, id: &str) -> String {
    format!(
        "ramp-ca sign --grant {id}{}",
        opts.key
            .as_ref()
            .map(|k| format!(" --key {}", k.display()))
            .unwrap_or_default()
    )
}

pub(super) async fn approve(opts: &ClientOpts, id: &str) -> Result {
    let client = connect(opts).await?;
    let out: Outcome = client
        .call(
            Method::POST,
            &path(routes::GRANT_APPROVE, id),
            Some(&no_body()),
        )
        .await?;
    emit(opts, &out, || describe_grant(&out.grant))
}

pub(super) async fn deny(opts: &ClientOpts, id: &str, reason: String) -> Result {
    let client = connect(opts).await?;
    let out: GrantView = client
        .call(
            Method::POST,
            &path(routes::GRANT_DENY, id),
            Some(&ReasonBody { reason }),
        )
        .await?;
    emit(opts, &out, || describe_grant(&out))
}

/// `dashboard`: a one-time login link.
pub(super) async fn dashboard(opts: &ClientOpts) -> Result {
    let client = connect(opts).await?;
    let mut out: LinkBody = client
        .call(Method::POST, routes::DASHBOARD_LINK, Some(&no_body()))
        .await?;
    if out.url.is_none() {
        out.url = Some(format!(
            "{}{}",
            crate::client::server_url(&opts.server, opts.ca_cert.is_some()),
            out.path
        ));
    }
    let url = out.url.clone().unwrap_or_default();
    let expires = super::output::rfc3339(out.expires);
    emit(opts, &out, || {
        format!("{url}\n(open it once, before {expires}; it logs you in as the key's owner)\n")
    })
}

/// `grants`: what the caller may see; `--all` adds ended ones.
pub(super) async fn list(opts: &ClientOpts, all: bool) -> Result {
    let client = connect(opts).await?;
    let url = if all {
        format!("{}?all=true", routes::GRANTS)
    } else {
        routes::GRANTS.to_string()
    };
    let out: Vec<GrantView> = client.call(Method::GET, &url, None::<&()>).await?;
    emit(opts, &out, || grants_table(&out, Utc::now()))
}

pub(super) async fn revoke(opts: &ClientOpts, body: RevokeBody) -> Result {
    if body.serial.is_none() && body.grant.is_none() && body.user.is_none() {
        return Err(CliError::Usage(
            "revoke needs --serial N, --grant ID or --user U".into(),
        ));
    }
    let client = connect(opts).await?;
    let out: Revocation = client
        .call(Method::POST, routes::REVOKE, Some(&body))
        .await?;
    emit(opts, &out, || revocation_text(&out))
}

/// What a revocation did (or, dry, would do): certificates, grants ended and shortened, and
/// live sessions cut.
fn revocation_text(out: &Revocation) -> String {
    let (done, will) = if out.dry_run {
        ("would revoke", "would ")
    } else {
        ("revoked", "")
    };
    let mut text = format!(
        "{done} {} certificate(s) {:?} and {} grant(s)\n",
        out.serials.len(),
        out.serials,
        out.grants.len(),
    );
    let cascade = out.cascade.clone().unwrap_or_default();
    for g in &cascade.ended {
        text += &format!(
            "  {will}end grant {} ({}'s {}/{})\n",
            g.id,
            Shown(&g.user),
            Shown(&g.contract),
            Shown(&g.step)
        );
    }
    for g in &cascade.shortened {
        let end = g
            .end
            .map(|e| e.format("%Y-%m-%d %H:%M:%SZ").to_string())
            .unwrap_or_default();
        text += &format!(
            "  {will}shorten grant {} ({}/{}) to end {end}\n",
            g.id,
            Shown(&g.contract),
            Shown(&g.step)
        );
    }
    for s in &cascade.sessions {
        text += &format!(
            "  {will}cut live session {} ({} on {}@{})\n",
            s.id,
            Shown(&s.user),
            Shown(&s.principal),
            Shown(&s.target)
        );
    }
    if out.dry_run {
        text += "nothing changed: run it again without --dry-run to revoke\n";
    } else {
        text += "ship the new KRL to targets: ramp-ca krl\n";
    }
    text
}

/// `krl`: the daemon's KRL, written to `to`.
pub(super) async fn krl(opts: &ClientOpts, to: &Path) -> Result {
    let client = connect(opts).await?;
    let bytes = client.send(Method::GET, routes::KRL, None::<&()>).await?;
    write_atomic(to, &bytes)?;
    emit(opts, &json!({"path": to, "bytes": bytes.len()}), || {
        format!("wrote {} ({} bytes)\n", to.display(), bytes.len())
    })
}

/// `ssh_host_ed25519_key.pub` -> `ssh_host_ed25519_key-cert.pub`, as ssh-keygen names it.
fn host_cert_path(pubkey: &Path) -> PathBuf {
    let s = pubkey.to_string_lossy();
    PathBuf::from(format!("{}-cert.pub", s.strip_suffix(".pub").unwrap_or(&s)))
}

/// `sign-host`: a host certificate for the key in `pubkey`, written beside it.
pub(super) async fn sign_host(
    opts: &ClientOpts,
    name: String,
    pubkey: &Path,
    ttl: Option<String>,
) -> Result {
    let public_key = std::fs::read_to_string(pubkey).map_err(crate::Error::io(pubkey))?;
    keys::parse_public(&public_key).map_err(|e| {
        CliError::Refused(format!(
            "{}: not an OpenSSH public key: {e}",
            pubkey.display()
        ))
    })?;
    let client = connect(opts).await?;
    let body = SignHostBody {
        name,
        public_key,
        ttl,
    };
    let out: HostCertificate = client
        .call(Method::POST, routes::HOSTS_SIGN, Some(&body))
        .await?;
    let cert = out.certificate;
    let to = host_cert_path(pubkey);
    write_atomic(&to, format!("{cert}\n").as_bytes())?;
    emit(opts, &json!({"path": to, "certificate": cert}), || {
        format!("wrote {}\n", to.display())
    })
}

/// `sign`: asks (or picks a certificate up from `--grant`), waits for approval when told
/// to, and writes `KEY-cert.pub`.
pub(super) async fn sign(
    opts: &ClientOpts,
    ask: StepArgs,
    grant: Option<String>,
    wait: bool,
    timeout: Duration,
    to_agent: bool,
) -> Result {
    let key_path = key_path(opts);
    let body = match &grant {
        Some(_) => None,
        None => Some(ask.body(true)?),
    };
    let client = connect(opts).await?;
    let mut out: Outcome = match grant {
        Some(id) => from_grant(&client, &id, wait).await?,
        None => {
            client
                .call(Method::POST, routes::REQUESTS, body.as_ref())
                .await?
        }
    };
    if out.certificate.is_none() && out.grant.grant.state == State::Pending {
        let id = out.grant.grant.id.clone();
        let pick_up = pick_up_command(opts, &id);
        if !wait {
            return emit(opts, &out, || {
                format!(
                    "{}{}once approved, pick the certificate up with: {pick_up}\n(or wait for it now: {pick_up} --wait)\n",
                    describe_grant(&out.grant),
                    reasons_text(&out.reasons)
                )
            });
        }
        eprintln!(
            "{}{}waiting for approval (up to {})...",
            describe_grant(&out.grant),
            reasons_text(&out.reasons),
            policy::format_duration(timeout)
        );
        wait_for_approval(&client, &id, timeout, &pick_up).await?;
        out = certificate_of(&client, &id).await?;
    }
    // `--wait` on a window not open yet waits for it, then asks again: the grant may have
    // been revoked meanwhile.
    if let (true, State::Scheduled, Some(start)) =
        (wait, out.grant.grant.state, out.grant.grant.start)
    {
        wait_for_start(&out.grant, start).await;
        out = certificate_of(&client, &out.grant.grant.id.clone()).await?;
    }
    let Some(cert) = &out.certificate else {
        return Err(CliError::Refused(format!(
            "grant {} is {}; no certificate",
            out.grant.grant.id, out.grant.grant.state
        )));
    };
    // A window not open yet: its certificate goes to the grant's own file only, so the one
    // `ssh -i KEY` offers (and the agent's) keep working until it opens.
    let opens_later = out.grant.grant.state == State::Scheduled;
    // KEY-cert.pub is what `ssh -i KEY` offers (the newest); each grant keeps a file of its
    // own too, so taking another step never loses a certificate that still works.
    let g = &out.grant.grant;
    let own = grant_cert_path(&key_path, &g.contract, &g.step);
    write_atomic(&own, format!("{cert}\n").as_bytes())?;
    let path = match opens_later {
        true => own.clone(),
        false => keys::cert_path(&key_path),
    };
    write_atomic(&path, format!("{cert}\n").as_bytes())?;
    let parsed = keys::read_certificate(&path)?;
    let agent = if to_agent && !opens_later {
        Some(add_to_agent(&key_path, &parsed, &out.grant).await)
    } else {
        None
    };
    let wrote = match opens_later {
        true => format!(
            "wrote {} only: {} is left as it is until the window opens (then: ramp-ca sign --grant {} --wait)",
            own.display(),
            keys::cert_path(&key_path).display(),
            g.id
        ),
        false => format!("wrote {} (and {})", path.display(), own.display()),
    };
    emit(
        opts,
        &json!({"grant": out.grant, "serial": out.serial, "certificate": cert, "path": path,
                "grant_path": own, "agent": agent.as_ref().map(|a| a.as_ref().map_err(|e| e.to_string()))}),
        || {
            let mut text = format!(
                "{}{}certificate serial {} for {} valid {}until {}\n{wrote}\n",
                describe_grant(&out.grant),
                if out.existing {
                    reasons_text(&out.reasons)
                } else {
                    String::new()
                },
                parsed.serial(),
                parsed.valid_principals().join(","),
                match parsed.valid_after() > Utc::now().timestamp().max(0) as u64 {
                    true => format!("from {} ", unix_time(parsed.valid_after())),
                    false => String::new(),
                },
                unix_time(parsed.valid_before()),
            );
            match &agent {
                Some(Ok(until)) => text.push_str(&format!(
                    "added to ssh-agent until {until} (it leaves the agent when the grant ends)\n"
                )),
                Some(Err(why)) => text.push_str(&format!("not added to ssh-agent: {why}\n")),
                None => {}
            }
            let server = crate::client::server_url(&opts.server, opts.ca_cert.is_some());
            let (host, port) = super::ssh_config::bastion_address(None, &server)
                .unwrap_or_else(|_| ("BASTION".into(), 2222));
            for target in &out.grant.targets {
                text.push_str(&format!(
                    "connect: ssh -p {port} {}@{target}@{host}   (or, after `ramp-ca ssh-config`: ssh {target})\n",
                    out.grant.principals.first().map_or("", String::as_str)
                ));
            }
            text
        },
    )
}

/// `sign --wait` on a window that opens later: sleeps until it opens (at most
/// [`policy::MAX_AHEAD`]), saying so on stderr.
async fn wait_for_start(view: &GrantView, start: chrono::DateTime<Utc>) {
    let now = Utc::now();
    let left = (start - now)
        .to_std()
        .unwrap_or_default()
        .min(policy::MAX_AHEAD);
    eprintln!(
        "grant {} opens at {} ({}); waiting for it...",
        view.grant.id,
        super::output::rfc3339(start),
        policy::until(start, now)
    );
    // A second past it, so a server whose clock runs a little behind ours sees it open too.
    tokio::time::sleep(left + Duration::from_secs(1)).await;
}

/// `KEY-CONTRACT-STEP-cert.pub`: a grant's own certificate file beside the key.
fn grant_cert_path(key: &Path, contract: &str, step: &str) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(format!("-{contract}-{step}-cert.pub"));
    PathBuf::from(s)
}

/// Adds the certificate to ssh-agent for the grant's remaining life; returns until when.
async fn add_to_agent(
    key_path: &Path,
    cert: &russh::keys::ssh_key::Certificate,
    grant: &GrantView,
) -> std::result::Result<String, crate::agent::AgentError> {
    let key = keys::read_private(key_path).map_err(|e| crate::agent::AgentError::Agent {
        socket: String::new(),
        why: format!("the private key is not readable here ({e}); it may be in the agent already"),
    })?;
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let lifetime = cert.valid_before().saturating_sub(now).min(u32::MAX as u64) as u32;
    let comment = format!(
        "ramp-ca {}/{} grant {}",
        grant.grant.contract, grant.grant.step, grant.grant.id
    );
    crate::agent::add_certificate(&key, cert, &comment, lifetime).await?;
    Ok(unix_time(cert.valid_before()))
}

/// A certificate for the signing key from grant `id`.
async fn certificate_of(client: &Client, id: &str) -> Result<Outcome> {
    Ok(client
        .call(
            Method::POST,
            &path(routes::GRANT_CERTIFICATE, id),
            Some(&no_body()),
        )
        .await?)
}

/// `sign --grant ID`: a pending request is waited on (or reported); anything else asks for
/// a certificate.
async fn from_grant(client: &Client, id: &str, wait: bool) -> Result<Outcome> {
    let view: GrantView = client
        .call(Method::GET, &path(routes::GRANT, id), None::<&()>)
        .await?;
    if view.grant.state != State::Pending {
        return certificate_of(client, id).await;
    }
    if !wait {
        return Err(CliError::Refused(format!(
            "grant `{id}` is still pending: {} of {} approvals; wait for it with: ramp-ca sign --grant {id} --wait",
            view.grant.approvals.len(),
            view.grant.approvals_needed
        )));
    }
    Ok(Outcome {
        grant: view,
        certificate: None,
        serial: None,
        reasons: Vec::new(),
        existing: true,
    })
}

/// Long-polls grant `id` while it waits for approvals (the request, or with `extension` its
/// extension), at most `timeout`: the daemon answers once it is decided, or after a while.
/// Returns the grant as it last stood, and whether it still waits.
pub(super) async fn poll_grant(
    client: &Client,
    id: &str,
    extension: bool,
    timeout: Duration,
) -> Result<(GrantView, bool)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let which = if extension { "&extension=true" } else { "" };
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let poll = left
            .as_secs()
            .clamp(1, crate::service::MAX_GRANT_WAIT.as_secs());
        let view: GrantView = client
            .call(
                Method::GET,
                &format!("{}?wait={poll}{which}", path(routes::GRANT, id)),
                None::<&()>,
            )
            .await?;
        let waiting = match extension {
            true => view.grant.extension.is_some(),
            false => view.grant.state == State::Pending,
        };
        if !waiting || tokio::time::Instant::now() >= deadline {
            return Ok((view, waiting));
        }
    }
}

/// Waits for request `id` to be decided (see [`poll_grant`]): fine once active.
async fn wait_for_approval(client: &Client, id: &str, timeout: Duration, pick_up: &str) -> Result {
    let (view, waiting) = poll_grant(client, id, false, timeout).await?;
    match view.grant.state {
        State::Pending if waiting => Err(CliError::Refused(format!(
            "request {id} is still pending after {} ({} of {} approvals); it stays filed: pick the certificate up once approved with: {pick_up}",
            policy::format_duration(timeout),
            view.grant.approvals.len(),
            view.grant.approvals_needed
        ))),
        State::Active | State::Scheduled => Ok(()),
        other => {
            let why = view
                .grant
                .closed
                .map(|c| format!(" by {}: {}", c.by, c.reason))
                .unwrap_or_default();
            Err(CliError::Refused(format!("request {id} was {other}{why}")))
        }
    }
}

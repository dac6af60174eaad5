//! `extend GRANT --ttl T`: more time on an active grant, waited on when it takes approvals,
//! then its fresh certificate written as `sign --grant` writes it.

use std::time::Duration;

use reqwest::Method;

use super::grants::{poll_grant, sign};
use super::output::reasons_text;
use super::{connect, emit, CliError, ClientOpts, Result, StepArgs};
use crate::domain::policy;
use crate::wire::grants::{ExtendBody, Outcome};
use crate::wire::{self as routes, path};

/// `extend GRANT --ttl T`: asks for more time; once given (at once, or after approvals
/// with `--wait`), writes the fresh certificate as `sign --grant` does.
pub(super) async fn extend(
    opts: &ClientOpts,
    id: &str,
    body: ExtendBody,
    wait: bool,
    timeout: Duration,
    to_agent: bool,
) -> Result {
    let client = connect(opts).await?;
    let out: Outcome = client
        .call(Method::POST, &path(routes::GRANT_EXTEND, id), Some(&body))
        .await?;
    let id = out.grant.grant.id.clone();
    if !opts.json {
        eprint!("{}", reasons_text(&out.reasons));
    }
    if let Some(ext) = &out.grant.grant.extension {
        if !wait {
            return emit(opts, &out, || {
                format!(
                    "the extension to {} waits for approval: its certificate comes with `ramp-ca sign --grant {id}` once approved (or wait now: ramp-ca extend {id} --ttl {} --wait)\n",
                    ext.end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    body.ttl
                )
            });
        }
        let wanted = ext.end;
        let (view, waiting) = poll_grant(&client, &id, true, timeout).await?;
        if waiting {
            return Err(CliError::Refused(format!(
                "the extension of grant {id} is still pending after {}; it stays filed",
                policy::format_duration(timeout)
            )));
        }
        if view.grant.end.is_none_or(|end| end < wanted) {
            return Err(CliError::Refused(format!(
                "the extension of grant {id} was denied; it still ends at {}",
                view.grant.end.map(|e| e.to_rfc3339()).unwrap_or_default()
            )));
        }
    }
    sign(
        opts,
        StepArgs::default(),
        Some(id),
        false,
        timeout,
        to_agent,
    )
    .await
}

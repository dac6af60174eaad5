//! Watching `policies/oncall.yaml`: the one policy file a program rewrites (the team's
//! scheduler, at every hand-off), so it is re-read when it changes rather than on SIGHUP.

use std::path::Path;
use std::sync::Arc;

use crate::service::Service;

/// How often `oncall.yaml` is looked at for a change.
const ONCALL_POLL: std::time::Duration = std::time::Duration::from_secs(2);

type Stamp = Option<(Option<std::time::SystemTime>, u64)>;

fn stamp(p: &Path) -> Stamp {
    std::fs::metadata(p)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

/// Re-reads the policies when `oncall.yaml` changes (its scheduler rewrites it at every
/// hand-off): no signal or restart needed. A file with problems leaves the old policies in
/// force, as a SIGHUP does. The file as it stands now is the one already loaded: called
/// before the daemon says it is up, so no change made after that goes unseen.
pub fn watch_oncall(service: Arc<Service>, path: std::path::PathBuf) {
    let seen = stamp(&path);
    tokio::spawn(watch(service, path, seen));
}

async fn watch(service: Arc<Service>, path: std::path::PathBuf, mut seen: Stamp) {
    let mut tick = tokio::time::interval(ONCALL_POLL);
    loop {
        tick.tick().await;
        let now = stamp(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match service.reload_policies() {
            Ok(()) => tracing::info!(file = %path.display(), "policies reloaded: oncall.yaml changed"),
            Err(e) => tracing::error!("oncall.yaml changed but the policies were NOT reloaded, the old ones stay in force:\n{e}"),
        }
    }
}

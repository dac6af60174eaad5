//! Operational metrics in the Prometheus text format (0.0.4), served at `GET /metrics`.
//!
//! Counters are relaxed atomics bumped where things happen (the service for issuance,
//! requests, approvals and revocations; the bastion for refused logins; the recorder for
//! bytes; the notifier for webhook deliveries), so the hot paths pay one uncontended add.
//! Gauges about the ledger (grants, pending requests, audit records) are read when scraped.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::domain::login::Label;
use crate::domain::Vocabulary;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a request came to when it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    Granted,
    Pending,
    Denied,
}

/// What became of one event for one webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The receiver answered 2xx.
    Ok,
    /// Every attempt failed (or the receiver refused it for good).
    Failed,
    /// The webhook's queue was full; the event was never sent.
    Dropped,
}

/// Every counter and the gauges kept in memory; shared by the service, the bastion and the
/// notifier.
#[derive(Debug)]
pub struct Metrics {
    /// User certificates minted.
    certs_user: AtomicU64,
    /// Host certificates minted (`sign-host`).
    certs_host: AtomicU64,
    /// Requests by outcome at request time: granted, pending, denied.
    requests: [AtomicU64; 3],
    /// Approvals given (each approver counts).
    approvals: AtomicU64,
    /// Revocations made (one per revoke call, however much it covered).
    revocations: AtomicU64,
    /// Refused logins, indexed like [`Label::ALL`].
    logins_refused: [AtomicU64; Label::ALL.len()],
    /// Bytes from clients to targets.
    bytes_in: AtomicU64,
    /// Bytes from targets to clients.
    bytes_out: AtomicU64,
    /// Webhook deliveries: ok, failed, dropped.
    webhooks: [AtomicU64; 3],
    /// Recorded channels running now.
    live_sessions: AtomicU64,
    /// Ended sessions waiting for a review, and those past due (as of the last check).
    reviews_pending: AtomicU64,
    reviews_overdue: AtomicU64,
    /// Unix milliseconds of the oldest recording data not yet taken by a flush; 0 when none.
    unwritten_since: AtomicU64,
    /// Unix milliseconds of the oldest data the flush in progress is writing; 0 when idle.
    flushing_since: AtomicU64,
    /// With object storage: recordings (sealed, or live parts) waiting to be uploaded.
    uploads_pending: AtomicU64,
    /// With object storage: uploads that failed (each is retried).
    upload_failures: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            certs_user: AtomicU64::new(0),
            certs_host: AtomicU64::new(0),
            requests: Default::default(),
            approvals: AtomicU64::new(0),
            revocations: AtomicU64::new(0),
            logins_refused: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            webhooks: Default::default(),
            live_sessions: AtomicU64::new(0),
            reviews_pending: AtomicU64::new(0),
            reviews_overdue: AtomicU64::new(0),
            unwritten_since: AtomicU64::new(0),
            flushing_since: AtomicU64::new(0),
            uploads_pending: AtomicU64::new(0),
            upload_failures: AtomicU64::new(0),
        }
    }
}

/// Unix milliseconds now, for [`render`].
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Metrics {
    /// A certificate was minted: `host` for host certificates, else a user certificate.
    pub fn certificate_issued(&self, host: bool) {
        let c = if host {
            &self.certs_host
        } else {
            &self.certs_user
        };
        c.fetch_add(1, Relaxed);
    }

    pub fn request(&self, outcome: RequestOutcome) {
        self.requests[outcome as usize].fetch_add(1, Relaxed);
    }

    pub fn approval(&self) {
        self.approvals.fetch_add(1, Relaxed);
    }

    pub fn revocation(&self) {
        self.revocations.fetch_add(1, Relaxed);
    }

    /// A refused login.
    pub fn login_refused(&self, reason: Label) {
        self.logins_refused[reason as usize].fetch_add(1, Relaxed);
    }

    /// Bytes relayed: `input` from the client to the target, else from the target back.
    pub fn proxied(&self, input: bool, bytes: usize) {
        let c = if input {
            &self.bytes_in
        } else {
            &self.bytes_out
        };
        c.fetch_add(bytes as u64, Relaxed);
    }

    pub fn webhook(&self, outcome: Delivery) {
        self.webhooks[outcome as usize].fetch_add(1, Relaxed);
    }

    /// The number of recorded channels running now.
    pub fn set_live_sessions(&self, n: usize) {
        self.live_sessions.store(n as u64, Relaxed);
    }

    /// The review queue as the last check found it.
    pub fn set_reviews(&self, pending: usize, overdue: usize) {
        self.reviews_pending.store(pending as u64, Relaxed);
        self.reviews_overdue.store(overdue as u64, Relaxed);
    }

    /// Recordings waiting for their upload to object storage.
    pub fn set_recording_uploads_pending(&self, n: usize) {
        self.uploads_pending.store(n as u64, Relaxed);
    }

    /// An upload to object storage failed (it is retried).
    pub fn recording_upload_failed(&self) {
        self.upload_failures.fetch_add(1, Relaxed);
    }

    /// Recording data was buffered: the first buffering since the last flush took its
    /// buffers starts the lag clock (one relaxed load otherwise).
    pub fn recording_buffered(&self) {
        if self.unwritten_since.load(Relaxed) == 0 {
            let _ = self
                .unwritten_since
                .compare_exchange(0, unix_ms(), Relaxed, Relaxed);
        }
    }

    /// A flush of every recording buffer starts: what was buffered so far is its to write.
    pub fn recording_flush_started(&self) {
        let since = self.unwritten_since.swap(0, Relaxed);
        self.flushing_since.store(since, Relaxed);
    }

    /// The flush is done (written, or failed and the sessions ended).
    pub fn recording_flush_done(&self) {
        self.flushing_since.store(0, Relaxed);
    }

    /// Age of the oldest recording data not yet written, in seconds (0 when all is
    /// written). Data buffered while a flush runs may be counted until the next flush.
    pub fn recording_lag(&self, now_ms: u64) -> f64 {
        let oldest = [&self.flushing_since, &self.unwritten_since]
            .iter()
            .map(|a| a.load(Relaxed))
            .filter(|&t| t != 0)
            .min();
        oldest.map_or(0.0, |t| now_ms.saturating_sub(t) as f64 / 1000.0)
    }
}

/// The gauges read from the ledger at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerGauges {
    pub active_grants: u64,
    /// Approved grants whose window opens later (`--start`).
    pub scheduled_grants: u64,
    pub pending_requests: u64,
    pub audit_records: u64,
}

/// One metric family: its help and type lines, then `name{labels} value` samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// Label values as the text format quotes them.
fn quoted(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Everything, in the Prometheus text exposition format 0.0.4: the counters, this node's
/// name, and the ledger's gauges when it could be read (`ramp_ledger_up` says whether).
pub fn render(m: &Metrics, ledger: Option<&LedgerGauges>, node: &str, now_ms: u64) -> String {
    let n = |a: &AtomicU64| a.load(Relaxed).to_string();
    let mut out = String::with_capacity(4096);
    family(
        &mut out,
        "ramp_certificates_issued_total",
        "counter",
        "Certificates minted, by kind.",
        &[
            ("{kind=\"user\"}".into(), n(&m.certs_user)),
            ("{kind=\"host\"}".into(), n(&m.certs_host)),
        ],
    );
    family(
        &mut out,
        "ramp_requests_total",
        "counter",
        "Requests for a step, by what they came to when made.",
        &[
            ("{outcome=\"granted\"}".into(), n(&m.requests[0])),
            ("{outcome=\"pending\"}".into(), n(&m.requests[1])),
            ("{outcome=\"denied\"}".into(), n(&m.requests[2])),
        ],
    );
    family(
        &mut out,
        "ramp_approvals_total",
        "counter",
        "Approvals given.",
        &[(String::new(), n(&m.approvals))],
    );
    family(
        &mut out,
        "ramp_revocations_total",
        "counter",
        "Revocations made.",
        &[(String::new(), n(&m.revocations))],
    );
    let refused: Vec<(String, String)> = Label::ALL
        .iter()
        .zip(&m.logins_refused)
        .map(|(r, c)| (format!("{{reason=\"{}\"}}", r.label()), n(c)))
        .collect();
    family(
        &mut out,
        "ramp_logins_refused_total",
        "counter",
        "Logins the bastion refused, by reason.",
        &refused,
    );
    family(
        &mut out,
        "ramp_bytes_proxied_total",
        "counter",
        "Session bytes relayed by the bastion: in = client to target, out = target to client.",
        &[
            ("{direction=\"in\"}".into(), n(&m.bytes_in)),
            ("{direction=\"out\"}".into(), n(&m.bytes_out)),
        ],
    );
    family(
        &mut out,
        "ramp_webhook_deliveries_total",
        "counter",
        "Webhook deliveries by outcome (failed: every attempt failed; dropped: queue full).",
        &[
            ("{outcome=\"ok\"}".into(), n(&m.webhooks[0])),
            ("{outcome=\"failed\"}".into(), n(&m.webhooks[1])),
            ("{outcome=\"dropped\"}".into(), n(&m.webhooks[2])),
        ],
    );
    family(
        &mut out,
        "ramp_recordings_upload_failures_total",
        "counter",
        "Uploads of recordings to object storage that failed (each is retried; nothing leaves the spool before it is uploaded).",
        &[(String::new(), n(&m.upload_failures))],
    );
    family(
        &mut out,
        "ramp_node_info",
        "gauge",
        "This node's name (serve --node), as a label.",
        &[(format!("{{node=\"{}\"}}", quoted(node)), "1".into())],
    );
    family(
        &mut out,
        "ramp_ledger_up",
        "gauge",
        "1 when the ledger answered this scrape, 0 when it could not be reached.",
        &[(String::new(), u8::from(ledger.is_some()).to_string())],
    );
    let mut gauges: Vec<(&str, &str, String)> = vec![
        (
            "ramp_live_sessions",
            "Recorded bastion channels running now.",
            n(&m.live_sessions),
        ),
        (
            "ramp_reviews_pending",
            "Ended sessions waiting for the review their step asks for (overdue ones included).",
            n(&m.reviews_pending),
        ),
        (
            "ramp_reviews_overdue",
            "Ended sessions whose review is past due.",
            n(&m.reviews_overdue),
        ),
        (
            "ramp_recording_lag_seconds",
            "Age of the oldest session data not yet written to its recording file.",
            format!("{:.3}", m.recording_lag(now_ms)),
        ),
        (
            "ramp_recordings_upload_pending",
            "Recordings (sealed, or live ones' latest part) in this node's spool waiting for their upload to object storage.",
            n(&m.uploads_pending),
        ),
    ];
    if let Some(ledger) = ledger {
        gauges.extend([
            (
                "ramp_active_grants",
                "Grants active now.",
                ledger.active_grants.to_string(),
            ),
            (
                "ramp_scheduled_grants",
                "Grants approved ahead whose window has not opened yet.",
                ledger.scheduled_grants.to_string(),
            ),
            (
                "ramp_pending_requests",
                "Requests waiting for approval.",
                ledger.pending_requests.to_string(),
            ),
            (
                "ramp_audit_records",
                "Records in the audit chain.",
                ledger.audit_records.to_string(),
            ),
        ]);
    }
    for (name, help, value) in gauges {
        family(&mut out, name, "gauge", help, &[(String::new(), value)]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of one sample line in rendered output.
    fn sample(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(String::from))
    }

    #[test]
    fn counters_and_gauges_render_in_the_text_format() {
        let m = Metrics::default();
        m.certificate_issued(false);
        m.certificate_issued(false);
        m.certificate_issued(true);
        m.request(RequestOutcome::Pending);
        m.login_refused(Label::Revoked);
        m.login_refused(Label::Error);
        m.proxied(true, 10);
        m.proxied(false, 32);
        m.webhook(Delivery::Dropped);
        m.set_live_sessions(1);
        m.set_reviews(3, 1);
        let ledger = LedgerGauges {
            active_grants: 2,
            scheduled_grants: 4,
            pending_requests: 1,
            audit_records: 9,
        };
        let text = render(&m, Some(&ledger), "node\"a", 0);
        let check = |series: &str, want: &str| {
            assert_eq!(
                sample(&text, series).as_deref(),
                Some(want),
                "{series}\n{text}"
            )
        };
        check("ramp_certificates_issued_total{kind=\"user\"}", "2");
        check("ramp_certificates_issued_total{kind=\"host\"}", "1");
        check("ramp_requests_total{outcome=\"pending\"}", "1");
        check("ramp_requests_total{outcome=\"denied\"}", "0");
        check("ramp_logins_refused_total{reason=\"revoked\"}", "1");
        check("ramp_logins_refused_total{reason=\"error\"}", "1");
        check("ramp_logins_refused_total{reason=\"expired\"}", "0");
        check("ramp_bytes_proxied_total{direction=\"in\"}", "10");
        check("ramp_bytes_proxied_total{direction=\"out\"}", "32");
        check("ramp_webhook_deliveries_total{outcome=\"dropped\"}", "1");
        check("ramp_active_grants", "2");
        check("ramp_pending_requests", "1");
        check("ramp_scheduled_grants", "4");
        check("ramp_live_sessions", "1");
        check("ramp_reviews_pending", "3");
        check("ramp_reviews_overdue", "1");
        check("ramp_recording_lag_seconds", "0.000");
        check("ramp_audit_records", "9");
        check("ramp_node_info{node=\"node\\\"a\"}", "1");
        check("ramp_ledger_up", "1");
        let down = render(&m, None, "a", 0);
        assert_eq!(sample(&down, "ramp_ledger_up").as_deref(), Some("0"));
        assert_eq!(sample(&down, "ramp_audit_records"), None, "{down}");
        assert!(text.contains("# TYPE ramp_approvals_total counter\n"));
        assert!(text.contains("# TYPE ramp_live_sessions gauge\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("ramp_"), "{line}");
            assert_eq!(line.split(' ').count(), 2, "{line}");
        }
    }

    #[test]
    fn recording_lag_is_the_age_of_the_oldest_unwritten_data() {
        let m = Metrics::default();
        let t0 = unix_ms();
        assert_eq!(m.recording_lag(t0 + 5000), 0.0, "nothing buffered");
        m.recording_buffered();
        let lag = m.recording_lag(t0 + 5000);
        assert!((4.0..=5.5).contains(&lag), "{lag}");
        m.recording_flush_started();
        assert!(
            m.recording_lag(t0 + 5000) >= 4.0,
            "a flush in progress still lags"
        );
        m.recording_flush_done();
        assert_eq!(m.recording_lag(t0 + 5000), 0.0, "all written");
    }
}

//! The wire: every route path and every body that crosses HTTP (the API, the dashboard's
//! pages) or goes to a webhook receiver. The only serde boundary for those formats: the
//! domain's records are converted here, so renaming a field inside the service changes no
//! body, and the server, the command line and the pages share one list of paths.

pub mod audit;
pub mod dashboard;
pub mod grants;
pub mod sessions;
pub mod webhook;

/// `GET`: liveness, unauthenticated.
pub const HEALTHZ: &str = "/healthz";
/// `GET`: Prometheus text, unauthenticated.
pub const METRICS: &str = "/metrics";
/// `GET`: who the signing key belongs to.
pub const WHOAMI: &str = "/v1/whoami";
/// `POST` [`grants::RequestBody`]: ask for a step.
pub const REQUESTS: &str = "/v1/requests";
/// `GET [?all=true]`: the grants the caller may see.
pub const GRANTS: &str = "/v1/grants";
/// `GET [?wait=SECS]`: one grant.
pub const GRANT: &str = "/v1/grants/{id}";
/// `POST`: a certificate from an active grant.
pub const GRANT_CERTIFICATE: &str = "/v1/grants/{id}/certificate";
/// `POST`: approve a request.
pub const GRANT_APPROVE: &str = "/v1/grants/{id}/approve";
/// `POST` [`grants::ReasonBody`]: deny (or withdraw) a request.
pub const GRANT_DENY: &str = "/v1/grants/{id}/deny";
/// `POST` [`grants::ExtendBody`]: more time on an active grant.
pub const GRANT_EXTEND: &str = "/v1/grants/{id}/extend";
/// `POST` [`grants::RevokeBody`].
pub const REVOKE: &str = "/v1/revoke";
/// `GET`: the KRL bytes.
pub const KRL: &str = "/v1/krl";
/// `POST` [`grants::SignHostBody`]: a host certificate.
pub const HOSTS_SIGN: &str = "/v1/hosts/sign";
/// `GET [?since=SECS | ?upto=SEQ]`: audit records.
pub const AUDIT: &str = "/v1/audit";
/// `GET [?skip_recordings=true]`: the chain's and the recordings' verdict.
pub const AUDIT_VERIFY: &str = "/v1/audit/verify";
/// `GET`: a checkpoint of the chain's head signed now.
pub const AUDIT_CHECKPOINT: &str = "/v1/audit/checkpoint";
/// `GET`: every checkpoint kept, newest first (their texts).
pub const AUDIT_CHECKPOINTS: &str = "/v1/audit/checkpoints";
/// `GET`: the key checkpoints are signed with.
pub const AUDIT_SIGNER: &str = "/v1/audit/signer";
/// `GET [?user=&target=&since=SECS]`: recorded sessions.
pub const SESSIONS: &str = "/v1/sessions";
/// `POST` [`sessions::GrepBody`]: search recordings.
pub const SESSIONS_GREP: &str = "/v1/sessions/grep";
/// `GET ?since=SECS`: the auditors' report, per contract and step (`domain::report::Row`).
pub const REPORT: &str = "/v1/report";
/// `GET`: the caller's review queue (sessions), the one due first first.
pub const SESSIONS_REVIEW: &str = "/v1/sessions/review";
/// `POST` [`sessions::ReviewBody`]: the caller's verdict on an ended session.
pub const SESSION_REVIEW: &str = "/v1/sessions/{id}/review";
/// `GET [?purpose=show|play|export]`: one session with its events.
pub const SESSION: &str = "/v1/sessions/{id}";
/// `POST` [`grants::ReasonBody`]: end a live session, saying why.
pub const SESSION_END: &str = "/v1/sessions/{id}/end";
/// `POST`: a one-time login link to the dashboard.
pub const DASHBOARD_LINK: &str = "/v1/dashboard/link";

/// The dashboard's pages and the calls they make, all under `/ui` (browser sessions, not
/// signed requests). The page's script gets them from [`ui::ROUTES`].
pub mod ui {
    /// The API's own root: people who open the server's address land on the dashboard.
    pub const HOME: &str = "/";
    pub const ROOT: &str = "/ui";
    pub const PAGE: &str = "/ui/";
    pub const SCRIPT: &str = "/ui/app.js";
    /// The terminal player (recordings, Watch, the Review page) with its side panel.
    pub const PLAYER_SCRIPT: &str = "/ui/player.js";
    /// The Review page: the queue and the verdict form.
    pub const REVIEW_SCRIPT: &str = "/ui/review.js";
    pub const STYLE: &str = "/ui/app.css";
    /// `GET ?token=T`: spends a login link.
    pub const LOGIN: &str = "/ui/login";
    pub const LOGOUT: &str = "/ui/logout";
    pub const STATE: &str = "/ui/api/state";
    pub const STREAM: &str = "/ui/api/stream";
    pub const APPROVE: &str = "/ui/api/grants/{id}/approve";
    pub const DENY: &str = "/ui/api/grants/{id}/deny";
    pub const REVOKE: &str = "/ui/api/grants/{id}/revoke";
    pub const END: &str = "/ui/api/sessions/{id}/end";
    pub const REQUEST: &str = "/ui/api/requests";
    pub const RECORDINGS: &str = "/ui/api/recordings";
    pub const PLAYBACK: &str = "/ui/api/recordings/{id}/playback";
    pub const ASCIICAST: &str = "/ui/api/recordings/{id}/asciicast";
    pub const FOLLOW: &str = "/ui/api/recordings/{id}/follow";
    pub const AUDIT: &str = "/ui/api/audit";
    /// `GET`: the browser's user's review queue (`dashboard::ReviewRow`s), due first first.
    pub const REVIEWS: &str = "/ui/api/reviews";
    /// `POST` [`super::sessions::ReviewBody`]: their verdict on an ended session.
    pub const REVIEW: &str = "/ui/api/reviews/{id}";

    /// The routes the page's script calls, by the name it uses.
    pub const ROUTES: [(&str, &str); 15] = [
        ("logout", LOGOUT),
        ("state", STATE),
        ("stream", STREAM),
        ("approve", APPROVE),
        ("deny", DENY),
        ("revoke", REVOKE),
        ("end", END),
        ("request", REQUEST),
        ("recordings", RECORDINGS),
        ("playback", PLAYBACK),
        ("asciicast", ASCIICAST),
        ("follow", FOLLOW),
        ("audit", AUDIT),
        ("reviews", REVIEWS),
        ("review", REVIEW),
    ];
}

/// Every refusal and failure the API and the pages answer: `{"error": "..."}`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: error.into(),
        }
    }

    /// The body as JSON text.
    pub fn text(&self) -> String {
        serde_json::to_string(self).expect("an error body serialises")
    }
}

/// A route with its `{id}` filled in.
pub fn path(route: &str, id: &str) -> String {
    route.replace("{id}", id)
}

/// The wire's words for the domain's closed vocabularies (grant and session states): the
/// domain's labels, read back strictly (`#[serde(with = "label")]`).
pub(crate) mod label {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    use crate::domain::Vocabulary;

    pub fn serialize<T: Vocabulary, S: Serializer>(word: &T, to: S) -> Result<S::Ok, S::Error> {
        to.serialize_str(word.label())
    }

    pub fn deserialize<'de, T: Vocabulary, D: Deserializer<'de>>(from: D) -> Result<T, D::Error> {
        let text = String::deserialize(from)?;
        T::from_label(&text).ok_or_else(|| {
            let known: Vec<&str> = T::ALL.iter().map(|w| w.label()).collect();
            D::Error::custom(format!("`{text}` is none of {}", known.join(", ")))
        })
    }
}

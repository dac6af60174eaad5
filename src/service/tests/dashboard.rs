//! What the dashboard asks the service: the live view with each user's rights, following a
//! session and the audit page (reviewers only), and its audited logins.

use super::*;
use crate::domain::session::SessionState;
use crate::service::{AuditSearch, WebUser};
use crate::wire::dashboard::LiveView as View;

async fn view(f: &Fixture, user: &str, now: DateTime<Utc>) -> View {
    let web = WebUser {
        user,
        csrf: "token",
        expires: at(3600),
    };
    let mut live = crate::recordings::fixtures::meta();
    (live.state, live.grant) = (SessionState::Live, "g-1".into());
    f.service.live_view(&web, vec![live], now).await.unwrap()
}

#[tokio::test]
async fn the_live_view_shows_each_user_what_they_may_do_about_each_row() {
    let f = fixture().await;
    f.grant_of("observe", t0()).await;
    f.grant_of("operate", at(1)).await;
    let alice = view(&f, "alice", at(2)).await;
    assert_eq!(alice.active.len(), 1);
    assert!(alice.active[0].can_revoke, "her own");
    assert!(!alice.pending[0].can_approve, "not her own request");
    assert!(alice.pending[0].can_deny, "she may withdraw it");
    assert_eq!(alice.live.len(), 1, "her own session");
    assert!(!alice.me.reviewer && !alice.me.admin);
    let bob = view(&f, "bob", at(2)).await;
    assert!(
        !bob.active[0].can_revoke,
        "an auditor sees, an admin revokes"
    );
    assert!(bob.pending[0].can_approve && bob.pending[0].can_deny);
    assert!(bob.me.reviewer);
    let carol = view(&f, "carol", at(2)).await;
    assert!(carol.active[0].can_revoke && carol.me.admin);
    let mallory = view(&f, "mallory", at(2)).await;
    assert!(mallory.active.is_empty() && mallory.pending.is_empty());
    assert!(mallory.live.is_empty(), "not theirs to watch");
}

#[tokio::test]
async fn following_a_session_and_the_audit_page_are_for_reviewers_only() {
    let f = fixture().await;
    let recorders = crate::recordings::writer::Recorders::new(f.service.clone(), 0);
    let mut meta = crate::recordings::fixtures::meta();
    (meta.state, meta.id) = (SessionState::Live, "watched".into());
    let _rec = recorders.start(meta, Vec::new()).await.unwrap();
    let err = f
        .service
        .follow("alice", "watched", t0())
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("following a session takes ramp-admin or ramp-auditor"),
        "{err}"
    );
    let (meta, _tail) = f.service.follow("bob", "watched", t0()).await.unwrap();
    assert_eq!(meta.id, "watched");
    let read = &f.audited("session-read").await[0];
    assert_eq!(
        (read.actor.as_str(), read.detail["purpose"].as_str()),
        ("bob", Some("dashboard-follow"))
    );

    let search = AuditSearch {
        action: Some("session-".into()),
        since: i64::MAX,
        limit: 10,
        ..AuditSearch::default()
    };
    let err = f
        .service
        .audit_search("alice", &search, t0())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the audit log takes ramp-admin or ramp-auditor"),
        "{err}"
    );
    let found = f
        .service
        .audit_search("carol", &search, t0())
        .await
        .unwrap();
    let actions: Vec<&str> = found.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["session-read", "session-start"], "newest first");
    assert!(f.service.verify_chain("alice").await.is_err());
    assert_eq!(f.service.verify_chain("bob").await.unwrap().first_bad, None);
}

#[tokio::test]
async fn dashboard_links_and_logins_are_audited() {
    let f = fixture().await;
    f.service
        .dashboard_linked("bob", at(120), t0())
        .await
        .unwrap();
    f.service
        .dashboard_logged_in("bob", at(120), at(8 * 3600), at(5))
        .await
        .unwrap();
    let linked = &f.audited("dashboard-link").await[0];
    assert_eq!(
        (linked.actor.as_str(), linked.subject.as_str()),
        ("bob", "bob")
    );
    let login = &f.audited("dashboard-login").await[0];
    assert!(login.detail["session_expires"].is_string());
}

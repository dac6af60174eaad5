//! Windows asked for ahead (`--start`, issue 14): approved before they open, certificates
//! valid from the start, nothing held or let in before it, revoked or denied like any grant.

use russh::keys::ssh_key::Certificate;

use super::*;
use crate::domain::login::Refusal;

/// alice asks for `step` of prod-db for `ttl`, its window opening at `start`.
async fn ask_ahead(
    f: &Fixture,
    step: &str,
    ttl: &str,
    start: &str,
    now: DateTime<Utc>,
) -> Result<Outcome> {
    let body = RequestBody {
        contract: "prod-db".into(),
        step: Some(step.into()),
        ttl: Some(ttl.into()),
        reason: Some("CHG-7 tonight's migration".into()),
        certify: true,
        start: Some(start.into()),
    };
    f.service
        .request("alice", &f.key("alice"), &body, now)
        .await
}

#[tokio::test]
async fn a_window_granted_ahead_gets_a_certificate_valid_from_its_start_and_logs_in_only_then() {
    let f = fixture().await;
    let out = ask_ahead(&f, "observe", "10m", "+2h", t0()).await.unwrap();
    let g = &out.grant.grant;
    assert_eq!(g.state, State::Scheduled);
    assert_eq!((g.start, g.end), (Some(at(7200)), Some(at(7800))));
    assert_eq!(g.scheduled, Some(at(7200)));
    let cert = Certificate::from_openssh(out.certificate.as_deref().unwrap()).unwrap();
    assert_eq!(cert.valid_after(), at(7200 - 60).timestamp() as u64);
    assert_eq!(cert.valid_before(), at(7800).timestamp() as u64);
    let requested = &f.audited("request").await[0];
    assert_eq!(requested.detail["start"], serde_json::json!(at(7200)));

    // Before the window: refused by the grant, saying when it opens (the certificate's own
    // window is checked apart, by the bastion's SSH layer and by OpenSSH).
    let peer = "127.0.0.1:5000".parse().unwrap();
    let early = f
        .service
        .check_login(&cert, "readonly@db-1", peer, at(7200 - 30))
        .await
        .unwrap_err();
    assert!(
        matches!(&early, Refusal::NotOpenYet { opens, .. } if opens == "2030-03-17T19:46:40Z"),
        "{early}"
    );
    let login = f
        .service
        .check_login(&cert, "readonly@db-1", peer, at(7201))
        .await
        .unwrap();
    assert_eq!(login.grant.id, g.id);

    // Listed as scheduled, counted apart from active grants, picked up again before it opens.
    let listed = f.service.grants("alice", false, at(60)).await.unwrap();
    assert_eq!(listed[0].grant.state, State::Scheduled);
    let again = f
        .service
        .certificate("alice", &f.key("alice"), &g.id, at(60))
        .await
        .unwrap();
    let again = Certificate::from_openssh(&again.certificate.unwrap()).unwrap();
    assert_eq!(again.valid_after(), cert.valid_after());
    assert_eq!(f.state(&g.id, at(7800)).await, State::Expired);

    // Extended only once open.
    let err = f
        .service
        .extend(
            "alice",
            &f.key("alice"),
            &g.id,
            &crate::wire::grants::ExtendBody {
                ttl: "5m".into(),
                reason: Some("INC-2".into()),
                certify: false,
            },
            at(60),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is scheduled"), "{err}");
}

#[tokio::test]
async fn a_start_in_the_past_too_far_ahead_or_unreadable_is_refused_naming_it() {
    let f = fixture().await;
    let past = ask_ahead(&f, "observe", "10m", "2020-01-01T00:00:00Z", t0()).await;
    assert!(past.unwrap_err().to_string().contains("is in the past"));
    let far = ask_ahead(&f, "observe", "10m", "+31d", t0()).await;
    assert!(far.unwrap_err().to_string().contains("at most 30d ahead"));
    let bad = ask_ahead(&f, "observe", "10m", "tonight", t0()).await;
    assert!(bad.unwrap_err().to_string().contains("bad start `tonight`"));
    let denied = f.audited("request-denied").await;
    assert_eq!(denied.len(), 2, "the refusals the policy made are audited");
    assert_eq!(denied[0].detail["start"], "2020-01-01T00:00:00Z");
}

#[tokio::test]
async fn approvals_given_ahead_open_the_window_at_its_start_and_steps_climb_on_the_window() {
    let f = fixture().await;
    // operate comes after observe: at the window's start, not now.
    let refused = ask_ahead(&f, "operate", "1h", "+4h", t0())
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("held when the window opens"),
        "{refused}"
    );
    ask_ahead(&f, "observe", "30m", "+4h", t0()).await.unwrap();
    let op = ask_ahead(&f, "operate", "1h", "+4h", at(1)).await.unwrap();
    let op = op.grant.grant;
    assert_eq!(op.state, State::Pending);
    assert!(op.start.is_none());
    assert_eq!(
        op.ttl_secs,
        30 * 60 - 1,
        "never past the observe window it climbs from"
    );
    // Approved at noon: scheduled for its start, not active now.
    let approved = f.service.approve("bob", &op.id, at(60)).await.unwrap();
    assert_eq!(approved.grant.grant.state, State::Scheduled);
    assert_eq!(approved.grant.grant.start, Some(at(4 * 3600 + 1)));
    // A scheduled observe is not held now: operate now is refused.
    let now_op = f.ask("alice", "operate", false, at(120)).await.unwrap_err();
    assert!(
        now_op.to_string().contains("request `observe` first"),
        "{now_op}"
    );

    // Denying a scheduled request, and revoking a scheduled grant, work as for any other.
    let other = ask_ahead(&f, "break-glass", "10m", "+4h", at(130)).await;
    let other = other.unwrap().grant.grant.id;
    let denied = f
        .service
        .deny("carol", &other, "not tonight", at(140))
        .await;
    assert_eq!(denied.unwrap().grant.state, State::Denied);
    let revoked = f
        .service
        .revoke("carol", &revoke_grant(&op.id), at(150))
        .await
        .unwrap();
    assert!(revoked.grants.contains(&op.id));
    assert_eq!(f.state(&op.id, at(4 * 3600 + 1)).await, State::Revoked);
}

#[tokio::test]
async fn approved_after_its_start_a_window_opens_at_approval_for_its_whole_ttl() {
    let f = fixture().await;
    ask_ahead(&f, "observe", "30m", "+1h", t0()).await.unwrap();
    let op = ask_ahead(&f, "operate", "20m", "+1h", at(1)).await.unwrap();
    let id = op.grant.grant.id;
    // Approved 5 minutes into the window: it opens now and lasts its ttl (the observe
    // window it climbs from still covers it).
    let approved = f.service.approve("bob", &id, at(3600 + 300)).await.unwrap();
    let g = approved.grant.grant;
    assert_eq!(g.state, State::Active);
    assert_eq!((g.start, g.end), (Some(at(3900)), Some(at(3900 + 20 * 60))));
}

#[tokio::test]
async fn the_same_window_asked_twice_is_one_grant_and_windows_ahead_are_bounded() {
    let f = fixture().await;
    let first = ask_ahead(&f, "observe", "10m", "+2h", t0()).await.unwrap();
    let again = ask_ahead(&f, "observe", "10m", "+2h", t0()).await.unwrap();
    assert!(again.existing, "{:?}", again.reasons);
    assert_eq!(again.grant.grant.id, first.grant.grant.id);
    assert!(
        again
            .reasons
            .last()
            .unwrap()
            .contains("from 2030-03-17T19:46:40Z"),
        "{:?}",
        again.reasons
    );
    for n in 1..super::super::grants::MAX_SCHEDULED {
        let start = format!("+{}h", 2 + n);
        ask_ahead(&f, "observe", "10m", &start, t0()).await.unwrap();
    }
    let err = ask_ahead(&f, "observe", "10m", "+3d", t0())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most 16"), "{err}");
    // A window held now is still answered from the grant held.
    let now = f.ask("alice", "observe", false, t0()).await.unwrap();
    assert!(!now.existing && now.grant.grant.state == State::Active);
}

/// Regression: revoking the `observe` grant an active `operate` climbed from left `operate`
/// running when its holder had an `observe` window asked for later: a window not yet open
/// held it up.
#[tokio::test]
async fn a_window_ahead_does_not_keep_up_a_grant_whose_prerequisite_is_revoked() {
    let f = fixture().await;
    let observe = f.grant_of("observe", t0()).await;
    let op = f.grant_of("operate", at(1)).await;
    f.service.approve("bob", &op, at(2)).await.unwrap();
    ask_ahead(&f, "observe", "30m", "+1h", at(3)).await.unwrap();
    let out = f
        .service
        .revoke("carol", &revoke_grant(&observe), at(10))
        .await
        .unwrap();
    assert!(out.grants.contains(&op), "operate goes with it: {out:?}");
    assert_eq!(f.state(&op, at(10)).await, State::Revoked);
}

/// Regression: once its window opened, a grant asked for ahead was not the grant held for
/// its step: asking for the step again filed a second request; and a pending window ahead
/// hid the pending request of now from the next ask, filing it twice for approvers.
#[tokio::test]
async fn a_window_once_open_is_held_like_any_grant_and_a_pending_one_ahead_hides_none() {
    let f = fixture().await;
    let ahead = ask_ahead(&f, "observe", "30m", "+1h", t0()).await.unwrap();
    let id = ahead.grant.grant.id;
    let again = f.ask("alice", "observe", true, at(3700)).await.unwrap();
    assert!(again.existing, "{:?}", again.reasons);
    assert_eq!(again.grant.grant.id, id);
    assert!(again.certificate.is_some());

    // operate asked ahead (pending), then operate now, twice: one request of now.
    let later = ask_ahead(&f, "operate", "10m", "+10m", at(3710)).await;
    assert_eq!(later.unwrap().grant.grant.state, State::Pending);
    let now1 = f.ask("alice", "operate", false, at(3720)).await.unwrap();
    let now2 = f.ask("alice", "operate", false, at(3730)).await.unwrap();
    assert!(!now1.existing);
    assert!(now2.existing, "{:?}", now2.reasons);
    assert_eq!(now2.grant.grant.id, now1.grant.grant.id);
}

/// Regression: a request for a window ahead stopped counting toward the bound once its start
/// passed unapproved, though it stays open: asking again and again piled requests up without
/// end for approvers (and in memory).
#[tokio::test]
async fn requests_ahead_whose_start_passed_unapproved_still_count_toward_the_bound() {
    let f = fixture().await;
    ask_ahead(&f, "observe", "30m", "+1h", t0()).await.unwrap();
    let max = super::super::grants::MAX_SCHEDULED as i64;
    for n in 1..max {
        let start = format!("+{}s", 3600 + n);
        let op = ask_ahead(&f, "operate", "10m", &start, t0()).await.unwrap();
        assert_eq!(op.grant.grant.state, State::Pending);
    }
    // Past every start: the observe window is open, the operate requests still wait.
    let later = at(3600 + max + 60);
    let err = ask_ahead(&f, "observe", "10m", "+3h", later).await;
    assert!(
        err.unwrap_err().to_string().contains("at most 16"),
        "the 15 pending requests count (with the observe window open)"
    );
    // Withdrawn, one leaves room.
    let pending = f.service.grants("alice", false, later).await.unwrap();
    let op = pending.iter().find(|v| v.grant.state == State::Pending);
    let op = &op.unwrap().grant.id;
    f.service
        .deny("alice", op, "not needed", later)
        .await
        .unwrap();
    ask_ahead(&f, "observe", "10m", "+3h", later).await.unwrap();
}

/// Regression: the `grant` webhook of a window approved ahead read "alice holds ... (until
/// 20:16 UTC)", as if held now: it says when the window opens, with the date.
#[tokio::test]
async fn the_webhook_of_a_window_approved_ahead_says_when_it_opens() {
    let f = fixture().await;
    let out = ask_ahead(&f, "observe", "10m", "+2h", t0()).await.unwrap();
    let granted = &f.audited("grant").await[0];
    assert_eq!(granted.subject, out.grant.grant.id);
    let notice = crate::notify::notice(&f.service, granted).await.unwrap();
    assert!(
        notice.text.contains("alice will hold prod-db/observe")
            && notice
                .text
                .contains("from 2030-03-17 19:46 UTC until 2030-03-17 19:56 UTC"),
        "{}",
        notice.text
    );
    // Asked ahead and pending: the request says for when.
    let op = ask_ahead(&f, "operate", "5m", "+2h", at(1)).await.unwrap();
    let asked = f.audited("request").await;
    let asked = asked.iter().find(|r| r.subject == op.grant.grant.id);
    let notice = crate::notify::notice(&f.service, asked.unwrap()).await;
    let text = notice.unwrap().text;
    assert!(
        text.contains("prod-db/operate for 5m from 2030-03-17 19:46 UTC"),
        "{text}"
    );
}

/// Regression: windows asked for ahead stopped counting once open, so asking again and again
/// for `+1s` piled up active grants of one step (16 a second, each lasting its ttl) where a
/// request of now is answered from the grant held.
#[tokio::test]
async fn windows_ahead_count_toward_the_bound_until_they_end() {
    let f = fixture().await;
    let max = super::super::grants::MAX_SCHEDULED as i64;
    for n in 1..=max {
        let start = format!("+{n}s");
        ask_ahead(&f, "observe", "10m", &start, t0()).await.unwrap();
    }
    let err = ask_ahead(&f, "observe", "10m", "+1h", at(max + 1)).await;
    assert!(err.unwrap_err().to_string().contains("at most 16"));
    // Once they end, windows may be asked for again.
    ask_ahead(&f, "observe", "10m", "+1h", at(max + 600))
        .await
        .unwrap();
}

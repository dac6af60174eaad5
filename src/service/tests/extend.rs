//! Extending an active grant (issue 14): within the step's max_ttl from the grant's start,
//! never past the grant it climbed from, approved like the step and never by its holder.

use super::*;
use crate::wire::grants::ExtendBody;

fn more(ttl: &str) -> ExtendBody {
    ExtendBody {
        ttl: ttl.into(),
        reason: Some("INC-1 migration runs long".into()),
        certify: true,
    }
}

#[tokio::test]
async fn an_extension_is_given_at_once_where_the_step_needs_no_approval_within_max_ttl() {
    let f = fixture().await;
    let id = f.ask_for("observe", "10m", t0()).await.grant.grant.id;
    let key = f.key("alice");
    let out = f
        .service
        .extend("alice", &key, &id, &more("15m"), at(60))
        .await
        .unwrap();
    assert_eq!(out.grant.grant.end, Some(at(25 * 60)));
    assert!(out.certificate.is_some(), "a fresh certificate");
    assert!(out.reasons[0].contains("now ends at"), "{:?}", out.reasons);
    let extended = &f.audited("extend").await[0];
    assert_eq!(extended.detail["to"], serde_json::json!(at(25 * 60)));
    assert_eq!(extended.detail["from"], serde_json::json!(at(600)));

    // 30m from its start at most: 5 more minutes are left.
    let err = f
        .service
        .extend("alice", &key, &id, &more("10m"), at(120))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_ttl 30m") && err.contains("at most 5m more"),
        "{err}"
    );
    // Only its holder extends it; a bad ttl is named.
    let err = f
        .service
        .extend("bob", &f.key("bob"), &id, &more("1m"), at(120))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("only its holder"), "{err}");
    let err = f
        .service
        .extend("alice", &key, &id, &more("soon"), at(120))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bad ttl `soon`"), "{err}");
    // An expired grant is not extended.
    let err = f
        .service
        .extend("alice", &key, &id, &more("1m"), at(26 * 60))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is expired"), "{err}");
}

#[tokio::test]
async fn an_extension_needing_approval_waits_for_someone_else_and_stays_under_its_prerequisite() {
    let f = fixture().await;
    f.ask_for("observe", "10m", t0()).await;
    let op = f.ask_for("operate", "5m", at(1)).await.grant.grant.id;
    f.service.approve("bob", &op, at(2)).await.unwrap();
    assert_eq!(f.stored(&op).await.end, Some(at(302)));
    let key = f.key("alice");

    let out = f
        .service
        .extend("alice", &key, &op, &more("2m"), at(10))
        .await
        .unwrap();
    assert!(out.certificate.is_none());
    let pending = out.grant.grant.extension.expect("pending");
    assert_eq!(pending.end, at(422));
    assert!(
        out.reasons[0].contains("waits for 1 approval"),
        "{:?}",
        out.reasons
    );
    // A second ask while one waits is refused; its holder cannot approve it.
    let err = f
        .service
        .extend("alice", &key, &op, &more("1m"), at(11))
        .await;
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("waits for approval already"));
    let err = f.service.approve("alice", &op, at(12)).await.unwrap_err();
    assert!(err.to_string().contains("your own extension"), "{err}");
    let approved = f.service.approve("bob", &op, at(13)).await.unwrap();
    assert_eq!(approved.grant.grant.end, Some(at(422)));
    assert!(approved.grant.grant.extension.is_none());
    let records = f.audited("extend").await;
    assert_eq!(records.len(), 2, "asked, then given");
    assert_eq!(records[0].detail["pending"], true);
    assert_eq!(records[1].detail["approvers"], serde_json::json!(["bob"]));

    // Past the end of the observe grant it climbed from (at 600): refused, saying so.
    let err = f
        .service
        .extend("alice", &key, &op, &more("10m"), at(20))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("past the end of the `observe` grant"), "{err}");

    // A denied extension leaves the grant as it was.
    f.service
        .extend("alice", &key, &op, &more("1m"), at(30))
        .await
        .unwrap();
    f.service
        .deny("carol", &op, "not now", at(31))
        .await
        .unwrap();
    let kept = f.stored(&op).await;
    assert_eq!((kept.end, kept.extension), (Some(at(422)), None));
    assert_eq!(kept.state, State::Active);
}

//! The audit log's readers and bounds; request nonces.

use super::*;
use crate::service::ServiceError;

/// Regression (issue 9): `GET /v1/audit?since=9223372036854775807` panicked a worker before
/// the role check.
#[tokio::test]
async fn an_absurd_audit_age_is_bounded_after_the_role_check() {
    let f = fixture().await;
    f.grant_of("observe", t0()).await;
    let err = f
        .service
        .audit("alice", Some(i64::MAX), t0())
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Denied(_)), "{err}");
    let all = f.service.audit("bob", Some(i64::MAX), t0()).await.unwrap();
    assert!(!all.is_empty());
    assert!(f.service.audit("bob", Some(i64::MIN), t0()).await.is_ok());
}

#[tokio::test]
async fn old_nonces_are_forgotten_by_the_sweep_only() {
    let f = fixture().await;
    assert!(f.service.fresh_nonce("00ab", t0()).await.unwrap());
    assert_eq!(
        f.service.forget_old_nonces(at(60)).await.unwrap(),
        0,
        "still in the window"
    );
    assert!(!f.service.fresh_nonce("00ab", at(60)).await.unwrap());
    assert_eq!(f.service.forget_old_nonces(at(3600)).await.unwrap(), 1);
}

#[tokio::test]
async fn checkpoints_are_signed_for_reviewers_and_never_over_a_rewritten_chain() {
    let f = fixture().await;
    f.grant_of("observe", t0()).await;
    let err = f
        .service
        .audit_checkpoint("alice", at(1))
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Denied(_)), "{err}");
    let body = f.service.audit_checkpoint("bob", at(1)).await.unwrap();
    let signed = crate::checkpoint::Signed::parse_all(&body.checkpoint).unwrap();
    signed[0]
        .verify(f.service.keys.audit_signer.public_key())
        .unwrap();
    assert_eq!(body.seq, f.service.store.audit_len().await.unwrap());
    assert_eq!(body.signer_key, f.service.audit_signer().signer_key);
    // Someone who can write the ledger rewrites the newest record, re-hashes it and moves
    // the chain's head along: the chain's own hashes say nothing is wrong.
    let store = &f.service.store;
    let mut r = store.audit_record(body.seq).await.unwrap().unwrap();
    r.actor = "mallory".into();
    r.hash = crate::domain::audit::chain_hash(&r);
    let record = serde_json::to_vec(&r).unwrap();
    store
        .sled()
        .raw_audit_tree()
        .insert(r.seq.to_be_bytes(), record)
        .unwrap();
    let head = crate::domain::audit::Head {
        seq: r.seq,
        hash: r.hash.clone(),
    };
    let head = serde_json::to_vec(&head).unwrap();
    store
        .sled()
        .raw_meta_tree()
        .insert("audit_head", head)
        .unwrap();
    let report = f.service.verify_audit("carol", true).await.unwrap();
    assert_eq!(
        report.first_bad, None,
        "re-hashed, the chain holds together"
    );
    let err = f.service.sign_checkpoint(at(2)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("does not run on from its last checkpoint"),
        "{err}"
    );
    assert!(f.service.verify_audit("alice", true).await.is_err());
}

#[tokio::test]
async fn metrics_count_what_is_open_and_what_happened() {
    let f = fixture().await;
    f.ask("alice", "observe", true, t0()).await.unwrap();
    f.grant_of("operate", at(1)).await;
    let text = f.service.metrics_text(at(2)).await.unwrap();
    for line in [
        "ramp_active_grants 1",
        "ramp_pending_requests 1",
        "ramp_certificates_issued_total{kind=\"user\"} 1",
        "ramp_requests_total{outcome=\"granted\"} 1",
        "ramp_requests_total{outcome=\"pending\"} 1",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
    let records = f.service.store.audit_len().await.unwrap();
    assert!(
        text.contains(&format!("ramp_audit_records {records}")),
        "{text}"
    );
    let later = f.service.metrics_text(at(3600)).await.unwrap();
    assert!(later.contains("ramp_active_grants 0"), "expired since");
}

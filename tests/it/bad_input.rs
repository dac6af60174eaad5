//! Bad input gets a clear error, changes nothing, and never takes the daemon down.

use std::io::Write;

use chrono::Utc;
use ramp_ca::auth::Signer;

use crate::support::{keygen, run_err, run_ok};
use crate::{setup, ALICE, BOB, CAROL};

/// Sends a request signed by `signer` (or with the given raw headers) and returns (status, body).
async fn send(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), format!("{url}{path}"));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.body(body).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn signed(
    signer: &Signer,
    method: &str,
    path: &str,
    body: &[u8],
    at: chrono::DateTime<Utc>,
) -> Vec<(&'static str, String)> {
    signer
        .sign_request(method, path, body, at)
        .await
        .unwrap()
        .to_vec()
}

fn alice(dir: &crate::support::TestDir) -> Signer {
    Signer::Key(Box::new(
        ramp_ca::keys::read_private(&dir.join(ALICE)).unwrap(),
    ))
}

#[test]
fn forged_replayed_stale_oversized_and_garbage_requests_are_refused() {
    let (dir, daemon) = setup();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = daemon.url.as_str();
        let signer = alice(&dir);
        let h = signed(&signer, "GET", "/v1/whoami", b"", Utc::now()).await;
        let (status, body) = send(url, "GET", "/v1/whoami", &h, vec![]).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"user\":\"alice\""), "{body}");

        let (status, body) = send(url, "GET", "/v1/whoami", &h, vec![]).await;
        assert_eq!((status, body.contains("replayed")), (401, true), "{body}");

        // A signature lifted from one request onto another.
        let h = signed(&signer, "GET", "/v1/whoami", b"", Utc::now()).await;
        let (status, body) = send(url, "GET", "/v1/grants?all=true", &h, vec![]).await;
        assert_eq!(
            (status, body.contains("bad signature")),
            (401, true),
            "{body}"
        );

        let mut forged = signed(&signer, "GET", "/v1/whoami", b"", Utc::now()).await;
        forged[2].1 = "AAAAB3NzaC1yc2EAAAADAQABAAABAQ==".into();
        let (status, body) = send(url, "GET", "/v1/whoami", &forged, vec![]).await;
        assert_eq!(
            (status, body.contains("x-ramp-signature")),
            (401, true),
            "{body}"
        );

        let (status, body) = send(url, "POST", "/v1/requests", &[], b"{}".to_vec()).await;
        assert_eq!(
            (status, body.contains("missing header")),
            (401, true),
            "{body}"
        );

        let stale = signed(
            &signer,
            "GET",
            "/v1/whoami",
            b"",
            Utc::now() - chrono::Duration::hours(1),
        )
        .await;
        let (status, body) = send(url, "GET", "/v1/whoami", &stale, vec![]).await;
        assert_eq!(
            (status, body.contains("check your clock")),
            (401, true),
            "{body}"
        );

        let garbage = b"\x00\xffnot json".to_vec();
        let h = signed(&signer, "POST", "/v1/requests", &garbage, Utc::now()).await;
        let (status, body) = send(url, "POST", "/v1/requests", &h, garbage).await;
        assert_eq!(
            (status, body.contains("invalid request body")),
            (400, true),
            "{body}"
        );

        let unknown_field = br#"{"contract":"prod-db","principals":["root"]}"#.to_vec();
        let h = signed(&signer, "POST", "/v1/requests", &unknown_field, Utc::now()).await;
        let (status, body) = send(url, "POST", "/v1/requests", &h, unknown_field).await;
        assert_eq!(
            (status, body.contains("unknown field `principals`")),
            (400, true),
            "{body}"
        );

        let huge = vec![b' '; 100 * 1024];
        let h = signed(&signer, "POST", "/v1/requests", &huge, Utc::now()).await;
        let (status, body) = send(url, "POST", "/v1/requests", &h, huge).await;
        assert_eq!(
            (status, body.contains("over 64 KiB")),
            (413, true),
            "{body}"
        );
    });

    // Garbage straight onto the socket.
    let addr = daemon.url.trim_start_matches("http://").to_string();
    let mut raw = std::net::TcpStream::connect(&addr).unwrap();
    raw.write_all(b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
        .unwrap();
    drop(raw);

    // Nothing above reached the ledger, and the daemon is still up.
    let out = run_ok(&mut daemon.cmd(&dir, CAROL, &["grants", "--all", "--json"]));
    assert_eq!(crate::json(&out), serde_json::json!([]));
    let out = run_ok(&mut daemon.cmd(&dir, BOB, &["audit", "verify"]));
    assert!(out.contains("intact"), "{out}");
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());
}

#[test]
fn client_mistakes_get_clear_errors() {
    let (dir, daemon) = setup();
    let stranger = keygen(dir.path(), "stranger");
    let (code, err) = run_err(&mut daemon.cmd(
        &dir,
        "stranger",
        &["sign", "--contract", "prod-db", "--reason", "x"],
    ));
    assert_eq!(code, 1);
    assert!(
        err.contains("is not registered to anyone in people.yaml"),
        "{err}"
    );
    assert!(!dir.join("stranger-cert.pub").exists());
    let _ = stranger;

    let (code, err) = run_err(&mut daemon.cmd(
        &dir,
        ALICE,
        &[
            "sign",
            "--contract",
            "prod-db",
            "--ttl",
            "10h",
            "--reason",
            "x",
        ],
    ));
    assert_eq!(code, 1);
    assert!(
        err.contains("requested ttl 10h exceeds step `observe` max_ttl 30m"),
        "{err}"
    );
    let (_, err) = run_err(&mut daemon.cmd(
        &dir,
        ALICE,
        &[
            "sign",
            "--contract",
            "prod-db",
            "--ttl",
            "soon",
            "--reason",
            "x",
        ],
    ));
    assert!(err.contains("bad ttl `soon`"), "{err}");
    let (_, err) = run_err(&mut daemon.cmd(&dir, ALICE, &["sign", "--contract", "prod-db"]));
    assert!(err.contains("requires a reason"), "{err}");
    let (_, err) = run_err(&mut daemon.cmd(&dir, ALICE, &["sign", "--contract", "nope"]));
    assert!(err.contains("no contract named `nope`"), "{err}");
    assert!(
        !dir.join(format!("{ALICE}-cert.pub")).exists(),
        "no certificate from refused requests"
    );

    dir.write("not-a-key.pub", "hello world\n");
    let (code, err) = run_err(&mut daemon.cmd(
        &dir,
        CAROL,
        &["sign-host", "--name", "db-1", "--pubkey", "not-a-key.pub"],
    ));
    assert_eq!(code, 1);
    assert!(
        err.contains("not-a-key.pub: not an OpenSSH public key"),
        "{err}"
    );

    let (code, err) = run_err(&mut daemon.cmd(&dir, "missing-key", &["grants"]));
    assert_eq!(code, 1);
    assert!(err.contains("missing-key"), "{err}");
    let (code, _) = run_err(&mut daemon.cmd(&dir, ALICE, &["revoke"]));
    assert_eq!(code, 2, "usage error");
    let (code, _) = run_err(crate::support::ramp(&dir).arg("no-such-command"));
    assert_eq!(code, 2);

    // The daemon is gone: the client says where it looked.
    let url = daemon.url.clone();
    drop(daemon);
    let (code, err) = run_err(
        crate::support::ramp(&dir)
            .env("RAMP_SERVER", &url)
            .args(["grants", "--key"])
            .arg(dir.join(ALICE)),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("cannot reach ramp-ca at {url}")),
        "{err}"
    );
}

#[test]
fn a_malformed_policy_stops_serve_with_its_position_and_sign_host_works_for_admins() {
    let (dir, daemon) = setup();
    let host = keygen(dir.path(), "ssh_host_ed25519_key");
    let (_, err) = run_err(&mut daemon.cmd(
        &dir,
        ALICE,
        &[
            "sign-host",
            "--name",
            "db-1",
            "--pubkey",
            "ssh_host_ed25519_key.pub",
        ],
    ));
    assert!(err.contains("takes ramp-admin"), "{err}");
    run_ok(&mut daemon.cmd(
        &dir,
        CAROL,
        &[
            "sign-host",
            "--name",
            "db-1",
            "--pubkey",
            "ssh_host_ed25519_key.pub",
        ],
    ));
    let listing = run_ok(
        std::process::Command::new("ssh-keygen")
            .arg("-L")
            .arg("-f")
            .arg(format!("{}-cert.pub", host.display())),
    );
    assert!(listing.contains("host certificate"), "{listing}");
    assert!(
        listing.contains("db-1") && listing.contains("127.0.0.1"),
        "{listing}"
    );
    let known = run_ok(crate::support::ramp(&dir).args(["trust", "known-hosts"]));
    assert!(
        known.starts_with("@cert-authority * ssh-ed25519 "),
        "{known}"
    );
    let sshd = run_ok(crate::support::ramp(&dir).args(["trust", "sshd"]));
    assert!(
        sshd.contains("TrustedUserCAKeys") && sshd.contains(dir.read("keys/node-ca.pub").trim()),
        "{sshd}"
    );
    assert!(daemon.stop().success());

    let before = std::fs::read_dir(dir.join("data")).unwrap().count();
    dir.write(
        "policies/prod-db.yaml",
        "contract: prod-db\nsteps:\n  - name: [oops\n",
    );
    let (code, err) = run_err(crate::support::ramp(&dir).args(["serve", "--api", "127.0.0.1:0"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("policies/prod-db.yaml:4:1: invalid YAML"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.join("data")).unwrap().count(), before);
}

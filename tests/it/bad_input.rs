//! Bad input gets a clear error, changes nothing, and never takes the daemon down; floods of
//! connections meet the pre-auth limits on both ports.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use chrono::Utc;
use ramp_ca::auth::Signer;

use crate::rig::{rig, Rig};
use crate::support::{keygen, run_err, run_ok};
use crate::{json, setup, ALICE, BOB, CAROL};

/// Sends a request signed by `signer` (or with the given raw headers) and returns (status, body).
pub(crate) async fn send(
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

/// The headers that sign `method path` with `body` at `at`.
pub(crate) async fn signed(
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

/// alice's demo key as a request signer.
pub(crate) fn alice(dir: &crate::support::TestDir) -> Signer {
    signer(dir, ALICE)
}

/// The key at `key` (relative to `dir`) as a request signer.
pub(crate) fn signer(dir: &crate::support::TestDir, key: &str) -> Signer {
    Signer::Key(Box::new(
        ramp_ca::install::keys::read_private(&dir.join(key)).unwrap(),
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
    let out = exchange(
        1,
        api_port(&daemon),
        b"\x16\x03\x01\x02\x00garbage\r\n\r\n".to_vec(),
        false,
    );
    assert!(out.starts_with("HTTP/1.1 400 Bad Request"), "{out}");

    // Nothing above reached the ledger, and the daemon is still up.
    let out = run_ok(&mut daemon.cmd(&dir, CAROL, &["grants", "--all", "--json"]));
    assert_eq!(crate::json(&out), serde_json::json!([]));
    let out = run_ok(&mut daemon.cmd(&dir, BOB, &["audit", "verify"]));
    assert!(out.contains("intact"), "{out}");
    no_panic(&daemon);
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
    assert!(!stranger.with_file_name("stranger-cert.pub").exists());

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
    let (code, err) = run_err(&mut daemon.cmd(&dir, ALICE, &["revoke"]));
    assert_eq!(
        (code, err.trim()),
        (
            2,
            "ramp-ca: revoke needs --serial N, --grant ID or --user U"
        ),
        "usage error"
    );
    let (code, err) = run_err(crate::support::ramp(&dir).arg("no-such-command"));
    assert_eq!(code, 2);
    assert!(
        err.contains("unrecognized subcommand 'no-such-command'"),
        "{err}"
    );

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

/// A connection to 127.0.0.1:`port` from 127.0.0.`from`: each loopback address is a source of
/// its own to the daemon's limits.
fn connect_from(from: u8, port: u16) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, from], 0)).into())
        .unwrap();
    socket
        .connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let stream = TcpStream::from(socket);
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// The first line the server sends (empty when it closes first).
fn first_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 4096 && !line.ends_with(b"\n") {
        match stream.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no line from the server: {e}"),
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Sends `input` from 127.0.0.`from` (half-closing after it when `close`), and returns all the
/// server sent until it closed the connection; panics if it keeps it open past the read timeout.
fn exchange(from: u8, port: u16, input: Vec<u8>, close: bool) -> String {
    let mut stream = connect_from(from, port);
    let mut writer = stream.try_clone().unwrap();
    // The server may answer and close mid-way through a large input: write beside the reading.
    let write = std::thread::spawn(move || {
        let _ = writer.write_all(&input);
        if close {
            let _ = writer.shutdown(std::net::Shutdown::Write);
        }
    });
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "the server kept the connection open ({e}); it sent: {}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    write.join().unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

/// A connection from 127.0.0.`from` that the bastion let in and that sent its version line, so
/// it waits for its login until LOGIN_GRACE.
fn waiting_ssh(from: u8, port: u16) -> TcpStream {
    let mut stream = connect_from(from, port);
    let line = first_line(&mut stream);
    assert!(line.starts_with("SSH-2.0-"), "not let in: {line:?}");
    stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").unwrap();
    stream
}

/// `ssh ... readonly@db-1 echo ok` through the bastion from 127.0.0.`from`; retried for a while
/// when `retry`, since the bastion notices closed connections a moment after they close.
fn login_from(rig: &Rig, from: u8, retry: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let bind = ["-b".to_string(), format!("127.0.0.{from}")];
        let out = rig
            .ssh_with(ALICE, &bind, "readonly@db-1", &["echo", "ok"])
            .output()
            .unwrap();
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
            return;
        }
        assert!(
            retry && Instant::now() < deadline,
            "login from 127.0.0.{from} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            rig.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `GET /healthz` from 127.0.0.`from`; returns the whole response.
fn healthz_from(from: u8, port: u16) -> String {
    exchange(
        from,
        port,
        b"GET /healthz HTTP/1.1\r\nhost: ramp\r\nconnection: close\r\n\r\n".to_vec(),
        false,
    )
}

/// Opens connections with `open(source)` from 127.0.0.`from` on, `per` a source, until `total`
/// are open (`held` counts as open already); returns them and the next unused source.
fn fill(
    mut held: Vec<TcpStream>,
    total: usize,
    per: usize,
    mut from: u8,
    open: impl Fn(u8) -> TcpStream,
) -> (Vec<TcpStream>, u8) {
    while held.len() < total {
        let n = per.min(total - held.len());
        held.extend((0..n).map(|_| open(from)));
        from += 1;
    }
    (held, from)
}

/// The daemon took everything above without a panic.
fn no_panic(daemon: &crate::Daemon) {
    let log = daemon.log();
    assert!(!log.contains("panicked"), "{log}");
}

fn api_port(daemon: &crate::Daemon) -> u16 {
    daemon.url.rsplit(':').next().unwrap().parse().unwrap()
}

/// Reads until the server closes `stream`, within the read timeout.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut sink = [0u8; 1024];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => return e.kind() == ErrorKind::ConnectionReset,
        }
    }
}

#[test]
fn garbage_truncated_and_oversized_http_leaves_the_api_serving() {
    let (dir, daemon) = setup();
    let port = api_port(&daemon);
    let ten_mib = 10 << 20;

    let out = exchange(
        1,
        port,
        b"\x16\x03\x01\x02\x00garbage\r\n\r\n".to_vec(),
        false,
    );
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    let mut huge_head = b"GET /healthz HTTP/1.1\r\nhost: ramp\r\nx-big: ".to_vec();
    huge_head.resize(ten_mib, b'a');
    let out = exchange(1, port, huge_head, false);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    let mut huge_line = b"GET /".to_vec();
    huge_line.resize(ten_mib, b'a');
    let out = exchange(1, port, huge_line, false);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    // 10 MiB in chunks, no content-length to refuse it by: cut off at 64 KiB.
    let mut chunked =
        b"POST /v1/requests HTTP/1.1\r\nhost: ramp\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..160 {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(&chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let out = exchange(1, port, chunked, false);
    assert!(
        out.starts_with("HTTP/1.1 413") && out.contains("over 64 KiB"),
        "{out}"
    );

    // Truncated: a head cut short is closed without an answer (there is no request to answer),
    // and a body shorter than it said gets 400.
    let out = exchange(
        1,
        port,
        b"GET /v1/whoami HTTP/1.1\r\nhost: ramp\r\nx-ramp-".to_vec(),
        true,
    );
    assert_eq!(out, "", "an answer to half a request head");
    let out = exchange(
        1,
        port,
        b"POST /v1/requests HTTP/1.1\r\nhost: ramp\r\ncontent-length: 100\r\n\r\n{\"con".to_vec(),
        true,
    );
    assert!(
        out.starts_with("HTTP/1.1 400") && out.contains("request body incomplete"),
        "{out}"
    );

    let out = run_ok(&mut daemon.cmd(&dir, ALICE, &crate::observe("INC-7", &[])));
    assert!(out.contains("certificate"), "{out}");
    assert!(healthz_from(1, port).starts_with("HTTP/1.1 200"));
    no_panic(&daemon);
}

#[test]
fn idle_and_slow_http_connections_are_capped_and_timed_out() {
    use ramp_ca::api::{BODY_TIMEOUT, HEADER_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_SOURCE};
    let (dir, daemon) = setup();
    let port = api_port(&daemon);
    let started = Instant::now();

    // A body that never finishes gets 408.
    let mut slow_body = connect_from(3, port);
    slow_body
        .write_all(b"POST /v1/requests HTTP/1.1\r\nhost: ramp\r\ncontent-length: 10\r\n\r\n{")
        .unwrap();

    // One source holds its share of idle connections; its next ones are refused at once.
    let per = MAX_CONNECTIONS_PER_SOURCE;
    let idle = |from| connect_from(from, port);
    let (held, _) = fill(Vec::new(), per, per, 2, idle);
    for _ in 0..3 {
        let out = healthz_from(2, port);
        assert!(
            out.starts_with("HTTP/1.1 429") && out.contains("too many connections from 127.0.0.2"),
            "{out}"
        );
    }
    // Everyone else is served.
    run_ok(&mut daemon.cmd(&dir, ALICE, &["grants"]));

    // Every source's share, and the next source is turned away with 503.
    // (The slow body holds the last place.)
    let (mut held, next) = fill(held, MAX_CONNECTIONS - 1, per, 4, idle);
    let out = healthz_from(next, port);
    assert!(
        out.starts_with("HTTP/1.1 503") && out.contains("too many connections"),
        "{out}"
    );

    // Idle connections are closed once the head timeout passes.
    for (i, conn) in held.iter_mut().enumerate() {
        assert!(closed_by_server(conn), "idle connection {i} still open");
    }
    let out = exchange_rest(&mut slow_body);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    let waited = started.elapsed();
    assert!(
        waited < HEADER_TIMEOUT.max(BODY_TIMEOUT) + Duration::from_secs(30),
        "{waited:?}"
    );

    assert!(healthz_from(2, port).starts_with("HTTP/1.1 200"));
    run_ok(&mut daemon.cmd(&dir, ALICE, &["grants"]));
    no_panic(&daemon);
}

/// Everything `stream` still sends until the server closes it.
fn exchange_rest(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => {}
        // A server that answers and resets is fine; what it sent is kept.
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "reading the answer: {e}; got so far: {}",
            String::from_utf8_lossy(&got)
        ),
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn garbage_truncated_and_oversized_ssh_leaves_the_bastion_serving() {
    let rig = rig();
    rig.observe("INC-8", &[]);
    let port = rig.daemon.ssh_port;
    let started = Instant::now();
    // Says nothing at all: let go once the version line is overdue.
    let mut silent = connect_from(1, port);

    // Each gets the bastion's version line (and, once the client's version came, its key
    // exchange offer) and is then closed: `exchange` fails the test on a connection kept open.
    let version_only = |what: &str, input: Vec<u8>, close: bool| {
        let out = exchange(1, port, input, close);
        let first = out.split_inclusive('\n').next().unwrap_or_default();
        assert!(
            first.starts_with("SSH-2.0-") && first.ends_with("\r\n"),
            "{what}: {out:?}"
        );
    };
    version_only("garbage", b"\x00\xff\xfe garbage\r\n".repeat(4), false);
    let mut line = b"SSH-2.0-".to_vec();
    line.resize(10 << 20, b'a');
    version_only("a 10 MiB version line", line, false);

    let version = b"SSH-2.0-OpenSSH_9.6\r\n".to_vec();
    version_only(
        "a packet that claims to be 4 GiB",
        [&version[..], &[0xff, 0xff, 0xff, 0xf0, 0x04]].concat(),
        false,
    );
    version_only(
        "a packet that stops half-way",
        [&version[..], &[0, 0, 1, 0, 4, 20, 1, 2]].concat(),
        true,
    );
    let mut junk = version.clone();
    junk.extend_from_slice(&[0, 0, 0, 252, 4, 20]);
    junk.extend((0..250u32).map(|i| (i * 37 % 251) as u8));
    version_only(
        "a well-framed packet of junk where the key exchange should be",
        junk,
        false,
    );
    // Connections that close at once.
    for _ in 0..20 {
        drop(connect_from(1, port));
    }

    assert_eq!(first_line(&mut silent).get(..8), Some("SSH-2.0-"));
    assert!(closed_by_server(&mut silent), "a silent connection is kept");
    let waited = started.elapsed();
    assert!(
        waited < ramp_ca::bastion::VERSION_TIMEOUT + Duration::from_secs(30),
        "{waited:?}"
    );

    login_from(&rig, 1, false);
    no_panic(&rig.daemon);
}

#[test]
fn connections_not_logged_in_are_capped_per_address_and_in_total() {
    use ramp_ca::bastion::{MAX_UNAUTHENTICATED, MAX_UNAUTHENTICATED_PER_SOURCE};
    let rig = rig();
    rig.observe("INC-9", &[]);
    let port = rig.daemon.ssh_port;
    let per = MAX_UNAUTHENTICATED_PER_SOURCE;

    let waits = |from| waiting_ssh(from, port);
    let (waiting, _) = fill(Vec::new(), per, per, 1, waits);
    let line = first_line(&mut connect_from(1, port));
    assert!(
        line.contains("too many connections not logged in from 127.0.0.1"),
        "{line:?}"
    );
    // Another address logs in meanwhile, and the waiting ones are untouched.
    login_from(&rig, 2, false);

    let (waiting, next) = fill(waiting, MAX_UNAUTHENTICATED, per, 3, waits);
    let line = first_line(&mut connect_from(next, port));
    assert!(
        line.contains("too many connections not logged in; try again later"),
        "{line:?}"
    );

    // Once they go, the first address logs in again.
    drop(waiting);
    login_from(&rig, 1, true);
    no_panic(&rig.daemon);
}

#[test]
fn a_flood_of_connections_from_one_address_is_rate_limited() {
    let burst = ramp_ca::bastion::UNAUTHENTICATED_RATE.burst as usize;
    let rig = rig();
    rig.observe("INC-10", &[]);
    let port = rig.daemon.ssh_port;

    // Connect, read the greeting, hang up: each costs the address a token it never gets back.
    let (mut let_in, mut capped, mut limited) = (0, 0, None);
    for _ in 0..20 * burst {
        let line = first_line(&mut connect_from(7, port));
        if line.starts_with("SSH-2.0-") {
            let_in += 1;
        } else if line.contains("too many new connections from 127.0.0.7") {
            limited = Some(line);
            break;
        } else {
            // The bastion has not yet seen the earlier ones go: the per-address cap.
            assert!(line.contains("not logged in from 127.0.0.7"), "{line:?}");
            capped += 1;
        }
    }
    assert!(
        limited.is_some(),
        "never limited after {let_in} connections"
    );
    assert!(
        let_in + capped >= burst,
        "limited after {let_in} + {capped}"
    );

    // Other addresses are not affected, and the flooding one gets its budget back soon.
    login_from(&rig, 1, false);
    login_from(&rig, 7, true);
    let log = rig.daemon.log();
    assert!(
        log.contains("connection refused server=\"bastion\" peer=127.0.0.7"),
        "{log}"
    );
}

/// Regression: a reason or name with control characters (a screen clear, a newline and a
/// forged line) was printed raw by `grants` and `audit list`, where it ran in an auditor's
/// terminal; and a closed stdout (`ramp-ca audit list | head`) ended the CLI in a panic.
#[test]
fn control_characters_from_users_are_escaped_and_a_closed_pipe_ends_quietly() {
    let (dir, daemon) = setup();
    let hostile = "INC-1\x1b[2J\x1b]0;owned\x07\nforged: carol approved everything\u{9b}";
    run_ok(&mut daemon.cmd(&dir, ALICE, &crate::observe(hostile, &[])));
    let asked = json(&run_ok(&mut daemon.cmd(
        &dir,
        ALICE,
        &crate::ask("operate", "INC-1"),
    )));
    let id = asked["grant"]["id"].as_str().unwrap();
    let denied = run_ok(&mut daemon.cmd(&dir, BOB, &["deny", id, "--reason", hostile]));
    let escaped = "INC-1\\x1b[2J\\x1b]0;owned\\x07\\nforged: carol approved everything\\u{9b}";
    assert!(denied.contains(escaped), "{denied}");
    let audit = run_ok(&mut daemon.cmd(&dir, CAROL, &["audit", "list"]));
    assert!(audit.contains("INC-1\\u001b[2J"), "{audit}");
    for (what, out) in [("deny", &denied), ("audit list", &audit)] {
        assert!(
            !out.chars()
                .any(|c| c == '\x1b' || c == '\x07' || c == '\u{9b}'),
            "{what} printed a control character raw: {out:?}"
        );
        assert!(
            !out.lines().any(|l| l.starts_with("forged")),
            "{what} let the reason start a line: {out}"
        );
    }
    // The JSON keeps the reason exactly as given.
    let list = json(&run_ok(&mut daemon.cmd(&dir, ALICE, &["grants", "--json"])));
    assert_eq!(list[0]["reason"], hostile);

    // A reader that goes away: the command stops without a panic or a backtrace.
    let cmd = daemon.cmd(&dir, CAROL, &["audit", "list"]);
    let line = format!(
        "{} | true; echo \"status=${{PIPESTATUS[0]}}\"",
        std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| format!("'{}'", a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut shell = std::process::Command::new("bash");
    shell.arg("-c").arg(&line).current_dir(dir.path());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => shell.env(k, v),
            None => shell.env_remove(k),
        };
    }
    let out = shell.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stdout.contains("status=0") || stdout.contains("status=141"),
        "{stdout}{stderr}"
    );
    no_panic(&daemon);
}

/// Issue 12: with `--json` errors were text; `--server 127.0.0.1:7400` (no scheme) failed;
/// `--key id.pub` gave a key parser's complaint; arguments had no description in `--help`.
#[test]
fn the_command_line_forgives_a_missing_scheme_names_a_public_key_and_errs_in_json() {
    let (dir, daemon) = setup();
    let bare = daemon.url.trim_start_matches("http://").to_string();
    let mut cmd = daemon.cmd(&dir, ALICE, &["grants", "--json"]);
    cmd.env("RAMP_SERVER", &bare);
    let out = run_ok(&mut cmd);
    assert!(json(&out).is_array(), "{out}");

    let public = format!("{ALICE}.pub");
    let (code, err) = run_err(&mut daemon.cmd(&dir, &public, &["grants"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("is the public half of a key; pass the private key file (--key")
            && err.contains(&format!("--key {}", dir.join(ALICE).display())),
        "{err}"
    );

    let out = daemon
        .cmd(&dir, ALICE, &["approve", "nosuchgrant", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let body = json(&String::from_utf8_lossy(&out.stdout));
    assert!(
        body["error"].as_str().unwrap().contains("nosuchgrant"),
        "{body}"
    );
    assert_eq!(body["exit"], 1);

    // Every argument of every command says what it is.
    let commands: &[&[&str]] = &[
        &["init"],
        &["serve"],
        &["policy", "check"],
        &["policy", "explain"],
        &["sign"],
        &["request"],
        &["approve"],
        &["deny"],
        &["dashboard"],
        &["grants"],
        &["revoke"],
        &["krl"],
        &["sign-host"],
        &["audit", "list"],
        &["audit", "verify"],
        &["audit", "checkpoint"],
        &["sessions", "list"],
        &["sessions", "show"],
        &["sessions", "play"],
        &["sessions", "export"],
        &["sessions", "grep"],
        &["sessions", "end"],
        &["extend"],
        &["store", "migrate"],
        &["completions"],
    ];
    for args in commands {
        let help = run_ok(crate::support::ramp(&dir).args(*args).arg("--help"));
        for line in help
            .lines()
            .filter(|l| l.starts_with("  ") && l.trim_start().starts_with(['-', '<']))
        {
            let described = line
                .trim()
                .split("  ")
                .filter(|p| !p.trim().is_empty())
                .count()
                > 1;
            let next_described = help
                .lines()
                .skip_while(|l| *l != line)
                .nth(1)
                .is_some_and(|n| n.starts_with("          ") && !n.trim().is_empty());
            assert!(
                described || next_described,
                "`ramp-ca {}`: {line:?} has no description:\n{help}",
                args.join(" ")
            );
        }
    }
}

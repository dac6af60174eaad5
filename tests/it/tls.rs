//! `serve --tls-cert F --tls-key F`: the API and dashboard over HTTPS, with a CA and server
//! certificates the test makes (openssl), checked by the real command line and by curl.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::certs::{openssl, TestCa};
use crate::daemon::Daemon;
use crate::support::{ramp, run_err, run_ok, TestDir};
use crate::{json, observe, ALICE};

/// An initialised installation, a CA in `DIR/tls` and a certificate for `localhost` from it.
pub struct Tls {
    pub dir: TestDir,
    pub ca: TestCa,
    /// The server's certificate (PEM) and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Tls {
    pub fn new() -> Tls {
        let dir = TestDir::new();
        run_ok(ramp(&dir).args(["init", "--demo"]));
        let tls_dir = dir.join("tls");
        std::fs::create_dir(&tls_dir).unwrap();
        let ca = TestCa::new(&tls_dir, "ramp-ca test CA");
        let (cert, key) = ca.issue("server", "DNS:localhost");
        Tls { dir, ca, cert, key }
    }

    /// `serve --tls-cert --tls-key` with this certificate.
    pub fn serve(&self) -> Daemon {
        Daemon::start_with(&self.dir, &tls_flags(&self.cert, &self.key))
    }

    /// `https://localhost:PORT`, the daemon by the name its certificate holds.
    pub fn localhost(&self, daemon: &Daemon) -> String {
        format!("https://localhost:{}", port(daemon))
    }
}

fn tls_flags<'a>(cert: &'a Path, key: &'a Path) -> [&'a str; 4] {
    [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]
}

/// The daemon's port.
fn port(daemon: &Daemon) -> u16 {
    daemon.url.rsplit(':').next().unwrap().parse().unwrap()
}

/// `curl -sS ARGS`: (exit code, stdout, stderr).
fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .arg("-sS")
        .args(args)
        .output()
        .expect("curl (scripts/install-deps installs it)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A one-line error from the command line, no chain of causes.
fn assert_one_line(err: &str) {
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        !err.contains("Caused by") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn the_api_serves_https_and_the_command_line_trusts_only_what_it_is_told_to() {
    let tls = Tls::new();
    // A connection that never starts its handshake, opened first: it must not hold the
    // accept loop up, and is closed within the head timeout.
    let daemon = tls.serve();
    assert!(
        daemon.url.starts_with("https://127.0.0.1:"),
        "{}",
        daemon.url
    );
    let port = port(&daemon);
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let silent_since = Instant::now();
    let server = tls.localhost(&daemon);
    let ca = tls.ca.pem();
    let ca = ca.to_str().unwrap();

    // Trusting the test CA, the command line signs and writes the certificate, at once
    // (the silent connection's handshake waits in its own task).
    let mut sign = daemon.cmd(&tls.dir, ALICE, &observe("INC-11 over TLS", &[]));
    sign.args(["--server", &server, "--ca-cert", ca]);
    let started = Instant::now();
    run_ok(&mut sign);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "sign took {:?} beside a silent connection",
        started.elapsed()
    );
    assert!(tls.dir.join("demo/alice/id_ed25519-cert.pub").exists());
    // RAMP_CA_CERT does the same as --ca-cert.
    let grants = run_ok(
        daemon
            .cmd(&tls.dir, ALICE, &["grants", "--json", "--server", &server])
            .env("RAMP_CA_CERT", ca),
    );
    assert_eq!(json(&grants).as_array().map(Vec::len), Some(1), "{grants}");

    // Without it the system's CAs are used, and none of them signed the certificate.
    let (code, err) = run_err(&mut daemon.cmd(&tls.dir, ALICE, &["grants", "--server", &server]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "ramp-ca: {server}: the server's certificate is not trusted: it is not signed by a CA the system trusts; pass --ca-cert F"
        )),
        "{err}"
    );
    assert_one_line(&err);
    // Another CA is no better.
    let other_dir = tls.dir.join("other-ca");
    std::fs::create_dir(&other_dir).unwrap();
    let other = TestCa::new(&other_dir, "another CA").pem();
    let other = other.to_str().unwrap();
    let (code, err) = run_err(&mut daemon.cmd(
        &tls.dir,
        ALICE,
        &["grants", "--server", &server, "--ca-cert", other],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("not signed by a CA certificate in {other}")),
        "{err}"
    );
    // The host name is checked: the certificate is for localhost, not 127.0.0.1.
    let by_ip = format!("https://127.0.0.1:{port}");
    let (code, err) = run_err(&mut daemon.cmd(
        &tls.dir,
        ALICE,
        &["grants", "--server", &by_ip, "--ca-cert", ca],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the server's certificate is not for the name in --server")
            && err.contains("\"127.0.0.1\"")
            && err.contains("localhost"),
        "{err}"
    );
    assert_one_line(&err);
    // A --ca-cert that is not a certificate is named.
    let key = tls.key.to_str().unwrap();
    let (code, err) = run_err(&mut daemon.cmd(
        &tls.dir,
        ALICE,
        &["grants", "--server", &server, "--ca-cert", key],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("--ca-cert {key}: holds no usable PEM certificate")),
        "{err}"
    );

    // Plain HTTP on the HTTPS port is told so, in plain HTTP, and closed.
    let plain = format!("http://localhost:{port}");
    let (code, err) = run_err(&mut daemon.cmd(&tls.dir, ALICE, &["grants", "--server", &plain]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("this port serves HTTPS: use an https:// URL"),
        "{err}"
    );
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer)
        .expect("the answer, then the connection closed");
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    // And an https client at a plain HTTP daemon hears that it does not speak TLS.
    let (plain_dir, plain_daemon) = crate::setup();
    assert!(
        plain_daemon.url.starts_with("http://"),
        "{}",
        plain_daemon.url
    );
    let wrong = plain_daemon.url.replace("http://", "https://");
    let (code, err) =
        run_err(&mut plain_daemon.cmd(&plain_dir, ALICE, &["grants", "--server", &wrong]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the server does not speak TLS there")
            && err.contains("use an http:// --server"),
        "{err}"
    );
    drop(plain_daemon);

    // curl agrees: the chain verifies, the name matches, HTTP/1.1 by ALPN.
    let healthz = format!("{server}/healthz");
    let (code, out, verbose) = curl(&["-v", "--cacert", ca, &healthz]);
    assert_eq!((code, out.as_str()), (0, "ok\n"), "{verbose}");
    assert!(
        verbose.contains("ALPN: server accepted http/1.1"),
        "{verbose}"
    );
    let (code, _, err) = curl(&[&healthz]);
    assert_ne!(code, 0, "curl trusted the test CA without --cacert: {err}");

    // The dashboard's login link is https, and its session cookie Secure.
    let link = json(&run_ok(&mut daemon.cmd(
        &tls.dir,
        ALICE,
        &["dashboard", "--json", "--server", &server, "--ca-cert", ca],
    )));
    let link = link["url"].as_str().unwrap().to_string();
    assert!(
        link.starts_with(&format!("{server}/ui/login?token=")),
        "{link}"
    );
    let (code, headers, err) = curl(&["--cacert", ca, "-D", "-", "-o", "/dev/null", &link]);
    assert_eq!(code, 0, "{err}");
    let cookie = headers
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: ramp_session=")
        })
        .unwrap_or_else(|| panic!("no session cookie:\n{headers}"));
    assert!(
        cookie.contains("; HttpOnly") && cookie.contains("; Secure"),
        "{cookie}"
    );

    // Meanwhile the silent connection was closed, within the head timeout (10 s).
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 16];
    let closed = silent.read(&mut buf);
    let waited = silent_since.elapsed();
    assert!(
        matches!(closed, Ok(0)) || closed.is_err(),
        "read {closed:?} from a connection that sent nothing"
    );
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );
    assert!(
        closed.is_ok(),
        "closed by timeout, not a read timeout: {closed:?} after {waited:?}"
    );
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());
}

#[test]
fn sighup_rereads_the_certificate_and_keeps_the_old_one_when_the_new_files_are_bad() {
    let tls = Tls::new();
    let mut daemon = tls.serve();
    let port = port(&daemon);
    let ca = tls.ca.pem();
    let ca = ca.to_str().unwrap();
    let renamed = format!("https://ramp.test:{port}/healthz");
    let resolve = format!("ramp.test:{port}:127.0.0.1");
    let (code, _, err) = curl(&["--cacert", ca, "--resolve", &resolve, &renamed]);
    assert_ne!(
        code, 0,
        "the first certificate is for localhost only: {err}"
    );

    // A renewed certificate for one more name goes where the old one was; SIGHUP.
    let (cert, key) = tls.ca.issue("renewed", "DNS:localhost,DNS:ramp.test");
    std::fs::copy(&cert, &tls.cert).unwrap();
    std::fs::copy(&key, &tls.key).unwrap();
    daemon.signal("HUP");
    wait_for_log(&mut daemon, "TLS certificate reloaded", 1);
    let (code, out, err) = curl(&["--cacert", ca, "--resolve", &resolve, &renamed]);
    assert_eq!((code, out.as_str()), (0, "ok\n"), "{err}");

    // A key that does not match: the renewed certificate stays in use.
    let (_, stray_key) = tls.ca.issue("stray", "DNS:localhost");
    std::fs::copy(&stray_key, &tls.key).unwrap();
    daemon.signal("HUP");
    wait_for_log(&mut daemon, "TLS certificate NOT reloaded", 1);
    let log = daemon.log();
    assert!(
        log.contains(&format!(
            "{}: is not the key of the certificate in {}",
            tls.key.display(),
            tls.cert.display()
        )),
        "{log}"
    );
    let (code, out, err) = curl(&["--cacert", ca, "--resolve", &resolve, &renamed]);
    assert_eq!((code, out.as_str()), (0, "ok\n"), "{err}");
    assert_eq!(daemon.exited(), None, "{}", daemon.log());
}

/// Waits (bounded) until `what` is in the daemon's log `times` times.
fn wait_for_log(daemon: &mut Daemon, what: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemon.log().matches(what).count() < times {
        if let Some(status) = daemon.exited() {
            panic!("the daemon exited ({status}):\n{}", daemon.log());
        }
        assert!(Instant::now() < deadline, "no `{what}`:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_checks_the_certificate_and_key_before_it_creates_or_binds_anything() {
    let tls = Tls::new();
    let tls_dir = tls.dir.join("tls");
    let (cert, key) = (tls.cert.to_str().unwrap(), tls.key.to_str().unwrap());
    // Each is run on an empty directory: nothing may be created there, no port bound.
    let serve = |args: &[&str]| {
        let fresh = TestDir::new();
        let mut cmd = ramp(&fresh);
        cmd.args(["serve", "--api", "127.0.0.1:0", "--ssh", "127.0.0.1:0"])
            .args(args);
        let (code, err) = run_err(&mut cmd);
        let created: Vec<_> = std::fs::read_dir(fresh.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(created.is_empty(), "{err}\ncreated {created:?}");
        assert_one_line(&err);
        (code, err)
    };
    let check = |args: &[&str], want_code: i32, want: &str| {
        let (code, err) = serve(args);
        assert_eq!(code, want_code, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}\nwants: {want}");
    };

    check(
        &["--tls-cert", cert],
        2,
        &format!("--tls-cert {cert} needs --tls-key F"),
    );
    check(
        &["--tls-key", key],
        2,
        &format!("--tls-key {key} needs --tls-cert F"),
    );
    let missing = tls_dir.join("missing.pem");
    let missing = missing.to_str().unwrap();
    check(
        &tls_flags(Path::new(missing), &tls.key),
        1,
        &format!("ramp-ca: {missing}: cannot read the TLS certificate: No such file"),
    );
    check(
        &tls_flags(&tls.cert, Path::new(missing)),
        1,
        &format!("ramp-ca: {missing}: cannot read the TLS private key: No such file"),
    );
    check(
        &tls_flags(&tls.key, &tls.key),
        1,
        &format!("ramp-ca: {key}: holds no certificate"),
    );
    check(
        &tls_flags(&tls.cert, &tls.cert),
        1,
        &format!("ramp-ca: {cert}: holds no private key"),
    );
    let (_, other_key) = tls.ca.issue("other", "DNS:localhost");
    check(
        &tls_flags(&tls.cert, &other_key),
        1,
        &format!(
            "ramp-ca: {}: is not the key of the certificate in {cert}",
            other_key.display()
        ),
    );
    openssl(
        &tls_dir,
        &[
            "pkcs8",
            "-topk8",
            "-in",
            key,
            "-out",
            "encrypted.key",
            "-passout",
            "pass:secret",
        ],
    );
    check(
        &tls_flags(&tls.cert, &tls_dir.join("encrypted.key")),
        1,
        "encrypted.key: the private key is encrypted",
    );
    // The config file's `tls:` names the files as well.
    let config = tls.dir.write(
        "tls-config.yaml",
        format!("tls:\n  cert: {cert}\n  key: {missing}\n"),
    );
    check(
        &["--config", config.to_str().unwrap()],
        1,
        &format!("{missing}: cannot read the TLS private key"),
    );
}

#[test]
fn ec_and_rsa_keys_serve_in_each_pem_encoding_and_the_config_file_turns_tls_on() {
    let tls = Tls::new();
    let tls_dir = tls.dir.join("tls");
    let ca = tls.ca.pem();
    // SEC1 (`BEGIN EC PRIVATE KEY`) for the EC key; RSA as PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    openssl(&tls_dir, &["ec", "-in", "server.key", "-out", "sec1.key"]);
    openssl(
        &tls_dir,
        &["genrsa", "-traditional", "-out", "rsa.key", "2048"],
    );
    let rsa_key = tls_dir.join("rsa.key");
    let rsa_cert = tls.ca.issue_for("rsa", "DNS:localhost", &rsa_key);
    for (cert, key, begins) in [
        (
            tls.cert.clone(),
            tls_dir.join("sec1.key"),
            "-----BEGIN EC PRIVATE KEY-----",
        ),
        (rsa_cert, rsa_key, "-----BEGIN RSA PRIVATE KEY-----"),
    ] {
        let text = std::fs::read_to_string(&key).unwrap();
        assert!(text.starts_with(begins), "{text}");
        let config = tls.dir.write(
            "tls-config.yaml",
            format!(
                "tls:\n  cert: {}\n  key: {}\n",
                cert.display(),
                key.display()
            ),
        );
        let daemon = Daemon::start_with(&tls.dir, &["--config", config.to_str().unwrap()]);
        assert!(daemon.url.starts_with("https://"), "{}", daemon.url);
        let server = format!("https://localhost:{}", port(&daemon));
        run_ok(&mut daemon.cmd(
            &tls.dir,
            ALICE,
            &[
                "grants",
                "--server",
                &server,
                "--ca-cert",
                ca.to_str().unwrap(),
            ],
        ));
        assert!(
            daemon
                .log()
                .contains(&format!("api={server}").replace("localhost", "127.0.0.1")),
            "the log names the address and the scheme:\n{}",
            daemon.log()
        );
        daemon.stop();
    }
}

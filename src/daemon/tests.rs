//! The daemon's settings and start-up, without a server.
use super::*;

/// `scripts/config.example.yaml` documents every option; `serve` must accept it as is.
#[test]
fn the_example_config_loads_with_every_option() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/config.example.yaml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.api.as_deref(), Some("127.0.0.1:7400"));
    assert_eq!(c.ssh.as_deref(), Some("0.0.0.0:2222"));
    assert_eq!(c.min_free_mib, Some(64));
    assert_eq!(c.webhooks.len(), 2);
    assert_eq!(c.webhooks[0].format, crate::notify::Format::Slack);
    assert_eq!(c.dashboard.session_ttl, "8h");
    assert_eq!(c.dashboard.link_ttl, "2m");
    assert!(c.dashboard.public_url.is_some());
    assert_eq!(c.bastion.max_connections_per_user, 32);
    assert_eq!(c.audit.checkpoint_every, "5m");
    assert_eq!(c.reviews.check_every, "30s");
    assert_eq!(
        (c.retention.sweep_every.as_str(), c.retention.per_pass),
        ("5m", 100)
    );
    assert_eq!(c.node.as_deref(), Some("bastion-1"));
    assert_eq!(c.node_lease.as_deref(), Some("15s"));
    assert!(c
        .store
        .as_deref()
        .is_some_and(|s| s.starts_with("postgres://")));
    assert_eq!(c.recordings.as_deref(), Some("file:///srv/ramp/recordings"));
    let pool = c.store_pool.settings().unwrap();
    assert_eq!(
        (pool.max_connections, pool.query_timeout),
        (16, std::time::Duration::from_secs(5))
    );
    assert_eq!(
        c.tls,
        Some(crate::tls::Settings {
            cert: "/etc/ramp-ca/tls/fullchain.pem".into(),
            key: "/etc/ramp-ca/tls/privkey.pem".into(),
        })
    );
}

#[test]
fn a_bad_checkpoint_interval_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, "audit:\n  checkpoint_every: often\n").unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("audit.checkpoint_every: `often`"), "{err}");
    std::fs::write(&path, "audit:\n  every: 5m\n").unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("unknown field `every`"), "{err}");
}

#[test]
fn review_and_retention_intervals_default_and_bad_ones_are_named() {
    let s = Settings::merge(&Flags::default(), Config::default()).unwrap();
    assert_eq!(s.review_check_every, std::time::Duration::from_secs(30));
    assert_eq!(s.retention_every, std::time::Duration::from_secs(300));
    assert_eq!(s.retention_per_pass, 100);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let err = |text: &str| {
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap_err().to_string()
    };
    let e = err("reviews:\n  check_every: 0s\n");
    assert!(e.contains("reviews.check_every: `0s`"), "{e}");
    let e = err("retention:\n  sweep_every: often\n");
    assert!(e.contains("retention.sweep_every: `often`"), "{e}");
    let e = err("retention:\n  per_pass: 0\n");
    assert!(e.contains("retention.per_pass: 0"), "{e}");
    std::fs::write(
        &path,
        "reviews: {check_every: 1s}\nretention: {sweep_every: 2s, per_pass: 5}\n",
    )
    .unwrap();
    let s = Settings::load(&Flags {
        config: Some(path.clone()),
        ..Flags::default()
    })
    .unwrap();
    assert_eq!(
        (
            s.review_check_every.as_secs(),
            s.retention_every.as_secs(),
            s.retention_per_pass
        ),
        (1, 2, 5)
    );
}

/// `--store` (or RAMP_STORE, which clap reads as the flag) > `store:` > sled.
#[test]
fn the_store_flag_beats_the_file_which_beats_sled() {
    let file = |store: Option<&str>| Config {
        store: store.map(String::from),
        ..Config::default()
    };
    let flag = |store: &str| Flags {
        store: Some(store.into()),
        ..Flags::default()
    };
    let shown = |flags: Flags, file: Config| {
        Settings::merge(&flags, file)
            .map(|s| s.store.shown())
            .map_err(|e| e.to_string())
    };
    let in_file = || file(Some("postgres://b@file.example:5432/db"));
    assert_eq!(
        shown(flag("postgres://a@flag.example:5433/db"), in_file()),
        Ok("postgres flag.example:5433/db".into())
    );
    assert_eq!(
        shown(Flags::default(), in_file()),
        Ok("postgres file.example:5432/db".into())
    );
    assert_eq!(shown(flag("sled"), in_file()), Ok("sled".into()));
    assert_eq!(shown(Flags::default(), file(None)), Ok("sled".into()));
    let bad = shown(flag("mysql://ramp@db/ramp"), file(None)).unwrap_err();
    assert!(bad.contains("--store") && bad.contains("mysql"), "{bad}");
}

/// `--recordings` (or RAMP_RECORDINGS, which clap reads as the flag) > `recordings:` >
/// DIR/data/recordings.
#[test]
fn the_recordings_flag_beats_the_file_which_beats_the_data_directory() {
    let file = |r: Option<&str>| Config {
        recordings: r.map(String::from),
        ..Config::default()
    };
    let flag = |r: &str| Flags {
        recordings: Some(r.into()),
        ..Flags::default()
    };
    let shown = |flags: Flags, file: Config| {
        Settings::merge(&flags, file)
            .map(|s| s.recordings.shown())
            .map_err(|e| e.to_string())
    };
    let in_file = || file(Some("file:///from/file"));
    assert_eq!(
        shown(flag("file:///from/flag"), in_file()),
        Ok("file:///from/flag".into())
    );
    assert_eq!(
        shown(Flags::default(), in_file()),
        Ok("file:///from/file".into())
    );
    assert_eq!(
        shown(Flags::default(), file(None)),
        Ok("DIR/data/recordings".into())
    );
    let bad = shown(flag("ftp://x/y"), file(None)).unwrap_err();
    assert!(
        bad.contains("--recordings") && bad.contains("unknown scheme"),
        "{bad}"
    );
}

/// `--node` (or RAMP_NODE) > `node:` > the host name; a name that does not fit is a
/// usage error naming the rule.
#[test]
fn the_node_flag_beats_the_file_which_beats_the_host_name() {
    let node = |flag: Option<&str>, file: Option<&str>| {
        let flags = Flags {
            node: flag.map(String::from),
            ..Flags::default()
        };
        let file = Config {
            node: file.map(String::from),
            ..Config::default()
        };
        Settings::merge(&flags, file)
            .map(|s| s.node)
            .map_err(|e| e.to_string())
    };
    assert_eq!(node(Some("a"), Some("b")), Ok("a".into()));
    assert_eq!(node(None, Some("b")), Ok("b".into()));
    assert_eq!(node(None, None), Ok(crate::service::host_name()));
    let bad = node(Some("two words"), None).unwrap_err();
    assert!(
        bad.contains("--node `two words`: a node name is 1 to 64"),
        "{bad}"
    );
}

/// Regression: `serve --config F --api A` used the file's `api:` over the flag.
#[test]
fn flags_beat_the_config_file_which_beats_the_defaults() {
    let file = || Config {
        api: Some("127.0.0.1:9001".into()),
        ssh: Some("127.0.0.1:9002".into()),
        min_free_mib: Some(7),
        ..Config::default()
    };
    let check = |flags: Flags, file: Config, want: (&str, &str, u64)| {
        let s = Settings::merge(&flags, file).unwrap();
        assert_eq!(
            (s.api.to_string(), s.ssh.to_string(), s.min_free),
            (want.0.to_string(), want.1.to_string(), want.2),
            "{flags:?}"
        );
    };
    let all_flags = Flags {
        api: Some("127.0.0.1:8001".into()),
        ssh: Some("127.0.0.1:8002".into()),
        min_free_mib: Some(3),
        ..Flags::default()
    };
    check(
        all_flags,
        file(),
        ("127.0.0.1:8001", "127.0.0.1:8002", 3 << 20),
    );
    check(
        Flags::default(),
        file(),
        ("127.0.0.1:9001", "127.0.0.1:9002", 7 << 20),
    );
    check(
        Flags {
            ssh: Some("127.0.0.1:8002".into()),
            ..Flags::default()
        },
        file(),
        ("127.0.0.1:9001", "127.0.0.1:8002", 7 << 20),
    );
    check(
        Flags::default(),
        Config::default(),
        (
            DEFAULT_API,
            DEFAULT_SSH,
            crate::recordings::writer::DEFAULT_MIN_FREE,
        ),
    );
    let bad = Settings::merge(
        &Flags {
            api: Some("nowhere".into()),
            ..Flags::default()
        },
        file(),
    )
    .unwrap_err()
    .to_string();
    assert!(bad.contains("--api") && bad.contains("`nowhere`"), "{bad}");
}

/// `tls:` in the file, `--tls-cert`/`--tls-key` over it one by one; a certificate
/// without its key (or the reverse) is a usage error naming what is missing.
#[test]
fn tls_files_merge_flag_over_file_and_come_in_pairs() {
    let files = |cert: &str, key: &str| crate::tls::Settings {
        cert: cert.into(),
        key: key.into(),
    };
    let flags = |cert: Option<&str>, key: Option<&str>| Flags {
        tls_cert: cert.map(Into::into),
        tls_key: key.map(Into::into),
        ..Flags::default()
    };
    let file = |tls: Option<crate::tls::Settings>| Config {
        tls,
        ..Config::default()
    };
    let check = |flags: Flags, file: Config, want: Result<Option<(&str, &str)>, &str>| {
        let got = Settings::merge(&flags, file).map(|s| s.tls);
        match (got, want) {
            (Ok(got), Ok(want)) => {
                assert_eq!(got, want.map(|(c, k)| files(c, k)), "{flags:?}")
            }
            (Err(e), Err(want)) => {
                assert!(matches!(e, Error::Usage(_)), "{e:?}");
                assert!(e.to_string().contains(want), "{e}\nwants: {want}");
            }
            (got, want) => panic!("{flags:?}: got {got:?}, want {want:?}"),
        }
    };
    let in_file = || file(Some(files("/etc/f.pem", "/etc/f.key")));
    check(flags(None, None), file(None), Ok(None));
    check(
        flags(None, None),
        in_file(),
        Ok(Some(("/etc/f.pem", "/etc/f.key"))),
    );
    check(
        flags(Some("c.pem"), Some("c.key")),
        in_file(),
        Ok(Some(("c.pem", "c.key"))),
    );
    check(
        flags(Some("c.pem"), None),
        in_file(),
        Ok(Some(("c.pem", "/etc/f.key"))),
    );
    check(
        flags(None, Some("c.key")),
        in_file(),
        Ok(Some(("/etc/f.pem", "c.key"))),
    );
    check(
        flags(Some("c.pem"), None),
        file(None),
        Err("--tls-cert c.pem needs --tls-key F"),
    );
    check(
        flags(None, Some("c.key")),
        file(None),
        Err("--tls-key c.key needs --tls-cert F"),
    );

    // In the file, `tls:` names both files and nothing else.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    for (text, want) in [
        ("tls:\n  cert: a.pem\n", "tls: missing field `key`"),
        (
            "tls:\n  cert: a.pem\n  key: a.key\n  ca: b.pem\n",
            "tls: unknown field `ca`",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains(want), "{err}\nwants: {want}");
    }
}

#[test]
fn a_bad_webhook_is_named_with_the_file_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "api: 127.0.0.1:0\nwebhooks:\n  - url: https://x/\n    format: teams\n",
    )
    .unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.starts_with(&path.display().to_string()), "{err}");
    assert!(
        err.contains("webhooks[0].format: unknown variant `teams`") && err.contains("line 4"),
        "{err}"
    );
}

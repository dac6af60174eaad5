//! `--store postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?PARAM=VALUE&...]`, read as libpq reads
//! it. tokio-postgres parses the URL; the TLS parameters it does not know (`sslmode`'s
//! `verify-ca` and `verify-full`, `sslrootcert`) are taken out first and kept here, because
//! the TLS connector, not the protocol client, carries them out.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode as WireSslMode};

use super::PgError;

/// How long connecting may take when the URL sets no `connect_timeout`: the TCP connection,
/// TLS, authentication and the session settings together.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// libpq's `sslmode`, and what each one checks (libpq's table, with one difference: the
/// roots default to the system's CA certificates, libpq 16's `sslrootcert=system`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, unverified (libpq's `allow` is read as this too: it
    /// tries plain first, we try TLS first, which is never less private).
    Prefer,
    /// TLS or nothing; the certificate is not checked unless `sslrootcert` is given.
    Require,
    /// TLS, the certificate chain checked against the roots, the host name not.
    VerifyCa,
    /// TLS, the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    /// Every value `sslmode=` takes, for error messages.
    const VALUES: &'static str = "disable, allow, prefer, require, verify-ca, verify-full";

    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// What the protocol client is told: whether to ask for TLS and whether it must get it.
    fn wire(self) -> WireSslMode {
        match self {
            SslMode::Disable => WireSslMode::Disable,
            SslMode::Prefer => WireSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireSslMode::Require,
        }
    }
}

/// A parsed `--store` URL.
#[derive(Debug, Clone)]
pub struct StoreUrl {
    /// What tokio-postgres connects with (TLS parameters already applied).
    pub config: tokio_postgres::Config,
    /// What TLS must be used and checked (the connector carries it out).
    pub ssl_mode: SslMode,
    /// `sslrootcert=FILE`: the PEM roots the server's certificate must chain to.
    pub root_cert: Option<PathBuf>,
    /// The bound on connecting (`connect_timeout`, else [`DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// `HOST:PORT/DB`, for messages: never the password.
    pub target: String,
}

/// Libpq parameters that name client-certificate files, which this client does not send.
const CLIENT_CERT_PARAMS: [&str; 4] = ["sslcert", "sslkey", "sslpassword", "sslcrl"];

impl StoreUrl {
    /// Parses a `postgres://` (or `postgresql://`) URL; the error names what is wrong with
    /// it, showing the URL without its password.
    pub fn parse(url: &str) -> Result<StoreUrl, PgError> {
        let bad = |why: String| PgError::BadUrl {
            url: redact(url),
            why,
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad(
                "not a PostgreSQL URL: expected postgres://USER@HOST:PORT/DB (with ?sslmode=... as libpq takes it)".into(),
            ));
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut ssl_mode = None;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).map_err(|e| bad(format!("{key}: {e}")))?;
            match key {
                "sslmode" => {
                    ssl_mode = Some(SslMode::parse(&value).ok_or_else(|| {
                        bad(format!(
                            "sslmode `{value}` is not one of {}",
                            SslMode::VALUES
                        ))
                    })?)
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(value)),
                k if CLIENT_CERT_PARAMS.contains(&k) => {
                    return Err(bad(format!(
                        "{k}: client certificates are not supported; authenticate with a password (postgres://USER:PASSWORD@...)"
                    )))
                }
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| bad(source_text(&e).unwrap_or_else(|| e.to_string())))?;
        if config.get_hosts().is_empty() {
            return Err(bad("names no host (postgres://USER@HOST:PORT/DB)".into()));
        }
        let Some(user) = config.get_user().map(str::to_string) else {
            return Err(bad("names no user (postgres://USER@HOST:PORT/DB)".into()));
        };
        let ssl_mode = ssl_mode.unwrap_or(SslMode::Prefer);
        config.ssl_mode(ssl_mode.wire());
        let connect_timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        config.connect_timeout(connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("ramp-ca");
        }
        let target = target(&config, &user);
        Ok(StoreUrl {
            config,
            ssl_mode,
            root_cert,
            connect_timeout,
            target,
        })
    }

    /// The user the URL connects as.
    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or_default()
    }
}

/// `HOST:PORT/DB` (hosts joined with commas); the database defaults to the user, as in libpq.
fn target(config: &tokio_postgres::Config, user: &str) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect();
    let db = config.get_dbname().unwrap_or(user);
    format!("{}/{db}", hosts.join(","))
}

/// The URL as it may be shown: the password, if any, replaced by `***` (whatever the
/// scheme, since a mistyped scheme may still carry one).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The authority ends at the first `/` or `?`; its user information at its last `@`.
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{hosts}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    // `password=` in the query is a password too.
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<&str> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some(("password", _)) => "password=***",
                    _ => p,
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// `%XX` escapes decoded, as libpq decodes URL parameters.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad %-escape in `{s}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` is not UTF-8 once decoded"))
}

/// The innermost cause's text, which for tokio-postgres's errors is the part that says what
/// is wrong (its own text is only the kind, "invalid connection string").
pub(super) fn source_text(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = e.source()?;
    while let Some(next) = cause.source() {
        cause = next;
    }
    Some(cause.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `url` and returns (target, ssl mode, root cert, connect timeout secs), or the
    /// error's text.
    fn check(url: &str, expected: Result<(&str, SslMode, Option<&str>, u64), &str>) {
        let got = StoreUrl::parse(url)
            .map(|u| {
                (
                    u.target.clone(),
                    u.ssl_mode,
                    u.root_cert.as_ref().map(|p| p.display().to_string()),
                    u.connect_timeout.as_secs(),
                )
            })
            .map_err(|e| e.to_string());
        let expected = expected
            .map(|(t, m, r, s)| (t.to_string(), m, r.map(str::to_string), s))
            .map_err(str::to_string);
        match (&got, &expected) {
            (Err(g), Err(e)) => assert!(g.contains(e.as_str()), "{url}: `{g}` lacks `{e}`"),
            _ => assert_eq!(got, expected, "{url}"),
        }
    }

    #[test]
    fn libpq_urls_parse_with_their_tls_parameters() {
        use SslMode::*;
        check(
            "postgres://ramp@127.0.0.1:5433/ramp",
            Ok(("127.0.0.1:5433/ramp", Prefer, None, 5)),
        );
        check(
            "postgresql://ramp:s3cret@db.example:6000/ledger?sslmode=require&connect_timeout=2",
            Ok(("db.example:6000/ledger", Require, None, 2)),
        );
        check(
            "postgres://ramp@db.example/ramp?sslmode=verify-full&sslrootcert=/etc/ramp/pg-ca.pem",
            Ok((
                "db.example:5432/ramp",
                VerifyFull,
                Some("/etc/ramp/pg-ca.pem"),
                5,
            )),
        );
        check(
            "postgres://ramp@db.example/ramp?sslmode=verify-ca&sslrootcert=%2Fa%20b.pem",
            Ok(("db.example:5432/ramp", VerifyCa, Some("/a b.pem"), 5)),
        );
        check(
            "postgres://ramp@h1:5432,h2:5433?sslmode=disable&application_name=x",
            Ok(("h1:5432,h2:5433/ramp", Disable, None, 5)),
        );
        check(
            "postgres://ramp@%2Fvar%2Frun%2Fpostgresql/ramp",
            Ok(("/var/run/postgresql:5432/ramp", Prefer, None, 5)),
        );
        check(
            "postgres://ramp@[::1]:5433/ramp?sslmode=allow",
            Ok(("[::1]:5433/ramp", Prefer, None, 5)),
        );
    }

    #[test]
    fn urls_that_cannot_work_are_refused_saying_why() {
        check(
            "mysql://ramp@127.0.0.1/ramp",
            Err("`mysql://ramp@127.0.0.1/ramp`: not a PostgreSQL URL"),
        );
        check("data", Err("`data`: not a PostgreSQL URL"));
        check(
            "postgres://ramp@h/ramp?sslmode=on",
            Err("sslmode `on` is not one of disable, allow, prefer, require, verify-ca, verify-full"),
        );
        check("postgres://ramp@h/ramp?colour=blue", Err("colour"));
        check("postgres:///ramp", Err("names no host"));
        check("postgres://h/ramp", Err("names no user"));
        check(
            "postgres://ramp@h/ramp?sslcert=/c.pem",
            Err("client certificates are not supported"),
        );
        check("postgres://ramp@h:port/ramp", Err("port"));
    }

    #[test]
    fn passwords_never_show() {
        for (url, shown) in [
            (
                "postgres://ramp:s3cret@h:5432/db?sslmode=require",
                "postgres://ramp:***@h:5432/db?sslmode=require",
            ),
            ("mysql://u:p@ss@h/db", "mysql://u:***@h/db"),
            (
                "postgres://ramp@h/db?password=s3cret&sslmode=disable",
                "postgres://ramp@h/db?password=***&sslmode=disable",
            ),
            ("postgres://ramp@h/db", "postgres://ramp@h/db"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
        let e = StoreUrl::parse("postgres://ramp:s3cret@h/db?sslmode=bad").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}

//! The store's address as ops write it, `postgres://USER[:PASSWORD]@HOST:PORT/DB?sslmode=…`:
//! parsed without I/O (so the config's pure validation step can refuse a bad
//! one with its file:line:column), shown with the password masked, and given
//! its password at connect time (from the DSN, a password file, or
//! `PGPASSWORD`, in that order).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// How the connection is encrypted and what is checked, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it; the certificate is checked only against
    /// an `sslrootcert` when one is given (libpq's rule).
    Prefer,
    /// TLS or no connection; the certificate is checked only against an
    /// `sslrootcert` when one is given (libpq's rule).
    Require,
    /// TLS, the certificate chain checked (against `sslrootcert`, else the
    /// webpki roots), not the host name.
    VerifyCa,
    /// TLS, the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!("sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"))
            }
        })
    }
}

/// A parsed store address. Never printed with its password: `Display` and
/// `Debug` mask it.
#[derive(Clone)]
pub struct Dsn {
    /// What tokio-postgres connects with (sslmode mapped; no password yet
    /// unless the DSN had one).
    pub(crate) config: tokio_postgres::Config,
    pub ssl: SslMode,
    /// `sslrootcert`: the CA (PEM) the server's certificate must chain to.
    pub root_cert: Option<PathBuf>,
    /// The DSN as written, masked.
    masked: String,
}

impl Dsn {
    /// Parses `text` without touching the network or the disk.
    pub fn parse(text: &str) -> Result<Dsn, String> {
        let masked = mask(text);
        let rest = text
            .strip_prefix("postgres://")
            .or_else(|| text.strip_prefix("postgresql://"))
            .ok_or_else(|| format!("the store {masked:?} must be a URL like postgres://USER@HOST:5432/DB"))?;
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let authority = before_query.split('/').next().unwrap_or_default();
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if host.is_empty() {
            return Err(format!("the store {masked:?} names no host (postgres://USER@HOST:5432/DB)"));
        }
        let mut ssl = SslMode::Prefer;
        let mut root_cert = None;
        let mut passed = Vec::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => ssl = SslMode::parse(value).map_err(|e| format!("the store {masked:?}: {e}"))?,
                "sslrootcert" if !value.is_empty() => root_cert = Some(PathBuf::from(percent_decode(value))),
                _ => passed.push(pair),
            }
        }
        let mut url = format!("postgresql://{before_query}");
        if !passed.is_empty() {
            url.push('?');
            url.push_str(&passed.join("&"));
        }
        let mut config = tokio_postgres::Config::from_str(&url).map_err(|e| format!("the store {masked:?}: {e}"))?;
        config.ssl_mode(match ssl {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("strangler");
        }
        Ok(Dsn { config, ssl, root_cert, masked })
    }

    /// Whether the DSN itself carries a password.
    pub fn has_password(&self) -> bool {
        self.config.get_password().is_some()
    }

    /// The config to connect with: the DSN's password, else the password
    /// file's first line (read now, so a rotated Secret is picked up at the
    /// next connect), else `PGPASSWORD`.
    pub(crate) fn connect_config(
        &self,
        password_file: Option<&std::path::Path>,
    ) -> Result<tokio_postgres::Config, String> {
        let mut config = self.config.clone();
        if config.get_password().is_none() {
            if let Some(path) = password_file {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the store's password_file {}: {e}", path.display()))?;
                config.password(text.lines().next().unwrap_or_default());
            } else if let Ok(password) = std::env::var("PGPASSWORD") {
                config.password(password);
            }
        }
        Ok(config)
    }
}

impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked)
    }
}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dsn({})", self.masked)
    }
}

/// `text` with any password replaced by `***`: the one in the URL's user
/// part and a `password=` parameter. For logs, errors and `/config`.
pub fn mask(text: &str) -> String {
    let Some(scheme_end) = text.find("://").map(|i| i + 3) else { return text.to_string() };
    let (head, rest) = text.split_at(scheme_end);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{head}{authority}{tail}")
}

/// `%2F` and friends in a query value (a path in `sslrootcert`).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_dsn_parses_with_prefer_and_a_connect_timeout() {
        let dsn = Dsn::parse("postgres://strangler@db.example:5433/shadow").unwrap();
        assert_eq!(dsn.ssl, SslMode::Prefer);
        assert_eq!(dsn.config.get_user(), Some("strangler"));
        assert_eq!(dsn.config.get_dbname(), Some("shadow"));
        assert_eq!(dsn.config.get_ports(), [5433]);
        assert_eq!(dsn.config.get_connect_timeout(), Some(&Duration::from_secs(5)));
        assert!(!dsn.has_password());
    }

    #[test]
    fn every_libpq_sslmode_is_understood_and_others_are_refused() {
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let dsn = Dsn::parse(&format!("postgres://u@h/db?sslmode={text}&sslrootcert=%2Fetc%2Fca.pem")).unwrap();
            assert_eq!((dsn.ssl, dsn.root_cert.as_deref()), (mode, Some(std::path::Path::new("/etc/ca.pem"))));
        }
        let err = Dsn::parse("postgres://u:secret@h/db?sslmode=maybe").unwrap_err();
        assert!(err.contains("sslmode \"maybe\"") && !err.contains("secret"), "{err}");
    }

    #[test]
    fn a_bad_dsn_is_refused_without_showing_its_password() {
        for text in ["mysql://u:secret@h/db", "postgres://u:secret@/db", "postgres://u:secret@h/db?bogus=1"] {
            let err = Dsn::parse(text).unwrap_err();
            assert!(!err.contains("secret") && err.contains("***"), "{text}: {err}");
        }
    }

    #[test]
    fn passwords_are_masked_wherever_they_are_written() {
        assert_eq!(mask("postgres://u:p%40ss@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(
            mask("postgres://u@h/db?password=x&sslmode=require"),
            "postgres://u@h/db?password=***&sslmode=require"
        );
        assert_eq!(mask("postgres://u@h/db"), "postgres://u@h/db");
        let dsn = Dsn::parse("postgres://u:hunter2@h/db").unwrap();
        assert!(dsn.has_password());
        assert!(!format!("{dsn} {dsn:?}").contains("hunter2"));
    }

    #[test]
    fn the_password_comes_from_the_dsn_then_the_file_then_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "from-file\n").unwrap();
        let with = Dsn::parse("postgres://u:from-dsn@h/db").unwrap();
        assert_eq!(with.connect_config(Some(&file)).unwrap().get_password(), Some(&b"from-dsn"[..]));
        let without = Dsn::parse("postgres://u@h/db").unwrap();
        assert_eq!(without.connect_config(Some(&file)).unwrap().get_password(), Some(&b"from-file"[..]));
        let missing = without.connect_config(Some(&dir.path().join("nope"))).unwrap_err();
        assert!(missing.contains("password_file"), "{missing}");
    }
}

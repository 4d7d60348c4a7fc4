//! Where a home's ledger lives, and the shared ledger on PostgreSQL: its settings
//! (`ledger.toml` in the home, 0600), its password (never in argv nor in the URL), TLS, and
//! connecting.
//!
//! A home without `ledger.toml` keeps its ledger in `ledger.sqlite` (the default). With one,
//! the ledger is the PostgreSQL database its `url` names, which several stations' homes may
//! share. The password comes from `password_file` (a 0600 file) if the settings name one,
//! else from `PROVISIONER_LEDGER_PASSWORD`, else from `PGPASSWORD`; a URL holding a password
//! is refused. The connection is TLS, with the server verified against `ca_file`, whenever
//! `ca_file` is set (rustls on ring through `tls-client`, the one TLS stack of the workspace);
//! without it, only a server on this machine (loopback address, `localhost` or a unix socket)
//! is reached in plain text, unless `allow_plaintext` says otherwise.
//!
//! Every read from the server has a deadline: connecting (10 s), the ledger's write lock
//! ([`crate::ledger::BUSY_TIMEOUT`], PostgreSQL's `lock_timeout`), any statement (2 min,
//! `statement_timeout`), and an unanswered TCP send (30 s, `tcp_user_timeout`); a station
//! that stops in the middle of a transaction loses it after 2 min
//! (`idle_in_transaction_session_timeout`), and the server rolls it back.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::authority::Layout;
use crate::error::{Error, Result};
use crate::ledger::{BUSY_TIMEOUT, Ledger};

/// The settings file in a home whose ledger is on PostgreSQL.
pub const CONFIG_FILE: &str = "ledger.toml";
/// Environment variable holding the ledger's password (after `password_file`).
pub const PASSWORD_ENV: &str = "PROVISIONER_LEDGER_PASSWORD";
/// libpq's variable, read last.
pub const PGPASSWORD_ENV: &str = "PGPASSWORD";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(120);
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_CONFIG: u64 = 64 * 1024;
const MAX_PASSWORD: u64 = 4096;

/// A ledger on PostgreSQL, as `ledger.toml` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgLedger {
    /// `postgres://USER@HOST[:PORT]/DB[?...]`, without password.
    pub url: String,
    /// A 0600 file holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) that signed the server's certificate: the connection is TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Reach a server on another machine without TLS (a network you trust).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_plaintext: bool,
}

fn refused(reason: impl Into<String>) -> Error {
    Error::BadRequest(reason.into())
}

/// True if the URL carries a password (in its user part or as a parameter); checked before
/// anything parses it, so no message can echo it.
fn holds_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let user_part = authority.rsplit_once('@').map_or("", |(u, _)| u);
    let query = url.split_once('?').map_or("", |(_, q)| q);
    user_part.contains(':')
        || query
            .split('&')
            .any(|kv| kv.trim().to_ascii_lowercase().starts_with("password="))
}

/// True if `host` is this machine.
fn is_local(host: &postgres::config::Host) -> bool {
    match host {
        postgres::config::Host::Unix(_) => true,
        postgres::config::Host::Tcp(h) => {
            h.eq_ignore_ascii_case("localhost")
                || h.trim_matches(['[', ']'])
                    .parse::<IpAddr>()
                    .is_ok_and(|a| a.is_loopback())
        }
    }
}

fn host_text(host: &postgres::config::Host) -> String {
    match host {
        postgres::config::Host::Unix(p) => p.display().to_string(),
        postgres::config::Host::Tcp(h) => h.clone(),
    }
}

impl PgLedger {
    /// The settings for `url`, checked (see [`PgLedger::config`]).
    pub fn new(
        url: &str,
        password_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
        allow_plaintext: bool,
    ) -> Result<PgLedger> {
        let l = PgLedger {
            url: url.to_string(),
            password_file,
            ca_file,
            allow_plaintext,
        };
        l.config()?;
        Ok(l)
    }

    /// The URL, for messages (it holds no password).
    pub fn name(&self) -> &str {
        &self.url
    }

    /// The client configuration: the URL checked (no password, a user and a database, a
    /// plaintext connection only to this machine unless allowed), TLS required when a CA
    /// file is given, and the deadlines of the module doc.
    pub fn config(&self) -> Result<postgres::Config> {
        let url = self.url.trim();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(refused(
                "the ledger must be a URL postgres://USER@HOST[:PORT]/DATABASE",
            ));
        }
        if holds_password(url) {
            return Err(refused(format!(
                "the ledger URL holds a password: remove it from the URL (it would be stored and \
                 seen in the process list) and give it in a 0600 file (--ledger-password-file) \
                 or in {PASSWORD_ENV}"
            )));
        }
        let mut cfg = postgres::Config::from_str(url)
            .map_err(|e| refused(format!("the ledger URL {url} is not valid: {e}")))?;
        if cfg.get_password().is_some() {
            return Err(refused("the ledger URL holds a password: remove it"));
        }
        if cfg.get_user().is_none() || cfg.get_dbname().is_none() {
            return Err(refused(format!(
                "the ledger URL {url} must name a user and a database: postgres://USER@HOST[:PORT]/DATABASE"
            )));
        }
        if cfg.get_hosts().is_empty() {
            return Err(refused(format!(
                "the ledger URL {url} names no host: postgres://USER@HOST[:PORT]/DATABASE"
            )));
        }
        self.choose_transport(&mut cfg)?;
        let ms = |d: Duration| d.as_millis();
        cfg.connect_timeout(CONNECT_TIMEOUT)
            .tcp_user_timeout(TCP_USER_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(TCP_USER_TIMEOUT)
            .application_name("provisioner")
            .options(&format!(
                "-c lock_timeout={} -c statement_timeout={} -c idle_in_transaction_session_timeout={}",
                ms(BUSY_TIMEOUT),
                ms(STATEMENT_TIMEOUT),
                ms(STATEMENT_TIMEOUT)
            ));
        Ok(cfg)
    }

    /// TLS when a CA file is given; otherwise plain text, to this machine only (or allowed).
    fn choose_transport(&self, cfg: &mut postgres::Config) -> Result<()> {
        use postgres::config::SslMode;
        if self.ca_file.is_some() {
            cfg.ssl_mode(SslMode::Require);
            return Ok(());
        }
        if cfg.get_ssl_mode() == SslMode::Require {
            return Err(refused(
                "sslmode=require needs the CA that signed the server's certificate: give \
                 --ledger-ca-file FILE (the server is then verified, not only encrypted to)",
            ));
        }
        let remote: Vec<String> = cfg
            .get_hosts()
            .iter()
            .filter(|h| !is_local(h))
            .map(host_text)
            .chain(
                cfg.get_hostaddrs()
                    .iter()
                    .filter(|a| !a.is_loopback())
                    .map(ToString::to_string),
            )
            .collect();
        if !remote.is_empty() && !self.allow_plaintext {
            return Err(refused(format!(
                "refusing a plaintext connection to {}, which is not this machine: give \
                 --ledger-ca-file FILE (TLS, the server verified against that CA), or \
                 --ledger-allow-plaintext on a network you trust",
                remote.join(", ")
            )));
        }
        cfg.ssl_mode(SslMode::Disable);
        Ok(())
    }

    /// The password: the file's first line, else the environment; None for a server that
    /// asks none (peer or trust authentication).
    fn password(&self) -> Result<Option<zeroize::Zeroizing<String>>> {
        if let Some(path) = &self.password_file {
            crate::fsutil::check_private(path)?;
            let bytes = zeroize::Zeroizing::new(crate::fsutil::read_bounded(path, MAX_PASSWORD)?);
            let text = std::str::from_utf8(&bytes).map_err(|_| Error::BadFile {
                path: path.clone(),
                reason: "the ledger password file is not UTF-8".into(),
            })?;
            let line = text.lines().next().unwrap_or("");
            return Ok(Some(zeroize::Zeroizing::new(line.to_string())));
        }
        for var in [PASSWORD_ENV, PGPASSWORD_ENV] {
            if let Ok(p) = std::env::var(var) {
                return Ok(Some(zeroize::Zeroizing::new(p)));
            }
        }
        Ok(None)
    }

    /// Connects and opens the ledger (creating its schema on first use).
    pub fn open(&self) -> Result<Ledger> {
        let mut cfg = self.config()?;
        if let Some(p) = self.password()? {
            cfg.password(p.as_bytes());
        }
        let e = |source: postgres::Error| Error::Ledger {
            path: PathBuf::from(&self.url),
            source: source.into(),
        };
        let client = match &self.ca_file {
            Some(ca) => {
                let tls = tls_client::server_verified_config(
                    &tls_client::Trust::CaFile(ca.clone()),
                    None,
                )
                .map_err(|e| Error::BadFile {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone());
                cfg.connect(tls).map_err(e)?
            }
            None => cfg.connect(postgres::NoTls).map_err(e)?,
        };
        Ledger::on_postgres(client, &self.url)
    }

    /// Reads the settings of a home (`Ok(None)` without `ledger.toml`).
    pub fn load(path: &Path) -> Result<Option<PgLedger>> {
        if std::fs::symlink_metadata(path).is_err() {
            return Ok(None);
        }
        let text = safe_fs::read_limited_string(path, MAX_CONFIG).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let l: PgLedger = toml::from_str(&text).map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            reason: format!("not a ledger setting: {e}"),
        })?;
        Ok(Some(l))
    }

    /// Records the settings in a home: created 0600 if absent; the same settings again change
    /// nothing; other settings are refused.
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(existing) = PgLedger::load(path)? {
            if &existing == self {
                return Ok(());
            }
            return Err(Error::Conflict(format!(
                "{} already names another ledger ({}): a home keeps the ledger it was created with",
                path.display(),
                existing.url
            )));
        }
        let text = toml::to_string(self).map_err(|e| Error::Generate(e.to_string()))?;
        let text = format!(
            "# The ledger of this home: a PostgreSQL database (see the README, \"Several bench stations\").\n{text}"
        );
        crate::fsutil::write_new(path, text.as_bytes(), 0o600)?;
        Ok(())
    }
}

/// Where a home keeps its ledger.
#[derive(Debug, Clone)]
pub enum Location {
    /// `ledger.sqlite` in the home.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`ledger.toml` in the home).
    Postgres(PgLedger),
}

impl Location {
    /// The ledger of the home at `layout`: PostgreSQL if `ledger.toml` says so, else the
    /// SQLite file (which need not exist yet).
    pub fn of_home(layout: &Layout) -> Result<Location> {
        Ok(match PgLedger::load(&layout.ledger_config())? {
            Some(pg) => Location::Postgres(pg),
            None => Location::Sqlite(layout.ledger()),
        })
    }

    /// True if the home has a ledger: its SQLite file, or settings naming a PostgreSQL one.
    pub fn configured(layout: &Layout) -> bool {
        layout.ledger().exists() || std::fs::symlink_metadata(layout.ledger_config()).is_ok()
    }

    /// Opens (or connects to) the ledger.
    pub fn open(&self) -> Result<Ledger> {
        match self {
            Location::Sqlite(path) => Ledger::open(path),
            Location::Postgres(pg) => pg.open(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str) -> std::result::Result<(), String> {
        PgLedger::new(url, None, None, false)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_echoing_it() {
        for url in [
            "postgres://ca:s3cr3t-pw@127.0.0.1/ledger",
            "postgresql://ca:s3cr3t-pw@db.lan:5432/ledger?sslmode=require",
            "postgres://ca@127.0.0.1/ledger?password=s3cr3t-pw",
            "postgres://ca@127.0.0.1/ledger?sslmode=disable&Password=s3cr3t-pw",
        ] {
            let e = check(url).expect_err(url);
            assert!(e.contains("holds a password"), "{url}: {e}");
            assert!(!e.contains("s3cr3t-pw"), "{url}: {e}");
        }
    }

    #[test]
    fn plaintext_goes_to_this_machine_only_unless_allowed_and_tls_needs_a_ca() {
        for ok in [
            "postgres://ca@127.0.0.1:5432/ledger",
            "postgres://ca@localhost/ledger",
            "postgres://ca@[::1]:5432/ledger",
            "postgres://ca@%2Ftmp%2Fpg/ledger",
        ] {
            check(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let e = check("postgres://ca@db.example.lan/ledger").expect_err("remote");
        assert!(
            e.contains("refusing a plaintext connection to db.example.lan"),
            "{e}"
        );
        assert!(e.contains("--ledger-ca-file"), "{e}");
        PgLedger::new("postgres://ca@db.example.lan/ledger", None, None, true)
            .expect("allowed explicitly");
        let tls = PgLedger::new(
            "postgres://ca@db.example.lan/ledger",
            None,
            Some("/etc/ssl/ledger-ca.pem".into()),
            false,
        )
        .expect("TLS with a CA");
        assert_eq!(
            tls.config().expect("config").get_ssl_mode(),
            postgres::config::SslMode::Require
        );
        let e = check("postgres://ca@127.0.0.1/ledger?sslmode=require").expect_err("no CA");
        assert!(e.contains("--ledger-ca-file"), "{e}");
        for bad in [
            "ledger.sqlite",
            "host=127.0.0.1 user=ca dbname=l",
            "postgres://127.0.0.1/ledger",
            "postgres://ca@127.0.0.1",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_are_stored_0600_once_and_other_settings_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join(CONFIG_FILE);
        let a = PgLedger::new(
            "postgres://ca@127.0.0.1/ledger",
            Some("/root/pw".into()),
            None,
            false,
        )
        .expect("a");
        a.save(&path).expect("save");
        a.save(&path).expect("same again");
        assert_eq!(
            std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(PgLedger::load(&path).expect("load"), Some(a));
        let b = PgLedger::new("postgres://ca@127.0.0.1/other", None, None, false).expect("b");
        assert!(matches!(b.save(&path), Err(Error::Conflict(_))));
    }
}

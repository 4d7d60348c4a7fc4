//! The ledger: a SQLite database (WAL, synchronous=FULL) of every certificate issued, every
//! identity and its ACL, every revocation and every CRL. It is the source of truth: files
//! under the home are materialised from it and can be rewritten from it at any time.
//!
//! Several commands may run at once on one home. Every write transaction starts with
//! `BEGIN IMMEDIATE`: it takes the write lock before reading, so a read-then-write
//! transaction never has to upgrade a stale snapshot (SQLite answers such an upgrade with
//! SQLITE_BUSY at once, whatever the busy timeout). A command waits up to [`BUSY_TIMEOUT`] for
//! the lock, and a transaction that still meets SQLITE_BUSY or SQLITE_LOCKED is rolled back
//! and run again from its start.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{
    Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior, params,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const SCHEMA_VERSION: i64 = 1;

/// How long a command waits for another one that holds the ledger's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS certificates (
    serial       TEXT PRIMARY KEY,          -- lower-case hex, as openssl prints it
    request_id   TEXT NOT NULL UNIQUE,      -- SHA-256 of what was asked: re-running is idempotent
    identity     TEXT NOT NULL,
    profile      TEXT NOT NULL,
    not_before   INTEGER NOT NULL,
    not_after    INTEGER NOT NULL,
    der          BLOB NOT NULL,
    issued_at    INTEGER NOT NULL,
    revoked_at   INTEGER,
    reason       TEXT
);
CREATE INDEX IF NOT EXISTS certificates_identity ON certificates(identity);
CREATE TABLE IF NOT EXISTS identities (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,              -- device, client, server, gateway, receiver
    profile     TEXT NOT NULL,              -- site profile or certificate profile name
    acl_write   TEXT NOT NULL,              -- JSON list of topic filters
    acl_read    TEXT NOT NULL,
    attrs       TEXT NOT NULL,              -- JSON object (room, chip serial, ...)
    status      TEXT NOT NULL,              -- active, revoked
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (
    name        TEXT PRIMARY KEY,           -- e.g. writekey:<device>, linkkey:<gateway>
    sealed      BLOB NOT NULL,              -- AES-256-GCM under the vault key
    created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS crls (
    number       INTEGER PRIMARY KEY,
    this_update  INTEGER NOT NULL,
    next_update  INTEGER NOT NULL,
    revoked      INTEGER NOT NULL,
    der          BLOB NOT NULL
);
-- A certificate replaced by a newer one for the same identity: renewed (same request, past its
-- renewal point) or replaced (another request for the identity). It stays valid until it
-- expires (superseded is not revoked) but is no longer the identity's active certificate, and
-- its request_id gets the suffix `/superseded/<serial>` so the request names its successor.
CREATE TABLE IF NOT EXISTS supersessions (
    serial      TEXT PRIMARY KEY,
    by_serial   TEXT NOT NULL,
    at          INTEGER NOT NULL,
    why         TEXT NOT NULL              -- renewed, replaced
);
";

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertRecord {
    /// Serial, lower-case hex.
    pub serial: String,
    /// Idempotence key.
    pub request_id: String,
    /// Identity (CN).
    pub identity: String,
    /// Certificate profile name.
    pub profile: String,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// DER bytes.
    #[serde(skip)]
    pub der: Vec<u8>,
    /// When issued, Unix seconds.
    pub issued_at: i64,
    /// When revoked, Unix seconds.
    pub revoked_at: Option<i64>,
    /// Revocation reason.
    pub reason: Option<String>,
}

/// An identity known to the site: who may connect and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    /// Identity = certificate CN = MQTT username.
    pub id: String,
    /// device, client, server, gateway or receiver.
    pub kind: String,
    /// Profile name.
    pub profile: String,
    /// Topic filters it may publish to.
    pub acl_write: Vec<String>,
    /// Topic filters it may subscribe to.
    pub acl_read: Vec<String>,
    /// Free attributes (room, chip serial, ...).
    pub attrs: serde_json::Map<String, serde_json::Value>,
    /// active or revoked.
    pub status: String,
}

/// Why a certificate stopped being its identity's active one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Supersession {
    /// The superseded certificate.
    pub serial: String,
    /// Its successor.
    pub by_serial: String,
    /// When, Unix seconds.
    pub at: i64,
    /// `renewed` (the same request, past its renewal point) or `replaced` (a new request for
    /// the same identity).
    pub why: String,
}

fn supersession_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Supersession> {
    Ok(Supersession {
        serial: r.get(0)?,
        by_serial: r.get(1)?,
        at: r.get(2)?,
        why: r.get(3)?,
    })
}

/// Leaf certificates of `identity` neither revoked nor superseded, newest first.
fn live_of(conn: &Connection, identity: &str) -> rusqlite::Result<Vec<CertRecord>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {CERT_COLS} FROM certificates WHERE identity = ?1 AND revoked_at IS NULL
         AND profile NOT IN ('root-ca', 'issuing-ca')
         AND serial NOT IN (SELECT serial FROM supersessions)
         ORDER BY issued_at DESC, rowid DESC"
    ))?;
    let rows = st.query_map([identity], cert_from_row)?;
    rows.collect()
}

/// A stored CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlRecord {
    /// CRL number.
    pub number: i64,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds.
    pub next_update: i64,
    /// Number of entries.
    pub revoked: i64,
    /// DER bytes.
    pub der: Vec<u8>,
}

/// The open ledger.
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
}

fn cert_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CertRecord> {
    Ok(CertRecord {
        serial: r.get(0)?,
        request_id: r.get(1)?,
        identity: r.get(2)?,
        profile: r.get(3)?,
        not_before: r.get(4)?,
        not_after: r.get(5)?,
        der: r.get(6)?,
        issued_at: r.get(7)?,
        revoked_at: r.get(8)?,
        reason: r.get(9)?,
    })
}

const CERT_COLS: &str = "serial, request_id, identity, profile, not_before, not_after, der, issued_at, revoked_at, reason";

impl Ledger {
    /// Opens (creating, 0600) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Ledger> {
        let fresh = !path.exists();
        if fresh {
            // Create it 0600 before SQLite does (SQLite would honour the umask); never over a
            // ledger another command has just created and opened.
            crate::fsutil::write_new(path, b"", 0o600)?;
        } else {
            crate::fsutil::check_private(path)?;
        }
        let e = |source| Error::Ledger {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(e)?;
        // First, so that every later statement (even the pragmas) waits for a lock held by
        // another command instead of failing.
        conn.busy_timeout(BUSY_TIMEOUT).map_err(e)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(e)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(e)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(e)?;
        conn.execute_batch(SCHEMA).map_err(e)?;
        let ledger = Ledger {
            conn,
            path: path.to_path_buf(),
        };
        match ledger.meta("schema_version")? {
            None => ledger.set_meta("schema_version", &SCHEMA_VERSION.to_string())?,
            Some(v) if v == SCHEMA_VERSION.to_string() => {}
            Some(v) => {
                return Err(Error::Conflict(format!(
                    "ledger {} has schema version {v}; this provisioner understands {SCHEMA_VERSION}",
                    path.display()
                )));
            }
        }
        Ok(ledger)
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> Error + '_ {
        move |source| Error::Ledger {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads a meta value.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(self.err())
    }

    /// Writes a meta value.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute("INSERT INTO meta(key, value) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2", [key, value])
            .map_err(self.err())?;
        Ok(())
    }

    /// True if a certificate with this serial exists.
    pub fn serial_exists(&self, serial: &str) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT 1 FROM certificates WHERE serial = ?1",
                [serial],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(self.err())
    }

    /// The certificate issued for a request, if any.
    pub fn by_request(&self, request_id: &str) -> Result<Option<CertRecord>> {
        self.conn
            .query_row(
                &format!("SELECT {CERT_COLS} FROM certificates WHERE request_id = ?1"),
                [request_id],
                cert_from_row,
            )
            .optional()
            .map_err(self.err())
    }

    /// A certificate by serial.
    pub fn by_serial(&self, serial: &str) -> Result<Option<CertRecord>> {
        self.conn
            .query_row(
                &format!("SELECT {CERT_COLS} FROM certificates WHERE serial = ?1"),
                [serial],
                cert_from_row,
            )
            .optional()
            .map_err(self.err())
    }

    /// Every certificate, oldest first.
    pub fn certificates(&self) -> Result<Vec<CertRecord>> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {CERT_COLS} FROM certificates ORDER BY issued_at, serial"
            ))
            .map_err(self.err())?;
        let rows = st.query_map([], cert_from_row).map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }

    /// Certificates of one identity, oldest first.
    pub fn certificates_of(&self, identity: &str) -> Result<Vec<CertRecord>> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {CERT_COLS} FROM certificates WHERE identity = ?1 ORDER BY issued_at, serial"))
            .map_err(self.err())?;
        let rows = st
            .query_map([identity], cert_from_row)
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }

    /// The active certificate of `identity`: the newest that is neither revoked nor
    /// superseded (a leaf; CA certificates are not an identity's).
    pub fn active_of(&self, identity: &str) -> Result<Option<CertRecord>> {
        Ok(live_of(&self.conn, identity)
            .map_err(self.err())?
            .into_iter()
            .next())
    }

    /// Whether (and by what) a certificate was superseded.
    pub fn supersession(&self, serial: &str) -> Result<Option<Supersession>> {
        self.conn
            .query_row(
                "SELECT serial, by_serial, at, why FROM supersessions WHERE serial = ?1",
                [serial],
                supersession_from_row,
            )
            .optional()
            .map_err(self.err())
    }

    /// Every supersession, oldest first.
    pub fn supersessions(&self) -> Result<Vec<Supersession>> {
        let mut st = self
            .conn
            .prepare("SELECT serial, by_serial, at, why FROM supersessions ORDER BY at, serial")
            .map_err(self.err())?;
        let rows = st
            .query_map([], supersession_from_row)
            .map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }

    /// Every identity, by id.
    pub fn identities(&self) -> Result<Vec<IdentityRecord>> {
        let mut st = self
            .conn
            .prepare("SELECT id, kind, profile, acl_write, acl_read, attrs, status FROM identities ORDER BY id")
            .map_err(self.err())?;
        let rows = st.query_map([], identity_from_row).map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }

    /// One identity.
    pub fn identity(&self, id: &str) -> Result<Option<IdentityRecord>> {
        self.conn
            .query_row(
                "SELECT id, kind, profile, acl_write, acl_read, attrs, status FROM identities WHERE id = ?1",
                [id],
                identity_from_row,
            )
            .optional()
            .map_err(self.err())
    }

    /// A sealed secret.
    pub fn sealed_secret(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.conn
            .query_row("SELECT sealed FROM secrets WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.err())
    }

    /// The newest CRL.
    pub fn latest_crl(&self) -> Result<Option<CrlRecord>> {
        self.conn
            .query_row(
                "SELECT number, this_update, next_update, revoked, der FROM crls ORDER BY number DESC LIMIT 1",
                [],
                |r| Ok(CrlRecord { number: r.get(0)?, this_update: r.get(1)?, next_update: r.get(2)?, revoked: r.get(3)?, der: r.get(4)? }),
            )
            .optional()
            .map_err(self.err())
    }

    /// Runs `f` in one write transaction: all of it is committed, or none.
    ///
    /// The transaction holds the ledger's write lock from its start (`BEGIN IMMEDIATE`), so
    /// what `f` reads stays true until the commit. If SQLite reports the database busy or
    /// locked, the transaction is rolled back and `f` runs again from the start (so `f` must
    /// do nothing outside the ledger that cannot be repeated), for up to [`BUSY_TIMEOUT`].
    pub fn transaction<T>(&self, mut f: impl FnMut(&Tx<'_>) -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let mut attempt = 0u32;
        loop {
            match self.try_transaction(&mut f) {
                Err(e) if is_busy(&e) => {
                    if start.elapsed() >= BUSY_TIMEOUT {
                        return Err(Error::Busy {
                            path: self.path.clone(),
                            seconds: start.elapsed().as_secs(),
                        });
                    }
                    attempt = attempt.saturating_add(1);
                    tracing::debug!(attempt, "ledger busy: running the transaction again");
                    std::thread::sleep(backoff(attempt));
                }
                other => return other,
            }
        }
    }

    fn try_transaction<T>(&self, f: &mut impl FnMut(&Tx<'_>) -> Result<T>) -> Result<T> {
        let path = self.path.clone();
        let e = |source| Error::Ledger {
            path: path.clone(),
            source,
        };
        // `&self` is enough: a `Ledger` is used by one thread, and a nested call fails cleanly
        // (SQLite refuses a BEGIN inside a transaction).
        let tx =
            Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate).map_err(e)?;
        let out = f(&Tx {
            tx: &tx,
            path: &path,
        })?;
        tx.commit().map_err(e)?;
        Ok(out)
    }
}

/// True if `e` is SQLite saying another connection holds a lock.
fn is_busy(e: &Error) -> bool {
    matches!(
        e,
        Error::Ledger {
            source: rusqlite::Error::SqliteFailure(f, _),
            ..
        } if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// A short random pause before running a busy transaction again (grows with `attempt`, at
/// most 100 ms): random, so two commands that collided do not collide again in step.
fn backoff(attempt: u32) -> Duration {
    let cap = 1u64 << attempt.min(7);
    let mut r = [0u8; 1];
    let jitter = getrandom::fill(&mut r).map_or(0, |()| u64::from(r[0]));
    Duration::from_millis(1 + (jitter * cap.min(100)) / 256)
}

fn identity_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<IdentityRecord> {
    let json = |i: usize| -> rusqlite::Result<String> { r.get(i) };
    let list = |s: String| serde_json::from_str::<Vec<String>>(&s).unwrap_or_default();
    Ok(IdentityRecord {
        id: r.get(0)?,
        kind: r.get(1)?,
        profile: r.get(2)?,
        acl_write: list(json(3)?),
        acl_read: list(json(4)?),
        attrs: serde_json::from_str(&json(5)?).unwrap_or_default(),
        status: r.get(6)?,
    })
}

/// Writes inside a ledger transaction.
pub struct Tx<'a> {
    tx: &'a Transaction<'a>,
    path: &'a Path,
}

impl Tx<'_> {
    fn err(&self) -> impl Fn(rusqlite::Error) -> Error + '_ {
        move |source| Error::Ledger {
            path: self.path.to_path_buf(),
            source,
        }
    }

    /// The certificate issued for a request, if any (seeing this transaction's own writes).
    pub fn by_request(&self, request_id: &str) -> Result<Option<CertRecord>> {
        self.tx
            .query_row(
                &format!("SELECT {CERT_COLS} FROM certificates WHERE request_id = ?1"),
                [request_id],
                cert_from_row,
            )
            .optional()
            .map_err(self.err())
    }

    /// Reads a meta value inside the transaction.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.tx
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(self.err())
    }

    /// The newest CRL, as of this transaction.
    pub fn latest_crl(&self) -> Result<Option<CrlRecord>> {
        self.tx
            .query_row(
                "SELECT number, this_update, next_update, revoked, der FROM crls ORDER BY number DESC LIMIT 1",
                [],
                |r| Ok(CrlRecord { number: r.get(0)?, this_update: r.get(1)?, next_update: r.get(2)?, revoked: r.get(3)?, der: r.get(4)? }),
            )
            .optional()
            .map_err(self.err())
    }

    /// Records an issued certificate.
    pub fn insert_cert(&self, c: &CertRecord) -> Result<()> {
        self.tx
            .prepare_cached(&format!("INSERT INTO certificates({CERT_COLS}) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"))
            .and_then(|mut st| {
                st.execute(params![
                    c.serial,
                    c.request_id,
                    c.identity,
                    c.profile,
                    c.not_before,
                    c.not_after,
                    c.der,
                    c.issued_at,
                    c.revoked_at,
                    c.reason
                ])
            })
            .map_err(self.err())?;
        Ok(())
    }

    /// Leaf certificates of `identity` neither revoked nor superseded, newest first.
    pub fn live_of(&self, identity: &str) -> Result<Vec<CertRecord>> {
        live_of(self.tx, identity).map_err(self.err())
    }

    /// Records that `old` is superseded by `by_serial` (`why`: renewed or replaced) and moves
    /// it off its request id, which is then free for its successor.
    pub fn supersede(&self, old: &CertRecord, by_serial: &str, why: &str, now: i64) -> Result<()> {
        self.tx
            .execute(
                "INSERT INTO supersessions(serial, by_serial, at, why) VALUES(?1, ?2, ?3, ?4)",
                params![old.serial, by_serial, now, why],
            )
            .map_err(self.err())?;
        self.tx
            .execute(
                "UPDATE certificates SET request_id = request_id || '/superseded/' || serial WHERE serial = ?1",
                [&old.serial],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Creates or updates an identity.
    pub fn upsert_identity(&self, i: &IdentityRecord, now: i64) -> Result<()> {
        let w = serde_json::to_string(&i.acl_write).unwrap_or_else(|_| "[]".into());
        let r = serde_json::to_string(&i.acl_read).unwrap_or_else(|_| "[]".into());
        let a = serde_json::to_string(&i.attrs).unwrap_or_else(|_| "{}".into());
        self.tx
            .prepare_cached(
                "INSERT INTO identities(id, kind, profile, acl_write, acl_read, attrs, status, created_at, updated_at)
                 VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
                 ON CONFLICT(id) DO UPDATE SET kind = ?2, profile = ?3, acl_write = ?4, acl_read = ?5, attrs = ?6,
                                               status = ?7, updated_at = ?8",
            )
            .and_then(|mut st| st.execute(params![i.id, i.kind, i.profile, w, r, a, i.status, now]))
            .map_err(self.err())?;
        Ok(())
    }

    /// Marks every unrevoked certificate of `identity` revoked and the identity revoked.
    /// Returns the serials revoked.
    pub fn revoke_identity(&self, identity: &str, reason: &str, now: i64) -> Result<Vec<String>> {
        let mut st = self
            .tx
            .prepare("SELECT serial FROM certificates WHERE identity = ?1 AND revoked_at IS NULL")
            .map_err(self.err())?;
        let serials = st
            .query_map([identity], |r| r.get::<_, String>(0))
            .map_err(self.err())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())?;
        self.tx
            .execute(
                "UPDATE certificates SET revoked_at = ?2, reason = ?3 WHERE identity = ?1 AND revoked_at IS NULL",
                params![identity, now, reason],
            )
            .map_err(self.err())?;
        self.tx
            .execute(
                "UPDATE identities SET status = 'revoked', updated_at = ?2 WHERE id = ?1",
                params![identity, now],
            )
            .map_err(self.err())?;
        Ok(serials)
    }

    /// Revokes one certificate by serial.
    pub fn revoke_serial(&self, serial: &str, reason: &str, now: i64) -> Result<bool> {
        let n = self
            .tx
            .execute(
                "UPDATE certificates SET revoked_at = ?2, reason = ?3 WHERE serial = ?1 AND revoked_at IS NULL",
                params![serial, now, reason],
            )
            .map_err(self.err())?;
        Ok(n == 1)
    }

    /// Revoked certificates that have not expired yet (what a CRL must list).
    pub fn revoked_unexpired(&self, now: i64) -> Result<Vec<CertRecord>> {
        let mut st = self
            .tx
            .prepare(&format!(
                "SELECT {CERT_COLS} FROM certificates WHERE revoked_at IS NOT NULL AND not_after > ?1 ORDER BY revoked_at"
            ))
            .map_err(self.err())?;
        let rows = st.query_map([now], cert_from_row).map_err(self.err())?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err())
    }

    /// The next CRL number (strictly increasing).
    pub fn next_crl_number(&self) -> Result<i64> {
        self.tx
            .query_row("SELECT COALESCE(MAX(number), 0) + 1 FROM crls", [], |r| {
                r.get(0)
            })
            .map_err(self.err())
    }

    /// Stores a CRL.
    pub fn insert_crl(&self, c: &CrlRecord) -> Result<()> {
        self.tx
            .execute(
                "INSERT INTO crls(number, this_update, next_update, revoked, der) VALUES(?1, ?2, ?3, ?4, ?5)",
                params![c.number, c.this_update, c.next_update, c.revoked, c.der],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Stores a sealed secret (replacing one of the same name).
    pub fn put_secret(&self, name: &str, sealed: &[u8], now: i64) -> Result<()> {
        self.tx
            .execute(
                "INSERT INTO secrets(name, sealed, created_at) VALUES(?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET sealed = ?2",
                params![name, sealed, now],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Sets a meta value inside the transaction.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.tx
            .execute("INSERT INTO meta(key, value) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2", [key, value])
            .map_err(self.err())?;
        Ok(())
    }

    /// True if a certificate with this serial exists.
    pub fn serial_exists(&self, serial: &str) -> Result<bool> {
        self.tx
            .query_row(
                "SELECT 1 FROM certificates WHERE serial = ?1",
                [serial],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(self.err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(serial: &str) -> CertRecord {
        CertRecord {
            serial: serial.into(),
            request_id: format!("req:{serial}"),
            identity: "probe".into(),
            profile: "client".into(),
            not_before: 0,
            not_after: 1,
            der: vec![1, 2, 3],
            issued_at: 0,
            revoked_at: None,
            reason: None,
        }
    }

    #[test]
    fn two_threads_each_opening_the_ledger_and_writing_at_once_both_succeed() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("ledger.sqlite");
        drop(Ledger::open(&path).expect("create"));
        const EACH: i64 = 40;
        let numbers: Vec<Vec<i64>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..2)
                .map(|w| {
                    let path = &path;
                    s.spawn(move || {
                        let ledger = Ledger::open(path).expect("open beside another writer");
                        let mut mine = Vec::new();
                        for i in 0..EACH {
                            // Read, then write, in one transaction: what a deferred
                            // transaction cannot do while another connection commits.
                            let n = ledger
                                .transaction(|tx| {
                                    let n = tx.next_crl_number()?;
                                    tx.insert_crl(&CrlRecord {
                                        number: n,
                                        this_update: n,
                                        next_update: n + 1,
                                        revoked: 0,
                                        der: vec![w],
                                    })?;
                                    let serial = format!("{w:02x}{i:04x}");
                                    if !tx.serial_exists(&serial)? {
                                        tx.insert_cert(&cert(&serial))?;
                                    }
                                    Ok(n)
                                })
                                .expect("concurrent transaction");
                            mine.push(n);
                            // And an autocommit write between them.
                            ledger
                                .set_meta(&format!("worker{w}"), &i.to_string())
                                .expect("concurrent autocommit write");
                        }
                        mine
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|h| h.join().expect("worker"))
                .collect()
        });
        let mut all: Vec<i64> = numbers.iter().flatten().copied().collect();
        for mine in &numbers {
            assert!(mine.windows(2).all(|p| p[0] < p[1]), "{mine:?}");
        }
        all.sort_unstable();
        assert_eq!(all, (1..=2 * EACH).collect::<Vec<_>>());
        let ledger = Ledger::open(&path).expect("open");
        assert_eq!(
            ledger.certificates().expect("certs").len(),
            2 * EACH as usize
        );
        assert_eq!(
            ledger.latest_crl().expect("crl").map(|c| c.number),
            Some(2 * EACH)
        );
        assert_eq!(ledger.meta("worker0").expect("meta").as_deref(), Some("39"));
        assert_eq!(ledger.meta("worker1").expect("meta").as_deref(), Some("39"));
    }

    #[test]
    fn a_transaction_that_fails_commits_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let ledger = Ledger::open(&dir.path().join("ledger.sqlite")).expect("open");
        let r: Result<()> = ledger.transaction(|tx| {
            tx.insert_cert(&cert("01"))?;
            Err(Error::Conflict("stop".into()))
        });
        assert!(matches!(r, Err(Error::Conflict(_))));
        assert!(!ledger.serial_exists("01").expect("query"));
    }
}

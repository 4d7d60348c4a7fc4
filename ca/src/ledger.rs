//! The ledger: a database of every certificate issued, every identity and its ACL, every
//! revocation and every CRL. It is the source of truth: files under the home are materialised
//! from it and can be rewritten from it at any time.
//!
//! Two engines hold it (see [`crate::db`]), chosen per home ([`crate::pgledger::Location`]):
//! a SQLite file in the home (WAL, synchronous=FULL), the default; or a PostgreSQL database
//! shared by several bench stations. Every query is written once, for both.
//!
//! Several commands (and, on PostgreSQL, several stations) may run at once on one ledger.
//! Every write transaction first takes the ledger's write lock (`BEGIN IMMEDIATE` on SQLite,
//! an advisory transaction lock on PostgreSQL), so a read-then-write transaction never works
//! from a stale snapshot: serials stay unique, identical requests end in one certificate and
//! CRL numbers strictly increase, whichever station asks. A command waits up to
//! [`BUSY_TIMEOUT`] for the lock, and a transaction that still meets a busy database (SQLite
//! BUSY/LOCKED; PostgreSQL lock timeout, serialisation failure, deadlock) is rolled back and run
//! again from its start. Each operation commits once; a process killed before its commit leaves
//! nothing (SQLite's journal, or the server rolling back the dropped connection).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::db::{Conn, DbError, PgConn, Row, Val};
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

/// The schema in PostgreSQL's types: 64-bit integers, BYTEA, and the insertion order
/// (SQLite's implicit `rowid`) as an identity column of the same name.
fn pg_schema() -> String {
    SCHEMA
        .replace("INTEGER", "BIGINT")
        .replace("BLOB", "BYTEA")
        .replace(
            "CREATE TABLE IF NOT EXISTS certificates (",
            "CREATE TABLE IF NOT EXISTS certificates (\n    rowid        BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,",
        )
}

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

fn supersession_from_row(r: &Row<'_, '_>) -> Result<Supersession, DbError> {
    Ok(Supersession {
        serial: r.get(0)?,
        by_serial: r.get(1)?,
        at: r.get(2)?,
        why: r.get(3)?,
    })
}

fn cert_from_row(r: &Row<'_, '_>) -> Result<CertRecord, DbError> {
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

fn crl_from_row(r: &Row<'_, '_>) -> Result<CrlRecord, DbError> {
    Ok(CrlRecord {
        number: r.get(0)?,
        this_update: r.get(1)?,
        next_update: r.get(2)?,
        revoked: r.get(3)?,
        der: r.get(4)?,
    })
}

fn identity_from_row(r: &Row<'_, '_>) -> Result<IdentityRecord, DbError> {
    let list = |s: String| serde_json::from_str::<Vec<String>>(&s).unwrap_or_default();
    Ok(IdentityRecord {
        id: r.get(0)?,
        kind: r.get(1)?,
        profile: r.get(2)?,
        acl_write: list(r.get(3)?),
        acl_read: list(r.get(4)?),
        attrs: serde_json::from_str(&r.get::<String>(5)?).unwrap_or_default(),
        status: r.get(6)?,
    })
}

/// The columns of `certificates`, in [`cert_from_row`]'s order.
macro_rules! cert_cols {
    () => {
        "serial, request_id, identity, profile, not_before, not_after, der, issued_at, revoked_at, reason"
    };
}

/// The open ledger.
pub struct Ledger {
    conn: Conn,
    /// The SQLite file, or the PostgreSQL URL (without password), for messages.
    path: PathBuf,
}

impl Ledger {
    /// Opens (creating, 0600) the SQLite ledger at `path`.
    pub fn open(path: &Path) -> Result<Ledger> {
        let fresh = !path.exists();
        if fresh {
            // Create it 0600 before SQLite does (SQLite would honour the umask); never over a
            // ledger another command has just created and opened.
            crate::fsutil::write_new(path, b"", 0o600)?;
        } else {
            crate::fsutil::check_private(path)?;
        }
        let e = |source: rusqlite::Error| Error::Ledger {
            path: path.to_path_buf(),
            source: source.into(),
        };
        let conn = Connection::open(path).map_err(e)?;
        // First, so that every later statement (even the pragmas) waits for a lock held by
        // another command instead of failing.
        conn.busy_timeout(BUSY_TIMEOUT).map_err(e)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(e)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(e)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(e)?;
        conn.execute_batch(SCHEMA).map_err(e)?;
        Ledger {
            conn: Conn::Sqlite(conn),
            path: path.to_path_buf(),
        }
        .checked_version()
    }

    /// Opens the ledger on a connected PostgreSQL client; `name` (the URL without password)
    /// names it in messages. The schema is created on first use, under the write lock (two
    /// stations starting at once do not race to create it).
    pub fn on_postgres(client: postgres::Client, name: &str) -> Result<Ledger> {
        let ledger = Ledger {
            conn: Conn::Postgres(Box::new(RefCell::new(PgConn::new(client)))),
            path: PathBuf::from(name),
        };
        let schema = pg_schema();
        ledger.transaction(|tx| tx.conn.batch(&schema).map_err(tx.err()))?;
        ledger.checked_version()
    }

    /// Records the schema version in a new ledger; refuses one of another version.
    fn checked_version(self) -> Result<Ledger> {
        match self.meta("schema_version")? {
            None => self.set_meta("schema_version", &SCHEMA_VERSION.to_string())?,
            Some(v) if v == SCHEMA_VERSION.to_string() => {}
            Some(v) => {
                return Err(Error::Conflict(format!(
                    "ledger {} has schema version {v}; this provisioner understands {SCHEMA_VERSION}",
                    self.path.display()
                )));
            }
        }
        Ok(self)
    }

    /// Where the ledger is: its SQLite file, or its PostgreSQL URL (without password).
    pub fn name(&self) -> &Path {
        &self.path
    }

    /// True if the ledger is on PostgreSQL.
    pub fn is_shared(&self) -> bool {
        matches!(self.conn, Conn::Postgres(_))
    }

    /// The queries, outside a transaction (each statement commits on its own).
    fn q(&self) -> Tx<'_> {
        Tx {
            conn: &self.conn,
            path: &self.path,
        }
    }

    /// Reads a meta value.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.q().meta(key)
    }

    /// Writes a meta value.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.q().set_meta(key, value)
    }

    /// True if a certificate with this serial exists.
    pub fn serial_exists(&self, serial: &str) -> Result<bool> {
        self.q().serial_exists(serial)
    }

    /// The certificate issued for a request, if any.
    pub fn by_request(&self, request_id: &str) -> Result<Option<CertRecord>> {
        self.q().by_request(request_id)
    }

    /// A certificate by serial.
    pub fn by_serial(&self, serial: &str) -> Result<Option<CertRecord>> {
        let q = self.q();
        q.conn
            .query_opt(
                concat!(
                    "SELECT ",
                    cert_cols!(),
                    " FROM certificates WHERE serial = ?1"
                ),
                &[Val::Text(serial)],
                cert_from_row,
            )
            .map_err(q.err())
    }

    /// Every certificate, oldest first.
    pub fn certificates(&self) -> Result<Vec<CertRecord>> {
        let q = self.q();
        q.conn
            .query(
                concat!(
                    "SELECT ",
                    cert_cols!(),
                    " FROM certificates ORDER BY issued_at, serial"
                ),
                &[],
                cert_from_row,
            )
            .map_err(q.err())
    }

    /// Certificates of one identity, oldest first.
    pub fn certificates_of(&self, identity: &str) -> Result<Vec<CertRecord>> {
        let q = self.q();
        q.conn
            .query(
                concat!(
                    "SELECT ",
                    cert_cols!(),
                    " FROM certificates WHERE identity = ?1 ORDER BY issued_at, serial"
                ),
                &[Val::Text(identity)],
                cert_from_row,
            )
            .map_err(q.err())
    }

    /// The active certificate of `identity`: the newest that is neither revoked nor
    /// superseded (a leaf; CA certificates are not an identity's).
    pub fn active_of(&self, identity: &str) -> Result<Option<CertRecord>> {
        Ok(self.q().live_of(identity)?.into_iter().next())
    }

    /// Whether (and by what) a certificate was superseded.
    pub fn supersession(&self, serial: &str) -> Result<Option<Supersession>> {
        let q = self.q();
        q.conn
            .query_opt(
                "SELECT serial, by_serial, at, why FROM supersessions WHERE serial = ?1",
                &[Val::Text(serial)],
                supersession_from_row,
            )
            .map_err(q.err())
    }

    /// Every supersession, oldest first.
    pub fn supersessions(&self) -> Result<Vec<Supersession>> {
        let q = self.q();
        q.conn
            .query(
                "SELECT serial, by_serial, at, why FROM supersessions ORDER BY at, serial",
                &[],
                supersession_from_row,
            )
            .map_err(q.err())
    }

    /// Every identity, by id.
    pub fn identities(&self) -> Result<Vec<IdentityRecord>> {
        let q = self.q();
        q.conn
            .query(
                "SELECT id, kind, profile, acl_write, acl_read, attrs, status FROM identities ORDER BY id",
                &[],
                identity_from_row,
            )
            .map_err(q.err())
    }

    /// One identity.
    pub fn identity(&self, id: &str) -> Result<Option<IdentityRecord>> {
        let q = self.q();
        q.conn
            .query_opt(
                "SELECT id, kind, profile, acl_write, acl_read, attrs, status FROM identities WHERE id = ?1",
                &[Val::Text(id)],
                identity_from_row,
            )
            .map_err(q.err())
    }

    /// A sealed secret.
    pub fn sealed_secret(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let q = self.q();
        q.conn
            .query_opt(
                "SELECT sealed FROM secrets WHERE name = ?1",
                &[Val::Text(name)],
                |r| r.get(0),
            )
            .map_err(q.err())
    }

    /// The newest CRL.
    pub fn latest_crl(&self) -> Result<Option<CrlRecord>> {
        self.q().latest_crl()
    }

    /// Runs `f` in one write transaction: all of it is committed, or none.
    ///
    /// The transaction holds the ledger's write lock from its start, so what `f` reads stays
    /// true until the commit. If the database reports itself busy, the transaction is rolled
    /// back and `f` runs again from the start (so `f` must do nothing outside the ledger that
    /// cannot be repeated), for up to [`BUSY_TIMEOUT`].
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
        let tx = self.q();
        // `&self` is enough: a `Ledger` is used by one thread, and a nested call fails cleanly
        // (both engines refuse a BEGIN inside a transaction).
        tx.conn.begin_write().map_err(|e| {
            tx.conn.rollback();
            tx.err()(e)
        })?;
        let out = match f(&tx) {
            Ok(out) => out,
            Err(e) => {
                tx.conn.rollback();
                return Err(e);
            }
        };
        if let Err(e) = tx.conn.commit() {
            tx.conn.rollback();
            return Err(tx.err()(e));
        }
        Ok(out)
    }
}

/// True if `e` is the database saying another connection holds a lock.
fn is_busy(e: &Error) -> bool {
    matches!(e, Error::Ledger { source, .. } if source.is_busy())
}

/// A short random pause before running a busy transaction again (grows with `attempt`, at
/// most 100 ms): random, so two commands that collided do not collide again in step.
fn backoff(attempt: u32) -> Duration {
    let cap = 1u64 << attempt.min(7);
    let mut r = [0u8; 1];
    let jitter = getrandom::fill(&mut r).map_or(0, |()| u64::from(r[0]));
    Duration::from_millis(1 + (jitter * cap.min(100)) / 256)
}

/// Writes inside a ledger transaction (and, through [`Ledger`], the reads outside one).
pub struct Tx<'a> {
    conn: &'a Conn,
    path: &'a Path,
}

impl Tx<'_> {
    fn err(&self) -> impl Fn(DbError) -> Error + '_ {
        move |source| Error::Ledger {
            path: self.path.to_path_buf(),
            source,
        }
    }

    fn exec(&self, sql: &'static str, params: &[Val<'_>]) -> Result<u64> {
        self.conn.execute(sql, params).map_err(self.err())
    }

    /// The certificate issued for a request, if any (seeing this transaction's own writes).
    pub fn by_request(&self, request_id: &str) -> Result<Option<CertRecord>> {
        self.conn
            .query_opt(
                concat!(
                    "SELECT ",
                    cert_cols!(),
                    " FROM certificates WHERE request_id = ?1"
                ),
                &[Val::Text(request_id)],
                cert_from_row,
            )
            .map_err(self.err())
    }

    /// Reads a meta value inside the transaction.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_opt(
                "SELECT value FROM meta WHERE key = ?1",
                &[Val::Text(key)],
                |r| r.get(0),
            )
            .map_err(self.err())
    }

    /// The newest CRL, as of this transaction.
    pub fn latest_crl(&self) -> Result<Option<CrlRecord>> {
        self.conn
            .query_opt(
                "SELECT number, this_update, next_update, revoked, der FROM crls ORDER BY number DESC LIMIT 1",
                &[],
                crl_from_row,
            )
            .map_err(self.err())
    }

    /// Records an issued certificate.
    pub fn insert_cert(&self, c: &CertRecord) -> Result<()> {
        self.exec(
            concat!(
                "INSERT INTO certificates(",
                cert_cols!(),
                ") VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ),
            &[
                Val::Text(&c.serial),
                Val::Text(&c.request_id),
                Val::Text(&c.identity),
                Val::Text(&c.profile),
                Val::Int(c.not_before),
                Val::Int(c.not_after),
                Val::Bytes(&c.der),
                Val::Int(c.issued_at),
                Val::OptInt(c.revoked_at),
                Val::OptText(c.reason.as_deref()),
            ],
        )?;
        Ok(())
    }

    /// Leaf certificates of `identity` neither revoked nor superseded, newest first.
    pub fn live_of(&self, identity: &str) -> Result<Vec<CertRecord>> {
        self.conn
            .query(
                concat!(
                    "SELECT ",
                    cert_cols!(),
                    " FROM certificates WHERE identity = ?1 AND revoked_at IS NULL
                     AND profile NOT IN ('root-ca', 'issuing-ca')
                     AND serial NOT IN (SELECT serial FROM supersessions)
                     ORDER BY issued_at DESC, rowid DESC"
                ),
                &[Val::Text(identity)],
                cert_from_row,
            )
            .map_err(self.err())
    }

    /// Records that `old` is superseded by `by_serial` (`why`: renewed or replaced) and moves
    /// it off its request id, which is then free for its successor.
    pub fn supersede(&self, old: &CertRecord, by_serial: &str, why: &str, now: i64) -> Result<()> {
        self.exec(
            "INSERT INTO supersessions(serial, by_serial, at, why) VALUES(?1, ?2, ?3, ?4)",
            &[
                Val::Text(&old.serial),
                Val::Text(by_serial),
                Val::Int(now),
                Val::Text(why),
            ],
        )?;
        self.exec(
            "UPDATE certificates SET request_id = request_id || '/superseded/' || serial WHERE serial = ?1",
            &[Val::Text(&old.serial)],
        )?;
        Ok(())
    }

    /// Creates or updates an identity.
    pub fn upsert_identity(&self, i: &IdentityRecord, now: i64) -> Result<()> {
        let w = serde_json::to_string(&i.acl_write).unwrap_or_else(|_| "[]".into());
        let r = serde_json::to_string(&i.acl_read).unwrap_or_else(|_| "[]".into());
        let a = serde_json::to_string(&i.attrs).unwrap_or_else(|_| "{}".into());
        self.exec(
            "INSERT INTO identities(id, kind, profile, acl_write, acl_read, attrs, status, created_at, updated_at)
             VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
             ON CONFLICT(id) DO UPDATE SET kind = ?2, profile = ?3, acl_write = ?4, acl_read = ?5, attrs = ?6,
                                           status = ?7, updated_at = ?8",
            &[
                Val::Text(&i.id),
                Val::Text(&i.kind),
                Val::Text(&i.profile),
                Val::Text(&w),
                Val::Text(&r),
                Val::Text(&a),
                Val::Text(&i.status),
                Val::Int(now),
            ],
        )?;
        Ok(())
    }

    /// Marks every unrevoked certificate of `identity` revoked and the identity revoked.
    /// Returns the serials revoked.
    pub fn revoke_identity(&self, identity: &str, reason: &str, now: i64) -> Result<Vec<String>> {
        let serials = self
            .conn
            .query(
                "SELECT serial FROM certificates WHERE identity = ?1 AND revoked_at IS NULL",
                &[Val::Text(identity)],
                |r| r.get::<String>(0),
            )
            .map_err(self.err())?;
        self.exec(
            "UPDATE certificates SET revoked_at = ?2, reason = ?3 WHERE identity = ?1 AND revoked_at IS NULL",
            &[Val::Text(identity), Val::Int(now), Val::Text(reason)],
        )?;
        self.exec(
            "UPDATE identities SET status = 'revoked', updated_at = ?2 WHERE id = ?1",
            &[Val::Text(identity), Val::Int(now)],
        )?;
        Ok(serials)
    }

    /// Revokes one certificate by serial.
    pub fn revoke_serial(&self, serial: &str, reason: &str, now: i64) -> Result<bool> {
        let n = self.exec(
            "UPDATE certificates SET revoked_at = ?2, reason = ?3 WHERE serial = ?1 AND revoked_at IS NULL",
            &[Val::Text(serial), Val::Int(now), Val::Text(reason)],
        )?;
        Ok(n == 1)
    }

    /// Revoked certificates that have not expired yet (what a CRL must list).
    pub fn revoked_unexpired(&self, now: i64) -> Result<Vec<CertRecord>> {
        self.conn
            .query(
                concat!(
                    "SELECT ",
                    cert_cols!(),
                    " FROM certificates WHERE revoked_at IS NOT NULL AND not_after > ?1 ORDER BY revoked_at"
                ),
                &[Val::Int(now)],
                cert_from_row,
            )
            .map_err(self.err())
    }

    /// The CRL numbered `number`, if stored.
    pub fn crl_by_number(&self, number: i64) -> Result<Option<CrlRecord>> {
        self.conn
            .query_opt(
                "SELECT number, this_update, next_update, revoked, der FROM crls WHERE number = ?1",
                &[Val::Int(number)],
                crl_from_row,
            )
            .map_err(self.err())
    }

    /// The next CRL number (strictly increasing).
    pub fn next_crl_number(&self) -> Result<i64> {
        self.conn
            .query_opt("SELECT COALESCE(MAX(number), 0) + 1 FROM crls", &[], |r| {
                r.get(0)
            })
            .map_err(self.err())
            .map(|n| n.unwrap_or(1))
    }

    /// Stores a CRL.
    pub fn insert_crl(&self, c: &CrlRecord) -> Result<()> {
        self.exec(
            "INSERT INTO crls(number, this_update, next_update, revoked, der) VALUES(?1, ?2, ?3, ?4, ?5)",
            &[
                Val::Int(c.number),
                Val::Int(c.this_update),
                Val::Int(c.next_update),
                Val::Int(c.revoked),
                Val::Bytes(&c.der),
            ],
        )?;
        Ok(())
    }

    /// Stores a sealed secret (replacing one of the same name).
    pub fn put_secret(&self, name: &str, sealed: &[u8], now: i64) -> Result<()> {
        self.exec(
            "INSERT INTO secrets(name, sealed, created_at) VALUES(?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET sealed = ?2",
            &[Val::Text(name), Val::Bytes(sealed), Val::Int(now)],
        )?;
        Ok(())
    }

    /// Sets a meta value inside the transaction.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.exec(
            "INSERT INTO meta(key, value) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
            &[Val::Text(key), Val::Text(value)],
        )?;
        Ok(())
    }

    /// True if a certificate with this serial exists.
    pub fn serial_exists(&self, serial: &str) -> Result<bool> {
        self.conn
            .query_opt(
                "SELECT serial FROM certificates WHERE serial = ?1",
                &[Val::Text(serial)],
                |_| Ok(()),
            )
            .map(|o| o.is_some())
            .map_err(self.err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two engines, each on a fresh ledger: every test below runs against both.
    enum Backend {
        Sqlite(tempfile::TempDir),
        Postgres(test_postgres::PgServer),
    }

    impl Backend {
        fn all() -> [Backend; 2] {
            let pg = test_postgres::PgServer::start();
            pg.create_database("ledger");
            [
                Backend::Sqlite(tempfile::tempdir().expect("tmp")),
                Backend::Postgres(pg),
            ]
        }

        fn name(&self) -> &'static str {
            match self {
                Backend::Sqlite(_) => "sqlite",
                Backend::Postgres(_) => "postgres",
            }
        }

        /// A new connection to the ledger (each call is another command or station).
        fn open(&self) -> Ledger {
            match self {
                Backend::Sqlite(dir) => {
                    Ledger::open(&dir.path().join("ledger.sqlite")).expect("open sqlite")
                }
                Backend::Postgres(pg) => crate::pgledger::PgLedger::new(
                    &pg.url("ledger"),
                    Some(pg.password_file()),
                    None,
                    false,
                )
                .expect("settings")
                .open()
                .expect("open postgres"),
            }
        }
    }

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
        for backend in Backend::all() {
            two_writers_at_once(&backend);
        }
    }

    fn two_writers_at_once(backend: &Backend) {
        let name = backend.name();
        drop(backend.open());
        const EACH: i64 = 40;
        let numbers: Vec<Vec<i64>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..2)
                .map(|w| {
                    s.spawn(move || {
                        let ledger = backend.open();
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
            assert!(mine.windows(2).all(|p| p[0] < p[1]), "{name}: {mine:?}");
        }
        all.sort_unstable();
        assert_eq!(all, (1..=2 * EACH).collect::<Vec<_>>(), "{name}");
        let ledger = backend.open();
        assert_eq!(
            ledger.certificates().expect("certs").len(),
            2 * EACH as usize,
            "{name}"
        );
        assert_eq!(
            ledger.latest_crl().expect("crl").map(|c| c.number),
            Some(2 * EACH),
            "{name}"
        );
        assert_eq!(ledger.meta("worker0").expect("meta").as_deref(), Some("39"));
        assert_eq!(ledger.meta("worker1").expect("meta").as_deref(), Some("39"));
    }

    #[test]
    fn a_transaction_that_fails_commits_nothing() {
        for backend in Backend::all() {
            let ledger = backend.open();
            let r: Result<()> = ledger.transaction(|tx| {
                tx.insert_cert(&cert("01"))?;
                Err(Error::Conflict("stop".into()))
            });
            assert!(matches!(r, Err(Error::Conflict(_))), "{}", backend.name());
            assert!(
                !ledger.serial_exists("01").expect("query"),
                "{}",
                backend.name()
            );
            // The connection is usable afterwards, and a duplicate serial is refused by the
            // ledger itself, whichever engine holds it.
            ledger
                .transaction(|tx| tx.insert_cert(&cert("02")))
                .expect("next transaction");
            let mut twin = cert("02");
            twin.request_id = "req:other".into();
            let dup = ledger.transaction(|tx| tx.insert_cert(&twin));
            assert!(
                matches!(dup, Err(Error::Ledger { .. })),
                "{}: {dup:?}",
                backend.name()
            );
        }
    }

    #[test]
    fn every_query_reads_back_what_was_written_on_both_engines() {
        for backend in Backend::all() {
            let name = backend.name();
            let ledger = backend.open();
            let mut c = cert("0a");
            c.identity = "salon-1".into();
            c.reason = None;
            let ident = IdentityRecord {
                id: "salon-1".into(),
                kind: "device".into(),
                profile: "climat".into(),
                acl_write: vec!["maison/salon/#".into()],
                acl_read: vec![],
                attrs: serde_json::from_str(r#"{"room":"salon"}"#).expect("attrs"),
                status: "active".into(),
            };
            ledger
                .transaction(|tx| {
                    tx.insert_cert(&c)?;
                    tx.upsert_identity(&ident, 5)?;
                    tx.upsert_identity(&ident, 6)?;
                    tx.put_secret("writekey:salon-1", &[0, 255, 7], 5)?;
                    Ok(())
                })
                .expect("write");
            assert_eq!(
                ledger.by_serial("0a").expect("q"),
                Some(c.clone()),
                "{name}"
            );
            assert_eq!(
                ledger.by_request("req:0a").expect("q"),
                Some(c.clone()),
                "{name}"
            );
            assert_eq!(
                ledger.active_of("salon-1").expect("q"),
                Some(c.clone()),
                "{name}"
            );
            assert_eq!(
                ledger.identity("salon-1").expect("q"),
                Some(ident.clone()),
                "{name}"
            );
            assert_eq!(
                ledger.identities().expect("q"),
                vec![ident.clone()],
                "{name}"
            );
            assert_eq!(
                ledger.sealed_secret("writekey:salon-1").expect("q"),
                Some(vec![0, 255, 7]),
                "{name}"
            );
            // A successor supersedes it; revocation then touches the live one.
            let mut d = cert("0b");
            d.identity = "salon-1".into();
            d.issued_at = 1;
            ledger
                .transaction(|tx| {
                    for old in tx.live_of("salon-1")? {
                        tx.supersede(&old, "0b", "replaced", 7)?;
                    }
                    tx.insert_cert(&d)
                })
                .expect("supersede");
            assert_eq!(
                ledger.active_of("salon-1").expect("q"),
                Some(d.clone()),
                "{name}"
            );
            let s = ledger.supersession("0a").expect("q").expect("superseded");
            assert_eq!((s.by_serial.as_str(), s.why.as_str()), ("0b", "replaced"));
            assert_eq!(ledger.supersessions().expect("q").len(), 1, "{name}");
            assert_eq!(
                ledger.by_serial("0a").expect("q").map(|r| r.request_id),
                Some("req:0a/superseded/0a".into()),
                "{name}"
            );
            let revoked = ledger
                .transaction(|tx| tx.revoke_identity("salon-1", "key-compromise", 8))
                .expect("revoke");
            assert_eq!(revoked.len(), 2, "{name}");
            assert_eq!(ledger.active_of("salon-1").expect("q"), None, "{name}");
            let listed = ledger
                .transaction(|tx| tx.revoked_unexpired(0))
                .expect("revoked");
            assert_eq!(listed.len(), 2, "{name}");
            assert_eq!(listed[0].reason.as_deref(), Some("key-compromise"));
            assert_eq!(ledger.certificates_of("salon-1").expect("q").len(), 2);
            assert_eq!(
                ledger.identity("salon-1").expect("q").map(|i| i.status),
                Some("revoked".into())
            );
        }
    }

    #[test]
    fn stations_opening_a_fresh_postgres_ledger_at_once_create_its_schema_once() {
        let pg = test_postgres::PgServer::start();
        pg.create_database("fresh");
        let settings =
            crate::pgledger::PgLedger::new(&pg.url("fresh"), Some(pg.password_file()), None, false)
                .expect("settings");
        std::thread::scope(|s| {
            let opened: Vec<_> = (0..4).map(|_| s.spawn(|| settings.open())).collect();
            for h in opened {
                h.join()
                    .expect("thread")
                    .expect("open beside other stations");
            }
        });
        let ledger = settings.open().expect("open");
        assert!(ledger.is_shared());
        assert_eq!(
            ledger.meta("schema_version").expect("meta").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn a_wrong_password_or_no_server_is_a_clear_error_not_a_hang() {
        let pg = test_postgres::PgServer::start();
        pg.create_database("ledger");
        let dir = tempfile::tempdir().expect("tmp");
        let wrong = dir.path().join("wrong");
        std::fs::write(&wrong, "not the password\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let e = crate::pgledger::PgLedger::new(&pg.url("ledger"), Some(wrong.clone()), None, false)
            .expect("settings")
            .open()
            .err()
            .expect("refused");
        let text = e.to_string();
        assert!(text.contains("password authentication failed"), "{text}");
        assert!(!text.contains("not the password"), "{text}");
        // A password file others can read is refused before anything is sent.
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = crate::pgledger::PgLedger::new(&pg.url("ledger"), Some(wrong), None, false)
            .expect("settings")
            .open()
            .err()
            .expect("refused");
        assert!(matches!(e, Error::InsecurePermissions { .. }), "{e}");
        let port = pg.port();
        drop(pg);
        let e = crate::pgledger::PgLedger::new(
            &format!("postgres://provisioner@127.0.0.1:{port}/ledger"),
            None,
            None,
            false,
        )
        .expect("settings")
        .open()
        .err()
        .expect("no server");
        assert!(matches!(e, Error::Ledger { .. }), "{e}");
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A CA and a server certificate for 127.0.0.1 signed by it (openssl's CLI), in `dir`.
    fn server_pki(dir: &Path, ca: &str) {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut a = vec!["req", "-x509", "-days", "2", "-subj", "/CN=ledger test CA"];
        a.extend(ec);
        a.extend(["-keyout", "ca.key", "-out", ca]);
        a.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        a.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(dir, &a);
        let mut r = vec![
            "req",
            "-new",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
        ];
        r.extend(ec);
        r.extend(["-out", "server.csr"]);
        openssl(dir, &r);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )
        .expect("ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                ca,
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                "server.crt",
            ],
        );
    }

    #[test]
    fn a_tls_ledger_verifies_the_server_against_the_ca_file_and_refuses_another() {
        let dir = tempfile::tempdir().expect("tmp");
        server_pki(dir.path(), "ca.crt");
        let other = dir.path().join("other");
        std::fs::create_dir(&other).expect("dir");
        server_pki(&other, "ca.crt");
        let pg = test_postgres::PgServer::start_with(&test_postgres::Options {
            durable: false,
            tls: Some((dir.path().join("server.crt"), dir.path().join("server.key"))),
        });
        pg.create_database("ledger");
        let with_ca = |ca: PathBuf| {
            crate::pgledger::PgLedger::new(
                &pg.url("ledger"),
                Some(pg.password_file()),
                Some(ca),
                false,
            )
            .expect("settings")
            .open()
        };
        let ledger = with_ca(dir.path().join("ca.crt")).expect("TLS to the verified server");
        let ssl = ledger
            .conn
            .query_opt(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
                |r| r.get::<bool>(0),
            )
            .expect("pg_stat_ssl");
        assert_eq!(ssl, Some(true), "the session is not TLS");
        ledger.set_meta("over", "tls").expect("write over TLS");
        let e = with_ca(other.join("ca.crt"))
            .err()
            .expect("another CA is refused");
        let text = e.to_string();
        assert!(
            text.to_lowercase().contains("certificate") || text.contains("UnknownIssuer"),
            "{text}"
        );
    }
}

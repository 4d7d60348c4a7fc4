//! The ledger's two database engines behind one interface: SQLite (one file in the home) and
//! PostgreSQL (one database shared by several stations).
//!
//! Every query is written once, in SQL both accept, with `?N` placeholders (translated to
//! `$N` for PostgreSQL), typed parameters ([`Val`]) and typed columns ([`Row::get`]): TEXT,
//! 64-bit integers and bytes (INTEGER/BIGINT, BLOB/BYTEA).
//!
//! Write transactions are serialised on both engines, so what a transaction reads stays true
//! until it commits: SQLite's `BEGIN IMMEDIATE` takes the database's write lock first;
//! PostgreSQL's transaction takes one advisory transaction lock ([`WRITE_LOCK`]) first, which
//! every writing station waits for in turn (released by the commit, the rollback, or the
//! server when a killed station's connection drops). A lock not obtained in time, a
//! serialisation failure or a deadlock is reported as busy ([`DbError::is_busy`]): the ledger
//! rolls back and runs the transaction again.

use std::cell::RefCell;
use std::collections::HashMap;

/// The advisory lock every PostgreSQL write transaction takes first ("ledger" in ASCII).
pub const WRITE_LOCK: i64 = 0x6c65_6467_6572;

/// A database error of either engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// From SQLite.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// From PostgreSQL (the server's message, or the connection's failure).
    #[error("{}", pg_text(.0))]
    Postgres(#[from] postgres::Error),
    /// A value read back is not what the schema says.
    #[error("{0}")]
    Decode(String),
}

fn pg_text(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!(" ({d})"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

impl DbError {
    /// True if another connection held what this one needed: run the transaction again.
    pub fn is_busy(&self) -> bool {
        use postgres::error::SqlState;
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            DbError::Postgres(e) => e.code().is_some_and(|c| {
                [
                    SqlState::T_R_SERIALIZATION_FAILURE,
                    SqlState::T_R_DEADLOCK_DETECTED,
                    SqlState::LOCK_NOT_AVAILABLE,
                ]
                .contains(c)
            }),
            _ => false,
        }
    }
}

/// A query parameter.
#[derive(Debug, Clone, Copy)]
pub enum Val<'a> {
    /// A 64-bit integer.
    Int(i64),
    /// An integer or NULL.
    OptInt(Option<i64>),
    /// Text.
    Text(&'a str),
    /// Text or NULL.
    OptText(Option<&'a str>),
    /// Bytes.
    Bytes(&'a [u8]),
}

impl rusqlite::ToSql for Val<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Val::Int(v) => v.to_sql(),
            Val::OptInt(v) => v.to_sql(),
            Val::Text(v) => v.to_sql(),
            Val::OptText(v) => v.to_sql(),
            Val::Bytes(v) => v.to_sql(),
        }
    }
}

fn pg_params<'v>(vals: &'v [Val<'_>]) -> Vec<&'v (dyn postgres::types::ToSql + Sync)> {
    vals.iter()
        .map(|v| -> &(dyn postgres::types::ToSql + Sync) {
            match v {
                Val::Int(x) => x,
                Val::OptInt(x) => x,
                Val::Text(x) => x,
                Val::OptText(x) => x,
                Val::Bytes(x) => x,
            }
        })
        .collect()
}

/// A column type both engines decode.
pub trait Col: rusqlite::types::FromSql + for<'b> postgres::types::FromSql<'b> {}
impl<T> Col for T where T: rusqlite::types::FromSql + for<'b> postgres::types::FromSql<'b> {}

/// One result row of either engine.
pub enum Row<'a, 'r> {
    /// SQLite's.
    Sqlite(&'a rusqlite::Row<'r>),
    /// PostgreSQL's.
    Postgres(&'a postgres::Row),
}

impl Row<'_, '_> {
    /// Column `i` (from 0).
    pub fn get<T: Col>(&self, i: usize) -> Result<T, DbError> {
        match self {
            Row::Sqlite(r) => Ok(r.get(i)?),
            Row::Postgres(r) => Ok(r.try_get(i)?),
        }
    }
}

/// `?N` placeholders as PostgreSQL writes them (`$N`).
fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// A PostgreSQL connection with its prepared statements.
pub struct PgConn {
    client: postgres::Client,
    statements: HashMap<&'static str, postgres::Statement>,
}

impl PgConn {
    /// Wraps a connected client.
    pub fn new(client: postgres::Client) -> Self {
        PgConn {
            client,
            statements: HashMap::new(),
        }
    }

    fn statement(&mut self, sql: &'static str) -> Result<postgres::Statement, DbError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(&dollar_placeholders(sql))?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }
}

/// An open connection of either engine. A ledger is used by one thread at a time.
pub enum Conn {
    /// SQLite.
    Sqlite(rusqlite::Connection),
    /// PostgreSQL.
    Postgres(Box<RefCell<PgConn>>),
}

impl Conn {
    /// Runs a statement; returns the number of rows changed.
    pub fn execute(&self, sql: &'static str, params: &[Val<'_>]) -> Result<u64, DbError> {
        match self {
            Conn::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                Ok(st.execute(rusqlite::params_from_iter(params.iter()))? as u64)
            }
            Conn::Postgres(c) => {
                let mut c = c.borrow_mut();
                let st = c.statement(sql)?;
                Ok(c.client.execute(&st, &pg_params(params))?)
            }
        }
    }

    /// Runs a query and maps every row.
    pub fn query<T>(
        &self,
        sql: &'static str,
        params: &[Val<'_>],
        mut f: impl FnMut(&Row<'_, '_>) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        match self {
            Conn::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(f(&Row::Sqlite(r))?);
                }
                Ok(out)
            }
            Conn::Postgres(c) => {
                let mut c = c.borrow_mut();
                let st = c.statement(sql)?;
                let rows = c.client.query(&st, &pg_params(params))?;
                rows.iter().map(|r| f(&Row::Postgres(r))).collect()
            }
        }
    }

    /// The first row of a query, if any.
    pub fn query_opt<T>(
        &self,
        sql: &'static str,
        params: &[Val<'_>],
        f: impl FnMut(&Row<'_, '_>) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        Ok(self.query(sql, params, f)?.into_iter().next())
    }

    /// Runs several statements without parameters (schema, transaction control).
    pub fn batch(&self, sql: &str) -> Result<(), DbError> {
        match self {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Postgres(c) => Ok(c.borrow_mut().client.batch_execute(sql)?),
        }
    }

    /// Starts a write transaction holding the engine's write lock.
    pub fn begin_write(&self) -> Result<(), DbError> {
        match self {
            Conn::Sqlite(_) => self.batch("BEGIN IMMEDIATE"),
            Conn::Postgres(_) => {
                self.batch("BEGIN")?;
                self.query(
                    "SELECT pg_advisory_xact_lock(?1)",
                    &[Val::Int(WRITE_LOCK)],
                    |_| Ok(()),
                )?;
                Ok(())
            }
        }
    }

    /// Commits the transaction.
    pub fn commit(&self) -> Result<(), DbError> {
        self.batch("COMMIT")
    }

    /// Rolls the transaction back (best effort: a broken connection has rolled it back
    /// already, on the server).
    pub fn rollback(&self) {
        let _ = self.batch("ROLLBACK");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_translated_and_nothing_else() {
        assert_eq!(
            dollar_placeholders("SELECT a FROM t WHERE x = ?1 AND y = ?12 AND z = '?'"),
            "SELECT a FROM t WHERE x = $1 AND y = $12 AND z = '?'"
        );
    }
}

//! One error type for the PKI; each variant says what failed and what to do.

use std::path::PathBuf;

/// Everything the CA can refuse or fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A secret file can be read by other users.
    #[error(
        "{path} is readable by other users (mode {mode:04o}); a private key must be 0600.\n  fix: chmod 600 {path}"
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The passphrase does not decrypt the key.
    #[error("wrong passphrase for {path} (or the file is damaged)")]
    WrongPassphrase {
        /// The key file.
        path: PathBuf,
    },
    /// The passphrase is too weak to protect a CA key.
    #[error("passphrase too short: use at least {min} characters")]
    WeakPassphrase {
        /// Minimum length.
        min: usize,
    },
    /// A key or certificate file is not what it should be.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A CSR or public key given for issuance is not acceptable.
    #[error("refused: {0}")]
    BadRequest(String),
    /// The CA is missing or expired.
    #[error("{0}")]
    CaUnavailable(String),
    /// A state conflict (already exists, not found, already revoked...).
    #[error("{0}")]
    Conflict(String),
    /// A ledger (SQLite or PostgreSQL) error.
    #[error("ledger {path}: {source}")]
    Ledger {
        /// The ledger file, or the PostgreSQL URL (without password).
        path: PathBuf,
        /// The cause.
        source: crate::db::DbError,
    },
    /// Another command held the ledger's write lock for too long.
    #[error(
        "ledger {path} stayed locked by another provisioner command for {seconds} s; nothing was changed.\n  fix: wait for the other command to finish, then run this one again"
    )]
    Busy {
        /// The ledger file.
        path: PathBuf,
        /// How long this command waited.
        seconds: u64,
    },
    /// The PIN does not open the token.
    #[error(
        "wrong PIN for token `{token}`; nothing was changed (a few more wrong PINs lock the token)"
    )]
    WrongPin {
        /// The token's label.
        token: String,
    },
    /// The PKCS#11 module, the token or the key object is missing or unusable.
    #[error("{0}")]
    Token(String),
    /// Certificate or CRL generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Self {
        Error::Generate(e.to_string())
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

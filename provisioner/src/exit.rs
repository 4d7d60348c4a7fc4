//! The CLI's error: a message, an optional next step, and a documented exit code.

use std::fmt;

/// Exit codes (documented in `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 1: I/O, SQLite, generation failures.
    Failure = 1,
    /// 2: usage (clap reports its own usage errors with 2 too).
    Usage = 2,
    /// 3: invalid input; nothing changed.
    Input = 3,
    /// 4: credentials; nothing changed.
    Credentials = 4,
    /// 5: state; nothing changed.
    State = 5,
    /// 6: stopped before an irreversible step that was not permitted (`--lock`).
    NeedsPermission = 6,
    /// 10 (`audit`): a certificate or the CRL is inside its renewal window.
    Expiring = 10,
    /// 11 (`audit`): a certificate or the CRL has expired.
    Expired = 11,
    /// 12 (`renew`): something due could not be renewed (the report says which and why);
    /// what could be renewed was.
    Incomplete = 12,
}

/// A CLI error.
#[derive(Debug)]
pub struct CliError {
    message: String,
    help: Option<String>,
    code: Code,
}

impl CliError {
    /// A new error.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            help: None,
            code,
        }
    }

    /// Adds the next thing the operator should do.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// The hint, if any.
    pub fn help(&self) -> Option<&str> {
        self.help.as_deref()
    }

    /// The process exit code.
    pub fn code(&self) -> i32 {
        self.code as i32
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<ca::Error> for CliError {
    fn from(e: ca::Error) -> Self {
        use ca::Error as E;
        let code = match &e {
            E::WrongPassphrase { .. }
            | E::WrongPin { .. }
            | E::InsecurePermissions { .. }
            | E::WeakPassphrase { .. } => Code::Credentials,
            E::BadRequest(_) | E::BadFile { .. } => Code::Input,
            E::CaUnavailable(_) | E::Conflict(_) | E::Token(_) => Code::State,
            _ => Code::Failure,
        };
        let help = match &e {
            E::WrongPassphrase { .. } => Some(
                "check PROVISIONER_PASSPHRASE or the --passphrase-file; the passphrase is the one given to `provisioner init`",
            ),
            E::WrongPin { .. } => Some(
                "check PROVISIONER_PKCS11_PIN, PROVISIONER_PASSPHRASE or the --passphrase-file: in a home whose CA key is in a token they hold the token's user PIN",
            ),
            _ => None,
        };
        let err = CliError::new(code, e.to_string());
        match help {
            Some(h) => err.with_help(h),
            None => err,
        }
    }
}

impl From<manifests::Error> for CliError {
    fn from(e: manifests::Error) -> Self {
        CliError::new(Code::Input, e.to_string())
    }
}

/// Result with [`CliError`].
pub type Result<T> = std::result::Result<T, CliError>;

/// Wraps an I/O error with the file it concerns (an internal file: exit 1).
pub fn io(path: &std::path::Path, e: std::io::Error) -> CliError {
    CliError::new(Code::Failure, format!("{}: {e}", path.display()))
}

/// Whether an I/O error on a file the user named is the user's input being wrong (no such
/// file, not readable, a directory) rather than a failure of this machine.
fn input_kind(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        kind,
        K::NotFound | K::PermissionDenied | K::IsADirectory | K::InvalidInput | K::InvalidData
    )
}

/// An error reading a file the user gave on the command line (`--csr FILE`, ...): a missing,
/// unreadable or wrong-kind file is invalid input (exit 3) and names the path and the flag;
/// anything else converts as usual.
pub fn input_file(flag: &str, e: ca::Error) -> CliError {
    match &e {
        ca::Error::Io { path, source } if input_kind(source.kind()) => {
            CliError::new(Code::Input, format!("{flag} {}: {source}", path.display()))
                .with_help(format!("check the path given to {flag}"))
        }
        _ => CliError::from(e),
    }
}

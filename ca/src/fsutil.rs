//! Durable, atomic file writes with explicit modes, and bounded reads, for the CA's files.
//!
//! The mechanism is [`safe_fs`]'s (unpredictable `O_EXCL`/`O_NOFOLLOW` temporaries, locked
//! while written, renamed over the target; regular files only, with a size bound); this
//! module maps its errors into the CA's and adds the crash-injection point before a rename.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (and parents) with mode 0700; tightens an existing directory to 0700.
pub fn private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let mode = fs::metadata(dir).map_err(io(dir))?.permissions().mode() & 0o777;
    if mode != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    Ok(())
}

/// Atomically replaces `path` with `data`, created with `mode` (e.g. 0o600 for secrets),
/// and makes it durable (file and directory fsynced).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    write_replace(path, data, mode, true)
}

/// Like [`write_atomic`]; with `durable = false` nothing is fsynced: for files derived from
/// the ledger, which the next run re-materialises if a power cut lost them.
pub fn write_replace(path: &Path, data: &[u8], mode: u32, durable: bool) -> Result<()> {
    let how = safe_fs::Replace {
        before_rename: Some(|| crate::fault::point("write-before-rename")),
        ..safe_fs::Replace::new(mode).durable(durable)
    };
    safe_fs::replace(path, data, &how).map_err(io(path))
}

/// Creates `path` with `data` (mode `mode`, durable) only if it does not exist yet, in one
/// atomic step: the file appears complete or not at all. Returns false, changing nothing, if
/// `path` already existed (another command may have just created it: read that one).
pub fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<bool> {
    safe_fs::write_new(path, data, &safe_fs::Replace::new(mode)).map_err(io(path))
}

/// Removes temporaries left by an interrupted [`write_atomic`] in `dir`: only those whose
/// writer is gone, never one another process is writing right now.
pub fn remove_stale_temps(dir: &Path) -> Result<usize> {
    safe_fs::remove_stale_temps(dir).map_err(io(dir))
}

/// Refuses a secret file that group or others can access (or that is not a regular file).
pub fn check_private(path: &Path) -> Result<()> {
    let meta = fs::metadata(path).map_err(io(path))?;
    if !meta.is_file() {
        return Err(Error::BadFile {
            path: path.to_path_buf(),
            reason: format!(
                "is {}, not a regular file",
                safe_fs::kind_name(meta.file_type())
            ),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Reads a regular file of at most `max` bytes (inputs are hostile: a FIFO, a device or a
/// huge file is refused at once, see [`safe_fs::read_limited`]).
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    safe_fs::read_limited(path, max).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => Error::BadFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
        _ => io(path)(e),
    })
}

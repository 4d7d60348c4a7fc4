//! Durable, atomic file writes with explicit modes.
//!
//! A file is written to a temporary sibling (`.NAME.tmp`), fsynced, renamed over the target and
//! the directory fsynced: after a crash the target is either the old or the new content, and a
//! leftover temporary is recognisable and removed by [`remove_stale_temps`].

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

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

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Atomically replaces `path` with `data`, created with `mode` (e.g. 0o600 for secrets),
/// and makes it durable (file and directory fsynced).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    write_replace(path, data, mode, true)
}

/// Like [`write_atomic`]; with `durable = false` nothing is fsynced: for files derived from
/// the ledger, which the next run re-materialises if a power cut lost them.
pub fn write_replace(path: &Path, data: &[u8], mode: u32, durable: bool) -> Result<()> {
    let tmp = temp_path(path);
    let _ = fs::remove_file(&tmp);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        // The umask may have narrowed the mode; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io(&tmp))?;
        f.write_all(data).map_err(io(&tmp))?;
        if durable {
            f.sync_all().map_err(io(&tmp))?;
        }
    }
    crate::fault::point("write-before-rename");
    fs::rename(&tmp, path).map_err(io(path))?;
    if !durable {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        // Persist the rename itself.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Removes temporaries left by an interrupted [`write_atomic`] in `dir`.
pub fn remove_stale_temps(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source: e,
            });
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".tmp") {
            fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
            removed += 1;
        }
    }
    Ok(removed)
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

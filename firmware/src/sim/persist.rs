//! The store image in a file next to the chip state (`STATE.store`), replaced atomically:
//! a temporary file, fsync, rename, fsync of the directory.
//!
//! The store holds the device's certificates and configuration (and, on a provisioned board,
//! secrets), so the file is mode 0600 whatever the umask, written and read through `safe-fs`:
//! an unpredictable `O_EXCL|O_NOFOLLOW` temporary (a planted file or link is never written
//! through) with its mode set on the open file; read as a regular file of at most the store's
//! capacity (a FIFO or device is refused at once, never waited on); a store file that group or
//! others may access is set to 0600 through the open file, with a warning.

use std::io;
use std::path::{Path, PathBuf};

use crate::store::{Persist, STORE_CAPACITY, StorageError};

/// File-backed [`Persist`].
#[derive(Debug, Clone)]
pub struct FilePersist {
    path: PathBuf,
}

impl FilePersist {
    /// Persists at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FilePersist { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks that the store file, if present, can be loaded: a regular file (not a link, FIFO
    /// or device), at most the store's capacity, accessible to its owner only (tightened to
    /// 0600 if not). The error says what is wrong with which file.
    pub fn check(&self) -> io::Result<()> {
        read_store_file(&self.path, STORE_CAPACITY)
            .map(|_| ())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))
    }
}

/// Reads the store file (`None`: there is none yet).
fn read_store_file(path: &Path, max: usize) -> io::Result<Option<Vec<u8>>> {
    let Some((data, loose)) = safe_fs::read_private(path, max as u64)? else {
        return Ok(None);
    };
    if let Some(mode) = loose {
        eprintln!(
            "sensor-sim: {}: was mode {mode:04o} (accessible to group or others); set to 0600",
            path.display()
        );
    }
    Ok(Some(data))
}

impl Persist for FilePersist {
    fn load(&mut self, buf: &mut [u8]) -> Result<usize, StorageError> {
        match read_store_file(&self.path, buf.len()) {
            Ok(Some(data)) => {
                buf[..data.len()].copy_from_slice(&data);
                Ok(data.len())
            }
            Ok(None) => Ok(0),
            Err(e) => {
                eprintln!("sensor-sim: store {}: {e}", self.path.display());
                Err(StorageError)
            }
        }
    }

    fn save(&mut self, image: &[u8]) -> Result<(), StorageError> {
        safe_fs::replace(&self.path, image, &safe_fs::Replace::new(0o600)).map_err(|e| {
            eprintln!("sensor-sim: store {}: not saved: {e}", self.path.display());
            StorageError
        })
    }
}

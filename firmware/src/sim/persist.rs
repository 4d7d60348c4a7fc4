//! The store image in a file next to the chip state (`STATE.store`), replaced atomically:
//! a temporary file, fsync, rename, fsync of the directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::store::{Persist, StorageError};

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
}

impl Persist for FilePersist {
    fn load(&mut self, buf: &mut [u8]) -> Result<usize, StorageError> {
        match fs::read(&self.path) {
            Ok(data) if data.len() <= buf.len() => {
                buf[..data.len()].copy_from_slice(&data);
                Ok(data.len())
            }
            Ok(_) => Err(StorageError),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(_) => Err(StorageError),
        }
    }

    fn save(&mut self, image: &[u8]) -> Result<(), StorageError> {
        let write = || -> std::io::Result<()> {
            let mut tmp = self.path.clone().into_os_string();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            let mut f = fs::File::create(&tmp)?;
            f.write_all(image)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|_| StorageError)
    }
}

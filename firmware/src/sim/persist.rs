//! The store image in a file next to the chip state (`STATE.store`), replaced atomically:
//! a temporary file, fsync, rename, fsync of the directory.
//!
//! The store holds the device's certificates and configuration (and, on a provisioned board,
//! secrets), so the file is mode 0600 whatever the umask: the temporary is created under an
//! unpredictable name with `O_CREAT|O_EXCL|O_NOFOLLOW` (a planted file or link is never
//! written through) and its mode is set on the open file. It is read as a regular file of at
//! most the store's capacity (a FIFO or device is refused at once, never waited on); a store
//! file that group or others may access is set to 0600 through the open file, with a warning.

use std::collections::hash_map::RandomState;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, Permissions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::OFlag;

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

fn file_kind(t: fs::FileType) -> &'static str {
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Reads the store file (`None`: there is none yet).
fn read_store_file(path: &Path, max: usize) -> io::Result<Option<Vec<u8>>> {
    // O_NONBLOCK: opening a FIFO does not wait for a writer (no effect on a regular file).
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a symbolic link: the store file is replaced on every write, so it must be \
                 the file itself; remove the link",
            ));
        }
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "is a {}, not a regular file: remove it (the board writes its store there)",
                file_kind(meta.file_type())
            ),
        ));
    }
    if meta.len() > max as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "is {} bytes, more than the store's {max}: not a store image",
                meta.len()
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        f.set_permissions(Permissions::from_mode(0o600))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "is accessible to group or others (mode {mode:04o}) and cannot be set \
                         to 0600 ({e}): chmod 600 it"
                    ),
                )
            })?;
        eprintln!(
            "sensor-sim: {}: was mode {mode:04o} (accessible to group or others); set to 0600",
            path.display()
        );
    }
    let mut data = Vec::new();
    (&f).take(max as u64 + 1).read_to_end(&mut data)?;
    if data.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("grew beyond the store's {max} bytes while being read"),
        ));
    }
    Ok(Some(data))
}

/// An unpredictable suffix: the process id, a counter and 64 bits from std's OS-seeded hasher
/// keys (a new `RandomState` per call).
fn random_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(n);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{}.{n}.{:016x}", std::process::id(), h.finish())
}

/// Creates `NAME.tmp.SUFFIX` next to `path`, new (never an existing file or link), mode 0600.
fn create_private_temp(path: &Path) -> io::Result<(PathBuf, File)> {
    let mut last = None;
    for _ in 0..8 {
        let mut name: OsString = path.as_os_str().to_os_string();
        name.push(format!(".tmp.{}", random_suffix()));
        let tmp = PathBuf::from(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no temporary file name was free")))
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
        let write = || -> io::Result<()> {
            let (tmp, f) = create_private_temp(&self.path)?;
            let result = (|| {
                let mut f = f;
                // fchmod: exact, whatever the umask did to the mode given at creation
                f.set_permissions(Permissions::from_mode(0o600))?;
                f.write_all(image)?;
                f.sync_all()?;
                drop(f);
                fs::rename(&tmp, &self.path)?;
                if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    File::open(dir)?.sync_all()?;
                }
                Ok(())
            })();
            if result.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            result
        };
        write().map_err(|e| {
            eprintln!("sensor-sim: store {}: not saved: {e}", self.path.display());
            StorageError
        })
    }
}

//! Durable, atomic file writes with explicit modes.
//!
//! A file is written to a temporary sibling with an unpredictable, unique name
//! (`.NAME.<16 hex>.tmp`, created exclusively and never through a symbolic link), fsynced,
//! renamed over the target and the directory fsynced: after a crash the target is either the
//! old or the new content. Two processes writing the same file at once each use their own
//! temporary; the last rename wins and neither fails.
//!
//! The writer holds an exclusive `flock` on its temporary until the rename. The kernel drops
//! that lock when a writer dies, so a leftover temporary is told apart from one that another
//! process is writing right now: [`remove_stale_temps`] (and the next write of the same file)
//! removes only temporaries nobody holds.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

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

/// How many random bytes name a temporary (hex-encoded in the name).
const TEMP_RANDOM: usize = 8;

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A fresh temporary name beside `path`: `.NAME.<16 random hex>.tmp`.
fn temp_path(path: &Path) -> Result<PathBuf> {
    let mut r = [0u8; TEMP_RANDOM];
    getrandom::fill(&mut r).map_err(|e| Error::Generate(format!("system RNG: {e}")))?;
    Ok(path.with_file_name(format!(".{}.{}.tmp", file_name(path), hex::encode(r))))
}

/// True if `name` looks like a temporary of ours: `.NAME.<hex>.tmp` (or `.NAME.tmp`, the
/// fixed name older versions used).
fn is_temp_name(name: &str) -> bool {
    name.len() > ".tmp".len() + 1 && name.starts_with('.') && name.ends_with(".tmp")
}

/// True if `name` is a temporary for the file named `target`.
fn is_temp_of(name: &str, target: &str) -> bool {
    let Some(rest) = name
        .strip_prefix('.')
        .and_then(|n| n.strip_prefix(target))
        .and_then(|n| n.strip_suffix(".tmp"))
    else {
        return false;
    };
    rest.is_empty()
        || rest
            .strip_prefix('.')
            .is_some_and(|h| h.len() == 2 * TEMP_RANDOM && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// True if `path` (not followed if it is a link) is the file open as `f`.
fn is_same_file(path: &Path, f: &File) -> bool {
    match (fs::symlink_metadata(path), f.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Creates a new temporary beside `path` and locks it; the lock marks it as being written.
fn create_temp(path: &Path, mode: u32) -> Result<(PathBuf, Flock<File>)> {
    for _ in 0..8 {
        let tmp = temp_path(path)?;
        let f = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(&tmp)(e)),
        };
        let f = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io(&tmp)(std::io::Error::from(errno)))?;
        // A cleaner can take a temporary for a dead writer's in the instant between its
        // creation and its lock: then it is gone and another name is tried.
        if is_same_file(&tmp, &f) {
            return Ok((tmp, f));
        }
    }
    Err(Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(
            "could not create a temporary file beside it (eight attempts)",
        ),
    })
}

/// Atomically replaces `path` with `data`, created with `mode` (e.g. 0o600 for secrets),
/// and makes it durable (file and directory fsynced).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    write_replace(path, data, mode, true)
}

/// Like [`write_atomic`]; with `durable = false` nothing is fsynced: for files derived from
/// the ledger, which the next run re-materialises if a power cut lost them.
pub fn write_replace(path: &Path, data: &[u8], mode: u32, durable: bool) -> Result<()> {
    // Temporaries a dead writer left for this same file (anywhere: --out may point outside
    // the home, where nothing else would clean up).
    remove_stale_temps_of(path);
    let (tmp, f) = create_temp(path, mode)?;
    let written = (|| {
        // The umask may have narrowed the mode; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io(&tmp))?;
        (&*f).write_all(data).map_err(io(&tmp))?;
        if durable {
            f.sync_all().map_err(io(&tmp))?;
        }
        crate::fault::point("write-before-rename");
        fs::rename(&tmp, path).map_err(io(path))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    // The lock is released only now, after the rename.
    drop(f);
    written?;
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

/// Creates `path` with `data` (mode `mode`, durable) only if it does not exist yet, in one
/// atomic step: the file appears complete or not at all. Returns false, changing nothing, if
/// `path` already existed (another command may have just created it: read that one).
pub fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<bool> {
    remove_stale_temps_of(path);
    let (tmp, f) = create_temp(path, mode)?;
    let written = (|| {
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io(&tmp))?;
        (&*f).write_all(data).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        // link(2) fails if the target exists (and never follows a link planted there).
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io(path)(e)),
        }
    })();
    let _ = fs::remove_file(&tmp);
    drop(f);
    let created = written?;
    if created
        && let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(created)
}

/// Removes the temporary `path` if no writer holds it (its writer died). Returns true if it
/// was removed.
fn remove_if_stale(path: &Path) -> Result<bool> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(path)(e)),
    };
    if meta.file_type().is_symlink() {
        // Never one of ours (they are created with O_NOFOLLOW | O_EXCL): a planted link.
        return match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(path)(e)),
        };
    }
    if !meta.is_file() {
        return Ok(false);
    }
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        // Not ours to judge (e.g. mode 0200): leave it.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(false),
        Err(e) => return Err(io(path)(e)),
    };
    let f = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(f) => f,
        // A live writer holds it: it is being written right now.
        Err((_, Errno::EWOULDBLOCK)) => return Ok(false),
        Err((_, errno)) => return Err(io(path)(std::io::Error::from(errno))),
    };
    // Renamed over its target (or replaced) since we looked: not a leftover.
    if !is_same_file(path, &f) {
        return Ok(false);
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(path)(e)),
    }
}

/// Best effort: removes the leftover temporaries of `path` (a failure only leaves them).
fn remove_stale_temps_of(path: &Path) {
    let target = file_name(path);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if is_temp_of(&entry.file_name().to_string_lossy(), &target) {
            let _ = remove_if_stale(&entry.path());
        }
    }
}

/// Removes temporaries left by an interrupted [`write_atomic`] in `dir`: only those whose
/// writer is gone, never one another process is writing right now.
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
        if is_temp_name(&entry.file_name().to_string_lossy()) && remove_if_stale(&entry.path())? {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temps(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_temp_name(n))
            .collect()
    }

    #[test]
    fn temporary_names_are_unique_and_recognised() {
        let p = Path::new("/x/crl.pem");
        let a = temp_path(p).expect("name");
        let b = temp_path(p).expect("name");
        assert_ne!(a, b);
        let name = a.file_name().expect("name").to_string_lossy().into_owned();
        assert!(is_temp_name(&name), "{name}");
        assert!(is_temp_of(&name, "crl.pem"), "{name}");
        assert!(is_temp_of(".crl.pem.tmp", "crl.pem"), "the old fixed name");
        assert!(!is_temp_of(&name, "crl"), "{name}");
        assert!(!is_temp_of(".crl.pem.other.tmp", "crl.pem"));
    }

    #[test]
    fn concurrent_writers_of_one_file_all_succeed_and_leave_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("crl.pem");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let target = &target;
                s.spawn(move || {
                    for i in 0..25u8 {
                        let data = vec![t; 1000 + usize::from(i)];
                        write_atomic(target, &data, 0o644).expect("concurrent write");
                    }
                });
            }
        });
        let data = fs::read(&target).expect("read");
        assert!(data.iter().all(|b| *b == data[0]), "a torn file");
        assert_eq!(temps(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn a_temporary_being_written_is_kept_and_a_dead_writers_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("root.crt");
        // A live writer: holds its temporary locked.
        let (live, lock) = create_temp(&target, 0o644).expect("temp");
        // A dead writer's: nobody holds it (and the old fixed name).
        let dead = temp_path(&target).expect("name");
        fs::write(&dead, b"half").expect("write");
        fs::write(dir.path().join(".root.crt.tmp"), b"old").expect("write");
        assert_eq!(remove_stale_temps(dir.path()).expect("clean"), 2);
        assert!(live.exists(), "removed a temporary being written");
        assert!(!dead.exists());
        // Writing the same file meanwhile neither fails nor touches the live temporary.
        write_atomic(&target, b"new", 0o644).expect("write");
        assert!(live.exists());
        drop(lock);
        write_atomic(&target, b"newer", 0o644).expect("write");
        assert!(
            !live.exists(),
            "a released temporary of the same file is cleaned"
        );
        assert_eq!(fs::read(&target).expect("read"), b"newer");
        assert_eq!(temps(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn write_new_creates_once_and_never_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("broker.key");
        let created: Vec<bool> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..6u8)
                .map(|t| {
                    let target = &target;
                    s.spawn(move || write_new(target, &[t; 64], 0o600).expect("write_new"))
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        assert_eq!(created.iter().filter(|c| **c).count(), 1, "{created:?}");
        let data = fs::read(&target).expect("read");
        assert!(data.len() == 64 && data.iter().all(|b| *b == data[0]));
        assert_eq!(
            fs::metadata(&target).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        assert!(!write_new(&target, b"other", 0o600).expect("write_new"));
        assert_eq!(fs::read(&target).expect("read"), data);
        assert_eq!(temps(dir.path()), Vec::<String>::new());
    }

    #[test]
    fn a_link_planted_under_a_temporary_name_is_removed_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").expect("write");
        let link = dir.path().join(".crl.pem.0123456789abcdef.tmp");
        std::os::unix::fs::symlink(&victim, &link).expect("symlink");
        assert_eq!(remove_stale_temps(dir.path()).expect("clean"), 1);
        assert_eq!(fs::read(&victim).expect("read"), b"keep");
        assert!(fs::symlink_metadata(&link).is_err());
    }
}

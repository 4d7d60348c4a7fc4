//! Replacing files and creating directories without following anything someone planted.
//!
//! A file is replaced by writing a temporary in the same directory, created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` under an unpredictable name (`.NAME.<16 hex>.tmp`), so a link or
//! file planted under any name we might use is never opened; owner and mode are set on the
//! open descriptor (`fchown`, then `fchmod`), never by path; the temporary is then renamed over
//! the target, which replaces a planted link instead of writing through it. Two writers of one
//! file each use their own temporary: the last rename wins and neither fails.
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
use nix::fcntl::{Flock, FlockArg, OFlag};

use crate::{invalid, kind_name};

/// How [`replace`] creates the new file.
#[derive(Debug, Clone, Copy)]
pub struct Replace {
    /// Permission bits of the new file (e.g. 0o600 for a secret).
    pub mode: u32,
    /// Owner and group given to the new file through its descriptor (needs root, or our own
    /// uid and one of our groups); `None` keeps ours.
    pub owner: Option<(u32, u32)>,
    /// fsync the file before the rename and the directory after it.
    pub durable: bool,
    /// Called between the write and the rename (crash-injection tests).
    pub before_rename: Option<fn()>,
}

impl Replace {
    /// A durable replacement with `mode`, owned by us.
    pub fn new(mode: u32) -> Self {
        Replace {
            mode,
            owner: None,
            durable: true,
            before_rename: None,
        }
    }

    /// The new file belongs to `uid:gid`.
    pub fn owner(mut self, owner: Option<(u32, u32)>) -> Self {
        self.owner = owner;
        self
    }

    /// Whether to fsync (files derived from a ledger may skip it).
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }
}

/// How many random bytes name a temporary (hex-encoded in the name).
const TEMP_RANDOM: usize = 8;

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A fresh, unpredictable temporary name beside `path`: `.NAME.<16 random hex>.tmp`.
pub fn temp_name(path: &Path) -> std::io::Result<PathBuf> {
    let tag = getrandom::u64().map_err(|e| std::io::Error::other(format!("system RNG: {e}")))?;
    Ok(path.with_file_name(format!(".{}.{tag:016x}.tmp", file_name(path))))
}

/// True if `name` looks like a temporary of ours: `.NAME.<hex>.tmp` (or `.NAME.tmp`, the
/// fixed name older versions used).
pub fn is_temp_name(name: &str) -> bool {
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
fn create_temp(path: &Path) -> std::io::Result<(PathBuf, Flock<File>)> {
    for _ in 0..8 {
        let tmp = temp_name(path)?;
        let f = match OpenOptions::new()
            .write(true)
            .create_new(true)
            // 0600 until owner and mode are final: nobody else can open it in between.
            .mode(0o600)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(&tmp)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        let f = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, errno)| std::io::Error::from(errno))?;
        // A cleaner can take a temporary for a dead writer's in the instant between its
        // creation and its lock: then it is gone and another name is tried.
        if is_same_file(&tmp, &f) {
            return Ok((tmp, f));
        }
    }
    Err(std::io::Error::other(
        "could not create a temporary file beside it (eight attempts)",
    ))
}

/// Atomically replaces `path` with `data`, created as `how` says.
///
/// After a crash `path` holds either the old or the new content; a leftover temporary is
/// removed by the next write of the same file or by [`remove_stale_temps`].
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// use std::os::unix::fs::PermissionsExt;
/// let key = dir.path().join("gateway.key");
/// safe_fs::replace(&key, b"secret", &safe_fs::Replace::new(0o600)).unwrap();
/// assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
/// ```
pub fn replace(path: &Path, data: &[u8], how: &Replace) -> std::io::Result<()> {
    // Temporaries a dead writer left for this same file (anywhere: an output directory may
    // lie where nothing else would clean up).
    remove_stale_temps_of(path);
    let (tmp, f) = create_temp(path)?;
    let written = fill(&f, data, how).and_then(|()| {
        if let Some(hook) = how.before_rename {
            hook();
        }
        fs::rename(&tmp, path)
    });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    // The lock is released only now, after the rename.
    drop(f);
    written?;
    if how.durable {
        sync_parent(path);
    }
    Ok(())
}

/// Creates `path` with `data` only if it does not exist yet, in one atomic step: the file
/// appears complete or not at all. Returns false, changing nothing, if `path` already existed
/// (another process may have just created it: read that one). Always durable.
pub fn write_new(path: &Path, data: &[u8], how: &Replace) -> std::io::Result<bool> {
    remove_stale_temps_of(path);
    let (tmp, f) = create_temp(path)?;
    let written = fill(&f, data, &how.durable(true)).and_then(|()| {
        // link(2) fails if the target exists (and never follows a link planted there).
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    });
    let _ = fs::remove_file(&tmp);
    drop(f);
    let created = written?;
    if created {
        sync_parent(path);
    }
    Ok(created)
}

/// Owner, mode and content of a fresh temporary, all through its descriptor.
fn fill(f: &File, data: &[u8], how: &Replace) -> std::io::Result<()> {
    if let Some((uid, gid)) = how.owner {
        std::os::unix::fs::fchown(f, Some(uid), Some(gid))?;
    }
    f.set_permissions(fs::Permissions::from_mode(how.mode & 0o7777))?;
    let mut w = f;
    w.write_all(data)?;
    if how.durable {
        f.sync_all()?;
    }
    Ok(())
}

fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes the temporary `path` if no writer holds it (its writer died). Returns true if it
/// was removed.
fn remove_if_stale(path: &Path) -> std::io::Result<bool> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if meta.file_type().is_symlink() {
        // Never one of ours (they are created with O_NOFOLLOW | O_EXCL): a planted link.
        return match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        };
    }
    if !meta.is_file() {
        return Ok(false);
    }
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        // Not ours to judge (e.g. mode 0200): leave it.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(false),
        Err(e) => return Err(e),
    };
    let f = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(f) => f,
        // A live writer holds it: it is being written right now.
        Err((_, Errno::EWOULDBLOCK)) => return Ok(false),
        Err((_, errno)) => return Err(std::io::Error::from(errno)),
    };
    // Renamed over its target (or replaced) since we looked: not a leftover.
    if !is_same_file(path, &f) {
        return Ok(false);
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
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

/// Removes temporaries left by an interrupted [`replace`] or [`write_new`] in `dir`: only those whose
/// writer is gone, never one another process is writing right now.
pub fn remove_stale_temps(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if is_temp_name(&entry.file_name().to_string_lossy()) && remove_if_stale(&entry.path())? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Creates directory `dir` (parents with mode 0700 when missing) and sets its owner and mode
/// through its descriptor; an existing directory is taken back the same way.
///
/// The last component must be a real directory, not a symlink: a link planted where we keep
/// secrets is refused, never followed.
pub fn create_dir(dir: &Path, mode: u32, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(invalid(format!(
                "{} is a symbolic link; give the directory itself",
                dir.display()
            )));
        }
        Ok(m) if !m.is_dir() => {
            return Err(invalid(format!(
                "{} is {}, not a directory",
                dir.display(),
                kind_name(m.file_type())
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)?;
            }
            match fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    }
    let d = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(dir)?;
    let meta = d.metadata()?;
    if let Some((uid, gid)) = owner
        && (meta.uid() != uid || meta.gid() != gid)
    {
        std::os::unix::fs::fchown(&d, Some(uid), Some(gid))?;
    }
    if meta.mode() & 0o7777 != mode {
        d.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_symlink_is_replaced_not_written_through() {
        let d = tempfile::tempdir().expect("dir");
        let victim = d.path().join("victim");
        fs::write(&victim, "untouched").expect("victim");
        let target = d.path().join("acl");
        std::os::unix::fs::symlink(&victim, &target).expect("plant");
        replace(&target, b"new", &Replace::new(0o640)).expect("replace");
        assert_eq!(fs::read_to_string(&victim).expect("read"), "untouched");
        let m = fs::symlink_metadata(&target).expect("stat");
        assert!(m.is_file());
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
        assert_eq!(fs::read(&target).expect("read"), b"new");
    }

    #[test]
    fn a_symlink_in_place_of_a_directory_is_refused() {
        let d = tempfile::tempdir().expect("dir");
        let elsewhere = d.path().join("elsewhere");
        fs::create_dir(&elsewhere).expect("mkdir");
        let before = fs::metadata(&elsewhere).expect("stat").permissions().mode();
        let out = d.path().join("out");
        std::os::unix::fs::symlink(&elsewhere, &out).expect("plant");
        let e = create_dir(&out, 0o750, None).expect_err("symlink");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let after = fs::metadata(&elsewhere).expect("stat").permissions().mode();
        assert_eq!(before, after, "the link's target was not touched");
        create_dir(&d.path().join("a/b"), 0o750, None).expect("create");
        let m = fs::metadata(d.path().join("a/b")).expect("stat");
        assert_eq!(m.permissions().mode() & 0o777, 0o750);
    }

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
        let a = temp_name(p).expect("name");
        let b = temp_name(p).expect("name");
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
                        replace(target, &data, &Replace::new(0o644)).expect("concurrent write");
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
        let (live, lock) = create_temp(&target).expect("temp");
        // A dead writer's: nobody holds it (and the old fixed name).
        let dead = temp_name(&target).expect("name");
        fs::write(&dead, b"half").expect("write");
        fs::write(dir.path().join(".root.crt.tmp"), b"old").expect("write");
        assert_eq!(remove_stale_temps(dir.path()).expect("clean"), 2);
        assert!(live.exists(), "removed a temporary being written");
        assert!(!dead.exists());
        // Writing the same file meanwhile neither fails nor touches the live temporary.
        replace(&target, b"new", &Replace::new(0o644)).expect("write");
        assert!(live.exists());
        drop(lock);
        replace(&target, b"newer", &Replace::new(0o644)).expect("write");
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
                    s.spawn(move || {
                        write_new(target, &[t; 64], &Replace::new(0o600)).expect("write_new")
                    })
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
        assert!(!write_new(&target, b"other", &Replace::new(0o600)).expect("write_new"));
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

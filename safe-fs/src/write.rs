//! Replacing files and creating directories without following anything someone planted.
//!
//! A file is replaced by writing a temporary in the same directory, created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` under an unpredictable name (`.NAME.<16 hex>.tmp`), so a symlink
//! or file planted under any name we might use is never opened; owner and mode are set on the
//! open descriptor (`fchown`, then `fchmod`), never by path; the temporary is then renamed over
//! the target, which replaces a planted symlink instead of writing through it. Two writers of
//! one file never share a temporary, so concurrent replacements each land whole.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

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

/// An unpredictable temporary name beside `path`: `.NAME.<16 hex>.tmp`.
pub fn temp_name(path: &Path) -> std::io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| invalid(format!("{}: no file name", path.display())))?;
    let tag = getrandom::u64().map_err(|e| std::io::Error::other(format!("no randomness: {e}")))?;
    Ok(path.with_file_name(format!(".{}.{tag:016x}.tmp", name.to_string_lossy())))
}

/// Whether `name` is a temporary that [`replace`] creates (for clean-up after a crash).
pub fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
        return false;
    };
    rest.rsplit_once('.').is_some_and(|(base, tag)| {
        !base.is_empty() && tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// Atomically replaces `path` with `data`, created as `how` says.
///
/// After a crash `path` holds either the old or the new content; a leftover temporary is
/// recognised by [`is_temp_name`].
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// use std::os::unix::fs::PermissionsExt;
/// let key = dir.path().join("gateway.key");
/// safe_fs::replace(&key, b"secret", &safe_fs::Replace::new(0o600)).unwrap();
/// assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
/// ```
pub fn replace(path: &Path, data: &[u8], how: &Replace) -> std::io::Result<()> {
    let tmp = temp_name(path)?;
    let written = write_new(&tmp, data, how).and_then(|()| {
        if let Some(hook) = how.before_rename {
            hook();
        }
        fs::rename(&tmp, path)
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if how.durable {
        sync_parent(path);
    }
    Ok(())
}

fn write_new(tmp: &Path, data: &[u8], how: &Replace) -> std::io::Result<()> {
    // 0600 until owner and mode are final: nobody else can open it in between.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(tmp)?;
    if let Some((uid, gid)) = how.owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    }
    f.set_permissions(fs::Permissions::from_mode(how.mode & 0o7777))?;
    f.write_all(data)?;
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
    fn temporaries_are_unpredictable_and_recognisable() {
        let a = temp_name(Path::new("/x/crl.pem")).expect("name");
        let b = temp_name(Path::new("/x/crl.pem")).expect("name");
        assert_ne!(a, b);
        let name = a.file_name().expect("name").to_string_lossy().into_owned();
        assert!(is_temp_name(&name), "{name}");
        assert!(!is_temp_name(".crl.pem.tmp"));
        assert!(!is_temp_name("crl.pem"));
    }

    #[test]
    fn concurrent_writers_of_one_file_each_land_whole() {
        let d = tempfile::tempdir().expect("dir");
        let p = d.path().join("crl.pem");
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..50 {
                        replace(p, &[i; 4096], &Replace::new(0o644).durable(false))
                            .expect("replace");
                    }
                });
            }
        });
        let data = fs::read(&p).expect("read");
        assert_eq!(data.len(), 4096);
        assert!(data.iter().all(|b| *b == data[0]));
        let left: Vec<_> = fs::read_dir(d.path())
            .expect("ls")
            .flatten()
            .filter(|e| is_temp_name(&e.file_name().to_string_lossy()))
            .collect();
        assert!(left.is_empty(), "{left:?}");
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
}

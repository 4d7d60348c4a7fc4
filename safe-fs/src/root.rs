//! Paths inside a root filesystem (a Pi's NFS root, a mounted SD card), resolved as the Pi
//! will see them.
//!
//! Every directory on the way is resolved component by component under the root: an absolute
//! symlink means a path of the Pi, so it is resolved from the root again (never from this
//! machine's `/`); a relative symlink or `..` that would climb above the root is refused. The
//! last component is not resolved: the caller replaces it (a rename replaces a planted
//! symlink rather than writing through it).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use crate::invalid;

/// Symlinks followed at most while resolving one path (Linux's limit).
const MAX_LINKS: usize = 40;

/// Where `path` (a path on the target, absolute or relative to its `/`) lies under `root`.
///
/// `root` should be canonical. The parent directories are resolved inside the root; the file
/// name is kept as is. Components that do not exist yet are taken literally (the caller
/// creates them).
///
/// ```
/// # let d = tempfile::tempdir().unwrap();
/// let root = d.path().canonicalize().unwrap();
/// std::fs::create_dir_all(root.join("usr/lib")).unwrap();
/// std::os::unix::fs::symlink("/usr/lib", root.join("lib")).unwrap();
/// let p = safe_fs::resolve_in_root(&root, "/lib/systemd/x.service".as_ref()).unwrap();
/// assert_eq!(p, root.join("usr/lib/systemd/x.service"));
/// ```
pub fn resolve_in_root(root: &Path, path: &Path) -> std::io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| invalid(format!("{}: no file name", path.display())))?;
    let parent = path.parent().unwrap_or(Path::new(""));
    let dir = resolve_dir(root, parent)?;
    Ok(dir.join(name))
}

/// Resolves a directory path of the target fully (every component) under `root`.
pub fn resolve_dir(root: &Path, path: &Path) -> std::io::Result<PathBuf> {
    let mut pending: VecDeque<OsString> = components(path)?;
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            if resolved.pop().is_none() {
                return Err(invalid(format!(
                    "{} climbs above the root {}",
                    path.display(),
                    root.display()
                )));
            }
            continue;
        }
        let here = resolved.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        let candidate = here.join(&c);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(invalid(format!(
                        "{}: more than {MAX_LINKS} symbolic links",
                        path.display()
                    )));
                }
                let target = std::fs::read_link(&candidate)?;
                let mut rest = components(&target)?;
                if target.is_absolute() {
                    resolved.clear();
                } else if climbs_above(&resolved, &rest) {
                    return Err(invalid(format!(
                        "{} is a symbolic link to {}, which leaves the root {}",
                        candidate.display(),
                        target.display(),
                        root.display()
                    )));
                }
                rest.extend(pending);
                pending = rest;
            }
            Ok(_) => resolved.push(c),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => resolved.push(c),
            Err(e) => return Err(e),
        }
    }
    Ok(resolved.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

fn components(path: &Path) -> std::io::Result<VecDeque<OsString>> {
    let mut out = VecDeque::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => out.push_back(OsString::from("..")),
            Component::Normal(n) => out.push_back(n.to_os_string()),
            Component::Prefix(_) => {
                return Err(invalid(format!("{}: not a unix path", path.display())));
            }
        }
    }
    Ok(out)
}

/// Whether a relative link target, read at depth `resolved`, climbs above the root.
fn climbs_above(resolved: &[OsString], target: &VecDeque<OsString>) -> bool {
    let mut depth = resolved.len() as isize;
    target.iter().any(|c| {
        depth += if c == ".." { -1 } else { 1 };
        depth < 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().expect("dir");
        let r = d.path().join("root");
        std::fs::create_dir_all(r.join("etc")).expect("etc");
        let r = r.canonicalize().expect("canonical");
        (d, r)
    }

    #[test]
    fn an_absolute_symlink_is_resolved_inside_the_root() {
        let (d, r) = root();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).expect("outside");
        // Planted: etc/iot-gateway -> /<absolute path outside the root>.
        symlink(&outside, r.join("etc/iot-gateway")).expect("plant");
        let p = resolve_in_root(&r, Path::new("/etc/iot-gateway/gateway.toml")).expect("resolve");
        assert!(p.starts_with(&r), "{}", p.display());
        assert!(!p.starts_with(&outside));
    }

    #[test]
    fn a_relative_symlink_that_climbs_out_is_refused() {
        let (_d, r) = root();
        symlink("../../..", r.join("etc/systemd")).expect("plant");
        let e = resolve_in_root(&r, Path::new("/etc/systemd/system/x.service"))
            .expect_err("leaves the root");
        assert!(e.to_string().contains("leaves the root"), "{e}");
        let e = resolve_in_root(&r, Path::new("/../x")).expect_err("..");
        assert!(e.to_string().contains("above the root"), "{e}");
    }

    #[test]
    fn relative_links_inside_the_root_are_followed() {
        let (_d, r) = root();
        std::fs::create_dir_all(r.join("usr/lib")).expect("usr/lib");
        symlink("usr/lib", r.join("lib")).expect("usrmerge");
        let p = resolve_in_root(&r, Path::new("/lib/a/b")).expect("resolve");
        assert_eq!(p, r.join("usr/lib/a/b"));
    }

    #[test]
    fn link_loops_end() {
        let (_d, r) = root();
        symlink("b", r.join("a")).expect("a");
        symlink("a", r.join("b")).expect("b");
        assert!(resolve_in_root(&r, Path::new("/a/x")).is_err());
    }
}

//! Refusing state that is not ours alone.
//!
//! A CA home, its site file and its chip profiles decide what gets locked into chips for ever
//! and what the broker lets through; if another account can write them, that account decides.
//! These checks refuse such a file with the exact command that fixes it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::{invalid, kind_name};

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(
            || format!("uid {uid}"),
            |u| format!("{} (uid {uid})", u.name),
        )
}

fn check(path: &Path, want_dir: bool) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if want_dir != meta.is_dir() {
        return Err(invalid(format!(
            "{} is {}, expected {}",
            path.display(),
            kind_name(meta.file_type()),
            if want_dir {
                "a directory"
            } else {
                "a regular file"
            }
        )));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to {}, not to you ({}): whoever owns it decides what it says; \
                 run `chown {me} {}` if it is yours",
                path.display(),
                user_name(meta.uid()),
                user_name(me),
                path.display()
            ),
        ));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is writable by {} (mode {mode:04o}): anyone there could change it; \
                 run `chmod go-w {}`",
                path.display(),
                match mode & 0o022 {
                    0o020 => "its group",
                    0o002 => "every user",
                    _ => "its group and every user",
                },
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Refuses a regular file that another account owns or that group or others can write.
pub fn check_owned(path: &Path) -> std::io::Result<()> {
    check(path, false)
}

/// Refuses a directory that another account owns or that group or others can write.
pub fn check_owned_dir(path: &Path) -> std::io::Result<()> {
    check(path, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn group_writable_files_are_refused_with_the_fix() {
        let d = tempfile::tempdir().expect("dir");
        let p = d.path().join("site.toml");
        std::fs::write(&p, "x").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o664)).expect("chmod");
        let e = check_owned(&p).expect_err("group-writable");
        assert!(e.to_string().contains("chmod go-w"), "{e}");
        assert!(e.to_string().contains("its group"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        check_owned(&p).expect("ours alone");
        assert!(check_owned_dir(&p).is_err());
    }
}

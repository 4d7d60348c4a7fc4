//! Bounded reads of regular files.
//!
//! The file is opened with `O_NONBLOCK` (opening a FIFO for reading would otherwise wait for a
//! writer for ever) and `O_NOCTTY`; its type and size are checked with `fstat` on the open
//! descriptor (no race with a rename), and at most `limit + 1` bytes are read, so a file that
//! grows while it is read is refused too.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::OFlag;

use crate::{invalid, kind_name};

/// Opens `path` for reading as a regular file no larger than `limit` bytes.
///
/// Symbolic links are followed (a site file may well be a link into a repository); what is
/// checked is the file finally opened.
pub fn open_regular(path: &Path, limit: u64) -> std::io::Result<(File, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).bits())
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(invalid(format!(
            "is {}, not a regular file",
            kind_name(meta.file_type())
        )));
    }
    if meta.len() > limit {
        return Err(invalid(format!(
            "is {} bytes, more than the {limit} bytes allowed here",
            meta.len()
        )));
    }
    Ok((file, meta.len()))
}

/// Reads a whole regular file of at most `limit` bytes.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let p = dir.path().join("site.toml");
/// std::fs::write(&p, "[broker]\n").unwrap();
/// assert_eq!(safe_fs::read_limited(&p, 1024).unwrap(), b"[broker]\n");
/// assert!(safe_fs::read_limited(&p, 4).is_err());
/// assert!(safe_fs::read_limited(std::path::Path::new("/dev/zero"), 1024).is_err());
/// ```
pub fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let (file, len) = open_regular(path, limit)?;
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(invalid(format!(
            "grew past the {limit} bytes allowed here while it was read"
        )));
    }
    Ok(buf)
}

/// Reads a private file of ours (a key, a chip image, a board's store): like [`read_limited`],
/// but a symbolic link is refused (the file is replaced on every write, so it must be the file
/// itself), a missing file is `Ok(None)`, and a file that group or others may access is set to
/// 0600 through its descriptor; the mode it had is returned so the caller can say so.
pub fn read_private(path: &Path, limit: u64) -> std::io::Result<Option<(Vec<u8>, Option<u32>)>> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(
            (OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).bits(),
        )
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(invalid(
                "is a symbolic link: it is replaced on every write, so it must be the file \
                 itself; remove the link"
                    .into(),
            ));
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(invalid(format!(
            "is {}, not a regular file",
            kind_name(meta.file_type())
        )));
    }
    if meta.len() > limit {
        return Err(invalid(format!(
            "is {} bytes, more than the {limit} bytes allowed here",
            meta.len()
        )));
    }
    let mode = meta.mode() & 0o7777;
    let loose = mode & 0o077 != 0;
    if loose {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "is accessible to group or others (mode {mode:04o}) and cannot be set \
                         to 0600 ({e}): chmod 600 it"
                    ),
                )
            })?;
    }
    let mut buf = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(invalid(format!(
            "grew past the {limit} bytes allowed here while it was read"
        )));
    }
    Ok(Some((buf, loose.then_some(mode))))
}

/// [`read_limited`], as UTF-8 text.
pub fn read_limited_string(path: &Path, limit: u64) -> std::io::Result<String> {
    let bytes = read_limited(path, limit)?;
    String::from_utf8(bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_fifo_is_refused_at_once_instead_of_waited_on() {
        let d = tempfile::tempdir().expect("dir");
        let fifo = d.path().join("site.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let t = Instant::now();
        let e = read_limited(&fifo, 1 << 20).expect_err("a FIFO is not a file");
        assert!(e.to_string().contains("a FIFO"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn devices_and_directories_are_refused() {
        for (p, what) in [
            ("/dev/zero", "character device"),
            ("/dev/urandom", "character device"),
            ("/tmp", "directory"),
        ] {
            let e = read_limited(Path::new(p), 1 << 20).expect_err(p);
            assert!(e.to_string().contains(what), "{p}: {e}");
        }
    }

    #[test]
    fn a_file_over_the_limit_is_refused_without_reading_it() {
        let d = tempfile::tempdir().expect("dir");
        let big = d.path().join("big");
        let f = File::create(&big).expect("create");
        f.set_len(100 << 20).expect("sparse 100 MB");
        let e = read_limited(&big, 1 << 20).expect_err("too large");
        assert!(e.to_string().contains("104857600 bytes"), "{e}");
    }

    #[test]
    fn a_private_file_is_tightened_and_a_link_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("dir");
        let p = d.path().join("chip.state");
        assert!(read_private(&p, 10).expect("missing").is_none());
        std::fs::write(&p, "abc").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let (data, was) = read_private(&p, 10).expect("read").expect("present");
        assert_eq!((data.as_slice(), was), (&b"abc"[..], Some(0o644)));
        let mode = std::fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&p, &link).expect("link");
        let e = read_private(&link, 10).expect_err("link");
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }

    #[test]
    fn text_must_be_utf8() {
        let d = tempfile::tempdir().expect("dir");
        let p = d.path().join("t");
        std::fs::write(&p, [b'a', 0xff]).expect("write");
        let e = read_limited_string(&p, 10).expect_err("not utf-8");
        assert!(e.to_string().contains("byte 1"), "{e}");
    }
}

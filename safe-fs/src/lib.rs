//! Files read and written as if every other account on the machine were hostile.
//!
//! Every program of the workspace reads files that someone else may have put in its way (a
//! FIFO where a site file should be, `/dev/zero` as a key, a 100 MB "manifest") and replaces
//! files in directories where someone may have planted a symlink. This crate is the one place
//! that knows how to do both safely:
//!
//! - [`read`]: open as a regular file without blocking (a FIFO is refused, not waited on),
//!   check the type and size on the open descriptor, read at most a bound.
//! - [`write`]: replace a file by renaming a temporary created with `O_CREAT|O_EXCL|O_NOFOLLOW`
//!   under an unpredictable name, with mode and owner set through the open descriptor
//!   (`fchmod`/`fchown`), never by path.
//! - [`root`]: resolve a path inside a root filesystem (a Pi's NFS root) the way the Pi sees
//!   it, refusing a symlink that leaves the root.
//! - [`owner`]: refuse a directory or file that another account owns or that group or others
//!   can write, with the exact `chmod`/`chown` that fixes it.
//!
//! Errors are `std::io::Error`s whose message says what was found and what was expected, so
//! callers keep wrapping them with the path as they already do.

pub mod owner;
pub mod read;
pub mod root;
pub mod write;

pub use owner::{check_owned, check_owned_dir};
pub use read::{read_limited, read_limited_string, read_private};
pub use root::resolve_in_root;
pub use write::{Replace, create_dir, remove_stale_temps, replace, write_new};

/// What a file type is called in an error ("a FIFO", "a directory", ...).
pub fn kind_name(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "a regular file"
    }
}

pub(crate) fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

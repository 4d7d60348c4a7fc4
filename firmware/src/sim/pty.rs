//! A pseudo-terminal whose slave side is linked at a chosen path, like `/dev/ttyUSB0`
//! appearing when a board is plugged in. The link is removed when the [`Pty`] is dropped.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};

/// The master side (ours) of a pty, with its slave linked at a path.
pub struct Pty {
    master: File,
    /// Kept open so the master never sees a hang-up while no host has the port open.
    _slave: OwnedFd,
    slave_path: PathBuf,
    link: PathBuf,
}

impl Pty {
    /// Opens a pty in raw mode (no echo, no CR/LF translation) and links its slave at `link`.
    /// An existing symlink at `link` is replaced; any other file there is an error.
    pub fn open(link: &Path) -> io::Result<Pty> {
        let pty = nix::pty::openpty(None, None).map_err(io::Error::from)?;
        let mut t = tcgetattr(pty.slave.as_fd()).map_err(io::Error::from)?;
        cfmakeraw(&mut t);
        tcsetattr(pty.slave.as_fd(), SetArg::TCSANOW, &t).map_err(io::Error::from)?;
        let slave_path = nix::unistd::ttyname(pty.slave.as_fd()).map_err(io::Error::from)?;
        match std::fs::symlink_metadata(link) {
            Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(link)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a symlink: choose another --link path",
                        link.display()
                    ),
                ));
            }
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&slave_path, link)?;
        Ok(Pty {
            master: File::from(pty.master),
            _slave: pty.slave,
            slave_path,
            link: link.to_path_buf(),
        })
    }

    /// The slave device, e.g. `/dev/pts/3`.
    pub fn slave_path(&self) -> &Path {
        &self.slave_path
    }

    /// The link path.
    pub fn link(&self) -> &Path {
        &self.link
    }

    /// The master side for reading and writing.
    pub fn master(&self) -> &File {
        &self.master
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if std::fs::read_link(&self.link).is_ok_and(|t| t == self.slave_path) {
            let _ = std::fs::remove_file(&self.link);
        }
    }
}

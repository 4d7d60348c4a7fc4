//! The chip's non-volatile state (EEPROM) and its state file.

use crate::config::{CONFIG_SIZE, ConfigZone, OTP_SIZE, SLOT_COUNT, slot_size};
use nix::fcntl::OFlag;
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::string::String;
use std::vec::Vec;

/// Largest value of a monotonic counter.
pub const COUNTER_MAX: u32 = 2_097_151;

/// Everything the chip keeps across power cycles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NvState {
    pub config: ConfigZone,
    pub otp: [u8; OTP_SIZE],
    pub slots: Vec<Vec<u8>>,
    pub counters: [u32; 2],
}

impl NvState {
    pub fn blank(sn: [u8; 9]) -> Self {
        Self {
            config: ConfigZone::factory_default(sn),
            otp: [0xFF; OTP_SIZE],
            slots: (0..SLOT_COUNT)
                .map(|s| std::vec![0u8; slot_size(s)])
                .collect(),
            counters: [0, 0],
        }
    }

    /// The first 32 bytes of a slot (the key of symmetric operations).
    pub fn key32(&self, slot: usize) -> [u8; 32] {
        let mut k = [0u8; 32];
        if let Some(s) = self.slots.get(slot) {
            k.copy_from_slice(&s[..32]);
        }
        k
    }
}

const FORMAT: &str = "atecc508a-emulator-state/1";

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: String,
    config: String,
    otp: String,
    slots: Vec<String>,
    counters: [u32; 2],
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02X}");
    }
    s
}

fn from_hex(s: &str, what: &str) -> io::Result<Vec<u8>> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            std::format!("state file: {what} is not hex"),
        )
    };
    if !s.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl NvState {
    /// Serialises to the state file text (TOML, hex strings).
    pub fn to_text(&self) -> String {
        let file = StateFile {
            format: FORMAT.into(),
            config: to_hex(&self.config.0),
            otp: to_hex(&self.otp),
            slots: self.slots.iter().map(|s| to_hex(s)).collect(),
            counters: self.counters,
        };
        toml::to_string(&file).unwrap_or_default()
    }

    /// Parses a state file, checking every length.
    pub fn from_text(text: &str) -> io::Result<Self> {
        let file: StateFile =
            toml::from_str(text).map_err(|e| invalid(std::format!("state file: {e}")))?;
        if file.format != FORMAT {
            return Err(invalid(std::format!(
                "state file format {:?}, expected {FORMAT:?}",
                file.format
            )));
        }
        let config =
            ConfigZone::from_slice(&from_hex(&file.config, "config")?).ok_or_else(|| {
                invalid(std::format!(
                    "state file: config must be {CONFIG_SIZE} bytes"
                ))
            })?;
        let otp: [u8; OTP_SIZE] = from_hex(&file.otp, "otp")?
            .try_into()
            .map_err(|_| invalid(std::format!("state file: otp must be {OTP_SIZE} bytes")))?;
        if file.slots.len() != SLOT_COUNT {
            return Err(invalid(std::format!(
                "state file: {SLOT_COUNT} slots expected"
            )));
        }
        let mut slots = Vec::with_capacity(SLOT_COUNT);
        for (n, s) in file.slots.iter().enumerate() {
            let bytes = from_hex(s, "slot")?;
            if bytes.len() != slot_size(n) {
                return Err(invalid(std::format!(
                    "state file: slot {n} must be {} bytes",
                    slot_size(n)
                )));
            }
            slots.push(bytes);
        }
        if file.counters.iter().any(|&c| c > COUNTER_MAX) {
            return Err(invalid("state file: counter above its maximum".into()));
        }
        Ok(Self {
            config,
            otp,
            slots,
            counters: file.counters,
        })
    }

    /// Writes the state atomically: a temporary file in the same directory, fsync, rename,
    /// fsync of the directory. After a crash the file holds the old or the new state.
    ///
    /// The file holds the chip's keys in clear, so it is mode 0600 whatever the umask: the
    /// temporary is created under an unpredictable name (`O_CREAT|O_EXCL|O_NOFOLLOW`, so a
    /// planted file or link is never written through) and its mode is set on the open file.
    pub fn save(&self, path: &Path, durable: bool) -> io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| invalid("state path has no file name".into()))?;
        let (tmp, f) = create_private_temp(dir, name)?;
        let result = (|| {
            let mut f = f;
            // fchmod: exact, whatever the umask did to the mode given at creation
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(self.to_text().as_bytes())?;
            if durable {
                f.sync_all()?;
            }
            drop(f);
            fs::rename(&tmp, path)?;
            // Make the rename itself durable.
            if durable {
                fs::File::open(dir)?.sync_all()
            } else {
                Ok(())
            }
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Loads a state file.
    ///
    /// The file must be a regular file (a FIFO, device or directory is refused at once, never
    /// waited on), not a symbolic link, and at most [`MAX_STATE_FILE`] bytes. A state file
    /// that group or others may access (an older emulator wrote 0644) is ours: it is set to
    /// 0600 through the open file and a warning says so on stderr; if that fails, the load
    /// fails. The error names what is wrong (the caller adds the path).
    pub fn load(path: &Path) -> io::Result<Self> {
        Self::from_text(&read_state_file(path)?)
    }
}

/// Largest state file accepted (a real one is about 3 KiB of TOML).
pub const MAX_STATE_FILE: u64 = 1 << 20;

/// Creates `NAME.tmp.PID.RANDOM` in `dir`, new (never an existing file or link), mode 0600.
fn create_private_temp(dir: &Path, name: &OsStr) -> io::Result<(PathBuf, fs::File)> {
    let mut last = None;
    for _ in 0..8 {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).map_err(|e| {
            io::Error::other(std::format!("no randomness for a temporary file name: {e}"))
        })?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(std::format!(".tmp.{}.{}", std::process::id(), to_hex(&r)));
        let tmp = dir.join(tmp_name);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    std::format!("cannot create the temporary {}: {e}", tmp.display()),
                ));
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no temporary file name was free")))
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

/// Reads a state file as described at [`NvState::load`]. `NotFound` stays `NotFound`.
fn read_state_file(path: &Path) -> io::Result<String> {
    // O_NONBLOCK: opening a FIFO does not wait for a writer (no effect on a regular file).
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "is a symbolic link: the emulator replaces its state file on every write, \
                     so give the path of the file itself",
                )
            } else {
                e
            }
        })?;
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            std::format!(
                "is a {}, not a regular file: a chip state file is a small text file the \
                 emulator writes; give another path",
                file_kind(meta.file_type())
            ),
        ));
    }
    if meta.len() > MAX_STATE_FILE {
        return Err(invalid(std::format!(
            "is {} bytes, more than a state file can be ({MAX_STATE_FILE}): not a chip state file",
            meta.len()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    std::format!(
                        "is accessible to group or others (mode {mode:04o}) and cannot be set to \
                         0600 ({e}): it holds the chip's keys in clear; chmod 600 it"
                    ),
                )
            })?;
        std::eprintln!(
            "atecc emulator: {}: was mode {mode:04o} (accessible to group or others); set to 0600, \
             it holds the chip's keys in clear",
            path.display()
        );
    }
    let mut text = String::new();
    (&f).take(MAX_STATE_FILE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_STATE_FILE {
        return Err(invalid(std::format!(
            "grew beyond {MAX_STATE_FILE} bytes while being read: not a chip state file"
        )));
    }
    Ok(text)
}

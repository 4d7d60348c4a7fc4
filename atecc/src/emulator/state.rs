//! The chip's non-volatile state (EEPROM) and its state file.

use crate::config::{CONFIG_SIZE, ConfigZone, OTP_SIZE, SLOT_COUNT, slot_size};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::path::Path;
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
    pub fn save(&self, path: &Path, durable: bool) -> io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| invalid("state path has no file name".into()))?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(std::format!(".tmp{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
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
    pub fn load(path: &Path) -> io::Result<Self> {
        Self::from_text(&fs::read_to_string(path)?)
    }
}

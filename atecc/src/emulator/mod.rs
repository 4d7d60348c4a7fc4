//! A faithful ATECC508A model (feature `emulator`): the command set of DESIGN.md section 3,
//! the chip's permission rules and status codes, wake/idle/sleep and the watchdog, a state
//! file written atomically, an execution-time model and fault injection.
//!
//! ```
//! use atecc::emulator::Chip;
//! use atecc::packet::{Command, parse_response};
//! let mut chip = Chip::new_blank();
//! assert_eq!(chip.wake(), [0x04, 0x11, 0x33, 0x43]);
//! let mut buf = [0u8; 155];
//! let n = Command::info_revision().encode(&mut buf).unwrap();
//! let frame = chip.transact(&buf[..n]);
//! assert_eq!(parse_response(&frame).unwrap(), &[0x00, 0x00, 0x50, 0x00]);
//! ```
//!
//! Not emulated (answer 0x03): DeriveKey, HMAC, Pause, SHA(Public), Verify
//! Validate/Invalidate, GenDig zones 3–5 (ATECC608 only). WriteConfig PubInvalid is treated as
//! Never.

mod exec;
mod state;

pub use state::COUNTER_MAX;

use crate::client::Transport;
use crate::config::{ConfigZone, OTP_SIZE, SN_PREFIX, SN_SUFFIX};
use crate::host::TempKey;
use crate::opcode::Opcode;
use crate::packet::{Command, MAX_RESPONSE, encode_response};
use crate::status::Status;
use exec::{Env, Volatile};
use sha2::{Digest, Sha256};
use state::NvState;
use std::format;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use std::vec;
use std::vec::Vec;

/// The I2C device did not acknowledge (asleep, busy, or an injected NACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nack;

impl std::fmt::Display for Nack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("I2C NACK: device asleep or busy")
    }
}

impl std::error::Error for Nack {}

/// The execution-time model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Timing {
    /// Responses are ready at once.
    #[default]
    None,
    /// The chip is busy for the typical time of [DS] Table 9-4.
    Typical,
    /// The chip is busy for the maximum time of [DS] Table 9-4.
    Maximum,
}

impl Timing {
    /// How long `opcode` keeps the chip busy.
    pub fn duration(self, opcode: Opcode) -> Duration {
        match self {
            Timing::None => Duration::ZERO,
            Timing::Typical => Duration::from_micros(opcode.typical_us() as u64),
            Timing::Maximum => Duration::from_micros(opcode.max_us() as u64),
        }
    }
}

/// Fault injection for tests: each counter says how many of the next events fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    /// Corrupt the CRC of this many next responses as they are read (the command still took
    /// effect, as on a noisy bus: the host should re-read after a Reset, not re-execute).
    pub response_crc_errors: u32,
    /// NACK this many next I2C transfers (writes or reads).
    pub nacks: u32,
    /// Make this many next ECC operations (GenKey create, Sign, Verify, ECDH) answer 0x05.
    pub ecc_faults: u32,
}

/// Power state of the chip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// Asleep: volatile state lost; only a wake pulse gets an answer.
    Asleep,
    /// Idle: TempKey kept; only a wake pulse gets an answer.
    Idle,
    /// Awake: commands accepted; the watchdog is running.
    Awake,
}

/// The typical watchdog period (ChipMode bit 2 clear).
pub const WATCHDOG: Duration = Duration::from_millis(1300);
/// The long watchdog period (ChipMode bit 2 set).
pub const WATCHDOG_LONG: Duration = Duration::from_secs(10);

/// An emulated ATECC508A.
pub struct Chip {
    nv: NvState,
    vol: Volatile,
    power: Power,
    awake_since: Instant,
    busy_until: Instant,
    output: Vec<u8>,
    output_pos: usize,
    /// An injected CRC error spoils the next delivery of the response's last byte.
    corrupt_output: bool,
    fast_persist: bool,
    timing: Timing,
    faults: Faults,
    path: Option<PathBuf>,
    clock_offset: Duration,
    watchdog_enabled: bool,
}

impl std::fmt::Debug for Chip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chip")
            .field("serial_number", &self.serial_number())
            .field("config_locked", &self.nv.config.is_config_locked())
            .field("data_locked", &self.nv.config.is_data_locked())
            .field("power", &self.power)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn os_random(buf: &mut [u8]) -> Result<(), Status> {
    getrandom::fill(buf).map_err(|_| Status::ExecutionError)
}

impl Chip {
    fn from_nv(nv: NvState) -> Chip {
        let now = Instant::now();
        Chip {
            nv,
            vol: Volatile::default(),
            power: Power::Asleep,
            awake_since: now,
            busy_until: now,
            output: Vec::new(),
            output_pos: 0,
            corrupt_output: false,
            timing: Timing::None,
            fast_persist: false,
            faults: Faults::default(),
            path: None,
            clock_offset: Duration::ZERO,
            watchdog_enabled: true,
        }
    }

    /// A factory-fresh chip, asleep, with serial number `01 23 xx xx xx xx xx xx EE` (random
    /// middle bytes), revision `00 00 50 00`, both zones unlocked.
    pub fn new_blank() -> Chip {
        let mut middle = [0u8; 6];
        // An OS without randomness leaves zeros: still a valid serial number.
        let _ = os_random(&mut middle);
        Self::with_serial_middle(middle)
    }

    /// A factory-fresh chip with the given 6 middle serial-number bytes (for reproducible tests).
    pub fn with_serial_middle(middle: [u8; 6]) -> Chip {
        let mut sn = [0u8; 9];
        sn[..2].copy_from_slice(&SN_PREFIX);
        sn[2..8].copy_from_slice(&middle);
        sn[8] = SN_SUFFIX;
        Self::from_nv(NvState::blank(sn))
    }

    /// Loads the chip from its state file, or creates a blank chip persisted there. Every
    /// later change of non-volatile state is written to the file atomically before the chip
    /// answers. The file holds the keys in clear: it is written 0600 whatever the umask, and a
    /// state file others may access is set to 0600 on load (with a warning on stderr); a
    /// symbolic link, FIFO, device or a file above 1 MiB is refused.
    pub fn open(path: &Path) -> io::Result<Chip> {
        let mut chip = match NvState::load(path) {
            Ok(nv) => Self::from_nv(nv),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let chip = Self::new_blank();
                chip.nv.save(path, true)?;
                chip
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        chip.path = Some(path.to_path_buf());
        Ok(chip)
    }

    /// Where the state is persisted, if anywhere.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// With `true`, state changes are saved atomically (temporary file and rename) but not
    /// fsynced: a killed process still leaves the old or the new state, a host power cut may
    /// lose the last changes. For simulators, where an fsync per command would dwarf the
    /// chip's own execution times.
    pub fn set_fast_persist(&mut self, fast: bool) {
        self.fast_persist = fast;
    }

    /// Selects the execution-time model.
    pub fn set_timing(&mut self, t: Timing) {
        self.timing = t;
    }

    /// Sets the fault-injection counters.
    pub fn set_faults(&mut self, f: Faults) {
        self.faults = f;
    }

    /// The fault counters left.
    pub fn faults(&self) -> Faults {
        self.faults
    }

    /// Turns the watchdog on (default) or off.
    pub fn set_watchdog(&mut self, enabled: bool) {
        self.watchdog_enabled = enabled;
    }

    /// Moves the chip's clock forward (watchdog and busy time) without sleeping.
    pub fn advance_clock(&mut self, by: Duration) {
        self.clock_offset += by;
    }

    fn now(&self) -> Instant {
        Instant::now() + self.clock_offset
    }

    /// The 9-byte serial number.
    pub fn serial_number(&self) -> [u8; 9] {
        self.nv.config.serial_number()
    }

    /// The 8-bit I2C address the chip answers to (config byte 16).
    pub fn i2c_address(&self) -> u8 {
        self.nv.config.i2c_address()
    }

    /// The config zone (inspection; a host reads it with Read).
    pub fn config_zone(&self) -> ConfigZone {
        self.nv.config
    }

    /// The contents of a data slot, secrets included (emulator inspection only).
    pub fn slot(&self, slot: usize) -> Option<&[u8]> {
        self.nv.slots.get(slot).map(Vec::as_slice)
    }

    /// The OTP zone (inspection).
    pub fn otp(&self) -> [u8; OTP_SIZE] {
        self.nv.otp
    }

    /// TempKey, if valid (inspection).
    pub fn tempkey(&self) -> Option<TempKey> {
        self.vol.tempkey
    }

    /// The power state.
    pub fn power(&self) -> Power {
        self.power
    }

    /// A digest of all state a command can change (EEPROM, counters, TempKey, SHA engine):
    /// equal before and after a failed command.
    pub fn state_digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.nv.config.0);
        h.update(self.nv.otp);
        for s in &self.nv.slots {
            h.update(s);
        }
        h.update(self.nv.counters[0].to_le_bytes());
        h.update(self.nv.counters[1].to_le_bytes());
        match &self.vol.tempkey {
            Some(tk) => {
                h.update([1, tk.flags()]);
                h.update(tk.value);
            }
            None => h.update([0]),
        }
        h.update([self.vol.sha.is_some() as u8]);
        h.finalize().into()
    }

    fn watchdog_period(&self) -> Duration {
        if self.nv.config.chip_mode().watchdog_10s() {
            WATCHDOG_LONG
        } else {
            WATCHDOG
        }
    }

    fn go_to_sleep(&mut self) {
        self.power = Power::Asleep;
        self.vol = Volatile::default();
        self.output.clear();
        self.output_pos = 0;
    }

    /// Expires the watchdog if it is due: the chip falls asleep.
    fn tick(&mut self) {
        if self.power == Power::Awake
            && self.watchdog_enabled
            && self.now() >= self.awake_since + self.watchdog_period()
        {
            self.go_to_sleep();
        }
    }

    /// A wake pulse: the chip wakes from sleep or idle, starts its watchdog and answers
    /// `04 11 33 43`.
    pub fn wake(&mut self) -> [u8; 4] {
        self.tick();
        let token = Status::AfterWake.frame();
        if self.power != Power::Awake {
            self.power = Power::Awake;
            self.awake_since = self.now();
            self.busy_until = self.now();
            self.output = token.to_vec();
            self.output_pos = 0;
        }
        token
    }

    fn take_nack_fault(&mut self) -> bool {
        if self.faults.nacks > 0 {
            self.faults.nacks -= 1;
            true
        } else {
            false
        }
    }

    fn is_busy(&self) -> bool {
        self.now() < self.busy_until
    }

    /// An I2C write as the bus sees it: `bytes[0]` is the word address (0x00 reset the output
    /// pointer, 0x01 sleep, 0x02 idle, 0x03 command followed by the packet).
    pub fn i2c_write(&mut self, bytes: &[u8]) -> Result<(), Nack> {
        self.tick();
        if self.power != Power::Awake || self.is_busy() || self.take_nack_fault() {
            return Err(Nack);
        }
        match bytes.split_first() {
            None => Ok(()), // address probe
            Some((0x00, _)) => {
                self.output_pos = 0;
                Ok(())
            }
            Some((0x01, _)) => {
                self.go_to_sleep();
                Ok(())
            }
            Some((0x02, _)) => {
                self.power = Power::Idle;
                self.vol.sha = None;
                Ok(())
            }
            Some((0x03, packet)) => {
                let (frame, busy) = self.execute_packet(packet);
                self.output = frame;
                self.output_pos = 0;
                self.busy_until = self.now() + busy;
                Ok(())
            }
            Some(_) => Err(Nack),
        }
    }

    /// An I2C read of the pending response (count byte first); returns the bytes read.
    pub fn i2c_read(&mut self, buf: &mut [u8]) -> Result<usize, Nack> {
        self.tick();
        if self.power != Power::Awake || self.is_busy() || self.take_nack_fault() {
            return Err(Nack);
        }
        let pending = self.output.get(self.output_pos..).unwrap_or_default();
        let n = pending.len().min(buf.len());
        buf[..n].copy_from_slice(&pending[..n]);
        self.output_pos += n;
        if n > 0 && self.corrupt_output && self.output_pos == self.output.len() {
            // Noise on the bus: this delivery is spoilt, the chip's buffer is not.
            buf[n - 1] ^= 0xA5;
            self.corrupt_output = false;
        }
        Ok(n)
    }

    /// One whole command packet in (count..CRC), the response frame out (count..CRC). Wakes
    /// the chip if it sleeps, waits out the execution time (sleeping with `Timing::Typical`
    /// or `Maximum`) and NACKs, and re-reads a response whose CRC was corrupted by fault
    /// injection only if the caller sends it again.
    pub fn transact(&mut self, packet: &[u8]) -> Vec<u8> {
        let mut write = Vec::with_capacity(packet.len() + 1);
        write.push(0x03);
        write.extend_from_slice(packet);
        if !self.retry(|chip| chip.i2c_write(&write)) {
            return Status::CommError.frame().to_vec();
        }
        let mut count = [0u8; 1];
        if !self.retry(|chip| chip.i2c_read(&mut count).map(|_| ())) {
            return Status::CommError.frame().to_vec();
        }
        let mut frame = vec![0u8; count[0] as usize];
        if let Some(first) = frame.first_mut() {
            *first = count[0];
        }
        let mut got = 0;
        if frame.len() > 1 && !self.retry(|chip| chip.i2c_read(&mut frame[1..]).map(|n| got = n)) {
            return Status::CommError.frame().to_vec();
        }
        frame.truncate(1 + got.min(frame.len().saturating_sub(1)));
        frame
    }

    /// Retries an I2C operation like a host driver: wakes a sleeping chip, waits out busy
    /// time, and gives up after a bounded number of NACKs.
    fn retry(&mut self, mut op: impl FnMut(&mut Chip) -> Result<(), Nack>) -> bool {
        for _ in 0..64 {
            self.tick();
            if self.power != Power::Awake {
                self.wake();
            }
            let now = self.now();
            if now < self.busy_until {
                std::thread::sleep(self.busy_until - now);
            }
            if op(self).is_ok() {
                return true;
            }
        }
        false
    }

    /// Parses and executes one packet; returns the response frame and the busy time.
    fn execute_packet(&mut self, packet: &[u8]) -> (Vec<u8>, Duration) {
        let (result, busy) = match Command::parse(packet) {
            Err(status) => (Err(status), Duration::ZERO),
            Ok(cmd) => {
                let busy = self.timing.duration(cmd.opcode);
                let deadline = self.awake_since + self.watchdog_period();
                if self.watchdog_enabled && self.now() + busy > deadline {
                    (Err(Status::WatchdogExpiring), Duration::ZERO)
                } else {
                    (self.execute_command(&cmd), busy)
                }
            }
        };
        let frame = match result {
            Ok(data) => {
                let mut buf = [0u8; MAX_RESPONSE];
                match encode_response(&data, &mut buf) {
                    Ok(n) => buf[..n].to_vec(),
                    Err(_) => Status::ExecutionError.frame().to_vec(),
                }
            }
            Err(status) => status.frame().to_vec(),
        };
        if self.faults.response_crc_errors > 0 {
            self.faults.response_crc_errors -= 1;
            self.corrupt_output = true;
        }
        (frame, busy)
    }

    /// Runs a command on copies of the state and commits them only on success (and, for a
    /// persisted chip, only once the state file holds the new state).
    fn execute_command(&mut self, cmd: &Command<'_>) -> Result<Vec<u8>, Status> {
        let mut nv = self.nv.clone();
        let mut vol = self.vol.clone();
        let faults = &mut self.faults;
        let mut ecc_fault = || {
            if faults.ecc_faults > 0 {
                faults.ecc_faults -= 1;
                true
            } else {
                false
            }
        };
        let mut rng = os_random;
        let mut env = Env {
            rng: &mut rng,
            ecc_fault: &mut ecc_fault,
        };
        let data = exec::execute(cmd, &mut nv, &mut vol, &mut env)?;
        if nv != self.nv {
            if let Some(path) = &self.path {
                nv.save(path, !self.fast_persist)
                    .map_err(|_| Status::ExecutionError)?;
            }
            self.nv = nv;
        }
        self.vol = vol;
        Ok(data)
    }
}

impl Transport for Chip {
    type Error = Nack;

    fn transact(&mut self, packet: &[u8], response: &mut [u8]) -> Result<usize, Nack> {
        let frame = Chip::transact(self, packet);
        let out = response.get_mut(..frame.len()).ok_or(Nack)?;
        out.copy_from_slice(&frame);
        Ok(frame.len())
    }
}

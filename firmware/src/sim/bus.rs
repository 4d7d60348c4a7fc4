//! The emulated chip on the board's I2C bus, and the chip signer the TLS client uses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atecc::emulator::Chip;

use crate::chip::{Atecc, BusError, I2cBus, OP_SIGN, WORD_COMMAND};
use crate::signer::DigestSigner;

/// [`I2cBus`] over the emulated chip. Counts the Sign commands that reach the chip, whoever
/// sends them (host through the bridge, or the TLS client).
pub struct EmulatedBus {
    chip: Chip,
    signs: Arc<AtomicU64>,
}

impl EmulatedBus {
    /// Puts `chip` on the bus.
    pub fn new(chip: Chip) -> Self {
        EmulatedBus {
            chip,
            signs: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The shared Sign counter.
    pub fn sign_counter(&self) -> Arc<AtomicU64> {
        self.signs.clone()
    }
}

impl I2cBus for EmulatedBus {
    fn wake(&mut self) -> Result<[u8; 4], BusError> {
        Ok(self.chip.wake())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), BusError> {
        self.chip.i2c_write(bytes).map_err(|_| BusError::Nack)?;
        if bytes.first() == Some(&WORD_COMMAND) && bytes.get(2) == Some(&OP_SIGN) {
            self.signs.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, BusError> {
        self.chip.i2c_read(buf).map_err(|_| BusError::Nack)
    }

    fn delay_us(&mut self, us: u32) {
        std::thread::sleep(Duration::from_micros(u64::from(us)));
    }
}

/// The chip shared by the serial bridge and the TLS client.
pub type SharedChip = Arc<Mutex<Atecc<EmulatedBus>>>;

/// Signs TLS handshakes with the chip, but only when the serial host has been quiet for a
/// while: a host session keeps state in the chip (TempKey) between lines, which a Nonce of
/// ours would destroy.
pub struct QuietChipSigner {
    chip: SharedChip,
    slot: u8,
    last_line_ms: Arc<AtomicU64>,
    signs: Arc<AtomicU64>,
}

/// How long the serial host must have been silent before the TLS client uses the chip
/// (longer than the chip's 1.3 s watchdog, after which a host session is over anyway).
pub const QUIET_MS: u64 = 1_500;

impl QuietChipSigner {
    /// A signer for `slot`; `last_line_ms` is when the bridge last handled a line.
    pub fn new(
        chip: SharedChip,
        slot: u8,
        last_line_ms: Arc<AtomicU64>,
        signs: Arc<AtomicU64>,
    ) -> Self {
        QuietChipSigner {
            chip,
            slot,
            last_line_ms,
            signs,
        }
    }

    fn wait_quiet(&self) {
        let deadline = super::now_ms() + 30_000;
        while super::now_ms() < deadline {
            let last = self.last_line_ms.load(Ordering::SeqCst);
            if last == 0 || super::now_ms().saturating_sub(last) >= QUIET_MS {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl DigestSigner for QuietChipSigner {
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], String> {
        self.wait_quiet();
        let mut chip = self
            .chip
            .lock()
            .map_err(|_| "chip lock poisoned".to_string())?;
        let sig = chip
            .sign_digest(self.slot, digest)
            .map_err(|e| format!("chip Sign failed: {e:?}"))?;
        let n = self.signs.load(Ordering::SeqCst);
        eprintln!(
            "sensor-sim: TLS signature made by the chip (slot {}, Sign commands so far: {n})",
            self.slot
        );
        Ok(sig)
    }

    fn public_key(&self) -> Option<[u8; 64]> {
        self.wait_quiet();
        self.chip.lock().ok()?.public_key(self.slot).ok()
    }
}

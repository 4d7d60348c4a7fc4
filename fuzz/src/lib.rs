//! Shared harness pieces for the fuzz targets: a board whose chip is the full emulator on an
//! I2C bus that never sleeps, and a RAM-backed store.

use atecc::emulator::Chip;
use firmware::chip::{BusError, I2cBus};
use firmware::store::{Persist, StorageError};

/// The emulated ATECC508A on an I2C bus whose delays return at once (the emulator answers
/// immediately with the default timing model, so nothing is lost but wall time).
pub struct InstantBus(pub Chip);

impl I2cBus for InstantBus {
    fn wake(&mut self) -> Result<[u8; 4], BusError> {
        Ok(self.0.wake())
    }
    fn write(&mut self, bytes: &[u8]) -> Result<(), BusError> {
        self.0.i2c_write(bytes).map_err(|_| BusError::Nack)
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, BusError> {
        self.0.i2c_read(buf).map_err(|_| BusError::Nack)
    }
    fn delay_us(&mut self, _us: u32) {}
}

/// The device store's image in RAM, as the flash would hold it.
#[derive(Default)]
pub struct RamPersist {
    image: Vec<u8>,
}

impl Persist for RamPersist {
    fn load(&mut self, buf: &mut [u8]) -> Result<usize, StorageError> {
        let n = self.image.len().min(buf.len());
        buf[..n].copy_from_slice(&self.image[..n]);
        Ok(n)
    }
    fn save(&mut self, image: &[u8]) -> Result<(), StorageError> {
        self.image = image.to_vec();
        Ok(())
    }
}

//! The SX127x backend: the real `sx127x_lora` 0.3.1 driver, plus direct register accesses
//! that work around its known bugs (`reference/lora.md` §1):
//!
//! * **Whole MHz only**: after `LoRa::new`, Frf (0x06..0x08) is written for the exact
//!   frequency.
//! * **LDRO at SF11/BW125** computed wrong: bit 3 of 0x26 is set from the datasheet rule.
//! * **Implicit header broken**: never used (explicit header always; SF6 refused).
//! * **`poll_irq` ignores PayloadCrcError and can abort a TX**: `poll_irq` is not used; the
//!   backend enters RX with `set_mode(RxContinuous)` only after `transmitting()` is false,
//!   polls RegIrqFlags itself, drops packets with the CRC-error flag or without a CRC in their
//!   header, and only then calls `read_packet`.
//! * **TxDone never cleared**: cleared here after each transmission.
//! * **Sync word** never written: written explicitly (0x12 unless configured otherwise).
//! * **SNR** returned raw: read here as a signed quarter-dB value.
//!
//! The driver owns the SPI bus and CS pin, and its register accessors are private, so both
//! are wrapped in [`Shared`] handles: the driver gets one clone, the backend keeps another.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use embedded_hal_02::blocking::delay::DelayMs;
use embedded_hal_02::blocking::spi::{Transfer, Write};
use embedded_hal_02::digital::v2::OutputPin;
use sx127x_lora::{LoRa, RadioMode};

use super::{Radio, RadioError, RadioSettings, RxPacket};
use crate::airtime::Modulation;

/// SX127x register addresses used here.
pub mod reg {
    /// FIFO.
    pub const FIFO: u8 = 0x00;
    /// Operating mode.
    pub const OP_MODE: u8 = 0x01;
    /// Carrier frequency, MSB.
    pub const FRF_MSB: u8 = 0x06;
    /// Carrier frequency, middle byte.
    pub const FRF_MID: u8 = 0x07;
    /// Carrier frequency, LSB.
    pub const FRF_LSB: u8 = 0x08;
    /// PA configuration.
    pub const PA_CONFIG: u8 = 0x09;
    /// FIFO SPI pointer.
    pub const FIFO_ADDR_PTR: u8 = 0x0D;
    /// FIFO TX base.
    pub const FIFO_TX_BASE: u8 = 0x0E;
    /// FIFO RX base.
    pub const FIFO_RX_BASE: u8 = 0x0F;
    /// Start of the last received packet.
    pub const FIFO_RX_CURRENT: u8 = 0x10;
    /// IRQ flags (write 1 to clear).
    pub const IRQ_FLAGS: u8 = 0x12;
    /// Length of the last received packet.
    pub const RX_NB_BYTES: u8 = 0x13;
    /// SNR of the last packet (signed, quarter dB).
    pub const PKT_SNR: u8 = 0x19;
    /// RSSI of the last packet (dBm + 157 on the HF port).
    pub const PKT_RSSI: u8 = 0x1A;
    /// Modem status / header info (bit 6 of 0x1C: CRC present in the received header).
    pub const HOP_CHANNEL: u8 = 0x1C;
    /// BW, CR, implicit header.
    pub const MODEM_CONFIG1: u8 = 0x1D;
    /// SF, CRC on.
    pub const MODEM_CONFIG2: u8 = 0x1E;
    /// Preamble length MSB.
    pub const PREAMBLE_MSB: u8 = 0x20;
    /// Preamble length LSB.
    pub const PREAMBLE_LSB: u8 = 0x21;
    /// Payload length.
    pub const PAYLOAD_LENGTH: u8 = 0x22;
    /// LDRO (bit 3), AGC auto (bit 2).
    pub const MODEM_CONFIG3: u8 = 0x26;
    /// Sync word.
    pub const SYNC_WORD: u8 = 0x39;
    /// Silicon version (0x12).
    pub const VERSION: u8 = 0x42;
}

/// IRQ flag bits of RegIrqFlags.
pub mod irq {
    /// RxTimeout.
    pub const RX_TIMEOUT: u8 = 0x80;
    /// RxDone.
    pub const RX_DONE: u8 = 0x40;
    /// PayloadCrcError.
    pub const PAYLOAD_CRC_ERROR: u8 = 0x20;
    /// ValidHeader.
    pub const VALID_HEADER: u8 = 0x10;
    /// TxDone.
    pub const TX_DONE: u8 = 0x08;
}

/// Bandwidth code of RegModemConfig1 bits 7..4.
pub fn bw_code(bw_hz: u32) -> u8 {
    match bw_hz {
        7_800 => 0,
        10_400 => 1,
        15_600 => 2,
        20_800 => 3,
        31_250 => 4,
        41_700 => 5,
        62_500 => 6,
        125_000 => 7,
        250_000 => 8,
        _ => 9,
    }
}

/// Bandwidth in Hz of a RegModemConfig1 code.
pub fn bw_from_code(code: u8) -> u32 {
    match code {
        0 => 7_800,
        1 => 10_400,
        2 => 15_600,
        3 => 20_800,
        4 => 31_250,
        5 => 41_700,
        6 => 62_500,
        7 => 125_000,
        8 => 250_000,
        _ => 500_000,
    }
}

/// Frf register value for a frequency: f * 2^19 / 32 MHz.
pub fn frf_for(frequency_hz: u32) -> u32 {
    ((u64::from(frequency_hz) << 19) / 32_000_000) as u32
}

/// A handle to a device shared between the driver and this backend (embedded-hal 0.2 traits
/// are forwarded).
#[derive(Debug)]
pub struct Shared<T>(Arc<Mutex<T>>);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Shared<T> {
    /// Wraps a device.
    pub fn new(inner: T) -> Self {
        Self(Arc::new(Mutex::new(inner)))
    }
    fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T: Transfer<u8>> Transfer<u8> for Shared<T> {
    type Error = T::Error;
    fn transfer<'w>(&mut self, words: &'w mut [u8]) -> Result<&'w [u8], Self::Error> {
        self.lock().transfer(words)?;
        Ok(words)
    }
}

impl<T: Write<u8>> Write<u8> for Shared<T> {
    type Error = T::Error;
    fn write(&mut self, words: &[u8]) -> Result<(), Self::Error> {
        self.lock().write(words)
    }
}

impl<T: OutputPin> OutputPin for Shared<T> {
    type Error = T::Error;
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.lock().set_low()
    }
    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.lock().set_high()
    }
}

impl<T: DelayMs<u8>> DelayMs<u8> for Shared<T> {
    fn delay_ms(&mut self, ms: u8) {
        self.lock().delay_ms(ms)
    }
}

/// Counters of the radio backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RadioStats {
    /// Frames transmitted.
    pub tx_frames: u64,
    /// Packets received and returned.
    pub rx_packets: u64,
    /// Packets dropped for a payload CRC error.
    pub rx_crc_errors: u64,
    /// Packets dropped for having no CRC.
    pub rx_no_crc: u64,
}

fn drv<E: std::fmt::Debug>(e: E) -> RadioError {
    let s = format!("{e:?}");
    match s.strip_prefix("VersionMismatch(") {
        Some(rest) => RadioError::VersionMismatch(rest.trim_end_matches(')').parse().unwrap_or(0)),
        None => RadioError::Driver(s),
    }
}

/// The `sx127x_lora` driver with the workarounds described in the module documentation.
pub struct Sx127x<SPI, CS, RST, D>
where
    SPI: Transfer<u8> + Write<u8>,
    CS: OutputPin,
    RST: OutputPin,
    D: DelayMs<u8>,
{
    lora: LoRa<Shared<SPI>, Shared<CS>, RST, Shared<D>>,
    spi: Shared<SPI>,
    cs: Shared<CS>,
    delay: Shared<D>,
    settings: RadioSettings,
    receiving: bool,
    stats: RadioStats,
}

impl<SPI, CS, RST, D, E> Sx127x<SPI, CS, RST, D>
where
    SPI: Transfer<u8, Error = E> + Write<u8, Error = E>,
    E: std::fmt::Debug,
    CS: OutputPin,
    CS::Error: std::fmt::Debug,
    RST: OutputPin,
    RST::Error: std::fmt::Debug,
    D: DelayMs<u8>,
{
    /// Resets and configures the chip through the driver, then applies the workarounds and
    /// reads the modem registers back.
    pub fn new(
        spi: SPI,
        cs: CS,
        reset: RST,
        delay: D,
        settings: &RadioSettings,
    ) -> Result<Self, RadioError> {
        let m = settings.modulation;
        if !(7..=12).contains(&m.sf) {
            return Err(RadioError::Unavailable(format!(
                "SF{} not supported (SF6 needs the implicit header that sx127x_lora 0.3.1 breaks)",
                m.sf
            )));
        }
        let spi = Shared::new(spi);
        let cs = Shared::new(cs);
        let delay = Shared::new(delay);
        let mhz = i64::from(settings.frequency_hz / 1_000_000);
        let lora = LoRa::new(spi.clone(), cs.clone(), reset, mhz, delay.clone()).map_err(drv)?;
        let mut r = Self {
            lora,
            spi,
            cs,
            delay,
            settings: settings.clone(),
            receiving: false,
            stats: RadioStats::default(),
        };
        r.configure()?;
        Ok(r)
    }

    fn configure(&mut self) -> Result<(), RadioError> {
        let s = self.settings.clone();
        let m = s.modulation;
        let l = &mut self.lora;
        l.set_spreading_factor(m.sf).map_err(drv)?;
        l.set_signal_bandwidth(i64::from(m.bw_hz)).map_err(drv)?;
        l.set_coding_rate_4(m.cr).map_err(drv)?;
        l.set_preamble_length(i64::from(m.preamble)).map_err(drv)?;
        l.set_crc(m.crc).map_err(drv)?;
        l.set_tx_power(i32::from(s.tx_power_dbm), u8::from(s.pa_boost))
            .map_err(drv)?;
        // exact frequency (the driver only knows whole MHz)
        let frf = frf_for(s.frequency_hz);
        self.write_reg(reg::FRF_MSB, (frf >> 16) as u8)?;
        self.write_reg(reg::FRF_MID, (frf >> 8) as u8)?;
        self.write_reg(reg::FRF_LSB, frf as u8)?;
        // LDRO from the datasheet rule (the driver leaves it off at SF11/BW125)
        let c3 = self.read_reg(reg::MODEM_CONFIG3)?;
        let c3 = if m.ldro { c3 | 0x08 } else { c3 & !0x08 };
        self.write_reg(reg::MODEM_CONFIG3, c3)?;
        self.write_reg(reg::SYNC_WORD, s.sync_word)?;
        // read back what matters
        let c1 = (bw_code(m.bw_hz) << 4) | ((m.cr - 4) << 1);
        self.expect_reg(reg::MODEM_CONFIG1, c1, 0xFF)?;
        let c2 = (m.sf << 4) | if m.crc { 0x04 } else { 0 };
        self.expect_reg(reg::MODEM_CONFIG2, c2, 0xF4)?;
        self.expect_reg(reg::MODEM_CONFIG3, if m.ldro { 0x08 } else { 0 }, 0x08)?;
        self.expect_reg(reg::FRF_MSB, (frf >> 16) as u8, 0xFF)?;
        Ok(())
    }

    fn expect_reg(&mut self, reg: u8, expected: u8, mask: u8) -> Result<(), RadioError> {
        let found = self.read_reg(reg)?;
        if found & mask != expected & mask {
            return Err(RadioError::ConfigMismatch {
                reg,
                found,
                expected,
            });
        }
        Ok(())
    }

    /// Reads a register directly (CS low, `[addr & 0x7F, 0]`, CS high).
    pub fn read_reg(&mut self, addr: u8) -> Result<u8, RadioError> {
        self.cs.set_low().map_err(drv)?;
        let mut b = [addr & 0x7F, 0];
        let r = self.spi.transfer(&mut b).map(|_| ()).map_err(drv);
        self.cs.set_high().map_err(drv)?;
        r?;
        Ok(b[1])
    }

    /// Writes a register directly (CS low, `[addr | 0x80, value]`, CS high).
    pub fn write_reg(&mut self, addr: u8, value: u8) -> Result<(), RadioError> {
        self.cs.set_low().map_err(drv)?;
        let r = self.spi.write(&[addr | 0x80, value]).map_err(drv);
        self.cs.set_high().map_err(drv)?;
        r
    }

    /// The settings in force.
    pub fn settings(&self) -> &RadioSettings {
        &self.settings
    }

    /// Backend counters.
    pub fn stats(&self) -> &RadioStats {
        &self.stats
    }

    fn wait_tx_done(&mut self, limit: Duration) -> Result<(), RadioError> {
        let start = Instant::now();
        while self.lora.transmitting().map_err(drv)? {
            if start.elapsed() > limit {
                return Err(RadioError::TxTimeout(limit));
            }
            self.delay.delay_ms(1);
        }
        Ok(())
    }

    fn tx_limit(&self, len: usize) -> Duration {
        self.settings.modulation.time_on_air(len) * 2 + Duration::from_secs(1)
    }
}

impl<SPI, CS, RST, D, E> Radio for Sx127x<SPI, CS, RST, D>
where
    SPI: Transfer<u8, Error = E> + Write<u8, Error = E>,
    E: std::fmt::Debug,
    CS: OutputPin,
    CS::Error: std::fmt::Debug,
    RST: OutputPin,
    RST::Error: std::fmt::Debug,
    D: DelayMs<u8>,
{
    fn transmit(&mut self, frame: &[u8]) -> Result<(), RadioError> {
        if frame.len() > 255 {
            return Err(RadioError::TooLong(frame.len()));
        }
        // never start while a previous frame is still going out
        self.wait_tx_done(self.tx_limit(255))?;
        let mut buf = [0u8; 255];
        buf[..frame.len()].copy_from_slice(frame);
        self.receiving = false;
        self.lora.transmit_payload(buf, frame.len()).map_err(drv)?;
        self.wait_tx_done(self.tx_limit(frame.len()))?;
        // TxDone is never cleared by the driver
        self.write_reg(reg::IRQ_FLAGS, irq::TX_DONE)?;
        self.stats.tx_frames += 1;
        Ok(())
    }

    fn listen(&mut self) -> Result<(), RadioError> {
        if !self.receiving {
            // entering RX during a transmission would abort it (the poll_irq bug)
            self.wait_tx_done(self.tx_limit(255))?;
            self.lora.set_mode(RadioMode::RxContinuous).map_err(drv)?;
            self.receiving = true;
        }
        Ok(())
    }

    fn receive(&mut self, timeout: Duration) -> Result<Option<RxPacket>, RadioError> {
        let start = Instant::now();
        self.listen()?;
        loop {
            let flags = self.read_reg(reg::IRQ_FLAGS)?;
            if flags & irq::RX_DONE != 0 {
                let rssi_dbm = i32::from(self.read_reg(reg::PKT_RSSI)?) - 157;
                if flags & irq::PAYLOAD_CRC_ERROR != 0 {
                    self.write_reg(reg::IRQ_FLAGS, flags)?;
                    self.stats.rx_crc_errors += 1;
                    return Err(RadioError::PayloadCrc { rssi_dbm });
                }
                if self.read_reg(reg::HOP_CHANNEL)? & 0x40 == 0 {
                    self.write_reg(reg::IRQ_FLAGS, flags)?;
                    self.stats.rx_no_crc += 1;
                    return Err(RadioError::NoCrc);
                }
                let len = usize::from(self.read_reg(reg::RX_NB_BYTES)?);
                let buf = self.lora.read_packet().map_err(drv)?;
                let snr_db = f32::from(self.read_reg(reg::PKT_SNR)? as i8) / 4.0;
                self.stats.rx_packets += 1;
                return Ok(Some(RxPacket {
                    bytes: buf[..len.min(255)].to_vec(),
                    rssi_dbm,
                    snr_db,
                }));
            }
            if start.elapsed() >= timeout {
                return Ok(None);
            }
            self.delay.delay_ms(1);
        }
    }
}

/// The real driver on an emulated SX1276 attached to a `lora-link air` hub.
pub type EmulatedSx127x =
    Sx127x<super::emu::EmuSpi, super::emu::EmuPin, super::emu::EmuPin, super::emu::EmuDelay>;

/// An emulated SX1276 on the hub at `hub`, driven by the real `sx127x_lora` driver.
pub fn emulated(
    hub: std::net::SocketAddr,
    settings: &RadioSettings,
) -> Result<EmulatedSx127x, RadioError> {
    let port = crate::air::AirPort::connect(hub)
        .map_err(|e| RadioError::Unavailable(format!("air hub {hub}: {e}")))?;
    let chip = super::emu::Sx1276::new(Some(port));
    Sx127x::new(
        chip.spi(),
        chip.cs(),
        chip.reset(),
        super::emu::EmuDelay,
        settings,
    )
}

/// Modulation as the chip's registers describe it (used by the emulator for time on air).
pub fn modulation_from_regs(c1: u8, c2: u8, c3: u8, preamble: u16) -> Modulation {
    Modulation {
        sf: (c2 >> 4).clamp(6, 12),
        bw_hz: bw_from_code(c1 >> 4),
        cr: ((c1 >> 1) & 0x07).clamp(1, 4) + 4,
        preamble,
        crc: c2 & 0x04 != 0,
        explicit_header: c1 & 0x01 == 0,
        ldro: c3 & 0x08 != 0,
    }
}

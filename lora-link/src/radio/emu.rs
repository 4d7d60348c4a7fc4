//! An SX1276 emulated at register level behind the embedded-hal 0.2 traits, so the real
//! `sx127x_lora` driver runs against it. It models what the driver and this crate use
//! (`reference/lora.md` §1 "What an emulator must do"): reset values on the RESET edge,
//! 2-byte (and burst) SPI frames decoded by bit 7, NSS honoured, a 256-byte FIFO behind
//! RegFifoAddrPtr, write-1-to-clear RegIrqFlags, TX of RegPayloadLength bytes from
//! RegFifoTxBaseAddr lasting the real time on air (from the chip's own SF/BW/CR/CRC/LDRO
//! registers) then TxDone and STDBY, RX continuous/single storing packets at the RX base
//! with RxNbBytes, RSSI/SNR, ValidHeader, CrcOnPayload and PayloadCrcError.
//!
//! Radio frames travel over an [`AirPort`] to a `lora-link air` hub; a receiving chip
//! ignores frames on another frequency, SF, BW, LDRO setting or sync word, and frames that
//! started before it entered RX. While the host polls the chip (every `RegOpMode` or
//! `RegIrqFlags` read lets time pass), its port says hello to the hub every
//! [`crate::air::KEEPALIVE`], so a restarted hub knows the chip again without a restart.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use embedded_hal_02::blocking::delay::DelayMs;
use embedded_hal_02::blocking::spi::{Transfer, Write};
use embedded_hal_02::digital::v2::OutputPin;

use super::sx127x::{frf_for, irq, modulation_from_regs, reg};
use crate::air::{AirFrame, AirMsg, AirPort, now_us};

/// Counters of the emulated chip.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmuStats {
    /// Frames transmitted.
    pub tx_frames: u64,
    /// Frames received into the FIFO.
    pub rx_frames: u64,
    /// Of those, with a payload CRC error.
    pub rx_crc_errors: u64,
    /// Frames heard on the air but on other settings (frequency, SF, BW, LDRO, sync word).
    pub rx_other_channel: u64,
    /// Frames missed because the chip was not in RX when they started.
    pub rx_missed: u64,
    /// Packets overwritten by the next one before the host read them.
    pub rx_overruns: u64,
    /// SPI transfers while NSS was high or RESET low (ignored, as the chip does).
    pub spi_ignored: u64,
    /// Number of resets.
    pub resets: u64,
}

#[derive(Debug)]
struct Chip {
    regs: [u8; 0x80],
    fifo: [u8; 256],
    nss_low: bool,
    in_reset: bool,
    tx_end: Option<(Instant, AirFrame)>,
    rx_since_us: Option<u64>,
    air: Option<AirPort>,
    stats: EmuStats,
}

impl Chip {
    fn reset_registers(&mut self) {
        self.regs = [0; 0x80];
        let r = &mut self.regs;
        r[usize::from(reg::OP_MODE)] = 0x09;
        r[usize::from(reg::FRF_MSB)] = 0x6C;
        r[usize::from(reg::FRF_MID)] = 0x80;
        r[usize::from(reg::FRF_LSB)] = 0x00;
        r[usize::from(reg::PA_CONFIG)] = 0x4F;
        r[0x0B] = 0x2B;
        r[0x0C] = 0x20;
        r[usize::from(reg::FIFO_TX_BASE)] = 0x80;
        r[usize::from(reg::FIFO_RX_BASE)] = 0x00;
        r[usize::from(reg::MODEM_CONFIG1)] = 0x72;
        r[usize::from(reg::MODEM_CONFIG2)] = 0x70;
        r[0x1F] = 0x64;
        r[usize::from(reg::PREAMBLE_LSB)] = 0x08;
        r[usize::from(reg::PAYLOAD_LENGTH)] = 0x01;
        r[0x23] = 0xFF;
        r[0x24] = 0x00;
        r[usize::from(reg::MODEM_CONFIG3)] = 0x04;
        r[0x31] = 0xC3;
        r[0x33] = 0x27;
        r[0x37] = 0x0A;
        r[usize::from(reg::SYNC_WORD)] = 0x12;
        r[0x3B] = 0x1D;
        r[usize::from(reg::VERSION)] = 0x12;
        r[0x4D] = 0x84;
        self.fifo = [0; 256];
        self.tx_end = None;
        self.rx_since_us = None;
        self.stats.resets += 1;
    }

    fn mode(&self) -> u8 {
        self.regs[usize::from(reg::OP_MODE)] & 0x07
    }

    fn set_mode_bits(&mut self, mode: u8) {
        let r = &mut self.regs[usize::from(reg::OP_MODE)];
        *r = (*r & !0x07) | mode;
    }

    fn freq_hz(&self) -> u32 {
        let frf =
            u32::from(self.regs[6]) << 16 | u32::from(self.regs[7]) << 8 | u32::from(self.regs[8]);
        ((u64::from(frf) * 32_000_000) >> 19) as u32
    }

    fn modulation(&self) -> crate::airtime::Modulation {
        let r = &self.regs;
        let preamble = u16::from(r[usize::from(reg::PREAMBLE_MSB)]) << 8
            | u16::from(r[usize::from(reg::PREAMBLE_LSB)]);
        modulation_from_regs(
            r[usize::from(reg::MODEM_CONFIG1)],
            r[usize::from(reg::MODEM_CONFIG2)],
            r[usize::from(reg::MODEM_CONFIG3)],
            preamble,
        )
    }

    /// Time passes: finish a transmission, take frames from the air.
    fn tick(&mut self) {
        if let Some((end, _)) = &self.tx_end
            && Instant::now() >= *end
            && let Some((_, frame)) = self.tx_end.take()
        {
            if let Some(air) = &self.air {
                let _ = air.send(&AirMsg::Tx(frame));
            }
            self.stats.tx_frames += 1;
            self.regs[usize::from(reg::IRQ_FLAGS)] |= irq::TX_DONE;
            self.set_mode_bits(1);
        }
        let frames = match &self.air {
            Some(a) => a.drain(),
            None => Vec::new(),
        };
        for f in frames {
            self.hear(f);
        }
    }

    fn hear(&mut self, f: AirFrame) {
        // LORA_EMU_TRACE=1: say on stderr why a frame on the air did not reach the host.
        let trace = std::env::var_os("LORA_EMU_TRACE").is_some();
        let (Some(since), 5 | 6) = (self.rx_since_us, self.mode()) else {
            self.stats.rx_missed += 1;
            if trace {
                eprintln!(
                    "sx1276 emulator: frame missed: not receiving (mode {})",
                    self.mode()
                );
            }
            return;
        };
        if f.start_us < since {
            self.stats.rx_missed += 1;
            if trace {
                eprintln!("sx1276 emulator: frame missed: it started before receive mode");
            }
            return;
        }
        if self.regs[usize::from(reg::IRQ_FLAGS)] & irq::RX_DONE != 0 {
            // the previous packet was never read: this one overwrites it, as on the chip
            self.stats.rx_overruns += 1;
            if trace {
                eprintln!("sx1276 emulator: overrun: the host did not read the previous packet");
            }
        }
        let m = self.modulation();
        let tolerance = m.bw_hz / 4;
        if self.freq_hz().abs_diff(f.freq_hz) > tolerance
            || m.sf != f.sf
            || m.bw_hz != f.bw_hz
            || m.ldro != f.ldro
            || self.regs[usize::from(reg::SYNC_WORD)] != f.sync_word
        {
            self.stats.rx_other_channel += 1;
            return;
        }
        let base = self.regs[usize::from(reg::FIFO_RX_BASE)];
        let len = f.payload.len().min(255);
        for (i, b) in f.payload.iter().take(len).enumerate() {
            self.fifo[usize::from(base.wrapping_add(i as u8))] = *b;
        }
        let r = &mut self.regs;
        r[usize::from(reg::FIFO_RX_CURRENT)] = base;
        r[usize::from(reg::RX_NB_BYTES)] = len as u8;
        r[usize::from(reg::PKT_RSSI)] = (i32::from(f.rssi_dbm) + 157).clamp(0, 255) as u8;
        r[usize::from(reg::PKT_SNR)] = f.snr_q4 as u8;
        let hop = &mut r[usize::from(reg::HOP_CHANNEL)];
        *hop = if f.crc { *hop | 0x40 } else { *hop & !0x40 };
        let mut flags = irq::RX_DONE | irq::VALID_HEADER;
        if f.crc && f.crc_error {
            flags |= irq::PAYLOAD_CRC_ERROR;
            self.stats.rx_crc_errors += 1;
        }
        r[usize::from(reg::IRQ_FLAGS)] |= flags;
        self.stats.rx_frames += 1;
        if self.mode() == 6 {
            self.set_mode_bits(1);
            self.rx_since_us = None;
        }
    }

    fn read(&mut self, addr: u8) -> u8 {
        let a = usize::from(addr & 0x7F);
        if addr == reg::FIFO {
            let p = &mut self.regs[usize::from(reg::FIFO_ADDR_PTR)];
            let v = self.fifo[usize::from(*p)];
            *p = p.wrapping_add(1);
            return v;
        }
        if addr == reg::OP_MODE || addr == reg::IRQ_FLAGS {
            self.tick();
        }
        self.regs[a]
    }

    fn write(&mut self, addr: u8, v: u8) {
        let a = usize::from(addr & 0x7F);
        match addr {
            reg::FIFO => {
                let p = &mut self.regs[usize::from(reg::FIFO_ADDR_PTR)];
                self.fifo[usize::from(*p)] = v;
                *p = p.wrapping_add(1);
            }
            reg::IRQ_FLAGS => self.regs[a] &= !v,
            reg::VERSION
            | reg::RX_NB_BYTES
            | reg::FIFO_RX_CURRENT
            | reg::PKT_RSSI
            | reg::PKT_SNR => {}
            reg::OP_MODE => self.write_op_mode(v),
            _ => self.regs[a] = v,
        }
    }

    fn write_op_mode(&mut self, v: u8) {
        let old = self.regs[usize::from(reg::OP_MODE)];
        // LongRangeMode can only change in Sleep
        let v = if old & 0x07 != 0 {
            (v & 0x7F) | (old & 0x80)
        } else {
            v
        };
        let mode = v & 0x07;
        self.regs[usize::from(reg::OP_MODE)] = v;
        if self.tx_end.is_some() && mode != 3 {
            // leaving TX early aborts the transmission: nothing reaches the air
            self.tx_end = None;
        }
        match mode {
            3 if v & 0x80 != 0 && self.tx_end.is_none() => self.start_tx(),
            5 | 6 if v & 0x80 != 0 => {
                if self.rx_since_us.is_none() {
                    self.rx_since_us = Some(now_us());
                }
            }
            _ => self.rx_since_us = None,
        }
    }

    fn start_tx(&mut self) {
        self.rx_since_us = None;
        let len = usize::from(self.regs[usize::from(reg::PAYLOAD_LENGTH)]);
        let base = self.regs[usize::from(reg::FIFO_TX_BASE)];
        let payload: Vec<u8> = (0..len)
            .map(|i| self.fifo[usize::from(base.wrapping_add(i as u8))])
            .collect();
        let m = self.modulation();
        let toa = m.time_on_air(len);
        let start = now_us();
        let frame = AirFrame {
            freq_hz: self.freq_hz(),
            sf: m.sf,
            bw_hz: m.bw_hz,
            cr: m.cr,
            crc: m.crc,
            ldro: m.ldro,
            sync_word: self.regs[usize::from(reg::SYNC_WORD)],
            crc_error: false,
            rssi_dbm: -60,
            snr_q4: 36,
            start_us: start,
            toa_us: toa.as_micros() as u64,
            payload,
        };
        self.tx_end = Some((Instant::now() + toa, frame));
    }

    fn spi(&mut self, words: &mut [u8], reply: bool) {
        if !self.nss_low || self.in_reset {
            self.stats.spi_ignored += 1;
            words.iter_mut().skip(1).for_each(|w| *w = 0);
            return;
        }
        let Some((&mut first, rest)) = words.split_first_mut() else {
            return;
        };
        let write = first & 0x80 != 0;
        let mut addr = first & 0x7F;
        for w in rest.iter_mut() {
            if write {
                self.write(addr, *w);
            } else {
                let v = self.read(addr);
                if reply {
                    *w = v;
                }
            }
            if addr != reg::FIFO {
                addr = (addr + 1) & 0x7F;
            }
        }
    }
}

/// The emulated chip. Cloning gives another handle to the same chip.
#[derive(Debug, Clone)]
pub struct Sx1276(Arc<Mutex<Chip>>);

impl Sx1276 {
    /// A chip (powered up, registers at reset values), optionally attached to the air.
    pub fn new(air: Option<AirPort>) -> Self {
        let mut chip = Chip {
            regs: [0; 0x80],
            fifo: [0; 256],
            nss_low: false,
            in_reset: false,
            tx_end: None,
            rx_since_us: None,
            air,
            stats: EmuStats::default(),
        };
        chip.reset_registers();
        chip.stats.resets = 0;
        Self(Arc::new(Mutex::new(chip)))
    }

    fn lock(&self) -> MutexGuard<'_, Chip> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The SPI bus to the chip.
    pub fn spi(&self) -> EmuSpi {
        EmuSpi(self.clone())
    }
    /// The NSS (chip select) line.
    pub fn cs(&self) -> EmuPin {
        EmuPin(self.clone(), PinRole::Nss)
    }
    /// The RESET line.
    pub fn reset(&self) -> EmuPin {
        EmuPin(self.clone(), PinRole::Reset)
    }
    /// Reads a register without side effects (tests, diagnostics).
    pub fn peek(&self, addr: u8) -> u8 {
        self.lock().regs[usize::from(addr & 0x7F)]
    }
    /// Whether the chip is in RX (continuous or single) mode.
    pub fn is_receiving(&self) -> bool {
        let c = self.lock();
        matches!(c.mode(), 5 | 6) && c.rx_since_us.is_some()
    }
    /// The chip's carrier frequency from its Frf registers.
    pub fn frequency_hz(&self) -> u32 {
        self.lock().freq_hz()
    }
    /// Counters.
    pub fn stats(&self) -> EmuStats {
        self.lock().stats.clone()
    }
    /// Lets time pass (finishes TX, takes frames from the air) without an SPI access.
    pub fn tick(&self) {
        self.lock().tick();
    }
    /// Frf value the chip would need for a frequency (convenience re-export).
    pub fn frf_for(frequency_hz: u32) -> u32 {
        frf_for(frequency_hz)
    }
}

/// SPI bus of an emulated chip (e-h 0.2 blocking `Transfer<u8>` + `Write<u8>`).
#[derive(Debug, Clone)]
pub struct EmuSpi(Sx1276);

impl Transfer<u8> for EmuSpi {
    type Error = Infallible;
    fn transfer<'w>(&mut self, words: &'w mut [u8]) -> Result<&'w [u8], Infallible> {
        self.0.lock().spi(words, true);
        Ok(words)
    }
}

impl Write<u8> for EmuSpi {
    type Error = Infallible;
    fn write(&mut self, words: &[u8]) -> Result<(), Infallible> {
        let mut w = words.to_vec();
        self.0.lock().spi(&mut w, false);
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PinRole {
    Nss,
    Reset,
}

/// NSS or RESET line of an emulated chip (e-h 0.2 `OutputPin`).
#[derive(Debug, Clone)]
pub struct EmuPin(Sx1276, PinRole);

impl OutputPin for EmuPin {
    type Error = Infallible;
    fn set_low(&mut self) -> Result<(), Infallible> {
        let mut c = self.0.lock();
        match self.1 {
            PinRole::Nss => c.nss_low = true,
            PinRole::Reset => c.in_reset = true,
        }
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        let mut c = self.0.lock();
        match self.1 {
            PinRole::Nss => c.nss_low = false,
            PinRole::Reset => {
                if c.in_reset {
                    c.reset_registers();
                }
                c.in_reset = false;
            }
        }
        Ok(())
    }
}

/// Delay for the emulated setup: really sleeps (the chip's time on air is real time).
#[derive(Debug, Clone, Copy, Default)]
pub struct EmuDelay;

impl DelayMs<u8> for EmuDelay {
    fn delay_ms(&mut self, ms: u8) {
        std::thread::sleep(Duration::from_millis(u64::from(ms)));
    }
}

//! Time on air of a LoRa frame (Semtech SX1276 datasheet §4.1.1.6-7, AN1200.13) and the
//! largest frame each spreading factor may carry.
//!
//! Everything is exact integer arithmetic: with BW 125/250/500 kHz the symbol time is a whole
//! number of nanoseconds, so the reference's worked values come out to the microsecond.
//!
//! ```
//! use lora_link::airtime::{Modulation, format_ms};
//! let m = Modulation::new(7, 125_000, 5).expect("valid");
//! assert_eq!(format_ms(m.time_on_air(16)), "51.456 ms");
//! ```

use std::time::Duration;

/// The LoRa modulation and packet settings that decide the time on air.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modulation {
    /// Spreading factor 7..=12.
    pub sf: u8,
    /// Bandwidth in Hz: 125000, 250000 or 500000.
    pub bw_hz: u32,
    /// Coding rate denominator 5..=8 (4/5..4/8).
    pub cr: u8,
    /// Preamble length in symbols.
    pub preamble: u16,
    /// Payload CRC present.
    pub crc: bool,
    /// Explicit PHY header (always true with `sx127x_lora`, whose implicit mode is broken).
    pub explicit_header: bool,
    /// Low data rate optimisation (DE); [`Modulation::new`] sets it when a symbol lasts more
    /// than 16 ms (SF11 and SF12 at 125 kHz), as the datasheet mandates.
    pub ldro: bool,
}

/// Why modulation parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModulationError {
    /// SF outside 7..=12.
    #[error("spreading factor {0} not supported: expected 7..=12")]
    SpreadingFactor(u8),
    /// Bandwidth not 125/250/500 kHz.
    #[error("bandwidth {0} Hz not supported: expected 125000, 250000 or 500000")]
    Bandwidth(u32),
    /// Coding rate denominator outside 5..=8.
    #[error("coding rate 4/{0} not supported: expected a denominator 5..=8")]
    CodingRate(u8),
}

impl Modulation {
    /// SF, bandwidth (Hz) and coding-rate denominator, with preamble 8, CRC on, explicit
    /// header, and LDRO as the datasheet mandates.
    pub fn new(sf: u8, bw_hz: u32, cr: u8) -> Result<Self, ModulationError> {
        if !(7..=12).contains(&sf) {
            return Err(ModulationError::SpreadingFactor(sf));
        }
        if !matches!(bw_hz, 125_000 | 250_000 | 500_000) {
            return Err(ModulationError::Bandwidth(bw_hz));
        }
        if !(5..=8).contains(&cr) {
            return Err(ModulationError::CodingRate(cr));
        }
        let mut m = Self {
            sf,
            bw_hz,
            cr,
            preamble: 8,
            crc: true,
            explicit_header: true,
            ldro: false,
        };
        m.ldro = m.ldro_required();
        Ok(m)
    }

    /// From manifest radio parameters.
    pub fn from_params(p: &manifests::link::RadioParams) -> Self {
        let mut m = Self {
            sf: p.spreading_factor.get(),
            bw_hz: p.bandwidth_hz.get(),
            cr: p.coding_rate.denominator(),
            preamble: p.preamble,
            crc: p.crc,
            explicit_header: true,
            ldro: false,
        };
        m.ldro = m.ldro_required();
        m
    }

    /// Symbol time in nanoseconds: 2^SF / BW.
    pub fn symbol_ns(&self) -> u64 {
        (1_000_000_000u64 << self.sf) / u64::from(self.bw_hz.max(1))
    }

    /// Whether the datasheet mandates LDRO: symbol time above 16 ms.
    pub fn ldro_required(&self) -> bool {
        self.symbol_ns() > 16_000_000
    }

    /// Number of payload symbols for a PHY payload of `len` bytes:
    /// 8 + max(ceil((8PL - 4SF + 28 + 16CRC - 20IH) / (4(SF - 2DE))) (CR+4), 0).
    pub fn payload_symbols(&self, len: usize) -> u64 {
        let sf = i64::from(self.sf);
        let num = 8 * len as i64 - 4 * sf + 28 + if self.crc { 16 } else { 0 }
            - if self.explicit_header { 0 } else { 20 };
        let den = 4 * (sf - if self.ldro { 2 } else { 0 });
        let blocks = if num <= 0 || den <= 0 {
            0
        } else {
            (num + den - 1) / den
        };
        8 + (blocks as u64) * u64::from(self.cr)
    }

    /// Time on air of a frame with a PHY payload of `len` bytes:
    /// (Npreamble + 4.25 + nPayload) * Tsym.
    pub fn time_on_air(&self, len: usize) -> Duration {
        // 4 * (Npre + 4.25 + nPayload) symbols, kept integer.
        let quarter_symbols = 4 * (u64::from(self.preamble) + self.payload_symbols(len)) + 17;
        let ns =
            (quarter_symbols * (1_000_000_000u64 << self.sf)) / (4 * u64::from(self.bw_hz.max(1)));
        Duration::from_nanos(ns)
    }

    /// The largest PHY payload a frame may have at this spreading factor (see
    /// [`max_phy_payload`]).
    pub fn max_payload(&self) -> usize {
        max_phy_payload(self.sf)
    }
}

/// Largest PHY payload per spreading factor: the EU868 LoRaWAN limits (51 B of application
/// payload at SF10-12, 115 B at SF9, 222 B at SF7/8, each plus the 13 bytes of LoRaWAN
/// overhead), so a frame never lasts longer than a LoRaWAN frame at the same data rate.
pub fn max_phy_payload(sf: u8) -> usize {
    match sf {
        0..=8 => 222 + 13,
        9 => 115 + 13,
        _ => 51 + 13,
    }
}

/// Formats a duration as milliseconds with three decimals, e.g. `"51.456 ms"`.
pub fn format_ms(d: Duration) -> String {
    let us = d.as_micros();
    format!("{}.{:03} ms", us / 1000, us % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toa(sf: u8, len: usize) -> String {
        format_ms(
            Modulation::new(sf, 125_000, 5)
                .expect("valid")
                .time_on_air(len),
        )
    }

    #[test]
    fn reference_worked_values_to_the_microsecond() {
        assert_eq!(toa(7, 10), "41.216 ms");
        assert_eq!(toa(11, 10), "577.536 ms");
        assert_eq!(toa(7, 16), "51.456 ms");
        assert_eq!(toa(7, 129), "215.296 ms");
        assert_eq!(toa(12, 16), "1318.912 ms");
        assert_eq!(toa(12, 17), "1318.912 ms");
        assert_eq!(toa(12, 129), "4923.392 ms");
        assert_eq!(toa(11, 16), "659.456 ms");
        let mut m = Modulation::new(7, 125_000, 5).expect("valid");
        m.crc = false;
        assert_eq!(m.payload_symbols(16), 33);
        assert_eq!(format_ms(m.time_on_air(16)), "46.336 ms");
        // SF11 without LDRO, as sx127x_lora 0.3.1 configures it
        let mut m = Modulation::new(11, 125_000, 5).expect("valid");
        assert!(m.ldro);
        m.ldro = false;
        assert_eq!(m.payload_symbols(16), 23);
        assert_eq!(format_ms(m.time_on_air(16)), "577.536 ms");
    }

    #[test]
    fn symbol_counts_match_the_reference() {
        let s = |sf, len| {
            Modulation::new(sf, 125_000, 5)
                .expect("valid")
                .payload_symbols(len)
        };
        assert_eq!(s(7, 10), 28);
        assert_eq!(s(11, 10), 23);
        assert_eq!(s(7, 16), 38);
        assert_eq!(s(7, 129), 198);
        assert_eq!(s(12, 16), 28);
        assert_eq!(s(12, 129), 138);
        assert_eq!(s(11, 16), 28);
    }

    #[test]
    fn ldro_only_for_long_symbols() {
        assert!(Modulation::new(11, 125_000, 5).expect("v").ldro);
        assert!(Modulation::new(12, 125_000, 5).expect("v").ldro);
        assert!(Modulation::new(12, 250_000, 5).expect("v").ldro);
        assert!(!Modulation::new(11, 250_000, 5).expect("v").ldro);
        assert!(!Modulation::new(10, 125_000, 5).expect("v").ldro);
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert_eq!(
            Modulation::new(6, 125_000, 5),
            Err(ModulationError::SpreadingFactor(6))
        );
        assert_eq!(
            Modulation::new(7, 62_500, 5),
            Err(ModulationError::Bandwidth(62_500))
        );
        assert_eq!(
            Modulation::new(7, 125_000, 9),
            Err(ModulationError::CodingRate(9))
        );
    }
}

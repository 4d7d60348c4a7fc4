//! Radios: the [`Radio`] trait, the `sx127x_lora` based backend [`sx127x::Sx127x`] (generic
//! over embedded-hal 0.2 SPI/GPIO/delay), the emulated SX1276 it can drive
//! ([`emu::Sx1276`]) and, with feature `rpi`, the Raspberry Pi wiring ([`rpi`]).

pub mod emu;
#[cfg(feature = "rpi")]
pub mod rpi;
pub mod sx127x;

use std::time::Duration;

use manifests::link::{RadioBackend, RadioParams};

use crate::airtime::Modulation;

/// A received LoRa packet.
#[derive(Debug, Clone, PartialEq)]
pub struct RxPacket {
    /// The payload.
    pub bytes: Vec<u8>,
    /// Packet RSSI in dBm.
    pub rssi_dbm: i32,
    /// Packet SNR in dB.
    pub snr_db: f32,
}

/// Radio failures. [`RadioError::PayloadCrc`] and [`RadioError::NoCrc`] are per-packet and
/// recoverable (the packet is dropped); the others concern the radio itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RadioError {
    /// A packet arrived with a payload CRC error (the driver would have returned it as good).
    #[error("packet dropped: payload CRC error (RSSI {rssi_dbm} dBm)")]
    PayloadCrc {
        /// Its RSSI.
        rssi_dbm: i32,
    },
    /// A packet arrived without a payload CRC (its sender has CRC off): dropped, as newer
    /// RadioHead does.
    #[error("packet dropped: sent without payload CRC")]
    NoCrc,
    /// Frame longer than 255 bytes.
    #[error("frame of {0} bytes too long for the SX127x FIFO (255)")]
    TooLong(usize),
    /// The chip did not answer with version 0x12.
    #[error(
        "SX127x not found: version register reads 0x{0:02x}, expected 0x12 (check wiring, SPI enabled, CS on GPIO25, RESET on GPIO17)"
    )]
    VersionMismatch(u8),
    /// The chip did not finish a transmission in time.
    #[error("transmission did not complete within {0:?}")]
    TxTimeout(Duration),
    /// Registers read back differ from what was configured.
    #[error(
        "radio configuration did not stick: register 0x{reg:02x} reads 0x{found:02x}, expected 0x{expected:02x}"
    )]
    ConfigMismatch {
        /// Register.
        reg: u8,
        /// Read back.
        found: u8,
        /// Expected.
        expected: u8,
    },
    /// Driver, SPI or GPIO error.
    #[error("radio driver: {0}")]
    Driver(String),
    /// Backend unavailable (e.g. built without feature `rpi`).
    #[error("{0}")]
    Unavailable(String),
}

impl RadioError {
    /// Whether the error concerns one packet only (the radio keeps working).
    pub fn is_per_packet(&self) -> bool {
        matches!(self, RadioError::PayloadCrc { .. } | RadioError::NoCrc)
    }
}

/// A half-duplex LoRa radio.
pub trait Radio {
    /// Transmits one frame and returns when it is on air completely.
    fn transmit(&mut self, frame: &[u8]) -> Result<(), RadioError>;
    /// Listens up to `timeout` for one packet (`Ok(None)` on timeout).
    fn receive(&mut self, timeout: Duration) -> Result<Option<RxPacket>, RadioError>;
    /// Puts the radio in receive mode now, so a frame that starts before the first
    /// [`Radio::receive`] is not missed (a receiver calls it before it says it is ready).
    fn listen(&mut self) -> Result<(), RadioError> {
        Ok(())
    }
}

impl<R: Radio + ?Sized> Radio for Box<R> {
    fn transmit(&mut self, frame: &[u8]) -> Result<(), RadioError> {
        (**self).transmit(frame)
    }
    fn receive(&mut self, timeout: Duration) -> Result<Option<RxPacket>, RadioError> {
        (**self).receive(timeout)
    }
    fn listen(&mut self) -> Result<(), RadioError> {
        (**self).listen()
    }
}

/// What a backend needs to configure the chip.
#[derive(Debug, Clone, PartialEq)]
pub struct RadioSettings {
    /// Carrier frequency in Hz (any, not only whole MHz: Frf is written directly).
    pub frequency_hz: u32,
    /// SF, BW, CR, preamble, CRC, LDRO.
    pub modulation: Modulation,
    /// Transmit power in dBm.
    pub tx_power_dbm: i8,
    /// PA_BOOST (true) or RFO.
    pub pa_boost: bool,
    /// Sync word (0x12, RadioHead's and the chip's default; LoRaWAN uses 0x34).
    pub sync_word: u8,
}

impl RadioSettings {
    /// From manifest radio parameters.
    pub fn from_params(p: &RadioParams) -> Self {
        Self {
            frequency_hz: p.frequency_hz(),
            modulation: Modulation::from_params(p),
            tx_power_dbm: p.tx_power_dbm,
            pa_boost: p.pa_boost,
            sync_word: 0x12,
        }
    }

    /// 868.0 MHz with the given modulation, 14 dBm PA_BOOST.
    pub fn eu868(modulation: Modulation) -> Self {
        Self {
            frequency_hz: 868_000_000,
            modulation,
            tx_power_dbm: 14,
            pa_boost: true,
            sync_word: 0x12,
        }
    }
}

/// Opens the radio a manifest describes: the emulated SX1276 on its `[air]` hub, or the real
/// SX127x on the Pi (feature `rpi`).
pub fn open(
    params: &RadioParams,
    air: Option<&manifests::link::AirParams>,
) -> Result<Box<dyn Radio + Send>, RadioError> {
    let settings = RadioSettings::from_params(params);
    match params.backend {
        RadioBackend::Emulated => {
            let hub = air
                .ok_or_else(|| RadioError::Unavailable("emulated backend needs an [air] hub".into()))?
                .hub;
            Ok(Box::new(sx127x::emulated(hub, &settings)?))
        }
        #[cfg(feature = "rpi")]
        RadioBackend::Sx127x => Ok(Box::new(rpi::open(&settings, &params.pins)?)),
        #[cfg(not(feature = "rpi"))]
        RadioBackend::Sx127x => Err(RadioError::Unavailable(
            "this lora-link was built without feature `rpi`: rebuild with --features rpi, or use backend = \"emulated\"".into(),
        )),
    }
}

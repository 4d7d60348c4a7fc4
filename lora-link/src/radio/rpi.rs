//! The real SX127x on a Raspberry Pi (Dragino LoRa/GPS HAT by default): `rppal` SPI in
//! mode 0 (not the driver's `MODE` constant, mode 3), CS and RESET as plain GPIO outputs.
//! DIO0 is not needed: the backend polls RegIrqFlags (see [`super::sx127x`]).

use manifests::link::Pins;
use rppal::gpio::{Gpio, OutputPin};
use rppal::hal::Delay;
use rppal::spi::{Bus, Mode, SlaveSelect, Spi};

use super::sx127x::Sx127x;
use super::{RadioError, RadioSettings};

/// The backend type on a Pi.
pub type PiSx127x = Sx127x<Spi, OutputPin, OutputPin, Delay>;

fn bus(n: u8) -> Result<Bus, RadioError> {
    Ok(match n {
        0 => Bus::Spi0,
        1 => Bus::Spi1,
        2 => Bus::Spi2,
        3 => Bus::Spi3,
        4 => Bus::Spi4,
        5 => Bus::Spi5,
        6 => Bus::Spi6,
        _ => {
            return Err(RadioError::Unavailable(format!(
                "no SPI bus {n} (expected 0..=6)"
            )));
        }
    })
}

/// Opens the SX127x wired as `pins` and configures it.
pub fn open(settings: &RadioSettings, pins: &Pins) -> Result<PiSx127x, RadioError> {
    let hint = "enable SPI (raspi-config), run as a member of the spi and gpio groups";
    let spi = Spi::new(
        bus(pins.spi_bus)?,
        SlaveSelect::Ss0,
        pins.spi_clock_hz,
        Mode::Mode0,
    )
    .map_err(|e| RadioError::Unavailable(format!("SPI{}: {e} ({hint})", pins.spi_bus)))?;
    let gpio = Gpio::new().map_err(|e| RadioError::Unavailable(format!("GPIO: {e} ({hint})")))?;
    let out = |n: u8| {
        gpio.get(n)
            .map(|p| p.into_output_high())
            .map_err(|e| RadioError::Unavailable(format!("GPIO{n}: {e} ({hint})")))
    };
    let cs = out(pins.cs)?;
    let reset = out(pins.reset)?;
    Sx127x::new(spi, cs, reset, Delay::new(), settings)
}

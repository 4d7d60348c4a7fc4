//! ATECC508A secure element: the I2C command protocol (`no_std`, no allocation) and, with
//! feature `emulator`, a chip model faithful enough to provision against.
//!
//! - [`crc`]: the packet CRC-16.
//! - [`status`]: status codes as an error type.
//! - [`opcode`]: opcodes, modes and execution times.
//! - [`packet`]: command packets (builders, encoding, parsing) and response frames.
//! - [`config`]: the config zone with every field named, and the data-zone geometry.
//! - [`host`]: the host-side math (TempKey, GenDig, encrypted Write/PrivWrite/Read, digests,
//!   lock summaries).
//! - [`client`]: a host driver over any transport that sends packets and returns responses.
//! - `profile` (feature `std`): a whole configuration in TOML, fields by name.
//! - `emulator` (feature `emulator`): the chip.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "std")]
extern crate std;

pub mod client;
pub mod config;
pub mod crc;
pub mod host;
pub mod opcode;
pub mod packet;
pub mod status;

#[cfg(feature = "std")]
pub mod profile;

#[cfg(feature = "emulator")]
pub mod emulator;

pub use crc::crc16;
pub use packet::{Command, Error, parse_response};
pub use status::Status;

//! ESP8266 firmware core (`no_std`): the serial bridge between the USB-serial port and the
//! ATECC508A, the named-blob device store, and the sensor application state machine.
//! The host binary `sensor-sim` (feature `sim`) runs this core on a pseudo-terminal with an
//! emulated chip; feature `std` adds the chip-backed rustls signer ([`signer`]).
//!
//! # The serial protocol
//!
//! ASCII lines ending in LF (CR and NUL bytes are ignored), at most [`line::MAX_LINE`]
//! characters; longer lines are dropped whole and answered with status `E4`. Every reply is
//! one line `SS(<hex>)` where `SS` is a status byte in hex and `<hex>` an uppercase-hex
//! payload, except `board:device(00)`, which answers the kit's device line.
//!
//! ## Kit protocol (Microchip cryptoauthlib `kit_protocol.c`, UART HAL)
//!
//! | line | reply |
//! |---|---|
//! | `board:device(00)` | `ECC508A TWI C0(C0)` (other indexes: `E5()`) |
//! | `E:physical:interface:i2c` | `00()` |
//! | `E:physical:select(C0)` | `00()`; other addresses `E5(..)` |
//! | `E:w()` | `00(04113343)`: the chip's wake response |
//! | `E:i()` / `E:s()` | `00()` after idle / sleep |
//! | `E:t(<packet hex>)` | `00(<response frame hex>)`: the packet (count..CRC, no word address) goes to the chip with word address 0x03, the response frame (count..CRC) comes back as read, unchecked: the host checks CRC and status |
//!
//! The target letter may be `E`, `e`, `s` or `S` (older cryptoauthlib sent `s:`).
//!
//! ## The `fw` target (device store and control)
//!
//! Names: 1 to 32 characters of `[A-Za-z0-9._-]`, starting with a letter or digit. Numbers
//! are decimal; data is hex. Text payloads (info, list, put) are UTF-8, hex-encoded like all
//! payloads. Limits: blobs up to [`store::MAX_BLOB_LEN`] bytes, [`store::MAX_BLOBS`] blobs,
//! [`store::STORE_CAPACITY`] bytes in all, [`bridge::MAX_CHUNK`] bytes per put or get.
//!
//! | line | success reply payload |
//! |---|---|
//! | `fw:info()` | text `version=0.1.0,id=<chip serial hex>,free=N,capacity=N,max_blob=N,max_blobs=N,max_chunk=N,blobs=N` |
//! | `fw:list()` | text `name:len,name:len` (empty if none) |
//! | `fw:put(name,offset,hex)` | text: bytes staged so far. Offset 0 starts (or restarts) an upload; later chunks must continue at the staged length, else `F4` with text `expected offset N` |
//! | `fw:commit(name,len,crc32)` | empty. `crc32` = 8 hex digits of the IEEE CRC-32 (zlib) of the whole blob. Atomically replaces the stored blob; until then the old one stays |
//! | `fw:abort()` | empty; drops a staged upload |
//! | `fw:get(name,offset,len)` | the bytes (up to `len` ≤ 256; fewer at the end; empty at EOF) |
//! | `fw:del(name)` | empty |
//! | `fw:reboot()` | empty, then the device restarts (staged uploads lost, configuration re-read) |
//!
//! Status codes ([`bridge::status`]): `00` ok; `E1` chip did not answer; `E2` malformed line;
//! `E3` unknown target or command; `E4` line too long; `E5` no such device; `F0` bad name;
//! `F1` not found; `F2` too large; `F3` store full; `F4` wrong offset; `F5` length/CRC
//! mismatch; `F6` read past end; `F7` storage failure. Error payloads are a short text.
//! A refused line changes nothing.
//!
//! Example session (provisioner side, `>` sent, `<` received):
//!
//! ```text
//! > fw:put(device.toml,0,666F726D6174203D20310A)
//! < 00(3131)                               "11" bytes staged
//! > fw:commit(device.toml,11,068643E1)
//! < 00()
//! > fw:list()
//! < 00(6465766963652E746F6D6C3A3131)       "device.toml:11"
//! ```
#![cfg_attr(not(feature = "std"), no_std)]

pub mod app;
pub mod bridge;
pub mod chip;
pub mod crc;
pub mod csr;
pub mod hex;
pub mod line;
pub mod pacing;
pub mod store;

#[cfg(feature = "std")]
pub mod signer;

#[cfg(feature = "sim")]
pub mod sim;

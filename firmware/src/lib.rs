//! ESP8266 firmware core (`no_std`): the kit-protocol bridge between the USB-serial port and
//! the ATECC508A, the named-blob device store, and the sensor application state machine.
//! The host binary `sensor-sim` runs this core on a pseudo-terminal with an emulated chip.
//! Filled by the firmware issue.
#![no_std]

//! Bytes from the USB-serial port into the firmware's kit-protocol bridge (`E:t(...)`,
//! `fw:put(...)`, ...), with the emulated chip behind it and a RAM store: any byte stream is
//! answered line by line, never a panic, and every reply is one well-formed line.
#![no_main]

use atecc::emulator::Chip;
use firmware::bridge::{Bridge, Reply};
use firmware::chip::Atecc;
use firmware::store::Store;
use iot_provisioner_fuzz::{InstantBus, RamPersist};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut chip = Atecc::new(InstantBus(Chip::with_serial_middle([1, 2, 3, 4, 5, 6])));
    let mut store = Box::new(Store::open(RamPersist::default()));
    let mut bridge = Bridge::new();
    let mut reply = Reply::default();
    for &b in data {
        if let Some(outcome) = bridge.receive(b, &mut chip, &mut store, &mut reply) {
            let line = reply.as_bytes();
            assert_eq!(line.last(), Some(&b'\n'), "reply not one line: {line:?}");
            assert!(
                !line[..line.len() - 1].contains(&b'\n'),
                "reply spans lines: {line:?}"
            );
            if outcome.reboot {
                // What the platform does on `fw:reboot()`: staged uploads lost, store re-read.
                store.reload();
            }
        }
    }
});

//! Command packets as the chip receives them: `Command::parse` rejects or yields a command
//! that encodes back to the same bytes.
#![no_main]

use atecc::packet::{Command, MAX_PACKET};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|packet: &[u8]| {
    if let Ok(cmd) = Command::parse(packet) {
        let mut buf = [0u8; MAX_PACKET];
        let n = cmd.encode(&mut buf).expect("a parsed command encodes");
        assert_eq!(&buf[..n], packet);
    }
});

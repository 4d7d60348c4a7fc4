//! A sequence of arbitrary packets into the emulated chip (`Chip::transact`): each is
//! answered with a frame whose count and CRC are right, never a panic. The input is split
//! into packets by their own count byte, so that valid commands can build up state (config
//! writes, locks, nonces, keys) for the ones that follow.
#![no_main]

use atecc::emulator::Chip;
use atecc::crc::crc16_le;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut chip = Chip::with_serial_middle([1, 2, 3, 4, 5, 6]);
    let mut rest = data;
    let mut packets = 0;
    while let Some(&count) = rest.first() {
        let n = usize::from(count).clamp(1, rest.len());
        let (packet, tail) = rest.split_at(n);
        rest = tail;
        let frame = chip.transact(packet);
        assert!(
            frame.len() >= 4 && usize::from(frame[0]) == frame.len(),
            "bad frame {frame:02x?} for packet {packet:02x?}"
        );
        let (body, crc) = frame.split_at(frame.len() - 2);
        assert_eq!(crc16_le(body), crc, "frame CRC wrong: {frame:02x?}");
        packets += 1;
        if packets == 64 {
            break;
        }
    }
});

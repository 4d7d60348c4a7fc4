//! Any byte string fed to the packet and response parsers, the profile and state loaders, or
//! the emulated chip is rejected or handled, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use atecc::emulator::Chip;
use atecc::packet::{Command, MAX_PACKET, parse_response};
use atecc::profile::Profile;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn response_parser_rejects_or_parses(frame in proptest::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(data) = parse_response(&frame) {
            prop_assert_eq!(data.len() + 3, frame[0] as usize);
        }
    }

    #[test]
    fn packet_parser_rejects_or_round_trips(packet in proptest::collection::vec(any::<u8>(), 0..160)) {
        if let Ok(cmd) = Command::parse(&packet) {
            let mut buf = [0u8; MAX_PACKET];
            let n = cmd.encode(&mut buf).unwrap();
            prop_assert_eq!(&buf[..n], &packet[..]);
        }
    }

    #[test]
    fn chip_answers_any_packet_with_a_valid_frame(
        opcode in prop::sample::select(vec![0x02u8, 0x08, 0x12, 0x15, 0x16, 0x17, 0x1B, 0x20, 0x24, 0x28, 0x30, 0x40, 0x41, 0x43, 0x45, 0x46, 0x47]),
        param1 in any::<u8>(),
        param2 in any::<u16>(),
        data in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        // A provisioned chip (locked, key in slot 0) reaches every permission check.
        let mut chip = common::locked_chip();
        atecc::client::Client::new(&mut chip).gen_key(0).unwrap();
        let before_sn = chip.serial_number();
        let mut buf = [0u8; MAX_PACKET];
        let cmd = Command::with_data(atecc::opcode::Opcode::from_u8(opcode).unwrap(), param1, param2, &data);
        let n = cmd.encode(&mut buf).unwrap();
        let frame = chip.transact(&buf[..n]);
        // Whatever the chip thinks of the command, its frame is well formed.
        match parse_response(&frame) {
            Ok(_) | Err(atecc::packet::Error::Status(_)) => {}
            Err(e) => prop_assert!(false, "malformed frame {:02X?}: {:?}", frame, e),
        }
        prop_assert_eq!(chip.serial_number(), before_sn);
        prop_assert!(chip.config_zone().is_config_locked());
    }

    #[test]
    fn garbage_packets_on_the_bus_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut chip = Chip::with_serial_middle([0; 6]);
        chip.wake();
        let _ = chip.i2c_write(&bytes);
        let mut out = [0u8; 8];
        let _ = chip.i2c_read(&mut out);
        let frame = chip.transact(&bytes);
        prop_assert!(frame.len() >= 4);
    }

    #[test]
    fn profile_parser_rejects_or_parses(text in "[a-z_\\[\\]0-9=. \"\\n]{0,120}") {
        let _ = Profile::from_toml(&text);
    }
}

//! Response frames as read from the chip (count, data, CRC-16): the host's parsers accept
//! them only when count and CRC agree, never panic.
#![no_main]

use atecc::packet::{parse_response, parse_response_exact, parse_status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    if let Ok(data) = parse_response(frame) {
        assert_eq!(data.len() + 3, usize::from(frame[0]));
        assert!(frame.len() >= usize::from(frame[0]));
    }
    let _ = parse_status(frame);
    let _ = parse_response_exact::<4>(frame);
    let _ = parse_response_exact::<32>(frame);
    let _ = parse_response_exact::<64>(frame);
});

//! Bytes from the radio as a secure lora-link frame: parse, MIC check for the counters the
//! receiver could infer, decrypt and record decoding. The input is also sealed as a
//! plaintext, so that frames with a valid MIC reach the record decoder, and must verify and
//! decrypt back to the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lora_link::crypto::LinkKeys;
use lora_link::frame::{self, MAX_FRAME_LEN, OVERHEAD};
use lora_link::link::infer_counter;
use lora_link::records::TopicTable;

const KEY: [u8; 16] = *b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f";

fuzz_target!(|data: &[u8]| {
    let keys = LinkKeys::derive(&KEY);
    let table = TopicTable::new([(0, "maison/salon/temperature"), (1, "maison/salon/humidite")]);

    let fp = table.fingerprint();
    if let Ok(raw) = frame::parse(data) {
        for last in [None, Some(0), Some(0xFFFF), Some(0x1_0000), Some(u32::MAX - 1)] {
            if let Some(counter) = infer_counter(last, raw.counter_low) {
                if raw.mic_ok(&keys, counter, fp) {
                    let _ = table.decode(&raw.decrypt(&keys, counter));
                }
            }
        }
    }

    // Sealed by a legitimate sender: verifies, decrypts to the input, decodes or is refused.
    let counter = u32::from_le_bytes([
        data.first().copied().unwrap_or(0),
        data.get(1).copied().unwrap_or(0),
        0,
        0,
    ]);
    let key_id = u32::from(data.get(2).copied().unwrap_or(0));
    match frame::seal(&frame::SealKey::new(&keys, key_id, &table), 1, 10, counter, data) {
        Ok(sealed) => {
            let raw = frame::parse(&sealed).expect("a sealed frame parses");
            assert_eq!(raw.key_phase, frame::key_phase(key_id));
            assert_eq!(raw.table, fp.on_air());
            assert!(raw.mic_ok(&keys, counter, fp), "sealed frame fails its MIC");
            assert_eq!(raw.decrypt(&keys, counter), data);
            let _ = table.decode(data);
        }
        Err(_) => assert!(data.len() + OVERHEAD > MAX_FRAME_LEN),
    }
});

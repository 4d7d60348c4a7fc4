//! A frame's plaintext as records (topic index or inline topic, length, payload): decoded
//! or refused, never a panic; what decodes re-encodes to a plaintext that decodes the same,
//! and becomes the JSON line `lora-link rx` prints.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lora_link::records::TopicTable;
use lora_link::rx::{FrameMeta, JsonRecord};

fuzz_target!(|data: &[u8]| {
    let table = TopicTable::new([(0, "maison/salon/temperature"), (5, "c"), (127, "z/y")]);
    if let Ok(records) = table.decode(data) {
        let mut again = Vec::new();
        for r in &records {
            table.encode(r, &mut again).expect("a decoded record encodes");
        }
        assert_eq!(table.decode(&again).expect("re-encoded records decode"), records);
        let meta = FrameMeta { from: 10, to: 1, counter: 7, rssi_dbm: -60, snr_db: 9.0 };
        for r in &records {
            serde_json::to_string(&JsonRecord::new(&meta, r)).expect("JSON line");
        }
    }
});

//! Bytes from the host into the simulated Mongoose OS board's RPC receive side
//! (`FrameReader`: line and `"""` framing, CRC metadata, ready byte, limits), then what the
//! board does with a frame's text: JSON, base64 parameters, and a saved configuration read
//! back as `conf9.json` and translated into the sensor's `DeviceConfig`.
#![no_main]

use firmware::sim::mos::{FrameReader, Received, b64, device_config, load_config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = FrameReader::default();
    for &b in data {
        if let Some(Received::Frame { json, .. }) = reader.push(b) {
            assert_eq!(json.first(), Some(&b'{'));
            assert_eq!(json.last(), Some(&b'}'));
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&json) {
                if let Some(params) = v.get("params").or_else(|| v.get("args")) {
                    for key in ["data", "msg", "pubkey", "digest", "signature"] {
                        if let Some(t) = params[key].as_str() {
                            let _ = b64::decode(t);
                        }
                    }
                }
            }
            // The same text as a saved configuration file.
            let _ = device_config(&load_config(Some(&json)));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(bytes) = b64::decode(text) {
            assert_eq!(b64::decode(&b64::encode(&bytes)), Some(bytes));
        }
    }
    let _ = device_config(&load_config(Some(data)));
});

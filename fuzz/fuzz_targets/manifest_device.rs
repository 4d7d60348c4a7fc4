//! The device configuration blob (`device.toml`) as the firmware reads it from its store at
//! boot: accepted or refused, never a panic; an accepted blob re-encodes to one that decodes
//! the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use manifests::device::DeviceConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) = DeviceConfig::from_blob(data) {
        let blob = cfg.to_blob().expect("an accepted configuration encodes");
        assert_eq!(DeviceConfig::from_blob(&blob).expect("round trip"), cfg);
    }
});

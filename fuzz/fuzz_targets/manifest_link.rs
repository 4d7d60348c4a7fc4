//! LoRa link manifests (`gateway`, `lora-link rx`) from text: accepted or refused with an
//! error, never a panic; an accepted manifest renders to TOML that parses the same.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use manifests::link::LinkManifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(m) = LinkManifest::parse(text, Path::new("link.toml")) {
        let again = m.to_toml().expect("an accepted manifest renders");
        let back = LinkManifest::parse(&again, Path::new("link.toml")).expect("round trip");
        assert_eq!(back, m);
        let _: Vec<_> = m.topic_pairs().collect();
    }
});

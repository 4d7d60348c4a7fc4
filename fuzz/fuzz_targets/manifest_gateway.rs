//! Gateway manifests (`gateway --manifest`) from text: accepted or refused with an error,
//! never a panic; an accepted manifest renders to TOML that parses the same.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use manifests::gateway::GatewayManifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(m) = GatewayManifest::parse(text, Path::new("gateway.toml")) {
        let again = m.to_toml().expect("an accepted manifest renders");
        let back = GatewayManifest::parse(&again, Path::new("gateway.toml")).expect("round trip");
        assert_eq!(back, m);
        let _ = m.mqtt.tls_server_name();
    }
});

//! Site files (`provisioner init --site`): loaded or refused with an error, never a panic;
//! an accepted site renders to TOML that loads back to the same site.
#![no_main]

use libfuzzer_sys::fuzz_target;
use manifests::site::Site;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(site) = Site::from_toml_str("site.toml", text) {
        let again = site.to_toml().expect("an accepted site renders");
        let back = Site::from_toml_str("site.toml", &again).expect("a rendered site loads");
        assert_eq!(back, site);
    }
});

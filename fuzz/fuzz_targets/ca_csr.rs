//! Certificate signing requests (`provisioner cert sign --csr`, PEM or DER): parsed and
//! their signature checked, or refused with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ca::parse_csr(data);
});

//! UDP datagrams of the simulated air (`lora-link air`): decoded or refused, never a panic;
//! what decodes encodes back to a datagram that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lora_link::air::AirMsg;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = AirMsg::decode(data) {
        assert_eq!(AirMsg::decode(&msg.encode()).as_ref(), Ok(&msg));
    }
});

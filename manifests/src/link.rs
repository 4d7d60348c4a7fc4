//! LoRa link manifests (radio parameters, link keys, node addresses, topic table) consumed by
//! `gateway` and `lora-link rx`. Filled by the LoRa issue.

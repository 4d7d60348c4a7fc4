//! The secure LoRa link: frame codec, airtime and duty cycle, radio backends.
//! Filled by the LoRa issue.

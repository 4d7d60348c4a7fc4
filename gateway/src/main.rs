//! `gateway`: Pi #1 daemon that subscribes to the broker with its own client certificate and
//! forwards readings over the secure LoRa link. Filled by the LoRa issue.

fn main() {
    eprintln!("gateway: not built yet (see issue 6)");
    std::process::exit(2);
}

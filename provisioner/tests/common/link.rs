//! Fixtures of the LoRa half (tests/link.rs, tests/topology.rs): the far side's certified
//! monitor subscribing on a real mosquitto, returned once it is there.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use super::{Client, Mosquitto, mosquitto_sub};

/// The monitor's client id: its certificate's CN (the broker forces it so anyway).
pub const MONITOR: &str = "moniteur";

/// mosquitto_sub as the monitor on `filter` for `count` messages within `timeout_s`,
/// printing each as `print` says (`["-v"]`: `topic payload`; `["-F", "%t %x"]`: hex).
pub fn monitor_sub(
    port: u16,
    cafile: &Path,
    monitor: &Client,
    filter: &str,
    count: usize,
    timeout_s: u32,
    print: &[&str],
) -> Child {
    mosquitto_sub(port, cafile, monitor, filter)
        .args(["-C", &count.to_string(), "-W", &timeout_s.to_string()])
        .args(["-i", MONITOR])
        .args(print)
        .spawn()
        .expect("mosquitto_sub")
}

/// Starts a subscriber with `spawn` and returns it once `broker` logged one more connection
/// of the monitor (within 10 s), leaving its SUBSCRIBE, which follows the CONNECT, a moment to
/// arrive: what is published after this reaches it.
pub fn monitor_subscribed(broker: &Mosquitto, spawn: impl FnOnce() -> Child) -> Child {
    let needle = format!(" as {MONITOR} ");
    let connections = || broker.log_text().matches(&needle).count();
    let before = connections();
    let mut sub = spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while connections() == before {
        if let Ok(Some(st)) = sub.try_wait() {
            panic!(
                "the monitor's mosquitto_sub exited ({st}):\n{}",
                broker.log_text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the monitor never connected:\n{}",
            broker.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    sub
}

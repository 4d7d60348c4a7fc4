//! The board on a host: the firmware core on a pseudo-terminal with an emulated ATECC508A,
//! a file-backed store, serial pacing, a simulated sensor and the MQTT application.

pub mod board;
pub mod bus;
pub mod mos;
pub mod mos_config;
pub mod mos_uart;
pub mod mqtt;
pub mod persist;
pub mod pty;
pub mod renewal;
pub mod sensor;
pub mod serial;

use std::time::Instant;

/// Milliseconds since the first call: the monotonic clock the core's state machine runs on.
pub fn now_ms() -> u64 {
    use std::sync::OnceLock;
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

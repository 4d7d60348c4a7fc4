//! Serial pacing: how long bytes take on a UART wire (start bit, 8 data bits, stop bit = 10
//! bits per byte), and a pacer that tells when each byte may be delivered.

/// Bits on the wire per byte in 8N1 framing.
pub const BITS_PER_BYTE: u64 = 10;

/// Wire time of `bytes` bytes at `baud` bits per second, in nanoseconds (rounded up).
/// A baud rate of 0 means "unpaced" and gives 0.
///
/// ```
/// // 2 KiB at 115200 baud: 2048 * 10 / 115200 s = 177.78 ms
/// assert_eq!(firmware::pacing::wire_time_ns(2048, 115_200), 177_777_778);
/// ```
pub fn wire_time_ns(bytes: u64, baud: u32) -> u64 {
    if baud == 0 {
        return 0;
    }
    let bits = u128::from(bytes) * u128::from(BITS_PER_BYTE) * 1_000_000_000;
    let baud = u128::from(baud);
    u64::try_from(bits.div_ceil(baud)).unwrap_or(u64::MAX)
}

/// A one-direction wire: bytes leave one after another, never faster than the baud rate.
/// Times are nanoseconds on any monotonic clock the caller chooses.
#[derive(Debug, Clone)]
pub struct Pacer {
    baud: u32,
    /// When the wire is free again (end of the last scheduled byte).
    free_at_ns: u64,
}

impl Pacer {
    /// A pacer for `baud` (0 = unpaced).
    pub fn new(baud: u32) -> Self {
        Pacer {
            baud,
            free_at_ns: 0,
        }
    }

    /// Schedules `bytes` bytes handed to the wire at `now_ns`; returns when the last of them
    /// has been fully transmitted. Idle time is not banked: a burst after a pause still takes
    /// its full wire time.
    pub fn schedule(&mut self, now_ns: u64, bytes: u64) -> u64 {
        let start = self.free_at_ns.max(now_ns);
        self.free_at_ns = start.saturating_add(wire_time_ns(bytes, self.baud));
        self.free_at_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_bits_per_byte() {
        assert_eq!(wire_time_ns(1, 115_200), 86_806); // 86.8 us
        assert_eq!(wire_time_ns(960, 9_600), 1_000_000_000);
        assert_eq!(wire_time_ns(1000, 0), 0);
    }

    #[test]
    fn pacer_queues_bursts_and_does_not_bank_idle_time() {
        let mut p = Pacer::new(9_600);
        let byte = wire_time_ns(1, 9_600);
        assert_eq!(p.schedule(0, 1), byte);
        // a second byte handed over at once waits for the first
        assert_eq!(p.schedule(0, 1), 2 * byte);
        // after a long pause the wire starts from "now"
        let later = 10_000_000_000;
        assert_eq!(p.schedule(later, 96), later + 100_000_000);
    }
}

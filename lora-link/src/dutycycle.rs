//! EU868 duty-cycle sub-bands (ETSI EN 300 220-2) and a sliding one-hour airtime budget.
//!
//! The budget is checked on the window that ends when the new frame would end, counting
//! partial overlaps, so the airtime in *every* window of one hour stays within the limit
//! (any window's airtime is bounded by the window ending at its last frame's end, which was
//! checked when that frame was admitted). Time is a [`Duration`] since any fixed origin, so
//! tests drive it with a simulated clock.

use std::collections::VecDeque;
use std::time::Duration;

/// The observation window of ETSI duty-cycle limits.
pub const WINDOW: Duration = Duration::from_secs(3600);

/// An EU868 sub-band and its duty-cycle limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubBand {
    /// ETSI letter (and LoRaWAN name where there is one).
    pub name: &'static str,
    /// Lowest frequency, Hz (inclusive).
    pub low_hz: u32,
    /// Highest frequency, Hz (inclusive).
    pub high_hz: u32,
    /// Duty-cycle limit in parts per million (1 % = 10 000).
    pub duty_ppm: u32,
}

/// EU868 sub-bands (ETSI EN 300 220-2 V3.2.1).
pub const EU868_SUB_BANDS: [SubBand; 6] = [
    SubBand {
        name: "K",
        low_hz: 863_000_000,
        high_hz: 865_000_000,
        duty_ppm: 1_000,
    },
    SubBand {
        name: "L",
        low_hz: 865_000_000,
        high_hz: 868_000_000 - 1,
        duty_ppm: 10_000,
    },
    SubBand {
        name: "M (g1)",
        low_hz: 868_000_000,
        high_hz: 868_600_000,
        duty_ppm: 10_000,
    },
    SubBand {
        name: "N",
        low_hz: 868_700_000,
        high_hz: 869_200_000,
        duty_ppm: 1_000,
    },
    SubBand {
        name: "P (g3)",
        low_hz: 869_400_000,
        high_hz: 869_650_000,
        duty_ppm: 100_000,
    },
    SubBand {
        name: "Q",
        low_hz: 869_700_000,
        high_hz: 870_000_000,
        duty_ppm: 10_000,
    },
];

/// The EU868 sub-band holding `freq_hz`, if any (868.0 MHz lies in M / g1, 1 %).
pub fn eu868_sub_band(freq_hz: u32) -> Option<SubBand> {
    EU868_SUB_BANDS
        .iter()
        .copied()
        .find(|b| (b.low_hz..=b.high_hz).contains(&freq_hz))
}

/// The duty-cycle limit (ppm) for a frequency: an explicit percentage wins, else the EU868
/// sub-band's limit, else 1 % (conservative default outside the EU868 table).
pub fn duty_ppm_for(freq_hz: u32, override_percent: Option<f64>) -> u32 {
    match override_percent {
        Some(p) => (p * 10_000.0).round().clamp(1.0, 1_000_000.0) as u32,
        None => eu868_sub_band(freq_hz)
            .map(|b| b.duty_ppm)
            .unwrap_or(10_000),
    }
}

/// Airtime spent in the last hour of one sub-band, and the admission rule.
#[derive(Debug, Clone)]
pub struct DutyCycleBudget {
    duty_ppm: u32,
    window: Duration,
    log: VecDeque<(Duration, Duration)>,
}

impl DutyCycleBudget {
    /// A budget of `duty_ppm` parts per million over one hour.
    pub fn new(duty_ppm: u32) -> Self {
        Self::with_window(duty_ppm, WINDOW)
    }

    /// A budget over a custom window (tests).
    pub fn with_window(duty_ppm: u32, window: Duration) -> Self {
        Self {
            duty_ppm: duty_ppm.clamp(1, 1_000_000),
            window,
            log: VecDeque::new(),
        }
    }

    /// Total airtime allowed in one window.
    pub fn limit(&self) -> Duration {
        let us = self.window.as_micros() * u128::from(self.duty_ppm) / 1_000_000;
        Duration::from_micros(us as u64)
    }

    /// Airtime of recorded frames inside `[from, to]` (partial overlaps counted partially).
    pub fn usage(&self, from: Duration, to: Duration) -> Duration {
        self.log
            .iter()
            .map(|&(start, toa)| {
                let s = start.max(from);
                let e = (start + toa).min(to);
                e.saturating_sub(s)
            })
            .sum()
    }

    /// Whether a frame of `toa` may start at `now`.
    pub fn allows(&self, now: Duration, toa: Duration) -> bool {
        let end = now + toa;
        self.usage(end.saturating_sub(self.window), end) + toa <= self.limit()
    }

    /// The earliest time at or after `now` when a frame of `toa` may start, or `None` if a
    /// single frame of that length exceeds the whole budget.
    pub fn earliest_start(&self, now: Duration, toa: Duration) -> Option<Duration> {
        if toa > self.limit() {
            return None;
        }
        if self.allows(now, toa) {
            return Some(now);
        }
        // usage is non-increasing in the start time: binary search on microseconds.
        let (mut lo, mut hi) = (
            now.as_micros() as u64,
            (now + self.window).as_micros() as u64,
        );
        while lo + 1 < hi {
            let mid = lo + (hi - lo) / 2;
            if self.allows(Duration::from_micros(mid), toa) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some(Duration::from_micros(hi))
    }

    /// Records a frame that starts at `start` and lasts `toa`; forgets frames older than the
    /// window.
    pub fn record(&mut self, start: Duration, toa: Duration) {
        let horizon = start.saturating_sub(self.window);
        while self.log.front().is_some_and(|&(s, t)| s + t < horizon) {
            self.log.pop_front();
        }
        self.log.push_back((start, toa));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_bands() {
        let g1 = eu868_sub_band(868_000_000).expect("g1");
        assert_eq!(g1.duty_ppm, 10_000);
        assert_eq!(eu868_sub_band(869_525_000).expect("g3").duty_ppm, 100_000);
        assert_eq!(eu868_sub_band(868_900_000).expect("N").duty_ppm, 1_000);
        assert_eq!(eu868_sub_band(915_000_000), None);
        assert_eq!(duty_ppm_for(915_000_000, None), 10_000);
        assert_eq!(duty_ppm_for(868_000_000, Some(0.1)), 1_000);
    }

    #[test]
    fn one_percent_means_wait_99_times_the_frame() {
        let mut b = DutyCycleBudget::new(10_000);
        assert_eq!(b.limit(), Duration::from_secs(36));
        let toa = Duration::from_millis(500);
        // fill the budget: 72 frames of 0.5 s back to back
        let mut t = Duration::ZERO;
        for _ in 0..72 {
            assert!(b.allows(t, toa));
            b.record(t, toa);
            t += toa;
        }
        assert!(!b.allows(t, toa));
        let next = b.earliest_start(t, toa).expect("eventually");
        // the first frame must have left the window
        assert_eq!(next, WINDOW);
        assert!(b.earliest_start(t, Duration::from_secs(37)).is_none());
    }
}

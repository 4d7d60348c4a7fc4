//! Simulated sensor signals: plausible values per quantity.

use manifests::device::Quantity;

/// A small deterministic generator (xorshift64*), seeded per device.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeds the generator (0 is replaced by a constant).
    pub fn new(seed: u64) -> Self {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One simulated sensor with its own state (door position).
#[derive(Debug, Clone)]
pub struct Sensor {
    rng: Rng,
    door_open: bool,
}

/// A reading: the numeric value (or the door state) and its unit.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A measurement.
    Number(f64, &'static str),
    /// Door contact.
    Door(bool),
}

impl Sensor {
    /// A sensor seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Sensor {
            rng: Rng::new(seed),
            door_open: false,
        }
    }

    /// A reading of `q` at `t_s` seconds since the epoch (time of day drives luminosity).
    pub fn read(&mut self, q: Quantity, t_s: f64) -> Value {
        use std::f64::consts::TAU;
        let noise = self.rng.unit() - 0.5;
        match q {
            // 21 °C ± 1.8 over a slow (2 h) cycle, plus ±0.1 noise: inside 19..23.
            Quantity::Temperature => Value::Number(
                round1(21.0 + 1.8 * (TAU * t_s / 7200.0).sin() + 0.2 * noise),
                "°C",
            ),
            // 50 % ± 8 over 3 h, ±1 noise: inside 40..60.
            Quantity::Humidity => Value::Number(
                round1((50.0 + 8.0 * (TAU * t_s / 10800.0).cos() + 2.0 * noise).clamp(40.0, 60.0)),
                "%",
            ),
            // Daylight between 06:00 and 18:00 UTC peaking at 800 lux, a little at night.
            Quantity::Luminosity => {
                let hour = (t_s / 3600.0) % 24.0;
                let day = ((hour - 6.0) / 12.0 * std::f64::consts::PI).sin().max(0.0);
                Value::Number(round1((800.0 * day + 5.0 + 10.0 * noise).max(0.0)), "lx")
            }
            // Opens or closes on about one reading in eight.
            Quantity::Door => {
                if self.rng.unit() < 0.125 {
                    self.door_open = !self.door_open;
                }
                Value::Door(self.door_open)
            }
            Quantity::Other => Value::Number(round1(100.0 * self.rng.unit()), ""),
        }
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_stay_in_plausible_ranges() {
        let mut s = Sensor::new(7);
        let mut doors = std::collections::HashSet::new();
        for i in 0..2000 {
            let t = f64::from(i) * 97.0;
            let Value::Number(temp, _) = s.read(Quantity::Temperature, t) else {
                panic!("number")
            };
            assert!((19.0..=23.0).contains(&temp), "{temp}");
            let Value::Number(h, _) = s.read(Quantity::Humidity, t) else {
                panic!("number")
            };
            assert!((40.0..=60.0).contains(&h), "{h}");
            let Value::Number(l, _) = s.read(Quantity::Luminosity, t) else {
                panic!("number")
            };
            assert!((0.0..=820.0).contains(&l), "{l}");
            if let Value::Door(open) = s.read(Quantity::Door, t) {
                doors.insert(open);
            }
        }
        assert_eq!(doors.len(), 2, "the door both opens and closes");
        // noon is bright, midnight dark
        let Value::Number(noon, _) = s.read(Quantity::Luminosity, 12.0 * 3600.0) else {
            panic!()
        };
        let Value::Number(night, _) = s.read(Quantity::Luminosity, 0.0) else {
            panic!()
        };
        assert!(noon > 700.0 && night < 20.0, "{noon} {night}");
    }
}

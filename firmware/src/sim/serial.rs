//! The serial side of the simulated board: bytes from the pty master, paced at the baud
//! rate in both directions, through the bridge, replies back.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::bus::SharedChip;
use super::persist::FilePersist;
use super::pty::Pty;
use crate::bridge::{Bridge, Reply};
use crate::pacing::{Pacer, wire_time_ns};
use crate::store::Store;

/// The store shared by the bridge and the application.
pub type SharedStore = Arc<Mutex<Box<Store<FilePersist>>>>;

/// What the serial loop tells the rest of the board.
pub trait BoardEvents: Send {
    /// A blob was committed or deleted.
    fn blob_changed(&self, name: &str);
    /// `fw:reboot()` was handled.
    fn rebooted(&self);
}

/// Runs the bridge on `pty` until `stop` is set.
pub struct SerialLoop {
    /// Baud rate for pacing (0 = unpaced).
    pub baud: u32,
    /// The chip.
    pub chip: SharedChip,
    /// The store.
    pub store: SharedStore,
    /// Updated with [`super::now_ms`] whenever a line was handled.
    pub last_line_ms: Arc<AtomicU64>,
    /// Set to stop.
    pub stop: Arc<AtomicBool>,
    /// Simulated line noise (off by default).
    pub noise: LineNoise,
}

/// Simulated noise on the serial line: each byte is dropped, or has one bit flipped, with
/// probability `rate` (half each), in both directions.
#[derive(Debug, Clone)]
pub struct LineNoise {
    rate: f64,
    state: u64,
    /// Bytes dropped so far.
    pub dropped: u64,
    /// Bytes corrupted so far.
    pub flipped: u64,
}

impl LineNoise {
    /// Noise at `rate` per byte (0 = a clean line).
    pub fn new(rate: f64) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15)
            | 1;
        LineNoise {
            rate: rate.clamp(0.0, 1.0),
            state: seed,
            dropped: 0,
            flipped: 0,
        }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*: plenty for noise.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Passes `b` through the line: `None` if it was lost.
    pub fn pass(&mut self, b: u8) -> Option<u8> {
        if self.rate <= 0.0 {
            return Some(b);
        }
        let r = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        if r >= self.rate {
            Some(b)
        } else if r < self.rate / 2.0 {
            self.dropped += 1;
            None
        } else {
            self.flipped += 1;
            Some(b ^ (1 << (self.next() % 8)))
        }
    }
}

/// Bytes the board's UART driver hands over per read: a burst is paced as one, so a late
/// wake-up of the simulator costs it once per burst, not once per few bytes.
pub const READ_BURST: usize = 512;

/// Schedules a burst of `len` bytes handed to the UART at `now_ns`: the 16-byte pieces it is
/// written in and, for each, when it has left the wire. A UART sends a burst back to back, so
/// every piece's time counts from the burst's start: a late wake-up of the simulator delays
/// one piece, it does not slow the wire down.
pub fn burst_schedule(
    tx: &mut Pacer,
    baud: u32,
    now_ns: u64,
    len: usize,
) -> Vec<(std::ops::Range<usize>, u64)> {
    let end = tx.schedule(now_ns, len as u64);
    let start = end.saturating_sub(wire_time_ns(len as u64, baud));
    (0..len)
        .step_by(16)
        .map(|at| {
            let to = (at + 16).min(len);
            (at..to, start + wire_time_ns(to as u64, baud))
        })
        .collect()
}

impl SerialLoop {
    /// Runs until stopped or the pty fails.
    pub fn run(self, pty: &Pty, events: &dyn BoardEvents) -> std::io::Result<()> {
        let epoch = Instant::now();
        let ns = |t: Instant| u64::try_from(t.duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
        let sleep_until = |t_ns: u64| {
            let now = ns(Instant::now());
            if t_ns > now {
                std::thread::sleep(Duration::from_nanos(t_ns - now));
            }
        };
        let mut rx = Pacer::new(self.baud);
        let mut tx = Pacer::new(self.baud);
        let mut bridge = Bridge::new();
        let mut reply = Reply::new();
        let mut master = pty.master();
        let mut buf = [0u8; READ_BURST];
        let trace = std::env::var_os("SENSOR_SIM_TRACE").is_some();
        let mut traced: Vec<u8> = Vec::new();
        let mut noise = self.noise.clone();
        while !self.stop.load(Ordering::SeqCst) {
            let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(100u16)).map_err(std::io::Error::from)? == 0 {
                continue;
            }
            let n = match master.read(&mut buf) {
                Ok(0) => continue,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // EIO: no process has the slave open (we keep it open, so rare).
                Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Err(e) => return Err(e),
            };
            // The bytes arrive no faster than the wire carries them.
            sleep_until(rx.schedule(ns(Instant::now()), n as u64));
            for &b in &buf[..n] {
                let Some(b) = noise.pass(b) else { continue };
                if trace && traced.len() < 1024 {
                    traced.push(b);
                }
                let outcome = {
                    let mut chip = self
                        .chip
                        .lock()
                        .map_err(|_| std::io::Error::other("chip lock poisoned"))?;
                    let mut store = self
                        .store
                        .lock()
                        .map_err(|_| std::io::Error::other("store lock poisoned"))?;
                    bridge.receive(b, &mut chip, &mut store, &mut reply)
                };
                let Some(outcome) = outcome else { continue };
                if trace {
                    eprintln!(
                        "sensor-sim: > {:?}  < {:?}",
                        String::from_utf8_lossy(&traced),
                        String::from_utf8_lossy(reply.as_bytes())
                    );
                    traced.clear();
                }
                self.last_line_ms
                    .store(super::now_ms().max(1), Ordering::SeqCst);
                let bytes = reply.as_bytes();
                for (piece, at) in
                    burst_schedule(&mut tx, self.baud, ns(Instant::now()), bytes.len())
                {
                    sleep_until(at);
                    let noisy: Vec<u8> =
                        bytes[piece].iter().filter_map(|&b| noise.pass(b)).collect();
                    master.write_all(&noisy)?;
                }
                if let Some(name) = outcome.changed() {
                    events.blob_changed(&String::from_utf8_lossy(name));
                }
                if outcome.reboot {
                    bridge = Bridge::new();
                    if let Ok(mut store) = self.store.lock() {
                        store.reload();
                    }
                    events.rebooted();
                }
            }
        }
        Ok(())
    }
}

//! The simulated air: a UDP hub on 127.0.0.1 that emulated SX1276s (and the `inject` and
//! `sniff` tools) attach to.
//!
//! A chip sends its frame to the hub when its time on air has elapsed (so an aborted
//! transmission never reaches the air), stamped with its start time, frequency, SF, BW, CR,
//! CRC and LDRO settings. The hub applies loss and corruption (bit flips; with the payload CRC
//! on, the receiving chip then flags a CRC error), records every frame as a JSON line, and
//! delivers it to every other attached port. Receiving chips honour frequency, SF, BW, LDRO
//! and sync word, and only hear frames that started while they were in RX mode.
//!
//! Wire format of a datagram (little endian):
//! `"LRA1" | kind (1 HELLO, 2 TX, 3 INJECT, 4 DELIVER) | frame fields | payload`, or
//! `"LRA1" | 5 REFUSED | most ports (u32)` from a full hub.
//!
//! Attachment: a port is attached by its HELLO or TX datagrams and stays attached while it
//! is heard from; an [`AirPort`] in use says hello again every [`KEEPALIVE`], so a receiver
//! is known again shortly after the hub restarts. The hub forgets a port not heard from for
//! [`PORT_TIMEOUT`] (it is gone: UDP tells nothing else on an unconnected socket) and never a
//! live one: beyond [`MAX_PORTS`] live ports it refuses new ones with a REFUSED datagram and
//! a warning on its stderr.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 4] = b"LRA1";
/// Largest datagram: header fields plus a 255-byte payload.
const MAX_DATAGRAM: usize = 64 + 255;
/// Most live ports a hub serves by default; beyond this new ports are refused (a live port
/// is never evicted).
pub const MAX_PORTS: usize = 1024;
/// A port not heard from (hello, keep-alive or transmission) for this long is gone.
pub const PORT_TIMEOUT: Duration = Duration::from_secs(30);
/// An [`AirPort`] in use says hello at least this often.
pub const KEEPALIVE: Duration = Duration::from_secs(1);

/// Microseconds since the Unix epoch (the air's clock, shared by all local processes).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A LoRa frame on the simulated air, with the PHY settings it was sent with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AirFrame {
    /// Carrier frequency, Hz.
    pub freq_hz: u32,
    /// Spreading factor.
    pub sf: u8,
    /// Bandwidth, Hz.
    pub bw_hz: u32,
    /// Coding rate denominator 5..=8.
    pub cr: u8,
    /// Payload CRC present.
    pub crc: bool,
    /// Low data rate optimisation.
    #[serde(default)]
    pub ldro: bool,
    /// Sync word.
    #[serde(default = "default_sync")]
    pub sync_word: u8,
    /// Set by the hub when it corrupted the payload and the CRC would catch it.
    #[serde(default)]
    pub crc_error: bool,
    /// RSSI at the receiver, dBm.
    #[serde(default = "default_rssi")]
    pub rssi_dbm: i16,
    /// SNR at the receiver, quarter dB.
    #[serde(default)]
    pub snr_q4: i8,
    /// Start of transmission, µs since the Unix epoch.
    #[serde(default)]
    pub start_us: u64,
    /// Time on air, µs.
    #[serde(default)]
    pub toa_us: u64,
    /// The LoRa payload as hex (JSON form).
    #[serde(with = "hex_bytes", rename = "hex")]
    pub payload: Vec<u8>,
}

fn default_sync() -> u8 {
    0x12
}
fn default_rssi() -> i16 {
    -60
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s.trim()).map_err(serde::de::Error::custom)
    }
}

impl AirFrame {
    /// A frame with 868.0 MHz SF7 BW125 4/5 CRC-on settings, starting now.
    pub fn new(payload: Vec<u8>) -> Self {
        Self {
            freq_hz: 868_000_000,
            sf: 7,
            bw_hz: 125_000,
            cr: 5,
            crc: true,
            ldro: false,
            sync_word: 0x12,
            crc_error: false,
            rssi_dbm: -60,
            snr_q4: 36,
            start_us: now_us(),
            toa_us: 0,
            payload,
        }
    }
}

/// A datagram of the air protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum AirMsg {
    /// Attach the sending port (receivers, sniffers).
    Hello,
    /// A frame transmitted by a chip (subject to loss and corruption).
    Tx(AirFrame),
    /// A frame injected by a tool (delivered as is).
    Inject(AirFrame),
    /// A frame delivered by the hub.
    Deliver(AirFrame),
    /// The hub is full: it serves this many live ports and did not attach the sender.
    Refused {
        /// The hub's bound.
        max_ports: u32,
    },
}

/// Why a datagram was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AirDecodeError {
    /// Not starting with "LRA1".
    #[error("not an air datagram (bad magic)")]
    Magic,
    /// Unknown kind byte.
    #[error("unknown datagram kind {0}")]
    Kind(u8),
    /// Too short or length field inconsistent.
    #[error("truncated datagram")]
    Truncated,
}

impl AirMsg {
    /// Encodes for the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        let (kind, f) = match self {
            AirMsg::Hello => {
                out.push(1);
                return out;
            }
            AirMsg::Refused { max_ports } => {
                out.push(5);
                out.extend_from_slice(&max_ports.to_le_bytes());
                return out;
            }
            AirMsg::Tx(f) => (2, f),
            AirMsg::Inject(f) => (3, f),
            AirMsg::Deliver(f) => (4, f),
        };
        out.push(kind);
        out.extend_from_slice(&f.freq_hz.to_le_bytes());
        out.push(f.sf);
        out.extend_from_slice(&f.bw_hz.to_le_bytes());
        out.push(f.cr);
        out.push(u8::from(f.crc) | u8::from(f.ldro) << 1 | u8::from(f.crc_error) << 2);
        out.push(f.sync_word);
        out.extend_from_slice(&f.rssi_dbm.to_le_bytes());
        out.push(f.snr_q4 as u8);
        out.extend_from_slice(&f.start_us.to_le_bytes());
        out.extend_from_slice(&f.toa_us.to_le_bytes());
        let len = f.payload.len().min(255);
        out.push(len as u8);
        out.extend_from_slice(&f.payload[..len]);
        out
    }

    /// Decodes a datagram. Never panics.
    pub fn decode(b: &[u8]) -> Result<Self, AirDecodeError> {
        if b.len() < 5 {
            return Err(AirDecodeError::Truncated);
        }
        if &b[..4] != MAGIC {
            return Err(AirDecodeError::Magic);
        }
        let kind = b[4];
        if kind == 1 {
            return Ok(AirMsg::Hello);
        }
        if kind == 5 {
            let bytes: [u8; 4] = b[5..].try_into().map_err(|_| AirDecodeError::Truncated)?;
            return Ok(AirMsg::Refused {
                max_ports: u32::from_le_bytes(bytes),
            });
        }
        if !(2..=4).contains(&kind) {
            return Err(AirDecodeError::Kind(kind));
        }
        let mut r = Reader(&b[5..]);
        let freq_hz = u32::from_le_bytes(r.take()?);
        let [sf] = r.take()?;
        let bw_hz = u32::from_le_bytes(r.take()?);
        let [cr] = r.take()?;
        let [flags] = r.take()?;
        let [sync_word] = r.take()?;
        let rssi_dbm = i16::from_le_bytes(r.take()?);
        let [snr] = r.take()?;
        let start_us = u64::from_le_bytes(r.take()?);
        let toa_us = u64::from_le_bytes(r.take()?);
        let [len] = r.take()?;
        if r.0.len() != usize::from(len) {
            return Err(AirDecodeError::Truncated);
        }
        let f = AirFrame {
            freq_hz,
            sf,
            bw_hz,
            cr,
            crc: flags & 1 != 0,
            ldro: flags & 2 != 0,
            crc_error: flags & 4 != 0,
            sync_word,
            rssi_dbm,
            snr_q4: snr as i8,
            start_us,
            toa_us,
            payload: r.0.to_vec(),
        };
        Ok(match kind {
            2 => AirMsg::Tx(f),
            3 => AirMsg::Inject(f),
            _ => AirMsg::Deliver(f),
        })
    }
}

struct Reader<'a>(&'a [u8]);
impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], AirDecodeError> {
        let (h, t) = self
            .0
            .split_at_checked(N)
            .ok_or(AirDecodeError::Truncated)?;
        self.0 = t;
        h.try_into().map_err(|_| AirDecodeError::Truncated)
    }
}

/// Refuses anything but a loopback address: the simulated air never leaves this machine.
pub fn require_loopback(addr: SocketAddr) -> io::Result<()> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr} is not a loopback address: the simulated air only runs on 127.0.0.1"),
        ))
    }
}

/// A chip's (or tool's) attachment to the hub.
///
/// It keeps itself attached: [`AirPort::drain`] (which receivers call all the time) and
/// [`AirPort::send`] say hello again when the hub has not heard from this port for
/// [`KEEPALIVE`], so a restarted hub knows it again within about that time.
#[derive(Debug)]
pub struct AirPort {
    socket: UdpSocket,
    hub: SocketAddr,
    born: Instant,
    /// Milliseconds since `born` of the last hello or transmission sent.
    last_attach_ms: AtomicU64,
    /// The hub refused this port (its last word was REFUSED, not a delivery).
    refused: AtomicBool,
}

impl AirPort {
    /// Binds an ephemeral 127.0.0.1 port, connects it to `hub` and says hello.
    pub fn connect(hub: SocketAddr) -> io::Result<Self> {
        require_loopback(hub)?;
        let socket = UdpSocket::bind(("127.0.0.1", 0))?;
        socket.connect(hub)?;
        socket.set_nonblocking(true)?;
        let p = Self {
            socket,
            hub,
            born: Instant::now(),
            last_attach_ms: AtomicU64::new(0),
            refused: AtomicBool::new(false),
        };
        p.send(&AirMsg::Hello)?;
        Ok(p)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Sends one message to the hub.
    pub fn send(&self, msg: &AirMsg) -> io::Result<()> {
        if matches!(msg, AirMsg::Hello | AirMsg::Tx(_)) {
            // both attach this port at the hub
            self.last_attach_ms.store(self.now_ms(), Ordering::Relaxed);
        } else {
            self.keep_alive();
        }
        self.socket.send(&msg.encode()).map(|_| ())
    }

    /// Says hello if the hub has not heard from this port for [`KEEPALIVE`]. A failure (the
    /// hub is down) is retried at the next interval.
    pub fn keep_alive(&self) {
        let now = self.now_ms();
        let last = self.last_attach_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= KEEPALIVE.as_millis() as u64 {
            self.last_attach_ms.store(now, Ordering::Relaxed);
            let _ = self.socket.send(&AirMsg::Hello.encode());
        }
    }

    /// Whether the hub refused to attach this port (it is full) and has delivered nothing
    /// since.
    pub fn refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    /// Takes every frame delivered so far (non-blocking); undecodable datagrams are skipped.
    pub fn drain(&self) -> Vec<AirFrame> {
        self.keep_alive();
        let mut out = Vec::new();
        let mut buf = [0u8; MAX_DATAGRAM + 16];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => match AirMsg::decode(&buf[..n]) {
                    Ok(AirMsg::Deliver(f)) => {
                        self.refused.store(false, Ordering::Relaxed);
                        out.push(f);
                    }
                    // said once per refusal, not on every refused keep-alive
                    Ok(AirMsg::Refused { max_ports })
                        if !self.refused.swap(true, Ordering::Relaxed) =>
                    {
                        eprintln!(
                            "lora-link: the air hub {} refused this port: it serves {max_ports} \
                             live ports already, the most it takes; frames on the air do not \
                             reach this radio until ports leave (stop idle radios and sniffers, \
                             or restart the hub)",
                            self.hub
                        );
                    }
                    _ => {}
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ECONNREFUSED from an earlier send while the hub was down: keep going
                Err(_) => break,
            }
        }
        out
    }

    /// Waits up to `timeout` for the next delivered frame.
    pub fn recv_timeout(&self, timeout: Duration) -> io::Result<Option<AirFrame>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(f) = self.drain().into_iter().next() {
                return Ok(Some(f));
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Hub behaviour.
#[derive(Debug, Clone, Default)]
pub struct HubConfig {
    /// Probability that a transmitted frame is lost (0..=1).
    pub loss: f64,
    /// Probability that a transmitted frame is corrupted (1..=3 bit flips).
    pub corrupt: f64,
    /// Seed of the hub's random generator (reproducible runs).
    pub seed: u64,
    /// Append every frame as a JSON line to this file.
    pub record: Option<PathBuf>,
}

/// Hub counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HubStats {
    /// Frames received from chips.
    pub transmitted: u64,
    /// Frames injected by tools.
    pub injected: u64,
    /// Frames lost on air.
    pub lost: u64,
    /// Frames corrupted on air.
    pub corrupted: u64,
    /// Deliveries (frame × receiving port).
    pub deliveries: u64,
    /// Datagrams that were not understood.
    pub garbage: u64,
    /// Ports attached now.
    pub ports: u64,
    /// Ports forgotten because they were not heard from for the port timeout.
    pub expired: u64,
    /// Datagrams from new ports refused because the hub was full.
    pub refused: u64,
}

/// One line of a recording.
#[derive(Debug, Clone, Serialize)]
struct RecordLine<'a> {
    fate: &'a str,
    src: String,
    #[serde(flatten)]
    frame: &'a AirFrame,
}

/// The hub. Create with [`AirHub::bind`], run with [`AirHub::run`] or [`AirHub::spawn`].
#[derive(Debug)]
pub struct AirHub {
    socket: UdpSocket,
    cfg: HubConfig,
    /// Attached ports and when each was last heard from.
    ports: HashMap<SocketAddr, Instant>,
    max_ports: usize,
    port_timeout: Duration,
    last_sweep: Instant,
    last_full_warning: Option<Instant>,
    rng: u64,
    stats: Arc<Mutex<HubStats>>,
    record: Option<BufWriter<File>>,
}

/// A hub running in a thread of this process.
#[derive(Debug)]
pub struct HubHandle {
    /// Its address.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<HubStats>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl HubHandle {
    /// Counters so far.
    pub fn stats(&self) -> HubStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
    /// Stops the hub and waits for its thread.
    pub fn stop(mut self) -> HubStats {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.stats()
    }
}

impl Drop for HubHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl AirHub {
    /// Binds the hub on a loopback address (port 0 = ephemeral).
    pub fn bind(addr: SocketAddr, cfg: HubConfig) -> io::Result<Self> {
        require_loopback(addr)?;
        let socket = UdpSocket::bind(addr)?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let record = match &cfg.record {
            Some(p) => Some(BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
            None => None,
        };
        Ok(Self {
            socket,
            rng: cfg.seed ^ 0x9E37_79B9_7F4A_7C15,
            cfg,
            ports: HashMap::new(),
            max_ports: MAX_PORTS,
            port_timeout: PORT_TIMEOUT,
            last_sweep: Instant::now(),
            last_full_warning: None,
            stats: Arc::default(),
            record,
        })
    }

    /// Sets the most live ports served (at least 1) and the time after which a port not heard
    /// from is forgotten (defaults [`MAX_PORTS`], [`PORT_TIMEOUT`]). A port in use says hello
    /// every [`KEEPALIVE`]: a timeout much shorter than that forgets live ports.
    pub fn set_port_limits(&mut self, max_ports: usize, timeout: Duration) {
        self.max_ports = max_ports.max(1);
        self.port_timeout = timeout;
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Runs in a new thread until the handle is stopped or dropped.
    pub fn spawn(self) -> io::Result<HubHandle> {
        let addr = self.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = self.stats.clone();
        let s2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("air-hub".into())
            .spawn(move || self.run(&s2))?;
        Ok(HubHandle {
            addr,
            stop,
            stats,
            thread: Some(thread),
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> HubStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Serves until `stop` is set.
    pub fn run(mut self, stop: &AtomicBool) -> io::Result<()> {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::SeqCst) {
            if self.last_sweep.elapsed() >= Duration::from_secs(1) {
                self.expire();
            }
            let (n, src) = match self.socket.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(_) => continue, // e.g. ICMP port unreachable from a departed port
            };
            let msg = AirMsg::decode(&buf[..n]);
            self.handle(msg, src);
        }
        if let Some(r) = self.record.as_mut() {
            r.flush()?;
        }
        Ok(())
    }

    fn bump(&self, f: impl FnOnce(&mut HubStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    /// Forgets the ports not heard from for the port timeout.
    fn expire(&mut self) {
        let now = Instant::now();
        self.last_sweep = now;
        let timeout = self.port_timeout;
        let before = self.ports.len();
        self.ports
            .retain(|_, heard| now.duration_since(*heard) < timeout);
        let gone = (before - self.ports.len()) as u64;
        let n = self.ports.len() as u64;
        self.bump(|s| {
            s.expired += gone;
            s.ports = n;
        });
    }

    /// Attaches `src` (or notes that it is alive). Returns false when the hub is full of live
    /// ports: `src` is refused, told so, and no live port is evicted.
    fn attach(&mut self, src: SocketAddr) -> bool {
        let now = Instant::now();
        if let Some(heard) = self.ports.get_mut(&src) {
            *heard = now;
            return true;
        }
        if self.ports.len() >= self.max_ports {
            self.expire();
        }
        if self.ports.len() >= self.max_ports {
            self.bump(|s| s.refused += 1);
            let max = u32::try_from(self.max_ports).unwrap_or(u32::MAX);
            let _ = self
                .socket
                .send_to(&AirMsg::Refused { max_ports: max }.encode(), src);
            if self
                .last_full_warning
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
            {
                self.last_full_warning = Some(now);
                eprintln!(
                    "lora-link air: {} live ports attached, the most this hub serves: refusing \
                     {src} (ports not heard from for {:?} are forgotten)",
                    self.ports.len(),
                    self.port_timeout
                );
            }
            return false;
        }
        self.ports.insert(src, now);
        let n = self.ports.len() as u64;
        self.bump(|s| s.ports = n);
        true
    }

    fn random(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.random() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn handle(&mut self, msg: Result<AirMsg, AirDecodeError>, src: SocketAddr) {
        let (mut frame, injected) = match msg {
            Ok(AirMsg::Hello) => {
                self.attach(src);
                return;
            }
            Ok(AirMsg::Tx(f)) => (f, false),
            Ok(AirMsg::Inject(f)) => (f, true),
            Ok(AirMsg::Deliver(_) | AirMsg::Refused { .. }) | Err(_) => {
                self.bump(|s| s.garbage += 1);
                return;
            }
        };
        let fate = if injected {
            self.bump(|s| s.injected += 1);
            "injected"
        } else {
            self.attach(src);
            self.bump(|s| s.transmitted += 1);
            let loss = self.cfg.loss;
            let corrupt = self.cfg.corrupt;
            if self.chance(loss) {
                "lost"
            } else if self.chance(corrupt) && !frame.payload.is_empty() {
                let flips = 1 + self.random() % 3;
                for _ in 0..flips {
                    let bit = (self.random() % (frame.payload.len() as u64 * 8)) as usize;
                    frame.payload[bit / 8] ^= 1 << (bit % 8);
                }
                frame.crc_error = frame.crc;
                "corrupted"
            } else {
                "delivered"
            }
        };
        match fate {
            "lost" => self.bump(|s| s.lost += 1),
            "corrupted" => self.bump(|s| s.corrupted += 1),
            _ => {}
        }
        if let Some(r) = self.record.as_mut() {
            let line = RecordLine {
                fate,
                src: src.to_string(),
                frame: &frame,
            };
            if let Ok(s) = serde_json::to_string(&line) {
                let _ = writeln!(r, "{s}");
                let _ = r.flush();
            }
        }
        if fate == "lost" {
            return;
        }
        let bytes = AirMsg::Deliver(frame).encode();
        let now = Instant::now();
        let timeout = self.port_timeout;
        let mut n = 0;
        for (p, heard) in &self.ports {
            // A port gone silent is not delivered to (the sweep forgets it soon).
            if *p != src
                && now.duration_since(*heard) < timeout
                && self.socket.send_to(&bytes, p).is_ok()
            {
                n += 1;
            }
        }
        self.bump(|s| s.deliveries += n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_round_trip() {
        let f = AirFrame::new(vec![1, 2, 3]);
        for m in [
            AirMsg::Tx(f.clone()),
            AirMsg::Inject(f.clone()),
            AirMsg::Deliver(f),
            AirMsg::Hello,
            AirMsg::Refused { max_ports: 1024 },
        ] {
            assert_eq!(AirMsg::decode(&m.encode()), Ok(m));
        }
        assert_eq!(AirMsg::decode(b"LRA"), Err(AirDecodeError::Truncated));
        assert_eq!(AirMsg::decode(b"XXXX\x01"), Err(AirDecodeError::Magic));
        assert_eq!(AirMsg::decode(b"LRA1\x09"), Err(AirDecodeError::Kind(9)));
        assert_eq!(
            AirMsg::decode(b"LRA1\x05\x01"),
            Err(AirDecodeError::Truncated)
        );
        let mut b = AirMsg::Tx(AirFrame::new(vec![1, 2, 3])).encode();
        b.pop();
        assert_eq!(AirMsg::decode(&b), Err(AirDecodeError::Truncated));
    }

    #[test]
    fn hub_refuses_non_loopback() {
        let e = AirHub::bind("0.0.0.0:0".parse().expect("addr"), HubConfig::default())
            .expect_err("refused");
        assert!(e.to_string().contains("loopback"));
    }
}

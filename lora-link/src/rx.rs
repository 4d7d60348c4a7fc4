//! The receiver daemon's loop: radio -> [`LinkReceiver`] -> [`RecordSink`].
//!
//! The sink is the seam for republishing: `lora-link rx` prints JSON lines
//! ([`JsonLinesSink`]); an MQTT republisher implements [`RecordSink`] and is passed to
//! [`run`] instead.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::link::{Accepted, FrameError, LinkReceiver, RxStats};
use crate::metrics::{Admit, LogThrottle};
use crate::radio::{Radio, RadioError, RxPacket};
use crate::records::Record;

/// Radio metadata of the frame a record came in.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameMeta {
    /// Sender address.
    pub from: u8,
    /// Destination in the header.
    pub to: u8,
    /// Frame counter.
    pub counter: u32,
    /// RSSI, dBm.
    pub rssi_dbm: i32,
    /// SNR, dB.
    pub snr_db: f32,
}

/// Where verified records go (stdout, an MQTT broker, a test vector...).
pub trait RecordSink {
    /// Delivers one record. An error is reported by [`run`] and stops it.
    fn deliver(&mut self, meta: &FrameMeta, record: &Record) -> Result<(), String>;
    /// A frame was rejected (for logging); default: ignore.
    fn rejected(&mut self, _error: &FrameError) {}
}

impl<F: FnMut(&FrameMeta, &Record) -> Result<(), String>> RecordSink for F {
    fn deliver(&mut self, meta: &FrameMeta, record: &Record) -> Result<(), String> {
        self(meta, record)
    }
}

/// One JSON line per record.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JsonRecord {
    /// MQTT topic.
    pub topic: String,
    /// The payload as text when it is UTF-8, else absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The payload as hex, always.
    pub payload_hex: String,
    /// Sender address.
    pub from: u8,
    /// Frame counter.
    pub counter: u32,
    /// RSSI, dBm.
    pub rssi: i32,
    /// SNR, dB.
    pub snr: f32,
}

impl JsonRecord {
    /// From a record and its frame.
    pub fn new(meta: &FrameMeta, r: &Record) -> Self {
        Self {
            topic: r.topic.clone(),
            payload: String::from_utf8(r.payload.clone()).ok(),
            payload_hex: hex::encode(&r.payload),
            from: meta.from,
            counter: meta.counter,
            rssi: meta.rssi_dbm,
            snr: meta.snr_db,
        }
    }
}

/// Writes [`JsonRecord`] lines to a writer (stdout for `lora-link rx`), and rejections as
/// JSON lines to another, unthrottled (`lora-link rx` gives it [`std::io::sink`] and logs
/// rejections through a [`RejectLog`] instead).
#[derive(Debug)]
pub struct JsonLinesSink<W: Write, L: Write> {
    out: W,
    log: L,
}

impl<W: Write, L: Write> JsonLinesSink<W, L> {
    /// Records to `out`, rejections to `log`.
    pub fn new(out: W, log: L) -> Self {
        Self { out, log }
    }
}

impl<W: Write, L: Write> RecordSink for JsonLinesSink<W, L> {
    fn deliver(&mut self, meta: &FrameMeta, record: &Record) -> Result<(), String> {
        let line =
            serde_json::to_string(&JsonRecord::new(meta, record)).map_err(|e| e.to_string())?;
        writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .map_err(|e| e.to_string())
    }
    fn rejected(&mut self, error: &FrameError) {
        let line = serde_json::json!({"rejected": error.reason(), "error": error.to_string()});
        let _ = writeln!(self.log, "{line}");
    }
}

/// Why [`run`] stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RxError {
    /// The radio failed (not a per-packet error).
    #[error("radio: {0}")]
    Radio(#[from] RadioError),
    /// The sink refused a record.
    #[error("delivering a record: {0}")]
    Sink(String),
    /// The replay state could not be written: stopping is safer than delivering unprotected.
    #[error("{0}")]
    State(FrameError),
}

/// Handles one packet: verify, count, deliver. Returns the accepted frame, if any.
pub fn handle_packet<S: RecordSink + ?Sized>(
    receiver: &mut LinkReceiver,
    sink: &mut S,
    packet: &RxPacket,
) -> Result<Option<Accepted>, RxError> {
    match receiver.accept(&packet.bytes) {
        Ok(a) => {
            let meta = FrameMeta {
                from: a.from,
                to: a.to,
                counter: a.counter,
                rssi_dbm: packet.rssi_dbm,
                snr_db: packet.snr_db,
            };
            for r in &a.records {
                sink.deliver(&meta, r).map_err(RxError::Sink)?;
            }
            Ok(Some(a))
        }
        Err(e @ FrameError::State(_)) => Err(RxError::State(e)),
        Err(e) => {
            sink.rejected(&e);
            Ok(None)
        }
    }
}

/// Logs every rejected frame as it happens, one JSON line each
/// (`{"rejected": reason, "from", "counter", "error"}`), through a [`LogThrottle`]: what a
/// flood would add beyond it is counted and summarised as
/// `{"suppressed_rejections": N, "by_reason": {...}}`.
#[derive(Debug)]
pub struct RejectLog<W: Write> {
    out: W,
    throttle: LogThrottle,
    /// Rejection lines written.
    pub logged: u64,
    /// Rejections not logged one by one (reported in summaries).
    pub suppressed: u64,
}

impl<W: Write> RejectLog<W> {
    /// Lines to `out`, rate-limited by `throttle`.
    pub fn new(out: W, throttle: LogThrottle) -> Self {
        Self {
            out,
            throttle,
            logged: 0,
            suppressed: 0,
        }
    }

    /// One rejected frame (its bytes as received).
    pub fn rejected(&mut self, error: &FrameError, bytes: &[u8], now: Instant) {
        self.summary(now, false);
        if self.throttle.admit(error.reason(), now) == Admit::Suppress {
            self.suppressed += 1;
            return;
        }
        self.logged += 1;
        let (from, counter) = sender_and_counter(error, bytes);
        // The error may quote what the frame carried: escaped before it reaches a journal.
        let line = serde_json::json!({"rejected": error.reason(), "from": from,
            "counter": counter, "error": manifests::text::escape(&error.to_string())});
        let _ = writeln!(self.out, "{line}").and_then(|_| self.out.flush());
    }

    /// Writes one line that is not a rejection (a reload), unthrottled.
    pub fn note(&mut self, line: &serde_json::Value) {
        let _ = writeln!(self.out, "{line}").and_then(|_| self.out.flush());
    }

    /// Writes the summary of suppressed lines if one is due at `now` (or `force`).
    pub fn summary(&mut self, now: Instant, force: bool) {
        if let Some(by_reason) = self.throttle.summary(now, force) {
            let n: u64 = by_reason.values().sum();
            let line = serde_json::json!({"suppressed_rejections": n, "by_reason": by_reason});
            let _ = writeln!(self.out, "{line}").and_then(|_| self.out.flush());
        }
    }
}

/// The sender and the frame counter a rejection is about: from the error when it knows
/// them, else from the header (FROM; the 16 counter bits on air).
pub fn sender_and_counter(error: &FrameError, bytes: &[u8]) -> (Option<u8>, Option<u32>) {
    let from_header = bytes.get(1).copied();
    let low_on_air = match (bytes.get(2), bytes.get(4)) {
        (Some(&lo), Some(&hi)) if bytes.len() >= crate::frame::OVERHEAD => {
            Some(u32::from(lo) | (u32::from(hi) << 8))
        }
        _ => None,
    };
    match error {
        FrameError::Duplicate { from, counter }
        | FrameError::Replay { from, counter, .. }
        | FrameError::OutOfWindow { from, counter, .. }
        | FrameError::BadRecords { from, counter, .. } => (Some(*from), Some(*counter)),
        FrameError::BadMic {
            from, counter_low, ..
        } => (Some(*from), Some(u32::from(*counter_low))),
        FrameError::UnknownSender { from }
        | FrameError::UnknownKey { from, .. }
        | FrameError::RetiredKey { from, .. }
        | FrameError::TopicTableMismatch { from, .. } => (Some(*from), low_on_air),
        _ => (from_header, low_on_air),
    }
}

/// Receives until `stop` is set (checked every `poll` interval) or `max_frames` frames were
/// accepted. Per-packet radio errors (CRC) are counted and skipped. Rejected frames are only
/// counted and handed to the sink; [`run_watched`] also logs them and shares the counters.
///
/// The radio is read on its own thread, which does nothing but take packets out of the chip:
/// an SX127x in continuous receive keeps one packet, and the next one overwrites it. Checking,
/// persisting the replay state (an fsync, which can take hundreds of milliseconds on an SD card
/// or a busy disk) and handing records to the sink happen on this thread, in arrival order;
/// what is still queued when `stop` is set is processed before returning.
pub fn run<R: Radio + Send + ?Sized, S: RecordSink + ?Sized>(
    radio: &mut R,
    receiver: &mut LinkReceiver,
    sink: &mut S,
    stop: &AtomicBool,
    max_frames: Option<u64>,
) -> Result<(), RxError> {
    let mut log = RejectLog::new(std::io::sink(), LogThrottle::default());
    run_watched(
        radio,
        receiver,
        sink,
        stop,
        max_frames,
        &mut log,
        Watch::default(),
    )
}

/// A reload of the receiver's keys and topic table while it runs (SIGHUP in `lora-link rx`):
/// when `requested` is set, `load` builds a receiver from the manifest again and its keys and
/// table replace the running ones between two packets (counters kept, radio never stopped,
/// so nothing on air is missed). A manifest that does not load leaves the running one in
/// place and is logged.
pub struct Reload<'a> {
    /// Set by the signal handler; cleared when the reload is done.
    pub requested: &'a AtomicBool,
    /// Builds the new receiver.
    pub load: &'a dyn Fn() -> Result<LinkReceiver, String>,
}

impl std::fmt::Debug for Reload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reload")
    }
}

/// What [`run_watched`] shares and accepts while it runs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Watch<'a> {
    /// Kept equal to the receiver's counters after every packet (for the metrics endpoint).
    pub stats: Option<&'a Mutex<RxStats>>,
    /// Reloads of keys and topic table.
    pub reload: Option<&'a Reload<'a>>,
}

/// As [`run`], and every rejected frame goes to `log` as it happens; `watch` shares the
/// counters and accepts reloads.
pub fn run_watched<R: Radio + Send + ?Sized, S: RecordSink + ?Sized, W: Write>(
    radio: &mut R,
    receiver: &mut LinkReceiver,
    sink: &mut S,
    stop: &AtomicBool,
    max_frames: Option<u64>,
    log: &mut RejectLog<W>,
    watch: Watch<'_>,
) -> Result<(), RxError> {
    let done = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel::<Result<RxPacket, RadioError>>();
    std::thread::scope(|scope| {
        let done = &done;
        scope.spawn(move || {
            while !stop.load(Ordering::SeqCst) && !done.load(Ordering::SeqCst) {
                match radio.receive(Duration::from_millis(100)) {
                    Ok(Some(p)) => {
                        if tx.send(Ok(p)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let fatal = !e.is_per_packet();
                        if tx.send(Err(e)).is_err() || fatal {
                            return;
                        }
                    }
                }
            }
        });
        let result = process(&rx, receiver, sink, max_frames, log, watch);
        log.summary(Instant::now(), true);
        // the radio thread stops within one receive timeout; the channel then ends
        done.store(true, Ordering::SeqCst);
        result
    })
}

/// Copies the receiver's counters into the shared view.
fn share(receiver: &LinkReceiver, stats: Option<&Mutex<RxStats>>) {
    if let Some(s) = stats {
        *s.lock().unwrap_or_else(|p| p.into_inner()) = receiver.stats().clone();
    }
}

/// The processing half of [`run`]: until the radio thread ends (its sender is dropped) or
/// `max_frames` frames were accepted.
fn process<S: RecordSink + ?Sized, W: Write>(
    packets: &std::sync::mpsc::Receiver<Result<RxPacket, RadioError>>,
    receiver: &mut LinkReceiver,
    sink: &mut S,
    max_frames: Option<u64>,
    log: &mut RejectLog<W>,
    watch: Watch<'_>,
) -> Result<(), RxError> {
    let stats = watch.stats;
    let mut accepted = 0u64;
    share(receiver, stats);
    while max_frames.is_none_or(|m| accepted < m) {
        if let Some(r) = watch.reload {
            reload(r, receiver, log);
        }
        let packet = match packets.recv_timeout(Duration::from_millis(200)) {
            Ok(p) => p,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                log.summary(Instant::now(), false);
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        };
        let outcome = handle_logged(receiver, sink, packet, log);
        share(receiver, stats);
        match outcome {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Does a requested reload: the new keys and table, or a logged refusal.
fn reload<W: Write>(r: &Reload<'_>, receiver: &mut LinkReceiver, log: &mut RejectLog<W>) {
    if !r.requested.swap(false, Ordering::SeqCst) {
        return;
    }
    match (r.load)() {
        Ok(new) => {
            receiver.reload_from(new);
            log.note(&serde_json::json!({"reloaded": true,
                "keys": receiver.key_ids(), "topic_table": receiver.table_fingerprint().hex()}));
        }
        Err(e) => log.note(&serde_json::json!({"reloaded": false,
            "error": manifests::text::escape(&e), "kept": "the running keys and topic table"})),
    }
}

/// One packet or per-packet radio error: whether a frame was accepted.
fn handle_logged<S: RecordSink + ?Sized, W: Write>(
    receiver: &mut LinkReceiver,
    sink: &mut S,
    packet: Result<RxPacket, RadioError>,
    log: &mut RejectLog<W>,
) -> Result<bool, RxError> {
    match packet {
        Ok(p) => {
            let mut logging = Logging {
                sink,
                log,
                bytes: &p.bytes,
            };
            Ok(handle_packet(receiver, &mut logging, &p)?.is_some())
        }
        Err(e) if e.is_per_packet() => {
            if matches!(e, RadioError::PayloadCrc { .. }) {
                receiver.count_phy_crc_error();
            }
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// A sink that also logs rejections (with the frame's header) before handing them on.
struct Logging<'a, S: RecordSink + ?Sized, W: Write> {
    sink: &'a mut S,
    log: &'a mut RejectLog<W>,
    bytes: &'a [u8],
}

impl<S: RecordSink + ?Sized, W: Write> RecordSink for Logging<'_, S, W> {
    fn deliver(&mut self, meta: &FrameMeta, record: &Record) -> Result<(), String> {
        self.sink.deliver(meta, record)
    }
    fn rejected(&mut self, error: &FrameError) {
        self.log.rejected(error, self.bytes, Instant::now());
        self.sink.rejected(error);
    }
}

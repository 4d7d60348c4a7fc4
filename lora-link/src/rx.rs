//! The receiver daemon's loop: radio -> [`LinkReceiver`] -> [`RecordSink`].
//!
//! The sink is the seam for republishing: `lora-link rx` prints JSON lines
//! ([`JsonLinesSink`]); an MQTT republisher implements [`RecordSink`] and is passed to
//! [`run`] instead.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::link::{Accepted, FrameError, LinkReceiver};
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
/// JSON lines to another (stderr).
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

/// Receives until `stop` is set (checked every `poll` interval) or `max_frames` frames were
/// accepted. Per-packet radio errors (CRC) are counted and skipped.
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
        let result = process(&rx, receiver, sink, max_frames);
        // the radio thread stops within one receive timeout; the channel then ends
        done.store(true, Ordering::SeqCst);
        result
    })
}

/// The processing half of [`run`]: until the radio thread ends (its sender is dropped) or
/// `max_frames` frames were accepted.
fn process<S: RecordSink + ?Sized>(
    packets: &std::sync::mpsc::Receiver<Result<RxPacket, RadioError>>,
    receiver: &mut LinkReceiver,
    sink: &mut S,
    max_frames: Option<u64>,
) -> Result<(), RxError> {
    let mut accepted = 0u64;
    while max_frames.is_none_or(|m| accepted < m) {
        let Ok(packet) = packets.recv() else {
            return Ok(());
        };
        match packet {
            Ok(p) => {
                if handle_packet(receiver, sink, &p)?.is_some() {
                    accepted += 1;
                }
            }
            Err(e) if e.is_per_packet() => {
                if matches!(e, RadioError::PayloadCrc { .. }) {
                    receiver.count_phy_crc_error();
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

//! The two ends of the link: [`LinkSender`] (queue, duty cycle, packing, counters, sealing)
//! and [`LinkReceiver`] (verification, replay protection, decryption, record decoding).
//!
//! A gateway builds a sender from its manifest, [`submit`](LinkSender::submit)s every MQTT
//! message it receives and [`poll`](LinkSender::poll)s with the current time; when a frame
//! may go, it gets the bytes to hand to a [`crate::radio::Radio`]:
//!
//! ```
//! use std::time::Duration;
//! use lora_link::crypto::LinkKeys;
//! use lora_link::link::{LinkSender, TxPoll, SenderConfig};
//! use lora_link::records::{Record, TopicTable};
//! use lora_link::state::CounterLease;
//! use lora_link::airtime::Modulation;
//!
//! let dir = tempfile::tempdir()?;
//! let table = TopicTable::new([(0, "maison/salon/temperature")]);
//! let cfg = SenderConfig::new(10, 1, Modulation::new(7, 125_000, 5)?, 10_000);
//! let lease = CounterLease::open(dir.path().join("tx.lease"))?;
//! let mut tx = LinkSender::new(LinkKeys::derive(&[7; 16]), cfg, table, lease);
//! tx.submit(Record::new("maison/salon/temperature", b"21.5".to_vec()));
//! match tx.poll(Duration::ZERO)? {
//!     TxPoll::Send(frame) => assert_eq!(frame.bytes.len(), 9 + 1 + 1 + 4),
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use manifests::link::{LinkRole, LoadedLink};

use crate::airtime::{Modulation, max_phy_payload};
use crate::crypto::LinkKeys;
use crate::dutycycle::{DutyCycleBudget, duty_ppm_for};
use crate::frame::{self, MAX_FRAME_LEN, OVERHEAD, ParseError};
use crate::records::{Record, RecordError, TopicTable};
use crate::state::{CounterLease, ReplayState, StateError};

/// Largest forward jump of the counter the receiver accepts (LoRaWAN 1.0's MAX_FCNT_GAP).
pub const MAX_COUNTER_GAP: u32 = 16_384;
/// Default bound of the sender's queue, in records.
pub const DEFAULT_QUEUE_CAPACITY: usize = 256;

/// Sender settings that do not come from the key or the topic table.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// This node's address (FROM).
    pub from: u8,
    /// Destination (TO), 255 = broadcast.
    pub to: u8,
    /// Modulation (decides time on air and the largest frame).
    pub modulation: Modulation,
    /// Duty-cycle limit in ppm (1 % = 10 000).
    pub duty_ppm: u32,
    /// Bound of the queue, in records.
    pub queue_capacity: usize,
}

impl SenderConfig {
    /// Settings with the default queue bound.
    pub fn new(from: u8, to: u8, modulation: Modulation, duty_ppm: u32) -> Self {
        Self {
            from,
            to,
            modulation,
            duty_ppm,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
        }
    }
}

/// What happened to a submitted record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Submit {
    /// Queued.
    Queued,
    /// Queued, and the queue being full, its oldest record was dropped (counted in
    /// [`TxStats::dropped_queue_full`]; the caller should log it).
    QueuedDroppedOldest(Record),
    /// Refused: even alone it does not fit in one frame at this spreading factor (counted in
    /// [`TxStats::rejected_too_large`]).
    RejectedTooLarge {
        /// Bytes it needs.
        needs: usize,
        /// Bytes a frame offers.
        max: usize,
    },
    /// Refused: cannot be encoded (empty topic, topic over 127 bytes and not in the table).
    RejectedInvalid(RecordError),
}

/// A frame ready for the radio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingFrame {
    /// The bytes to transmit.
    pub bytes: Vec<u8>,
    /// Its frame counter.
    pub counter: u32,
    /// How many records it carries.
    pub records: usize,
    /// Its time on air.
    pub time_on_air: Duration,
}

/// Result of [`LinkSender::poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxPoll {
    /// Transmit this now (its airtime is already charged to the budget).
    Send(OutgoingFrame),
    /// Records wait for the duty-cycle budget: poll again at this time.
    WaitUntil(Duration),
    /// Nothing queued.
    Idle,
}

/// Sender counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Frames handed to the radio.
    pub frames_sent: u64,
    /// Records in those frames.
    pub records_sent: u64,
    /// Records submitted and queued.
    pub records_queued: u64,
    /// Records dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Records refused as too large for one frame.
    pub rejected_too_large: u64,
    /// Records refused as not encodable.
    pub rejected_invalid: u64,
    /// Bytes transmitted.
    pub bytes_on_air: u64,
    /// Total time on air.
    pub airtime: Duration,
}

/// The sending end: bounded queue, duty-cycle budget, record packing, counter lease, sealing.
#[derive(Debug)]
pub struct LinkSender {
    keys: LinkKeys,
    cfg: SenderConfig,
    table: TopicTable,
    lease: CounterLease,
    budget: DutyCycleBudget,
    queue: VecDeque<Record>,
    stats: TxStats,
}

/// Why a link end could not be built from a manifest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The manifest describes the other role.
    #[error("{file}: manifest is for role {found:?}, expected {expected:?}")]
    WrongRole {
        /// Manifest file.
        file: std::path::PathBuf,
        /// Role in the file.
        found: LinkRole,
        /// Role needed.
        expected: LinkRole,
    },
    /// Counter state.
    #[error(transparent)]
    State(#[from] StateError),
}

impl LinkSender {
    /// A sender from its parts.
    pub fn new(keys: LinkKeys, cfg: SenderConfig, table: TopicTable, lease: CounterLease) -> Self {
        Self {
            budget: DutyCycleBudget::new(cfg.duty_ppm),
            keys,
            cfg,
            table,
            lease,
            queue: VecDeque::new(),
            stats: TxStats::default(),
        }
    }

    /// A sender from a loaded gateway manifest: key, addresses (FROM = node, TO = first
    /// peer), topic table, modulation, duty cycle of the sub-band, lease in `state_dir`.
    pub fn from_manifest(l: &LoadedLink) -> Result<Self, SetupError> {
        let m = &l.manifest;
        if m.role != LinkRole::Gateway {
            return Err(SetupError::WrongRole {
                file: l.path.clone(),
                found: m.role,
                expected: LinkRole::Gateway,
            });
        }
        let keys = LinkKeys::derive(&l.key.0);
        let lease = CounterLease::open(CounterLease::path_for(
            &m.state_dir,
            &keys.id_hex(),
            m.node.address,
        ))?;
        let cfg = SenderConfig::new(
            m.node.address,
            m.destination()
                .unwrap_or(manifests::link::BROADCAST_ADDRESS),
            Modulation::from_params(&m.radio),
            duty_ppm_for(m.radio.frequency_hz(), m.radio.duty_cycle_percent),
        );
        Ok(Self::new(
            keys,
            cfg,
            TopicTable::new(m.topic_pairs()),
            lease,
        ))
    }

    /// Plaintext bytes one frame can carry at this spreading factor.
    pub fn capacity(&self) -> usize {
        max_phy_payload(self.cfg.modulation.sf).min(MAX_FRAME_LEN) - OVERHEAD
    }

    /// Queues a record (see [`Submit`] for the outcomes; every drop is counted).
    pub fn submit(&mut self, record: Record) -> Submit {
        let needs = self.table.encoded_len(&record);
        if let Err(e) = self.table.encode(&record, &mut Vec::new()) {
            self.stats.rejected_invalid += 1;
            return Submit::RejectedInvalid(e);
        }
        if needs > self.capacity() {
            self.stats.rejected_too_large += 1;
            return Submit::RejectedTooLarge {
                needs,
                max: self.capacity(),
            };
        }
        self.stats.records_queued += 1;
        self.queue.push_back(record);
        if self.queue.len() > self.cfg.queue_capacity.max(1) {
            self.stats.dropped_queue_full += 1;
            if let Some(old) = self.queue.pop_front() {
                return Submit::QueuedDroppedOldest(old);
            }
        }
        Submit::Queued
    }

    /// Records waiting.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Whether the queue is at its bound: the next [`LinkSender::submit`] drops the oldest.
    pub fn is_full(&self) -> bool {
        self.queue.len() >= self.cfg.queue_capacity.max(1)
    }

    /// The counters so far.
    pub fn stats(&self) -> &TxStats {
        &self.stats
    }

    /// The duty-cycle budget (for reporting).
    pub fn budget(&self) -> &DutyCycleBudget {
        &self.budget
    }

    /// If the budget allows a frame at `now`, packs as many queued records as fit, takes a
    /// counter from the lease, seals the frame and charges its airtime.
    pub fn poll(&mut self, now: Duration) -> Result<TxPoll, StateError> {
        if self.queue.is_empty() {
            return Ok(TxPoll::Idle);
        }
        let (plain, n) = self.table.pack(self.queue.iter(), self.capacity());
        if n == 0 {
            // cannot happen: submit() refuses what does not fit alone; drop rather than stall
            self.queue.pop_front();
            self.stats.rejected_too_large += 1;
            return self.poll(now);
        }
        let len = plain.len() + OVERHEAD;
        let toa = self.cfg.modulation.time_on_air(len);
        match self.budget.earliest_start(now, toa) {
            Some(t) if t > now => return Ok(TxPoll::WaitUntil(t)),
            Some(_) => {}
            None => {
                // a frame longer than the whole hourly budget: send fewer records
                self.queue.pop_front();
                self.stats.rejected_too_large += 1;
                return self.poll(now);
            }
        }
        let counter = self.lease.next_counter()?;
        let bytes =
            frame::seal(&self.keys, self.cfg.to, self.cfg.from, counter, &plain).map_err(|e| {
                StateError::Corrupt {
                    path: "<frame>".into(),
                    why: e.to_string(),
                }
            })?;
        self.queue.drain(..n);
        self.budget.record(now, toa);
        self.stats.frames_sent += 1;
        self.stats.records_sent += n as u64;
        self.stats.bytes_on_air += bytes.len() as u64;
        self.stats.airtime += toa;
        Ok(TxPoll::Send(OutgoingFrame {
            bytes,
            counter,
            records: n,
            time_on_air: toa,
        }))
    }
}

/// Why a received frame was rejected. [`FrameError::reason`] names the counter it goes to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Not a well-formed secure frame (too short, too long, not our FLAGS).
    #[error("malformed frame: {0}")]
    Malformed(#[from] ParseError),
    /// Addressed to another node.
    #[error("frame for node {to}, not for us")]
    NotForUs {
        /// TO in the header.
        to: u8,
    },
    /// FROM is not a peer in the manifest.
    #[error("frame from unknown sender {from}")]
    UnknownSender {
        /// FROM in the header.
        from: u8,
    },
    /// MIC does not verify (tampered, corrupted, wrong key or counter far out of sync).
    #[error("bad MIC on frame from {from} (counter low bits {counter_low})")]
    BadMic {
        /// FROM in the header.
        from: u8,
        /// Counter bits on air.
        counter_low: u16,
    },
    /// Same counter as the last accepted frame: a repeat of it.
    #[error("duplicate frame {counter} from {from}")]
    Duplicate {
        /// Sender.
        from: u8,
        /// Its counter.
        counter: u32,
    },
    /// Counter below the last accepted one.
    #[error("replayed frame {counter} from {from} (last accepted {last})")]
    Replay {
        /// Sender.
        from: u8,
        /// Its counter.
        counter: u32,
        /// Last accepted counter.
        last: u32,
    },
    /// Counter too far ahead of the last accepted one.
    #[error(
        "frame {counter} from {from} out of window (last accepted {last:?}, max gap {MAX_COUNTER_GAP})"
    )]
    OutOfWindow {
        /// Sender.
        from: u8,
        /// Its (inferred) counter.
        counter: u32,
        /// Last accepted counter.
        last: Option<u32>,
    },
    /// Authentic frame whose records do not decode (topic tables differ?).
    #[error("authentic frame {counter} from {from} with undecodable records: {error}")]
    BadRecords {
        /// Sender.
        from: u8,
        /// Its counter.
        counter: u32,
        /// Decoder error.
        error: RecordError,
    },
    /// The replay state could not be persisted; the frame was not delivered.
    #[error("replay state: {0}")]
    State(#[from] StateError),
}

impl FrameError {
    /// Short name of the rejection reason (the key in [`RxStats::rejected`]).
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Malformed(ParseError::TooShort { .. }) => "truncated",
            FrameError::Malformed(ParseError::TooLong { .. }) => "too_long",
            FrameError::Malformed(ParseError::NotSecure { .. }) => "not_secure",
            FrameError::NotForUs { .. } => "not_for_us",
            FrameError::UnknownSender { .. } => "unknown_sender",
            FrameError::BadMic { .. } => "bad_mic",
            FrameError::Duplicate { .. } => "duplicate",
            FrameError::Replay { .. } => "replay",
            FrameError::OutOfWindow { .. } => "out_of_window",
            FrameError::BadRecords { .. } => "bad_records",
            FrameError::State(_) => "state_error",
        }
    }
}

/// Receiver counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RxStats {
    /// Frames accepted.
    pub frames_accepted: u64,
    /// Records delivered.
    pub records: u64,
    /// Frames the radio reported with a PHY CRC error.
    pub phy_crc_errors: u64,
    /// Rejected frames by [`FrameError::reason`].
    pub rejected: BTreeMap<&'static str, u64>,
}

impl RxStats {
    /// Count of one rejection reason.
    pub fn rejected(&self, reason: &str) -> u64 {
        self.rejected.get(reason).copied().unwrap_or(0)
    }
}

/// An accepted frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Sender.
    pub from: u8,
    /// Destination in the header (this node or broadcast).
    pub to: u8,
    /// Full 32-bit counter.
    pub counter: u32,
    /// The records, topic and payload restored byte for byte.
    pub records: Vec<Record>,
}

/// Infers the full counter from the last accepted one and the 16 bits on air: the value
/// with those low bits closest above `last`, or, if it lies up to 32768 below, that older
/// value (so replays verify and are reported as replays).
pub fn infer_counter(last: Option<u32>, low: u16) -> Option<u32> {
    let Some(last) = last else {
        return Some(u32::from(low));
    };
    let cand = (last & 0xFFFF_0000) | u32::from(low);
    if cand <= last {
        if last - cand < 0x8000 {
            Some(cand)
        } else {
            cand.checked_add(0x1_0000)
        }
    } else if cand - last > 0x8000 && cand >= 0x1_0000 {
        // far above within this epoch: more likely an old frame from the previous epoch
        Some(cand - 0x1_0000)
    } else {
        Some(cand)
    }
}

/// The receiving end: verifies, rejects (with reasons), persists the replay state, decodes.
#[derive(Debug)]
pub struct LinkReceiver {
    keys: LinkKeys,
    me: u8,
    senders: BTreeSet<u8>,
    table: TopicTable,
    replay: ReplayState,
    stats: RxStats,
}

impl LinkReceiver {
    /// A receiver from its parts.
    pub fn new(
        keys: LinkKeys,
        me: u8,
        senders: impl IntoIterator<Item = u8>,
        table: TopicTable,
        replay: ReplayState,
    ) -> Self {
        Self {
            keys,
            me,
            senders: senders.into_iter().collect(),
            table,
            replay,
            stats: RxStats::default(),
        }
    }

    /// A receiver from a loaded receiver manifest (peers = accepted senders).
    pub fn from_manifest(l: &LoadedLink) -> Result<Self, SetupError> {
        let m = &l.manifest;
        if m.role != LinkRole::Receiver {
            return Err(SetupError::WrongRole {
                file: l.path.clone(),
                found: m.role,
                expected: LinkRole::Receiver,
            });
        }
        let keys = LinkKeys::derive(&l.key.0);
        let replay = ReplayState::open(ReplayState::path_for(
            &m.state_dir,
            &keys.id_hex(),
            m.node.address,
        ))?;
        Ok(Self::new(
            keys,
            m.node.address,
            m.peers.iter().map(|p| p.address),
            TopicTable::new(m.topic_pairs()),
            replay,
        ))
    }

    /// The counters so far.
    pub fn stats(&self) -> &RxStats {
        &self.stats
    }

    /// Counts a frame the radio reported with a PHY CRC error.
    pub fn count_phy_crc_error(&mut self) {
        self.stats.phy_crc_errors += 1;
    }

    /// Verifies and decodes one frame from the radio. On success the counter is persisted
    /// before returning; on error nothing changes but the rejection counter.
    pub fn accept(&mut self, bytes: &[u8]) -> Result<Accepted, FrameError> {
        match self.accept_inner(bytes) {
            Ok(a) => {
                self.stats.frames_accepted += 1;
                self.stats.records += a.records.len() as u64;
                Ok(a)
            }
            Err(e) => {
                *self.stats.rejected.entry(e.reason()).or_default() += 1;
                Err(e)
            }
        }
    }

    fn accept_inner(&mut self, bytes: &[u8]) -> Result<Accepted, FrameError> {
        let raw = frame::parse(bytes)?;
        if raw.to != self.me && raw.to != manifests::link::BROADCAST_ADDRESS {
            return Err(FrameError::NotForUs { to: raw.to });
        }
        if !self.senders.contains(&raw.from) {
            return Err(FrameError::UnknownSender { from: raw.from });
        }
        let from = raw.from;
        let last = self.replay.last(from);
        let bad_mic = FrameError::BadMic {
            from,
            counter_low: raw.counter_low,
        };
        let counter = infer_counter(last, raw.counter_low).ok_or(bad_mic)?;
        if !raw.mic_ok(&self.keys, counter) {
            return Err(FrameError::BadMic {
                from,
                counter_low: raw.counter_low,
            });
        }
        match last {
            Some(l) if counter == l => return Err(FrameError::Duplicate { from, counter }),
            Some(l) if counter < l => {
                return Err(FrameError::Replay {
                    from,
                    counter,
                    last: l,
                });
            }
            Some(l) if counter - l > MAX_COUNTER_GAP => {
                return Err(FrameError::OutOfWindow {
                    from,
                    counter,
                    last,
                });
            }
            None if counter > MAX_COUNTER_GAP => {
                return Err(FrameError::OutOfWindow {
                    from,
                    counter,
                    last,
                });
            }
            _ => {}
        }
        let plain = raw.decrypt(&self.keys, counter);
        let records = self
            .table
            .decode(&plain)
            .map_err(|error| FrameError::BadRecords {
                from,
                counter,
                error,
            })?;
        self.replay.accept(from, counter)?;
        Ok(Accepted {
            from,
            to: raw.to,
            counter,
            records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_inference() {
        assert_eq!(infer_counter(None, 5), Some(5));
        assert_eq!(infer_counter(Some(10), 11), Some(11));
        assert_eq!(infer_counter(Some(10), 10), Some(10));
        assert_eq!(infer_counter(Some(10), 3), Some(3));
        assert_eq!(infer_counter(Some(0xFFF0), 0x0002), Some(0x1_0002));
        assert_eq!(infer_counter(Some(0x1_0002), 0xFFF0), Some(0xFFF0));
        assert_eq!(infer_counter(Some(0x1_0010), 0x0005), Some(0x1_0005));
        assert_eq!(
            infer_counter(Some(u32::MAX), 0x0000_u16.wrapping_sub(0x9000)),
            None
        );
    }
}

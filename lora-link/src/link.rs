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
//!     TxPoll::Send(frame) => assert_eq!(frame.bytes.len(), 10 + 1 + 1 + 4),
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use manifests::link::{LinkRole, LoadedLink};

use crate::airtime::{Modulation, max_phy_payload};
use crate::crypto::LinkKeys;
use crate::dutycycle::{DutyCycleBudget, duty_ppm_for};
use crate::frame::{self, MAX_FRAME_LEN, OVERHEAD, ParseError};
use crate::records::{Record, RecordError, TableFingerprint, TopicTable};
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
    /// Id of the link key (its low bit is the key phase on air).
    pub key_id: u32,
}

impl SenderConfig {
    /// Settings with the default queue bound and key id 0.
    pub fn new(from: u8, to: u8, modulation: Modulation, duty_ppm: u32) -> Self {
        Self {
            from,
            to,
            modulation,
            duty_ppm,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            key_id: 0,
        }
    }

    /// The same settings with link key id `key_id`.
    pub fn with_key_id(mut self, key_id: u32) -> Self {
        self.key_id = key_id;
        self
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
    fingerprint: TableFingerprint,
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
    /// A gateway manifest without `[key]`.
    #[error("{file}: a gateway manifest needs its link key in `[key]`")]
    NoKey {
        /// Manifest file.
        file: std::path::PathBuf,
    },
}

impl LinkSender {
    /// A sender from its parts.
    pub fn new(keys: LinkKeys, cfg: SenderConfig, table: TopicTable, lease: CounterLease) -> Self {
        Self {
            budget: DutyCycleBudget::new(cfg.duty_ppm),
            keys,
            cfg,
            fingerprint: table.fingerprint(),
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
        let key = l.key.as_ref().ok_or_else(|| SetupError::NoKey {
            file: l.path.clone(),
        })?;
        let keys = LinkKeys::derive(&key.0);
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
        )
        .with_key_id(m.key_id);
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

    /// Id of the link key it seals under.
    pub fn key_id(&self) -> u32 {
        self.cfg.key_id
    }

    /// Fingerprint of its topic table (its first byte is in every frame).
    pub fn table_fingerprint(&self) -> TableFingerprint {
        self.fingerprint
    }

    /// Switches to another link key (a rotation): later frames are sealed under `keys` with
    /// id `key_id` and counters from `lease` (a new key starts a new counter space). What is
    /// queued stays queued and goes under the new key: nothing is lost.
    pub fn rekey(&mut self, keys: LinkKeys, key_id: u32, lease: CounterLease) {
        self.keys = keys;
        self.cfg.key_id = key_id;
        self.lease = lease;
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
        let seal_key = frame::SealKey {
            keys: &self.keys,
            key_id: self.cfg.key_id,
            table: self.fingerprint,
        };
        let bytes =
            frame::seal(&seal_key, self.cfg.to, self.cfg.from, counter, &plain).map_err(|e| {
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
    /// The key phase names no key this receiver holds for the sender: the gateway was
    /// rotated and this receiver not updated (or the frame is forged).
    #[error(
        "frame from {from} under a link key this receiver does not hold (key phase {phase}): install the receiver's manifest emitted after the gateway's rotation and reload `lora-link rx`"
    )]
    UnknownKey {
        /// Sender.
        from: u8,
        /// Key phase on air.
        phase: u8,
    },
    /// The frame's key phase names a key whose rotation window has ended.
    #[error(
        "frame from {from} under retired link key {key_id} (retired since Unix time {retired_at}): the gateway still sends under it; install the gateway's new manifest and restart it"
    )]
    RetiredKey {
        /// Sender.
        from: u8,
        /// Id of the retired key.
        key_id: u32,
        /// When it was retired (Unix seconds).
        retired_at: u64,
    },
    /// The sender's topic-index table differs from ours: decoding would restore readings
    /// under wrong topics, so the frame is dropped.
    #[error(
        "frame from {from} encoded with another topic table (fingerprint byte {theirs:02x}, ours {ours}): the two ends' manifests disagree; emit the gateway and the receiver again from the same site and install both"
    )]
    TopicTableMismatch {
        /// Sender.
        from: u8,
        /// The sender's fingerprint byte on air.
        theirs: u8,
        /// Our table's fingerprint.
        ours: TableFingerprint,
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
            FrameError::UnknownKey { .. } => "unknown_key",
            FrameError::RetiredKey { .. } => "retired_key",
            FrameError::TopicTableMismatch { .. } => "topic_table_mismatch",
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
    /// Id of the link key it verified under.
    pub key_id: u32,
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

/// One of a sender's link keys at the receiver.
#[derive(Debug, Clone)]
pub struct RxKey {
    /// Key id (generation).
    pub id: u32,
    keys: LinkKeys,
    /// When frames under it stop being accepted (end of a rotation window).
    pub retire_at: Option<SystemTime>,
}

impl RxKey {
    /// A key, retired from `retire_at` on if given.
    pub fn new(id: u32, keys: LinkKeys, retire_at: Option<SystemTime>) -> Self {
        Self {
            id,
            keys,
            retire_at,
        }
    }

    fn retired(&self, now: SystemTime) -> Option<u64> {
        self.retire_at.filter(|t| *t <= now).map(|t| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        })
    }
}

/// The receiving end: verifies, rejects (with reasons), persists the replay state, decodes.
/// Each sender (FROM) has its own link keys (one, or two during a rotation window, told
/// apart by the key phase on air); each key is its own counter space, with its replay state
/// file (one line per sender, see [`ReplayState`]).
#[derive(Debug)]
pub struct LinkReceiver {
    me: u8,
    senders: BTreeMap<u8, Vec<RxKey>>,
    replays: BTreeMap<[u8; 4], ReplayState>,
    table: TopicTable,
    fingerprint: TableFingerprint,
    stats: RxStats,
}

impl LinkReceiver {
    /// A receiver that accepts `senders` under one shared key (id 0, never retired), whose
    /// replay state is `replay`.
    pub fn new(
        keys: LinkKeys,
        me: u8,
        senders: impl IntoIterator<Item = u8>,
        table: TopicTable,
        replay: ReplayState,
    ) -> Self {
        let senders = senders
            .into_iter()
            .map(|s| (s, vec![RxKey::new(0, keys.clone(), None)]))
            .collect();
        Self::with_keys(me, senders, BTreeMap::from([(keys.id, replay)]), table)
    }

    /// A receiver from each sender's keys and the replay state of each key (by
    /// [`LinkKeys::id`]; a key without one is refused as a state error when a frame comes).
    pub fn with_keys(
        me: u8,
        senders: BTreeMap<u8, Vec<RxKey>>,
        replays: BTreeMap<[u8; 4], ReplayState>,
        table: TopicTable,
    ) -> Self {
        Self {
            me,
            senders,
            replays,
            fingerprint: table.fingerprint(),
            table,
            stats: RxStats::default(),
        }
    }

    /// A receiver from a loaded receiver manifest: each peer is an accepted sender, with its
    /// keys (its own `keys`, or the manifest's `[key]`); replay states in `state_dir`.
    pub fn from_manifest(l: &LoadedLink) -> Result<Self, SetupError> {
        let m = &l.manifest;
        if m.role != LinkRole::Receiver {
            return Err(SetupError::WrongRole {
                file: l.path.clone(),
                found: m.role,
                expected: LinkRole::Receiver,
            });
        }
        let mut senders = BTreeMap::new();
        let mut replays = BTreeMap::new();
        for (addr, keys) in &l.peer_keys {
            let mut v = Vec::new();
            for k in keys {
                let derived = LinkKeys::derive(&k.key.0);
                if let std::collections::btree_map::Entry::Vacant(e) = replays.entry(derived.id) {
                    let path =
                        ReplayState::path_for(&m.state_dir, &derived.id_hex(), m.node.address);
                    e.insert(ReplayState::open(path)?);
                }
                let retire_at = k
                    .retire_at
                    .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
                v.push(RxKey::new(k.id, derived, retire_at));
            }
            senders.insert(*addr, v);
        }
        Ok(Self::with_keys(
            m.node.address,
            senders,
            replays,
            TopicTable::new(m.topic_pairs()),
        ))
    }

    /// Takes the keys and topic table of `other` (a receiver built from a re-read manifest),
    /// keeping the counters: `lora-link rx` does this on SIGHUP, so a rotation or a new
    /// gateway needs no restart and no frame on air is missed.
    pub fn reload_from(&mut self, other: LinkReceiver) {
        self.me = other.me;
        self.senders = other.senders;
        self.replays = other.replays;
        self.table = other.table;
        self.fingerprint = other.fingerprint;
    }

    /// Fingerprint of this receiver's topic table.
    pub fn table_fingerprint(&self) -> TableFingerprint {
        self.fingerprint
    }

    /// The accepted senders and the ids of their keys.
    pub fn key_ids(&self) -> BTreeMap<u8, Vec<u32>> {
        self.senders
            .iter()
            .map(|(a, ks)| (*a, ks.iter().map(|k| k.id).collect()))
            .collect()
    }

    /// The counters so far.
    pub fn stats(&self) -> &RxStats {
        &self.stats
    }

    /// Counts a frame the radio reported with a PHY CRC error.
    pub fn count_phy_crc_error(&mut self) {
        self.stats.phy_crc_errors += 1;
    }

    /// Verifies and decodes one frame from the radio, now. On success the counter is
    /// persisted before returning; on error nothing changes but the rejection counter.
    pub fn accept(&mut self, bytes: &[u8]) -> Result<Accepted, FrameError> {
        self.accept_at(bytes, SystemTime::now())
    }

    /// As [`LinkReceiver::accept`] at time `now` (which decides whether a key is retired).
    pub fn accept_at(&mut self, bytes: &[u8], now: SystemTime) -> Result<Accepted, FrameError> {
        match self.accept_inner(bytes, now) {
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

    /// The sender's key named by the frame's key phase, if it is not retired.
    fn key_for(&self, from: u8, phase: u8, now: SystemTime) -> Result<&RxKey, FrameError> {
        let keys = self
            .senders
            .get(&from)
            .ok_or(FrameError::UnknownSender { from })?;
        let k = keys
            .iter()
            .find(|k| frame::key_phase(k.id) == phase)
            .ok_or(FrameError::UnknownKey { from, phase })?;
        if let Some(retired_at) = k.retired(now) {
            return Err(FrameError::RetiredKey {
                from,
                key_id: k.id,
                retired_at,
            });
        }
        Ok(k)
    }

    fn accept_inner(&mut self, bytes: &[u8], now: SystemTime) -> Result<Accepted, FrameError> {
        let raw = frame::parse(bytes)?;
        if raw.to != self.me && raw.to != manifests::link::BROADCAST_ADDRESS {
            return Err(FrameError::NotForUs { to: raw.to });
        }
        let from = raw.from;
        let ours = self.fingerprint;
        let key = self.key_for(from, raw.key_phase, now)?.clone();
        if raw.table != ours.on_air() {
            return Err(FrameError::TopicTableMismatch {
                from,
                theirs: raw.table,
                ours,
            });
        }
        let replay = self.replays.get_mut(&key.keys.id).ok_or_else(|| {
            FrameError::State(StateError::Corrupt {
                path: format!("<replay state of key {}>", key.keys.id_hex()).into(),
                why: "no replay state opened for this key".into(),
            })
        })?;
        let last = replay.last(from);
        let bad_mic = FrameError::BadMic {
            from,
            counter_low: raw.counter_low,
        };
        let counter = infer_counter(last, raw.counter_low).ok_or(bad_mic)?;
        if !raw.mic_ok(&key.keys, counter, ours) {
            return Err(FrameError::BadMic {
                from,
                counter_low: raw.counter_low,
            });
        }
        check_counter(from, counter, last)?;
        let plain = raw.decrypt(&key.keys, counter);
        let records = self
            .table
            .decode(&plain)
            .map_err(|error| FrameError::BadRecords {
                from,
                counter,
                error,
            })?;
        replay.accept(from, counter)?;
        Ok(Accepted {
            from,
            to: raw.to,
            counter,
            key_id: key.id,
            records,
        })
    }
}

/// Rejects a repeat, a replay or a jump beyond [`MAX_COUNTER_GAP`].
fn check_counter(from: u8, counter: u32, last: Option<u32>) -> Result<(), FrameError> {
    match last {
        Some(l) if counter == l => Err(FrameError::Duplicate { from, counter }),
        Some(l) if counter < l => Err(FrameError::Replay {
            from,
            counter,
            last: l,
        }),
        Some(l) if counter - l > MAX_COUNTER_GAP => Err(FrameError::OutOfWindow {
            from,
            counter,
            last,
        }),
        None if counter > MAX_COUNTER_GAP => Err(FrameError::OutOfWindow {
            from,
            counter,
            last,
        }),
        _ => Ok(()),
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

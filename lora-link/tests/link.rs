//! The secure link end to end in memory: what a gateway sends, a receiver accepts once, and
//! every tampered, replayed, truncated, foreign or stale frame is rejected and counted.

use std::path::Path;
use std::time::Duration;

use lora_link::airtime::{Modulation, max_phy_payload};
use lora_link::crypto::LinkKeys;
use lora_link::frame::{self, OVERHEAD};
use lora_link::link::{
    FrameError, LinkReceiver, LinkSender, MAX_COUNTER_GAP, SenderConfig, Submit, TxPoll,
};
use lora_link::records::{OLD_SCHEME_BYTES_FOR_16, Record, TopicTable};
use lora_link::state::{CounterLease, ReplayState};

const KEY: [u8; 16] = *b"0123456789abcdef";
const GW: u8 = 10;
const RX: u8 = 1;
const TEMP: &str = "maison/salon/temperature";

fn table() -> TopicTable {
    TopicTable::new([(0, TEMP), (1, "maison/salon/humidite")])
}

fn sender(dir: &Path, sf: u8) -> LinkSender {
    let keys = LinkKeys::derive(&KEY);
    let lease = CounterLease::open(CounterLease::path_for(dir, &keys.id_hex(), GW)).expect("lease");
    let cfg = SenderConfig::new(
        GW,
        RX,
        Modulation::new(sf, 125_000, 5).expect("modulation"),
        10_000,
    );
    LinkSender::new(keys, cfg, table(), lease)
}

fn receiver(dir: &Path) -> LinkReceiver {
    let keys = LinkKeys::derive(&KEY);
    let replay = ReplayState::open(ReplayState::path_for(dir, &keys.id_hex(), RX)).expect("state");
    LinkReceiver::new(keys, RX, [GW], table(), replay)
}

/// What the test's gateway seals with (key id 0, the shared table).
fn sk(keys: &LinkKeys) -> frame::SealKey<'_> {
    frame::SealKey {
        keys,
        key_id: 0,
        table: table().fingerprint(),
    }
}

fn send_one(tx: &mut LinkSender, now: Duration, r: Record) -> Vec<u8> {
    assert_eq!(tx.submit(r), Submit::Queued);
    match tx.poll(now).expect("poll") {
        TxPoll::Send(f) => f.bytes,
        other => panic!("expected a frame, got {other:?}"),
    }
}

#[test]
fn a_reading_travels_byte_for_byte_and_only_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tx = sender(dir.path(), 7);
    let mut rx = receiver(dir.path());
    let payload = br#"{"t":21.5,"h":40}"#.to_vec();
    let bytes = send_one(&mut tx, Duration::ZERO, Record::new(TEMP, payload.clone()));
    let a = rx.accept(&bytes).expect("accepted");
    assert_eq!(a.records, vec![Record::new(TEMP, payload)]);
    assert_eq!((a.from, a.to, a.counter), (GW, RX, 0));
    // the same frame again is a duplicate, counted
    assert!(matches!(
        rx.accept(&bytes),
        Err(FrameError::Duplicate { .. })
    ));
    assert_eq!(rx.stats().rejected("duplicate"), 1);
    // an unknown topic travels inline, binary payload intact
    let bytes = send_one(
        &mut tx,
        Duration::from_secs(100),
        Record::new("cave/porte", vec![0, 0xFF, 0x80]),
    );
    let a = rx.accept(&bytes).expect("accepted");
    assert_eq!(
        a.records,
        vec![Record::new("cave/porte", vec![0, 0xFF, 0x80])]
    );
}

#[test]
fn bytes_on_air_for_a_16_byte_reading_vs_the_old_scheme() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tx = sender(dir.path(), 7);
    let bytes = send_one(
        &mut tx,
        Duration::ZERO,
        Record::new(TEMP, *b"temp=21.5;h=40.0"),
    );
    assert_eq!(bytes.len(), OVERHEAD + 2 + 16);
    assert_eq!(bytes.len(), 28);
    const { assert!(OVERHEAD <= 10) };
    let sf7 = Modulation::new(7, 125_000, 5).expect("m");
    let sf12 = Modulation::new(12, 125_000, 5).expect("m");
    // ours vs JWT/AES-CBC/base64 (~129 bytes): 66.816 ms vs 215.296 ms at SF7,
    // 1646.592 ms vs 4923.392 ms at SF12 (28 bytes take as long as 27 did: same symbols)
    assert_eq!(sf7.time_on_air(28), Duration::from_micros(66_816));
    assert_eq!(
        sf7.time_on_air(OLD_SCHEME_BYTES_FOR_16),
        Duration::from_micros(215_296)
    );
    assert_eq!(sf12.time_on_air(28), Duration::from_micros(1_646_592));
    assert_eq!(
        sf12.time_on_air(OLD_SCHEME_BYTES_FOR_16),
        Duration::from_micros(4_923_392)
    );
}

#[test]
fn every_bit_flip_truncation_and_foreign_frame_is_rejected_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tx = sender(dir.path(), 7);
    let mut rx = receiver(dir.path());
    let good = send_one(&mut tx, Duration::ZERO, Record::new(TEMP, b"21.5".to_vec()));
    let mut rejected = 0;
    for bit in 0..good.len() * 8 {
        let mut f = good.clone();
        f[bit / 8] ^= 1 << (bit % 8);
        let e = rx.accept(&f).expect_err("bit flip accepted");
        assert!(
            matches!(
                e,
                FrameError::BadMic { .. }
                    | FrameError::NotForUs { .. }
                    | FrameError::UnknownSender { .. }
                    | FrameError::UnknownKey { .. }
                    | FrameError::TopicTableMismatch { .. }
                    | FrameError::Malformed(_)
            ),
            "bit {bit}: {e}"
        );
        rejected += 1;
    }
    for len in 0..good.len() {
        assert!(
            rx.accept(&good[..len]).is_err(),
            "truncated to {len} accepted"
        );
        rejected += 1;
    }
    let s = rx.stats();
    assert_eq!(s.rejected.values().sum::<u64>(), rejected);
    assert!(s.rejected("bad_mic") > 0 && s.rejected("truncated") > 0);
    assert_eq!(s.frames_accepted, 0);
    // the untouched frame still goes through: nothing changed
    rx.accept(&good).expect("original accepted");

    // wrong key
    let evil = LinkKeys::derive(b"fedcba9876543210");
    let forged = frame::seal(&sk(&evil), RX, GW, 100, &[0, 1, b'x']).expect("seal");
    assert!(matches!(rx.accept(&forged), Err(FrameError::BadMic { .. })));
    // unknown sender, even with the right key
    let keys = LinkKeys::derive(&KEY);
    let stranger = frame::seal(&sk(&keys), RX, 77, 0, &[0, 1, b'x']).expect("seal");
    assert!(matches!(
        rx.accept(&stranger),
        Err(FrameError::UnknownSender { from: 77 })
    ));
    // addressed to someone else
    let other = frame::seal(&sk(&keys), 2, GW, 5, &[0, 1, b'x']).expect("seal");
    assert!(matches!(
        rx.accept(&other),
        Err(FrameError::NotForUs { to: 2 })
    ));
    // plain RadioHead datagram on the channel
    assert!(matches!(
        rx.accept(&[RX, GW, 0, 0, 1, 2, 3, 4, 5, 6]),
        Err(FrameError::Malformed(_))
    ));
    let s = rx.stats();
    assert_eq!(
        s.rejected("unknown_sender"),
        8 + 1,
        "8 flips of FROM + the stranger"
    );
    assert!(s.rejected("not_for_us") >= 1);
    assert!(s.rejected("not_secure") >= 1);
}

#[test]
fn replays_and_out_of_window_counters_are_rejected_even_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = LinkKeys::derive(&KEY);
    let mut rx = receiver(dir.path());
    let f = |c: u32| frame::seal(&sk(&keys), RX, GW, c, &[0, 1, b'x']).expect("seal");
    rx.accept(&f(5)).expect("5");
    rx.accept(&f(9)).expect("9");
    assert!(matches!(
        rx.accept(&f(7)),
        Err(FrameError::Replay {
            counter: 7,
            last: 9,
            ..
        })
    ));
    assert!(matches!(
        rx.accept(&f(9)),
        Err(FrameError::Duplicate { counter: 9, .. })
    ));
    let far = 9 + MAX_COUNTER_GAP + 1;
    assert!(
        matches!(rx.accept(&f(far)), Err(FrameError::OutOfWindow { counter, .. }) if counter == far)
    );
    rx.accept(&f(9 + MAX_COUNTER_GAP))
        .expect("at the edge of the window");
    // restart: the state on disk keeps rejecting old frames
    drop(rx);
    let mut rx = receiver(dir.path());
    assert!(matches!(rx.accept(&f(9)), Err(FrameError::Replay { .. })));
    assert!(matches!(rx.accept(&f(5)), Err(FrameError::Replay { .. })));
    // counters crossing a 16-bit boundary are inferred
    let base = 9 + MAX_COUNTER_GAP;
    let mut c = base;
    while c < 0x1_0010 {
        c = (c + MAX_COUNTER_GAP).min(0x1_0010);
        rx.accept(&f(c)).expect("forward");
    }
    assert_eq!(
        rx.accept(&f(0x1_0011)).expect("past 65535").counter,
        0x1_0011
    );
    assert_eq!(rx.stats().rejected("replay"), 2);
}

#[test]
fn a_sender_killed_between_lease_and_send_never_reuses_a_counter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rx = receiver(dir.path());
    let mut seen = Vec::new();
    for round in 0..4u64 {
        // each round is a new process: open, send a few, "crash" (drop without cleanup)
        let mut tx = sender(dir.path(), 7);
        for i in 0..3u64 {
            let now = Duration::from_secs(round * 1000 + i * 100);
            let bytes = send_one(&mut tx, now, Record::new(TEMP, b"1".to_vec()));
            let a = rx.accept(&bytes).expect("fresh counter accepted");
            assert!(!seen.contains(&a.counter));
            seen.push(a.counter);
        }
        // killed after taking a counter but before transmitting it
        assert_eq!(
            tx.submit(Record::new(TEMP, b"lost".to_vec())),
            Submit::Queued
        );
        let _ = tx
            .poll(Duration::from_secs(round * 1000 + 500))
            .expect("poll");
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
}

#[test]
fn records_share_a_frame_up_to_the_spreading_factor_limit() {
    for sf in [7u8, 9, 12] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut tx = sender(dir.path(), sf);
        let mut rx = receiver(dir.path());
        let recs: Vec<Record> = (0..40)
            .map(|i| Record::new(TEMP, format!("{:016}", i)))
            .collect();
        for r in &recs {
            assert_eq!(tx.submit(r.clone()), Submit::Queued);
        }
        let mut got = Vec::new();
        let mut now = Duration::ZERO;
        let mut frames = 0;
        while got.len() < recs.len() {
            match tx.poll(now).expect("poll") {
                TxPoll::Send(f) => {
                    assert!(
                        f.bytes.len() <= max_phy_payload(sf),
                        "SF{sf}: {} bytes",
                        f.bytes.len()
                    );
                    // full frames: another 18-byte record would not have fitted
                    if got.len() + f.records < recs.len() {
                        assert!(f.bytes.len() + 18 > max_phy_payload(sf));
                    }
                    got.extend(rx.accept(&f.bytes).expect("accepted").records);
                    frames += 1;
                }
                TxPoll::WaitUntil(t) => now = t,
                TxPoll::Idle => break,
            }
        }
        assert_eq!(got, recs);
        let per_frame = (max_phy_payload(sf) - OVERHEAD) / 18;
        assert_eq!(frames, recs.len().div_ceil(per_frame), "SF{sf}");
    }
    // a record that can never fit is refused and counted, not queued
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tx = sender(dir.path(), 12);
    assert!(matches!(
        tx.submit(Record::new(TEMP, vec![0; 60])),
        Submit::RejectedTooLarge { .. }
    ));
    assert_eq!(tx.stats().rejected_too_large, 1);
}

#[test]
fn ten_messages_per_second_at_sf12_stay_within_one_percent_in_every_hour() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tx = sender(dir.path(), 12);
    let mut sent: Vec<(Duration, Duration)> = Vec::new();
    let mut dropped = 0u64;
    let step = Duration::from_millis(100);
    let horizon = Duration::from_secs(3 * 3600);
    let mut now = Duration::ZERO;
    let mut i = 0u64;
    let mut next_tx = Duration::ZERO;
    while now < horizon {
        if let Submit::QueuedDroppedOldest(_) = tx.submit(Record::new(TEMP, format!("{i:016}"))) {
            dropped += 1;
        }
        i += 1;
        if now >= next_tx {
            match tx.poll(now).expect("poll") {
                TxPoll::Send(f) => {
                    sent.push((now, f.time_on_air));
                    next_tx = now + f.time_on_air; // the radio is busy meanwhile
                }
                TxPoll::WaitUntil(t) => next_tx = t,
                TxPoll::Idle => {}
            }
        }
        now += step;
    }
    let limit = Duration::from_secs(36);
    // every window of one hour, checked at each frame start and end
    for &(s, t) in &sent {
        for w_end in [s + t, s + Duration::from_secs(3600)] {
            let w_start = w_end.saturating_sub(Duration::from_secs(3600));
            let used: Duration = sent
                .iter()
                .map(|&(a, d)| (a + d).min(w_end).saturating_sub(a.max(w_start)))
                .sum();
            assert!(used <= limit, "window ending {w_end:?}: {used:?}");
        }
    }
    let st = tx.stats();
    assert_eq!(st.dropped_queue_full, dropped);
    assert!(dropped > 0, "the bounded queue must have overflowed");
    assert_eq!(st.records_queued, i);
    assert_eq!(
        st.records_sent + st.dropped_queue_full + tx.queued() as u64,
        i
    );
    eprintln!(
        "SF12 10 msg/s for 3 h: {} frames, {} records sent, {} dropped (queue full), {} queued, airtime {:?}",
        st.frames_sent,
        st.records_sent,
        st.dropped_queue_full,
        tx.queued(),
        st.airtime
    );
}

//! The real `sx127x_lora` 0.3.1 driver on two emulated SX1276s talking over the simulated
//! air (a UDP hub on an ephemeral 127.0.0.1 port, in this process).

use std::time::Duration;

use lora_link::air::{AirHub, AirMsg, AirPort, HubConfig};
use lora_link::airtime::Modulation;
use lora_link::crypto::LinkKeys;
use lora_link::link::{FrameError, LinkReceiver, LinkSender, SenderConfig, Submit, TxPoll};
use lora_link::radio::emu::{EmuDelay, Sx1276};
use lora_link::radio::sx127x::{EmulatedSx127x, Sx127x, frf_for, reg};
use lora_link::radio::{Radio, RadioError, RadioSettings};
use lora_link::records::{Record, TopicTable};
use lora_link::state::{CounterLease, ReplayState};

const KEY: [u8; 16] = [0x42; 16];
const TEMP: &str = "maison/salon/temperature";

fn hub(cfg: HubConfig) -> lora_link::air::HubHandle {
    AirHub::bind("127.0.0.1:0".parse().expect("addr"), cfg)
        .expect("bind")
        .spawn()
        .expect("spawn")
}

fn radio(hub: std::net::SocketAddr, settings: &RadioSettings) -> (Sx1276, EmulatedSx127x) {
    let chip = Sx1276::new(Some(AirPort::connect(hub).expect("port")));
    let r =
        Sx127x::new(chip.spi(), chip.cs(), chip.reset(), EmuDelay, settings).expect("driver init");
    (chip, r)
}

fn listen(chip: &Sx1276, r: &mut EmulatedSx127x) {
    assert_eq!(r.receive(Duration::ZERO).expect("rx"), None);
    assert!(chip.is_receiving());
}

fn sf7() -> RadioSettings {
    RadioSettings::eu868(Modulation::new(7, 125_000, 5).expect("m"))
}

#[test]
fn the_real_driver_sends_a_secure_frame_from_one_emulated_chip_to_another() {
    let air = hub(HubConfig::default());
    let (_ca, mut a) = radio(air.addr, &sf7());
    let (cb, mut b) = radio(air.addr, &sf7());
    // a third chip on another frequency hears nothing
    let mut other = sf7();
    other.frequency_hz = 869_525_000;
    let (cc, mut c) = radio(air.addr, &other);
    assert!(
        cc.frequency_hz().abs_diff(869_525_000) < 100,
        "exact Frf, not whole MHz"
    );
    listen(&cb, &mut b);
    listen(&cc, &mut c);

    let dir = tempfile::tempdir().expect("tempdir");
    let keys = LinkKeys::derive(&KEY);
    let table = TopicTable::new([(0, TEMP)]);
    let lease = CounterLease::open(dir.path().join("tx.lease")).expect("lease");
    let cfg = SenderConfig::new(10, 1, Modulation::new(7, 125_000, 5).expect("m"), 10_000);
    let mut tx = LinkSender::new(keys.clone(), cfg, table.clone(), lease);
    let replay = ReplayState::open(dir.path().join("rx.state")).expect("state");
    let mut rx = LinkReceiver::new(keys, 1, [10], table, replay);

    let payload = b"{\"temperature\":21.5}".to_vec();
    assert_eq!(
        tx.submit(Record::new(TEMP, payload.clone())),
        Submit::Queued
    );
    assert_eq!(
        tx.submit(Record::new("maison/cuisine/co2", b"612".to_vec())),
        Submit::Queued
    );
    let TxPoll::Send(frame) = tx.poll(Duration::ZERO).expect("poll") else {
        panic!("no frame")
    };
    a.transmit(&frame.bytes).expect("transmit");
    assert_eq!(a.stats().tx_frames, 1);
    let p = b
        .receive(Duration::from_secs(5))
        .expect("rx")
        .expect("a packet");
    assert_eq!(p.bytes, frame.bytes);
    assert_eq!(p.rssi_dbm, -60);
    let got = rx.accept(&p.bytes).expect("accepted");
    assert_eq!(
        got.records,
        vec![
            Record::new(TEMP, payload),
            Record::new("maison/cuisine/co2", b"612".to_vec())
        ]
    );
    // the chip on 869.525 MHz heard it on the air but not on its channel
    assert_eq!(c.receive(Duration::from_millis(50)).expect("rx"), None);
    assert_eq!(cc.stats().rx_other_channel, 1);
    // TxDone was cleared by the backend (the driver never does)
    assert_eq!(_ca.peek(reg::IRQ_FLAGS) & 0x08, 0);
    let s = air.stop();
    assert_eq!(s.transmitted, 1);
}

#[test]
fn ldro_and_fractional_frequency_are_fixed_by_the_backend() {
    let air = hub(HubConfig::default());
    let mut s = RadioSettings::eu868(Modulation::new(11, 125_000, 5).expect("m"));
    s.frequency_hz = 868_100_000;
    let (chip, _r) = radio(air.addr, &s);
    assert_eq!(
        chip.peek(reg::MODEM_CONFIG3) & 0x08,
        0x08,
        "LDRO on at SF11/BW125"
    );
    let frf = frf_for(868_100_000);
    assert_eq!(
        [
            chip.peek(reg::FRF_MSB),
            chip.peek(reg::FRF_MID),
            chip.peek(reg::FRF_LSB)
        ],
        [(frf >> 16) as u8, (frf >> 8) as u8, frf as u8]
    );
    // the bare driver leaves LDRO off at SF11/BW125 (its integer-ms bug)
    let bare = Sx1276::new(None);
    let mut lora =
        sx127x_lora::LoRa::new(bare.spi(), bare.cs(), bare.reset(), 868, EmuDelay).expect("driver");
    lora.set_spreading_factor(11).expect("sf");
    assert_eq!(bare.peek(reg::MODEM_CONFIG3) & 0x08, 0);
    assert_eq!(bare.peek(reg::FRF_MSB), 0xD9);
}

#[test]
fn corrupted_and_lost_frames_are_dropped_and_counted() {
    // corruption on air: the PHY CRC catches it, the backend (unlike poll_irq) drops it
    let air = hub(HubConfig {
        corrupt: 1.0,
        seed: 7,
        ..HubConfig::default()
    });
    let (_ca, mut a) = radio(air.addr, &sf7());
    let (cb, mut b) = radio(air.addr, &sf7());
    listen(&cb, &mut b);
    let keys = LinkKeys::derive(&KEY);
    let frame = lora_link::frame::seal(
        &lora_link::frame::SealKey::new(&keys, 0, &TopicTable::default()),
        1,
        10,
        0,
        &[0, 2, b'o', b'k'],
    )
    .expect("seal");
    a.transmit(&frame).expect("transmit");
    let e = b.receive(Duration::from_secs(5)).expect_err("crc error");
    assert!(matches!(e, RadioError::PayloadCrc { .. }), "{e}");
    assert_eq!(b.stats().rx_crc_errors, 1);
    assert_eq!(air.stop().corrupted, 1);

    // corruption the CRC misses (injected bit flip with a valid CRC): the MIC catches it
    let air = hub(HubConfig::default());
    let (cb, mut b) = radio(air.addr, &sf7());
    listen(&cb, &mut b);
    let dir = tempfile::tempdir().expect("tempdir");
    let replay = ReplayState::open(dir.path().join("rx.state")).expect("state");
    let mut rx = LinkReceiver::new(keys, 1, [10], TopicTable::default(), replay);
    let mut bad = frame.clone();
    bad[6] ^= 0x10;
    let injector = AirPort::connect(air.addr).expect("port");
    injector
        .send(&AirMsg::Inject(lora_link::air::AirFrame::new(bad)))
        .expect("inject");
    let p = b
        .receive(Duration::from_secs(5))
        .expect("rx")
        .expect("packet");
    assert!(matches!(
        rx.accept(&p.bytes),
        Err(FrameError::BadMic { .. })
    ));
    assert_eq!(rx.stats().rejected("bad_mic"), 1);
    drop(air);

    // loss: nothing arrives, the hub counts it
    let air = hub(HubConfig {
        loss: 1.0,
        ..HubConfig::default()
    });
    let (_ca, mut a) = radio(air.addr, &sf7());
    let (cb, mut b) = radio(air.addr, &sf7());
    listen(&cb, &mut b);
    a.transmit(&frame).expect("transmit");
    assert_eq!(b.receive(Duration::from_millis(200)).expect("rx"), None);
    assert_eq!(air.stop().lost, 1);
}

#[test]
fn a_frame_started_before_the_receiver_listened_is_missed() {
    let air = hub(HubConfig::default());
    let (_ca, mut a) = radio(air.addr, &sf7());
    let (cb, mut b) = radio(air.addr, &sf7());
    a.transmit(&[1, 2, 3, 4, 5, 6, 7, 8, 9]).expect("transmit");
    // the frame is on the hub now; b only starts listening afterwards
    std::thread::sleep(Duration::from_millis(20));
    listen(&cb, &mut b);
    assert_eq!(b.receive(Duration::from_millis(50)).expect("rx"), None);
    assert_eq!(cb.stats().rx_missed, 1);
}

/// A sink that stalls on its first record (a slow fsync, a busy broker) and keeps the rest.
struct SlowSink {
    stall: Duration,
    records: Vec<(u32, Record)>,
}

impl lora_link::rx::RecordSink for SlowSink {
    fn deliver(&mut self, meta: &lora_link::rx::FrameMeta, record: &Record) -> Result<(), String> {
        if self.records.is_empty() {
            std::thread::sleep(self.stall);
        }
        self.records.push((meta.counter, record.clone()));
        Ok(())
    }
    fn rejected(&mut self, error: &FrameError) {
        panic!("rejected: {error}");
    }
}

#[test]
fn back_to_back_frames_are_all_received_while_the_processing_stalls() {
    let air = hub(HubConfig::default());
    let (_ca, mut a) = radio(air.addr, &sf7());
    let (cb, mut b) = radio(air.addr, &sf7());
    listen(&cb, &mut b);
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = LinkKeys::derive(&KEY);
    let table = TopicTable::new([(0, TEMP)]);
    let lease = CounterLease::open(dir.path().join("tx.lease")).expect("lease");
    let cfg = SenderConfig::new(10, 1, Modulation::new(7, 125_000, 5).expect("m"), 1_000_000);
    let mut tx = LinkSender::new(keys.clone(), cfg, table.clone(), lease);
    let replay = ReplayState::open(dir.path().join("rx.state")).expect("state");
    let mut rx = LinkReceiver::new(keys, 1, [10], table, replay);

    // Five single-record frames, back to back (about 57 ms on air each), while the receiving
    // side spends 400 ms on the first record: the radio thread must keep reading the chip.
    const FRAMES: u32 = 5;
    let sender = std::thread::spawn(move || {
        for i in 0..FRAMES {
            let _ = tx.submit(Record::new(TEMP, format!("{i}").into_bytes()));
            let TxPoll::Send(f) = tx.poll(Duration::ZERO).expect("poll") else {
                panic!("no frame")
            };
            a.transmit(&f.bytes).expect("transmit");
        }
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        // a frame lost would leave the receiver waiting: give up after 10 s
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(10));
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    let mut sink = SlowSink {
        stall: Duration::from_millis(400),
        records: Vec::new(),
    };
    lora_link::rx::run(&mut b, &mut rx, &mut sink, &stop, Some(u64::from(FRAMES))).expect("run");
    sender.join().expect("sender");
    let counters: Vec<u32> = sink.records.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        counters,
        (0..FRAMES).collect::<Vec<_>>(),
        "every frame, in order"
    );
    assert_eq!(cb.stats().rx_overruns, 0);
    air.stop();
}

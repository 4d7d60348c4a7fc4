//! The no_std core, driven the way a host drives a board: lines in, replies out.

use firmware::app::{Action, Backoff, Qos, Schedule, SensorApp, State};
use firmware::bridge::{Bridge, Reply};
use firmware::chip::{Atecc, BusError, I2cBus};
use firmware::crc::crc32;
use firmware::store::{
    Flash, FlashPersist, MAX_BLOB_LEN, MAX_BLOBS, Persist, STORE_CAPACITY, StorageError, Store,
    StoreError,
};

/// A chip double: answers wake, records command packets, answers each with a canned frame
/// after `busy_polls` NACKed reads.
#[derive(Default)]
struct FakeBus {
    packets: Vec<Vec<u8>>,
    response: Vec<u8>,
    read_pos: usize,
    busy_polls: usize,
    nacks_left: usize,
    dead: bool,
    idles: usize,
}

impl I2cBus for FakeBus {
    fn wake(&mut self) -> Result<[u8; 4], BusError> {
        if self.dead {
            Err(BusError::Nack)
        } else {
            Ok([0x04, 0x11, 0x33, 0x43])
        }
    }
    fn write(&mut self, bytes: &[u8]) -> Result<(), BusError> {
        if self.dead {
            return Err(BusError::Nack);
        }
        match bytes[0] {
            0x03 => {
                self.packets.push(bytes[1..].to_vec());
                self.read_pos = 0;
                self.nacks_left = self.busy_polls;
            }
            0x02 => self.idles += 1,
            _ => {}
        }
        Ok(())
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, BusError> {
        if self.dead {
            return Err(BusError::Nack);
        }
        if self.nacks_left > 0 {
            self.nacks_left -= 1;
            return Err(BusError::Nack);
        }
        let n = buf.len().min(self.response.len() - self.read_pos);
        buf[..n].copy_from_slice(&self.response[self.read_pos..self.read_pos + n]);
        self.read_pos += n;
        Ok(n)
    }
    fn delay_us(&mut self, _us: u32) {}
}

/// RAM-backed persistence that counts saves.
#[derive(Default)]
struct RamPersist {
    image: Vec<u8>,
    saves: usize,
    fail: bool,
}

impl Persist for RamPersist {
    fn load(&mut self, buf: &mut [u8]) -> Result<usize, StorageError> {
        buf[..self.image.len()].copy_from_slice(&self.image);
        Ok(self.image.len())
    }
    fn save(&mut self, image: &[u8]) -> Result<(), StorageError> {
        if self.fail {
            return Err(StorageError);
        }
        self.image = image.to_vec();
        self.saves += 1;
        Ok(())
    }
}

struct Board {
    bridge: Bridge,
    chip: Atecc<FakeBus>,
    store: Box<Store<RamPersist>>,
}

impl Board {
    fn new() -> Self {
        let response = vec![0x07, 0x00, 0x00, 0x50, 0x00, 0, 0];
        let mut r = response.clone();
        let crc = firmware::crc::crc16(&r[..5]).to_le_bytes();
        r[5..].copy_from_slice(&crc);
        Board {
            bridge: Bridge::new(),
            chip: Atecc::new(FakeBus {
                response: r,
                ..Default::default()
            }),
            store: Box::new(Store::open(RamPersist::default())),
        }
    }

    /// Sends bytes as the host would and collects every reply line.
    fn send(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut reply = Reply::new();
        for &b in bytes {
            if self
                .bridge
                .receive(b, &mut self.chip, &mut self.store, &mut reply)
                .is_some()
            {
                out.push(String::from_utf8(reply.as_bytes().to_vec()).expect("ascii reply"));
            }
        }
        out
    }

    fn line(&mut self, line: &str) -> String {
        let mut r = self.send(format!("{line}\n").as_bytes());
        assert_eq!(r.len(), 1, "one reply to {line:?}: {r:?}");
        r.remove(0)
    }

    fn put_blob(&mut self, name: &str, data: &[u8]) -> String {
        for (i, chunk) in data.chunks(200).enumerate() {
            let r = self.line(&format!(
                "fw:put({name},{},{})",
                i * 200,
                hex::encode_upper(chunk)
            ));
            assert!(r.starts_with("00("), "{r}");
        }
        if data.is_empty() {
            self.line(&format!("fw:put({name},0,)"));
        }
        self.line(&format!(
            "fw:commit({name},{},{:08X})",
            data.len(),
            crc32(data)
        ))
    }

    fn get_blob(&mut self, name: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let r = self.line(&format!("fw:get({name},{},256)", out.len()));
            let payload = payload(&r, "00")?;
            if payload.is_empty() {
                return Some(out);
            }
            out.extend(payload);
        }
    }
}

fn payload(reply: &str, status: &str) -> Option<Vec<u8>> {
    let inner = reply
        .strip_prefix(status)?
        .strip_prefix('(')?
        .strip_suffix(")\n")?;
    hex::decode(inner).ok()
}

fn text(reply: &str) -> String {
    String::from_utf8(payload(reply, &reply[..2]).expect("payload")).expect("utf8")
}

#[test]
fn cryptoauthlib_init_sequence_gets_the_kit_answers() {
    let mut b = Board::new();
    assert_eq!(b.line("board:device(00)"), "ECC508A TWI C0(C0)\n");
    assert_eq!(b.line("board:device(01)"), "E5()\n");
    assert_eq!(b.line("E:physical:interface:i2c"), "00()\n");
    assert_eq!(b.line("E:physical:select(C0)"), "00()\n");
    assert_eq!(b.bridge.selected(), Some(0xC0));
    assert_eq!(b.line("E:w()"), "00(04113343)\n");
    assert_eq!(
        b.line("E:t(0730000000035D)"),
        "00(0700005000E183)\n".replace("E183", &{
            let c = firmware::crc::crc16(&[0x07, 0x00, 0x00, 0x50, 0x00]).to_le_bytes();
            format!("{:02X}{:02X}", c[0], c[1])
        })
    );
    assert_eq!(
        b.chip.bus_mut().packets,
        vec![vec![0x07, 0x30, 0x00, 0x00, 0x00, 0x03, 0x5D]]
    );
    assert_eq!(b.line("E:i()"), "00()\n");
    assert_eq!(b.line("E:s()"), "00()\n");
    // legacy target letter
    assert_eq!(b.line("s:w()"), "00(04113343)\n");
}

#[test]
fn talk_polls_while_the_chip_is_busy_and_reports_a_dead_chip() {
    let mut b = Board::new();
    b.chip.bus_mut().busy_polls = 40; // ~80 ms of NACKs
    assert!(b.line("E:t(0730000000035D)").starts_with("00(07000050"));
    b.chip.bus_mut().dead = true;
    assert!(b.line("E:w()").starts_with("E1("));
    assert!(b.line("E:t(0730000000035D)").starts_with("E1("));
}

#[test]
fn hostile_lines_get_error_replies_and_change_nothing() {
    let mut b = Board::new();
    assert!(b.put_blob("ca.crt", b"old").starts_with("00("));
    let saves = b.store.persist().saves;
    let cases: &[(&str, &str)] = &[
        ("garbage", "E2"),
        ("E:t(0730000000035D", "E2"),
        ("E:t0730000000035D)", "E2"),
        ("E:t((0730000000035D))", "E2"),
        ("E:t(0730000000035)", "E2"),
        ("E:t(07300000000Z5D)", "E2"),
        ("E:t()", "E2"),
        ("E:w(00)", "E2"),
        ("X:w()", "E3"),
        ("E:x()", "E3"),
        ("fw:frobnicate()", "E3"),
        ("board:device(0)", "E2"),
        ("E:physical:select(C2)", "E5"),
        ("E:physical:interface:spi", "E5"),
        ("fw:put(../etc/passwd,0,00)", "F0"),
        ("fw:put(.hidden,0,00)", "F0"),
        ("fw:put(a/b,0,00)", "F0"),
        ("fw:put(ca.crt,0,ABC)", "E2"),
        ("fw:put(ca.crt,5,00)", "F4"),
        ("fw:put(ca.crt,-1,00)", "E2"),
        ("fw:put(ca.crt,99999999,00)", "E2"),
        ("fw:put(ca.crt,0)", "E2"),
        ("fw:put(ca.crt,0,00,00)", "E2"),
        ("fw:commit(ca.crt,3,00000000)", "F1"),
        ("fw:get(ca.crt,4,10)", "F6"),
        ("fw:get(ca.crt,0,257)", "F2"),
        ("fw:get(nope,0,10)", "F1"),
        ("fw:del(nope)", "F1"),
        ("fw:list(x)", "E2"),
    ];
    for (line, want) in cases {
        let r = b.line(line);
        assert!(
            r.starts_with(&format!("{want}(")),
            "{line:?} -> {r:?}, wanted {want}"
        );
    }
    // A packet longer than the chip accepts is refused before it reaches the bus.
    let r = b.line(&format!("E:t({})", "00".repeat(156)));
    assert!(r.starts_with("E2("), "{r}");
    // A chunk longer than 256 bytes.
    let r = b.line(&format!("fw:put(ca.crt,0,{})", "00".repeat(257)));
    assert!(r.starts_with("F2("), "{r}");
    // Over-long line: one E4 reply, and the tail is not executed.
    let long = format!("fw:del(ca.crt){}\n", "A".repeat(5000));
    assert_eq!(
        b.send(long.as_bytes()),
        vec!["E4(6C696E6520746F6F206C6F6E67)\n".to_string()]
    );
    // Binary junk with embedded newlines: an error reply per line, no panic.
    let junk: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let mut replies = b.send(&junk);
    replies.extend(b.send(b"\n")); // end the unterminated tail
    assert!(
        !replies.is_empty() && replies.iter().all(|r| !r.starts_with("00(")),
        "{replies:?}"
    );
    // Nothing changed: no packet went to the chip, the blob is intact, no extra save.
    assert!(b.chip.bus_mut().packets.is_empty());
    assert_eq!(b.get_blob("ca.crt").as_deref(), Some(&b"old"[..]));
    assert_eq!(b.store.persist().saves, saves);
}

#[test]
fn blobs_put_get_list_delete_and_info() {
    let mut b = Board::new();
    let cert = vec![b'C'; 900];
    assert_eq!(b.put_blob("device.crt", &cert), "00()\n");
    assert_eq!(b.put_blob("device.toml", b"format = 1\n"), "00()\n");
    assert_eq!(text(&b.line("fw:list()")), "device.crt:900,device.toml:11");
    assert_eq!(b.get_blob("device.crt"), Some(cert));
    let info = text(&b.line("fw:info()"));
    assert!(info.starts_with("version=0.1.0,id="), "{info}");
    assert!(
        info.contains("blobs=2") && info.contains("max_blob=4096"),
        "{info}"
    );
    assert_eq!(b.line("fw:del(device.crt)"), "00()\n");
    assert_eq!(text(&b.line("fw:list()")), "device.toml:11");
    // put reports progress, a wrong offset reports the expected one
    assert_eq!(text(&b.line("fw:put(x,0,0102)")), "2");
    assert_eq!(text(&b.line("fw:put(x,7,03)")), "expected offset 2");
    assert_eq!(text(&b.line("fw:put(x,2,03)")), "3");
    assert!(b.line("fw:commit(x,3,00000000)").starts_with("F5("));
    assert_eq!(b.line("fw:abort()"), "00()\n");
    assert!(
        b.line(&format!("fw:commit(x,3,{:08X})", crc32(&[1, 2, 3])))
            .starts_with("F1(")
    );
    // the reboot outcome
    let mut reply = Reply::new();
    let out = b
        .bridge
        .handle_line(b"fw:reboot()", &mut b.chip, &mut b.store, &mut reply);
    assert!(out.reboot);
    let out = b.bridge.handle_line(
        b"fw:del(device.toml)",
        &mut b.chip,
        &mut b.store,
        &mut reply,
    );
    assert_eq!(out.changed(), Some(&b"device.toml"[..]));
}

#[test]
fn store_limits_sizes_counts_and_capacity() {
    let mut s = Box::new(Store::open(RamPersist::default()));
    let big = vec![7u8; MAX_BLOB_LEN];
    assert_eq!(s.put_chunk(b"a", 0, &big), Ok(MAX_BLOB_LEN));
    assert_eq!(
        s.put_chunk(b"a", MAX_BLOB_LEN, &[1]),
        Err(StoreError::TooLarge)
    );
    s.commit(b"a", MAX_BLOB_LEN, crc32(&big))
        .expect("max size fits");
    for name in [&b"b"[..], b"c"] {
        s.put_chunk(name, 0, &big).expect("stage");
        let r = s.commit(name, MAX_BLOB_LEN, crc32(&big));
        if name == b"c" {
            assert_eq!(
                r,
                Err(StoreError::Full),
                "three 4 KiB blobs exceed {STORE_CAPACITY}"
            );
        } else {
            r.expect("second fits");
        }
    }
    assert_eq!(s.count(), 2);
    s.abort();
    // replacing in place is allowed even when full
    s.put_chunk(b"a", 0, b"small").expect("stage");
    s.commit(b"a", 5, crc32(b"small")).expect("replace");
    assert_eq!(s.blob(b"a"), Some(&b"small"[..]));
    // the blob count limit
    let mut s = Box::new(Store::open(RamPersist::default()));
    for i in 0..MAX_BLOBS + 1 {
        let name = format!("n{i}");
        s.put_chunk(name.as_bytes(), 0, b"x").expect("stage");
        let r = s.commit(name.as_bytes(), 1, crc32(b"x"));
        assert_eq!(r.is_ok(), i < MAX_BLOBS, "blob {i}");
    }
    // names
    for bad in [
        &b""[..],
        b".x",
        b"-x",
        b"a b",
        b"a/b",
        b"a\\b",
        &[b'a'; 33][..],
        b"\xff",
    ] {
        assert_eq!(
            s.put_chunk(bad, 0, b"x"),
            Err(StoreError::BadName),
            "{bad:?}"
        );
    }
    assert!(s.put_chunk(&[b'a'; 32], 0, b"x").is_ok());
}

#[test]
fn a_failed_save_leaves_ram_and_medium_on_the_old_image() {
    let mut s = Box::new(Store::open(RamPersist::default()));
    s.put_chunk(b"cfg", 0, b"old").expect("stage");
    s.commit(b"cfg", 3, crc32(b"old")).expect("commit");
    let p = RamPersist {
        image: s.persist().image.clone(),
        fail: true,
        saves: 0,
    };
    let mut s = Box::new(Store::open(p));
    s.put_chunk(b"cfg", 0, b"new!").expect("stage");
    assert_eq!(
        s.commit(b"cfg", 4, crc32(b"new!")),
        Err(StoreError::Storage)
    );
    assert_eq!(s.blob(b"cfg"), Some(&b"old"[..]));
}

/// Two banks of NOR-like flash whose power can be cut after a number of programmed bytes.
#[derive(Clone)]
struct CutFlash {
    banks: [Vec<u8>; 2],
    budget: Option<usize>,
}

impl CutFlash {
    fn new() -> Self {
        CutFlash {
            banks: [vec![0xFF; 16 * 1024], vec![0xFF; 16 * 1024]],
            budget: None,
        }
    }
}

impl Flash for CutFlash {
    fn bank_len(&self) -> usize {
        self.banks[0].len()
    }
    fn read(&mut self, bank: u8, offset: usize, buf: &mut [u8]) -> Result<(), StorageError> {
        let b = &self.banks[usize::from(bank)];
        buf.copy_from_slice(b.get(offset..offset + buf.len()).ok_or(StorageError)?);
        Ok(())
    }
    fn erase(&mut self, bank: u8) -> Result<(), StorageError> {
        if self.budget == Some(0) {
            return Err(StorageError);
        }
        // An interrupted erase leaves a half-erased bank: model the worst case, all of it gone.
        self.banks[usize::from(bank)].fill(0xFF);
        Ok(())
    }
    fn write(&mut self, bank: u8, offset: usize, data: &[u8]) -> Result<(), StorageError> {
        for (i, &d) in data.iter().enumerate() {
            if let Some(b) = self.budget.as_mut() {
                if *b == 0 {
                    return Err(StorageError);
                }
                *b -= 1;
            }
            self.banks[usize::from(bank)][offset + i] &= d;
        }
        Ok(())
    }
}

#[test]
fn power_cut_at_any_byte_of_a_commit_leaves_the_old_or_the_new_blob() {
    let old = vec![b'o'; 700];
    let new = vec![b'n'; 1300];
    // Base: a flash holding "old" after two saves (so both banks have been used).
    let mut base = Box::new(Store::open(FlashPersist::new(CutFlash::new())));
    for data in [&old, &old] {
        base.put_chunk(b"device.crt", 0, data).expect("stage");
        base.commit(b"device.crt", data.len(), crc32(data))
            .expect("commit");
    }
    let flash = base.persist().flash().clone();
    let image_size = 4 + 1 + 10 + 2 + new.len() + 16;
    let mut saw_old = 0;
    let mut saw_new = 0;
    for cut in (0..=image_size + 1)
        .step_by(7)
        .chain([image_size - 1, image_size, image_size + 1])
    {
        let mut f = flash.clone();
        f.budget = Some(cut);
        let mut s = Box::new(Store::open(FlashPersist::new(f)));
        assert_eq!(s.blob(b"device.crt"), Some(&old[..]));
        s.put_chunk(b"device.crt", 0, &new).expect("stage");
        let _ = s.commit(b"device.crt", new.len(), crc32(&new));
        // power comes back: a fresh store over the same flash, unlimited budget
        let mut f = s_flash(&s);
        f.budget = None;
        let s = Box::new(Store::open(FlashPersist::new(f)));
        match s.blob(b"device.crt") {
            Some(b) if b == &old[..] => saw_old += 1,
            Some(b) if b == &new[..] => saw_new += 1,
            other => panic!(
                "cut at {cut}: a mix or nothing: {:?}",
                other.map(<[u8]>::len)
            ),
        }
    }
    assert!(saw_old > 0 && saw_new > 0, "old {saw_old}, new {saw_new}");
}

fn s_flash(s: &Store<FlashPersist<CutFlash>>) -> CutFlash {
    s.persist().flash().clone()
}

fn schedule(qos: Qos) -> Schedule {
    Schedule {
        interval_ms: 5_000,
        qos,
        retain: true,
        keep_alive_s: 30,
        clean_session: false,
    }
}

#[test]
fn sensor_app_connects_publishes_on_schedule_and_backs_off_exponentially() {
    let mut app = SensorApp::with_backoff(Backoff::new(1_000, 8_000));
    assert_eq!(app.poll(0), Action::Idle);
    app.configure(schedule(Qos::AtLeastOnce), 100);
    assert_eq!(
        app.poll(100),
        Action::Connect {
            keep_alive_s: 30,
            clean_session: false
        }
    );
    assert_eq!(app.state(), State::Connecting);
    // failures: 1 s, 2 s, 4 s, 8 s, 8 s (capped)
    let mut now = 100;
    let mut delays = Vec::new();
    for _ in 0..5 {
        let d = app.on_connection_lost(now, 0);
        delays.push(d);
        assert_eq!(app.poll(now + d - 1), Action::WaitUntil(now + d));
        now += d;
        assert!(matches!(app.poll(now), Action::Connect { .. }));
    }
    assert_eq!(delays, vec![1_000, 2_000, 4_000, 8_000, 8_000]);
    // jitter takes at most a quarter off
    let mut b = Backoff::new(1_000, 8_000);
    for _ in 0..4 {
        b.next_delay_ms(0);
    }
    let d = b.next_delay_ms(u32::MAX);
    assert!((6_000..=8_000).contains(&d), "{d}");
    // connected: publish at once, then every interval; missed rounds are skipped
    app.on_connected(now);
    assert_eq!(
        app.poll(now),
        Action::Publish {
            qos: Qos::AtLeastOnce,
            retain: true
        }
    );
    assert_eq!(app.poll(now + 1), Action::WaitUntil(now + 5_000));
    assert_eq!(
        app.poll(now + 5_000),
        Action::Publish {
            qos: Qos::AtLeastOnce,
            retain: true
        }
    );
    assert!(matches!(app.poll(now + 23_000), Action::Publish { .. }));
    assert_eq!(app.poll(now + 23_001), Action::WaitUntil(now + 28_000));
    // back-off restarts from the beginning after a success
    assert_eq!(app.on_connection_lost(now + 30_000, 0), 1_000);
    assert_eq!(app.counters().connections, 1);
    assert_eq!(app.counters().failures, 6);
}

#[test]
fn qos_tracking_keep_alive_and_reconfiguration() {
    let mut app = SensorApp::new();
    app.configure(
        Schedule {
            interval_ms: 60_000,
            keep_alive_s: 10,
            ..schedule(Qos::ExactlyOnce)
        },
        0,
    );
    assert!(matches!(app.poll(0), Action::Connect { .. }));
    app.on_connected(0);
    assert!(matches!(
        app.poll(0),
        Action::Publish {
            qos: Qos::ExactlyOnce,
            ..
        }
    ));
    assert!(app.on_publish(0, 1, Qos::ExactlyOnce));
    app.on_puback(1); // wrong ack kind for QoS 2: ignored
    assert_eq!(app.in_flight(), 1);
    app.on_pubrec(1);
    assert!(app.is_received(1));
    app.on_pubcomp(1);
    assert_eq!(app.in_flight(), 0);
    assert_eq!(app.counters().acknowledged, 1);
    // nothing sent for a keep-alive period: ping
    assert_eq!(app.poll(9_999), Action::WaitUntil(10_000));
    assert_eq!(app.poll(10_000), Action::Ping);
    // QoS 0 is never tracked; QoS 1 is bounded
    assert!(app.on_publish(10_000, 0, Qos::AtMostOnce));
    for id in 0..firmware::app::MAX_IN_FLIGHT as u16 {
        assert!(app.on_publish(10_000, 100 + id, Qos::AtLeastOnce));
    }
    assert!(!app.can_publish(Qos::AtLeastOnce));
    assert!(!app.on_publish(10_000, 999, Qos::AtLeastOnce));
    assert_eq!(app.counters().dropped, 1);
    app.on_puback(100);
    assert!(app.can_publish(Qos::AtLeastOnce));
    // persistent session keeps in-flight across reconnects; a new configuration resets
    app.on_connection_lost(11_000, 0);
    app.on_connected(12_000);
    assert_eq!(app.in_flight(), firmware::app::MAX_IN_FLIGHT - 1);
    app.configure(schedule(Qos::AtMostOnce), 13_000);
    assert_eq!(app.in_flight(), 0);
    app.unconfigure();
    assert_eq!(app.poll(14_000), Action::Idle);
    assert_eq!(Qos::from_u8(3), None);
}

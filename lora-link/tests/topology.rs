//! Several gateways, one receiver, rotations and topic tables, with the real `lora-link rx`
//! on the emulated air (a hub on an ephemeral 127.0.0.1 port): frames are sealed by
//! [`LinkSender`]s (what `gateway` runs) and put on the air; the receiver's JSON lines and
//! rejection lines are read back and counted.
//!
//! * two gateways feed one receiver (a key each, chosen by FROM), both delivered with their
//!   topics; a third gateway added to the manifest later is taken on SIGHUP, without a restart
//!   and without touching the others' keys or counters;
//! * a rotation under traffic: the receiver takes keys 1 and 2 (SIGHUP), the sender switches to
//!   key 2 mid-stream, every frame is delivered exactly once (0 lost), and after the window
//!   every frame still sealed under key 1 is rejected (`retired_key`), none delivered;
//! * a topic table changed at one end only: every frame is rejected
//!   (`topic_table_mismatch`, logged and counted), no record is printed under any topic.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime};

use common::sender::AirSender;
use common::{hub, signal, sleep_until_unix, start_rx};
use lora_link::air::HubHandle;
use lora_link::airtime::Modulation;
use lora_link::crypto::LinkKeys;
use lora_link::link::{LinkSender, SenderConfig};
use lora_link::records::TopicTable;
use lora_link::state::CounterLease;

const RX: u8 = 1;
const TOPICS: [&str; 3] = [
    "maison/salon/temperature",
    "maison/cuisine/temperature",
    "maison/garage/temperature",
];

fn key_of(n: u8) -> [u8; 16] {
    [n; 16]
}

fn table(topics: &[&str]) -> TopicTable {
    TopicTable::new(topics.iter().enumerate().map(|(i, t)| (i as u8, *t)))
}

/// One sender key in the receiver manifest: (id, key byte, retire_at).
type PeerKeys = Vec<(u32, u8, Option<u64>)>;

/// Writes the receiver manifest: `peers` (address -> keys), `topics`, the hub.
fn write_manifest(dir: &Path, hub: &HubHandle, peers: &BTreeMap<u8, PeerKeys>, topics: &[&str]) {
    let mut m = format!(
        "version = 1\nrole = \"receiver\"\nstate_dir = \"{}\"\n[node]\nname = \"pi2\"\naddress = {RX}\n[radio]\nbackend = \"emulated\"\n[air]\nhub = \"{}\"\n",
        dir.join("state").display(),
        hub.addr
    );
    for (addr, keys) in peers {
        m.push_str(&format!(
            "[[peers]]\nname = \"gw{addr}\"\naddress = {addr}\n"
        ));
        for (id, k, retire) in keys {
            let file = format!("gw{addr}-{id}.key");
            manifests::link::write_secret(&dir.join(&file), hex::encode(key_of(*k)).as_bytes())
                .expect("key file");
            m.push_str(&format!("[[peers.keys]]\nid = {id}\nfile = \"{file}\"\n"));
            if let Some(t) = retire {
                m.push_str(&format!("retire_at = {t}\n"));
            }
        }
    }
    for (i, t) in topics.iter().enumerate() {
        m.push_str(&format!("[[topics]]\nindex = {i}\ntopic = \"{t}\"\n"));
    }
    manifests::link::write_secret(&dir.join("receiver.toml"), m.as_bytes()).expect("manifest");
}

/// `lora-link rx` on a manifest in its own directory, its output read as JSON lines.
struct Rx {
    child: Child,
    out: Receiver<String>,
    err: Receiver<String>,
    /// Records printed: (from, topic, payload).
    records: Vec<(u8, String, String)>,
    /// Every stderr line seen.
    log: Vec<serde_json::Value>,
    dir: PathBuf,
}

impl Rx {
    fn start(dir: &Path) -> Rx {
        let p = start_rx(&dir.join("receiver.toml"));
        Rx {
            child: p.child,
            out: p.stdout,
            err: p.stderr,
            records: Vec::new(),
            log: Vec::new(),
            dir: dir.to_path_buf(),
        }
    }

    /// Reads what is there now.
    fn drain(&mut self) {
        while let Ok(l) = self.out.try_recv() {
            let v: serde_json::Value = serde_json::from_str(&l).expect("record line");
            self.records.push((
                v["from"].as_u64().expect("from") as u8,
                v["topic"].as_str().expect("topic").to_string(),
                v["payload"].as_str().unwrap_or_default().to_string(),
            ));
        }
        while let Ok(l) = self.err.try_recv() {
            if let Ok(v) = serde_json::from_str(&l) {
                self.log.push(v);
            }
        }
    }

    /// Waits until `f` holds (reading output meanwhile).
    fn wait(&mut self, what: &str, mut f: impl FnMut(&Rx) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.drain();
            if f(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not seen; records {:?}, log {:?}",
                self.records,
                self.log
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn rejected(&self, reason: &str) -> usize {
        self.log.iter().filter(|v| v["rejected"] == reason).count()
    }

    /// SIGHUP, then waits for the reload line.
    fn reload(&mut self) {
        let before = self.reloads();
        signal(&self.child, nix::sys::signal::Signal::SIGHUP);
        self.wait("reload", |r| r.reloads() > before);
        let last = self.log.iter().rev().find(|v| v.get("reloaded").is_some());
        assert_eq!(last.map(|v| &v["reloaded"]), Some(&true.into()), "{last:?}");
    }

    fn reloads(&self) -> usize {
        self.log
            .iter()
            .filter(|v| v.get("reloaded").is_some())
            .count()
    }

    /// SIGTERM; the final counters line.
    fn stop(mut self) -> (Self, serde_json::Value) {
        signal(&self.child, nix::sys::signal::Signal::SIGTERM);
        assert!(self.child.wait().expect("wait").success());
        std::thread::sleep(Duration::from_millis(100));
        self.drain();
        let last = self
            .log
            .iter()
            .rev()
            .find(|v| v.get("accepted").is_some())
            .cloned()
            .expect("final counters line");
        (self, last)
    }
}

/// A gateway's sending half, putting its frames on the air.
struct Gw {
    air: AirSender,
    addr: u8,
    state: PathBuf,
}

impl Gw {
    fn new(hub: &HubHandle, state: &Path, addr: u8, key: u8, key_id: u32, topics: &[&str]) -> Gw {
        let keys = LinkKeys::derive(&key_of(key));
        let lease =
            CounterLease::open(CounterLease::path_for(state, &keys.id_hex(), addr)).expect("lease");
        // No duty-cycle wait in this test: 100 % of the air is ours.
        let cfg = SenderConfig::new(
            addr,
            RX,
            Modulation::new(7, 125_000, 5).expect("m"),
            1_000_000,
        )
        .with_key_id(key_id);
        let tx = LinkSender::new(keys, cfg, table(topics), lease);
        Gw {
            air: AirSender::new(tx, hub, Duration::ZERO, None),
            addr,
            state: state.to_path_buf(),
        }
    }

    /// Seals one record and puts it on the air, then waits out its time on air.
    fn send(&mut self, topic: &str, payload: &str) {
        self.air.send(topic, payload);
    }

    /// Switches to another key (what a restart with the rotated manifest does).
    fn rekey(&mut self, key: u8, key_id: u32) {
        let keys = LinkKeys::derive(&key_of(key));
        let lease = CounterLease::open(CounterLease::path_for(
            &self.state,
            &keys.id_hex(),
            self.addr,
        ))
        .expect("lease");
        self.air.tx.rekey(keys, key_id, lease);
    }
}

#[test]
fn two_gateways_feed_one_receiver_and_a_third_joins_on_sighup() {
    let hub = hub();
    let dir = tempfile::tempdir().expect("tempdir");
    let gw_state = dir.path().join("gw-state");
    let mut peers = BTreeMap::from([(10, vec![(1, 0xA0, None)]), (11, vec![(1, 0xB0, None)])]);
    write_manifest(dir.path(), &hub, &peers, &TOPICS);
    let mut rx = Rx::start(dir.path());
    let mut a = Gw::new(&hub, &gw_state, 10, 0xA0, 1, &TOPICS);
    let mut b = Gw::new(&hub, &gw_state, 11, 0xB0, 1, &TOPICS);
    let mut c = Gw::new(&hub, &gw_state, 12, 0xC0, 1, &TOPICS);
    a.send(TOPICS[0], "a-1");
    b.send(TOPICS[1], "b-1");
    a.send(TOPICS[0], "a-2");
    b.send(TOPICS[1], "b-2");
    rx.wait("both gateways' readings", |r| r.records.len() == 4);
    // Each under its own topic, from its own address: the key was chosen by FROM.
    assert_eq!(
        rx.records,
        vec![
            (10, TOPICS[0].to_string(), "a-1".to_string()),
            (11, TOPICS[1].to_string(), "b-1".to_string()),
            (10, TOPICS[0].to_string(), "a-2".to_string()),
            (11, TOPICS[1].to_string(), "b-2".to_string()),
        ]
    );
    // The third gateway is not known yet: rejected, not delivered.
    c.send(TOPICS[2], "c-0");
    rx.wait("unknown sender", |r| r.rejected("unknown_sender") == 1);
    // Added to the manifest (the others' keys untouched) and taken on SIGHUP.
    peers.insert(12, vec![(1, 0xC0, None)]);
    write_manifest(dir.path(), &hub, &peers, &TOPICS);
    rx.reload();
    c.send(TOPICS[2], "c-1");
    a.send(TOPICS[0], "a-3");
    b.send(TOPICS[1], "b-3");
    rx.wait("three gateways", |r| r.records.len() == 7);
    assert_eq!(
        rx.records[4..],
        [
            (12, TOPICS[2].to_string(), "c-1".to_string()),
            (10, TOPICS[0].to_string(), "a-3".to_string()),
            (11, TOPICS[1].to_string(), "b-3".to_string()),
        ]
    );
    let (rx, last) = rx.stop();
    assert_eq!(last["accepted"], 7, "{last}");
    assert_eq!(last["rejected"]["unknown_sender"], 1, "{last}");
    assert!(rx.dir.exists());
}

#[test]
fn a_rotation_under_traffic_loses_no_frame_and_accepts_none_under_the_retired_key() {
    const WINDOW_S: u64 = 3;
    let hub = hub();
    let dir = tempfile::tempdir().expect("tempdir");
    let gw_state = dir.path().join("gw-state");
    let peers = BTreeMap::from([(10, vec![(1, 0x11, None)])]);
    write_manifest(dir.path(), &hub, &peers, &TOPICS);
    let mut rx = Rx::start(dir.path());
    let mut gw = Gw::new(&hub, &gw_state, 10, 0x11, 1, &TOPICS);
    let mut sent = BTreeSet::new();
    let mut seq = 0u32;
    let mut send = |gw: &mut Gw, sent: &mut BTreeSet<String>| {
        seq += 1;
        let p = format!("r{seq}");
        gw.send(TOPICS[0], &p);
        sent.insert(p);
    };
    for _ in 0..5 {
        send(&mut gw, &mut sent);
    }
    // 1. The receiver takes key 2 beside key 1 (retired WINDOW_S from now) while frames flow.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let retire_at = now + WINDOW_S;
    let rotated = BTreeMap::from([(10, vec![(2, 0x22, None), (1, 0x11, Some(retire_at))])]);
    write_manifest(dir.path(), &hub, &rotated, &TOPICS);
    for _ in 0..3 {
        send(&mut gw, &mut sent);
    }
    rx.reload();
    for _ in 0..3 {
        send(&mut gw, &mut sent);
    }
    // 2. The gateway switches to key 2 (its queue and traffic go on).
    // Key 1 as a gateway not yet restarted would use it: its lease (counters ahead).
    let mut old = Gw::new(&hub, &gw_state, 10, 0x11, 1, &TOPICS);
    gw.rekey(0x22, 2);
    for _ in 0..5 {
        send(&mut gw, &mut sent);
    }
    rx.wait("every frame of both keys", |r| {
        r.records.len() == sent.len()
    });
    let delivered: Vec<&String> = rx.records.iter().map(|(_, _, p)| p).collect();
    let unique: BTreeSet<&String> = delivered.iter().copied().collect();
    assert_eq!(delivered.len(), unique.len(), "a frame delivered twice");
    assert_eq!(
        unique,
        sent.iter().collect(),
        "frames lost across the rotation"
    );
    // 3. After the window: frames still sealed under key 1 are all rejected.
    sleep_until_unix(retire_at);
    const LATE: usize = 4;
    for i in 0..LATE {
        old.send(TOPICS[0], &format!("late{i}"));
    }
    // and key 2 still works
    send(&mut gw, &mut sent);
    rx.wait("late frames rejected", |r| {
        r.rejected("retired_key") == LATE && r.records.len() == sent.len()
    });
    let (rx, last) = rx.stop();
    assert!(
        rx.records.iter().all(|(_, _, p)| !p.starts_with("late")),
        "{:?}",
        rx.records
    );
    assert_eq!(last["accepted"], sent.len(), "{last}");
    assert_eq!(last["rejected"]["retired_key"], LATE, "{last}");
    let rejected: u64 = last["rejected"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(rejected, LATE as u64, "only the late frames: {last}");
}

#[test]
fn a_topic_table_changed_at_one_end_is_detected_and_nothing_is_republished() {
    let hub = hub();
    let dir = tempfile::tempdir().expect("tempdir");
    let peers = BTreeMap::from([(10, vec![(1, 0x33, None)])]);
    // The receiver's table lost a room: indices shift, "cuisine" would decode as "garage".
    let receiver_topics = [TOPICS[0], TOPICS[2]];
    write_manifest(dir.path(), &hub, &peers, &receiver_topics);
    let mut rx = Rx::start(dir.path());
    let mut gw = Gw::new(&hub, &dir.path().join("gw-state"), 10, 0x33, 1, &TOPICS);
    const N: usize = 3;
    for i in 0..N {
        gw.send(TOPICS[1], &format!("c{i}"));
    }
    rx.wait("mismatches", |r| r.rejected("topic_table_mismatch") == N);
    let line = rx
        .log
        .iter()
        .find(|v| v["rejected"] == "topic_table_mismatch")
        .expect("line");
    assert_eq!(line["from"], 10);
    let why = line["error"].as_str().expect("error");
    assert!(
        why.contains("another topic table") && why.contains("emit the gateway and the receiver"),
        "{why}"
    );
    // Fixed at the receiver (same table as the gateway), taken on SIGHUP: delivered again.
    write_manifest(dir.path(), &hub, &peers, &TOPICS);
    rx.reload();
    gw.send(TOPICS[1], "ok");
    rx.wait("delivered after the fix", |r| !r.records.is_empty());
    let (rx, last) = rx.stop();
    assert_eq!(
        rx.records,
        vec![(10, TOPICS[1].to_string(), "ok".to_string())],
        "no record under any topic before the tables agreed"
    );
    assert_eq!(last["rejected"]["topic_table_mismatch"], N, "{last}");
    assert_eq!(last["accepted"], 1, "{last}");
}

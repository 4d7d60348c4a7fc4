//! The `lora-link` binary: airtime, sniff/inject through a hub, and `rx --manifest` printing
//! JSON lines for frames sent by the real driver on an emulated chip.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lora_link::air::{AirHub, AirPort, HubConfig};
use lora_link::airtime::Modulation;
use lora_link::crypto::LinkKeys;
use lora_link::link::{LinkSender, SenderConfig, TxPoll};
use lora_link::radio::emu::{EmuDelay, Sx1276};
use lora_link::radio::sx127x::Sx127x;
use lora_link::radio::{Radio, RadioSettings};
use lora_link::records::{Record, TopicTable};
use lora_link::state::CounterLease;

const BIN: &str = env!("CARGO_BIN_EXE_lora-link");

#[test]
fn airtime_prints_the_reference_values() {
    for (args, want) in [
        (
            ["--sf", "7", "--bw", "125000", "--cr", "5", "--bytes", "16"],
            "51.456 ms",
        ),
        (
            [
                "--sf", "12", "--bw", "125000", "--cr", "5", "--bytes", "129",
            ],
            "4923.392 ms",
        ),
        (
            ["--sf", "11", "--bw", "125000", "--cr", "5", "--bytes", "10"],
            "577.536 ms",
        ),
    ] {
        let out = Command::new(BIN)
            .arg("airtime")
            .args(args)
            .output()
            .expect("run");
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want);
    }
    let out = Command::new(BIN)
        .args(["airtime", "--sf", "13", "--bytes", "1"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("7..=12"));
}

/// Reads lines from a child until one satisfies `f` or the child ends.
fn spawn_lines(cmd: &mut Command) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let (txl, rxl) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if txl.send(line).is_err() {
                break;
            }
        }
    });
    (child, rxl)
}

#[test]
fn sniff_sees_what_inject_sends() {
    let hub = AirHub::bind("127.0.0.1:0".parse().expect("a"), HubConfig::default())
        .expect("bind")
        .spawn()
        .expect("spawn");
    let addr = hub.addr.to_string();
    let (mut child, lines) = spawn_lines(Command::new(BIN).args([
        "sniff",
        "--hub",
        &addr,
        "--count",
        "1",
        "--timeout",
        "30",
    ]));
    let start = Instant::now();
    let line = loop {
        let st = Command::new(BIN)
            .args(["inject", "--hub", &addr, "--hex", "01 0a"])
            .status()
            .expect("inject");
        assert_eq!(st.code(), Some(2), "bad hex is a usage error");
        let st = Command::new(BIN)
            .args(["inject", "--hub", &addr, "--hex", "010a0005cafe"])
            .status()
            .expect("inject");
        assert!(st.success());
        if let Ok(l) = lines.recv_timeout(Duration::from_millis(300)) {
            break l;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "sniff saw nothing"
        );
    };
    let _ = child.wait();
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(v["hex"], "010a0005cafe");
    assert_eq!(v["freq_hz"], 868_000_000);
}

#[test]
fn rx_prints_json_lines_for_frames_from_the_real_driver() {
    let hub = AirHub::bind("127.0.0.1:0".parse().expect("a"), HubConfig::default())
        .expect("bind")
        .spawn()
        .expect("spawn");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = [0x11u8; 16];
    let manifest = format!(
        r#"version = 1
role = "receiver"
state_dir = "{state}"

[node]
name = "pi2"
address = 1

[[peers]]
name = "pi1"
address = 10

[radio]
backend = "emulated"

[key]
hex = "{key}"

[air]
hub = "{hub}"

[[topics]]
index = 3
topic = "maison/salon/temperature"
"#,
        state = dir.path().join("state").display(),
        key = hex::encode(key),
        hub = hub.addr
    );
    let path = dir.path().join("receiver.toml");
    manifests::link::write_secret(&path, manifest.as_bytes()).expect("write");
    let (mut child, lines) = spawn_lines(
        Command::new(BIN)
            .args(["rx", "--manifest"])
            .arg(&path)
            .args(["--count", "1"]),
    );

    let chip = Sx1276::new(Some(AirPort::connect(hub.addr).expect("port")));
    let settings = RadioSettings::eu868(Modulation::new(7, 125_000, 5).expect("m"));
    let mut radio =
        Sx127x::new(chip.spi(), chip.cs(), chip.reset(), EmuDelay, &settings).expect("radio");
    let lease = CounterLease::open(dir.path().join("tx.lease")).expect("lease");
    let cfg = SenderConfig::new(10, 1, settings.modulation, 1_000_000);
    let table = TopicTable::new([(3, "maison/salon/temperature")]);
    let mut tx = LinkSender::new(LinkKeys::derive(&key), cfg, table, lease);
    let start = Instant::now();
    let line = loop {
        // the receiver may not be listening yet: send until it prints
        let _ = tx.submit(Record::new("maison/salon/temperature", b"21.5".to_vec()));
        if let TxPoll::Send(f) = tx.poll(start.elapsed()).expect("poll") {
            radio.transmit(&f.bytes).expect("transmit");
        }
        if let Ok(l) = lines.recv_timeout(Duration::from_millis(200)) {
            break l;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "rx printed nothing"
        );
    };
    assert!(child.wait().expect("wait").success());
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(v["topic"], "maison/salon/temperature");
    assert_eq!(v["payload"], "21.5");
    assert_eq!(v["from"], 10);
}

#[test]
fn rx_refuses_a_world_readable_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.toml");
    std::fs::write(
        &path,
        "version = 1\nrole = \"receiver\"\n[node]\nname = \"a\"\naddress = 1\n[[peers]]\nname = \"b\"\naddress = 2\n[key]\nhex = \"00000000000000000000000000000000\"\n",
    )
    .expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = Command::new(BIN)
        .args(["rx", "--manifest"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}

//! `provisioner demo`, the README's main command, as a newcomer runs it: three simulated
//! boards are provisioned over their serial ports, their readings cross the LoRa link to the
//! far-side broker (every QoS 1/2 one), the intrusions are refused, one board is revoked live
//! and one renews its short-lived certificate in the field, and when it ends no process and no
//! listening port of the demo is left.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::require;

/// `gateway` and `lora-link`, built next to `provisioner` (`cargo test --workspace` builds
/// them; alone: `cargo build -p gateway -p lora-link`).
fn sibling_bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_provisioner")).with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p gateway -p lora-link` (or `cargo test --workspace`) first",
        p.display()
    );
    p
}

fn alive(pid: u64) -> bool {
    // A zombie would still be listed: /proc/PID/stat says `Z` then; count it as left behind.
    Path::new(&format!("/proc/{pid}")).exists()
}

fn listening_tcp(port: u64) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port as u16)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn udp_bound(port: u64) -> bool {
    std::net::UdpSocket::bind(("127.0.0.1", port as u16)).is_err()
}

#[test]
fn the_demo_provisions_three_boards_delivers_every_qos12_reading_refuses_intruders_and_leaves_nothing_behind()
 {
    require("mosquitto");
    require("mosquitto_sub");
    require("mosquitto_pub");
    sibling_bin("gateway");
    sibling_bin("lora-link");
    let started = Instant::now();
    let home = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(["demo", "--sensors", "3", "--duration", "8", "--json"])
        .env_remove("PROVISIONER_HOME")
        .env_remove("PROVISIONER_PASSPHRASE")
        .env("TMPDIR", home.path())
        .output()
        .expect("run provisioner demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "demo failed:\n{stderr}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "summary JSON: {e}\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });

    // Devices: three boards from the example house, all provisioned with a certificate.
    assert_eq!(s["ok"], true, "{s}");
    assert_eq!(s["devices"]["requested"], 3);
    assert_eq!(s["devices"]["provisioned"], 3);
    let list = s["devices"]["list"].as_array().expect("device list");
    let ids: Vec<&str> = list.iter().filter_map(|d| d["id"].as_str()).collect();
    assert_eq!(ids, ["chambre_1-1", "salon-1", "cuisine-1"]);
    for d in list {
        assert!(d["certificate"].is_string(), "{d}");
        assert!(
            d["readings_published"].as_u64().is_some_and(|n| n >= 1),
            "every board published: {d}"
        );
    }

    // The identity in the chip (issue 19): the first board's profile is compressible; its
    // compressed certificate and signer went into slots 10-13, and read back over its serial
    // link after provisioning they rebuild the ledger's certificates byte for byte. Its
    // serial is atcacert's public-key hash (16 bytes, top bits 01), and it ran in the house.
    let chip = s["chip_identity"].as_array().expect("chip_identity");
    assert_eq!(chip.len(), 1, "{chip:?}");
    let c = &chip[0];
    assert_eq!(c["id"], "chambre_1-1", "{c}");
    assert_eq!(list[0]["profile"], "climat_puce", "{c}");
    let slots = &c["slots"];
    assert_eq!(
        [
            &slots["device_cert"],
            &slots["signer_key"],
            &slots["signer_cert"],
            &slots["device_id"]
        ],
        [10, 11, 12, 13],
        "{c}"
    );
    assert_eq!(c["equal_to_ledger"], true, "{c}");
    assert!(c["mismatch"].is_null(), "{c}");
    let bytes = c["device_cert_bytes"].as_u64().expect("bytes");
    assert!((400..600).contains(&bytes), "{c}");
    assert!(
        c["signer_cert_bytes"].as_u64().is_some_and(|n| n > 300),
        "{c}"
    );
    let line = format!(
        "board chambre_1-1: identity in the chip, certificate rebuilt from slots 10-13 (device 10, signer key 11, signer 12, id 13), {bytes} bytes, equal to the ledger's"
    );
    assert!(
        stderr.contains(&format!("identity in the chip  {line}")),
        "summary line `{line}` missing:\n{stderr}"
    );
    let serial = list[0]["certificate"].as_str().expect("serial");
    assert!(
        serial.len() == 32 && matches!(serial.as_bytes()[0], b'4'..=b'7'),
        "not a public-key-hash serial: {serial}"
    );

    // Messages: every QoS 1/2 message the broker on Pi #1 accepted reached Pi #2.
    let m = &s["messages"];
    assert_eq!(m["qos12_missing"], 0, "{m}");
    assert_eq!(m["qos12_all_delivered"], true, "{m}");
    let q1 = &m["by_qos"]["qos1"];
    assert!(q1["published"].as_u64().is_some_and(|n| n >= 3), "{m}");
    assert_eq!(q1["published"], q1["delivered"], "{m}");
    for t in m["per_topic"].as_array().expect("per topic") {
        if t["qos"].as_u64() >= Some(1) {
            assert_eq!(t["published"], t["delivered"], "{t}");
        }
    }
    assert!(
        m["forwarded"].as_u64().is_some_and(|f| f >= 3),
        "the gateway forwarded: {m}"
    );
    // The totals add up: delivered is the sum of the per-topic counts and never exceeds what
    // was published, for the whole and for each device; late and duplicate arrivals apart.
    let per_topic = m["per_topic"].as_array().expect("per topic");
    let sum = |k: &str| per_topic.iter().filter_map(|t| t[k].as_u64()).sum::<u64>();
    assert_eq!(m["delivered"].as_u64(), Some(sum("delivered")), "{m}");
    assert_eq!(m["published"].as_u64(), Some(sum("published")), "{m}");
    assert!(m["delivered"].as_u64() <= m["published"].as_u64(), "{m}");
    assert!(
        m["duplicates"].is_u64() && m["arrived_from_before_service"].is_u64(),
        "{m}"
    );
    for d in list {
        assert!(
            d["readings_delivered"].as_u64() <= d["readings_published"].as_u64(),
            "a device delivered more than it published: {d}"
        );
    }
    let hour = &s["airtime"]["hour_at_this_rate"];
    assert!(
        hour["fits"].is_boolean() && hour["share_of_budget"].is_f64(),
        "{s}"
    );
    assert!(stderr.contains("at this rate an hour uses"), "{stderr}");
    // stderr is a pipe here: the step titles and the banner come without escape codes.
    assert!(
        !stderr.contains('\x1b'),
        "escape codes on a non-terminal:\n{stderr}"
    );
    let air = &s["airtime"];
    assert!(air["used_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{air}");
    assert!(
        air["share_of_budget"].as_f64().is_some_and(|x| x < 1.0),
        "{air}"
    );

    // Intrusions: all refused, at least the uncertified client and the one writing elsewhere.
    let tried = s["intrusions"].as_array().expect("intrusions");
    assert!(
        s["intrusions_refused"].as_u64().is_some_and(|n| n >= 2),
        "{s}"
    );
    assert!(tried.iter().all(|i| i["refused"] == true), "{tried:?}");
    assert!(
        tried.iter().any(|i| i["who"]
            .as_str()
            .is_some_and(|w| w.contains("without a certificate"))),
        "{tried:?}"
    );
    assert!(
        tried.iter().any(|i| i["attempt"]
            .as_str()
            .is_some_and(|w| w.contains("garage door"))
            && i["who"].as_str().is_some_and(|w| w.contains("certified"))),
        "{tried:?}"
    );

    // The live revocation: the last board revoked and cut off within 5 s, its reconnections
    // refused by the CRL, none of its readings on Pi #1 after the cut; the others' QoS 1/2
    // readings all delivered (checked above) across Pi #1's restart.
    let r = &s["revocation"];
    assert_eq!(r["id"], "cuisine-1", "{r}");
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        r["cut_off_seconds"].as_f64().is_some_and(|t| t < 5.0),
        "{r}"
    );
    assert!(
        r["refused_reconnects"].as_u64().is_some_and(|n| n >= 1),
        "{r}"
    );
    assert_eq!(r["readings_after_cut"], 0, "{r}");
    assert!(
        r["evidence"]
            .as_str()
            .is_some_and(|e| e.contains("CertificateRevoked")),
        "{r}"
    );

    // The renewal in the field, on the real clock: `salon-1` has a profile of its own whose
    // certificates live about a minute and a half; it sent a chip-signed CSR over its MQTT
    // session, the renewal service issued, the broker accepted the new certificate; the
    // ledger has the new serial active and the provisioning one superseded by it; every
    // reading since the reboot (numbered across the switch) reached Pi #2, some taken after
    // the reconnection.
    let n = &s["renewal"];
    assert_eq!(n["id"], "salon-1", "{n}");
    assert_eq!(n["ok"], true, "{n}");
    assert_eq!(n["profile"], "luminosite_ephemere", "{n}");
    assert_eq!(list[1]["profile"], "luminosite_ephemere", "{n}");
    let lifetime = n["lifetime_seconds"].as_f64().expect("lifetime");
    assert!(lifetime < 600.0, "{n}");
    let old = n["old_serial"].as_str().expect("old serial");
    let new = n["new_serial"].as_str().expect("new serial");
    assert_eq!(list[1]["certificate"].as_str(), Some(old), "{n}");
    assert!(new.len() >= 16 && new != old, "{n}");
    assert_eq!(n["ledger_active"].as_str(), Some(new), "{n}");
    assert!(
        n["old_in_ledger"]
            .as_str()
            .is_some_and(|o| o.starts_with("superseded by it")),
        "{n}"
    );
    assert!(n["issued_by_service"].as_u64() >= Some(1), "{n}");
    assert!(
        n["request_to_reconnect_seconds"]
            .as_f64()
            .is_some_and(|t| t > 0.0 && t < lifetime),
        "{n}"
    );
    let rd = &n["readings"];
    assert!(rd["sent"].as_u64().is_some_and(|k| k >= 2), "{rd}");
    assert_eq!(rd["arrived_pi2"], rd["sent"], "{rd}");
    assert_eq!(rd["missing_seq"], serde_json::json!([]), "{rd}");
    assert!(rd["after_reconnect"].as_u64() >= Some(1), "{rd}");
    assert!(
        stderr.contains("renewal in the field  `salon-1` RENEWED"),
        "{stderr}"
    );

    // Features: QoS 0 and 1, keep-alive, clean and persistent sessions among three sensors.
    let f = &s["features"];
    for k in [
        "QoS 0",
        "QoS 1",
        "keep-alive",
        "clean session",
        "persistent session",
    ] {
        assert!(f[k].as_array().is_some_and(|v| !v.is_empty()), "{k}: {f}");
    }

    // Nothing left behind: no child process, no listening port, no demo directory.
    let procs = s["processes"].as_array().expect("processes");
    assert!(procs.len() >= 3 + 7, "{procs:?}");
    let left: Vec<String> = procs
        .iter()
        .filter(|p| p["pid"].as_u64().is_some_and(alive))
        .map(|p| p.to_string())
        .collect();
    assert!(left.is_empty(), "still running: {left:?}");
    let ports = &s["ports"];
    for k in ["broker_pi1_tcp", "broker_pi2_tcp"] {
        let p = ports[k].as_u64().expect("port");
        assert!(!listening_tcp(p), "{k} {p} still listening");
    }
    let air_port = ports["air_udp"].as_u64().expect("air port");
    assert!(
        !udp_bound(air_port),
        "air hub still bound to udp {air_port}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(home.path())
        .expect("tmp")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "demo directory left: {leftovers:?}");
    // The random demo passphrase (`demo-` and 48 hex digits) never shows.
    let shown = stderr.match_indices("demo-").any(|(i, _)| {
        stderr[i + 5..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .count()
            >= 32
    });
    assert!(!shown, "a passphrase-like string in the output:\n{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn the_demo_refuses_a_home_that_is_not_empty() {
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::write(home.path().join("something"), "x").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .arg("--home")
        .arg(home.path())
        .args(["demo", "--sensors", "1"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not empty"), "{err}");
}

#[test]
fn an_interrupted_json_demo_prints_its_partial_summary_and_a_kept_home_its_passphrase_file() {
    require("mosquitto");
    require("mosquitto_sub");
    require("mosquitto_pub");
    sibling_bin("gateway");
    sibling_bin("lora-link");
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("h");
    let mut child = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .arg("--json")
        .arg("--home")
        .arg(&home)
        .args(["demo", "--sensors", "1", "--duration", "60", "--keep"])
        .env_remove("PROVISIONER_HOME")
        .env_remove("PROVISIONER_PASSPHRASE")
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run provisioner demo");
    let mut stderr_pipe = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut all = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(k) = stderr_pipe.read(&mut buf) {
            if k == 0 {
                break;
            }
            all.push_str(&String::from_utf8_lossy(&buf[..k]));
            let _ = tx.send(all.clone());
        }
        all
    });
    // Interrupt once the boards are in service (step 7).
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let seen = rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
        if seen.contains("== 7.") {
            break;
        }
        assert!(Instant::now() < deadline, "the demo never reached step 7");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let out = child.wait_with_output().expect("wait");
    let stderr = reader.join().expect("stderr");
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no summary JSON ({e}):\n{}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(s["interrupted"], true, "{s}");
    assert_eq!(s["ok"], false, "{s}");
    assert_eq!(s["signal"], "SIGINT", "{s}");
    assert_eq!(s["step"]["number"], 7, "{s}");
    assert_eq!(s["devices"]["provisioned"], 1, "{s}");
    for p in s["processes"].as_array().expect("processes") {
        let pid = p["pid"].as_u64().expect("pid");
        assert!(!alive(pid), "still running: {p}");
    }
    // The kept home comes with its passphrase, in a 0600 file, never on the output.
    let file = PathBuf::from(s["passphrase_file"].as_str().expect("passphrase_file"));
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&file).expect("passphrase file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let pass = std::fs::read_to_string(&file).expect("read");
    assert!(pass.starts_with("demo-"), "not a demo passphrase");
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    assert!(
        !stderr.contains(&pass) && !String::from_utf8_lossy(&out.stdout).contains(&pass),
        "the passphrase was shown"
    );
    // And it opens the CA.
    let crl = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .arg("--home")
        .arg(&home)
        .arg("--passphrase-file")
        .arg(&file)
        .args(["crl", "--renew"])
        .env_remove("PROVISIONER_PASSPHRASE")
        .env_remove("PROVISIONER_HOME")
        .output()
        .expect("crl");
    assert!(
        crl.status.success(),
        "{}",
        String::from_utf8_lossy(&crl.stderr)
    );
}

//! `provisioner demo`, the README's main command, as a newcomer runs it: three simulated
//! boards are provisioned over their serial ports, their readings cross the LoRa link to the
//! far-side broker (every QoS 1/2 one), the intrusions are refused, and when it ends no process
//! and no listening port of the demo is left.

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

//! Boards that run stock Mongoose OS: `device provision --transport mos` against
//! `sim-board --protocol mos` reaches the same verified state as the kit transport, and the
//! device then publishes through a real mosquitto; the board's RPC framing (CRC, size limit,
//! log chatter) as a host sees it; secrets in clear need the operator's explicit flag.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use atecc::client::Client;
use common::*;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

fn provision_mos(home: &Home, port: &str, id: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "--json",
        "device",
        "provision",
        "--transport",
        "mos",
        "--port",
        port,
        "--id",
        id,
    ];
    args.extend_from_slice(extra);
    home.run(&args)
}

fn board_result(out: &std::process::Output) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["boards"][0].clone()
}

fn active_cert(home: &Home, id: &str) -> String {
    let show = home.json(&["device", "show", id]);
    let certs = show["certificates"].as_array().expect("certs");
    certs
        .iter()
        .rfind(|c| c["revoked_at"].is_null())
        .expect("an active certificate")["pem"]
        .as_str()
        .expect("pem")
        .to_string()
}

/// The public key X‖Y of a PEM certificate, through openssl.
fn cert_public_key(home: &Home, pem: &str) -> Vec<u8> {
    let f = home.work().join("mos-cert.pem");
    std::fs::write(&f, pem).expect("write");
    let pubpem = openssl_ok(&["x509", "-in", &f.to_string_lossy(), "-noout", "-pubkey"]);
    let pp = home.work().join("mos-pub.pem");
    std::fs::write(&pp, pubpem).expect("write");
    let der = home.work().join("mos-pub.der");
    openssl_ok(&[
        "pkey",
        "-pubin",
        "-in",
        &pp.to_string_lossy(),
        "-outform",
        "DER",
        "-out",
        &der.to_string_lossy(),
    ]);
    let d = std::fs::read(&der).expect("der");
    d[d.len() - 64..].to_vec()
}

fn verify_chain(home: &Home, pem: &str) {
    let f = home.work().join("mos-verify.pem");
    std::fs::write(&f, pem).expect("write");
    let root = home.path().join("ca/root.crt");
    let v = openssl(&[
        "verify",
        "-x509_strict",
        "-purpose",
        "sslclient",
        "-CAfile",
        &root.to_string_lossy(),
        &f.to_string_lossy(),
    ]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}

fn check_chip(mut chip: atecc::emulator::Chip, slot: u8, cert_key: &[u8]) {
    let zone = chip.config_zone();
    assert!(zone.is_config_locked(), "config zone not locked");
    assert!(zone.is_data_locked(), "data zone not locked");
    let profile =
        atecc::profile::Profile::from_toml(atecc::profile::TLS_DEVICE_PROFILE).expect("profile");
    assert_eq!(
        profile.to_config_zone(&zone).expect("apply").0,
        zone.0,
        "config zone differs from the profile"
    );
    let on_chip = Client::new(&mut chip).public_key(slot).expect("public key");
    assert_eq!(
        on_chip.to_vec(),
        cert_key,
        "certificate key is not the chip's"
    );
}

#[test]
fn a_mongoose_board_ends_in_the_same_verified_state_and_publishes_through_mosquitto() {
    let port = free_port();
    let home = home_with_site(port);
    let board = SimBoard::start_with(&home.work(), "salon", 0, false, &["--protocol", "mos"]);
    let monitor = home.client("monitor", &["--subscribe", "maison/#"]);
    let out = home.work().join("broker");
    let emit = |h: &Home| h.emit_broker(&out, None, &[]);
    emit(&home);
    let broker = Mosquitto::start(
        &out.join("mosquitto.conf"),
        port,
        &home.work().join("mosquitto.log"),
    );

    let o = provision_mos(
        &home,
        &board.port(),
        "salon-1",
        &["--profile", "climat", "--lock"],
    );
    assert!(
        o.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        board.log_text()
    );
    let r = board_result(&o);
    assert_eq!(r["result"]["status"], "provisioned", "{r}");
    let steps = r["result"]["steps"].to_string();
    for call in [
        "ATCA.SetConfig",
        "ATCA.LockZone 0",
        "ATCA.LockZone 1",
        "ATCA.GenKey",
        "ATCA.Sign",
        "FS.Put",
        "Config.Set",
        "ssl_key ATCA:0",
        // This firmware has no single-slot Lock: the report says the key stays replaceable.
        "slot 0 NOT locked",
    ] {
        assert!(steps.contains(call), "no {call} in {steps}");
    }
    emit(&home);
    broker.reload();

    let mut sub = subscribe_one(
        port,
        &out.join("ca.crt"),
        &monitor,
        "maison/salon/temperature",
        30,
    );
    let status = sub.wait().expect("sub");
    let mut got = String::new();
    sub.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut got)
        .expect("read");
    assert!(
        status.success() && got.starts_with("maison/salon/temperature "),
        "no reading: {got}\n{}\n{}",
        board.log_text(),
        broker.log_text()
    );
    assert!(
        board.log_text().contains("TLS signature made by the chip"),
        "{}",
        board.log_text()
    );

    // Running it again verifies and changes nothing.
    let again = provision_mos(
        &home,
        &board.port(),
        "salon-1",
        &["--profile", "climat", "--lock"],
    );
    let r2 = board_result(&again);
    assert_eq!(r2["result"]["status"], "verified", "{r2}");
    assert_eq!(r2["result"]["certificate"], r["result"]["certificate"]);

    let pem = active_cert(&home, "salon-1");
    verify_chain(&home, &pem);
    let key = cert_public_key(&home, &pem);
    drop(broker);
    check_chip(board.stop_and_open_chip(), 0, &key);
}

#[test]
fn a_host_key_needs_the_flag_and_is_refused_before_anything_is_sent() {
    let home = home_with_site(free_port());
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let path = nix::unistd::ttyname(&pty.slave)
        .expect("ttyname")
        .to_string_lossy()
        .into_owned();
    let o = provision_mos(&home, &path, "salon-2", &["--profile", "hostkey", "--lock"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--allow-plaintext-key-over-serial") && err.contains("IN CLEAR"),
        "{err}"
    );
    let mut fds = [PollFd::new(pty.master.as_fd(), PollFlags::POLLIN)];
    let ready = poll(&mut fds, PollTimeout::from(300u16)).expect("poll");
    assert_eq!(ready, 0, "bytes reached the port");
}

#[test]
fn with_the_flag_a_host_key_goes_in_and_the_report_says_it_crossed_in_clear() {
    let home = home_with_site(free_port());
    let board = SimBoard::start_with(&home.work(), "garage", 0, false, &["--protocol", "mos"]);
    let o = provision_mos(
        &home,
        &board.port(),
        "garage-1",
        &[
            "--profile",
            "hostkey",
            "--lock",
            "--allow-plaintext-key-over-serial",
        ],
    );
    assert!(
        o.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        board.log_text()
    );
    let r = board_result(&o);
    assert!(r["result"]["steps"].to_string().contains("in clear"), "{r}");
    let pem = active_cert(&home, "garage-1");
    verify_chain(&home, &pem);
    let key = cert_public_key(&home, &pem);
    check_chip(board.stop_and_open_chip(), 2, &key);
}

/// The board's serial port, raw, as a host program sees it.
fn open_raw(path: &str) -> File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open port");
    let mut t = nix::sys::termios::tcgetattr(f.as_fd()).expect("tcgetattr");
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(f.as_fd(), nix::sys::termios::SetArg::TCSANOW, &t).expect("raw");
    f
}

/// Everything the board sends within `wait`.
fn read_for(f: &mut File, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(50u16)).expect("poll") == 0 {
            continue;
        }
        match f.read(&mut buf) {
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

use provisioner::bench::kit::crc32;

#[test]
fn the_board_drops_corrupt_and_oversized_frames_and_chatters_between_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let board = SimBoard::start_with(dir.path(), "raw", 0, false, &["--protocol", "mos"]);
    let mut port = open_raw(&board.port());

    // Ready handshake.
    port.write_all(b"\"\"\"\x04\"\"\"\n").expect("write");
    let got = read_for(&mut port, Duration::from_millis(500));
    assert!(got.contains("\"\"\"\x04\"\"\""), "{got:?}");

    // A corrupted frame: logged, no reply.
    let body = r#"{"id":1099511627777,"src":"t","method":"Sys.GetInfo"}"#;
    let bad = format!(
        "\n\"\"\"{body}{:08x}\"\"\"\n",
        crc32(body.as_bytes()) ^ 0x10
    );
    port.write_all(bad.as_bytes()).expect("write");
    let got = read_for(&mut port, Duration::from_millis(600));
    assert!(got.contains("Corrupted frame"), "{got:?}");
    assert!(
        !got.contains("1099511627777"),
        "a corrupted frame was answered: {got:?}"
    );

    // An oversized frame: dropped, no reply.
    let big = format!(
        r#"{{"id":1099511627778,"src":"t","method":"FS.Put","params":{{"filename":"x","data":"{}"}}}}"#,
        "A".repeat(5000)
    );
    let big = format!("\n\"\"\"{big}{:08x}\"\"\"\n", crc32(big.as_bytes()));
    port.write_all(big.as_bytes()).expect("write");
    let got = read_for(&mut port, Duration::from_millis(600));
    assert!(got.contains("Incoming frame is too big"), "{got:?}");
    assert!(
        !got.contains("1099511627778"),
        "an oversized frame was answered: {got:?}"
    );

    // A good frame is answered, with a CRC, in the framing the host used; log lines come
    // between frames.
    let good = format!("\n\"\"\"{body}{:08x}\"\"\"\n", crc32(body.as_bytes()));
    port.write_all(good.as_bytes()).expect("write");
    let got = read_for(&mut port, Duration::from_millis(2500));
    let start = got.find("\"\"\"{").expect("a framed reply");
    let rest = &got[start + 3..];
    let end = rest.find("\"\"\"").expect("closing quotes");
    let frame = &rest[..end];
    let close = frame.rfind('}').expect("json");
    let (json, crc) = frame.split_at(close + 1);
    assert_eq!(crc, format!("{:08x}", crc32(json.as_bytes())), "{frame}");
    let v: serde_json::Value = serde_json::from_str(json).expect("json");
    assert_eq!(v["id"], 1099511627777u64);
    assert_eq!(v["result"]["arch"], "esp8266");
    assert!(
        got.contains("mg_rpc_handle_request Sys.GetInfo") && got.contains("uptime:"),
        "no log chatter: {got:?}"
    );
}

/// A noisy line (1e-3 per byte, both ways: dropped bytes and flipped bits). rpc-uart
/// (`src/mgos_rpc_channel_uart.c`, `mg_rpc_channel_uart_dispatcher`) logs `Corrupted frame`
/// for a request whose CRC does not match and drops it without a reply: the host sends such a
/// request again on that line (the report's `resent_on_report`), and a lock whose reply was
/// lost is checked before it is sent again. Provisioning completes (the operator runs again a
/// run the noise cut short, up to three times) and the end state is right: both zones locked
/// with the profile's contents, one active certificate, whose key is the chip's.
#[test]
fn on_a_noisy_line_dropped_requests_are_sent_again_and_the_board_ends_provisioned() {
    let home = home_with_site(free_port());
    let extra = ["--protocol", "mos", "--line-fault-rate", "0.001"];
    let board = SimBoard::start_with(&home.work(), "bruit", 0, false, &extra);
    let (mut reported, mut log, mut done) = (0, String::new(), false);
    for _ in 0..3 {
        let o = provision_mos(
            &home,
            &board.port(),
            "bureau-1",
            &["--profile", "climat", "--lock"],
        );
        log.push_str(&String::from_utf8_lossy(&o.stdout));
        log.push_str(&String::from_utf8_lossy(&o.stderr));
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) {
            reported += v["boards"][0]["result"]["link"]["resent_on_report"]
                .as_u64()
                .unwrap_or(0);
        }
        if o.status.success() {
            done = true;
            break;
        }
    }
    assert!(done, "not provisioned in three runs:\n{log}");
    assert!(
        reported > 0,
        "no request was sent again on the board's report:\n{log}\n{}",
        board.log_text()
    );
    let show = home.json(&["device", "show", "bureau-1"]);
    let active = show["certificates"]
        .as_array()
        .expect("certs")
        .iter()
        .filter(|c| c["revoked_at"].is_null())
        .count();
    assert_eq!(active, 1, "{show}");
    let key = cert_public_key(&home, &active_cert(&home, "bureau-1"));
    check_chip(board.stop_and_open_chip(), 0, &key);
}

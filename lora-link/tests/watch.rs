//! Watching `lora-link rx` while it runs: every rejected frame is logged as it happens (and a
//! flood costs a bounded number of lines), the counters are served in the Prometheus text
//! format on a loopback listener and match the final counters line.

mod common;
mod prom;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::{BIN, hub};
use lora_link::air::{AirFrame, AirMsg, AirPort, HubHandle};
use lora_link::crypto::LinkKeys;
use lora_link::frame;

const KEY: [u8; 16] = [0x22; 16];
const GW: u8 = 10;
const RX: u8 = 1;

struct Rx {
    child: Child,
    stderr: Receiver<String>,
    stdout: Receiver<String>,
    metrics: SocketAddr,
    hub: HubHandle,
    port: AirPort,
    _dir: tempfile::TempDir,
}

/// Starts `lora-link rx --metrics 127.0.0.1:0` on a fresh hub; returns once it serves.
fn start_rx() -> Rx {
    let hub = hub();
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = format!(
        "version = 1\nrole = \"receiver\"\nstate_dir = \"{state}\"\n[node]\nname = \"pi2\"\naddress = {RX}\n[[peers]]\nname = \"pi1\"\naddress = {GW}\n[radio]\nbackend = \"emulated\"\n[key]\nhex = \"{key}\"\n[air]\nhub = \"{hub}\"\n[[topics]]\nindex = 0\ntopic = \"maison/salon/temperature\"\n",
        state = dir.path().join("state").display(),
        key = hex::encode(KEY),
        hub = hub.addr
    );
    let path = dir.path().join("receiver.toml");
    manifests::link::write_secret(&path, manifest.as_bytes()).expect("write");
    let p = common::start_rx(&path);
    let port = AirPort::connect(hub.addr).expect("port");
    Rx {
        child: p.child,
        stderr: p.stderr,
        stdout: p.stdout,
        metrics: p.metrics,
        hub,
        port,
        _dir: dir,
    }
}

impl Rx {
    fn inject(&self, bytes: Vec<u8>) {
        self.port
            .send(&AirMsg::Inject(AirFrame::new(bytes)))
            .expect("inject");
    }

    /// SIGTERM, then the exit status and every stderr line after those already read.
    fn stop(mut self) -> (Vec<String>, serde_json::Value) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("kill");
        let st = self.child.wait().expect("wait");
        assert!(st.success(), "{st:?}");
        let rest: Vec<String> = self.stderr.iter().collect();
        let last = rest
            .iter()
            .rev()
            .find_map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .filter(|v| v.get("accepted").is_some())
            })
            .unwrap_or_else(|| panic!("no final counters line in {rest:#?}"));
        drop(self.hub);
        (rest, last)
    }
}

/// The manifest's topic table, as the gateway has it.
fn table() -> lora_link::records::TopicTable {
    lora_link::records::TopicTable::new([(0, "maison/salon/temperature")])
}

fn good(counter: u32) -> Vec<u8> {
    frame::seal(
        &frame::SealKey::new(&LinkKeys::derive(&KEY), 0, &table()),
        RX,
        GW,
        counter,
        &[0, 4, b'2', b'1', b'.', b'5'],
    )
    .expect("seal")
}

fn forged(counter: u32) -> Vec<u8> {
    frame::seal(
        &frame::SealKey::new(&LinkKeys::derive(&[0x66; 16]), 0, &table()),
        RX,
        GW,
        counter,
        &[0, 1, b'x'],
    )
    .expect("seal")
}

/// Waits for a JSON stderr line satisfying `f`; returns it and how long it took.
fn wait_line(
    rx: &Rx,
    within: Duration,
    mut f: impl FnMut(&serde_json::Value) -> bool,
) -> Option<(serde_json::Value, Duration)> {
    let start = Instant::now();
    while let Some(left) = within.checked_sub(start.elapsed()) {
        let Ok(l) = rx.stderr.recv_timeout(left) else {
            break;
        };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l)
            && f(&v)
        {
            return Some((v, start.elapsed()));
        }
    }
    None
}

/// The scraped figures against the final counters line.
fn assert_same(scraped: &std::collections::BTreeMap<String, f64>, last: &serde_json::Value) {
    for (series, key) in [
        ("lora_link_rx_frames_accepted_total", "accepted"),
        ("lora_link_rx_records_total", "records"),
        ("lora_link_rx_phy_crc_errors_total", "phy_crc_errors"),
    ] {
        assert_eq!(
            Some(prom::value(scraped, series)),
            last[key].as_u64(),
            "{series} vs {key}: {scraped:#?} {last}"
        );
    }
    let by_reason = last["rejected"].as_object().expect("rejected");
    let scraped_reasons: Vec<_> = scraped
        .keys()
        .filter(|k| k.starts_with("lora_link_rx_frames_rejected_total{"))
        .collect();
    assert_eq!(
        scraped_reasons.len(),
        by_reason.len(),
        "{scraped:#?} {last}"
    );
    for (reason, n) in by_reason {
        let series = format!("lora_link_rx_frames_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(Some(prom::value(scraped, &series)), n.as_u64(), "{series}");
    }
}

#[test]
fn rejections_are_logged_as_they_happen_and_the_scraped_counters_match_the_final_line() {
    let rx = start_rx();
    // A good frame, sent until the receiver (attached by now, but UDP) has it.
    let start = Instant::now();
    loop {
        rx.inject(good(0));
        if rx.stdout.recv_timeout(Duration::from_millis(300)).is_ok() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "nothing received"
        );
    }
    // A forged frame: a line naming the reason, the sender and the counter within a second.
    rx.inject(forged(7));
    let (v, took) = wait_line(&rx, Duration::from_secs(5), |v| v["rejected"] == "bad_mic")
        .expect("the forged frame is logged");
    assert!(took < Duration::from_secs(1), "logged after {took:?}");
    assert_eq!(
        (v["from"].as_u64(), v["counter"].as_u64()),
        (Some(10), Some(7)),
        "{v}"
    );
    // A replay of an older frame after a newer one.
    rx.inject(good(5));
    assert!(
        rx.stdout.recv_timeout(Duration::from_secs(5)).is_ok(),
        "frame 5"
    );
    rx.inject(good(0));
    let (v, took) = wait_line(&rx, Duration::from_secs(5), |v| v["rejected"] == "replay")
        .expect("the replay is logged");
    assert!(took < Duration::from_secs(1), "logged after {took:?}");
    assert_eq!(
        (v["from"].as_u64(), v["counter"].as_u64()),
        (Some(10), Some(0)),
        "{v}"
    );
    assert!(
        v["error"].as_str().expect("error").contains("replayed"),
        "{v}"
    );

    let m = prom::scrape(rx.metrics);
    assert!(
        prom::value(&m, "lora_link_rx_frames_accepted_total") >= 2,
        "{m:#?}"
    );
    assert!(
        prom::value(&m, "lora_link_rx_frames_rejected_total{reason=\"bad_mic\"}") >= 1,
        "{m:#?}"
    );
    assert!(prom::value(&m, "lora_link_rx_frames_rejected_total{reason=\"replay\"}") >= 1);
    let (status, _, _) = prom::get(rx.metrics, "/").expect("get /");
    assert_eq!(status, 404);

    // A client that never finishes its request delays the next scrape by the read
    // deadline at most; an oversized request is refused.
    let mut slow = TcpStream::connect(rx.metrics).expect("connect");
    slow.write_all(b"GET /metr").expect("write");
    let mut huge = TcpStream::connect(rx.metrics).expect("connect");
    let _ = huge.write_all(&vec![b'A'; 64 * 1024]);
    let t = Instant::now();
    let last_scrape = prom::scrape(rx.metrics);
    assert!(
        t.elapsed() < lora_link::metrics::READ_DEADLINE * 2 + Duration::from_millis(500),
        "the scrape waited {:?} behind a slow client",
        t.elapsed()
    );
    drop((slow, huge));

    let (_, last) = rx.stop();
    assert_same(&last_scrape, &last);
}

#[test]
fn a_flood_of_forged_frames_costs_a_bounded_number_of_log_lines() {
    let rx = start_rx();
    let start = Instant::now();
    for c in 0..1000 {
        rx.inject(forged(c));
        // the emulated chip keeps one packet, like the real one: give the loop time
        std::thread::sleep(Duration::from_millis(2));
    }
    // until the receiver has seen them all (what the chip overwrote is lost, as on air)
    let mut seen = 0;
    let mut stable = Instant::now();
    while stable.elapsed() < Duration::from_millis(700) {
        std::thread::sleep(Duration::from_millis(100));
        let n = prom::value(
            &prom::scrape(rx.metrics),
            "lora_link_rx_frames_rejected_total{reason=\"bad_mic\"}",
        );
        if n != seen {
            seen = n;
            stable = Instant::now();
        }
    }
    let elapsed = start.elapsed();
    eprintln!("{seen} of 1000 forged frames reached the receiver in {elapsed:?}");
    assert!(seen > 200, "only {seen} forged frames reached the receiver");
    let scraped = prom::scrape(rx.metrics);
    let (rest, last) = rx.stop();
    assert_same(&scraped, &last);
    let json: Vec<serde_json::Value> = rest
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let logged = json
        .iter()
        .filter(|v| v.get("rejected").is_some_and(|r| r.is_string()))
        .count();
    let suppressed: u64 = json
        .iter()
        .filter_map(|v| v["suppressed_rejections"].as_u64())
        .sum();
    // 20 at once, then one every 5 s; summaries at most once a minute and at the end
    let bound = 20 + elapsed.as_secs() as usize / 5 + 1;
    assert!(
        logged <= bound,
        "{logged} lines for {seen} frames in {elapsed:?}"
    );
    assert!(logged >= 20, "{logged}");
    assert_eq!(
        logged as u64 + suppressed,
        seen,
        "every rejection is accounted for"
    );
    assert_eq!(last["rejections_logged"].as_u64(), Some(logged as u64));
    assert_eq!(last["rejections_suppressed"].as_u64(), Some(suppressed));
    assert!(rest.len() < bound + 10, "{} stderr lines", rest.len());
}

#[test]
fn a_non_loopback_metrics_address_is_refused() {
    for addr in ["0.0.0.0:9101", "[::]:9101", "192.0.2.1:9101"] {
        let out = Command::new(BIN)
            .args(["rx", "--manifest", "/nonexistent.toml", "--metrics", addr])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{addr}: {err}");
        assert!(
            err.contains("not a loopback address") && err.contains("--metrics-allow-remote"),
            "{addr}: {err}"
        );
    }
}

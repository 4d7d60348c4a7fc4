//! Issue 13, items 1 and 7, on a real mosquitto running the configuration `emit broker`
//! writes: a certified device cannot take the gateway's client id (it neither disconnects the
//! gateway's session nor wipes what that session queued), and a burst far beyond mosquitto's
//! default per-client queue (1000) reaches a gateway that falls behind, whole.
//!
//! Each test also runs the configuration with our directives removed (mosquitto's defaults,
//! as before the fix) and checks that the harm is reproduced there, so a pass means the
//! directives did it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// The gateway's identity in the example site.
const GATEWAY: &str = "passerelle";

/// A broker from `emit broker`, optionally with the lines `without` removed from its
/// configuration (to show what mosquitto's defaults do).
fn broker(home: &Home, name: &str, without: &[&str]) -> (Mosquitto, PathBuf) {
    let port = free_port();
    let out = home.work().join(name);
    home.emit_broker(&out, Some(port), &[]);
    let conf_path = out.join("mosquitto.conf");
    let conf = std::fs::read_to_string(&conf_path).expect("conf");
    for d in without {
        assert!(conf.lines().any(|l| l == *d), "no `{d}` in\n{conf}");
    }
    let kept: String = conf
        .lines()
        .filter(|l| !without.contains(l))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&conf_path, kept).expect("write conf");
    let m = Mosquitto::start(&conf_path, port, &home.work().join(format!("{name}.log")));
    (m, out.join("ca.crt"))
}

/// A mosquitto client command with `c`'s certificate and client id `id`, QoS 1.
fn client(prog: &str, port: u16, ca: &Path, c: &Client, id: &str) -> Command {
    require(prog);
    let mut cmd = Command::new(prog);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-i", id])
        .arg("--cafile")
        .arg(ca)
        .arg("--cert")
        .arg(&c.crt)
        .arg("--key")
        .arg(&c.key)
        .stdin(Stdio::null());
    cmd
}

/// The gateway's side: a persistent session (`-c`) under the gateway's certificate and
/// client id, printing every message; its lines are counted as they come.
struct GatewaySub {
    child: Child,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl GatewaySub {
    fn start(m: &Mosquitto, ca: &Path, gw: &Client, filter: &str) -> Self {
        let before = m.log_text().matches(&format!(" as {GATEWAY} ")).count();
        let mut cmd = client("mosquitto_sub", m.port, ca, gw, GATEWAY);
        cmd.args(["-c", "-t", filter])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("mosquitto_sub");
        let out = child.stdout.take().expect("stdout");
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().expect("lines").push(l);
                }
            })
        };
        // Connected and subscribed before anything is published.
        let deadline = Instant::now() + Duration::from_secs(10);
        while m.log_text().matches(&format!(" as {GATEWAY} ")).count() <= before {
            assert!(
                Instant::now() < deadline,
                "the gateway never connected:\n{}",
                m.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        GatewaySub {
            child,
            lines,
            reader: Some(reader),
        }
    }
    fn count(&self) -> usize {
        self.lines.lock().expect("lines").len()
    }
    /// Waits until `n` lines arrived or nothing moved for `stall`; stops the subscriber
    /// (its session stays on the broker) and returns what it printed.
    fn finish(mut self, n: usize, stall: Duration) -> Vec<String> {
        let (mut last, mut moved) = (self.count(), Instant::now());
        while self.count() < n && moved.elapsed() < stall {
            std::thread::sleep(Duration::from_millis(20));
            if self.count() != last {
                (last, moved) = (self.count(), Instant::now());
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.lines.lock().expect("lines").clone()
    }
}

impl Drop for GatewaySub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// garage-1, with its own valid certificate, connects claiming the gateway's client id,
/// alternately with a clean and a persistent session, and publishes on its own topic.
fn impersonate(port: u16, ca: &Path, garage: &Client, i: usize) {
    let mut cmd = client("mosquitto_pub", port, ca, garage, GATEWAY);
    cmd.args(["-t", "maison/garage/porte", "-m", &format!("intrus {i}")]);
    if i % 2 == 1 {
        cmd.arg("-c");
    }
    let out = cmd.output().expect("mosquitto_pub");
    assert!(
        out.status.success(),
        "garage-1 could not publish on its own topic: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn reading(port: u16, ca: &Path, salon: &Client, text: &str) {
    let out = client("mosquitto_pub", port, ca, salon, "salon-1")
        .args(["-t", "maison/salon/temperature", "-m", text])
        .output()
        .expect("mosquitto_pub");
    assert!(
        out.status.success(),
        "salon-1 could not publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const TAKEOVER: &str = "Client passerelle already connected, closing old connection";

#[test]
fn a_device_claiming_the_gateways_client_id_neither_kicks_the_gateway_nor_wipes_its_session() {
    let home = Home::with_broker();
    let gw = home.client(GATEWAY, &["--subscribe", "maison/#"]);
    let garage = home.client("garage-1", &["--publish", "maison/garage/#"]);
    let salon = home.client("salon-1", &["--publish", "maison/salon/#"]);

    // Before the fix (the client-id rule removed): one impersonation kicks the gateway off.
    {
        let (m, ca) = broker(&home, "before", &["use_username_as_clientid true"]);
        let sub = GatewaySub::start(&m, &ca, &gw, "maison/salon/#");
        impersonate(m.port, &ca, &garage, 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !m.log_text().contains(TAKEOVER) {
            assert!(
                Instant::now() < deadline,
                "without use_username_as_clientid the impersonation should take the gateway's session:\n{}",
                m.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(sub);
    }

    // The emitted configuration: 40 impersonations interleaved with 20 QoS 1 readings.
    let (m, ca) = broker(&home, "after", &[]);
    let sub = GatewaySub::start(&m, &ca, &gw, "maison/salon/#");
    for i in 0..20 {
        impersonate(m.port, &ca, &garage, 2 * i);
        reading_at(m.port, &ca, &salon, i, "online");
        impersonate(m.port, &ca, &garage, 2 * i + 1);
    }
    let got = sub.finish(20, Duration::from_secs(3));
    let want: Vec<String> = (0..20).map(|i| format!("online {i}")).collect();
    assert_eq!(got, want, "the gateway got {} of 20 readings", got.len());
    let log = m.log_text();
    assert!(
        !log.contains(TAKEOVER),
        "the gateway was kicked off:\n{log}"
    );
    // The broker renamed every impersonation to its certificate's identity.
    let as_garage = log.matches(" as garage-1 ").count();
    assert_eq!(as_garage, 40, "{log}");
    assert_eq!(log.matches(" as passerelle ").count(), 1, "{log}");

    // The gateway away, its persistent session queues; impersonations with a clean session
    // (which would delete a session of that client id) leave it alone.
    for i in 0..5 {
        reading_at(m.port, &ca, &salon, i, "queued");
        impersonate(m.port, &ca, &garage, 2 * i);
    }
    let sub = GatewaySub::start(&m, &ca, &gw, "maison/salon/#");
    let got = sub.finish(5, Duration::from_secs(3));
    let want: Vec<String> = (0..5).map(|i| format!("queued {i}")).collect();
    assert_eq!(
        got,
        want,
        "the gateway's session lost what was queued: {} of 5",
        got.len()
    );
}

fn reading_at(port: u16, ca: &Path, salon: &Client, i: usize, what: &str) {
    reading(port, ca, salon, &format!("{what} {i}"));
}

/// Publishes `n` QoS 1 readings with `mosquitto_pub -l` while the gateway's subscriber does
/// not read its output (its pipe fills after about 2 000 lines, so it stops acknowledging and
/// the broker queues the rest); then reads everything. Returns how many arrived.
fn burst_to_a_stalled_gateway(
    m: &Mosquitto,
    ca: &Path,
    gw: &Client,
    pubc: &Client,
    n: usize,
) -> usize {
    let mut cmd = client("mosquitto_sub", m.port, ca, gw, GATEWAY);
    cmd.args(["-c", "-t", "maison/salon/temperature"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let before = m.log_text().matches(" as passerelle ").count();
    let mut sub = cmd.spawn().expect("mosquitto_sub");
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.log_text().matches(" as passerelle ").count() <= before {
        assert!(Instant::now() < deadline, "no gateway:\n{}", m.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));

    let mut publ = client("mosquitto_pub", m.port, ca, pubc, "salon-1")
        .args(["-t", "maison/salon/temperature", "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub -l");
    {
        let mut stdin = publ.stdin.take().expect("stdin");
        let text: String = (0..n)
            .map(|i| format!("{{\"seq\":{i:05},\"t\":21.5,\"pad\":\"................\"}}\n"))
            .collect();
        stdin
            .write_all(text.as_bytes())
            .expect("feed mosquitto_pub");
    }
    let st = publ.wait_with_output().expect("mosquitto_pub");
    assert!(
        st.status.success(),
        "mosquitto_pub -l: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    // Every reading is on the broker now (QoS 1, acknowledged); the gateway starts reading.
    let count = Arc::new(AtomicU64::new(0));
    let out = sub.stdout.take().expect("stdout");
    let reader = {
        let count = Arc::clone(&count);
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if seen.insert(l) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let (mut last, mut moved) = (0, Instant::now());
    while (count.load(Ordering::Relaxed) as usize) < n && moved.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
        let now = count.load(Ordering::Relaxed);
        if now != last {
            (last, moved) = (now, Instant::now());
        }
    }
    let _ = sub.kill();
    let _ = sub.wait();
    let _ = reader.join();
    count.load(Ordering::Relaxed) as usize
}

#[test]
fn a_burst_beyond_mosquittos_default_queue_reaches_a_stalled_gateway_whole() {
    const N: usize = 5_000;
    let home = Home::with_broker();
    let gw = home.client(GATEWAY, &["--subscribe", "maison/#"]);
    let salon = home.client("salon-1", &["--publish", "maison/salon/#"]);

    // mosquitto's defaults (max_queued_messages 1000) drop most of what overflows.
    let (m, ca) = broker(
        &home,
        "defaults",
        &[
            "max_queued_messages 100000",
            "max_queued_bytes 67108864",
            "max_inflight_messages 100",
        ],
    );
    let got = burst_to_a_stalled_gateway(&m, &ca, &gw, &salon, N);
    eprintln!("mosquitto's defaults: the stalled gateway got {got} of {N}");
    assert!(
        got < N,
        "with mosquitto's default queue the stalled subscriber should lose some, got {got} of {N}"
    );
    drop(m);

    let (m, ca) = broker(&home, "sized", &[]);
    let got = burst_to_a_stalled_gateway(&m, &ca, &gw, &salon, N);
    assert_eq!(got, N, "the gateway got {got} of {N} readings");
}

/// The subject CN of a PEM certificate file, as openssl reads it.
fn cn_of(crt: &Path) -> String {
    let subject = openssl_ok(&[
        "x509",
        "-in",
        &crt.to_string_lossy(),
        "-noout",
        "-subject",
        "-nameopt",
        "multiline",
    ]);
    subject
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("commonName")
                .map(|v| v.trim_start_matches([' ', '=']))
        })
        .unwrap_or_else(|| panic!("no commonName in {subject}"))
        .trim()
        .to_string()
}

#[test]
fn emitted_gateway_and_receiver_manifests_name_their_certificates_cn_as_client_id() {
    let home = Home::with_broker();
    let gw_dir = home.work().join("gw");
    home.ok(&[
        "emit",
        "gateway",
        GATEWAY,
        "--out",
        &gw_dir.to_string_lossy(),
    ]);
    let text = std::fs::read_to_string(gw_dir.join("gateway.toml")).expect("gateway.toml");
    let m = manifests::gateway::GatewayManifest::parse(&text, Path::new("gateway.toml"))
        .expect("gateway manifest");
    assert_eq!(m.mqtt.client_id, GATEWAY);
    assert_eq!(cn_of(&gw_dir.join(&m.mqtt.cert_file)), m.mqtt.client_id);

    let rx_dir = home.work().join("rx");
    home.ok(&[
        "emit",
        "receiver",
        "recepteur",
        "--out",
        &rx_dir.to_string_lossy(),
    ]);
    let text = std::fs::read_to_string(rx_dir.join("receiver.toml")).expect("receiver.toml");
    let l = manifests::link::LinkManifest::parse(&text, Path::new("receiver.toml"))
        .expect("receiver manifest");
    let mqtt = l.mqtt.expect("an [mqtt] section");
    assert_eq!(mqtt.client_id, "recepteur");
    assert_eq!(cn_of(&rx_dir.join(&mqtt.cert_file)), mqtt.client_id);
}

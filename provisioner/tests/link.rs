//! The second half of the network, end to end with real parts: a certified client publishes to
//! mosquitto on "Pi #1"; `gateway` (its own certificate, from `emit gateway`) forwards over the
//! secure LoRa link through two emulated SX1276s on a `lora-link air` hub; `lora-link rx`
//! (from `emit receiver`) republishes to a second mosquitto on "Pi #2", where a subscriber sees
//! the same topics and payload bytes. And `deploy gateway` into a root filesystem.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::link::{monitor_sub, monitor_subscribed};
use common::*;

/// A daemon of ours, killed (and reaped) on drop so no process is left behind.
struct Daemon {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(name: &'static str, bin: &Path, args: &[&str], log: PathBuf) -> Self {
        let f = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        Daemon {
            name,
            child: Some(child),
            log,
        }
    }
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Waits until the log contains `needle`; panics with the log otherwise.
    fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log_text().contains(needle) {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!(
                    "{} exited ({st}) before `{needle}`:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: no `{needle}` within {timeout:?}:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    /// SIGTERM, then waits for the exit; returns (exit code, stdout).
    fn terminate(&mut self, timeout: Duration) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not stop within {timeout:?} after SIGTERM:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut out = String::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        (status.code(), out)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The far-side monitor's subscription printing `topic hex-payload` for `count` messages,
/// returned once it is on `broker`.
fn subscribe_hex(broker: &Mosquitto, port: u16, cafile: &Path, c: &Client, count: usize) -> Child {
    monitor_subscribed(broker, || {
        monitor_sub(port, cafile, c, "maison/#", count, 30, &["-F", "%t %x"])
    })
}

/// mosquitto_pub of a file's bytes at QoS 1.
fn publish_bytes(port: u16, cafile: &Path, c: &Client, topic: &str, payload: &[u8], dir: &Path) {
    let f = dir.join("payload.bin");
    std::fs::write(&f, payload).expect("payload");
    let out = publish_with(port, cafile, c, &["-t", topic, "-f", &f.to_string_lossy()]);
    assert!(
        out.status.success(),
        "publish to {topic}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_certified_reading_crosses_the_lora_link_to_the_far_side_broker_byte_for_byte() {
    let started = Instant::now();
    let gateway_bin = workspace_bin("gateway");
    let lora_bin = workspace_bin("lora-link");
    let home = Home::with_broker();
    let w = home.work();
    let sensor = home.client("capteur-salon", &["--publish", "maison/#"]);
    let monitor = home.client("moniteur", &["--subscribe", "maison/#"]);

    // The simulated air.
    let air_port = free_udp_port();
    let air_addr = format!("127.0.0.1:{air_port}");
    let mut air = Daemon::start(
        "lora-link air",
        &lora_bin,
        &["air", "--listen", &air_addr],
        w.join("air.log"),
    );
    air.wait_for("listening on", Duration::from_secs(10));

    // Gateway and receiver configuration, then both brokers (their ACLs know both nodes).
    let (near_port, far_port) = (free_port(), free_port());
    let gw_dir = w.join("passerelle");
    let rx_dir = w.join("recepteur");
    let gw = home.json(&[
        "emit",
        "gateway",
        "passerelle",
        "--out",
        &gw_dir.to_string_lossy(),
        "--broker-host",
        "127.0.0.1",
        "--broker-port",
        &near_port.to_string(),
        "--air",
        &air_addr,
    ]);
    assert_eq!(gw["existing"], false, "{gw}");
    let rx = home.json(&[
        "emit",
        "receiver",
        "recepteur",
        "--out",
        &rx_dir.to_string_lossy(),
        "--broker-host",
        "127.0.0.1",
        "--broker-port",
        &far_port.to_string(),
        "--air",
        &air_addr,
    ]);
    assert_eq!(rx["peer_address"], gw["address"], "{rx} / {gw}");
    // Emitting again reuses the certificate, key and link key.
    let again = home.json(&[
        "emit",
        "gateway",
        "passerelle",
        "--out",
        &gw_dir.to_string_lossy(),
        "--broker-host",
        "127.0.0.1",
        "--broker-port",
        &near_port.to_string(),
        "--air",
        &air_addr,
    ]);
    assert_eq!(
        (again["existing"].clone(), again["serial"].clone()),
        (serde_json::json!(true), gw["serial"].clone())
    );
    assert_eq!(
        std::fs::read(gw_dir.join("link.key")).expect("key"),
        std::fs::read(rx_dir.join("link-passerelle-1.key")).expect("key"),
        "both ends share the gateway's link key (key 1)"
    );
    for (dir, secret) in [
        (&gw_dir, "passerelle.key"),
        (&gw_dir, "link.key"),
        (&gw_dir, "gateway.toml"),
        (&gw_dir, "link.toml"),
        (&rx_dir, "recepteur.key"),
        (&rx_dir, "link-passerelle-1.key"),
        (&rx_dir, "receiver.toml"),
    ] {
        assert_eq!(mode(&dir.join(secret)), 0o600, "{secret}");
    }
    let near_dir = w.join("broker-near");
    let far_dir = w.join("broker-far");
    for (dir, port) in [(&near_dir, near_port), (&far_dir, far_port)] {
        home.emit_broker(dir, Some(port), &[]);
    }
    let acl = std::fs::read_to_string(far_dir.join("acl")).expect("acl");
    assert!(
        acl.contains("user recepteur") && acl.contains("user passerelle"),
        "{acl}"
    );
    let _near = Mosquitto::start(
        &near_dir.join("mosquitto.conf"),
        near_port,
        &w.join("near.log"),
    );
    let far = Mosquitto::start(
        &far_dir.join("mosquitto.conf"),
        far_port,
        &w.join("far.log"),
    );
    let near_ca = near_dir.join("ca.crt");
    let far_ca = far_dir.join("ca.crt");

    // The receiver on Pi #2, then the gateway on Pi #1, each loading what emit wrote.
    let mut rxd = Daemon::start(
        "lora-link rx",
        &lora_bin,
        &[
            "rx",
            "--manifest",
            &rx_dir.join("receiver.toml").to_string_lossy(),
        ],
        w.join("rx.log"),
    );
    rxd.wait_for("connected to the broker", Duration::from_secs(10));
    let check = Command::new(&gateway_bin)
        .args([
            "--manifest",
            &gw_dir.join("gateway.toml").to_string_lossy(),
            "--check",
        ])
        .output()
        .expect("gateway --check");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut gwd = Daemon::start(
        "gateway",
        &gateway_bin,
        &["--manifest", &gw_dir.join("gateway.toml").to_string_lossy()],
        w.join("gateway.log"),
    );
    gwd.wait_for("subscribed to maison/#", Duration::from_secs(10));

    // The far-side subscriber.
    let messages: Vec<(&str, Vec<u8>)> = vec![
        ("maison/salon/temperature", b"21.5".to_vec()),
        (
            "maison/salon/humidite",
            b"{\"rh\":48.2,\"t\":1718000000}".to_vec(),
        ),
        (
            "maison/garage/porte",
            vec![0x00, 0xff, 0x7e, 0x0d, 0x0a, 0x80, 0x01, 0x20],
        ),
        ("maison/salon/temperature", b"".to_vec()),
        (
            "maison/cave/inconnu/mesure",
            b"inline topic, not in the table".to_vec(),
        ),
    ];
    let mut sub = subscribe_hex(&far, far_port, &far_ca, &monitor, messages.len());

    for (topic, payload) in &messages {
        publish_bytes(near_port, &near_ca, &sensor, topic, payload, &w);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = sub.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = sub.kill();
            panic!(
                "far side got fewer than {} messages\ngateway:\n{}\nrx:\n{}",
                messages.len(),
                gwd.log_text(),
                rxd.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut got = String::new();
    sub.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut got)
        .expect("read");
    assert!(
        status.success(),
        "mosquitto_sub: {status}\n{got}\ngateway:\n{}\nrx:\n{}",
        gwd.log_text(),
        rxd.log_text()
    );
    let got: Vec<String> = got.lines().map(|l| l.trim_end().to_string()).collect();
    let want: Vec<String> = messages
        .iter()
        .map(|(t, p)| format!("{t} {}", hex::encode(p)).trim_end().to_string())
        .collect();
    assert_eq!(got, want, "topics and payloads differ across the link");

    // SIGTERM: the gateway prints its counters as one JSON line and exits 0.
    let (code, out) = gwd.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "gateway exit\n{}", gwd.log_text());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line on stdout: {out}");
    let c: serde_json::Value = serde_json::from_str(lines[0]).expect("counters JSON");
    let n = messages.len() as u64;
    assert_eq!(c["received"], n, "{c}");
    assert_eq!(c["queued"], n, "{c}");
    assert_eq!(c["sent"], n, "{c}");
    for k in [
        "dropped_queue_full",
        "rejected_too_large",
        "rejected_invalid",
        "dropped_radio_error",
        "dropped_at_shutdown",
        "waiting",
    ] {
        assert_eq!(c[k], 0, "{k}: {c}");
    }
    assert!(
        c["frames_sent"]
            .as_u64()
            .is_some_and(|f| (1..=n).contains(&f)),
        "{c}"
    );
    let stored =
        std::fs::read_to_string(gw_dir.join("state").join("counters.json")).expect("counters file");
    assert_eq!(stored.trim(), lines[0]);
    assert!(
        gwd.log_text().contains("stopped cleanly"),
        "{}",
        gwd.log_text()
    );

    // QoS 1 published while the gateway is down waits in its persistent session on the broker
    // and crosses the link once it is back.
    let later: Vec<(&str, Vec<u8>)> = vec![
        ("maison/cuisine/temperature", b"19.0".to_vec()),
        ("maison/bureau/luminosite", b"312".to_vec()),
    ];
    let mut sub = subscribe_hex(&far, far_port, &far_ca, &monitor, later.len());
    for (topic, payload) in &later {
        publish_bytes(near_port, &near_ca, &sensor, topic, payload, &w);
    }
    let mut gwd = Daemon::start(
        "gateway (restarted)",
        &gateway_bin,
        &["--manifest", &gw_dir.join("gateway.toml").to_string_lossy()],
        w.join("gateway-2.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while sub.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = sub.kill();
            panic!(
                "messages published while the gateway was down were lost\ngateway:\n{}\nrx:\n{}",
                gwd.log_text(),
                rxd.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut got = String::new();
    sub.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut got)
        .expect("read");
    let want: Vec<String> = later
        .iter()
        .map(|(t, p)| format!("{t} {}", hex::encode(p)))
        .collect();
    assert_eq!(got.lines().collect::<Vec<_>>(), want);
    let (code, out) = gwd.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "gateway exit\n{}", gwd.log_text());
    let c: serde_json::Value = serde_json::from_str(out.trim()).expect("counters JSON");
    assert_eq!(
        (c["received"].clone(), c["sent"].clone()),
        (later.len().into(), later.len().into()),
        "{c}"
    );
    let total = n + later.len() as u64;
    eprintln!("gateway log (after restart):\n{}", gwd.log_text());

    let (code, _) = rxd.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "rx exit\n{}", rxd.log_text());
    let rx_log = rxd.log_text();
    let last: serde_json::Value =
        serde_json::from_str(rx_log.lines().last().expect("counters line")).expect("rx counters");
    assert_eq!(last["records"], total, "{rx_log}");
    assert_eq!(last["republished"], total, "{rx_log}");
    assert_eq!(last["acked"], total, "{rx_log}");
    assert_eq!(last["rejected"], serde_json::json!({}), "{rx_log}");
    drop(air);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn the_gateway_refuses_a_key_others_can_read_and_a_broker_it_cannot_reach_is_retried() {
    let gateway_bin = workspace_bin("gateway");
    let home = Home::with_broker();
    let w = home.work();
    let dir = w.join("gw");
    let port = free_port(); // nobody listens there
    home.ok(&[
        "emit",
        "gateway",
        "passerelle",
        "--out",
        &dir.to_string_lossy(),
        "--broker-host",
        "127.0.0.1",
        "--broker-port",
        &port.to_string(),
        "--air",
        "127.0.0.1:9",
    ]);
    let manifest = dir.join("gateway.toml").to_string_lossy().into_owned();

    std::fs::set_permissions(
        dir.join("passerelle.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let out = Command::new(&gateway_bin)
        .args(["--manifest", &manifest])
        .output()
        .expect("gateway");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("passerelle.key") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(
        dir.join("passerelle.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");

    // No broker: it keeps retrying with back-off, and still stops cleanly on SIGTERM.
    let mut g = Daemon::start(
        "gateway",
        &gateway_bin,
        &["--manifest", &manifest],
        w.join("g.log"),
    );
    g.wait_for("retrying in 1000 ms", Duration::from_secs(10));
    let (code, out) = g.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", g.log_text());
    let c: serde_json::Value = serde_json::from_str(out.trim()).expect("counters");
    assert_eq!(c["received"], 0);
    assert!(
        c["connection_errors"].as_u64().is_some_and(|e| e >= 2),
        "{c}"
    );
}

#[test]
fn deploy_gateway_installs_configuration_unit_and_state_directory_atomically() {
    let home = Home::new();
    home.ok(&["init"]);
    let root = home.work().join("pi1-root");
    std::fs::create_dir_all(&root).expect("root");
    let first = home.json(&[
        "deploy",
        "gateway",
        "passerelle",
        "--root",
        &root.to_string_lossy(),
    ]);
    let etc = root.join("etc/iot-gateway");
    assert_eq!(mode(&etc), 0o700);
    for (f, m) in [
        ("gateway.toml", 0o600),
        ("link.toml", 0o600),
        ("link.key", 0o600),
        ("passerelle.key", 0o600),
        ("passerelle.crt", 0o644),
        ("ca.crt", 0o644),
    ] {
        assert_eq!(mode(&etc.join(f)), m, "{f}");
    }
    assert_eq!(mode(&root.join("var/lib/iot-gateway")), 0o700);
    let unit_path = root.join("etc/systemd/system/iot-gateway.service");
    assert_eq!(mode(&unit_path), 0o644);
    let unit = std::fs::read_to_string(&unit_path).expect("unit");
    for line in [
        "ExecStart=/usr/local/bin/gateway --manifest /etc/iot-gateway/gateway.toml",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=iot-gateway",
        "KillSignal=SIGTERM",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line}:\n{unit}");
    }

    // Paths in the manifests are the Pi's, and they parse as the daemons will read them.
    let text = std::fs::read_to_string(etc.join("gateway.toml")).expect("manifest");
    let g = manifests::gateway::GatewayManifest::parse(&text, Path::new("gateway.toml"))
        .expect("gateway manifest");
    assert_eq!(
        g.mqtt.key_file,
        Path::new("/etc/iot-gateway/passerelle.key")
    );
    assert_eq!(g.mqtt.ca_file, Path::new("/etc/iot-gateway/ca.crt"));
    assert_eq!(
        g.link.manifest.as_deref(),
        Some(Path::new("/etc/iot-gateway/link.toml"))
    );
    assert_eq!(
        g.counters_file.as_deref(),
        Some(Path::new("/var/lib/iot-gateway/counters.json"))
    );
    assert_eq!(g.mqtt.host, "broker.maison.lan");
    assert_eq!(g.mqtt.filters, ["maison/#"]);
    let link_text = std::fs::read_to_string(etc.join("link.toml")).expect("link");
    let link = manifests::link::LinkManifest::parse(&link_text, Path::new("link.toml"))
        .expect("link manifest");
    assert_eq!(link.role, manifests::link::LinkRole::Gateway);
    assert_eq!(link.state_dir, Path::new("/var/lib/iot-gateway"));
    assert_eq!(
        link.key.file.as_deref(),
        Some(Path::new("/etc/iot-gateway/link.key"))
    );
    assert_eq!(link.radio.backend, manifests::link::RadioBackend::Sx127x);
    assert_eq!(
        (
            link.radio.pins.cs,
            link.radio.pins.reset,
            link.radio.pins.dio0
        ),
        (25, 17, 4)
    );
    assert!(
        link.topics
            .iter()
            .any(|t| t.topic == "maison/salon/temperature"),
        "{link_text}"
    );
    let key = std::fs::read_to_string(etc.join("link.key")).expect("key");
    assert_eq!(key.trim().len(), 32);
    assert!(
        !text.contains(key.trim()) && !link_text.contains(key.trim()),
        "the key stays in link.key"
    );

    // Again: same certificate and key, nothing staged left over.
    let crt = std::fs::read(etc.join("passerelle.crt")).expect("crt");
    let second = home.json(&[
        "deploy",
        "gateway",
        "passerelle",
        "--root",
        &root.to_string_lossy(),
    ]);
    assert_eq!(second["serial"], first["serial"]);
    assert_eq!(second["existing"], true);
    assert_eq!(std::fs::read(etc.join("passerelle.crt")).expect("crt"), crt);
    assert_eq!(
        std::fs::read_to_string(etc.join("link.key")).expect("key"),
        key
    );
    let leftovers: Vec<String> = std::fs::read_dir(root.join("etc"))
        .expect("etc")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Unknown gateway and missing root: clear errors, nothing written.
    let o = home.run(&[
        "deploy",
        "gateway",
        "nope",
        "--root",
        &root.to_string_lossy(),
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("passerelle"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = home.run(&[
        "deploy",
        "gateway",
        "passerelle",
        "--root",
        "/nonexistent/root",
    ]);
    assert_eq!(o.status.code(), Some(3));
}

/// The line of `out` that starts (after spaces) with `label`, without it.
fn hint<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{out}"))
}

/// Runs a printed shell line with `sh -c`, the remote part (`ssh HOST 'CMD'`) run here and
/// without `sudo` (the test runs as the account that owns everything).
fn run_printed(line: &str, dir: &Path) -> std::process::Output {
    let local = line.replace("ssh HOST ", "sh -c ").replace("sudo ", "");
    Command::new("sh")
        .args(["-c", &local])
        .current_dir(dir)
        .output()
        .expect("sh")
}

#[test]
fn emit_receiver_run_lines_work_as_printed_and_with_a_prefix_say_to_copy_first() {
    let home = Home::new();
    home.ok(&["init"]);
    // Without --prefix: the manifest named by the run line loads, and its key files, relative
    // to it, are there (run from another directory than the one emit ran in).
    let out = home.ok(&[
        "emit",
        "receiver",
        "recepteur",
        "--out",
        "./rx",
        "--air",
        "127.0.0.1:7700",
    ]);
    let run = hint(&out, "run:");
    let manifest = run
        .strip_prefix("lora-link rx --manifest ")
        .unwrap_or_else(|| panic!("{run}"));
    assert!(Path::new(manifest).is_absolute(), "{run}");
    let loaded = manifests::link::LinkManifest::load(Path::new(manifest))
        .unwrap_or_else(|e| panic!("{run}: {e}"));
    let mqtt = loaded.manifest.mqtt.expect("[mqtt]");
    let dir = Path::new(manifest).parent().expect("dir");
    for f in [&mqtt.key_file, &mqtt.cert_file, &mqtt.ca_file] {
        let p = dir.join(f);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{} named by {run}: {e}", p.display()));
    }

    // With --prefix the files are valid on the receiver only: the hint says to copy first,
    // and the printed copy then the printed run line's manifest work there.
    let pi = home.work().join("pi2");
    let prefix = pi.join("etc/lora-link");
    let prefix_s = prefix.to_string_lossy().into_owned();
    let out = home.ok(&[
        "emit",
        "receiver",
        "recepteur",
        "--out",
        "./rx2",
        "--prefix",
        &prefix_s,
        "--air",
        "127.0.0.1:7700",
    ]);
    assert!(
        !out.lines().any(|l| l.trim_start().starts_with("run:")),
        "a run line for files not yet copied:\n{out}"
    );
    let after = hint(
        &out,
        &format!("after copying to {prefix_s} on the receiver (Pi #2), run there:"),
    );
    assert_eq!(
        after,
        format!("sudo lora-link rx --manifest {prefix_s}/receiver.toml"),
        "{out}"
    );
    let copied = run_printed(hint(&out, "copy:"), &home.work());
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let loaded = manifests::link::LinkManifest::load(&prefix.join("receiver.toml"))
        .unwrap_or_else(|e| panic!("after the printed copy: {e}"));
    let mqtt = loaded.manifest.mqtt.expect("[mqtt]");
    assert_eq!(mqtt.key_file, prefix.join("recepteur.key"));
    assert_eq!(mode(&mqtt.key_file), 0o600);
    std::fs::read(&mqtt.key_file).expect("the key at the path the manifest names");
}

#[test]
fn init_suggests_a_server_issue_that_keeps_the_site_broker_names() {
    let home = Home::new();
    let out = home.ok(&["init"]);
    let next = hint(&out, "next:");
    for name in ["broker.maison.lan", "raspberrypi.local", "192.168.1.10"] {
        assert!(next.contains(name), "{name} missing from `{next}`");
    }
    // The suggested command, as printed, certifies exactly those names.
    let cmd = next.split("   (").next().expect("command");
    let args: Vec<&str> = cmd.split_whitespace().skip(1).collect();
    assert_eq!(args, ["server", "issue"], "{next}");
    let issued = home.json(&args);
    let names: Vec<&str> = issued["names"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    assert_eq!(
        names,
        ["192.168.1.10", "broker.maison.lan", "raspberrypi.local"]
    );
}

#[test]
fn deploy_gateway_refuses_receiver_flags_and_emit_gateway_and_receiver_have_their_own_help() {
    let home = Home::new();
    home.ok(&["init"]);
    let root = home.work().join("pi1-root");
    std::fs::create_dir_all(&root).expect("root");
    let root_s = root.to_string_lossy().into_owned();
    for flag in [
        &["--no-mqtt"][..],
        &["--prefix", "/x"],
        &["--state-dir", "/x"],
    ] {
        let mut a = vec!["deploy", "gateway", "passerelle", "--root", root_s.as_str()];
        a.extend_from_slice(flag);
        let out = home.run(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag:?}: {err}");
        assert!(err.contains(flag[0]), "{flag:?} not named: {err}");
    }
    assert!(!root.join("etc").exists(), "something was installed");
    // emit gateway takes no receiver flag, emit receiver no gateway flag.
    let out = home.run(&["emit", "gateway", "passerelle", "--out", "./g", "--no-mqtt"]);
    assert_eq!(out.status.code(), Some(2));
    let out = home.run(&[
        "emit",
        "receiver",
        "recepteur",
        "--out",
        "./r",
        "--server-name",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let g = home.ok(&["emit", "gateway", "--help"]);
    let r = home.ok(&["emit", "receiver", "--help"]);
    assert_ne!(g, r);
    assert!(
        g.contains("gateway.toml") && !g.contains("--no-mqtt"),
        "{g}"
    );
    assert!(
        r.contains("lora-link rx") && !r.contains("--server-name"),
        "{r}"
    );
}

#[test]
fn gateway_check_refuses_a_manifest_for_a_radio_this_build_cannot_drive() {
    let gateway = workspace_bin("gateway");
    let home = Home::new();
    home.ok(&["init"]);
    // No --air: the real SX127x, which a build without `rpi` (this one) cannot open.
    home.ok(&["emit", "gateway", "passerelle", "--out", "./gw"]);
    let out = Command::new(&gateway)
        .arg("--manifest")
        .arg(home.work().join("gw/gateway.toml"))
        .arg("--check")
        .output()
        .expect("gateway");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--check passed: {err}");
    assert!(err.contains("rpi") && err.contains("SX127x"), "{err}");
    // The emulated radio on a hub: valid.
    home.ok(&[
        "emit",
        "gateway",
        "passerelle",
        "--out",
        "./gw2",
        "--air",
        "127.0.0.1:7700",
    ]);
    let out = Command::new(&gateway)
        .arg("--manifest")
        .arg(home.work().join("gw2/gateway.toml"))
        .arg("--check")
        .output()
        .expect("gateway");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `log` contains `needle`.
fn wait_log(log: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no `{needle}` in {}:\n{text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn emit_broker_hints_run_copy_and_reload_as_printed_and_keep_the_crl_units_off_the_broker() {
    require("mosquitto");
    let home = Home::with_broker();
    // A directory every account can enter, as /etc/mosquitto is.
    let work = home.work();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let port = free_port();
    let port_s = port.to_string();
    // As the top-level help shows it: no --run-as.
    let out = home.ok(&[
        "emit",
        "broker",
        "--out",
        "./broker",
        "--port",
        &port_s,
        "--bind",
        "127.0.0.1",
    ]);
    assert!(!out.contains("warning"), "{out}");
    let run = hint(&out, "run:");
    let log = work.join("mosquitto.log");
    let mut broker = Command::new("sh")
        .args(["-c", &format!("exec {run}")])
        .current_dir(&work)
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(
            std::fs::File::options()
                .append(true)
                .open(&log)
                .expect("log"),
        )
        .spawn()
        .expect("mosquitto");
    wait_log(&log, "running");
    let reload = run_printed(hint(&out, "reload:"), &work);
    assert!(
        reload.status.success(),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    wait_log(&log, "Reloading config");
    let _ = broker.kill();
    let _ = broker.wait();
    // The CRL units: beside OUT, never in it; they reload through the pid file too.
    let units = work.join("broker-bench");
    assert!(!work.join("broker/provisioner-crl.service").exists());
    let service = std::fs::read_to_string(units.join("provisioner-crl.service")).expect("unit");
    assert!(!service.contains("pidof"), "{service}");
    assert!(service.contains("/broker/run/mosquitto.pid"), "{service}");

    // With --prefix: copy first (the printed copy keeps what mosquitto needs), then run there.
    let prefix = work.join("pi1/etc/mosquitto/site");
    let prefix_s = prefix.to_string_lossy().into_owned();
    let out = home.ok(&[
        "emit",
        "broker",
        "--out",
        "./pi1-broker",
        "--prefix",
        &prefix_s,
        "--port",
        &port_s,
        "--bind",
        "127.0.0.1",
    ]);
    assert!(
        !out.lines().any(|l| l.trim_start().starts_with("run:")),
        "{out}"
    );
    let copied = run_printed(hint(&out, "copy:"), &work);
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    assert!(
        !prefix.join("provisioner-crl.service").exists(),
        "CRL units copied to the broker"
    );
    assert_eq!(mode(&prefix), 0o750);
    assert_eq!(mode(&prefix.join("broker.key")), 0o640);
    let run = hint(
        &out,
        &format!("after copying to {prefix_s} on the broker, run there:"),
    );
    let mut broker = Command::new("sh")
        .args(["-c", &format!("exec {run}")])
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(
            std::fs::File::options()
                .append(true)
                .open(&log)
                .expect("log"),
        )
        .spawn()
        .expect("mosquitto");
    wait_log(&log, "running");
    let reload = hint(&out, "reload:");
    let reload = reload.split("   (").next().expect("command");
    let done = run_printed(reload, &work);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    wait_log(&log, "Reloading config");
    let _ = broker.kill();
    let _ = broker.wait();
}

//! Topology with the provisioner's own files: a site with two gateways and one receiver,
//! `emit receiver` gives the receiver one key per gateway; a third gateway added to the site
//! later (`emit gateway`) rewrites the registered receiver directory without touching the
//! others' keys; `link rotate` and `link retire` rewrite both ends; `deploy receiver` installs
//! into a root. The frames are sealed by [`LinkSender`]s built from the emitted gateway
//! manifests (what `gateway` runs; its MQTT half is covered by tests/link.rs) and carried by an
//! emulated air hub to the real `lora-link rx`, which republishes to a real mosquitto where a
//! certified subscriber counts what arrives per topic.

mod common;
#[path = "../../lora-link/tests/common/sender.rs"]
mod sender;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::link::{monitor_sub, monitor_subscribed};
use common::*;
use lora_link::air::{AirHub, HubConfig, HubHandle};
use lora_link::link::LinkSender;
use sender::AirSender;

/// A gateway's sending half from its emitted `link.toml`: its clock moves a minute per frame,
/// so the manifest's duty cycle never holds a frame back.
fn gw_from_dir(dir: &Path, hub: &HubHandle) -> AirSender {
    let l = manifests::link::LinkManifest::load(&dir.join("link.toml")).expect("link.toml");
    let tx = LinkSender::from_manifest(&l).expect("sender");
    AirSender::new(
        tx,
        hub,
        Duration::from_secs(3600),
        Some(Duration::from_secs(60)),
    )
}

/// `lora-link rx` and its stderr JSON lines.
struct Rx {
    child: Child,
    err: Receiver<String>,
    log: Vec<serde_json::Value>,
}

impl Rx {
    fn start(manifest: &Path) -> Rx {
        let mut child = Command::new(workspace_bin("lora-link"))
            .args(["rx", "--metrics", "127.0.0.1:0", "--manifest"])
            .arg(manifest)
            .env_remove("LORA_LINK_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rx");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, err) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let first = err
            .recv_timeout(Duration::from_secs(20))
            .expect("rx starts");
        assert!(first.contains("counters on"), "{first}");
        Rx {
            child,
            err,
            log: Vec::new(),
        }
    }
    fn wait(&mut self, what: &str, mut f: impl FnMut(&[serde_json::Value]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            while let Ok(l) = self.err.try_recv() {
                if let Ok(v) = serde_json::from_str(&l) {
                    self.log.push(v);
                }
            }
            if f(&self.log) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {:#?}", self.log);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    fn hup(&mut self) {
        let n = |log: &[serde_json::Value]| log.iter().filter(|v| v["reloaded"] == true).count();
        let before = n(&self.log);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("hup");
        self.wait("reload", |l| n(l) > before);
    }
    fn stop(mut self) -> serde_json::Value {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("term");
        assert!(self.child.wait().expect("wait").success());
        self.wait("final counters", |l| {
            l.iter().any(|v| v.get("accepted").is_some())
        });
        self.log
            .iter()
            .rev()
            .find(|v| v.get("accepted").is_some())
            .cloned()
            .expect("counters")
    }
}

fn add_gateway(home: &Home, name: &str) {
    let site = home.path().join("site.toml");
    let mut text = std::fs::read_to_string(&site).expect("site");
    text.push_str(&format!(
        "\n[gateways.{name}]\nsubscribe = [\"maison/#\"]\nreceiver = \"recepteur\"\n"
    ));
    std::fs::write(&site, text).expect("site");
}

fn peers(rx_dir: &Path) -> BTreeMap<String, Vec<(u32, Option<u64>)>> {
    let l = manifests::link::LinkManifest::load(&rx_dir.join("receiver.toml")).expect("receiver");
    assert!(l.manifest.key.is_empty(), "no shared key: one per gateway");
    l.manifest
        .peers
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                p.keys.iter().map(|k| (k.id, k.retire_at)).collect(),
            )
        })
        .collect()
}

#[test]
fn gateways_join_one_receiver_and_rotate_their_keys_without_losing_a_reading() {
    let home = Home::with_broker();
    let w = home.work();
    add_gateway(&home, "grenier");
    let monitor = home.client("moniteur", &["--subscribe", "maison/#"]);
    let hub = AirHub::bind("127.0.0.1:0".parse().expect("a"), HubConfig::default())
        .expect("bind")
        .spawn()
        .expect("spawn");
    let air = hub.addr.to_string();
    let far_port = free_port();
    let emit_gw = |name: &str| {
        let out = w.join(name);
        let v = home.json(&[
            "emit",
            "gateway",
            name,
            "--out",
            &out.to_string_lossy(),
            "--air",
            &air,
        ]);
        (out, v)
    };
    let (gw1_dir, _) = emit_gw("passerelle");
    let (gw2_dir, first) = emit_gw("grenier");
    // No receiver registered yet: the tool says what to run.
    assert!(
        first["receivers"].as_array().is_some_and(|a| a.is_empty()),
        "{first}"
    );
    let rx_dir = w.join("recepteur");
    home.json(&[
        "emit",
        "receiver",
        "recepteur",
        "--out",
        &rx_dir.to_string_lossy(),
        "--air",
        &air,
        "--broker-host",
        "127.0.0.1",
        "--broker-port",
        &far_port.to_string(),
    ]);
    assert_eq!(
        peers(&rx_dir),
        BTreeMap::from([
            ("grenier".to_string(), vec![(1, None)]),
            ("passerelle".to_string(), vec![(1, None)]),
        ])
    );
    let far_dir = w.join("broker-far");
    home.emit_broker(&far_dir, Some(far_port), &[]);
    let far = Mosquitto::start(
        &far_dir.join("mosquitto.conf"),
        far_port,
        &w.join("far.log"),
    );

    // Expected: 2 + 2 (two gateways), 1 + 1 (third joins), 2 + 3 + 1 (rotation).
    const TOTAL: usize = 12;
    let sub = subscribe_all(&far, far_port, &far_dir.join("ca.crt"), &monitor, TOTAL);
    let mut rx = Rx::start(&rx_dir.join("receiver.toml"));
    let mut gw1 = gw_from_dir(&gw1_dir, &hub);
    let mut gw2 = gw_from_dir(&gw2_dir, &hub);
    for i in 0..2 {
        gw1.send("maison/salon/temperature", &format!("p{i}"));
        gw2.send("maison/grenier/temperature", &format!("g{i}"));
    }

    // A third gateway, added later: its emit rewrites the receiver's registered directory.
    add_gateway(&home, "cave");
    let before = std::fs::read(rx_dir.join("link-passerelle-1.key")).expect("key");
    let (gw3_dir, third) = emit_gw("cave");
    let refreshed = &third["receivers"][0];
    assert_eq!(
        refreshed["dir"],
        rx_dir.to_string_lossy().as_ref(),
        "{third}"
    );
    assert!(
        refreshed["run"].to_string().contains("SIGHUP"),
        "says how to reload: {third}"
    );
    assert_eq!(peers(&rx_dir).len(), 3);
    assert_eq!(
        std::fs::read(rx_dir.join("link-passerelle-1.key")).expect("key"),
        before,
        "the other gateways' keys are untouched"
    );
    rx.hup();
    let mut gw3 = gw_from_dir(&gw3_dir, &hub);
    gw3.send("maison/cave/temperature", "c0");
    gw1.send("maison/salon/temperature", "p2");

    // Rotation of passerelle's key under traffic.
    let rot = home.json(&[
        "link",
        "rotate",
        "--gateway",
        "passerelle",
        "--window",
        "4s",
    ]);
    assert_eq!(
        (rot["key_id"].clone(), rot["previous_key_id"].clone()),
        (2.into(), 1.into())
    );
    let retire_at = rot["retire_at"].as_u64().expect("retire_at");
    assert_eq!(
        peers(&rx_dir)["passerelle"],
        vec![(2, None), (1, Some(retire_at))]
    );
    gw1.send("maison/salon/temperature", "p3"); // key 1, receiver not reloaded yet
    rx.hup();
    gw1.send("maison/salon/temperature", "p4"); // key 1, both accepted
    let mut gw1_new = gw_from_dir(&gw1_dir, &hub); // the gateway restarted: key 2
    assert_eq!(gw1_new.tx.key_id(), 2);
    for i in 5..8 {
        gw1_new.send("maison/salon/temperature", &format!("p{i}"));
    }
    gw2.send("maison/grenier/temperature", "g2");
    // After the window, key 1 is refused: frames still sealed under it are not delivered.
    while lora_link::air::now_us() < retire_at * 1_000_000 {
        std::thread::sleep(Duration::from_millis(100));
    }
    const LATE: usize = 3;
    for i in 0..LATE {
        gw1.send("maison/salon/temperature", &format!("late{i}"));
    }
    rx.wait("late frames", |l| {
        l.iter().filter(|v| v["rejected"] == "retired_key").count() == LATE
    });
    let got = sub.wait_with_output().expect("mosquitto_sub");
    let text = String::from_utf8_lossy(&got.stdout).into_owned();
    let mut by_topic: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for l in text.lines() {
        let (t, p) = l.split_once(' ').expect("topic payload");
        by_topic.entry(t).or_default().push(p);
    }
    assert_eq!(
        by_topic,
        BTreeMap::from([
            ("maison/cave/temperature", vec!["c0"]),
            ("maison/grenier/temperature", vec!["g0", "g1", "g2"]),
            (
                "maison/salon/temperature",
                vec!["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"]
            ),
        ]),
        "every reading once, under its topic, none under the retired key: {text}"
    );
    home.ok(&["link", "retire", "--gateway", "passerelle"]);
    assert_eq!(peers(&rx_dir)["passerelle"], vec![(2, None)]);
    rx.hup();

    // A site change alters the topic table; the gateway runs the new one before the receiver
    // has reloaded (the receiver's directory is already rewritten by `emit gateway`).
    let site = home.path().join("site.toml");
    let text = std::fs::read_to_string(&site).expect("site");
    assert!(text.contains("rooms = ["), "{text}");
    std::fs::write(
        &site,
        text.replacen("rooms = [", "rooms = [\"atelier\", ", 1),
    )
    .expect("site");
    emit_gw("passerelle");
    let sub = subscribe_all(&far, far_port, &far_dir.join("ca.crt"), &monitor, 1);
    let mut gw1_site2 = gw_from_dir(&gw1_dir, &hub);
    const MISMATCHED: usize = 2;
    for i in 0..MISMATCHED {
        gw1_site2.send("maison/salon/temperature", &format!("wrong-table{i}"));
    }
    rx.wait("mismatches", |l| {
        l.iter()
            .filter(|v| {
                v["rejected"] == "topic_table_mismatch" && v["from"] == gw1_site2_addr(&gw1_dir)
            })
            .count()
            == MISMATCHED
    });
    rx.hup();
    gw1_site2.send("maison/salon/temperature", "same-table");
    let got = sub.wait_with_output().expect("mosquitto_sub");
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "maison/salon/temperature same-table\n",
        "nothing republished before both tables agreed"
    );
    let last = rx.stop();
    assert_eq!(last["accepted"], TOTAL + 1, "{last}");
    assert_eq!(last["rejected"]["retired_key"], LATE, "{last}");
    assert_eq!(
        last["rejected"]["topic_table_mismatch"], MISMATCHED,
        "{last}"
    );
}

/// The gateway's LoRa address, from its emitted link manifest.
fn gw1_site2_addr(dir: &Path) -> u64 {
    let l = manifests::link::LinkManifest::load(&dir.join("link.toml")).expect("link.toml");
    u64::from(l.manifest.node.address)
}

/// The far-side monitor's subscription printing `topic payload` for `count` messages,
/// returned once it is on `broker`.
fn subscribe_all(broker: &Mosquitto, port: u16, cafile: &Path, c: &Client, count: usize) -> Child {
    monitor_subscribed(broker, || {
        monitor_sub(port, cafile, c, "maison/#", count, 60, &["-v"])
    })
}

#[test]
fn deploy_receiver_installs_every_gateways_key_and_a_reloadable_unit() {
    let home = Home::with_broker();
    add_gateway(&home, "grenier");
    let root = home.work().join("pi2");
    std::fs::create_dir_all(&root).expect("root");
    let v = home.json(&[
        "deploy",
        "receiver",
        "recepteur",
        "--root",
        &root.to_string_lossy(),
    ]);
    assert_eq!(v["etc"], "/etc/lora-link", "{v}");
    let etc = root.join("etc/lora-link");
    let m = std::fs::read_to_string(etc.join("receiver.toml")).expect("manifest");
    assert!(m.contains("/etc/lora-link/link-passerelle-1.key"), "{m}");
    assert!(m.contains("/etc/lora-link/link-grenier-1.key"), "{m}");
    assert!(m.contains("state_dir = \"/var/lib/lora-link\""), "{m}");
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/lora-link-rx.service"))
        .expect("unit");
    assert!(
        unit.contains(
            "ExecStart=/usr/local/bin/lora-link rx --manifest /etc/lora-link/receiver.toml"
        ) && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "{unit}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&etc), 0o700);
    assert_eq!(mode(&etc.join("link-grenier-1.key")), 0o600);
    assert_eq!(mode(&root.join("var/lib/lora-link")), 0o700);
    // A rotation installs it again: both keys, the old one with its retirement time.
    let rot = home.json(&["link", "rotate", "--gateway", "grenier", "--window", "1h"]);
    assert_eq!(
        rot["receivers"][0]["dir"],
        root.canonicalize().expect("c").to_string_lossy().as_ref(),
        "{rot}"
    );
    let m = std::fs::read_to_string(etc.join("receiver.toml")).expect("manifest");
    assert!(
        m.contains("link-grenier-2.key") && m.contains("retire_at"),
        "{m}"
    );
    // A copy of the home never writes into the directories the original registered.
    let copy = home.work().join("home-copy");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(home.path())
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(cp.success());
    let out = home
        .cmd(&["link", "retire", "--gateway", "grenier"])
        .env("PROVISIONER_HOME", &copy)
        .output()
        .expect("retire in the copy");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("NOT written"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read_to_string(etc.join("receiver.toml")).expect("manifest"),
        m,
        "the original's receiver is untouched"
    );
    // A second rotation inside the window is refused, nothing changed.
    let out = home.run(&["link", "rotate", "--gateway", "grenier"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("link retire"),
        "{out:?}"
    );
    // A link planted in the root that leaves it is refused before anything is written.
    let root2 = home.work().join("pi2b");
    let outside = home.work().join("outside");
    std::fs::create_dir_all(&root2).expect("root2");
    std::fs::create_dir_all(&outside).expect("outside");
    std::os::unix::fs::symlink("../outside", root2.join("etc")).expect("plant");
    let out = home.run(&[
        "deploy",
        "receiver",
        "recepteur",
        "--root",
        &root2.to_string_lossy(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(
        std::fs::read_dir(&outside).expect("outside").count(),
        0,
        "nothing written through the link"
    );
}

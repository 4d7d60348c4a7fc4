//! A broker on another machine stays in step with the bench: `deploy broker --root` installs
//! a broker directory and its agent (`gateway broker-agent`) into "Pi #1" (a root filesystem
//! in a temporary directory, see [`common::PiRoot`], with a real mosquitto started here from
//! the deployed configuration on an ephemeral port). Every ledger change publishes a signed
//! update through that broker; the agent installs it and reloads its own mosquitto. A forged
//! update and a replayed older one are refused and logged; with the clock moved, the bench's
//! CRL renewal reaches the Pi before the Pi's CRL expires.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

const DAY: i64 = 86_400;
const TOPIC: &str = "provisioner/updates/broker/pi1";

/// `gateway broker-agent` on the Pi; killed on drop.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(pi: &PiRoot, log: &Path) -> Agent {
        let child = Command::new(workspace_bin("gateway"))
            .arg("broker-agent")
            .arg("--root")
            .arg(&pi.root)
            .env("GATEWAY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("agent log"))
            .spawn()
            .expect("gateway broker-agent");
        Agent {
            child,
            log: log.to_path_buf(),
        }
    }
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Waits (at most 20 s) until the log has `needle`.
    fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "the agent never logged {needle:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn real_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// The sequence in the agent's state file on the Pi.
fn installed_sequence(pi: &PiRoot) -> u64 {
    let text = std::fs::read_to_string(pi.path("/var/lib/iot-broker-agent/state.toml"))
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("sequence = "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The bench's client certificate (it may write the update topics).
fn bench_client(home: &Home) -> Client {
    Client {
        key: home.path().join("keys/provisioner-bench.key"),
        csr: PathBuf::new(),
        crt: home.path().join("keys/provisioner-bench.crt"),
    }
}

/// Publishes `file` retained on the update topic with `c`'s certificate.
fn publish_retained(port: u16, cafile: &Path, c: &Client, file: &Path) {
    let out = publish_with(
        port,
        cafile,
        c,
        &["-r", "-t", TOPIC, "-f", &file.to_string_lossy()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A forged update: well formed, for this broker, a high sequence and an ACL opening every
/// topic, but signed with a key that is not the site CA's.
fn forged_update() -> String {
    use p256::ecdsa::signature::Signer;
    let body = manifests::update::UpdateBody::new(
        "pi1",
        999,
        real_now(),
        "user attacker\ntopic readwrite #\n",
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .to_toml()
    .expect("body");
    let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).expect("key");
    let sig: p256::ecdsa::Signature = key.sign(&manifests::update::signed_message(&body));
    manifests::update::Envelope {
        signature: sig.to_der().as_bytes().to_vec(),
        body,
    }
    .encode()
}

/// Whether `c` can still connect (a QoS 1 publish acknowledged).
fn accepted(port: u16, cafile: &Path, c: &Client) -> bool {
    publish(port, cafile, c, "maison/salon/probe", "1")
        .status
        .success()
}

fn next_update_unix(crl: &Path) -> i64 {
    let text = openssl_ok(&[
        "crl",
        "-in",
        &crl.to_string_lossy(),
        "-noout",
        "-nextupdate",
    ]);
    let date = text.trim().trim_start_matches("nextUpdate=");
    let out = Command::new("date")
        .args(["-u", "-d", date, "+%s"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("nextUpdate {date:?}"))
}

#[test]
fn bench_changes_reach_the_agent_on_pi1_signed_and_in_order_and_its_crl_never_expires() {
    require("mosquitto_sub");
    let port = free_port();
    let home = home_with_site(port);
    let pi = PiRoot::new(&home.work(), "pi1");
    let probe = home.client("probe-1", &[]);
    let out = home.work().join("pi1-broker");
    home.emit_broker(
        &out,
        Some(port),
        &["--prefix", &pi.prefix.to_string_lossy()],
    );
    let deployed = home.json(&[
        "deploy",
        "broker",
        "--root",
        &pi.root.to_string_lossy(),
        "--from",
        &out.to_string_lossy(),
        "--name",
        "pi1",
    ]);
    assert_eq!(deployed["topic"], TOPIC, "{deployed}");
    // Update 1 (the deployed files) is signed at deploy; the broker does not run yet: the
    // Pi starts at that sequence and the update waits in the ledger.
    assert_eq!(deployed["sequence"], 1, "{deployed}");
    assert_eq!(deployed["updates"][0]["published"], false, "{deployed}");
    for (pi_path, mode) in [
        ("/etc/iot-broker-agent", 0o700),
        ("/etc/iot-broker-agent/agent.key", 0o600),
        ("/etc/iot-broker-agent/agent.toml", 0o600),
        ("/var/lib/iot-broker-agent", 0o700),
        ("/etc/systemd/system/iot-broker-agent.service", 0o644),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(pi.path(pi_path)).expect(pi_path);
        assert_eq!(m.permissions().mode() & 0o777, mode, "{pi_path}");
    }
    let unit = std::fs::read_to_string(pi.path("/etc/systemd/system/iot-broker-agent.service"))
        .expect("unit");
    assert!(
        unit.contains("broker-agent --config /etc/iot-broker-agent/agent.toml"),
        "{unit}"
    );
    let cafile = pi.prefix.join("ca.crt");
    // The bench's CRL timer publishes to the agent, which reloads: no copy, no reload line.
    let crl_unit =
        std::fs::read_to_string(home.work().join("pi1-broker-bench/provisioner-crl.service"))
            .expect("crl unit");
    assert!(
        crl_unit.contains(" crl\n") && !crl_unit.contains("kill -HUP"),
        "{crl_unit}"
    );
    let agent_check = Command::new(workspace_bin("gateway"))
        .args(["broker-agent", "--check", "--root"])
        .arg(&pi.root)
        .output()
        .expect("agent --check");
    assert!(
        agent_check.status.success(),
        "{}",
        String::from_utf8_lossy(&agent_check.stderr)
    );

    let broker = Mosquitto::start(
        &pi.prefix.join("mosquitto.conf"),
        port,
        &home.work().join("mosquitto.log"),
    );
    assert!(accepted(port, &cafile, &probe), "{}", broker.log_text());
    // The update signed at deploy waited in the ledger; `crl` (nothing due: the CRL timer's
    // daily run) publishes it once the broker answers.
    let crl_run = home.ok(&["crl"]);
    assert!(
        crl_run.contains("is up to date") && crl_run.contains("broker `pi1`: update 1 published"),
        "{crl_run}"
    );

    // Update 2 (a new client certified), captured live (-R: not the retained update 1) with
    // the agent's identity while the agent is not running yet: the replay used further down.
    let capture = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-C", "1", "-R", "-N", "-W", "20", "-t", TOPIC, "--cafile"])
        .arg(&cafile)
        .arg("--cert")
        .arg(pi.path("/etc/iot-broker-agent/agent.crt"))
        .arg("--key")
        .arg(pi.path("/etc/iot-broker-agent/agent.key"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    std::thread::sleep(Duration::from_millis(500));
    let signed = home.ok(&[
        "cert",
        "sign",
        "--csr",
        &openssl_client(&home.work(), "probe-2")
            .csr
            .to_string_lossy(),
        "--profile",
        "client",
        "--out",
        &home.work().join("probe-2.crt").to_string_lossy(),
    ]);
    assert!(
        signed.contains("broker `pi1`: update 2 published"),
        "{signed}"
    );
    let captured = capture.wait_with_output().expect("capture");
    assert!(
        captured.status.success(),
        "{}",
        String::from_utf8_lossy(&captured.stderr)
    );
    let update_2 = home.work().join("update-2.msg");
    std::fs::write(&update_2, &captured.stdout).expect("update 2");

    let agent = Agent::start(&pi, &home.work().join("agent.log"));
    agent.wait_for("installed update 2");
    assert!(
        agent
            .log_text()
            .contains("reloaded mosquitto (SIGHUP to pid"),
        "{}",
        agent.log_text()
    );
    let acl = std::fs::read_to_string(pi.prefix.join("acl")).expect("acl");
    assert!(acl.contains("user probe-2"), "{acl}");

    // Bench revoke -> the agent installs the new CRL and ACL, the revoked client is refused.
    let t0 = Instant::now();
    let revoked = home.ok(&["device", "revoke", "probe-1"]);
    assert!(
        revoked.contains("broker `pi1`: update 3 published"),
        "{revoked}"
    );
    let deadline = t0 + Duration::from_secs(20);
    while accepted(port, &cafile, &probe) {
        assert!(
            Instant::now() < deadline,
            "probe-1 still accepted:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = t0.elapsed();
    println!(
        "revoke on the bench -> revoked client refused by Pi #1's mosquitto: {} ms",
        elapsed.as_millis()
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(installed_sequence(&pi), 3);
    let acl = std::fs::read_to_string(pi.prefix.join("acl")).expect("acl");
    assert!(!acl.contains("user probe-1"), "{acl}");
    assert_eq!(
        std::fs::read(pi.prefix.join("crl.pem")).expect("pi crl"),
        std::fs::read(out.join("crl.pem")).expect("bench crl"),
    );

    // A forged update, sent with the bench's MQTT credentials (stolen, say): refused, logged.
    let forged = home.work().join("forged.msg");
    std::fs::write(&forged, forged_update()).expect("forged");
    publish_retained(port, &cafile, &bench_client(&home), &forged);
    agent.wait_for("REFUSED update: bad signature");
    // A replayed older update, genuinely signed: refused, logged.
    publish_retained(port, &cafile, &bench_client(&home), &update_2);
    agent.wait_for("REFUSED update: replayed: sequence 2 is older than the installed 3");
    assert_eq!(installed_sequence(&pi), 3);
    let acl = std::fs::read_to_string(pi.prefix.join("acl")).expect("acl");
    assert!(
        !acl.contains("attacker") && acl.contains("user probe-2"),
        "{acl}"
    );
    assert!(!accepted(port, &cafile, &probe));

    // Twenty-one days later (past two thirds of the CRL's 30 days) the CRL timer's `crl`
    // renews it on the bench and the update reaches the Pi before the old CRL expires.
    let pi_crl = pi.prefix.join("crl.pem");
    let old_next = next_update_unix(&pi_crl);
    let later = real_now() + 21 * DAY;
    assert!(later < old_next);
    let crl = home
        .cmd(&["crl"])
        .env("PROVISIONER_FAKE_NOW", later.to_string())
        .output()
        .expect("crl");
    let text = String::from_utf8_lossy(&crl.stdout);
    assert!(crl.status.success() && text.contains("renewed"), "{text}");
    assert!(text.contains("broker `pi1`: update 4 published"), "{text}");
    agent.wait_for("installed update 4");
    let new_next = next_update_unix(&pi_crl);
    assert!(
        new_next >= later + 29 * DAY && new_next > old_next,
        "the Pi's CRL: nextUpdate {old_next} -> {new_next}"
    );
    let mosquitto_log = broker.log_text();
    assert!(
        mosquitto_log.contains("Reloading config"),
        "{mosquitto_log}"
    );
}

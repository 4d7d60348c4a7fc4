//! Renewal in the field with the real parts: mosquitto running the emitted configuration,
//! simulated boards (`sensor-sim`: the firmware core, an emulated ATECC508A, rumqttc over
//! rustls) provisioned over pseudo-terminals, and `provisioner renewal-service run`.
//!
//! The site is set up 25 days in the past (`PROVISIONER_FAKE_NOW`) with 30-day device
//! certificates, so every board is past its renewal point (two thirds) and not expired at the
//! real time the boards, the broker and the service run at: no clock is faked while they run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const DAY: i64 = 86_400;
const RENEWED: &str = "renewal: the broker accepted the new certificate (serial ";

fn real_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A site set up in the past, its broker running now, and its boards.
struct Field {
    home: Home,
    broker: Mosquitto,
    monitor: Child,
    monitor_out: PathBuf,
    service: Option<Child>,
    boards: Vec<(String, String, SimBoard)>,
    /// The certificate each board was provisioned with.
    first: Vec<String>,
}

impl Field {
    /// Boards `(name, id)`, provisioned 25 days ago with 30-day certificates.
    fn new(ids: &[&str]) -> Field {
        let port = free_port();
        let home = Home::new();
        let site = site_text(port).replace(
            "description = \"temperature only\"",
            "description = \"temperature only\"\ncert_days = 30",
        );
        let f = home.work().join("site.toml");
        std::fs::write(&f, site).expect("site");
        let t = (real_now() - 25 * DAY).to_string();
        let past = |args: &[&str]| {
            let o = home
                .cmd(args)
                .env("PROVISIONER_FAKE_NOW", &t)
                .output()
                .expect("provisioner");
            assert!(
                o.status.success(),
                "{args:?}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        past(&["init", "--site", &f.to_string_lossy(), "--issuing-ca"]);
        past(&["server", "issue"]);
        let m = openssl_client(&home.work(), "monitor");
        past(&[
            "cert",
            "sign",
            "--csr",
            &m.csr.to_string_lossy(),
            "--profile",
            "client",
            "--subscribe",
            "maison/#",
            "--out",
            &m.crt.to_string_lossy(),
        ]);
        let mut first = Vec::new();
        let mut boards = Vec::new();
        for (n, id) in ids.iter().enumerate() {
            let name = format!("b{n}");
            let board = SimBoard::start(&home.work(), &name, 0, false);
            let v: serde_json::Value = serde_json::from_str(&past(&[
                "--json",
                "device",
                "provision",
                "--port",
                &board.port(),
                "--id",
                id,
                "--profile",
                "thermometre",
                "--lock",
            ]))
            .expect("json");
            let serial = v["boards"][0]["result"]["certificate"]
                .as_str()
                .unwrap_or_else(|| panic!("{v}"))
                .to_string();
            first.push(serial);
            boards.push((name, id.to_string(), board));
        }
        past(&[
            "renewal-service",
            "setup",
            "--credential",
            "/etc/provisioner/renewal.passphrase",
        ]);
        let out = home.work().join("broker");
        let out_s = out.to_string_lossy().into_owned();
        let port_s = port.to_string();
        past(&[
            "emit",
            "broker",
            "--out",
            &out_s,
            "--port",
            &port_s,
            "--bind",
            "127.0.0.1",
            "--run-as",
            "root",
        ]);
        let broker = Mosquitto::start(
            &out.join("mosquitto.conf"),
            port,
            &home.work().join("mosquitto.log"),
        );
        let monitor_out = home.work().join("readings.txt");
        require("mosquitto_sub");
        let monitor = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port_s, "-v", "-t", "maison/#"])
            .arg("--cafile")
            .arg(out.join("ca.crt"))
            .arg("--cert")
            .arg(&m.crt)
            .arg("--key")
            .arg(&m.key)
            .stdout(std::fs::File::create(&monitor_out).expect("out"))
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub");
        Field {
            home,
            broker,
            monitor,
            monitor_out,
            service: None,
            boards,
            first,
        }
    }

    /// Restarts board `i` (same chip and store) with test hooks; its back-off starts afresh.
    fn restart(&mut self, i: usize, env: &[(&str, &str)]) {
        let (name, _, b) = &mut self.boards[i];
        let _ = b.child.kill();
        let _ = b.child.wait();
        let mut all = vec![("SENSOR_SIM_RENEW_RETRY_MS", "2000")];
        all.extend_from_slice(env);
        *b = SimBoard::start_env(&self.home.work(), name, 0, false, &[], &all);
    }

    fn log(&self, i: usize) -> String {
        self.boards[i].2.log_text()
    }

    fn service_log_path(&self) -> PathBuf {
        self.home.work().join("service.log")
    }

    fn service_log(&self) -> String {
        std::fs::read_to_string(self.service_log_path()).unwrap_or_default()
    }

    fn start_service(&mut self, env: &[(&str, &str)]) {
        self.stop_service();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.service_log_path())
            .expect("log");
        let child = self
            .home
            .cmd(&["renewal-service", "run"])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("service");
        self.service = Some(child);
    }

    fn stop_service(&mut self) {
        if let Some(mut c) = self.service.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn ledger(&self) -> ca::ledger::Ledger {
        ca::ledger::Ledger::open(&self.home.path().join("ledger.sqlite")).expect("ledger")
    }

    /// Certificates of `id` neither revoked nor superseded.
    fn active(&self, id: &str) -> Vec<String> {
        let l = self.ledger();
        l.certificates_of(id)
            .expect("certs")
            .into_iter()
            .filter(|c| c.revoked_at.is_none())
            .filter(|c| l.supersession(&c.serial).expect("query").is_none())
            .map(|c| c.serial)
            .collect()
    }

    fn certificates(&self) -> usize {
        self.ledger().certificates().expect("certs").len()
    }

    /// Readings of `id` the monitor received.
    fn readings(&self, id: &str) -> usize {
        let needle = format!("\"device\":\"{id}\"");
        std::fs::read_to_string(&self.monitor_out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    fn context(&self) -> String {
        let mut s = format!(
            "service:\n{}\nbroker:\n{}",
            self.service_log(),
            self.broker.log_text()
        );
        for i in 0..self.boards.len() {
            s.push_str(&format!("\nboard {i}:\n{}", self.log(i)));
        }
        s
    }

    fn wait(&self, what: &str, secs: u64, done: impl FnMut() -> bool) {
        wait_for(what, secs, done, || self.context());
    }

    /// Waits until the board has renewed to the device's active certificate and returns it.
    fn wait_renewed(&self, i: usize) -> String {
        let id = self.boards[i].1.clone();
        let first = self.first[i].clone();
        let mut serial = String::new();
        self.wait(&format!("{id} to renew"), 90, || {
            let a = self.active(&id);
            if a.len() == 1 && a[0] != first && self.log(i).contains(&format!("{RENEWED}{})", a[0]))
            {
                serial = a[0].clone();
                return true;
            }
            false
        });
        serial
    }

    /// The ledger is consistent for board `i` after one renewal: two certificates, the old
    /// one superseded by the new one, which is the only active one and certifies the chip key.
    fn assert_one_renewal(&self, i: usize, new: &str) {
        let id = &self.boards[i].1;
        let l = self.ledger();
        assert_eq!(
            l.certificates_of(id).expect("certs").len(),
            2,
            "{id}: one renewal"
        );
        assert_eq!(self.active(id), vec![new.to_string()], "{id}: one active");
        let s = l
            .supersession(&self.first[i])
            .expect("q")
            .expect("superseded");
        assert_eq!(s.by_serial, new);
        assert_eq!(s.why, "renewed", "{id}: the chip's own key certified again");
        assert_key_is_the_chips(&l, id, new);
    }
}

impl Drop for Field {
    fn drop(&mut self) {
        self.stop_service();
        let _ = self.monitor.kill();
        let _ = self.monitor.wait();
    }
}

/// The certificate's public key is the chip key the ledger recorded at the bench.
fn assert_key_is_the_chips(l: &ca::ledger::Ledger, id: &str, serial: &str) {
    use x509_parser::prelude::FromDer;
    let chip = l.identity(id).expect("q").expect("identity").attrs["public_key"]
        .as_str()
        .expect("chip key")
        .to_string();
    let c = l.by_serial(serial).expect("q").expect("cert");
    let (_, x) = x509_parser::certificate::X509Certificate::from_der(&c.der).expect("x509");
    let point = x.public_key().subject_public_key.data.as_ref();
    assert_eq!(hex::encode(&point[1..]), chip, "{serial}: the chip's key");
    assert_eq!(
        x.subject()
            .iter_common_name()
            .next()
            .and_then(|n| n.as_str().ok()),
        Some(id)
    );
}

fn openssl_in(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_board_past_its_renewal_point_renews_through_the_service_and_keeps_publishing() {
    let mut f = Field::new(&["salon-1"]);
    f.restart(0, &[]);
    // Readings flow with the old certificate; the board asks, nobody answers yet.
    f.wait("readings with the first certificate", 30, || {
        f.readings("salon-1") >= 3
    });
    f.wait("a renewal request", 30, || {
        f.log(0).contains("CSR signed by the chip sent")
    });
    f.start_service(&[]);
    let new = f.wait_renewed(0);
    f.assert_one_renewal(0, &new);
    assert!(
        f.service_log()
            .contains("renewed on maison_pki/renew/salon-1: certificate"),
        "{}",
        f.service_log()
    );
    // Readings continue with the new certificate, and the board asks no more.
    let at_renewal = f.readings("salon-1");
    f.wait("readings with the new certificate", 30, || {
        f.readings("salon-1") >= at_renewal + 3
    });
    assert_eq!(f.ledger().certificates_of("salon-1").expect("c").len(), 2);
    // The new certificate chains to the root for openssl too.
    let pem = ca::authority::cert_pem(&f.ledger().by_serial(&new).expect("q").expect("c").der);
    let leaf = f.home.work().join("new.pem");
    std::fs::write(&leaf, pem).expect("write");
    let ca_dir = f.home.path().join("ca");
    openssl_ok(&[
        "verify",
        "-x509_strict",
        "-purpose",
        "sslclient",
        "-CAfile",
        &ca_dir.join("root.crt").to_string_lossy(),
        "-untrusted",
        &ca_dir.join("issuing.crt").to_string_lossy(),
        &leaf.to_string_lossy(),
    ]);
}

#[test]
fn a_certificate_the_broker_refuses_is_rolled_back_and_the_failure_reported() {
    let mut f = Field::new(&["salon-1"]);
    // A CA the broker does not know; the board is told to accept it, the service signs with it.
    let wrong = f.home.work().join("wrong");
    std::fs::create_dir(&wrong).expect("dir");
    openssl_in(
        &wrong,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=Wrong CA",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    let anchor = wrong.join("ca.crt").to_string_lossy().into_owned();
    let wrong_s = wrong.to_string_lossy().into_owned();
    // The service subscribes first: the board asks only once (a long retry period).
    f.start_service(&[("PROVISIONER_RENEWAL_TEST_ISSUER", &wrong_s)]);
    f.wait("the service", 30, || {
        f.service_log().contains("connected to the broker")
    });
    f.restart(
        0,
        &[
            ("SENSOR_SIM_RENEW_EXTRA_ANCHOR", &anchor),
            ("SENSOR_SIM_RENEW_RETRY_MS", "600000"),
        ],
    );
    f.wait("the rollback", 60, || {
        f.log(0)
            .contains("renewal FAILED: the broker refused the new certificate")
    });
    let log = f.log(0);
    let failed = log.find("renewal FAILED").expect("failure");
    f.wait("a reconnection with the old certificate", 30, || {
        f.log(0)[failed..].contains("connected to the broker")
    });
    let after = f.readings("salon-1");
    f.wait("readings after the rollback", 30, || {
        f.readings("salon-1") >= after + 3
    });
    assert!(
        f.service_log().contains("by the test issuer"),
        "{}",
        f.service_log()
    );
    // Nothing was recorded: the board's first certificate is still the only one.
    assert_eq!(f.active("salon-1"), vec![f.first[0].clone()]);
    assert_eq!(f.ledger().certificates_of("salon-1").expect("c").len(), 1);
    assert!(!f.log(0).contains(RENEWED), "{}", f.log(0));
}

#[test]
fn requests_for_another_identity_with_another_key_or_from_a_revoked_device_are_refused() {
    let mut f = Field::new(&["salon-1", "salon-2", "salon-3"]);
    // Requests made with openssl, sent by the boards over their own sessions and topics.
    let other_id = openssl_client(&f.home.work(), "salon-2");
    let other_key = f.home.work().join("salon-2-key");
    std::fs::create_dir(&other_key).expect("dir");
    let other_key = openssl_client(&other_key, "salon-2");
    let a = other_id.csr.to_string_lossy().into_owned();
    let b = other_key.csr.to_string_lossy().into_owned();
    f.restart(0, &[("SENSOR_SIM_RENEW_CSR_FILE", &a)]);
    f.restart(1, &[("SENSOR_SIM_RENEW_CSR_FILE", &b)]);
    f.restart(2, &[]);
    f.wait("salon-3 connected", 30, || {
        f.log(2).contains("connected to the broker")
    });
    // Revoked in the ledger; its session is still open (the broker was not reloaded).
    f.home.ok(&["device", "revoke", "salon-3"]);
    let before = f.certificates();
    f.start_service(&[]);
    let expected = [
        (
            "salon-1",
            "the CSR asks for `salon-2` but came on the renewal topic of `salon-1`",
        ),
        (
            "salon-2",
            "the CSR's key is not the chip key recorded in the ledger",
        ),
        ("salon-3", "the device is revoked"),
    ];
    f.wait("three refusals", 60, || {
        let log = f.service_log();
        expected.iter().all(|(id, why)| {
            log.lines().any(|l| {
                l.contains(&format!(
                    "refused the renewal request on maison_pki/renew/{id}: {why}; nothing issued"
                ))
            })
        })
    });
    assert_eq!(f.certificates(), before, "nothing issued");
    for (i, (id, _)) in expected.iter().enumerate() {
        assert_eq!(f.active(id).len(), usize::from(i < 2), "{id}");
        assert!(!f.log(i).contains(RENEWED), "{id}");
    }
    assert!(
        !f.service_log().contains("renewed on"),
        "{}",
        f.service_log()
    );
}

#[test]
fn kills_on_the_boards_and_in_the_service_leave_working_certificates_and_a_consistent_ledger() {
    let mut f = Field::new(&["salon-1", "salon-2", "salon-3"]);
    let points = [
        "renew-after-request",
        "renew-after-stage",
        "renew-after-commit",
    ];
    for (i, p) in points.iter().enumerate() {
        f.restart(i, &[("SENSOR_SIM_CRASH_AT", p)]);
    }
    // The service dies right after its first ledger commit, before it answers.
    f.start_service(&[("PROVISIONER_CRASH_AT", "issue-after-ledger")]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while f
        .service
        .as_mut()
        .is_none_or(|c| c.try_wait().ok().flatten().is_none())
    {
        assert!(
            Instant::now() < deadline,
            "the service did not crash\n{}",
            f.context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        f.service_log()
            .contains("crash injected at `issue-after-ledger`")
    );
    f.start_service(&[]);
    // Each board dies at its point; it is restarted without the hook, as after a power cut.
    let mut crashed = [false; 3];
    let deadline = Instant::now() + Duration::from_secs(90);
    while !crashed.iter().all(|c| *c) {
        assert!(
            Instant::now() < deadline,
            "boards did not crash: {crashed:?}\n{}",
            f.context()
        );
        for i in 0..3 {
            if !crashed[i] && f.boards[i].2.child.try_wait().ok().flatten().is_some() {
                assert!(
                    f.log(i)
                        .contains(&format!("crash injected at `{}`", points[i]))
                );
                crashed[i] = true;
                f.restart(i, &[]);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 0..3 {
        let new = f.wait_renewed(i);
        f.assert_one_renewal(i, &new);
        let id = f.boards[i].1.clone();
        let n = f.readings(&id);
        f.wait("readings after the renewal", 30, || {
            f.readings(&id) >= n + 2
        });
    }
    assert!(
        f.service_log().contains("answered before"),
        "{}",
        f.service_log()
    );
}

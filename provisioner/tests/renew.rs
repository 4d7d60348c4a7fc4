//! `provisioner renew`: the broker, gateway and receiver certificates that are due are renewed
//! in one command, with their keys kept, into every registered place, and a real mosquitto
//! started from the emitted configuration keeps serving and presents the new certificate
//! after the reload. The site is set up 600 days in the past (`PROVISIONER_FAKE_NOW`), so its
//! 825-day certificates are past their renewal point (two thirds) today, and the new ones are
//! valid on the real clock mosquitto and openssl use.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

const DAY: i64 = 86_400;

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A site 600 days old: CA, broker certificate, a registered broker directory on `port`, a
/// registered gateway and receiver directory, and two clients (due as well: `renew` must
/// leave them to `cert sign`). The CRL is signed today, so it is not due.
struct Site {
    home: Home,
    port: u16,
    broker: PathBuf,
    gw: PathBuf,
    rx: PathBuf,
    reader: Client,
    writer: Client,
}

fn old_site() -> Site {
    let port = free_port();
    let home = Home::new();
    let t0 = real_now() - 600 * DAY;
    let site = home.work().join("site.toml");
    std::fs::write(&site, site_text(port)).expect("site");
    home.ok_at(t0, &["init", "--site", &s(&site)]);
    home.ok_at(t0, &["server", "issue"]);
    let (broker, gw, rx) = (
        home.work().join("broker"),
        home.work().join("gw"),
        home.work().join("rx"),
    );
    let p = port.to_string();
    home.ok_at(
        t0,
        &[
            "emit",
            "broker",
            "--out",
            &s(&broker),
            "--port",
            &p,
            "--bind",
            "127.0.0.1",
            "--run-as",
            "root",
        ],
    );
    let air = "127.0.0.1:7700";
    home.ok_at(
        t0,
        &[
            "emit",
            "gateway",
            "passerelle",
            "--out",
            &s(&gw),
            "--broker-port",
            &p,
            "--air",
            air,
        ],
    );
    home.ok_at(
        t0,
        &[
            "emit",
            "receiver",
            "recepteur",
            "--out",
            &s(&rx),
            "--no-mqtt",
            "--air",
            air,
        ],
    );
    let sign = |cn: &str, flag: &str, topic: &str| {
        let c = openssl_client(&home.work(), cn);
        home.ok_at(
            t0,
            &[
                "cert",
                "sign",
                "--csr",
                &s(&c.csr),
                "--profile",
                "client",
                "--out",
                &s(&c.crt),
                flag,
                topic,
            ],
        );
        c
    };
    let reader = sign("reader", "--subscribe", "maison/#");
    let writer = sign("writer", "--publish", "maison/test");
    home.ok(&["crl"]);
    Site {
        home,
        port,
        broker,
        gw,
        rx,
        reader,
        writer,
    }
}

/// audit --json: id -> (serial, state).
fn audit(home: &Home) -> std::collections::BTreeMap<String, (String, String)> {
    let o = home.run(&["--json", "audit"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("audit json");
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            let f = |k: &str| i[k].as_str().unwrap_or_default().to_string();
            (f("id"), (f("serial"), f("state")))
        })
        .collect()
}

/// Every file under `dirs` with its bytes (and mode), for "nothing changed".
fn snapshot(dirs: &[&Path]) -> Vec<(PathBuf, Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).expect("meta");
            if m.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != "mosquitto.pid") {
                let bytes = std::fs::read(&p).expect("read");
                out.push((p, bytes, m.permissions().mode()));
            }
        }
    }
    out.sort();
    out
}

fn renew_json(home: &Home, args: &[&str]) -> (Option<i32>, serde_json::Value, Output) {
    let mut a = vec!["--json", "renew"];
    a.extend_from_slice(args);
    let o = home.run(&a);
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("renew JSON: {e}\n{}", output_text(&o)));
    (o.status.code(), v, o)
}

fn item<'a>(v: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["id"] == id)
        .unwrap_or_else(|| panic!("no `{id}` in {v}"))
}

/// The serial (lower-case hex) of the certificate the broker on `port` presents, and whether
/// it verified against `ca`.
fn presented(port: u16, ca: &Path, c: &Client) -> (String, bool) {
    require("openssl");
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "localhost",
        ])
        .args(["-CAfile", &s(ca), "-cert", &s(&c.crt), "-key", &s(&c.key)])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("s_client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = text.find("-----END CERTIFICATE-----").expect("its end") + 25;
    let pem = std::env::temp_dir().join(format!("presented-{port}.pem"));
    std::fs::write(&pem, &text[begin..end]).expect("pem");
    let serial = openssl_ok(&["x509", "-in", &s(&pem), "-noout", "-serial"]);
    let _ = std::fs::remove_file(&pem);
    (
        serial.trim().trim_start_matches("serial=").to_lowercase(),
        text.contains("Verify return code: 0 (ok)"),
    )
}

fn pubkey(file: &Path) -> String {
    openssl_ok(&["x509", "-in", &s(file), "-noout", "-pubkey"])
}

#[test]
fn renew_renews_exactly_the_due_infrastructure_and_the_running_broker_presents_the_new_certificate()
{
    let site = old_site();
    let home = &site.home;
    let before = audit(home);
    for id in ["broker", "passerelle", "recepteur", "reader", "writer"] {
        assert_eq!(before[id].1, "renew", "{id} is due: {before:?}");
    }
    let mosq = Mosquitto::start(
        &site.broker.join("mosquitto.conf"),
        site.port,
        &home.work().join("mosquitto.log"),
    );
    let ca = site.broker.join("ca.crt");
    assert_eq!(
        presented(site.port, &ca, &site.reader).0,
        before["broker"].0
    );

    // --dry-run lists exactly the three and changes nothing: files, ledger.
    let dirs = [site.broker.as_path(), site.gw.as_path(), site.rx.as_path()];
    let files = snapshot(&dirs);
    let (code, dry, o) = renew_json(home, &["--dry-run"]);
    assert_eq!(code, Some(0), "{}", output_text(&o));
    assert_eq!(dry["due"], 3, "{dry}");
    for id in ["broker", "passerelle", "recepteur"] {
        assert_eq!(item(&dry, id)["status"], "would-renew", "{dry}");
    }
    assert_eq!(snapshot(&dirs), files, "the dry run wrote nothing");
    assert_eq!(audit(home), before, "the dry run issued nothing");

    // A subscriber connected before the renewal stays connected through the reload.
    let sub = subscribe_one(site.port, &ca, &site.reader, "maison/test", 30);
    std::thread::sleep(Duration::from_millis(700));
    let keys = [
        site.broker.join("broker.key"),
        site.gw.join("passerelle.key"),
        site.rx.join("recepteur.key"),
    ];
    let keys_before: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| std::fs::read(k).expect("key"))
        .collect();
    let gw_pub = pubkey(&site.gw.join("passerelle.crt"));

    let (code, v, o) = renew_json(home, &["--reload"]);
    assert_eq!(code, Some(0), "{}", output_text(&o));
    assert_eq!(
        (v["due"].as_u64(), v["incomplete"].as_u64()),
        (Some(3), Some(0)),
        "{v}"
    );
    let after = audit(home);
    for id in ["broker", "passerelle", "recepteur"] {
        let i = item(&v, id);
        assert_eq!(i["status"], "renewed", "{v}");
        assert_eq!(i["serial"], before[id].0.as_str());
        assert_eq!(i["new_serial"], after[id].0.as_str(), "{v}");
        assert_ne!(after[id].0, before[id].0, "{id} has a new certificate");
        assert_eq!(after[id].1, "ok", "{id} is healthy now");
    }
    for id in ["reader", "writer"] {
        assert_eq!(
            after[id], before[id],
            "renew leaves client `{id}` to `cert sign`"
        );
    }
    let reloaded = item(&v, "broker")["next"].to_string();
    assert!(
        reloaded.contains("reloaded (SIGHUP to mosquitto pid"),
        "{v}"
    );
    assert!(
        item(&v, "passerelle")["next"]
            .to_string()
            .contains("gateway --manifest"),
        "{v}"
    );

    // Same keys, new certificates in every directory, chained to the CA.
    let keys_after: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| std::fs::read(k).expect("key"))
        .collect();
    assert_eq!(keys_after, keys_before, "the keys stay");
    assert_eq!(pubkey(&site.gw.join("passerelle.crt")), gw_pub);
    for (dir, crt, id) in [
        (&site.broker, "broker.crt", "broker"),
        (&site.gw, "passerelle.crt", "passerelle"),
        (&site.rx, "recepteur.crt", "recepteur"),
    ] {
        let serial = openssl_ok(&["x509", "-in", &s(&dir.join(crt)), "-noout", "-serial"]);
        assert_eq!(
            serial.trim().trim_start_matches("serial=").to_lowercase(),
            after[id].0
        );
        let verified = openssl_ok(&["verify", "-CAfile", &s(&ca), &s(&dir.join(crt))]);
        assert!(verified.contains(": OK"), "{verified}");
    }

    // The broker presents the new certificate, which verifies, and it still serves: the old
    // session receives what a new connection publishes.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (serial, ok) = presented(site.port, &ca, &site.reader);
        if serial == after["broker"].0 {
            assert!(ok, "the new broker certificate verifies against the CA");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still presenting {serial}:\n{}",
            mosq.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let p = publish(site.port, &ca, &site.writer, "maison/test", "after-renewal");
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let got = sub.wait_with_output().expect("sub");
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "maison/test after-renewal",
        "{}",
        mosq.log_text()
    );
    assert!(
        mosq.log_text().contains("Reloading config"),
        "{}",
        mosq.log_text()
    );

    // Nothing is due any more.
    let (code, again, _) = renew_json(home, &[]);
    assert_eq!((code, again["due"].as_u64()), (Some(0), Some(0)), "{again}");
}

#[test]
fn a_copy_of_the_home_renews_nothing_into_the_original_directories_and_exits_12() {
    let site = old_site();
    let copy = site.home.work().join("copy");
    let cp = std::process::Command::new("cp")
        .args(["-a", &s(&site.home.path()), &s(&copy)])
        .status()
        .expect("cp");
    assert!(cp.success());
    let dirs = [site.broker.as_path(), site.gw.as_path(), site.rx.as_path()];
    let files = snapshot(&dirs);
    let before = audit(&site.home);

    let o = site
        .home
        .cmd(&["--json", "renew"])
        .env("PROVISIONER_HOME", &copy)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(12), "{}", output_text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    for id in ["broker", "passerelle", "recepteur"] {
        let i = item(&v, id);
        assert_eq!(i["status"], "incomplete", "{v}");
        assert!(
            i["failed"].to_string().contains("is a copy or was moved"),
            "{v}"
        );
        assert!(i["new_serial"].is_null(), "nothing issued for {id}: {v}");
    }
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("3 of 3 due not renewed"), "{err}");
    assert_eq!(
        snapshot(&dirs),
        files,
        "the original's directories are untouched"
    );
    assert_eq!(
        audit(&site.home),
        before,
        "the original's ledger is untouched"
    );
}

#[test]
fn a_deployed_gateway_is_renewed_in_its_root_and_a_forgotten_directory_is_reported_with_exit_12() {
    let site = old_site();
    let home = &site.home;
    let t0 = real_now() - 600 * DAY;
    let root = home.work().join("pi1");
    std::fs::create_dir(&root).expect("root");
    home.ok_at(
        t0,
        &[
            "deploy",
            "gateway",
            "passerelle",
            "--root",
            &s(&root),
            "--air",
            "127.0.0.1:7700",
        ],
    );
    let deployed = root.join("etc/iot-gateway/passerelle.crt");
    let old = pubkey(&deployed);
    // The receiver's directory is forgotten: renew cannot install its new certificate.
    home.ok(&["emit", "receiver", "--forget", &s(&site.rx)]);
    let rx_files = snapshot(&[site.rx.as_path()]);

    let (code, v, o) = renew_json(home, &[]);
    assert_eq!(code, Some(12), "{}", output_text(&o));
    let gw = item(&v, "passerelle");
    assert_eq!(gw["status"], "renewed", "{v}");
    let written = gw["written"].to_string();
    assert!(
        written.contains("deployed to") && written.contains("in "),
        "both places: {v}"
    );
    assert!(
        gw["next"]
            .to_string()
            .contains("systemctl restart iot-gateway"),
        "{v}"
    );
    let serial = openssl_ok(&["x509", "-in", &s(&deployed), "-noout", "-serial"]);
    assert_eq!(
        Some(
            serial
                .trim()
                .trim_start_matches("serial=")
                .to_lowercase()
                .as_str()
        ),
        gw["new_serial"].as_str()
    );
    assert_eq!(pubkey(&deployed), old, "same key");
    assert_eq!(item(&v, "broker")["status"], "renewed", "{v}");

    let rx = item(&v, "recepteur");
    assert_eq!(rx["status"], "incomplete", "{v}");
    assert!(
        rx["failed"]
            .to_string()
            .contains("provisioner emit receiver recepteur --out DIR"),
        "{v}"
    );
    assert_eq!(
        snapshot(&[site.rx.as_path()]),
        rx_files,
        "a forgotten directory is not written"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("1 of 3 due not renewed: receiver `recepteur`"),
        "{err}"
    );
}

#[test]
fn the_ca_passphrase_is_asked_once_on_the_terminal_for_every_renewal_of_the_command() {
    use std::io::{Read as _, Write as _};
    require("script");
    let site = old_site();
    // `renew` on a pseudo-terminal (util-linux `script`), the passphrase typed at the prompt:
    // three renewals (broker, gateway, receiver; the CRL is fresh) open the CA three times.
    let cmd = format!("{} renew", env!("CARGO_BIN_EXE_provisioner"));
    let mut child = std::process::Command::new("timeout")
        .args(["60", "script", "-qec", &cmd, "/dev/null"])
        .env("PROVISIONER_HOME", site.home.path())
        .env_remove("PROVISIONER_PASSPHRASE")
        .env_remove("PROVISIONER_FAKE_NOW")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script");
    let mut stdout = child.stdout.take().expect("stdout");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        })
    };
    let text = || String::from_utf8_lossy(&seen.lock().expect("lock")).into_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text().contains("CA passphrase:") {
        assert!(Instant::now() < deadline, "no prompt: {}", text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{PASSPHRASE}\n").as_bytes())
        .expect("type");
    let status = child.wait().expect("wait");
    drop(stdin);
    reader.join().expect("reader");
    let out = text();
    assert!(status.success(), "{status}: {out}");
    assert_eq!(out.matches("CA passphrase:").count(), 1, "{out}");
    assert!(out.contains("3 due, 3 renewed"), "{out}");
    assert!(
        !out.contains(PASSPHRASE),
        "the passphrase is not echoed: {out}"
    );
}

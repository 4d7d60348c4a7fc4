//! CRL freshness across a simulated clock: `provisioner crl` signs a new CRL only when it is
//! due, and a broker left with an expired CRL refuses every client until `crl` renews it and
//! mosquitto is reloaded (what the `provisioner-crl` timer emitted by `emit broker` does).
//! The clock is moved with PROVISIONER_FAKE_NOW, which debug builds honour.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

const DAY: i64 = 86_400;

fn real_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// `provisioner --json crl [extra]` with the clock at `at` (Unix seconds).
fn crl_at(home: &Home, at: i64, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json", "crl"];
    args.extend_from_slice(extra);
    let out = home
        .cmd(&args)
        .env("PROVISIONER_FAKE_NOW", at.to_string())
        .output()
        .expect("run provisioner crl");
    assert!(
        out.status.success(),
        "crl at {at}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("crl json")
}

/// nextUpdate of a PEM CRL, as openssl reads it (e.g. `Jan  1 00:00:00 2030 GMT`).
fn openssl_next_update(crl: &Path) -> String {
    openssl_ok(&[
        "crl",
        "-in",
        &crl.to_string_lossy(),
        "-noout",
        "-nextupdate",
    ])
    .trim()
    .trim_start_matches("nextUpdate=")
    .to_string()
}

fn rfc3339_unix(s: &str) -> i64 {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .unix_timestamp()
}

#[test]
fn crl_is_renewed_only_when_a_third_of_its_lifetime_is_left() {
    let home = Home::new();
    let t0 = real_now();
    let init = home
        .cmd(&["init"])
        .env("PROVISIONER_FAKE_NOW", t0.to_string())
        .output()
        .expect("init");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );

    let first = crl_at(&home, t0, &[]);
    let number = first["number"].as_i64().expect("number");
    let next = rfc3339_unix(first["next_update"].as_str().expect("next_update"));
    let this = rfc3339_unix(first["this_update"].as_str().expect("this_update"));
    let lifetime = next - this;
    assert!(lifetime >= 3 * DAY, "CRL lifetime {lifetime} s");

    // A day later the CRL is fresh: nothing is signed, the same number is re-materialised.
    let fresh = crl_at(&home, t0 + DAY, &[]);
    assert_eq!(fresh["renewed"], false, "{fresh}");
    assert_eq!(fresh["number"].as_i64(), Some(number), "{fresh}");
    let crl_file = Path::new(fresh["written"][0].as_str().expect("written")).to_path_buf();
    let before = openssl_next_update(&crl_file);

    // Just before two thirds of its lifetime: still up to date.
    let almost = crl_at(&home, this + lifetime * 2 / 3 - 60, &[]);
    assert_eq!(almost["renewed"], false, "{almost}");

    // At two thirds of its lifetime: renewed, number + 1, nextUpdate moved on.
    let at = this + lifetime * 2 / 3 + 1;
    let renewed = crl_at(&home, at, &[]);
    assert_eq!(renewed["renewed"], true, "{renewed}");
    assert_eq!(renewed["number"].as_i64(), Some(number + 1), "{renewed}");
    let new_next = rfc3339_unix(renewed["next_update"].as_str().expect("next_update"));
    assert_eq!(new_next, at + lifetime, "{renewed}");
    let after = openssl_next_update(&crl_file);
    assert_ne!(before, after, "the CRL file still has nextUpdate {before}");

    // Running it again at the same moment changes nothing.
    let again = crl_at(&home, at + 60, &[]);
    assert_eq!(again["renewed"], false, "{again}");
    assert_eq!(again["number"].as_i64(), Some(number + 1), "{again}");
}

#[test]
fn a_broker_with_an_expired_crl_refuses_clients_until_crl_renews_it_and_mosquitto_reloads() {
    let home = Home::with_broker();
    // A CRL signed 40 days ago: its nextUpdate (30 days) is 10 days in the past.
    let expired = crl_at(&home, real_now() - 40 * DAY, &["--renew"]);
    let next = rfc3339_unix(expired["next_update"].as_str().expect("next_update"));
    assert!(next < real_now(), "{expired}");
    let sensor = home.client("probe-1", &[]);

    let port = free_port();
    let out = home.work().join("broker");
    home.emit_broker(
        &out,
        Some(port),
        &["--crl-passphrase-file", "/etc/provisioner/ca-passphrase"],
    );
    let crl_pem = out.join("crl.pem");
    let shown = openssl_next_update(&crl_pem);
    assert!(!shown.is_empty(), "no nextUpdate in {}", crl_pem.display());

    // What renews it in production: a daily timer running `provisioner crl`, then a reload.
    // The units belong on the CA machine: beside OUT (OUT-bench), not in what goes to the broker.
    let units = home.work().join("broker-bench");
    let service = std::fs::read_to_string(units.join("provisioner-crl.service")).expect("service");
    let timer = std::fs::read_to_string(units.join("provisioner-crl.timer")).expect("timer");
    let home_dir = home.path().canonicalize().expect("home");
    assert!(
        service.contains("Type=oneshot")
            && service.contains(&format!("--home \"{}\"", home_dir.display()))
            && service.contains("--passphrase-file \"/etc/provisioner/ca-passphrase\" crl")
            && service.contains("kill -HUP \"$$pid\"")
            && service.contains(&format!("sh \"{}/run/mosquitto.pid\"", out.display())),
        "{service}"
    );
    assert!(
        timer.contains("OnCalendar=daily")
            && timer.contains("Persistent=true")
            && timer.contains("Unit=provisioner-crl.service"),
        "{timer}"
    );
    assert!(
        !service.contains(PASSPHRASE) && !timer.contains(PASSPHRASE),
        "the passphrase is in a unit file"
    );

    let broker = Mosquitto::start(
        &out.join("mosquitto.conf"),
        port,
        &home.work().join("m.log"),
    );
    let cafile = out.join("ca.crt");
    let refused = publish(port, &cafile, &sensor, "maison/probe-1/temperature", "21.5");
    assert!(
        !refused.status.success(),
        "a broker with an expired CRL accepted a client:\n{}",
        broker.log_text()
    );

    // The timer's run: no --renew, the clock is real; the CRL is due, so it is renewed and
    // written into the broker directory too.
    let renewed = crl_at(&home, real_now(), &[]);
    assert_eq!(renewed["renewed"], true, "{renewed}");
    assert_eq!(
        renewed["number"].as_i64(),
        expired["number"].as_i64().map(|n| n + 1),
        "{renewed}"
    );
    assert_ne!(
        openssl_next_update(&crl_pem),
        shown,
        "crl.pem was not rewritten"
    );
    broker.reload();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = publish(port, &cafile, &sensor, "maison/probe-1/temperature", "21.5");
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after renewal and SIGHUP: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            broker.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

//! Several bench stations on one PostgreSQL ledger (a real server started by the test, on
//! loopback, as an unprivileged account): they provision at the same time and the fleet stays
//! one (distinct serials, one certificate per request, one ACL admitting every device), and a
//! station killed in the middle of an issuance leaves one certificate per request once run
//! again, on either ledger engine.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use test_postgres::PgServer;

const STATIONS: [(&str, &str); 3] = [("a", "salon"), ("b", "cuisine"), ("c", "garage")];
const BOARDS: usize = 8;

/// The ledger as a station opens it (through the home's stored settings).
fn shared_ledger(station: &Home) -> ca::ledger::Ledger {
    ca::pgledger::Location::of_home(&ca::Layout::new(station.path()))
        .expect("settings")
        .open()
        .expect("open the shared ledger")
}

/// `device provision` of every board of a station, in one process, without waiting.
fn spawn_provision(station: &Home, boards: &[SimBoard], id: &str) -> Child {
    let mut args = vec!["--json".to_string(), "device".into(), "provision".into()];
    for b in boards {
        args.extend(["--port".into(), b.port()]);
    }
    args.extend(["--id", id, "--profile", "thermometre", "--lock"].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    station
        .cmd(&argv)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a station")
}

/// mosquitto_sub on `maison/#`, collecting the `device` of every reading until all of
/// `expected` were seen or 120 s passed.
fn devices_heard(
    port: u16,
    ca: &std::path::Path,
    monitor: &Client,
    expected: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut sub = mosquitto_sub(port, ca, monitor, "maison/#")
        .args(["-W", "120"])
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub");
    let heard = Arc::new(Mutex::new(BTreeSet::new()));
    let reader = {
        let heard = Arc::clone(&heard);
        let out = sub.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(d) = v["device"].as_str()
                {
                    heard.lock().expect("lock").insert(d.to_string());
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && !expected.is_subset(&heard.lock().expect("lock")) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = sub.kill();
    let _ = sub.wait();
    let _ = reader.join();
    heard.lock().expect("lock").clone()
}

#[test]
fn three_stations_provision_eight_boards_each_at_once_on_one_postgres_ledger() {
    let pg = PgServer::start();
    pg.create_database("fleet");
    let port = free_port();
    let first = pg_station(&pg, "fleet", port, None);
    first.ok(&["server", "issue"]);
    // A second station without the CA key is told what to copy, and nothing is recorded.
    let stray = Home::new();
    let site = stray.work().join("site.toml");
    std::fs::write(&site, site_text(port)).expect("site");
    let args = pg_init_args(&pg, "fleet", &site);
    let refused = stray.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "joined without the CA key");
    assert!(
        err.contains("already holds the CA") && err.contains("install -D -m 600"),
        "{err}"
    );
    assert!(!stray.path().join("ledger.toml").exists());
    let others: Vec<Home> = (1..STATIONS.len())
        .map(|_| pg_station(&pg, "fleet", port, Some(&first)))
        .collect();
    let stations: Vec<&Home> = std::iter::once(&first).chain(&others).collect();
    let fingerprints: HashSet<String> = stations
        .iter()
        .map(|s| s.json(&["init"])["ca"]["root_fingerprint"].to_string())
        .collect();
    assert_eq!(
        fingerprints.len(),
        1,
        "one CA for every station: {fingerprints:?}"
    );

    // The broker runs from the last station's configuration before any device exists. Its
    // key was made where `server issue` ran (the first station): the ledger holds
    // certificates, not host-made keys, so a station emitting the broker holds a copy.
    let last = stations[STATIONS.len() - 1];
    let key = last.path().join("keys/broker.key");
    std::fs::copy(first.path().join("keys/broker.key"), &key).expect("copy the broker key");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let monitor = last.client("monitor", &["--subscribe", "maison/#"]);
    let broker_dir = last.work().join("broker");
    last.emit_broker(&broker_dir, None, &[]);
    let broker = Mosquitto::start(
        &broker_dir.join("mosquitto.conf"),
        port,
        &last.work().join("mosquitto.log"),
    );

    let boards: Vec<Vec<SimBoard>> = stations
        .iter()
        .zip(STATIONS)
        .map(|(s, (tag, _))| {
            (0..BOARDS)
                .map(|i| SimBoard::start(&s.work(), &format!("{tag}{i}"), 115_200, false))
                .collect()
        })
        .collect();
    let running: Vec<Child> = stations
        .iter()
        .zip(&boards)
        .zip(STATIONS)
        .map(|((s, b), (tag, room))| spawn_provision(s, b, &format!("{room}-{tag}{{n}}")))
        .collect();
    for (child, (tag, _)) in running.into_iter().zip(STATIONS) {
        let out = child.wait_with_output().expect("station");
        assert!(
            out.status.success(),
            "station {tag}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let done = v["boards"].as_array().expect("boards");
        assert_eq!(done.len(), BOARDS, "station {tag}: {v}");
        // "verified": a run cut short by line noise was run again and found the board done.
        assert!(
            done.iter().all(|b| b["ok"] == true
                && ["provisioned", "verified"]
                    .contains(&b["result"]["status"].as_str().unwrap_or(""))),
            "station {tag}: {v}"
        );
    }

    let expected: BTreeSet<String> = STATIONS
        .iter()
        .flat_map(|(tag, room)| (1..=BOARDS).map(move |n| format!("{room}-{tag}{n}")))
        .collect();
    // The ledger: 24 devices, each with one active certificate, no serial twice.
    let ledger = shared_ledger(&first);
    let devices: BTreeSet<String> = ledger
        .identities()
        .expect("identities")
        .into_iter()
        .filter(|i| i.kind == "device" && i.status == "active")
        .map(|i| i.id)
        .collect();
    assert_eq!(devices, expected);
    let certs = ledger.certificates().expect("certificates");
    let serials: HashSet<&str> = certs.iter().map(|c| c.serial.as_str()).collect();
    assert_eq!(serials.len(), certs.len(), "a serial issued twice");
    let requests: HashSet<&str> = certs.iter().map(|c| c.request_id.as_str()).collect();
    assert_eq!(requests.len(), certs.len(), "a request certified twice");
    let device_certs: Vec<_> = certs.iter().filter(|c| c.profile == "device").collect();
    assert_eq!(device_certs.len(), expected.len(), "{device_certs:?}");
    for id in &expected {
        let active = ledger
            .active_of(id)
            .expect("active")
            .expect("an active certificate");
        assert!(
            active.revoked_at.is_none()
                && ledger.supersession(&active.serial).expect("q").is_none()
        );
    }
    // Every station sees the whole fleet.
    for s in &stations {
        let listed = s.json(&["device", "list"]);
        let active: BTreeSet<String> = listed
            .as_array()
            .expect("rows")
            .iter()
            .filter(|r| r["kind"] == "device" && r["active"] == true)
            .filter_map(|r| r["id"].as_str().map(String::from))
            .collect();
        assert_eq!(active, expected);
    }

    // One ACL, whichever station emits it, admits all 24 on the running broker.
    last.emit_broker(&broker_dir, None, &[]);
    let acl = std::fs::read_to_string(broker_dir.join("acl")).expect("acl");
    let other_dir = first.work().join("broker-from-a");
    first.emit_broker(&other_dir, Some(port), &[]);
    assert_eq!(
        std::fs::read_to_string(other_dir.join("acl")).expect("acl"),
        acl,
        "stations emit different ACLs"
    );
    for id in &expected {
        assert!(
            acl.contains(&format!("user {id}\n")),
            "{id} missing:\n{acl}"
        );
    }
    broker.reload();
    let heard = devices_heard(port, &broker_dir.join("ca.crt"), &monitor, &expected);
    assert!(
        expected.is_subset(&heard),
        "not heard: {:?}\n{}",
        expected.difference(&heard).collect::<Vec<_>>(),
        broker.log_text()
    );
    let log = broker.log_text();
    for id in &expected {
        assert!(
            log.contains(&format!(" as {id} ")),
            "{id} never connected:\n{log}"
        );
    }
}

/// A station killed at `point` while provisioning `salon-9`, run again, then once more:
/// exactly one certificate for the request, active, on the chip; nothing else issued.
fn killed_mid_issuance_then_run_again(
    home: &Home,
    ledger: impl Fn() -> ca::ledger::Ledger,
    point: &str,
    backend: &str,
) {
    let board = SimBoard::start(&home.work(), &format!("k-{point}"), 0, false);
    let port = board.port();
    let args = [
        "device",
        "provision",
        "--port",
        &port,
        "--id",
        "salon-9",
        "--profile",
        "climat",
        "--lock",
    ];
    let before = ledger().certificates().expect("certs").len();
    let crashed = home
        .cmd(&args)
        .env("PROVISIONER_CRASH_AT", point)
        .output()
        .expect("run");
    assert!(!crashed.status.success(), "{backend} {point}: no crash");
    assert!(
        String::from_utf8_lossy(&crashed.stderr).contains(&format!("crash injected at `{point}`")),
        "{backend} {point}: {}",
        String::from_utf8_lossy(&crashed.stderr)
    );
    home.ok(&args);
    home.ok(&args);
    let l = ledger();
    let certs: Vec<_> = l
        .certificates_of("salon-9")
        .expect("certs")
        .into_iter()
        .collect();
    assert_eq!(certs.len(), 1, "{backend} {point}: {certs:?}");
    assert_eq!(
        l.certificates().expect("certs").len(),
        before + 1,
        "{backend} {point}: something else was issued"
    );
    assert_eq!(
        l.by_request(&certs[0].request_id)
            .expect("q")
            .map(|c| c.serial),
        Some(certs[0].serial.clone())
    );
    assert!(
        l.active_of("salon-9").expect("q").is_some(),
        "{backend} {point}"
    );
    drop(board);
    // And the next issuance is not blocked by the killed one's lock.
    l.transaction(|tx| tx.next_crl_number())
        .expect("the write lock is free");
}

#[test]
fn a_station_killed_mid_issuance_and_run_again_has_one_certificate_per_request_on_both_ledgers() {
    let pg = PgServer::start();
    for point in ["issue-after-sign", "issue-after-ledger"] {
        let db = point.replace('-', "_");
        pg.create_database(&db);
        let station = pg_station(&pg, &db, free_port(), None);
        killed_mid_issuance_then_run_again(&station, || shared_ledger(&station), point, "postgres");
        let local = home_with_site(free_port());
        let path = local.path().join("ledger.sqlite");
        killed_mid_issuance_then_run_again(
            &local,
            || ca::ledger::Ledger::open(&path).expect("sqlite"),
            point,
            "sqlite",
        );
    }
}

#[test]
fn the_ledger_password_comes_from_a_file_or_the_environment_never_the_url() {
    let pg = PgServer::start();
    pg.create_database("env");
    let home = Home::new();
    let site = home.work().join("site.toml");
    std::fs::write(&site, site_text(free_port())).expect("site");
    let site = site.to_string_lossy().into_owned();
    let in_url = format!(
        "postgres://{}:{}@127.0.0.1:{}/env",
        test_postgres::USER,
        pg.password(),
        pg.port()
    );
    let out = home.run(&["init", "--site", &site, "--ledger", &in_url]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("holds a password"),
        "{err}"
    );
    assert!(
        !err.contains(pg.password()),
        "the password was echoed: {err}"
    );
    // Plain text to another machine is refused before anything is sent.
    let remote = home.run(&[
        "init",
        "--site",
        &site,
        "--ledger",
        "postgres://ca@192.0.2.1/env",
    ]);
    let err = String::from_utf8_lossy(&remote.stderr);
    assert!(
        !remote.status.success() && err.contains("refusing a plaintext connection to 192.0.2.1"),
        "{err}"
    );
    // Without a password the server refuses, clearly; nothing is recorded.
    let url = pg.url("env");
    let none = home.run(&["init", "--site", &site, "--ledger", &url]);
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(!none.status.success() && err.contains("password"), "{err}");
    assert!(!home.path().join("ledger.toml").exists());
    // From the environment: it works, and the home stores neither the password nor a file.
    let ok = home
        .cmd(&["--json", "init", "--site", &site, "--ledger", &url])
        .env("PROVISIONER_LEDGER_PASSWORD", pg.password())
        .output()
        .expect("init");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let stored = std::fs::read_to_string(home.path().join("ledger.toml")).expect("ledger.toml");
    assert!(
        stored.contains(&url) && !stored.contains(pg.password()),
        "{stored}"
    );
    assert!(!home.path().join("ledger.sqlite").exists());
    let listed = home
        .cmd(&["device", "list"])
        .env("PGPASSWORD", pg.password())
        .output()
        .expect("list");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
}

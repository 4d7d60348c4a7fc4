//! Several bench stations on one PostgreSQL ledger (a real server started by the binary's
//! tests, shared by them, on loopback, as an unprivileged account), each signing with its own
//! issuing CA from `station add` (no root key on a station): they provision at the same time
//! and the fleet stays one (distinct serials, one certificate per request, one ACL admitting
//! every device on a real mosquitto); a revoked station's devices are refused while the
//! others' are accepted; and a station killed in the middle of an issuance leaves one
//! certificate per request once run again, on either ledger engine.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

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

/// The `(tag, room)` devices of the stations `tags`.
fn devices_of(tags: &[&str]) -> BTreeSet<String> {
    STATIONS
        .iter()
        .filter(|(tag, _)| tags.contains(tag))
        .flat_map(|(tag, room)| (1..=BOARDS).map(move |n| format!("{room}-{tag}{n}")))
        .collect()
}

/// Waits up to 90 s for a line ` as ID ` of each of `ids` in the broker's log.
fn connected(broker: &Mosquitto, ids: &BTreeSet<String>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let log = broker.log_text();
        if ids.iter().all(|id| log.contains(&format!(" as {id} "))) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Provisions BOARDS simulated boards per station, the three stations at once; returns the
/// boards and the port of each device.
fn provision_all_at_once(stations: &[&Home]) -> (Vec<Vec<SimBoard>>, HashMap<String, String>) {
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
    let mut ports = HashMap::new();
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
        for b in done {
            ports.insert(
                b["id"].as_str().expect("id").to_string(),
                b["port"].as_str().expect("port").to_string(),
            );
        }
    }
    (boards, ports)
}

/// The shared ledger after the provisioning: the 24 devices, each with one active
/// certificate signed by its own station's issuing CA, no serial or request twice.
fn check_fleet_ledger(root: &Home, stations: &[&Home], expected: &BTreeSet<String>) {
    let ledger = shared_ledger(root);
    let devices: BTreeSet<String> = ledger
        .identities()
        .expect("identities")
        .into_iter()
        .filter(|i| i.kind == "device" && i.status == "active")
        .map(|i| i.id)
        .collect();
    assert_eq!(&devices, expected);
    let certs = ledger.certificates().expect("certificates");
    let serials: HashSet<&str> = certs.iter().map(|c| c.serial.as_str()).collect();
    assert_eq!(serials.len(), certs.len(), "a serial issued twice");
    let requests: HashSet<&str> = certs.iter().map(|c| c.request_id.as_str()).collect();
    assert_eq!(requests.len(), certs.len(), "a request certified twice");
    let device_certs: Vec<_> = certs.iter().filter(|c| c.profile == "device").collect();
    assert_eq!(device_certs.len(), expected.len(), "{device_certs:?}");
    for (station, (tag, _)) in stations.iter().zip(STATIONS) {
        let ca = station.path().join("ca/issuing.crt");
        let root_crt = station.path().join("ca/root.crt");
        let mut verify = vec![
            "verify".to_string(),
            "-x509_strict".into(),
            "-CAfile".into(),
            root_crt.to_string_lossy().into_owned(),
            "-untrusted".into(),
            ca.to_string_lossy().into_owned(),
        ];
        for id in devices_of(&[tag]) {
            let active = ledger
                .active_of(&id)
                .expect("active")
                .expect("an active certificate");
            assert!(
                active.revoked_at.is_none()
                    && ledger.supersession(&active.serial).expect("q").is_none()
            );
            let pem = station.work().join(format!("{id}.pem"));
            std::fs::write(&pem, ca::authority::cert_pem(&active.der)).expect("pem");
            verify.push(pem.to_string_lossy().into_owned());
        }
        // Each device certificate chains to the root through its station's issuing CA only.
        let out = openssl_ok(&verify.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(out.matches(": OK").count(), BOARDS, "{out}");
    }
    // Every station sees the whole fleet.
    for s in stations {
        let listed = s.json(&["device", "list"]);
        let active: BTreeSet<String> = listed
            .as_array()
            .expect("rows")
            .iter()
            .filter(|r| r["kind"] == "device" && r["active"] == true)
            .filter_map(|r| r["id"].as_str().map(String::from))
            .collect();
        assert_eq!(&active, expected);
    }
}

/// The three station homes hold their own issuing CA (path length 0, its name carrying the
/// station's), none the root key; a station cannot add or revoke stations.
fn check_station_homes(root: &Home, stations: &[&Home]) {
    for (s, (tag, _)) in stations.iter().zip(STATIONS) {
        assert!(
            !s.path().join("ca/root.key").exists(),
            "station {tag} holds the root key"
        );
        let text = openssl_ok(&[
            "x509",
            "-noout",
            "-subject",
            "-ext",
            "basicConstraints",
            "-in",
            &s.path().join("ca/issuing.crt").to_string_lossy(),
        ]);
        assert!(
            text.contains(&format!("Station {tag} Issuing CA")) && text.contains("pathlen:0"),
            "{text}"
        );
        for what in [&["station", "add", "z"], &["station", "revoke", "a"]] {
            let refused = s.run(what);
            assert!(
                refused.status.code() == Some(5)
                    && String::from_utf8_lossy(&refused.stderr)
                        .contains(&format!("this home is bench station `{tag}`")),
                "{}",
                output_text(&refused)
            );
        }
    }
    let listed = root.json(&["station", "list"]);
    let names: BTreeSet<&str> = listed
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["active"] == true)
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, BTreeSet::from(["a", "b", "c"]));
}

#[test]
fn three_stations_with_their_own_issuing_ca_provision_eight_boards_each_at_once_then_one_is_revoked()
 {
    let pg = shared_pg();
    pg.create_database("fleet");
    let port = free_port();
    let root = root_home(&pg, "fleet", port);
    // A home that only names the ledger is told how to become a station; nothing is recorded.
    let stray = Home::new();
    let site = stray.work().join("site.toml");
    std::fs::write(&site, site_text(port)).expect("site");
    let args = pg_init_args(&pg, "fleet", &site);
    let refused = stray.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "joined without a station bundle");
    assert!(
        err.contains("already holds the CA") && err.contains("station add NAME"),
        "{err}"
    );
    assert!(!stray.path().join("ledger.toml").exists());
    // The three at once; station c makes its own key and sends a CSR, a and b get theirs in
    // the bundle.
    let homes: Vec<Home> = std::thread::scope(|scope| {
        let made: Vec<_> = STATIONS
            .iter()
            .map(|(tag, _)| {
                let (pg, root) = (&pg, &root);
                scope.spawn(move || station_home(pg, "fleet", root, tag, port, *tag == "c"))
            })
            .collect();
        made.into_iter()
            .map(|h| h.join().expect("station"))
            .collect()
    });
    let stations: Vec<&Home> = homes.iter().collect();
    check_station_homes(&root, &stations);

    // The broker runs from the last station's configuration before any device exists, with
    // a broker certificate that station issued.
    let last = stations[STATIONS.len() - 1];
    last.ok(&["server", "issue"]);
    let monitor = last.client("monitor", &["--subscribe", "maison/#"]);
    let broker_dir = last.work().join("broker");
    last.emit_broker(&broker_dir, None, &[]);
    let mut broker = Mosquitto::start(
        &broker_dir.join("mosquitto.conf"),
        port,
        &last.work().join("mosquitto.log"),
    );

    let (boards, ports) = provision_all_at_once(&stations);
    let expected = devices_of(&["a", "b", "c"]);
    check_fleet_ledger(&root, &stations, &expected);

    // One ACL, whichever station emits it, admits all 24 on the running broker.
    last.emit_broker(&broker_dir, None, &[]);
    let acl = std::fs::read_to_string(broker_dir.join("acl")).expect("acl");
    // The broker's key was made where `server issue` ran: the ledger holds certificates,
    // not host-made keys, so another station emitting the broker holds a copy.
    let key = stations[0].path().join("keys/broker.key");
    std::fs::copy(last.path().join("keys/broker.key"), &key).expect("copy the broker key");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let other_dir = stations[0].work().join("broker-from-a");
    stations[0].emit_broker(&other_dir, Some(port), &[]);
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
    assert!(connected(&broker, &expected), "{}", broker.log_text());

    // A client certificate from each station, made before the revocation.
    let probes: Vec<Client> = std::thread::scope(|scope| {
        let made: Vec<_> = stations
            .iter()
            .zip(STATIONS)
            .map(|(s, (tag, _))| scope.spawn(move || s.client(&format!("probe-{tag}"), &[])))
            .collect();
        made.into_iter().map(|c| c.join().expect("probe")).collect()
    });
    // Station b is revoked on the root's home: its CA is in the root's CRL; the station
    // that runs the broker publishes the fleet's CRLs and CA file without b's.
    let out = root.ok(&["station", "revoke", "b"]);
    assert!(out.contains("run `provisioner crl`"), "{out}");
    let root_crl = openssl_ok(&[
        "crl",
        "-noout",
        "-text",
        "-in",
        &root.path().join("crl.pem").to_string_lossy(),
    ]);
    let b_serial = shared_ledger(&root)
        .meta("stations")
        .expect("meta")
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| {
            v.as_array()?
                .iter()
                .find(|s| s["name"] == "b")?
                .get("serial")?
                .as_str()
                .map(str::to_uppercase)
        })
        .expect("b's serial");
    assert!(
        root_crl.contains(&b_serial),
        "{b_serial} not in\n{root_crl}"
    );
    last.ok(&["crl"]);
    let cafile = std::fs::read_to_string(broker_dir.join("ca.crt")).expect("ca.crt");
    assert_eq!(cafile.matches("BEGIN CERTIFICATE").count(), 4, "{cafile}");
    // A device of b re-issued from station a (--reissue; the chip proves possession again).
    let reissued = "cuisine-b1";
    stations[0].ok(&[
        "device",
        "provision",
        "--port",
        &ports[reissued],
        "--id",
        reissued,
        "--profile",
        "thermometre",
        "--lock",
        "--reissue",
    ]);
    // Reconnecting (the broker restarted): a's and c's devices are accepted and the re-issued
    // one, b's others refused.
    drop(broker);
    broker = Mosquitto::start(
        &broker_dir.join("mosquitto.conf"),
        port,
        &last.work().join("mosquitto-after-revoke.log"),
    );
    let mut kept = devices_of(&["a", "c"]);
    kept.insert(reissued.to_string());
    assert!(connected(&broker, &kept), "{}", broker.log_text());
    let log = broker.log_text();
    for id in devices_of(&["b"]).iter().filter(|id| *id != reissued) {
        assert!(
            !log.contains(&format!(" as {id} ")),
            "{id} accepted:\n{log}"
        );
    }
    // And a client of each station, connecting now after a reload.
    broker.reload();
    for (c, (tag, _)) in probes.iter().zip(STATIONS) {
        let sent = publish(port, &broker_dir.join("ca.crt"), c, "probe", "x");
        assert_eq!(
            sent.status.success(),
            tag != "b",
            "station {tag}: {}",
            output_text(&sent)
        );
    }
    // The revoked station signs nothing more.
    let refused = stations[1].run(&[
        "cert",
        "sign",
        "--csr",
        &probes[1].csr.to_string_lossy(),
        "--profile",
        "client",
        "--out",
        &stations[1].work().join("after.crt").to_string_lossy(),
    ]);
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("was revoked"),
        "{}",
        output_text(&refused)
    );
    drop(boards);
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
    let args = provision_locked(&port, "salon-9", "climat");
    let before = ledger().certificates().expect("certs").len();
    crashed_at(home, &args, point);
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
    let pg = shared_pg();
    for point in ["issue-after-sign", "issue-after-ledger"] {
        let db = point.replace('-', "_");
        pg.create_database(&db);
        let station = pg_station(&pg, &db, free_port());
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
    let pg = shared_pg();
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

//! Certificates after day one: re-runs renew what is expired or past its renewal point (same
//! key, one active certificate per identity), lifetimes come from the site file, and `audit`
//! / `device list --expiring` show what is due, with documented exit codes. The clock is
//! moved with `PROVISIONER_FAKE_NOW` (debug builds).

mod common;

use std::process::Output;

use common::*;

const DAY: i64 = 86_400;

fn real_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Runs the provisioner with its clock at `t` (Unix seconds).
fn at(home: &Home, t: i64, args: &[&str]) -> Output {
    home.cmd(args)
        .env("PROVISIONER_FAKE_NOW", t.to_string())
        .output()
        .expect("run provisioner")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok_at(home: &Home, t: i64, args: &[&str]) -> String {
    let o = at(home, t, args);
    assert!(o.status.success(), "provisioner {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json_at(home: &Home, t: i64, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok_at(home, t, &a)).expect("json output")
}

/// `audit --json` at `t`: (exit code, report).
fn audit(home: &Home, t: i64) -> (Option<i32>, serde_json::Value, String) {
    let o = at(home, t, &["--json", "audit"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("audit JSON: {e}\n{}", text(&o)));
    (
        o.status.code(),
        v,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn item<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["id"] == id)
        .unwrap_or_else(|| panic!("no `{id}` in {report}"))
}

fn home_with(site: &str) -> Home {
    let home = Home::new();
    let f = home.work().join("site.toml");
    std::fs::write(&f, site).expect("site");
    home.ok(&["init", "--site", &f.to_string_lossy()]);
    home
}

/// The public key (SPKI PEM) of a certificate, a CSR or a private key file.
fn pubkey(kind: &str, file: &std::path::Path) -> String {
    let f = file.to_string_lossy();
    match kind {
        "x509" => openssl_ok(&["x509", "-in", &f, "-noout", "-pubkey"]),
        "req" => openssl_ok(&["req", "-in", &f, "-noout", "-pubkey"]),
        _ => openssl_ok(&["pkey", "-in", &f, "-pubout"]),
    }
}

fn ledger(home: &Home) -> ca::ledger::Ledger {
    ca::ledger::Ledger::open(&home.path().join("ledger.sqlite")).expect("ledger")
}

/// Certificates of `id` neither revoked nor superseded.
fn live(home: &Home, id: &str) -> Vec<String> {
    let l = ledger(home);
    l.certificates_of(id)
        .expect("certs")
        .into_iter()
        .filter(|c| c.revoked_at.is_none())
        .filter(|c| l.supersession(&c.serial).expect("query").is_none())
        .map(|c| c.serial)
        .collect()
}

fn assert_renewed(home: &Home, id: &str, old: &str, new: &str) {
    assert_ne!(old, new, "{id}: a new serial");
    assert_eq!(live(home, id), vec![new.to_string()], "{id}: one active");
    let s = ledger(home)
        .supersession(old)
        .expect("query")
        .unwrap_or_else(|| panic!("{id}: {old} is not recorded as superseded"));
    assert_eq!((s.by_serial.as_str(), s.why.as_str()), (new, "renewed"));
    let c = ledger(home).by_serial(old).expect("query").expect("old");
    assert!(c.revoked_at.is_none(), "superseded is not revoked");
}

#[test]
fn audit_exit_codes_and_json_for_expired_expiring_and_healthy_certificates() {
    // Clients live 30 days and renew at two thirds (day 20); the broker keeps 825 days.
    let site = format!(
        "{}\n[lifetimes.client]\ncert_days = 30\n",
        site_text(free_port())
    );
    let home = home_with(&site);
    let t0 = real_now();
    ok_at(&home, t0, &["server", "issue"]);
    let old = openssl_client(&home.work(), "old");
    let mid = openssl_client(&home.work(), "mid");
    let sign = |c: &Client, t: i64| {
        json_at(
            &home,
            t,
            &[
                "cert",
                "sign",
                "--csr",
                &c.csr.to_string_lossy(),
                "--profile",
                "client",
                "--out",
                &c.crt.to_string_lossy(),
            ],
        )
    };
    let old_first = sign(&old, t0);
    sign(&mid, t0 + 15 * DAY);

    // Day 0: everything healthy.
    let (code, report, _) = audit(&home, t0 + 60);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["status"], "ok");

    // Day 40: `old` expired (day 30), `mid` is past its renewal point (day 35, from its
    // issue on day 15; expiry day 45), the broker, the CA and a fresh CRL are healthy.
    // Days left are whole days, rounded down; notBefore is backdated 5 minutes.
    let t1 = t0 + 40 * DAY;
    ok_at(&home, t1, &["crl"]);
    let (code, report, stderr) = audit(&home, t1);
    assert_eq!(code, Some(11), "{report}\n{stderr}");
    assert_eq!(report["status"], "expired");
    assert_eq!(report["exit_code"], 11);
    assert_eq!(item(&report, "old")["state"], "expired");
    assert_eq!(item(&report, "old")["days_left"], -11);
    assert_eq!(item(&report, "old")["kind"], "client");
    assert_eq!(item(&report, "old")["serial"], old_first["serial"]);
    assert_eq!(item(&report, "mid")["state"], "renew");
    assert_eq!(item(&report, "mid")["days_left"], 4);
    assert_eq!(item(&report, "broker")["state"], "ok");
    assert_eq!(item(&report, "broker")["kind"], "server");
    assert_eq!(item(&report, "crl")["state"], "ok");
    let kinds: Vec<&str> = report["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"root-ca"), "{kinds:?}");
    assert!(
        stderr.contains("expired: client `old`") && stderr.contains("client `mid`"),
        "{stderr}"
    );
    // JSON items, and the human table, are sorted by days left.
    let left: Vec<i64> = report["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["days_left"].as_i64())
        .collect();
    assert!(left.windows(2).all(|w| w[0] <= w[1]), "{left:?}");
    let human = at(&home, t1, &["audit"]);
    assert_eq!(human.status.code(), Some(11));
    let rows: Vec<String> = String::from_utf8_lossy(&human.stdout)
        .lines()
        .skip(1)
        .map(String::from)
        .collect();
    assert!(
        rows[0].starts_with("expired") && rows[0].contains(" old "),
        "{rows:?}"
    );
    assert!(
        rows[1].starts_with("renew") && rows[1].contains(" mid "),
        "{rows:?}"
    );

    // `device list --expiring` filters on the active certificate's expiry.
    let ids = |filter: &[&str]| -> Vec<String> {
        let mut a = vec!["device", "list"];
        a.extend_from_slice(filter);
        json_at(&home, t1, &a)
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["id"].as_str().expect("id").to_string())
            .collect()
    };
    assert_eq!(ids(&["--expiring", "30d"]), vec!["mid", "old"]);
    assert_eq!(ids(&["--expiring", "12h"]), vec!["old"]);
    assert_eq!(ids(&[]), vec!["broker", "mid", "old"]);
    let list = json_at(&home, t1, &["device", "list"]);
    let mid_row = list
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["id"] == "mid")
        .expect("mid");
    assert_eq!(
        (mid_row["days_left"].as_i64(), mid_row["state"].as_str()),
        (Some(4), Some("renew"))
    );
    let bad = at(&home, t1, &["device", "list", "--expiring", "soon"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));

    // Re-signing the expired client renews it; then only `mid` is left: exit 10.
    let renewed = sign(&old, t1);
    assert_eq!(renewed["existing"], false);
    assert_eq!(renewed["renewed"]["serial"], old_first["serial"]);
    let (code, report, stderr) = audit(&home, t1);
    assert_eq!(code, Some(10), "{report}\n{stderr}");
    assert_eq!(report["status"], "renew");
    assert!(
        stderr.contains("1 inside the renewal window: client `mid`"),
        "{stderr}"
    );
    assert_eq!(item(&report, "old")["state"], "ok");
    assert_eq!(item(&report, "old")["serial"], renewed["serial"]);
    sign(&mid, t1);
    let (code, report, _) = audit(&home, t1);
    assert_eq!(code, Some(0), "{report}");

    // The documented codes are in the help.
    let help = home.ok(&["audit", "--help"]);
    assert!(
        help.contains("10  something is inside its renewal window")
            && help.contains("11  something has expired"),
        "{help}"
    );
}

#[test]
fn re_runs_at_830_days_issue_fresh_certificates_for_the_same_keys() {
    let home = home_with(&site_text(free_port()));
    let t0 = real_now();
    let probe = openssl_client(&home.work(), "probe");
    let gw = home.work().join("gw");
    let csr = probe.csr.to_string_lossy().into_owned();
    let crt = probe.crt.to_string_lossy().into_owned();
    let gw_s = gw.to_string_lossy().into_owned();
    let server = ["server", "issue"];
    let sign = [
        "cert",
        "sign",
        "--csr",
        csr.as_str(),
        "--profile",
        "client",
        "--out",
        crt.as_str(),
    ];
    let emit = ["emit", "gateway", "passerelle", "--out", gw_s.as_str()];
    let first: Vec<serde_json::Value> = [&server[..], &sign[..], &emit[..]]
        .iter()
        .map(|a| json_at(&home, t0, a))
        .collect();
    // The same day: the same certificates.
    for (a, f) in [&server[..], &sign[..], &emit[..]].iter().zip(&first) {
        let again = json_at(&home, t0 + DAY, a);
        assert_eq!(again["existing"], true, "{a:?}: {again}");
        assert_eq!(again["serial"], f["serial"]);
    }

    // 830 days on, every one of them has expired (825 days): each re-run renews.
    let t1 = t0 + 830 * DAY;
    let broker_key = home.path().join("keys/broker.key");
    let key_before = std::fs::read(&broker_key).expect("key");
    let out = ok_at(&home, t1, &server);
    let old = first[0]["serial"].as_str().expect("serial");
    assert!(
        out.starts_with("renewed broker certificate")
            && out.contains(&format!(
                "renewed: the previous certificate {old} expired on"
            )),
        "{out}"
    );
    let now_broker = json_at(&home, t1, &server);
    assert_eq!(
        now_broker["existing"], true,
        "the renewal is itself idempotent"
    );
    let new = now_broker["serial"].as_str().expect("serial");
    assert_renewed(&home, "broker", old, new);
    assert_eq!(std::fs::read(&broker_key).expect("key"), key_before);
    let broker_crt = home.path().join("keys/broker.crt");
    assert_eq!(pubkey("x509", &broker_crt), pubkey("key", &broker_key));
    let text = openssl_ok(&[
        "x509",
        "-in",
        &broker_crt.to_string_lossy(),
        "-noout",
        "-serial",
    ]);
    assert!(text.to_lowercase().contains(new), "{text}");

    let signed = json_at(&home, t1, &sign);
    assert_eq!(signed["existing"], false);
    let old = first[1]["serial"].as_str().expect("serial");
    assert_eq!(signed["renewed"]["serial"], old);
    assert_renewed(
        &home,
        "probe",
        old,
        signed["serial"].as_str().expect("serial"),
    );
    assert_eq!(pubkey("x509", &probe.crt), pubkey("req", &probe.csr));

    let emitted = ok_at(&home, t1, &emit);
    let old = first[2]["serial"].as_str().expect("serial");
    assert!(
        emitted.contains("(renewed)")
            && emitted.contains(&format!(
                "renewed: the previous certificate {old} expired on"
            )),
        "{emitted}"
    );
    let again = json_at(&home, t1, &emit);
    assert_eq!(again["existing"], true);
    assert_renewed(
        &home,
        "passerelle",
        old,
        again["serial"].as_str().expect("serial"),
    );
    assert_eq!(
        pubkey("x509", &gw.join("passerelle.crt")),
        pubkey("key", &gw.join("passerelle.key"))
    );
    assert_eq!(
        pubkey("key", &gw.join("passerelle.key")),
        pubkey("key", &home.path().join("keys/passerelle.key"))
    );

    // With the CRL renewed too, the site is healthy again.
    ok_at(&home, t1, &["crl"]);
    let (code, report, stderr) = audit(&home, t1);
    assert_eq!(code, Some(0), "{report}\n{stderr}");
}

#[test]
fn site_lifetimes_set_the_validity_and_a_device_re_provisioned_later_is_renewed() {
    // A device profile of 10 days, a broker of 100 days renewed 7 days before expiry.
    let site = site_text(free_port()).replace(
        "description = \"temperature only\"",
        "description = \"temperature only\"\ncert_days = 10",
    ) + "\n[lifetimes.server]\ncert_days = 100\nrenew_before_days = 7\n";
    let home = home_with(&site);
    let t0 = real_now();
    let b = json_at(&home, t0, &["server", "issue"]);
    let validity = |id: &str, serial: &str| {
        let c = ledger(&home)
            .by_serial(serial)
            .expect("query")
            .unwrap_or_else(|| panic!("{id}: no {serial}"));
        c.not_after - c.not_before
    };
    // notBefore is backdated 5 minutes.
    assert_eq!(
        validity("broker", b["serial"].as_str().expect("serial")),
        100 * DAY
    );
    // 92 days on: not yet inside its 7-day window; 94 days on: renewed.
    assert_eq!(
        json_at(&home, t0 + 92 * DAY, &["server", "issue"])["existing"],
        true
    );
    let renewed = json_at(&home, t0 + 94 * DAY, &["server", "issue"]);
    assert_eq!(renewed["renewed"]["serial"], b["serial"], "{renewed}");

    let board = SimBoard::start(&home.work(), "b", 0, false);
    let provision = |t: i64| -> serde_json::Value {
        let v = json_at(
            &home,
            t,
            &[
                "device",
                "provision",
                "--port",
                &board.port(),
                "--id",
                "cuisine-1",
                "--profile",
                "thermometre",
                "--lock",
            ],
        );
        v["boards"][0]["result"].clone()
    };
    let first = provision(t0);
    let s0 = first["certificate"].as_str().expect("serial").to_string();
    assert_eq!(validity("cuisine-1", &s0), 10 * DAY);
    // Day 5: before two thirds of 10 days, the same certificate.
    let same = provision(t0 + 5 * DAY);
    assert_eq!(same["status"], "verified", "{same}");
    assert_eq!(same["certificate"], s0.as_str());
    // Day 8: past its renewal point: a new certificate for the chip's key.
    let s1 = provision(t0 + 8 * DAY)["certificate"]
        .as_str()
        .expect("serial")
        .to_string();
    assert_renewed(&home, "cuisine-1", &s0, &s1);
    // Day 830: long expired (an offline board brought back to the bench): renewed again.
    let s2 = provision(t0 + 830 * DAY)["certificate"]
        .as_str()
        .expect("serial")
        .to_string();
    assert_renewed(&home, "cuisine-1", &s1, &s2);
    let l = ledger(&home);
    let public = l
        .identity("cuisine-1")
        .expect("query")
        .expect("identity")
        .attrs["public_key"]
        .as_str()
        .expect("chip key")
        .to_string();
    for s in [&s0, &s1, &s2] {
        let c = l.by_serial(s).expect("query").expect("cert");
        let f = home.work().join("c.der");
        std::fs::write(&f, &c.der).expect("write");
        let p = openssl_ok(&[
            "x509",
            "-inform",
            "DER",
            "-in",
            &f.to_string_lossy(),
            "-noout",
            "-pubkey",
        ]);
        let pf = home.work().join("p.pem");
        std::fs::write(&pf, p).expect("write");
        let der = std::process::Command::new("openssl")
            .args([
                "pkey",
                "-pubin",
                "-in",
                &pf.to_string_lossy(),
                "-outform",
                "DER",
            ])
            .output()
            .expect("openssl")
            .stdout;
        assert_eq!(
            hex::encode(&der[der.len() - 64..]),
            public,
            "{s}: the chip's key"
        );
    }
    let rows = json_at(
        &home,
        t0 + 830 * DAY,
        &["device", "list", "--expiring", "30d"],
    );
    let row = rows
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["id"] == "cuisine-1")
        .unwrap_or_else(|| panic!("{rows}"));
    assert_eq!(row["days_left"], 9, "{row}");
}

#[test]
fn lifetime_settings_out_of_range_are_refused_with_the_field_named() {
    for (extra, field) in [
        ("cert_days = 0", "cert_days"),
        (
            "cert_days = 10\nrenew_before_days = 10",
            "renew_before_days",
        ),
        ("renew_at = \"3/2\"", "renew_at"),
        ("renew_at = \"2/3\"\nrenew_before_days = 3", "renew_at"),
    ] {
        let site = format!("{}\n[lifetimes.gateway]\n{extra}\n", site_text(1883));
        let home = Home::new();
        let f = home.work().join("site.toml");
        std::fs::write(&f, site).expect("site");
        let o = home.run(&["init", "--site", &f.to_string_lossy()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{extra}: {err}");
        assert!(
            err.contains(&format!("lifetimes.gateway.{field}")),
            "{extra}: {err}"
        );
        assert!(
            !home.path().join("ledger.sqlite").exists(),
            "nothing created"
        );
    }
}

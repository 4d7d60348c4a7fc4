//! Commands run at the same time on one home: every one succeeds, and the ledger and the files
//! it materialises are consistent afterwards (one certificate per request, distinct serials,
//! distinct and increasing CRL numbers, the newest CRL in every place mosquitto reads it).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Stdio};

use common::*;

/// Starts `provisioner --json ARGS` without waiting.
fn spawn(home: &Home, args: &[String]) -> Child {
    let mut a = vec!["--json".to_string()];
    a.extend_from_slice(args);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    home.cmd(&a)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start provisioner")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(ToString::to_string).collect()
}

/// The CRL number of a PEM CRL, as openssl reads it.
fn openssl_crl_number(path: &std::path::Path) -> i64 {
    let out = openssl_ok(&[
        "crl",
        "-in",
        &path.to_string_lossy(),
        "-noout",
        "-crlnumber",
    ]);
    let hex = out
        .trim()
        .trim_start_matches("crlNumber=")
        .trim_start_matches("0x");
    i64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("crlNumber `{out}`: {e}"))
}

fn temporaries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

#[test]
fn twenty_mixed_commands_at_once_on_one_home_all_succeed_and_leave_a_consistent_ledger() {
    let home = Home::with_broker();
    let broker_dir = home.work().join("broker");
    home.emit_broker(&broker_dir, Some(free_port()), &[]);
    // A client to revoke while everything else runs.
    home.client("old-probe", &[]);
    let old = home.json(&["device", "show", "old-probe"]);
    let old_serial = old["certificates"][0]["serial"]
        .as_str()
        .expect("serial")
        .to_string();

    let same = openssl_client(&home.work(), "same-probe");
    let same_csr = same.csr.to_string_lossy().into_owned();
    let same_out = same.crt.to_string_lossy().into_owned();
    let distinct: Vec<Client> = (0..4)
        .map(|i| openssl_client(&home.work(), &format!("probe-{i}")))
        .collect();

    let mut jobs: Vec<(&str, Vec<String>)> = Vec::new();
    for _ in 0..5 {
        jobs.push(("renew", strings(&["crl", "--renew"])));
    }
    for _ in 0..2 {
        jobs.push(("crl", strings(&["crl"])));
    }
    jobs.push(("revoke", strings(&["device", "revoke", "old-probe"])));
    for _ in 0..4 {
        // Identical requests, even to the same output file.
        jobs.push((
            "same",
            strings(&[
                "cert",
                "sign",
                "--csr",
                &same_csr,
                "--profile",
                "client",
                "--out",
                &same_out,
            ]),
        ));
    }
    for c in &distinct {
        jobs.push((
            "distinct",
            strings(&[
                "cert",
                "sign",
                "--csr",
                &c.csr.to_string_lossy(),
                "--profile",
                "client",
                "--out",
                &c.crt.to_string_lossy(),
            ]),
        ));
    }
    for _ in 0..2 {
        jobs.push(("list", strings(&["device", "list"])));
    }
    for _ in 0..2 {
        // A broker never issued before: both runs also race to create its key.
        jobs.push((
            "server",
            strings(&["server", "issue", "--id", "broker-2", "--dns", "b2.lan"]),
        ));
    }
    assert_eq!(jobs.len(), 20);

    let children: Vec<(&str, Vec<String>, Child)> = jobs
        .into_iter()
        .map(|(kind, args)| {
            let child = spawn(&home, &args);
            (kind, args, child)
        })
        .collect();
    let mut results: HashMap<&str, Vec<serde_json::Value>> = HashMap::new();
    let mut failures = Vec::new();
    for (kind, args, child) in children {
        let out = child.wait_with_output().expect("wait for provisioner");
        if !out.status.success() {
            failures.push(format!(
                "provisioner {args:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        results.entry(kind).or_default().push(v);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // One certificate for the identical request: same serial and PEM in every output, signed
    // once (the others found it), and that is what the shared --out file holds.
    let same_runs = &results["same"];
    let same_serial = same_runs[0]["serial"].as_str().expect("serial").to_string();
    for r in same_runs {
        assert_eq!(r["serial"].as_str(), Some(same_serial.as_str()), "{r}");
        assert_eq!(r["pem"], same_runs[0]["pem"], "{r}");
    }
    let signed = same_runs.iter().filter(|r| r["existing"] == false).count();
    assert_eq!(signed, 1, "identical requests signed {signed} times");
    assert_eq!(
        std::fs::read_to_string(&same.crt).expect("--out file"),
        same_runs[0]["pem"].as_str().expect("pem")
    );
    let shown = home.json(&["device", "show", "same-probe"]);
    assert_eq!(
        shown["certificates"].as_array().map(Vec::len),
        Some(1),
        "{shown}"
    );

    // The broker: one key, one certificate, and the certificate is for that key.
    let server_runs = &results["server"];
    assert_eq!(server_runs[0]["serial"], server_runs[1]["serial"]);
    assert_eq!(
        server_runs
            .iter()
            .filter(|r| r["existing"] == false)
            .count(),
        1
    );
    let key = home.path().join("keys/broker-2.key");
    let crt = home.path().join("keys/broker-2.crt");
    assert_eq!(
        openssl_ok(&["pkey", "-in", &key.to_string_lossy(), "-pubout"]),
        openssl_ok(&["x509", "-in", &crt.to_string_lossy(), "-noout", "-pubkey"]),
        "broker-2.crt does not certify broker-2.key"
    );

    // Distinct serials across everything issued.
    let mut serials = BTreeSet::new();
    serials.insert(same_serial.clone());
    serials.insert(
        server_runs[0]["serial"]
            .as_str()
            .expect("serial")
            .to_string(),
    );
    for r in &results["distinct"] {
        assert_eq!(r["existing"], false, "{r}");
        serials.insert(r["serial"].as_str().expect("serial").to_string());
    }
    assert_eq!(serials.len(), 6, "{serials:?}");
    for c in &distinct {
        let s = openssl_ok(&["x509", "-in", &c.crt.to_string_lossy(), "-noout", "-serial"]);
        let s = s.trim().trim_start_matches("serial=").to_lowercase();
        assert!(serials.contains(&s), "{} holds {s}", c.crt.display());
    }

    // Every forced renewal signed its own CRL: distinct numbers.
    let mut renewed: Vec<i64> = results["renew"]
        .iter()
        .map(|r| {
            assert_eq!(r["renewed"], true, "{r}");
            r["number"].as_i64().expect("number")
        })
        .collect();
    renewed.sort_unstable();
    renewed.dedup();
    assert_eq!(
        renewed.len(),
        5,
        "two renewals share a CRL number: {renewed:?}"
    );
    let revoked = &results["revoke"][0];
    let revoke_number = revoked["crl"]["number"].as_i64().expect("number");
    assert!(!renewed.contains(&revoke_number), "{revoked}");
    let newest = results["crl"]
        .iter()
        .filter_map(|r| r["number"].as_i64())
        .chain(renewed.iter().copied())
        .chain([revoke_number])
        .max()
        .expect("numbers");

    // The files hold the newest CRL, openssl reads it, and it lists the revoked client.
    let home_crl = home.path().join("crl.pem");
    assert_eq!(openssl_crl_number(&home_crl), newest);
    assert_eq!(
        std::fs::read(&home_crl).expect("home crl"),
        std::fs::read(broker_dir.join("crl.pem")).expect("broker crl"),
        "the broker directory holds another CRL than the home"
    );
    let text = openssl_ok(&["crl", "-in", &home_crl.to_string_lossy(), "-noout", "-text"]);
    assert!(
        text.to_lowercase().contains(&old_serial),
        "the final CRL lacks {old_serial}:\n{text}"
    );
    // The next CRL continues the sequence.
    let next = home.json(&["crl", "--renew"]);
    assert_eq!(next["number"].as_i64(), Some(newest + 1), "{next}");

    // Every listing parsed; the ledger knows every identity once.
    for l in &results["list"] {
        assert!(l.is_array(), "{l}");
    }
    let ids: Vec<String> = home
        .json(&["device", "list"])
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|r| r["id"].as_str().map(ToString::to_string))
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    for id in [
        "broker",
        "broker-2",
        "old-probe",
        "same-probe",
        "probe-0",
        "probe-3",
    ] {
        assert!(ids.iter().any(|i| i == id), "{id} missing from {ids:?}");
    }

    // No temporary left behind anywhere a command wrote.
    for dir in [
        home.path(),
        home.path().join("ca"),
        home.path().join("keys"),
        home.work(),
        broker_dir,
    ] {
        assert_eq!(
            temporaries(&dir),
            Vec::<String>::new(),
            "in {}",
            dir.display()
        );
    }
}

#[test]
fn two_inits_at_once_on_an_empty_home_agree_on_one_ca() {
    let home = Home::new();
    let children: Vec<Child> = (0..3).map(|_| spawn(&home, &strings(&["init"]))).collect();
    let mut reports = Vec::new();
    for child in children {
        let out = child.wait_with_output().expect("wait for init");
        assert!(
            out.status.success(),
            "init failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("init json");
        reports.push(v["ca"].clone());
    }
    let created = reports.iter().filter(|r| r["created"] == true).count();
    assert_eq!(created, 1, "{reports:?}");
    for r in &reports {
        assert_eq!(
            r["root_fingerprint"], reports[0]["root_fingerprint"],
            "{reports:?}"
        );
    }
    // The key on disk is the one the root certificate certifies, and the CA signs.
    let key = home.path().join("ca/root.key");
    let crt = home.path().join("ca/root.crt");
    require("openssl");
    // The passphrase through the environment, not argv.
    let out = std::process::Command::new("openssl")
        .args([
            "pkey",
            "-in",
            &key.to_string_lossy(),
            "-passin",
            "env:CA_PASS",
            "-pubout",
        ])
        .env("CA_PASS", PASSPHRASE)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pubkey = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        pubkey,
        openssl_ok(&["x509", "-in", &crt.to_string_lossy(), "-noout", "-pubkey"])
    );
    home.ok(&["crl", "--renew"]);
    assert!(temporaries(&home.path().join("ca")).is_empty());
}

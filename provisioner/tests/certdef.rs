//! Issue 19: the whole identity in the chip. A compressible profile is refused when it
//! cannot be compressed, `emit certdef` writes definitions that compile against
//! cryptoauthlib's headers, and `device provision` writes the compressed certificates and
//! rebuilds them from the chip alone.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Home, compressible_site_text, cryptoauthlib_sources};

fn init_compressible(home: &Home) {
    let site = home.work().join("site.toml");
    std::fs::write(&site, compressible_site_text(common::free_port())).expect("site");
    home.ok(&["init", "--site", &site.to_string_lossy()]);
}

/// `emit certdef --profile coffre` into WORK/certdef: the directory and the JSON report.
fn emit_certdef(home: &Home) -> (std::path::PathBuf, serde_json::Value) {
    let out = home.work().join("certdef");
    let dir = out.to_string_lossy().into_owned();
    let report = home.json(&["emit", "certdef", "--profile", "coffre", "--out", &dir]);
    (out, report)
}

#[test]
fn a_profile_that_cannot_be_compressed_is_refused_by_site_check_and_init_with_the_reason() {
    let home = Home::new();
    let good = compressible_site_text(1883);
    let cases = [
        (
            good.replace("cert_days = 730", "cert_days = 400"),
            "profiles.coffre.cert_days",
            "whole years",
        ),
        (
            good.replace("id_length = 8\n", ""),
            "profiles.coffre.compressed",
            "variable-length subject",
        ),
    ];
    for (i, (text, field, reason)) in cases.iter().enumerate() {
        let file = home.work().join(format!("bad-{i}.toml"));
        std::fs::write(&file, text).expect("site");
        for args in [
            vec!["site", "check", &*file.to_string_lossy()],
            vec!["init", "--site", &*file.to_string_lossy()],
        ] {
            let out = home.run(&args.iter().map(|s| &**s).collect::<Vec<_>>());
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
            assert!(
                err.contains(field) && err.contains(reason),
                "{args:?}: {err}"
            );
        }
        assert!(
            !home.path().join("ledger.sqlite").exists(),
            "nothing created"
        );
    }
    let file = home.work().join("good.toml");
    std::fs::write(&file, &good).expect("site");
    home.ok(&["site", "check", &file.to_string_lossy()]);
}

/// The keys `atcacert_def_t` names, in the list.
const DEF_KEYS: &[&str] = &[
    "type",
    "comp_cert_dev_loc",
    "private_key_slot",
    "template_id",
    "chain_id",
    "std_sig_size",
    "sn_source",
    "cert_sn_dev_loc",
    "issue_date_format",
    "expire_date_format",
    "tbs_cert_loc",
    "expire_years",
    "public_key_dev_loc",
    "std_cert_elements",
    "cert_elements",
    "cert_template",
    "ca_cert_def",
];

/// Compiles `c` with gcc against cryptoauthlib's headers (warnings are errors).
pub fn compile_against_cryptoauthlib(c: &Path, dir: &Path) {
    let lib = cryptoauthlib_sources().join("lib");
    // What cmake writes for an ATECC508A build with the kit HAL (no AES-GCM, which would
    // need the GFM unit of other parts).
    let cfg = dir.join("cfg");
    std::fs::create_dir_all(&cfg).expect("cfg");
    std::fs::write(
        cfg.join("atca_config.h"),
        "#define ATCA_ATECC508A_SUPPORT\n#define ATCA_HAL_KIT_UART\n#define ATCAB_AES_GCM_EN 0\n",
    )
    .expect("atca_config.h");
    let out = Command::new("gcc")
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-c", "-o"])
        .arg(dir.join("certdef.o"))
        .arg("-I")
        .arg(&cfg)
        .arg("-I")
        .arg(&lib)
        .arg(c)
        .output()
        .expect("gcc");
    assert!(
        out.status.success(),
        "{} does not compile against cryptoauthlib:\n{}",
        c.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn emit_certdef_writes_c_that_compiles_against_cryptoauthlib_and_json_named_as_atcacert_def_t() {
    let home = Home::new();
    init_compressible(&home);
    let (out, report) = emit_certdef(&home);
    assert_eq!(report["template_id"], 2);
    let text = std::fs::read_to_string(out.join("cert_def_coffre.json")).expect("json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("parse");
    // In the file, the fields come in the struct's order.
    let at = |k: &str| text.find(&format!("\"{k}\":")).expect(k);
    assert!(DEF_KEYS.windows(2).all(|w| at(w[0]) < at(w[1])), "{text}");
    let signer = &json["ca_cert_def"];
    for def in [&json, signer] {
        let keys: Vec<&str> = def
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut names = DEF_KEYS.to_vec();
        names.sort_unstable();
        assert_eq!(keys, names, "keys are atcacert_def_t's field names");
        assert_eq!(def["type"], 0, "CERTTYPE_X509");
        assert_eq!(def["sn_source"], 0xA, "SNSRC_PUB_KEY_HASH");
        assert_eq!(def["issue_date_format"], 1, "DATEFMT_RFC5280_UTC");
        assert_eq!(def["std_cert_elements"].as_array().map(Vec::len), Some(8));
        for loc in ["comp_cert_dev_loc", "public_key_dev_loc", "cert_sn_dev_loc"] {
            let k: Vec<&String> = def[loc].as_object().expect(loc).keys().collect();
            assert_eq!(k, ["count", "is_genkey", "offset", "slot", "zone"]);
        }
        let template = hex::decode(def["cert_template"].as_str().expect("hex")).expect("hex");
        assert_eq!(template[0], 0x30, "a DER certificate");
    }
    // The device's certificate in slot 10, its key in slot 0 (GenKey); the signer's in 12,
    // its public key in 11; the id and the chip serial (hex) are further elements.
    assert_eq!(json["comp_cert_dev_loc"]["slot"], 10);
    assert_eq!(json["public_key_dev_loc"]["is_genkey"], 1);
    assert_eq!(signer["comp_cert_dev_loc"]["slot"], 12);
    assert_eq!(signer["public_key_dev_loc"]["slot"], 11);
    assert_eq!(signer["public_key_dev_loc"]["count"], 72);
    assert_eq!(signer["template_id"], 3);
    assert_eq!(signer["ca_cert_def"], serde_json::Value::Null);
    let ids: Vec<&str> = json["cert_elements"]
        .as_array()
        .expect("elements")
        .iter()
        .map(|e| e["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["device_id", "chip_sn_0_3", "chip_sn_4_8"]);
    // The C definition compiles against cryptoauthlib's own headers.
    let c = out.join("cert_def_coffre.c");
    let text = std::fs::read_to_string(&c).expect("c");
    assert!(
        text.contains("const atcacert_def_t g_cert_def_coffre_device = {"),
        "{text}"
    );
    assert!(
        text.contains(".ca_cert_def = &g_cert_def_coffre_signer"),
        "{text}"
    );
    compile_against_cryptoauthlib(&c, &home.work());
    // A profile without [compressed] has no definition.
    let out2 = home.run(&[
        "emit",
        "certdef",
        "--profile",
        "climat",
        "--out",
        &out.to_string_lossy(),
    ]);
    assert_eq!(
        out2.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out2.stderr)
    );
}

/// Microchip's cryptoauthlib (the conformance test's venv), run on `port` with the emitted
/// JSON definition: the signer's and the device's certificates as it rebuilds them.
fn cryptoauthlib_read_certs(port: &str, definition: &Path, root: &Path) -> (Vec<u8>, Vec<u8>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware/tests/cryptoauthlib");
    let setup = Command::new("bash")
        .arg(dir.join("setup-venv.sh"))
        .output()
        .expect("setup-venv.sh");
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let venv = String::from_utf8_lossy(&setup.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string();
    let out = Command::new(format!("{venv}/bin/python"))
        .env("LD_PRELOAD", format!("{venv}/shim/dtr_shim.so"))
        .arg(dir.join("read_certs.py"))
        .arg(port)
        .arg(definition)
        .arg(root)
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "read_certs.py: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = |what: &str| {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{what} ")))
            .expect(what);
        hex::decode(line.trim()).expect("hex")
    };
    (cert("signer"), cert("device"))
}

/// `--json device provision --port PORT --id ID --profile coffre EXTRA...`.
fn provision_coffre(home: &Home, port: &str, id: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--json", "device", "provision", "--port", port, "--id", id];
    args.extend_from_slice(&["--profile", "coffre"]);
    args.extend_from_slice(extra);
    home.run(&args)
}

fn pem(der: &[u8]) -> String {
    ca::authority::cert_pem(der)
}

#[test]
fn a_compressible_device_carries_its_identity_in_the_chip_and_cryptoauthlib_rebuilds_it_byte_for_byte()
 {
    let home = Home::new();
    init_compressible(&home);
    let board = common::SimBoard::start(&home.work(), "b", 115_200, false);
    let port = board.port();
    let run = |extra: &[&str]| {
        let out = provision_coffre(&home, &port, "salon-01", extra);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let steps = |v: &serde_json::Value| -> Vec<(String, String, String)> {
        v["boards"][0]["result"]["steps"]
            .as_array()
            .unwrap_or_else(|| panic!("no steps in {v}"))
            .iter()
            .map(|s| {
                (
                    s["step"].as_str().unwrap_or("").into(),
                    s["action"].as_str().unwrap_or("").into(),
                    s["detail"].as_str().unwrap_or("").into(),
                )
            })
            .collect()
    };
    // An id of another length is refused before the chip is touched.
    let short = provision_coffre(&home, &port, "salon-1", &["--lock"]);
    let v: serde_json::Value = serde_json::from_slice(&short.stdout).expect("json");
    let err = v["boards"][0]["error"].as_str().unwrap_or_default();
    assert!(err.contains("exactly 8"), "{v}");
    assert!(v["boards"][0]["result"].is_null(), "no step ran: {v}");
    let first = run(&["--lock"]);
    let s = steps(&first);
    let find = |s: &[(String, String, String)], name: &str| {
        s.iter()
            .find(|x| x.0 == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {s:?}"))
    };
    let identity = find(&s, "chip identity");
    assert_eq!(identity.1, "done", "{identity:?}");
    assert!(identity.2.contains("byte for byte"), "{identity:?}");
    assert_eq!(find(&s, "identity lock").1, "done");
    // A second run finds everything in place.
    let again = steps(&run(&["--lock"]));
    assert_eq!(find(&again, "chip identity").1, "verified");
    assert_eq!(find(&again, "identity lock").1, "verified");

    // Only the emitted definition and the chip: cryptoauthlib rebuilds both certificates.
    let (out, _) = emit_certdef(&home);
    let root = home.path().join("ca/root.crt");
    let (signer, device) =
        cryptoauthlib_read_certs(&port, &out.join("cert_def_coffre.json"), &root);
    let store = ca::Store::open(&ca::Layout::new(home.path())).expect("store");
    let issued = store.ledger.certificates_of("salon-01").expect("ledger");
    assert_eq!(issued.len(), 1);
    assert_eq!(
        device, issued[0].der,
        "the device certificate, byte for byte"
    );
    assert_eq!(
        signer,
        store.issuer_der().expect("issuer"),
        "the signer certificate, byte for byte"
    );
    // And the chain they make is valid for openssl.
    let (s, d) = (
        home.work().join("signer.pem"),
        home.work().join("device.pem"),
    );
    std::fs::write(&s, pem(&signer)).expect("signer");
    std::fs::write(&d, pem(&device)).expect("device");
    common::openssl_ok(&[
        "verify",
        "-x509_strict",
        "-CAfile",
        &root.to_string_lossy(),
        "-untrusted",
        &s.to_string_lossy(),
        &d.to_string_lossy(),
    ]);
    // In the chip: the four slots, each locked.
    let chip = board.stop_and_open_chip();
    let zone = chip.config_zone();
    for slot in [10, 11, 12, 13] {
        assert!(zone.is_slot_locked(slot), "slot {slot} locked");
    }
    assert_eq!(chip.slot(13).map(|s| &s[..8]), Some(&b"salon-01"[..]));
    assert_eq!(
        chip.slot(10).map(|s| s[69]),
        Some(0x20),
        "template 2, chain 0"
    );
}

#[test]
fn a_compressible_profile_over_mongoose_os_is_refused_before_the_chip_is_touched() {
    let home = Home::new();
    init_compressible(&home);
    let board =
        common::SimBoard::start_with(&home.work(), "m", 115_200, false, &["--transport", "mos"]);
    let port = board.port();
    let out = provision_coffre(&home, &port, "salon-01", &["--transport", "mos", "--lock"]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let err = v["boards"][0]["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("identity in the chip") && err.contains("--transport kit"),
        "{v}"
    );
    assert!(
        !board.stop_and_open_chip().config_zone().is_config_locked(),
        "chip untouched"
    );
}

#[test]
fn a_compressed_profile_added_to_a_home_whose_issuing_ca_is_not_compressible_is_refused_before_the_chip()
 {
    let home = Home::new();
    let site = home.work().join("site.toml");
    std::fs::write(&site, common::site_text(common::free_port())).expect("site");
    home.ok(&["init", "--issuing-ca", "--site", &site.to_string_lossy()]);
    // The operator edits the site in place and adds the compressed profile.
    let stored = home.path().join("site.toml");
    let text = std::fs::read_to_string(&stored).expect("stored site") + common::COFFRE_PROFILE;
    std::fs::write(&stored, text).expect("edit");
    let board = common::SimBoard::start(&home.work(), "n", 115_200, false);
    let out = provision_coffre(&home, &board.port(), "salon-01", &["--lock"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let err = v["boards"][0]["error"].as_str().unwrap_or_default();
    assert!(err.contains("is not compressible"), "{v}");
    assert!(
        !board.stop_and_open_chip().config_zone().is_config_locked(),
        "chip untouched"
    );
}

#[test]
fn the_crl_of_a_compressible_issuing_ca_names_its_key_so_openssl_finds_it_for_every_leaf() {
    let home = Home::new();
    init_compressible(&home);
    let out = home.json(&["server", "issue", "--dns", "localhost", "--ip", "127.0.0.1"]);
    let leaf = out["certificate"]
        .as_str()
        .expect("certificate")
        .to_string();
    home.ok(&["crl", "--renew"]);
    let path = |p: &str| home.path().join(p).to_string_lossy().into_owned();
    let (root, issuing, crl) = (path("ca/root.crt"), path("ca/issuing.crt"), path("crl.pem"));
    // The CRL's authority key id is the issuing CA's subject key id (atcacert's SHA-1 of
    // the key), not another hash of the same key...
    let skid = common::openssl_ok(&[
        "x509",
        "-in",
        &issuing,
        "-noout",
        "-ext",
        "subjectKeyIdentifier",
    ]);
    let id = skid.lines().last().expect("skid").trim().to_string();
    let text = common::openssl_ok(&["crl", "-in", &crl, "-noout", "-text"]);
    assert!(
        id.len() == 59 && text.contains(&id),
        "SKID {id} not in the CRL:\n{text}"
    );
    // ...so OpenSSL (as mosquitto with `crlfile` runs it) finds the CRL for the CA's leaves;
    // with another key id it said "unable to get certificate CRL" and mosquitto refused
    // every client of the home.
    let verified = common::openssl_ok(&[
        "verify",
        "-crl_check",
        "-CAfile",
        &root,
        "-untrusted",
        &issuing,
        "-CRLfile",
        &crl,
        &leaf,
    ]);
    assert!(verified.contains("OK"), "{verified}");
}

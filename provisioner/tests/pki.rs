//! The CA as an operator meets it: strict certificates, an encrypted private key, crash-safe
//! issuance, and bad input that changes nothing.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::*;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

fn verify(ca: &str, purpose: &str, cert: &str, untrusted: Option<&str>) -> std::process::Output {
    let mut args = vec!["verify", "-x509_strict", "-purpose", purpose, "-CAfile", ca];
    if let Some(u) = untrusted {
        args.extend_from_slice(&["-untrusted", u]);
    }
    args.push(cert);
    openssl(&args)
}

#[test]
fn every_profile_passes_openssl_strict_verification_with_its_purpose() {
    let home = Home::with_broker();
    let c = home.client("probe-1", &[]);
    let root = home.path().join("ca/root.crt");
    let root = root.to_string_lossy();
    let broker: serde_json::Value =
        home.json(&["server", "issue", "--dns", "localhost", "--ip", "127.0.0.1"]);
    assert_eq!(
        broker["existing"], true,
        "re-issuing with the same names must reuse the certificate"
    );
    let server = broker["certificate"].as_str().expect("path").to_string();
    let o = verify(&root, "sslserver", &server, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = verify(&root, "sslclient", &c.crt.to_string_lossy(), None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The profiles keep their purpose: a client certificate is no server certificate.
    assert!(
        !verify(&root, "sslserver", &c.crt.to_string_lossy(), None)
            .status
            .success()
    );
    assert!(!verify(&root, "sslclient", &server, None).status.success());
    // A CSR that asks for server names gets them only with the server profile.
    let dir = home.work();
    let key = dir.join("srv.key");
    let csr = dir.join("srv.csr");
    openssl_ok(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &key.to_string_lossy(),
        "-subj",
        "/CN=mqtt.maison.lan",
        "-addext",
        "subjectAltName=DNS:mqtt.maison.lan,IP:10.0.0.2",
        "-out",
        &csr.to_string_lossy(),
    ]);
    let out = dir.join("srv.crt");
    home.ok(&[
        "cert",
        "sign",
        "--csr",
        &csr.to_string_lossy(),
        "--profile",
        "server",
        "--out",
        &out.to_string_lossy(),
    ]);
    let o = verify(&root, "sslserver", &out.to_string_lossy(), None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = openssl_ok(&[
        "x509",
        "-in",
        &out.to_string_lossy(),
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    assert!(
        text.contains("DNS:mqtt.maison.lan") && text.contains("IP Address:10.0.0.2"),
        "{text}"
    );
}

#[test]
fn an_issuing_ca_chain_verifies_strictly() {
    let home = Home::new();
    home.ok(&["init", "--issuing-ca"]);
    home.ok(&["server", "issue", "--dns", "localhost"]);
    let c = home.client("probe-1", &[]);
    let root = home.path().join("ca/root.crt");
    let issuing = home.path().join("ca/issuing.crt");
    // --out holds the leaf followed by the issuing CA.
    let o = verify(
        &root.to_string_lossy(),
        "sslclient",
        &c.crt.to_string_lossy(),
        Some(&issuing.to_string_lossy()),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = verify(
        &root.to_string_lossy(),
        "sslclient",
        &c.crt.to_string_lossy(),
        None,
    );
    assert!(
        !o.status.success(),
        "a leaf of the issuing CA must need the intermediate"
    );
}

#[test]
fn rustls_accepts_the_broker_certificate_for_its_dns_name_and_its_ip() {
    let home = Home::with_broker();
    let root = CertificateDer::from_pem_file(home.path().join("ca/root.crt")).expect("root");
    let leaf = CertificateDer::from_pem_file(home.path().join("keys/broker.crt")).expect("leaf");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).expect("add root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("verifier");
    for name in ["localhost", "127.0.0.1"] {
        let sn = ServerName::try_from(name).expect("name");
        verifier
            .verify_server_cert(&leaf, &[], &sn, &[], UnixTime::now())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let other = ServerName::try_from("broker.elsewhere").expect("name");
    assert!(
        verifier
            .verify_server_cert(&leaf, &[], &other, &[], UnixTime::now())
            .is_err()
    );
}

#[test]
fn the_ca_key_is_encrypted_pkcs8_private_to_its_owner_and_refused_when_exposed() {
    let home = Home::with_broker();
    let key = home.path().join("ca/root.key");
    let text = std::fs::read_to_string(&key).expect("key");
    assert!(
        text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(&key).expect("meta").permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(home.path())
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(home.path().join("ledger.sqlite"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // openssl reads it with the passphrase, and only with it.
    let pass = format!("pass:{PASSPHRASE}");
    let ok = openssl(&[
        "pkey",
        "-in",
        &key.to_string_lossy(),
        "-passin",
        &pass,
        "-noout",
        "-text",
    ]);
    assert!(
        ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains("prime256v1"),
        "{ok:?}"
    );
    let wrong = openssl(&[
        "pkey",
        "-in",
        &key.to_string_lossy(),
        "-passin",
        "pass:not the passphrase",
        "-noout",
    ]);
    assert!(!wrong.status.success());
    // The passphrase never appears in output.
    let out = home.run(&["-vv", "crl", "--renew"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(PASSPHRASE)
            && !String::from_utf8_lossy(&out.stderr).contains(PASSPHRASE)
    );
    // A key others can read is refused, with the fix.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let o = home.run(&["crl", "--renew"]);
    assert_eq!(o.status.code(), Some(4));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("chmod 600") && err.contains("root.key"),
        "{err}"
    );
    // A wrong passphrase: exit 4, nothing changed.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let before = home.json(&["device", "list"]);
    let o = home
        .cmd(&["crl", "--renew"])
        .env("PROVISIONER_PASSPHRASE", "not the passphrase")
        .output()
        .expect("run");
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong passphrase"));
    assert_eq!(home.json(&["device", "list"]), before);
    // The passphrase file must be private too.
    let pf = home.work().join("pass.txt");
    std::fs::write(&pf, format!("{PASSPHRASE}\n")).expect("write");
    std::fs::set_permissions(&pf, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let o = home
        .cmd(&["--passphrase-file", &pf.to_string_lossy(), "crl"])
        .env_remove("PROVISIONER_PASSPHRASE")
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(4));
    std::fs::set_permissions(&pf, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let o = home
        .cmd(&["--passphrase-file", &pf.to_string_lossy(), "crl"])
        .env_remove("PROVISIONER_PASSPHRASE")
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_crash_at_any_step_of_an_issuance_then_the_same_command_leaves_exactly_one_certificate() {
    for point in [
        "issue-after-sign",
        "issue-after-ledger",
        "write-before-rename",
    ] {
        let home = Home::with_broker();
        let c = openssl_client(&home.work(), "probe-1");
        let args = [
            "cert",
            "sign",
            "--csr",
            &c.csr.to_string_lossy(),
            "--profile",
            "client",
            "--out",
            &c.crt.to_string_lossy(),
        ];
        let crashed = home
            .cmd(&args)
            .env("PROVISIONER_CRASH_AT", point)
            .output()
            .expect("run");
        assert!(
            !crashed.status.success(),
            "{point}: the injected crash did not happen"
        );
        home.ok(&args);
        home.ok(&args); // and once more: idempotent
        let certs = home.json(&["device", "show", "probe-1"]);
        let serials: Vec<&str> = certs["certificates"]
            .as_array()
            .expect("certs")
            .iter()
            .filter_map(|c| c["serial"].as_str())
            .collect();
        assert_eq!(serials.len(), 1, "{point}: {certs}");
        let all = home.files();
        assert!(
            all.iter().all(|f| !f.ends_with(".tmp")),
            "{point}: temporary left: {all:?}"
        );
        let tmp_out = std::fs::read_dir(home.work())
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .count();
        assert_eq!(tmp_out, 0, "{point}: temporary left beside --out");
        // The file given with --out holds exactly the certificate the ledger recorded.
        let serial = openssl_ok(&["x509", "-in", &c.crt.to_string_lossy(), "-noout", "-serial"]);
        assert_eq!(
            serial.trim().trim_start_matches("serial=").to_lowercase(),
            serials[0],
            "{point}"
        );
        let list = home.json(&["device", "list"]);
        assert_eq!(list.as_array().map(Vec::len), Some(2), "{point}: {list}");
    }
}

#[test]
fn a_crash_during_init_then_init_again_completes_the_same_ca() {
    for point in ["init-after-key", "init-after-ledger"] {
        let home = Home::new();
        let o = home
            .cmd(&["init"])
            .env("PROVISIONER_CRASH_AT", point)
            .output()
            .expect("run");
        assert!(!o.status.success(), "{point}");
        let key_before =
            std::fs::read(home.path().join("ca/root.key")).expect("key written before the commit");
        let r = home.json(&["init"]);
        assert_eq!(
            std::fs::read(home.path().join("ca/root.key")).expect("key"),
            key_before,
            "{point}: key replaced"
        );
        let fp = r["ca"]["root_fingerprint"]
            .as_str()
            .expect("fp")
            .to_string();
        let again = home.json(&["init"]);
        assert_eq!(again["ca"]["created"], false);
        assert_eq!(again["ca"]["root_fingerprint"].as_str(), Some(fp.as_str()));
        assert!(home.files().iter().all(|f| !f.ends_with(".tmp")));
    }
}

#[test]
fn serials_are_random_positive_and_at_least_64_bits() {
    let home = Home::with_broker();
    let mut seen = std::collections::HashSet::new();
    for i in 0..5 {
        let c = home.client(&format!("probe-{i}"), &[]);
        let s = openssl_ok(&["x509", "-in", &c.crt.to_string_lossy(), "-noout", "-serial"]);
        let hex = s.trim().trim_start_matches("serial=").to_string();
        assert!(hex.len() >= 16, "serial {hex} shorter than 64 bits");
        assert!(
            u8::from_str_radix(&hex[..2], 16).expect("hex") < 0x80,
            "negative serial {hex}"
        );
        assert!(seen.insert(hex));
    }
}

#[test]
fn bad_input_is_refused_with_a_reason_and_changes_nothing() {
    let home = Home::with_broker();
    let before = home.files();
    let ledger_before = std::fs::read(home.path().join("ledger.sqlite")).expect("ledger");
    let wal_before = std::fs::read(home.path().join("ledger.sqlite-wal")).unwrap_or_default();
    let dir = home.work();
    let check = |args: &[&str], code: i32, needle: &str| {
        let o = home.run(args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected `{needle}` in: {err}"
        );
    };
    // A CSR whose signature does not verify (one byte of the subject changed).
    let c = openssl_client(&dir, "probe-9");
    let der = dir.join("probe-9.der");
    openssl_ok(&[
        "req",
        "-in",
        &c.csr.to_string_lossy(),
        "-outform",
        "DER",
        "-out",
        &der.to_string_lossy(),
    ]);
    let mut bytes = std::fs::read(&der).expect("der");
    let pos = bytes
        .windows(7)
        .position(|w| w == b"probe-9")
        .expect("cn in csr");
    bytes[pos + 6] = b'8';
    let tampered = dir.join("tampered.der");
    std::fs::write(&tampered, &bytes).expect("write");
    check(
        &[
            "cert",
            "sign",
            "--csr",
            &tampered.to_string_lossy(),
            "--profile",
            "client",
        ],
        3,
        "signature does not verify",
    );
    // Not P-256: an RSA key and a P-384 key.
    let rsa = dir.join("rsa.csr");
    openssl_ok(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &dir.join("rsa.key").to_string_lossy(),
        "-subj",
        "/CN=rsa",
        "-out",
        &rsa.to_string_lossy(),
    ]);
    check(
        &[
            "cert",
            "sign",
            "--csr",
            &rsa.to_string_lossy(),
            "--profile",
            "client",
        ],
        3,
        "not EC P-256",
    );
    let p384 = dir.join("p384.csr");
    openssl_ok(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:secp384r1",
        "-nodes",
        "-keyout",
        &dir.join("p384.key").to_string_lossy(),
        "-subj",
        "/CN=p384",
        "-out",
        &p384.to_string_lossy(),
    ]);
    check(
        &[
            "cert",
            "sign",
            "--csr",
            &p384.to_string_lossy(),
            "--profile",
            "client",
        ],
        3,
        "not EC P-256",
    );
    // Garbage and an unknown profile.
    let junk = dir.join("junk.csr");
    std::fs::write(
        &junk,
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    )
    .expect("write");
    check(
        &[
            "cert",
            "sign",
            "--csr",
            &junk.to_string_lossy(),
            "--profile",
            "client",
        ],
        3,
        "CSR",
    );
    check(
        &[
            "cert",
            "sign",
            "--csr",
            &c.csr.to_string_lossy(),
            "--profile",
            "admin",
        ],
        3,
        "unknown profile `admin`",
    );
    // The CA has expired (clock moved 11 years ahead).
    let o = home
        .cmd(&[
            "cert",
            "sign",
            "--csr",
            &c.csr.to_string_lossy(),
            "--profile",
            "client",
        ])
        .env(
            "PROVISIONER_FAKE_NOW",
            (4_102_444_800i64 + 11 * 365 * 86_400).to_string(),
        )
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(5));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("expired"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(home.files(), before, "a refused request left files behind");
    assert_eq!(
        std::fs::read(home.path().join("ledger.sqlite")).expect("ledger"),
        ledger_before,
        "a refused request changed the ledger"
    );
    assert_eq!(
        std::fs::read(home.path().join("ledger.sqlite-wal")).unwrap_or_default(),
        wal_before,
        "a refused request wrote to the ledger"
    );

    // A malformed site file: located error, no home created.
    let fresh = Home::new();
    let site = fresh.work().join("site.toml");
    let text = manifests::site::EXAMPLE_SMART_HOME.replace("port = 8883", "port = \"huit\"");
    std::fs::write(&site, text).expect("write");
    let o = fresh.run(&["init", "--site", &site.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("site.toml:") && err.contains("port") || err.contains("invalid type"),
        "{err}"
    );
    assert!(!fresh.path().exists(), "a refused init created the home");
    // A missing CA.
    let o = fresh.run(&[
        "cert",
        "sign",
        "--csr",
        &c.csr.to_string_lossy(),
        "--profile",
        "client",
    ]);
    assert_eq!(o.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&o.stderr).contains("provisioner init"));
    // A weak passphrase for a new CA.
    let o = fresh
        .cmd(&["init"])
        .env("PROVISIONER_PASSPHRASE", "short")
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(4));
}

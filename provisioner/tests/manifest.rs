//! Issue 19 item 4: `emit manifest` writes Microchip's signed manifest of the provisioned
//! chips. Every entry is checked with openssl, not with our code: its JWS signature against
//! the manifest signer's certificate, that certificate's chain to the root, each `x5c`
//! chain, the JWK against the ledger's key and the certificate's, and `uniqueId` against
//! the serial the emulated chip itself reports.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{Home, SimBoard, compressible_site_text, openssl_ext, openssl_ok};
use firmware::sim::mos::b64;

/// Unpadded BASE64URL, decoded through the standard alphabet.
fn b64url_decode(s: &str) -> Vec<u8> {
    assert!(!s.contains(['=', '+', '/']), "not unpadded base64url: {s}");
    b64::decode(&s.replace('-', "+").replace('_', "/")).unwrap_or_else(|| panic!("bad {s}"))
}

fn b64url(data: &[u8]) -> String {
    b64::encode(data)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// One ASN.1 INTEGER of a 32-byte big-endian value (DER: minimal, positive).
fn der_integer(v: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = v.iter().copied().skip_while(|b| *b == 0).collect();
    if v.first().is_none_or(|b| b & 0x80 != 0) {
        v.insert(0, 0);
    }
    let mut out = vec![0x02, v.len() as u8];
    out.extend(v);
    out
}

/// The JWS's raw r||s as the DER `Ecdsa-Sig-Value` openssl expects.
fn signature_der(raw: &[u8]) -> Vec<u8> {
    assert_eq!(raw.len(), 64, "ES256 signatures are 64 bytes (r||s)");
    let body = [der_integer(&raw[..32]), der_integer(&raw[32..])].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A DER certificate as a PEM file `name` in `dir`, through openssl.
fn der_to_pem(dir: &Path, name: &str, der: &[u8]) -> PathBuf {
    let d = dir.join(format!("{name}.der"));
    let p = dir.join(format!("{name}.pem"));
    std::fs::write(&d, der).expect("der");
    openssl_ok(&["x509", "-inform", "DER", "-in", &s(&d), "-out", &s(&p)]);
    p
}

/// The 64-byte x||y of a certificate's P-256 key, as openssl extracts it.
fn openssl_point(cert_pem: &Path, dir: &Path) -> Vec<u8> {
    let pubkey = dir.join("point.pub.pem");
    let der = dir.join("point.pub.der");
    let text = openssl_ok(&["x509", "-in", &s(cert_pem), "-noout", "-pubkey"]);
    std::fs::write(&pubkey, text).expect("pub");
    openssl_ok(&[
        "pkey",
        "-pubin",
        "-in",
        &s(&pubkey),
        "-outform",
        "DER",
        "-out",
        &s(&der),
    ]);
    let spki = std::fs::read(&der).expect("spki");
    spki[spki.len() - 64..].to_vec()
}

/// `openssl verify -x509_strict` of `leaf` with `root` trusted and `untrusted` in between.
fn verify_chain(root: &Path, untrusted: &Path, leaf: &Path) {
    let out = openssl_ok(&[
        "verify",
        "-x509_strict",
        "-CAfile",
        &s(root),
        "-untrusted",
        &s(untrusted),
        &s(leaf),
    ]);
    assert!(out.trim_end().ends_with(": OK"), "{out}");
}

/// `openssl dgst -sha256 -verify`: true if `sig_der` signs `data` for the key of `cert`.
fn openssl_verifies(dir: &Path, cert: &Path, data: &[u8], sig_der: &[u8]) -> bool {
    let pubkey = dir.join("signer.pub.pem");
    let text = openssl_ok(&["x509", "-in", &s(cert), "-noout", "-pubkey"]);
    std::fs::write(&pubkey, text).expect("pub");
    let (input, sig) = (dir.join("jws-input"), dir.join("jws-sig.der"));
    std::fs::write(&input, data).expect("input");
    std::fs::write(&sig, sig_der).expect("sig");
    let o = common::openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        &s(&pubkey),
        "-signature",
        &s(&sig),
        &s(&input),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    o.status.success() && text.contains("Verified OK")
}

/// The provisioned fleet: device id -> (chip serial the emulated chip reports, ledger record).
struct Fleet {
    home: Home,
    chips: Vec<(String, String)>,
}

/// A home with the test site plus the compressible profile, two boards on the built-in
/// profile (`climat`, key made in the chip) and one on `coffre` (compressed certificates).
fn fleet() -> Fleet {
    let home = Home::new();
    let site = home.work().join("site.toml");
    std::fs::write(&site, compressible_site_text(common::free_port())).expect("site");
    home.ok(&["init", "--site", &s(&site)]);
    let mut chips = Vec::new();
    for (id, profile) in [
        ("salon-1", "climat"),
        ("cuisine-2", "climat"),
        ("salon-01", "coffre"),
    ] {
        let board = SimBoard::start(&home.work(), id, 0, false);
        home.provision_locked(&board, id, profile);
        let chip = board.stop_and_open_chip();
        chips.push((id.to_string(), hex::encode(chip.serial_number())));
    }
    Fleet { home, chips }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("file").permissions().mode() & 0o777
}

/// Checks one SignedSecureElement with openssl; returns its uniqueId.
fn check_entry(home: &Home, dir: &Path, entry: &serde_json::Value, signer: &Path) -> String {
    let root = home.path().join("ca/root.crt");
    let protected_b64 = entry["protected"].as_str().expect("protected");
    let payload_b64 = entry["payload"].as_str().expect("payload");
    let signature = b64url_decode(entry["signature"].as_str().expect("signature"));
    // The protected header names the signer by its SKID and its certificate's thumbprint.
    let header: serde_json::Value =
        serde_json::from_slice(&b64url_decode(protected_b64)).expect("header json");
    assert_eq!(header["alg"], "ES256", "{header}");
    assert_eq!(header["typ"], "JWT", "{header}");
    let skid_text = openssl_ext(signer, "subjectKeyIdentifier");
    let skid_hex: String = skid_text
        .lines()
        .nth(1)
        .expect("skid line")
        .trim()
        .replace(':', "");
    assert_eq!(
        header["kid"].as_str(),
        Some(b64url(&hex::decode(&skid_hex).expect("hex")).as_str()),
        "{header}"
    );
    let signer_der = dir.join("signer.der");
    openssl_ok(&[
        "x509",
        "-in",
        &s(signer),
        "-outform",
        "DER",
        "-out",
        &s(&signer_der),
    ]);
    let thumb = openssl_ok(&["dgst", "-sha256", "-r", &s(&signer_der)]);
    let thumb = hex::decode(thumb.split_whitespace().next().expect("digest")).expect("hex");
    assert_eq!(header["x5t#S256"].as_str(), Some(b64url(&thumb).as_str()));
    // The JWS signature, checked by openssl against the signer certificate's key, and not
    // for a payload changed by one character.
    let input = format!("{protected_b64}.{payload_b64}");
    let sig = signature_der(&signature);
    assert!(
        openssl_verifies(dir, signer, input.as_bytes(), &sig),
        "signature of {input}"
    );
    let mut forged = input.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    assert!(
        !openssl_verifies(dir, signer, &forged, &sig),
        "a changed payload verifies"
    );
    // The payload.
    let se: serde_json::Value =
        serde_json::from_slice(&b64url_decode(payload_b64)).expect("payload json");
    assert_eq!(se["version"], 1, "{se}");
    assert_eq!(se["model"], "ATECC508A", "{se}");
    assert_eq!(
        se["manufacturer"]["organizationName"],
        "Microchip Technology Inc"
    );
    assert!(se["provisioner"]["organizationName"].is_string(), "{se}");
    let ts = se["provisioningTimestamp"].as_str().expect("timestamp");
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && &ts[19..20] == "." && &ts[10..11] == "T",
        "RFC 3339 with milliseconds: {ts}"
    );
    let unique = se["uniqueId"].as_str().expect("uniqueId").to_string();
    assert_eq!(entry["header"]["uniqueId"].as_str(), Some(unique.as_str()));
    // One JWK: the device's key slot, its key and its certificate chain.
    let keys = se["publicKeySet"]["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1, "{se}");
    let jwk = &keys[0];
    assert_eq!((&jwk["kty"], &jwk["crv"]), (&"EC".into(), &"P-256".into()));
    let x5c: Vec<Vec<u8>> = jwk["x5c"]
        .as_array()
        .expect("x5c")
        .iter()
        .map(|c| {
            let c = c.as_str().expect("x5c string");
            assert!(!c.contains(['-', '_']), "x5c is standard base64");
            b64::decode(c).expect("x5c base64")
        })
        .collect();
    assert_eq!(x5c.len(), 2, "device certificate and its issuer");
    let device = der_to_pem(dir, &format!("{unique}-device"), &x5c[0]);
    let issuer = der_to_pem(dir, &format!("{unique}-issuer"), &x5c[1]);
    verify_chain(&root, &issuer, &device);
    let xy = [
        b64url_decode(jwk["x"].as_str().expect("x")),
        b64url_decode(jwk["y"].as_str().expect("y")),
    ]
    .concat();
    assert_eq!(
        xy,
        openssl_point(&device, dir),
        "JWK = the certificate's key"
    );
    let subject = openssl_ok(&[
        "x509",
        "-in",
        &s(&device),
        "-noout",
        "-subject",
        "-nameopt",
        "sep_multiline",
    ]);
    assert!(
        subject.contains(&format!("serialNumber={unique}")),
        "{subject}"
    );
    // The ledger's record of the device: its key and its key slot.
    let cn = subject
        .lines()
        .find_map(|l| l.trim().strip_prefix("CN="))
        .expect("CN")
        .to_string();
    let shown = home.json(&["device", "show", &cn]);
    let attrs = &shown["identity"]["attrs"];
    assert_eq!(attrs["chip_serial"].as_str(), Some(unique.as_str()));
    assert_eq!(
        attrs["public_key"].as_str(),
        Some(hex::encode(&xy).as_str())
    );
    assert_eq!(
        jwk["kid"].as_str(),
        Some(attrs["key_slot"].to_string().as_str())
    );
    unique
}

#[test]
fn the_manifest_verifies_entry_by_entry_with_openssl_and_names_each_chip_by_its_serial() {
    let Fleet { home, chips } = fleet();
    let dir = home.work().join("out");
    std::fs::create_dir(&dir).expect("dir");
    let file = dir.join("manifest.json");
    let report = home.json(&["emit", "manifest", "--out", &s(&file)]);
    let signer = dir.join("manifest.signer.crt");
    let cas = dir.join("manifest.ca.crt");
    for f in [&file, &signer, &cas] {
        assert_eq!(mode(f), 0o644, "{} is public", f.display());
    }
    assert_eq!(
        report["devices"].as_array().map(Vec::len),
        Some(3),
        "{report}"
    );
    // The signer's certificate chains to the root, and may only sign (no EKU, no CA).
    verify_chain(&home.path().join("ca/root.crt"), &cas, &signer);
    let ext = openssl_ext(&signer, "keyUsage,extendedKeyUsage,basicConstraints");
    assert!(
        ext.contains("Digital Signature") && ext.contains("CA:FALSE"),
        "{ext}"
    );
    assert!(
        !ext.contains("Extended Key Usage") && !ext.contains("Certificate Sign"),
        "{ext}"
    );
    let key = home.path().join("keys/manifest-signer.key");
    assert_eq!(mode(&key), 0o600, "the signer's key");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("manifest")).expect("json");
    let entries = manifest.as_array().expect("a JSON array");
    let mut seen: Vec<String> = entries
        .iter()
        .map(|e| check_entry(&home, &dir, e, &signer))
        .collect();
    let mut expected: Vec<String> = chips.iter().map(|(_, sn)| sn.clone()).collect();
    seen.sort();
    expected.sort();
    assert_eq!(
        seen, expected,
        "one entry per chip, named by the serial the chip reports"
    );
    // A manifest of one device; the signer and its certificate are reused.
    let one = dir.join("one.json");
    let again = home.json(&[
        "emit",
        "manifest",
        "--out",
        &s(&one),
        "--device",
        "salon-01",
    ]);
    assert_eq!(again["signer_serial"], report["signer_serial"], "{again}");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&one).expect("one")).expect("json");
    let entries = m.as_array().expect("array");
    assert_eq!(entries.len(), 1);
    let coffre = &chips
        .iter()
        .find(|(id, _)| id == "salon-01")
        .expect("coffre")
        .1;
    assert_eq!(
        check_entry(&home, &dir, &entries[0], &dir.join("one.signer.crt")),
        *coffre
    );
}

/// `emit manifest --out FILE --device ID...`, whatever its status.
fn emit(home: &Home, file: &Path, devices: &[&str]) -> std::process::Output {
    let out = s(file);
    let mut args = vec!["emit", "manifest", "--out", out.as_str()];
    for d in devices {
        args.extend(["--device", d]);
    }
    home.run(&args)
}

#[test]
fn an_unknown_device_is_refused_and_nothing_is_written() {
    let home = Home::new();
    let site = home.work().join("site.toml");
    std::fs::write(&site, compressible_site_text(common::free_port())).expect("site");
    home.ok(&["init", "--site", &s(&site)]);
    let file = home.work().join("manifest.json");
    // No device at all: nothing to sign.
    let o = emit(&home, &file, &[]);
    assert_eq!(o.status.code(), Some(5), "{}", common::output_text(&o));
    let board = SimBoard::start(&home.work(), "b", 0, false);
    home.provision_locked(&board, "salon-1", "climat");
    let o = emit(&home, &file, &["salon-1", "garage-9"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{}", common::output_text(&o));
    assert!(
        err.contains("garage-9") && err.contains("nothing written"),
        "{err}"
    );
    for f in ["manifest.json", "manifest.signer.crt", "manifest.ca.crt"] {
        assert!(!home.work().join(f).exists(), "{f} written");
    }
    assert!(
        !home.path().join("keys/manifest-signer.key").exists(),
        "no signer key made for a refused run"
    );
    // A good run, then a refused one: the manifest stays as it was.
    home.ok(&["emit", "manifest", "--out", &s(&file)]);
    let before = std::fs::read(&file).expect("manifest");
    let o = emit(&home, &file, &["garage-9"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(std::fs::read(&file).expect("manifest"), before, "unchanged");
    // A directory is not a manifest file.
    let o = emit(&home, &home.work(), &[]);
    assert_eq!(o.status.code(), Some(3), "{}", common::output_text(&o));
}

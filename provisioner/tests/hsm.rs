//! The CA key in a PKCS#11 token (SoftHSM2 in a temporary directory): every profile and the
//! CRL are signed in the token and pass `openssl verify -x509_strict`, the token reports the
//! keys sensitive and never extractable (and seals the vault key), the home holds no CA key
//! material and no PIN, a wrong PIN, a missing module, token or key object are clear errors
//! that change nothing, and an `init` killed after the key was made in the token completes
//! with that key.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A home whose CA (root and issuing) keys are made in `hsm`'s token through `module`.
fn token_home(hsm: &SoftHsm, module: &str, issuing: bool) -> (Home, std::process::Output) {
    let mut home = Home::new();
    home.env = hsm.env(TOKEN_PIN);
    let site = home.work().join("site.toml");
    std::fs::write(&site, site_text(free_port())).expect("site");
    let mut args = vec!["init".to_string(), "--site".into(), s(&site)];
    if issuing {
        args.push("--issuing-ca".into());
    }
    args.extend(hsm.init_args(module));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = home.run(&args);
    (home, out)
}

/// `openssl verify -x509_strict` of `cert` for `purpose` up to the home's root, through its
/// issuing CA, checking the home's CRL when `crl`.
fn verify(home: &Home, purpose: &str, cert: &Path, crl: bool) -> std::process::Output {
    let (root, issuing) = (
        home.path().join("ca/root.crt"),
        home.path().join("ca/issuing.crt"),
    );
    let (root, issuing, crl_file) = (s(&root), s(&issuing), s(&home.path().join("crl.pem")));
    let mut args = vec![
        "verify",
        "-x509_strict",
        "-purpose",
        purpose,
        "-CAfile",
        &root,
    ];
    args.extend(["-untrusted", &issuing]);
    if crl {
        args.extend(["-crl_check", "-CRLfile", &crl_file]);
    }
    let cert = s(cert);
    args.push(&cert);
    openssl(&args)
}

fn assert_verifies(home: &Home, purpose: &str, cert: &Path) {
    let o = verify(home, purpose, cert, true);
    assert!(
        o.status.success(),
        "{} ({purpose}): {}{}",
        cert.display(),
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
}

/// The PEM of the active certificate of `id`, written to a file.
fn certificate_of(home: &Home, id: &str) -> PathBuf {
    let show = home.json(&["device", "show", id]);
    let pem = show["certificates"][0]["pem"].as_str().expect("pem");
    let path = home.work().join(format!("{id}.pem"));
    std::fs::write(&path, pem).expect("write");
    path
}

/// A server certificate from an openssl CSR (its key stays outside the home).
fn server_from_csr(home: &Home) -> PathBuf {
    let san = ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"];
    let (_key, csr) = openssl_csr(&home.work(), "srv", "/CN=localhost", &san);
    let crt = home.work().join("srv.crt");
    let (csr, out) = (s(&csr), s(&crt));
    home.ok(&[
        "cert",
        "sign",
        "--csr",
        &csr,
        "--profile",
        "server",
        "--out",
        &out,
    ]);
    crt
}

/// The public key (PEM) of a certificate, or of a private key file.
fn public_key_of(args: &[&str]) -> String {
    openssl_ok(args)
}

/// The public key (PEM) of a certificate of the home's CA (`root` or `issuing`).
fn ca_public_key(home: &Home, which: &str) -> String {
    let cert = s(&home.path().join(format!("ca/{which}.crt")));
    public_key_of(&["x509", "-in", &cert, "-noout", "-pubkey"])
}

/// Scans every file of the home: no CA key file, no encrypted private key (the form a CA
/// key takes at rest), every plain private key a leaf's (not the root's nor the issuing
/// CA's), and the PIN nowhere, not even in the ledger.
fn assert_no_ca_key_material(home: &Home) {
    let root_pub = ca_public_key(home, "root");
    let issuing_pub = ca_public_key(home, "issuing");
    let files = home.files();
    assert!(
        !files
            .iter()
            .any(|f| f == "ca/root.key" || f == "ca/issuing.key"),
        "{files:?}"
    );
    assert!(files.iter().any(|f| f == "ca/key-store.json"), "{files:?}");
    let mut leaf_keys = 0;
    for f in &files {
        let path = home.path().join(f);
        let bytes = std::fs::read(&path).expect("read");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("ENCRYPTED PRIVATE KEY"),
            "{f} holds an encrypted private key"
        );
        assert!(
            !bytes
                .windows(TOKEN_PIN.len())
                .any(|w| w == TOKEN_PIN.as_bytes()),
            "{f} holds the PIN"
        );
        if text.contains("-----BEGIN PRIVATE KEY-----")
            || text.contains("-----BEGIN EC PRIVATE KEY-----")
        {
            let public = public_key_of(&["pkey", "-in", &s(&path), "-pubout"]);
            assert!(
                public != root_pub && public != issuing_pub,
                "{f} is a CA key"
            );
            leaf_keys += 1;
        }
    }
    // The host keys of the broker, the gateway and the receiver (all leaves).
    assert_eq!(leaf_keys, 3, "{files:?}");
}

/// The token's private key objects: each CA key sensitive, never extractable, made inside
/// the token (`local`), usable for signing only.
fn assert_token_keys_never_leave(hsm: &SoftHsm, home: &Home) {
    let listing = hsm.private_keys();
    let objects: Vec<&str> = listing.split("Private Key Object").skip(1).collect();
    assert_eq!(objects.len(), 2, "{listing}");
    for label in ["provisioner-ca", "provisioner-ca-issuing"] {
        let obj = objects
            .iter()
            .find(|o| o.contains(&format!("label:      {label}\n")))
            .unwrap_or_else(|| panic!("no private key {label} in the token:\n{listing}"));
        let access = obj
            .lines()
            .find(|l| l.trim_start().starts_with("Access:"))
            .expect("access");
        for attr in [
            "sensitive",
            "always sensitive",
            "never extractable",
            "local",
        ] {
            assert!(access.contains(attr), "{label}: {access}");
        }
        let usage = obj
            .lines()
            .find(|l| l.trim_start().starts_with("Usage:"))
            .expect("usage");
        assert_eq!(usage.trim(), "Usage:      sign", "{label}");
    }
    // The vault key (which seals the link and write keys) is sealed by an AES key that the
    // token keeps in the same way, not by the PIN.
    let o = hsm.tool(&["--list-objects", "--type", "secrkey"]);
    let listing = String::from_utf8_lossy(&o.stdout);
    assert!(
        listing.contains("label:      provisioner-ca-vault"),
        "{listing}"
    );
    let access = listing
        .lines()
        .find(|l| l.contains("Access:"))
        .expect("access");
    assert!(
        access.contains("sensitive") && access.contains("never extractable"),
        "{access}"
    );
    let vault = std::fs::read_to_string(home.path().join("ca/vault.key")).expect("vault");
    assert!(
        vault.starts_with("-----BEGIN PROVISIONER VAULT KEY SEALED BY PKCS11-----"),
        "{vault}"
    );
    // The token's root public key is the one the root certificate holds.
    assert_eq!(
        token_root_public_key(hsm, home),
        ca_public_key(home, "root")
    );
}

/// The public key (PEM) of the root key pair in the token, as the token gives it.
fn token_root_public_key(hsm: &SoftHsm, home: &Home) -> String {
    let der = s(&home.work().join("root-pub.der"));
    let o = hsm.tool(&[
        "--read-object",
        "--type",
        "pubkey",
        "--label",
        "provisioner-ca",
        "-o",
        &der,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    public_key_of(&["pkey", "-pubin", "-inform", "DER", "-in", &der])
}

#[test]
fn every_profile_and_the_crl_signed_in_the_token_verify_strictly_and_the_key_never_leaves_it() {
    let Some(hsm) = SoftHsm::new("bench") else {
        return;
    };
    let (home, out) = token_home(&hsm, SOFTHSM_MODULE, true);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("CA key            in token `bench`"),
        "{said}"
    );
    // The issuing CA, signed by the root key in the token.
    let issuing = home.path().join("ca/issuing.crt");
    let o = openssl(&[
        "verify",
        "-x509_strict",
        "-CAfile",
        &s(&home.path().join("ca/root.crt")),
        &s(&issuing),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Server (from a CSR and from a key made here), client, device, gateway, receiver.
    assert_verifies(&home, "sslserver", &server_from_csr(&home));
    let broker = home.json(&["server", "issue"]);
    assert_verifies(
        &home,
        "sslserver",
        Path::new(broker["certificate"].as_str().expect("path")),
    );
    let client = home.client("probe-1", &[]);
    assert_verifies(&home, "sslclient", &client.crt);
    let board = SimBoard::start(&home.work(), "salon", 0, false);
    home.provision_locked(&board, "salon-1", "climat");
    assert_verifies(&home, "sslclient", &certificate_of(&home, "salon-1"));
    let (gw, rx) = (home.work().join("gw"), home.work().join("rx"));
    home.ok(&["emit", "gateway", "passerelle", "--out", &s(&gw)]);
    assert_verifies(&home, "sslclient", &gw.join("passerelle.crt"));
    home.ok(&["emit", "receiver", "recepteur", "--out", &s(&rx)]);
    assert_verifies(&home, "sslclient", &rx.join("recepteur.crt"));
    // The link key went through the token-sealed vault from one command to the next.
    let link = |f: PathBuf| std::fs::read(f).expect("link key");
    assert_eq!(
        link(gw.join("link.key")),
        link(rx.join("link-passerelle-1.key")),
        "gateway and receiver share the link key"
    );
    // A CRL signed in the token: openssl checks its signature and honours it.
    home.ok(&["device", "revoke", "probe-1"]);
    let o = openssl(&[
        "crl",
        "-in",
        &s(&home.path().join("crl.pem")),
        "-CAfile",
        &s(&issuing),
        "-noout",
        "-verify",
    ]);
    assert!(
        o.status.success() && stderr(&o).contains("verify OK"),
        "{}",
        stderr(&o)
    );
    let o = verify(&home, "sslclient", &client.crt, true);
    assert!(!o.status.success(), "a revoked client must fail");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("revoked") || stderr(&o).contains("revoked")
    );
    assert_verifies(&home, "sslclient", &gw.join("passerelle.crt"));

    assert_token_keys_never_leave(&hsm, &home);
    assert_no_ca_key_material(&home);
}

#[test]
fn a_wrong_pin_a_missing_module_token_or_key_are_clear_errors_that_change_nothing() {
    let Some(hsm) = SoftHsm::new("bench") else {
        return;
    };
    let module_copy = hsm.dir().join("libsofthsm2.so");
    std::fs::copy(SOFTHSM_MODULE, &module_copy).expect("copy module");
    let module = s(&module_copy);

    // At init: a module that is not there, a token that is not there, a wrong PIN.
    let mut home = Home::new();
    home.env = hsm.env(TOKEN_PIN);
    let init = |h: &Home, module: &str, token: &str| {
        h.run(&[
            "init",
            "--key-store",
            "pkcs11",
            "--pkcs11-module",
            module,
            "--pkcs11-token",
            token,
        ])
    };
    let o = init(&home, "/nonexistent/libpkcs11.so", "bench");
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("/nonexistent/libpkcs11.so cannot be loaded"),
        "{}",
        stderr(&o)
    );
    let o = init(&home, &module, "elsewhere");
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no token labelled `elsewhere`") && stderr(&o).contains("bench"),
        "{}",
        stderr(&o)
    );
    home.env = hsm.env("000000");
    let o = init(&home, &module, "bench");
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("wrong PIN for token `bench`"),
        "{}",
        stderr(&o)
    );
    assert!(!home.path().join("ca/key-store.json").exists());
    assert!(
        !hsm.private_keys().contains("Private Key Object"),
        "nothing made in the token"
    );

    // A home made through the copy of the module.
    let (home, out) = token_home(&hsm, &module, true);
    assert!(out.status.success(), "{}", stderr(&out));
    // A second home cannot adopt the key of the first one: the label is taken.
    let (other, o) = token_home(&hsm, &module, false);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("already holds a key labelled `provisioner-ca`"),
        "{}",
        stderr(&o)
    );
    assert!(!other.path().join("ca/key-store.json").exists());
    let files = home.files();
    let crl = || std::fs::read(home.path().join("crl.pem")).expect("crl");
    let before = crl();
    let issue = ["server", "issue", "--dns", "localhost"];

    // A wrong PIN: exit 4, saying where the PIN comes from.
    let o = home
        .cmd(&issue)
        .env("PROVISIONER_PKCS11_PIN", "999999")
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("wrong PIN for token `bench`")
            && stderr(&o).contains("PROVISIONER_PKCS11_PIN"),
        "{}",
        stderr(&o)
    );

    // The key object deleted from the token: exit 5, naming the key and the token.
    let o = hsm.tool(&[
        "--delete-object",
        "--type",
        "privkey",
        "--label",
        "provisioner-ca-issuing",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = home.run(&issue);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("token `bench` holds no key pair labelled `provisioner-ca-issuing`"),
        "{}",
        stderr(&o)
    );

    // The module gone: exit 5, naming it.
    std::fs::remove_file(&module_copy).expect("rm module");
    let o = home.run(&issue);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("{module} cannot be loaded")),
        "{}",
        stderr(&o)
    );

    // None of these changed the home: no certificate, no key file, the same CRL.
    assert_eq!(home.files(), files);
    assert_eq!(crl(), before);
}

#[test]
fn an_init_killed_after_the_key_was_made_in_the_token_completes_with_that_key() {
    let Some(hsm) = SoftHsm::new("bench") else {
        return;
    };
    let mut home = Home::new();
    home.env = hsm.env(TOKEN_PIN);
    home.env
        .push(("PROVISIONER_CRASH_AT".into(), "init-after-key".into()));
    let mut args = vec!["init".to_string()];
    args.extend(hsm.init_args(SOFTHSM_MODULE));
    let crashed = home.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!crashed.status.success(), "{}", stderr(&crashed));
    let made = hsm.private_keys();
    assert_eq!(made.matches("Private Key Object").count(), 1, "{made}");
    // Run again without the crash and without the flags: the recorded token and key are used.
    home.env.pop();
    let r = home.json(&["init"]);
    assert_eq!(r["ca"]["created"], true);
    assert_eq!(
        hsm.private_keys(),
        made,
        "the key made before the crash is the CA's"
    );
    assert_eq!(
        token_root_public_key(&hsm, &home),
        ca_public_key(&home, "root")
    );
}

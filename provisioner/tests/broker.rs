//! The emitted mosquitto configuration, run by a real mosquitto: certified clients get in and
//! publish where their ACL allows; foreign, revoked and out-of-ACL traffic does not.

mod common;

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

#[allow(clippy::too_many_arguments)]
/// Publishes `msg` until the one-message subscriber prints something, before each sending
/// `before` (if any) from `noise`. Returns what the subscriber printed.
fn deliver(
    port: u16,
    ca: &Path,
    sub: &Client,
    filter: &str,
    pubc: &Client,
    topic: &str,
    msg: &str,
    before: Option<(&Client, &str)>,
) -> String {
    let mut child = subscribe_one(port, ca, sub, filter, 15);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some((noise, t)) = before {
            let _ = publish(port, ca, noise, t, "must-not-arrive");
        }
        let p = publish(port, ca, pubc, topic, msg);
        assert!(
            p.status.success(),
            "publish to {topic} failed: {}",
            String::from_utf8_lossy(&p.stderr)
        );
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscriber never received {topic}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    out
}

#[test]
fn a_broker_from_emit_admits_certified_clients_only_and_enforces_acl_and_crl() {
    let home = Home::with_broker();
    let probe = home.client("probe-1", &[]);
    let monitor = home.client("monitor", &["--subscribe", "maison/#"]);
    let port = free_port();
    let out = home.work().join("broker");
    home.emit_broker(&out, Some(port), &[]);
    let broker = Mosquitto::start(
        &out.join("mosquitto.conf"),
        port,
        &home.work().join("mosquitto.log"),
    );
    let ca = out.join("ca.crt");

    // Allowed: probe-1 may write under maison/probe-1/#; monitor reads maison/#.
    let got = deliver(
        port,
        &ca,
        &monitor,
        "maison/#",
        &probe,
        "maison/probe-1/temperature",
        "21.5",
        None,
    );
    assert_eq!(got.trim(), "maison/probe-1/temperature 21.5");

    // Outside its ACL: probe-1 writing to the living room is dropped, the marker arrives first.
    let got = deliver(
        port,
        &ca,
        &monitor,
        "maison/#",
        &probe,
        "maison/probe-1/marker",
        "m",
        Some((&probe, "maison/salon/temperature")),
    );
    assert_eq!(
        got.trim(),
        "maison/probe-1/marker m",
        "an out-of-ACL publish was delivered"
    );

    // A client certificate from another CA is refused at the TLS handshake.
    let dir = home.work();
    let other_key = dir.join("other-ca.key");
    let other_crt = dir.join("other-ca.crt");
    openssl_ok(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &other_key.to_string_lossy(),
    ]);
    openssl_ok(&[
        "req",
        "-new",
        "-x509",
        "-key",
        &other_key.to_string_lossy(),
        "-subj",
        "/CN=Other CA",
        "-days",
        "2",
        "-out",
        &other_crt.to_string_lossy(),
    ]);
    let intruder = openssl_client(&dir, "probe-1-forged");
    openssl_ok(&[
        "x509",
        "-req",
        "-in",
        &intruder.csr.to_string_lossy(),
        "-CA",
        &other_crt.to_string_lossy(),
        "-CAkey",
        &other_key.to_string_lossy(),
        "-days",
        "2",
        "-out",
        &intruder.crt.to_string_lossy(),
    ]);
    let p = publish(port, &ca, &intruder, "maison/probe-1/temperature", "forged");
    assert!(
        !p.status.success(),
        "a certificate from another CA was accepted"
    );
    assert!(
        broker.log_text().contains("certificate verify failed"),
        "{}",
        broker.log_text()
    );

    // Revoked, CRL published, broker reloaded: probe-1 is refused.
    let r = home.json(&["device", "revoke", "probe-1"]);
    assert_eq!(r["revoked"].as_array().map(Vec::len), Some(1));
    let crl = home.json(&["crl"]);
    assert!(crl["revoked"].as_i64() == Some(1), "{crl}");
    let text = openssl_ok(&[
        "crl",
        "-in",
        &out.join("crl.pem").to_string_lossy(),
        "-noout",
        "-text",
    ]);
    let serial = r["revoked"][0].as_str().expect("serial").to_uppercase();
    assert!(
        text.contains(&serial),
        "the broker's crl.pem lacks {serial}:\n{text}"
    );
    broker.reload();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = publish(
            port,
            &ca,
            &probe,
            "maison/probe-1/temperature",
            "after-revoke",
        );
        if !p.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "revoked client still accepted after SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The monitor, not revoked, still gets in.
    let p = publish(port, &ca, &monitor, "maison/monitor/x", "still-here");
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
}

#[test]
fn emitted_configuration_has_every_security_setting_and_private_key_modes() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::with_broker();
    let out = home.work().join("b");
    home.ok(&["emit", "broker", "--out", &out.to_string_lossy()]);
    let conf = std::fs::read_to_string(out.join("mosquitto.conf")).expect("conf");
    for line in [
        "listener 8883",
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
        "tls_version tlsv1.2",
    ] {
        assert!(conf.lines().any(|l| l == line), "missing {line}:\n{conf}");
    }
    let mode = |p: &str| {
        std::fs::metadata(out.join(p))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777
    };
    // Run as root, mosquitto drops to its account: that account's group reads the key and the
    // directory, root alone writes them.
    use std::os::unix::fs::MetadataExt;
    let mosquitto = nix::unistd::User::from_name("mosquitto").expect("lookup");
    let (key_mode, dir_mode, gid) = match (&mosquitto, nix::unistd::geteuid().is_root()) {
        (Some(u), true) => (0o640, 0o750, u.gid.as_raw()),
        _ => (0o600, 0o700, nix::unistd::getegid().as_raw()),
    };
    assert_eq!(mode("broker.key"), key_mode);
    let dir = std::fs::metadata(&out).expect("dir");
    assert_eq!(dir.permissions().mode() & 0o777, dir_mode);
    assert_eq!(dir.gid(), gid);
    assert_eq!(dir.uid(), nix::unistd::geteuid().as_raw());
    assert_eq!(
        std::fs::metadata(out.join("broker.key"))
            .expect("key")
            .uid(),
        nix::unistd::geteuid().as_raw()
    );
    // Emitting again without a broker certificate in another home says what to do.
    let bare = Home::new();
    bare.ok(&["init"]);
    let o = bare.run(&["emit", "broker", "--out", "x"]);
    assert_eq!(o.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&o.stderr).contains("server issue"));
}

//! Files as a hostile neighbour leaves them: links planted where we write, a broker account
//! racing our writes, FIFOs, devices and huge files where we read, and a home that others can
//! write. Every case ends in a clear error or a write that lands where it should, quickly.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A root-only file outside every directory we write: its owner and mode must never change.
fn victim(dir: &Path) -> PathBuf {
    let v = dir.join("victim-secret");
    std::fs::write(&v, "root only").expect("victim");
    std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    v
}

fn owner_and_mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).expect("stat");
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// Root and a `mosquitto` account are needed to play the broker's account against root.
fn mosquitto_account() -> Option<nix::unistd::User> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return None;
    }
    let u = nix::unistd::User::from_name("mosquitto").expect("lookup");
    assert!(
        u.is_some(),
        "no `mosquitto` account: install mosquitto (the README's test command does)"
    );
    u
}

#[test]
fn a_broker_account_racing_emit_broker_never_gets_a_file_outside_its_directory() {
    let Some(mosq) = mosquitto_account() else {
        return;
    };
    let home = Home::with_broker();
    // The work directory is reachable by the mosquitto account, as /etc/mosquitto would be.
    std::fs::set_permissions(home.work(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let secret = victim(&home.work());
    let before = owner_and_mode(&secret);
    let out = home.work().join("broker");
    home.ok(&[
        "emit",
        "broker",
        "--out",
        &out.to_string_lossy(),
        "--run-as",
        "mosquitto",
    ]);

    // As mosquitto, swap every file of the directory for a link to the victim, without end.
    let script = format!(
        "while :; do for f in acl broker.key crl.pem mosquitto.conf ca.crt broker.crt; do \
         ln -sfn {v} {o}/$f 2>/dev/null; rm -f {o}/$f 2>/dev/null; ln -s {v} {o}/.$f.tmp 2>/dev/null; \
         done; done",
        v = secret.display(),
        o = out.display()
    );
    let mut attacker = Command::new("setpriv")
        .args([
            "--reuid",
            &mosq.uid.to_string(),
            "--regid",
            &mosq.gid.to_string(),
            "--clear-groups",
            "sh",
            "-c",
            &script,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("attacker");
    let runs = 300;
    for i in 0..runs {
        let o = home.run(&[
            "emit",
            "broker",
            "--out",
            &out.to_string_lossy(),
            "--run-as",
            "mosquitto",
        ]);
        assert!(o.status.success(), "run {i}: {}", stderr(&o));
        assert_eq!(
            owner_and_mode(&secret),
            before,
            "run {i} changed the victim"
        );
    }
    let _ = attacker.kill();
    let _ = attacker.wait();
    // The directory and its files stay root's; mosquitto's group reads them.
    let (uid, gid, mode) = owner_and_mode(&out);
    assert_eq!((uid, gid, mode), (0, mosq.gid.as_raw(), 0o750));
    for f in [
        "acl",
        "mosquitto.conf",
        "crl.pem",
        "ca.crt",
        "broker.crt",
        "broker.key",
    ] {
        let m = std::fs::symlink_metadata(out.join(f)).expect("stat");
        assert!(m.is_file(), "{f} is a regular file");
        assert_eq!(m.uid(), 0, "{f} belongs to root");
    }
    assert_eq!(
        owner_and_mode(&out.join("broker.key")),
        (0, mosq.gid.as_raw(), 0o640)
    );
    assert_eq!(
        std::fs::read_to_string(&secret).expect("victim"),
        "root only"
    );
    // And mosquitto can read what it needs.
    let read = Command::new("setpriv")
        .args([
            "--reuid",
            &mosq.uid.to_string(),
            "--regid",
            &mosq.gid.to_string(),
            "--clear-groups",
            "cat",
        ])
        .arg(out.join("broker.key"))
        .output()
        .expect("cat");
    assert!(
        read.status.success(),
        "mosquitto cannot read its key: {}",
        stderr(&read)
    );
}

#[test]
fn a_broker_directory_left_to_mosquitto_with_planted_links_is_taken_back() {
    let Some(mosq) = mosquitto_account() else {
        return;
    };
    let home = Home::with_broker();
    let secret = victim(&home.work());
    let before = owner_and_mode(&secret);
    // What the old `emit broker --run-as mosquitto` left: a directory the account owns, in
    // which it planted links.
    let out = home.work().join("broker");
    std::fs::create_dir(&out).expect("mkdir");
    for f in ["acl", "broker.key", ".acl.tmp", ".broker.key.tmp"] {
        symlink(&secret, out.join(f)).expect("plant");
    }
    std::os::unix::fs::chown(&out, Some(mosq.uid.as_raw()), Some(mosq.gid.as_raw()))
        .expect("chown");
    home.ok(&[
        "emit",
        "broker",
        "--out",
        &out.to_string_lossy(),
        "--run-as",
        "mosquitto",
    ]);
    assert_eq!(owner_and_mode(&secret), before);
    assert_eq!(
        std::fs::read_to_string(&secret).expect("victim"),
        "root only"
    );
    assert_eq!(owner_and_mode(&out), (0, mosq.gid.as_raw(), 0o750));
    assert!(
        std::fs::symlink_metadata(out.join("acl"))
            .expect("acl")
            .is_file()
    );
}

#[test]
fn a_link_in_place_of_the_output_directory_is_refused() {
    let home = Home::with_broker();
    let elsewhere = home.work().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    let out = home.work().join("broker");
    symlink(&elsewhere, &out).expect("plant");
    let o = home.run(&["emit", "broker", "--out", &out.to_string_lossy()]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(&elsewhere).expect("ls").count(), 0);
}

#[test]
fn deploy_resolves_planted_links_inside_the_root_and_refuses_links_that_leave_it() {
    let home = Home::new();
    home.ok(&["init"]);
    let outside = home.work().join("outside");
    std::fs::create_dir(&outside).expect("outside");
    let root = home.work().join("pi1-root");
    std::fs::create_dir_all(root.join("var")).expect("root");
    // Absolute links, as a Pi's root holds them: they mean paths of the Pi.
    symlink(&outside, root.join("etc")).expect("plant etc");
    symlink(&outside, root.join("var/lib")).expect("plant var/lib");
    home.ok(&[
        "deploy",
        "gateway",
        "passerelle",
        "--root",
        &root.to_string_lossy(),
    ]);
    assert_eq!(
        std::fs::read_dir(&outside).expect("ls").count(),
        0,
        "nothing written outside the root"
    );
    let inside = root.join(outside.strip_prefix("/").expect("absolute"));
    assert!(inside.join("iot-gateway/gateway.toml").is_file());
    assert!(inside.join("systemd/system/iot-gateway.service").is_file());

    // A relative link that climbs out of the root is refused before anything is written.
    let root2 = home.work().join("pi2-root");
    std::fs::create_dir_all(&root2).expect("root2");
    symlink("../outside", root2.join("etc")).expect("plant");
    let o = home.run(&[
        "deploy",
        "gateway",
        "passerelle",
        "--root",
        &root2.to_string_lossy(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("leaves the root"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(&outside).expect("ls").count(), 0);
    assert!(!root2.join("var").exists(), "nothing created");
}

/// Hostile files where the provisioner reads: each ends in a clear error within 5 s.
#[test]
fn devices_fifos_and_huge_files_as_site_csr_or_passphrase_end_in_clear_errors() {
    let home = Home::with_broker();
    let fifo = home.work().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
    let big = home.work().join("big");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(100 << 20))
        .expect("100 MB");
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let hostile = [
        (PathBuf::from("/dev/zero"), "character device"),
        (PathBuf::from("/dev/urandom"), "character device"),
        (fifo.clone(), "FIFO"),
        (big.clone(), "104857600 bytes"),
    ];
    for (file, what) in &hostile {
        let f = file.to_string_lossy().into_owned();
        let fresh = Home::new();
        let cases: Vec<(&str, Vec<&str>, &Home)> = vec![
            ("site", vec!["init", "--site", &f], &fresh),
            (
                "CSR",
                vec![
                    "cert",
                    "sign",
                    "--csr",
                    &f,
                    "--profile",
                    "client",
                    "--out",
                    "x.crt",
                ],
                &home,
            ),
        ];
        for (kind, args, h) in cases {
            let t = Instant::now();
            let o = h.run(&args);
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{kind} {f}: {:?}",
                t.elapsed()
            );
            assert_eq!(o.status.code(), Some(3), "{kind} {f}: {}", stderr(&o));
            assert!(stderr(&o).contains(what), "{kind} {f}: {}", stderr(&o));
        }
        // The passphrase file: refused as a file that is not a regular one, never read.
        let t = Instant::now();
        let o = home
            .cmd(&["--passphrase-file", &f, "crl", "--renew"])
            .env_remove("PROVISIONER_PASSPHRASE")
            .output()
            .expect("run");
        assert!(t.elapsed() < Duration::from_secs(5), "passphrase {f}");
        assert!(!o.status.success(), "passphrase {f}");
        assert!(
            stderr(&o).contains(what) || stderr(&o).contains("readable by others"),
            "passphrase {f}: {}",
            stderr(&o)
        );
    }
    assert!(!home.work().join("x.crt").exists());
}

#[test]
fn a_home_site_file_or_chip_profile_that_others_can_write_is_refused_with_the_fix() {
    let home = Home::with_broker();
    let h = home.path();
    let set = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    set(&h, 0o770);
    let o = home.run(&["device", "list"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("chmod go-w {}", h.display())),
        "{}",
        stderr(&o)
    );
    set(&h, 0o700);
    home.ok(&["device", "list"]);

    let site = h.join("site.toml");
    set(&site, 0o622);
    let o = home.run(&["device", "list"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("chmod go-w"), "{}", stderr(&o));
    set(&site, 0o600);

    // A chip profile someone else can edit would be locked into chips for ever.
    let text = std::fs::read_to_string(&site).expect("site");
    let custom = text.replacen("chip = \"tls-device\"", "chip = \"mine\"", 1);
    assert_ne!(custom, text);
    std::fs::write(&site, &custom).expect("site");
    std::fs::create_dir_all(h.join("chips")).expect("chips");
    let profile = h.join("chips/mine.toml");
    std::fs::write(&profile, atecc::profile::TLS_DEVICE_PROFILE).expect("profile");
    set(&profile, 0o666);
    let o = home.run(&[
        "device",
        "provision",
        "--port",
        "/nonexistent",
        "--id",
        "salon-1",
        "--profile",
        "climat",
        "--dry-run",
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("chmod go-w"), "{}", stderr(&o));
    assert!(stderr(&o).contains("mine.toml"), "{}", stderr(&o));
}

#[test]
fn a_chip_profile_name_that_is_a_path_is_refused_at_the_line_that_names_it() {
    let home = Home::new();
    let site = home.work().join("site.toml");
    let text = manifests::site::EXAMPLE_SMART_HOME.replacen(
        "chip = \"tls-device\"",
        "chip = \"../../etc/evil\"",
        1,
    );
    std::fs::write(&site, text).expect("site");
    let o = home.run(&["init", "--site", &site.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("profiles.climat.chip"),
        "{}",
        stderr(&o)
    );
    assert!(!home.path().join("ledger.sqlite").exists());
}

#[test]
fn crl_targets_read_back_from_the_ledger_are_checked_before_anything_is_written() {
    let home = Home::with_broker();
    let out = home.work().join("broker");
    home.emit_broker(&out, None, &[]);
    // The broker directory becomes a link to somewhere else: nothing is written there.
    let elsewhere = home.work().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    std::fs::write(elsewhere.join("mosquitto.conf"), "x").expect("conf");
    std::fs::rename(&out, home.work().join("moved")).expect("move");
    symlink(&elsewhere, &out).expect("plant");
    let o = home.run(&["crl", "--renew"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("NOT written"), "{text}");
    assert!(text.contains("symbolic link"), "{text}");
    assert!(!elsewhere.join("crl.pem").exists());

    // A directory others can write, and one without a broker configuration: refused too.
    std::fs::remove_file(&out).expect("unplant");
    std::fs::rename(home.work().join("moved"), &out).expect("back");
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let j = home.json(&["crl", "--renew"]);
    assert_eq!(j["skipped"].as_array().map(Vec::len), Some(1), "{j}");
    assert!(
        j["skipped"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("chmod go-w"),
        "{j}"
    );
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    // A FIFO planted as crl.pem is replaced, never read (no hang).
    std::fs::remove_file(out.join("crl.pem")).expect("rm");
    nix::unistd::mkfifo(
        &out.join("crl.pem"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("fifo");
    let t = Instant::now();
    let j = home.json(&["crl", "--renew"]);
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(j["skipped"].as_array().map(Vec::len), Some(0), "{j}");
    assert!(
        std::fs::symlink_metadata(out.join("crl.pem"))
            .expect("crl")
            .is_file()
    );
}

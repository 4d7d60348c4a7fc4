//! `device provision` and `device revoke` as a new user first meets them: a wrong `--port`,
//! a board running the other firmware, `--key-source host` with the example site, a dry run
//! without the CA passphrase, and `--json` records that agree with the exit code.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_of(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", stdout(o), stderr(o)))
}

/// Every file of the home with its contents, to show that nothing changed.
fn snapshot(home: &Home) -> Vec<(String, Vec<u8>)> {
    home.files()
        .into_iter()
        .map(|f| {
            let data = std::fs::read(home.path().join(&f)).unwrap_or_default();
            (f, data)
        })
        .collect()
}

#[test]
fn a_port_that_is_a_file_a_directory_or_a_fifo_is_named_as_such() {
    let home = home_with_site(free_port());
    let file = home.work().join("notes.txt");
    std::fs::write(&file, "not a tty").expect("write");
    let dir = home.work().join("a-dir");
    std::fs::create_dir(&dir).expect("dir");
    let fifo = home.work().join("a-fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
    let before = snapshot(&home);
    for (path, what) in [
        (&file, "a regular file"),
        (&dir, "a directory"),
        (&fifo, "a FIFO (named pipe)"),
    ] {
        let p = path.to_string_lossy().into_owned();
        let t = Instant::now();
        let o = home.run(&[
            "device",
            "provision",
            "--port",
            &p,
            "--id",
            "salon-1",
            "--profile",
            "climat",
        ]);
        assert_eq!(
            o.status.code(),
            Some(3),
            "{p}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        let e = stderr(&o);
        assert!(
            e.contains(&format!("{p} is {what}, not a serial port")),
            "{e}"
        );
        assert!(e.contains("/dev/ttyUSB0"), "says what to give instead: {e}");
        assert!(!e.contains("Not a typewriter"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
    assert_eq!(std::fs::read(&file).expect("read"), b"not a tty");
    assert!(snapshot(&home) == before, "the home changed");
}

#[test]
fn a_mongoose_board_under_the_kit_transport_is_told_to_use_transport_mos_at_once() {
    let home = home_with_site(free_port());
    let board = SimBoard::start_with(&home.work(), "m", 0, false, &["--protocol", "mos"]);
    let port = board.port();
    let t = Instant::now();
    let o = home.run(&[
        "--json",
        "device",
        "provision",
        "--port",
        &port,
        "--id",
        "salon-1",
        "--profile",
        "climat",
        "--lock",
    ]);
    let took = t.elapsed();
    assert_eq!(o.status.code(), Some(3), "{}{}", stdout(&o), stderr(&o));
    // One run, not four: well under the four retries' time.
    assert!(took < Duration::from_secs(4), "{took:?}");
    let v = json_of(&o);
    let b = &v["boards"][0];
    let error = b["error"].as_str().expect("error");
    assert!(
        error.contains("this board runs Mongoose OS")
            && error.ends_with("re-run with --transport mos"),
        "{error}"
    );
    assert_eq!(b["id"], "salon-1", "{b}");
    assert_eq!(b["port"], port.as_str(), "{b}");
    assert_eq!(b["ok"], false, "{b}");
    assert_eq!(b["status"], "failed", "{b}");
    assert_eq!(b["exit_code"], 3, "{b}");
    assert_eq!(v["exit_code"], 3, "{v}");
    assert!(
        stderr(&o).contains("help: re-run with --transport mos"),
        "{}",
        stderr(&o)
    );
    // Nothing was done to the chip.
    let chip = board.stop_and_open_chip();
    assert!(!chip.config_zone().is_config_locked());
}

#[test]
fn a_kit_board_under_the_mos_transport_is_told_to_use_the_kit_transport() {
    let home = home_with_site(free_port());
    let board = SimBoard::start(&home.work(), "k", 0, false);
    let t = Instant::now();
    let o = home.run(&[
        "device",
        "provision",
        "--transport",
        "mos",
        "--port",
        &board.port(),
        "--id",
        "salon-1",
        "--profile",
        "climat",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}{}", stdout(&o), stderr(&o));
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    let out = stdout(&o);
    assert!(
        out.contains("this board runs the provisioning firmware")
            && out.contains("re-run with --transport kit"),
        "{out}"
    );
}

#[test]
fn host_key_source_works_with_the_example_site_profiles() {
    let home = home_with_site(free_port());
    let site = manifests::site::Site::load(&home.path().join("site.toml")).expect("site");
    let board = SimBoard::start(&home.work(), "h", 0, false);
    let port = board.port();
    // Every profile of the example site accepts a host key (checked before any chip).
    for name in site.profiles.keys().filter(|n| *n != "hostkey") {
        let o = home.run(&[
            "device",
            "provision",
            "--port",
            &port,
            "--id",
            "salon-1",
            "--profile",
            name,
            "--key-source",
            "host",
            "--dry-run",
        ]);
        assert!(o.status.success(), "{name}: {}{}", stdout(&o), stderr(&o));
        assert!(
            stdout(&o).contains("inject it into slot 0 with an encrypted PrivWrite"),
            "{name}: {}",
            stdout(&o)
        );
    }
    // And provisions: the key is the host's, injected encrypted, certified, slot locked.
    let o = home.run(&[
        "--json",
        "device",
        "provision",
        "--port",
        &port,
        "--id",
        "salon-1",
        "--profile",
        "climat",
        "--key-source",
        "host",
        "--lock",
    ]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let v = json_of(&o);
    let r = &v["boards"][0]["result"];
    assert_eq!(r["status"], "provisioned", "{r}");
    let key_step = r["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["step"] == "key")
        .expect("key step");
    assert_eq!(key_step["action"], "done");
    assert!(
        key_step["detail"]
            .as_str()
            .is_some_and(|d| d.contains("host key injected in slot 0")),
        "{key_step}"
    );
    let show = home.json(&["device", "show", "salon-1"]);
    assert_eq!(show["identity"]["attrs"]["key_source"], "host", "{show}");
    assert_eq!(show["identity"]["attrs"]["key_slot"], 0, "{show}");
    let public = r["public_key"].as_str().expect("public key").to_string();
    let mut chip = board.stop_and_open_chip();
    let zone = chip.config_zone();
    assert!(
        zone.is_data_locked() && zone.is_slot_locked(0),
        "slot 0 locked"
    );
    let on_chip = atecc::client::Client::new(&mut chip)
        .public_key(0)
        .expect("public key");
    assert_eq!(hex::encode(on_chip), public);
}

#[test]
fn a_key_slot_that_takes_no_host_key_names_the_files_and_lines_to_change() {
    let home = home_with_site(free_port());
    // A chip profile whose slot 0 takes GenKey only (as the built-in one once did).
    let chip = atecc::profile::TLS_DEVICE_PROFILE.replacen(
        "write_key = 4\n# After lock: GenKey (--key-source chip) or a PrivWrite encrypted with the key in slot 4\n# (--key-source host); never a Write.\nwrite_config = 0b0110",
        "write_config = 0b0010",
        1,
    );
    assert_ne!(chip, atecc::profile::TLS_DEVICE_PROFILE, "replacement");
    std::fs::create_dir_all(home.path().join("chips")).expect("dir");
    let chip_file = home.path().join("chips/genkey-only.toml");
    std::fs::write(&chip_file, &chip).expect("write");
    let slot_line = chip.lines().position(|l| l == "[slot.0]").expect("slot 0") + 1;
    let site_file = home.path().join("site.toml");
    let mut text = std::fs::read_to_string(&site_file).expect("site");
    text.push_str("\n[profiles.genkey]\nchip = \"genkey-only\"\nreadings = [{ topic = \"{root}/{room}/temperature\", quantity = \"temperature\" }]\n");
    std::fs::write(&site_file, &text).expect("write");
    let section_line = text
        .lines()
        .position(|l| l == "[profiles.genkey]")
        .expect("section")
        + 1;
    let board = SimBoard::start(&home.work(), "g", 0, false);
    let before = snapshot(&home);
    let o = home.run(&[
        "device",
        "provision",
        "--port",
        &board.port(),
        "--id",
        "salon-1",
        "--profile",
        "genkey",
        "--key-source",
        "host",
        "--lock",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}{}", stdout(&o), stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("profile `genkey`"), "{e}");
    assert!(
        e.contains(&format!("{}:{section_line}", site_file.display())),
        "names the site file and line: {e}"
    );
    assert!(
        e.contains(&format!(
            "{}, line {slot_line} ([slot.0])",
            chip_file.display()
        )),
        "names the chip profile file and line: {e}"
    );
    assert!(
        e.contains("set key_slot = 2"),
        "offers the slot that works: {e}"
    );
    assert!(
        e.contains("chip = \"tls-device\""),
        "offers the built-in profile: {e}"
    );
    assert!(snapshot(&home) == before, "the home changed");
    let chip = board.stop_and_open_chip();
    assert!(!chip.config_zone().is_config_locked());
}

#[test]
fn a_dry_run_needs_no_passphrase_and_changes_nothing() {
    let home = home_with_site(free_port());
    let board = SimBoard::start(&home.work(), "d", 0, false);
    let port = board.port();
    let dry = |extra: &[&str]| {
        let mut args = vec![
            "--json",
            "device",
            "provision",
            "--port",
            port.as_str(),
            "--id",
            "bureau-1",
            "--profile",
            "climat",
            "--dry-run",
        ];
        args.extend_from_slice(extra);
        // No passphrase anywhere and no terminal to ask on.
        home.cmd(&args)
            .env_remove("PROVISIONER_PASSPHRASE")
            .output()
            .expect("run")
    };
    let before = snapshot(&home);
    let o = dry(&[]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let v = json_of(&o);
    assert_eq!(v["boards"][0]["status"], "dry-run", "{v}");
    assert_eq!(v["boards"][0]["result"]["status"], "dry-run", "{v}");
    assert!(snapshot(&home) == before, "a dry run changed the home");

    // A provisioned board: the dry run verifies from the ledger, issues nothing.
    let done = home.run(&[
        "device",
        "provision",
        "--port",
        &port,
        "--id",
        "bureau-1",
        "--profile",
        "climat",
        "--lock",
    ]);
    assert!(done.status.success(), "{}{}", stdout(&done), stderr(&done));
    let before = snapshot(&home);
    for extra in [&[][..], &["--reissue"][..]] {
        let o = dry(extra);
        assert!(
            o.status.success(),
            "{extra:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        let v = json_of(&o);
        let steps = v["boards"][0]["result"]["steps"]
            .as_array()
            .expect("steps")
            .clone();
        let cert = steps
            .iter()
            .find(|s| s["step"] == "certificate")
            .expect("certificate step");
        let expected = if extra.is_empty() {
            "verified"
        } else {
            "would"
        };
        assert_eq!(cert["action"], expected, "{extra:?}: {cert}");
        assert!(
            steps.iter().all(|s| s["action"] != "done"),
            "{extra:?}: {steps:?}"
        );
    }
    assert!(snapshot(&home) == before, "a dry run changed the home");
    let show = home.json(&["device", "show", "bureau-1"]);
    assert_eq!(
        show["certificates"].as_array().expect("certs").len(),
        1,
        "a dry run with --reissue issued: {show}"
    );
}

#[test]
fn json_records_of_stopped_and_failed_boards_agree_with_the_exit_code() {
    let home = home_with_site(free_port());
    let board = SimBoard::start(&home.work(), "s", 0, false);
    let port = board.port();
    // Alone, a board stopped before locking: exit 6, and its record is not "ok".
    let o = home.run(&[
        "--json",
        "device",
        "provision",
        "--port",
        &port,
        "--id",
        "garage-1",
        "--profile",
        "porte",
    ]);
    assert_eq!(o.status.code(), Some(6), "{}{}", stdout(&o), stderr(&o));
    let v = json_of(&o);
    let b = &v["boards"][0];
    assert_eq!(b["ok"], false, "{b}");
    assert_eq!(b["status"], "stopped", "{b}");
    assert_eq!(b["stopped"], "needs --lock", "{b}");
    assert_eq!(b["exit_code"], 6, "{b}");
    assert_eq!(b["id"], "garage-1", "{b}");
    assert_eq!(b["port"], port.as_str(), "{b}");
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["exit_code"], 6, "{v}");

    // With a board that fails: every record has its id and port; the failure sets the code.
    let missing = home.work().join("ttyUSB-gone");
    let missing = missing.to_string_lossy().into_owned();
    let o = home.run(&[
        "--json",
        "device",
        "provision",
        "--port",
        &port,
        "--port",
        &missing,
        "--id",
        "garage-{n}",
        "--profile",
        "porte",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let v = json_of(&o);
    let boards = v["boards"].as_array().expect("boards");
    assert_eq!(boards.len(), 2, "{v}");
    assert_eq!(boards[0]["id"], "garage-1", "{v}");
    assert_eq!(boards[0]["status"], "stopped", "{v}");
    let failed = &boards[1];
    assert_eq!(failed["id"], "garage-2", "{failed}");
    assert_eq!(failed["port"], missing.as_str(), "{failed}");
    assert_eq!(failed["ok"], false, "{failed}");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["exit_code"], 1, "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("no such serial port")),
        "{failed}"
    );
    assert_eq!(v["exit_code"], 1, "{v}");
    assert_eq!(v["ok"], false, "{v}");
}

#[test]
fn device_revoke_prints_its_json_record() {
    let home = Home::with_broker();
    home.client("probe-1", &[]);
    let serial = home.json(&["device", "show", "probe-1"])["certificates"][0]["serial"]
        .as_str()
        .expect("serial")
        .to_string();
    // `--json` before or after the subcommand.
    let o = home.run(&["device", "revoke", "probe-1", "--json"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let v = json_of(&o);
    assert_eq!(v["id"], "probe-1", "{v}");
    assert_eq!(v["revoked"], serde_json::json!([serial]), "{v}");
    assert_eq!(v["already_revoked"], false, "{v}");
    assert!(v["crl"]["number"].as_i64().is_some_and(|n| n >= 2), "{v}");
    assert!(
        v["crl"]["written"].as_array().is_some_and(|w| w
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.ends_with("crl.pem")))),
        "{v}"
    );
    // Again: nothing left to revoke, and the record and the text say so.
    let v = home.json(&["device", "revoke", "probe-1"]);
    assert_eq!(v["revoked"], serde_json::json!([]), "{v}");
    assert_eq!(v["already_revoked"], true, "{v}");
    let text = home.ok(&["device", "revoke", "probe-1"]);
    assert!(text.contains("already revoked"), "{text}");
}

#[test]
fn the_id_template_shown_by_the_help_is_printed_as_written_and_works() {
    let home = home_with_site(free_port());
    let help = home.ok(&["device", "provision", "--help"]);
    assert!(help.contains("--id 'cuisine-{N}'"), "{help}");
    let a = SimBoard::start(&home.work(), "ta", 0, false);
    let b = SimBoard::start(&home.work(), "tb", 0, false);
    let v = home.json(&[
        "device",
        "provision",
        "--port",
        &a.port(),
        "--port",
        &b.port(),
        "--id",
        "salon-{N}",
        "--profile",
        "climat",
        "--dry-run",
    ]);
    let ids: Vec<&str> = v["boards"]
        .as_array()
        .expect("boards")
        .iter()
        .filter_map(|b| b["id"].as_str())
        .collect();
    assert_eq!(ids, ["salon-1", "salon-2"], "{v}");
}

#[test]
fn a_port_held_with_a_lock_is_named_in_use_with_its_holder_at_once() {
    use std::os::unix::fs::OpenOptionsExt;
    let home = home_with_site(free_port());
    let board = SimBoard::start(&home.work(), "b", 0, false);
    // What picocom does: open the port and take an exclusive flock on it.
    let held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open(&board.link)
        .expect("open");
    let lock =
        nix::fcntl::Flock::lock(held, nix::fcntl::FlockArg::LockExclusiveNonblock).expect("flock");
    let t = Instant::now();
    let o = home.run(&[
        "--json",
        "device",
        "provision",
        "--port",
        &board.port(),
        "--id",
        "salon-1",
        "--profile",
        "climat",
    ]);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let v = json_of(&o);
    let e = v["boards"][0]["error"].as_str().expect("error").to_string();
    assert!(e.contains("is in use by another program"), "{e}");
    assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
    assert!(e.contains("flock") && e.contains("picocom"), "{e}");
    assert!(!e.contains("the device is gone"), "{e}");
    drop(lock);
}

//! Ownership of a chip: a board provisioned by one CA home is not re-keyed by another without
//! `--takeover`, and the example profile makes the identity key permanent once certified.

mod common;

use std::path::Path;

use atecc::client::{Client, ClientError};
use common::*;

fn provision(home: &Home, port: &str, id: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--json", "device", "provision", "--port", port, "--id", id];
    args.extend_from_slice(extra);
    home.run(&args)
}

fn result(out: &std::process::Output) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["boards"][0].clone()
}

fn step<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["result"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no `{name}` step: {r}"))
}

/// Everything the chip keeps across power cycles, and the board's store file.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    config: Vec<u8>,
    slots: Vec<Vec<u8>>,
    otp: Vec<u8>,
    public_key: [u8; 64],
    store: Vec<u8>,
}

fn snapshot(board: SimBoard, slot: u8) -> (Snapshot, [u8; 64]) {
    let store_path = format!("{}.store", board.state.display());
    let mut chip = board.stop_and_open_chip();
    let public_key = Client::new(&mut chip).public_key(slot).expect("public key");
    let s = Snapshot {
        config: chip.config_zone().0.to_vec(),
        slots: (0..16)
            .map(|n| chip.slot(n).expect("slot").to_vec())
            .collect(),
        otp: chip.otp().to_vec(),
        public_key,
        store: std::fs::read(store_path).expect("board store"),
    };
    (s, public_key)
}

/// The certified public key (X‖Y) of `id`'s active certificate in `home`'s ledger.
fn certified_key(home: &Home, id: &str) -> Vec<u8> {
    let show = home.json(&["device", "show", id]);
    let pem = show["certificates"]
        .as_array()
        .expect("certs")
        .iter()
        .rfind(|c| c["revoked_at"].is_null())
        .expect("an active certificate")["pem"]
        .as_str()
        .expect("pem")
        .to_string();
    let f = home.work().join(format!("{id}-check.crt"));
    std::fs::write(&f, pem).expect("write");
    let pubpem = openssl_ok(&["x509", "-in", &f.to_string_lossy(), "-noout", "-pubkey"]);
    let pp = home.work().join("check-pub.pem");
    std::fs::write(&pp, pubpem).expect("write");
    let der = home.work().join("check-pub.der");
    openssl_ok(&[
        "pkey",
        "-pubin",
        "-in",
        &pp.to_string_lossy(),
        "-outform",
        "DER",
        "-out",
        &der.to_string_lossy(),
    ]);
    let d = std::fs::read(&der).expect("der");
    d[d.len() - 64..].to_vec()
}

fn fingerprint(cert: &Path) -> String {
    let out = openssl_ok(&[
        "x509",
        "-in",
        &cert.to_string_lossy(),
        "-noout",
        "-fingerprint",
        "-sha256",
    ]);
    out.trim()
        .split_once('=')
        .expect("fingerprint line")
        .1
        .to_string()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn is_ledger_device(home: &Home, id: &str) -> bool {
    home.json(&["device", "list"])
        .as_array()
        .expect("list")
        .iter()
        .any(|d| d["id"] == id)
}

#[test]
fn another_homes_board_is_refused_unchanged_and_its_locked_key_is_only_ever_certified() {
    let a = home_with_site(free_port());
    let b = home_with_site(free_port());
    let dir = a.work();
    let board = SimBoard::start(&dir, "fielded", 0, false);
    let first = provision(
        &a,
        &board.port(),
        "salon-1",
        &["--profile", "climat", "--lock"],
    );
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let r = result(&first);
    assert!(
        step(&r, "owner")["detail"]
            .as_str()
            .expect("detail")
            .starts_with("blank"),
        "{r}"
    );
    assert_eq!(step(&r, "key lock")["action"], "done", "{r}");
    let serial_a = r["result"]["certificate"]
        .as_str()
        .expect("serial")
        .to_string();
    // A re-run by the same home verifies, slot lock included.
    let again = result(&provision(
        &a,
        &board.port(),
        "salon-1",
        &["--profile", "climat", "--lock"],
    ));
    assert_eq!(again["result"]["status"], "verified", "{again}");
    assert!(
        step(&again, "owner")["detail"]
            .as_str()
            .expect("detail")
            .starts_with("this home's"),
        "{again}"
    );
    assert_eq!(step(&again, "key lock")["action"], "verified", "{again}");

    let (before, key_a) = snapshot(board, 0);
    assert_eq!(certified_key(&a, "salon-1"), key_a.to_vec());
    let board = SimBoard::start(&dir, "fielded", 0, false);

    // Home B (a wrong PROVISIONER_HOME): refused, with what was found and what is at stake.
    let refused = provision(
        &b,
        &board.port(),
        "salon-1",
        &["--profile", "climat", "--lock"],
    );
    let text = String::from_utf8_lossy(&refused.stdout).into_owned();
    assert_eq!(
        refused.status.code(),
        Some(5),
        "{text}{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let chip_serial = r["result"]["chip_serial"].as_str().expect("sn");
    let root_a = fingerprint(&a.path().join("ca/root.crt"));
    for needle in [
        "provisioned by another CA",
        chip_serial,
        "CN=salon-1",
        serial_a.as_str(),
        "valid until 20",
        root_a.as_str(),
        "the certificate's key is the chip's key in slot 0",
        "Slot 0 is locked",
        "--takeover",
        "Nothing was changed",
    ] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }
    assert_ne!(root_a, fingerprint(&b.path().join("ca/root.crt")));
    assert!(!is_ledger_device(&b, "salon-1"), "B recorded the device");
    let (after, _) = snapshot(board, 0);
    assert_eq!(
        after, before,
        "the refused run changed the chip or the board"
    );

    // The slot is locked: nobody with the board can re-key it, not even by hand.
    let mut chip = atecc::emulator::Chip::open(&dir.join("fielded.chip")).expect("chip");
    assert!(chip.config_zone().is_slot_locked(0));
    let genkey = Client::new(&mut chip).gen_key(0);
    assert!(
        matches!(genkey, Err(ClientError::Chip(_))),
        "GenKey on the locked identity slot: {genkey:?}"
    );
    drop(chip);

    // --takeover on a locked slot: the chip's key is kept and certified by B.
    let board = SimBoard::start(&dir, "fielded", 0, false);
    let taken = provision(
        &b,
        &board.port(),
        "salon-1",
        &["--profile", "climat", "--lock", "--takeover"],
    );
    assert!(
        taken.status.success(),
        "{}{}",
        String::from_utf8_lossy(&taken.stdout),
        String::from_utf8_lossy(&taken.stderr)
    );
    let t = result(&taken);
    assert!(
        step(&t, "owner")["detail"]
            .as_str()
            .expect("detail")
            .contains("taken over"),
        "{t}"
    );
    assert!(
        step(&t, "key")["detail"]
            .as_str()
            .expect("detail")
            .contains("is locked"),
        "{t}"
    );
    assert_eq!(certified_key(&b, "salon-1"), key_a.to_vec());
    // A's certificate still matches the key; the board now trusts B's root, not A's.
    assert_eq!(certified_key(&a, "salon-1"), key_a.to_vec());
    let (now, key_now) = snapshot(board, 0);
    assert_eq!(key_now, key_a, "a locked key changed");
    let root_b = std::fs::read(b.path().join("ca/root.crt")).expect("root");
    let root_a_pem = std::fs::read(a.path().join("ca/root.crt")).expect("root");
    assert!(contains(&now.store, &root_b) && !contains(&now.store, &root_a_pem));

    // Now it is B's board: B verifies it, A is refused.
    let board = SimBoard::start(&dir, "fielded", 0, false);
    let b_again = result(&provision(
        &b,
        &board.port(),
        "salon-1",
        &["--profile", "climat", "--lock"],
    ));
    assert_eq!(b_again["result"]["status"], "verified", "{b_again}");
    let a_again = provision(
        &a,
        &board.port(),
        "salon-1",
        &["--profile", "climat", "--lock"],
    );
    assert_eq!(
        a_again.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&a_again.stdout)
    );
}

/// Both homes get a chip profile like the built-in one but whose key slot is not Lockable,
/// and a site profile `libre` that uses it.
fn with_unlockable_profile(home: &Home) {
    let text = atecc::profile::TLS_DEVICE_PROFILE.replace("lockable = true", "lockable = false");
    let chips = home.path().join("chips");
    std::fs::create_dir_all(&chips).expect("dir");
    std::fs::write(chips.join("libre.toml"), text).expect("write");
    let site = home.path().join("site.toml");
    let mut s = std::fs::read_to_string(&site).expect("site");
    s.push_str("\n[profiles.libre]\nchip = \"libre\"\nreadings = [{ topic = \"{root}/{room}/temperature\", quantity = \"temperature\" }]\n");
    std::fs::write(&site, s).expect("write");
}

#[test]
fn with_takeover_an_unlocked_key_slot_is_re_keyed_and_certified_by_the_new_home() {
    let a = home_with_site(free_port());
    let b = home_with_site(free_port());
    with_unlockable_profile(&a);
    with_unlockable_profile(&b);
    let dir = a.work();
    let board = SimBoard::start(&dir, "loose", 0, false);
    let first = provision(
        &a,
        &board.port(),
        "garage-1",
        &["--profile", "libre", "--lock"],
    );
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let r = result(&first);
    assert_eq!(step(&r, "key lock")["action"], "skipped", "{r}");
    let (before, key_a) = snapshot(board, 0);
    assert_eq!(certified_key(&a, "garage-1"), key_a.to_vec());

    let board = SimBoard::start(&dir, "loose", 0, false);
    let refused = provision(
        &b,
        &board.port(),
        "garage-1",
        &["--profile", "libre", "--lock"],
    );
    let text = String::from_utf8_lossy(&refused.stdout).into_owned();
    assert_eq!(refused.status.code(), Some(5), "{text}");
    assert!(
        text.contains("would re-key slot 0")
            && text.contains("the existing certificate would stop matching")
            && text.contains("CN=garage-1"),
        "{text}"
    );
    let (after, _) = snapshot(board, 0);
    assert_eq!(
        after, before,
        "the refused run changed the chip or the board"
    );

    let board = SimBoard::start(&dir, "loose", 0, false);
    let taken = provision(
        &b,
        &board.port(),
        "garage-1",
        &["--profile", "libre", "--lock", "--takeover"],
    );
    assert!(
        taken.status.success(),
        "{}{}",
        String::from_utf8_lossy(&taken.stdout),
        String::from_utf8_lossy(&taken.stderr)
    );
    let t = result(&taken);
    assert_eq!(step(&t, "key")["action"], "done", "{t}");
    let (now, key_b) = snapshot(board, 0);
    assert_ne!(key_b, key_a, "the chip was not re-keyed");
    assert_eq!(certified_key(&b, "garage-1"), key_b.to_vec());
    assert_ne!(
        certified_key(&a, "garage-1"),
        key_b.to_vec(),
        "A's certificate no longer matches the chip"
    );
    let root_b = std::fs::read(b.path().join("ca/root.crt")).expect("root");
    assert!(contains(&now.store, &root_b), "the board does not trust B");
}

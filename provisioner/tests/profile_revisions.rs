//! A config zone is locked for ever: a chip locked with an earlier revision of the built-in
//! `tls-device` profile must still be recognised after the profile changed, not refused as
//! "locked with another configuration".

mod common;

use common::*;

fn run(home: &Home, board: &SimBoard) -> std::process::Output {
    home.run(&[
        "device",
        "provision",
        "--port",
        &board.port(),
        "--id",
        "salon-1",
        "--profile",
        "climat",
        "--lock",
    ])
}

#[test]
fn a_chip_locked_with_revision_1_of_tls_device_is_still_a_tls_device_chip() {
    let home = home_with_site(free_port());
    // Provision as an older release did: with revision 1 of the built-in profile.
    let chips = home.path().join("chips");
    std::fs::create_dir_all(&chips).expect("chips");
    std::fs::write(
        chips.join("r1.toml"),
        atecc::profile::TLS_DEVICE_EARLIER_REVISIONS[0],
    )
    .expect("r1");
    let site = home.path().join("site.toml");
    let text = std::fs::read_to_string(&site).expect("site");
    let old = text.replacen("chip = \"tls-device\"", "chip = \"r1\"", 1);
    assert_ne!(old, text);
    std::fs::write(&site, &old).expect("site");
    let board = SimBoard::start(&home.work(), "b", 0, false);
    let o = run(&home, &board);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Today's release, today's built-in profile: the same chip is verified, not refused.
    std::fs::write(&site, &text).expect("site");
    let o = run(&home, &board);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}{err}");
    assert!(
        !format!("{out}{err}").contains("locked with another"),
        "{out}{err}"
    );
    assert!(out.contains("verified"), "{out}");
    // Revision 1 has no Lockable slot: its key slot stays as it was locked.
    let chip = board.stop_and_open_chip();
    assert!(!chip.config_zone().is_slot_locked(0));
}

//! Re-provisioning a board the ledger knows with another device profile: refused without
//! `--change-profile` (ledger and board untouched), and with it the ledger records the new
//! profile and topics, every registered broker's ACL admits them, and the board's readings
//! on the new topics reach a subscriber through a real mosquitto after the printed reload.

mod common;

use common::*;

fn provision(home: &Home, board: &SimBoard, profile: &str, extra: &[&str]) -> std::process::Output {
    let port = board.port();
    let mut args = vec![
        "device",
        "provision",
        "--port",
        &port,
        "--id",
        "salon-1",
        "--profile",
        profile,
        "--lock",
    ];
    args.extend_from_slice(extra);
    home.run(&args)
}

#[test]
fn a_profile_change_is_refused_without_the_flag_and_with_it_reaches_ledger_acl_and_subscriber() {
    let port = free_port();
    let home = home_with_site(port);
    let board = SimBoard::start(&home.work(), "salon", 115_200, false);
    let monitor = home.client("monitor", &["--subscribe", "maison/#"]);
    let out = home.work().join("broker");
    home.emit_broker(&out, None, &[]);
    let ca = out.join("ca.crt");
    let broker = Mosquitto::start(
        &out.join("mosquitto.conf"),
        port,
        &home.work().join("mosquitto.log"),
    );

    let o = provision(&home, &board, "thermometre", &[]);
    assert!(o.status.success(), "{}", output_text(&o));
    broker.reload();
    let t = first_message(port, &ca, &monitor, "maison/salon/temperature", 30);
    assert!(
        t.starts_with("maison/salon/temperature "),
        "{t}\n{}",
        board.log_text()
    );

    // Another profile without the flag: refused before the port is opened, naming both
    // profiles and the flag; the ledger, the ACL and the board's files are as they were.
    let show = home.json(&["device", "show", "salon-1"]);
    let acl = std::fs::read(out.join("acl")).expect("acl");
    let store = board.state.with_extension("chip.store");
    let store_before = std::fs::read(&store).expect("board store");
    let o = provision(&home, &board, "luminosite", &[]);
    assert_eq!(o.status.code(), Some(5), "{}", output_text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for needle in [
        "`thermometre`",
        "--profile luminosite",
        "--change-profile",
        "nothing was changed",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert_eq!(
        home.json(&["device", "show", "salon-1"]),
        show,
        "ledger unchanged"
    );
    assert_eq!(
        std::fs::read(out.join("acl")).expect("acl"),
        acl,
        "ACL unchanged"
    );
    assert_eq!(
        std::fs::read(&store).expect("store"),
        store_before,
        "board files unchanged"
    );

    // With the flag: the ledger and the registered broker's ACL follow, the reload is
    // printed, and after it the new topic's readings arrive.
    let o = provision(&home, &board, "luminosite", &["--change-profile"]);
    assert!(o.status.success(), "{}", output_text(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("profile `thermometre` -> `luminosite`"),
        "{text}"
    );
    assert!(text.contains("reload: kill -HUP"), "{text}");
    let show = home.json(&["device", "show", "salon-1"]);
    assert_eq!(show["identity"]["profile"], "luminosite", "{show}");
    let acl = String::from_utf8_lossy(&std::fs::read(out.join("acl")).expect("acl")).into_owned();
    assert!(acl.contains("topic write maison/salon/luminosite"), "{acl}");
    broker.reload();
    let l = first_message(port, &ca, &monitor, "maison/salon/luminosite", 30);
    assert!(
        l.starts_with("maison/salon/luminosite "),
        "{l}\n{}\n{}",
        board.log_text(),
        broker.log_text()
    );
}

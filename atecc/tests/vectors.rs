//! The known vectors of the reference fact sheet, through the public API.
#![allow(clippy::unwrap_used)]

use atecc::emulator::Chip;
use atecc::opcode::LockTarget;
use atecc::packet::{Command, MAX_PACKET};
use atecc::status::{Status, status_frame};

fn encode(cmd: Command<'_>) -> Vec<u8> {
    let mut buf = [0u8; MAX_PACKET];
    let n = cmd.encode(&mut buf).unwrap();
    buf[..n].to_vec()
}

#[test]
fn wake_response() {
    let mut chip = Chip::new_blank();
    assert_eq!(chip.wake(), [0x04, 0x11, 0x33, 0x43]);
    assert_eq!(Status::AfterWake.frame(), [0x04, 0x11, 0x33, 0x43]);
}

#[test]
fn packet_crcs() {
    let cases: [(Command<'_>, &str); 6] = [
        (Command::info_revision(), "0730000000035D"),
        (Command::random(), "071B00000024CD"),
        (
            Command::read(atecc::opcode::Zone::Config, 0, true),
            "070280000009AD",
        ),
        (
            Command::lock_unchecked(LockTarget::Config),
            "0717800000398D",
        ),
        (Command::lock_unchecked(LockTarget::Data), "07178100003A07"),
        (Command::gen_key_create(0), "07400400008387"),
    ];
    for (cmd, hex_packet) in cases {
        assert_eq!(hex::encode_upper(encode(cmd)), hex_packet);
    }
}

#[test]
fn status_frames_for_every_status_code() {
    let frames = [
        (0x00, "04000340"),
        (0x01, "040100C3"),
        (0x03, "04038342"),
        (0x05, "0405C343"),
        (0x0F, "040F2342"),
        (0x11, "04113343"),
        (0xEE, "04EE3141"),
        (0xFF, "04FF0142"),
    ];
    for (code, frame) in frames {
        assert_eq!(
            hex::encode_upper(status_frame(code)),
            frame,
            "status 0x{code:02X}"
        );
    }
}

#[test]
fn the_chip_sends_those_frames() {
    let mut chip = Chip::new_blank();
    chip.wake();
    // 0x03: bad length; 0x0F: GenKey before config lock; 0xFF: bad CRC.
    let mut bad_len = encode(Command::with_data(
        atecc::opcode::Opcode::Random,
        0,
        0,
        &[1],
    ));
    assert_eq!(chip.transact(&bad_len), status_frame(0x03).to_vec());
    assert_eq!(
        chip.transact(&encode(Command::gen_key_create(0))),
        status_frame(0x0F).to_vec()
    );
    let last = bad_len.len() - 1;
    bad_len[last] ^= 0xFF;
    assert_eq!(chip.transact(&bad_len), status_frame(0xFF).to_vec());
    // 0x00: a config lock without the CRC check succeeds.
    assert_eq!(
        chip.transact(&encode(Command::lock_unchecked(LockTarget::Config))),
        status_frame(0x00).to_vec()
    );
}

//! Every command: success, and each documented failure with the real status code and no
//! change of state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use atecc::client::Client;
use atecc::config::{SlotConfig, address};
use atecc::emulator::Chip;
use atecc::host;
use atecc::opcode::*;
use atecc::packet::{Command, Error, MAX_PACKET};
use atecc::status::status_frame;
use atecc::{Status, crc16};
use common::*;

use Status::{ExecutionError as Exec, ParseError as Parse};

fn awake_blank() -> Chip {
    let mut chip = Chip::new_blank();
    chip.wake();
    chip
}

#[test]
fn bad_crc_and_bad_count_answer_comm_error_and_change_nothing() {
    let mut chip = locked_chip();
    let mut buf = [0u8; MAX_PACKET];
    for cmd in [
        Command::random(),
        Command::gen_key_create(0),
        Command::lock(LockTarget::Slot(14), 0),
    ] {
        let n = cmd.encode(&mut buf).unwrap();
        let before = chip.state_digest();
        let mut bad = buf[..n].to_vec();
        bad[n - 2] ^= 0x01;
        assert_eq!(
            chip.transact(&bad),
            status_frame(0xFF).to_vec(),
            "{cmd:?} with bad CRC"
        );
        let mut short = buf[..n].to_vec();
        short[0] += 1;
        assert_eq!(
            chip.transact(&short),
            status_frame(0xFF).to_vec(),
            "{cmd:?} with bad count"
        );
        assert_eq!(chip.state_digest(), before);
    }
    // A packet too short for opcode and params, with a correct CRC, is a parse error.
    let mut p = vec![0x05, 0x30, 0x00];
    let crc = crc16(&p).to_le_bytes();
    p.extend_from_slice(&crc);
    assert_eq!(chip.transact(&p), status_frame(0x03).to_vec());
    // An unknown opcode too.
    let mut p = vec![0x07, 0x77, 0, 0, 0];
    let crc = crc16(&p).to_le_bytes();
    p.extend_from_slice(&crc);
    assert_eq!(chip.transact(&p), status_frame(0x03).to_vec());
}

#[test]
fn info() {
    let mut chip = locked_chip();
    assert_eq!(
        run(&mut chip, Command::info_revision()),
        Ok(vec![0, 0, 0x50, 0])
    );
    assert_eq!(
        run(&mut chip, Command::info(InfoMode::KeyValid, 0)),
        Ok(vec![0, 0, 0, 0]),
        "no key yet"
    );
    Client::new(&mut chip).gen_key(0).unwrap();
    assert_eq!(
        run(&mut chip, Command::info(InfoMode::KeyValid, 0)),
        Ok(vec![1, 0, 0, 0])
    );
    expect_refused(&mut chip, Command::info(InfoMode::KeyValid, 16), Parse);
    expect_refused(&mut chip, Command::new(Opcode::Info, 9, 0), Parse);
    expect_refused(
        &mut chip,
        Command::with_data(Opcode::Info, 0, 0, &[1]),
        Parse,
    );
}

#[test]
fn random() {
    let mut chip = locked_chip();
    assert_eq!(run(&mut chip, Command::random()).unwrap().len(), 32);
    expect_refused(&mut chip, Command::new(Opcode::Random, 2, 0), Parse);
    expect_refused(
        &mut chip,
        Command::with_data(Opcode::Random, 0, 0, &[0; 20]),
        Parse,
    );
}

#[test]
fn nonce() {
    let mut chip = locked_chip();
    let out = run(&mut chip, Command::nonce(NonceMode::Random, &[7; 20])).unwrap();
    let rand_out: [u8; 32] = out.try_into().unwrap();
    assert_eq!(
        chip.tempkey().unwrap().value,
        host::nonce_random_tempkey(&rand_out, &[7; 20], 0)
    );
    assert_eq!(
        run(&mut chip, Command::nonce(NonceMode::PassThrough, &[9; 32])),
        Ok(vec![0])
    );
    assert_eq!(chip.tempkey().unwrap().value, [9; 32]);
    expect_refused(
        &mut chip,
        Command::with_data(Opcode::Nonce, 2, 0, &[0; 20]),
        Parse,
    );
    expect_refused(
        &mut chip,
        Command::nonce(NonceMode::Random, &[0; 32]),
        Parse,
    );
    expect_refused(
        &mut chip,
        Command::nonce(NonceMode::PassThrough, &[0; 20]),
        Parse,
    );
    expect_refused(
        &mut chip,
        Command::with_data(Opcode::Nonce, 0, 5, &[0; 20]),
        Parse,
    );
}

#[test]
fn gen_dig() {
    let mut chip = locked_chip();
    let other = [0x15, 0x02, 4, 0];
    // No TempKey yet.
    expect_refused(
        &mut chip,
        Command::gen_dig(GenDigZone::Data, 4, &other),
        Exec,
    );
    let tk = Client::new(&mut chip).nonce_random(&[1; 20]).unwrap();
    run(&mut chip, Command::gen_dig(GenDigZone::Data, 4, &other)).unwrap();
    let sn = chip.serial_number();
    let now = chip.tempkey().unwrap();
    assert_eq!(now.value, host::gen_dig(&WRITE_KEY, 2, 4, &sn, &tk));
    assert!(now.gen_dig_data && now.key_id == 4);
    // Config block digest.
    run(&mut chip, Command::gen_dig_plain(GenDigZone::Config, 0)).unwrap();
    expect_refused(
        &mut chip,
        Command::gen_dig_plain(GenDigZone::Config, 4),
        Parse,
    );
    expect_refused(
        &mut chip,
        Command::gen_dig_plain(GenDigZone::Data, 16),
        Parse,
    );
    expect_refused(&mut chip, Command::new(Opcode::GenDig, 3, 0), Parse);
    // A private key never feeds a digest.
    expect_refused(&mut chip, Command::gen_dig_plain(GenDigZone::Data, 0), Exec);
    expect_refused(
        &mut chip,
        Command::with_data(Opcode::GenDig, 2, 4, &[0; 5]),
        Parse,
    );
}

#[test]
fn read() {
    let mut chip = awake_blank();
    // Config reads always work; 4-byte read of word 1 is the revision.
    assert_eq!(
        run(
            &mut chip,
            Command::read(Zone::Config, address::block_word(0, 1), false)
        ),
        Ok(vec![0, 0, 0x50, 0])
    );
    // Data and OTP reads fail before the data zone is locked.
    expect_refused(
        &mut chip,
        Command::read(Zone::Data, address::data(8, 0, 0), true),
        Exec,
    );
    expect_refused(&mut chip, Command::read(Zone::Otp, 0, true), Exec);
    expect_refused(
        &mut chip,
        Command::read(Zone::Config, address::block_word(4, 0), true),
        Parse,
    );
    expect_refused(&mut chip, Command::new(Opcode::Read, 3, 0), Parse);
    let mut chip = locked_chip();
    assert_eq!(
        run(&mut chip, Command::read(Zone::Otp, 0, true)).unwrap(),
        vec![0xFF; 32]
    );
    assert_eq!(
        run(
            &mut chip,
            Command::read(Zone::Data, address::data(8, 12, 0), true)
        )
        .unwrap()
        .len(),
        32
    );
    expect_refused(
        &mut chip,
        Command::read(Zone::Data, address::data(8, 13, 0), true),
        Parse,
    );
    expect_refused(
        &mut chip,
        Command::read(Zone::Data, address::data(0, 2, 0), true),
        Parse,
    );
    // Private keys are never readable; secrets never in 4-byte reads.
    expect_refused(
        &mut chip,
        Command::read(Zone::Data, address::data(0, 0, 0), true),
        Exec,
    );
    expect_refused(
        &mut chip,
        Command::read(Zone::Data, address::data(10, 0, 0), false),
        Exec,
    );
    expect_refused(
        &mut chip,
        Command::read(Zone::Data, address::data(4, 0, 0), true),
        Exec,
    );
}

#[test]
fn write() {
    let mut chip = awake_blank();
    // Config writes: allowed bytes before lock; SN, revision and lock bytes never.
    run(
        &mut chip,
        Command::write(Zone::Config, address::block_word(0, 4), &[0xC2, 0, 0xAA, 0]),
    )
    .unwrap();
    assert_eq!(chip.config_zone().i2c_address(), 0xC2);
    expect_refused(
        &mut chip,
        Command::write(Zone::Config, address::block_word(0, 0), &[0; 4]),
        Exec,
    );
    expect_refused(
        &mut chip,
        Command::write(Zone::Config, address::block_word(2, 5), &[0; 4]),
        Exec,
    );
    expect_refused(
        &mut chip,
        Command::write(Zone::Config, address::block_word(2, 0), &[0; 32]),
        Exec,
    );
    // Data and OTP writes need the config zone locked; bad lengths are parse errors.
    expect_refused(
        &mut chip,
        Command::write(Zone::Data, address::data(8, 0, 0), &[0; 32]),
        Exec,
    );
    expect_refused(&mut chip, Command::write(Zone::Otp, 0, &[0; 32]), Exec);
    expect_refused(
        &mut chip,
        Command::with_data(Opcode::Write, 0x80, 0x20, &[0; 31]),
        Parse,
    );
    let mut chip = config_locked_chip();
    // Before data lock: 32-byte clear writes only; private keys never through Write.
    run(
        &mut chip,
        Command::write(Zone::Data, address::data(8, 3, 0), &[0xAB; 32]),
    )
    .unwrap();
    assert_eq!(&chip.slot(8).unwrap()[96..128], &[0xAB; 32]);
    expect_refused(
        &mut chip,
        Command::write(Zone::Data, address::data(8, 0, 1), &[0; 4]),
        Exec,
    );
    expect_refused(
        &mut chip,
        Command::write(Zone::Data, address::data(0, 0, 0), &[0; 32]),
        Exec,
    );
    run(
        &mut chip,
        Command::write(Zone::Otp, address::block_word(1, 0), &[0x0F; 32]),
    )
    .unwrap();
    let crc = data_summary(&chip);
    Client::new(&mut chip).lock_data(crc).unwrap();
    // After data lock: Always slots take 4-byte writes; OTP read-only mode refuses writes.
    run(
        &mut chip,
        Command::write(Zone::Data, address::data(8, 0, 1), &[1, 2, 3, 4]),
    )
    .unwrap();
    assert_eq!(&chip.slot(8).unwrap()[4..8], &[1, 2, 3, 4]);
    expect_refused(&mut chip, Command::write(Zone::Otp, 0, &[0; 32]), Exec);
    // Slot 0 is WriteConfig Never (GenKey only).
    expect_refused(
        &mut chip,
        Command::write(Zone::Data, address::data(0, 0, 0), &[0; 32]),
        Exec,
    );
}

#[test]
fn priv_write() {
    let mut chip = Chip::new_blank();
    chip.wake();
    let data = [0u8; 68];
    expect_refused(&mut chip, Command::priv_write(0, &data), Exec); // config unlocked
    let mut chip = config_locked_chip();
    expect_refused(&mut chip, Command::priv_write(8, &data), Exec); // not a private-key slot
    expect_refused(&mut chip, Command::priv_write(16, &data), Parse);
    expect_refused(
        &mut chip,
        Command::with_data(Opcode::PrivWrite, 0, 0, &[0; 36]),
        Parse,
    );
    expect_refused(
        &mut chip,
        Command::with_data(Opcode::PrivWrite, 0x41, 0, &data),
        Parse,
    );
    // Encrypted without GenDig of the write key.
    expect_refused(&mut chip, Command::priv_write_encrypted(2, &data), Exec);
}

#[test]
fn lock() {
    let mut chip = awake_blank();
    expect_refused(&mut chip, Command::lock(LockTarget::Data, 0), Exec); // config first
    expect_refused(&mut chip, Command::new(Opcode::Lock, 0x03, 0), Parse);
    expect_refused(&mut chip, Command::new(Opcode::Lock, 0x40, 0), Parse);
    expect_refused(&mut chip, Command::lock(LockTarget::Slot(14), 0), Exec); // data first
    let mut chip = locked_chip();
    expect_refused(&mut chip, Command::lock(LockTarget::Slot(1), 0), Exec); // not lockable
    run(&mut chip, Command::lock(LockTarget::Slot(14), 0)).unwrap();
    assert_eq!(chip.config_zone().slot_locked_bits() & (1 << 14), 0);
}

#[test]
fn gen_key() {
    let mut chip = awake_blank();
    expect_refused(&mut chip, Command::gen_key_create(0), Exec); // config unlocked
    let mut chip = config_locked_chip();
    run(&mut chip, Command::gen_key_create(1)).unwrap(); // before data lock: allowed
    expect_refused(&mut chip, Command::gen_key_create(8), Exec); // not a private-key slot
    expect_refused(&mut chip, Command::gen_key_create(16), Parse);
    expect_refused(&mut chip, Command::new(Opcode::GenKey, 0x05, 0), Parse);
    expect_refused(&mut chip, Command::gen_key_public(3), Exec); // no valid key
    let crc = data_summary(&chip);
    Client::new(&mut chip).lock_data(crc).unwrap();
    // Slot 2 has WriteConfig Encrypt (PrivWrite only): GenKey refused after data lock.
    expect_refused(&mut chip, Command::gen_key_create(2), Exec);
    // Digest mode without a TempKey.
    expect_refused(&mut chip, Command::gen_key(GENKEY_DIGEST, 1, &[]), Exec);
}

#[test]
fn sign() {
    let mut chip = locked_chip();
    Client::new(&mut chip).gen_key(0).unwrap();
    expect_refused(&mut chip, Command::sign_external(0), Exec); // no TempKey
    Client::new(&mut chip).nonce_random(&[0; 20]).unwrap();
    expect_refused(&mut chip, Command::sign_external(0), Exec); // TempKey random, not a message
    Client::new(&mut chip).nonce_load(&[1; 32]).unwrap();
    assert_eq!(run(&mut chip, Command::sign_external(0)).unwrap().len(), 64);
    expect_refused(&mut chip, Command::sign_external(8), Exec);
    expect_refused(&mut chip, Command::sign_external(16), Parse);
    expect_refused(&mut chip, Command::new(Opcode::Sign, 0x81, 0), Parse);
    expect_refused(&mut chip, Command::sign_internal(0, false), Exec); // TempKey not from GenDig/GenKey
    // A slot whose ReadKey forbids external signing.
    let mut chip = Chip::new_blank();
    let mut zone = expected_zone(&mut chip);
    zone.set_slot_config(0, SlotConfig(zone.slot_config(0).0).with_read_key(0b0100));
    Client::new(&mut chip).write_config_zone(&zone).unwrap();
    Client::new(&mut chip).lock_config(&zone).unwrap();
    Client::new(&mut chip).gen_key(0).unwrap();
    Client::new(&mut chip).nonce_load(&[1; 32]).unwrap();
    expect_refused(&mut chip, Command::sign_external(0), Exec);
}

#[test]
fn verify() {
    let mut chip = locked_chip();
    let key = p256_key();
    let public = xy(key.verifying_key());
    let mut data = [0u8; 128];
    data[64..].copy_from_slice(&public);
    expect_refused(&mut chip, Command::verify_external(&data), Exec); // no TempKey
    Client::new(&mut chip).nonce_load(&[1; 32]).unwrap();
    expect_refused(
        &mut chip,
        Command::verify_external(&data),
        Status::Miscompare,
    ); // zero signature
    expect_refused(
        &mut chip,
        Command::with_data(Opcode::Verify, 2, 3, &data),
        Parse,
    );
    expect_refused(
        &mut chip,
        Command::with_data(Opcode::Verify, 2, 4, &data[..64]),
        Parse,
    );
    expect_refused(
        &mut chip,
        Command::with_data(Opcode::Verify, 7, 0, &data[..64]),
        Parse,
    );
    let mut off_curve = data;
    off_curve[127] ^= 1;
    expect_refused(&mut chip, Command::verify_external(&off_curve), Exec);
    expect_refused(&mut chip, Command::verify_stored(0, &[0; 64]), Exec); // private-key slot
}

#[test]
fn ecdh() {
    let mut chip = locked_chip();
    let public = xy(p256_key().verifying_key());
    expect_refused(&mut chip, Command::ecdh(0, &public), Exec); // no key yet
    Client::new(&mut chip).gen_key(0).unwrap();
    assert_eq!(run(&mut chip, Command::ecdh(0, &public)).unwrap().len(), 32);
    expect_refused(&mut chip, Command::ecdh(8, &public), Exec);
    expect_refused(&mut chip, Command::ecdh(16, &public), Parse);
    expect_refused(
        &mut chip,
        Command::with_data(Opcode::Ecdh, 1, 0, &public),
        Parse,
    );
    expect_refused(
        &mut chip,
        Command::with_data(Opcode::Ecdh, 0, 0, &public[..32]),
        Parse,
    );
    let mut off_curve = public;
    off_curve[63] ^= 1;
    expect_refused(&mut chip, Command::ecdh(0, &off_curve), Exec);
}

#[test]
fn update_extra() {
    // Before config lock, as cryptoauthlib's calib_write_config_zone uses it.
    let mut chip = awake_blank();
    run(
        &mut chip,
        Command::update_extra(UpdateExtraMode::UserExtra, 0x00),
    )
    .unwrap();
    run(
        &mut chip,
        Command::update_extra(UpdateExtraMode::UserExtra, 0x42),
    )
    .unwrap();
    assert_eq!(chip.config_zone().user_extra(), 0x42);
    // UserExtra only while it is 0.
    expect_refused(
        &mut chip,
        Command::update_extra(UpdateExtraMode::UserExtra, 0x43),
        Exec,
    );
    let mut chip = config_locked_chip();
    run(
        &mut chip,
        Command::update_extra(UpdateExtraMode::Selector, 0xC4),
    )
    .unwrap();
    run(
        &mut chip,
        Command::update_extra(UpdateExtraMode::Selector, 0xC6),
    )
    .unwrap(); // SelectorMode 0
    assert_eq!(chip.config_zone().selector(), 0xC6);
    expect_refused(&mut chip, Command::new(Opcode::UpdateExtra, 3, 0), Parse);
    expect_refused(
        &mut chip,
        Command::update_extra(UpdateExtraMode::DecrementLimitedUse, 16),
        Parse,
    );
    expect_refused(
        &mut chip,
        Command::with_data(Opcode::UpdateExtra, 0, 0, &[1]),
        Parse,
    );
    // With SelectorMode set, Selector is written only while it is 0.
    let mut chip = Chip::new_blank();
    let mut zone = expected_zone(&mut chip);
    zone.set_chip_mode(atecc::config::ChipMode(0).with_selector_mode(true));
    Client::new(&mut chip).write_config_zone(&zone).unwrap();
    run(
        &mut chip,
        Command::update_extra(UpdateExtraMode::Selector, 0xC4),
    )
    .unwrap();
    expect_refused(
        &mut chip,
        Command::update_extra(UpdateExtraMode::Selector, 0xC6),
        Exec,
    );
}

#[test]
fn counter() {
    let mut chip = awake_blank();
    assert_eq!(
        run(&mut chip, Command::counter(1, false)),
        Ok(vec![0, 0, 0, 0])
    );
    assert_eq!(
        run(&mut chip, Command::counter(1, true)),
        Ok(vec![1, 0, 0, 0])
    );
    assert_eq!(
        run(&mut chip, Command::counter(1, true)),
        Ok(vec![2, 0, 0, 0])
    );
    assert_eq!(
        run(&mut chip, Command::counter(0, false)),
        Ok(vec![0, 0, 0, 0])
    );
    expect_refused(&mut chip, Command::counter(2, false), Parse);
    expect_refused(&mut chip, Command::new(Opcode::Counter, 2, 0), Parse);
}

#[test]
fn sha_and_hmac() {
    let mut chip = locked_chip();
    expect_refused(&mut chip, Command::sha(ShaMode::Update, 0, &[0; 64]), Exec); // not started
    let msg: Vec<u8> = (0..100u8).collect();
    run(&mut chip, Command::sha(ShaMode::Start, 0, &[])).unwrap();
    run(&mut chip, Command::sha(ShaMode::Update, 0, &msg[..64])).unwrap();
    expect_refused(
        &mut chip,
        Command::sha(ShaMode::Update, 0, &msg[..63]),
        Parse,
    );
    let digest = run(&mut chip, Command::sha(ShaMode::End, 36, &msg[64..])).unwrap();
    assert_eq!(digest, host::sha256_digest(&msg).to_vec());
    run(&mut chip, Command::sha(ShaMode::HmacStart, 4, &[])).unwrap();
    let mac = run(&mut chip, Command::sha(ShaMode::HmacEnd, 5, b"hello")).unwrap();
    assert_eq!(mac, host::hmac_sha256(&WRITE_KEY, b"hello").to_vec());
    expect_refused(&mut chip, Command::sha(ShaMode::HmacStart, 0, &[]), Exec); // private key
    expect_refused(&mut chip, Command::sha(ShaMode::Public, 0, &[]), Parse);
    run(&mut chip, Command::sha(ShaMode::Start, 0, &[])).unwrap();
    expect_refused(&mut chip, Command::sha(ShaMode::End, 3, &[1, 2]), Parse);
}

#[test]
fn mac_and_check_mac() {
    let mut chip = locked_chip();
    let sn = chip.serial_number();
    let challenge = [0x6D; 32];
    let mac = run(&mut chip, Command::mac(0x00, 4, &challenge)).unwrap();
    assert_eq!(mac, host::mac(&WRITE_KEY, &challenge, 0, 4, &sn).to_vec());
    let full = run(&mut chip, Command::mac(MAC_INCLUDE_SN, 4, &challenge)).unwrap();
    assert_eq!(
        full,
        host::mac(&WRITE_KEY, &challenge, MAC_INCLUDE_SN, 4, &sn).to_vec()
    );
    expect_refused(&mut chip, Command::mac(0x00, 0, &challenge), Exec); // private key
    expect_refused(&mut chip, Command::mac(0x08, 4, &challenge), Parse); // OTP bits on a 508A
    expect_refused(&mut chip, Command::mac(0x00, 4, &challenge[..20]), Parse);
    expect_refused(
        &mut chip,
        Command::mac(MAC_CHALLENGE_FROM_TEMPKEY, 4, &[]),
        Exec,
    ); // no TempKey
    let other = [0x0D; 13];
    let response = host::check_mac_response(&WRITE_KEY, &challenge, &other, &sn);
    let mut data = [0u8; 77];
    data[..32].copy_from_slice(&challenge);
    data[32..64].copy_from_slice(&response);
    data[64..].copy_from_slice(&other);
    assert_eq!(run(&mut chip, Command::check_mac(0, 4, &data)), Ok(vec![0]));
    data[40] ^= 1;
    expect_refused(
        &mut chip,
        Command::check_mac(0, 4, &data),
        Status::Miscompare,
    );
    expect_refused(
        &mut chip,
        Command::with_data(Opcode::CheckMac, 0, 4, &data[..76]),
        Parse,
    );
}

#[test]
fn commands_not_emulated_answer_parse_error() {
    let mut chip = locked_chip();
    for op in [Opcode::DeriveKey, Opcode::Hmac, Opcode::Pause] {
        expect_refused(&mut chip, Command::new(op, 0, 0), Parse);
    }
}

#[test]
fn every_status_code_reaches_the_host_as_its_frame() {
    use atecc::packet::parse_response;
    for status in Status::ALL {
        assert_eq!(parse_response(&status.frame()), Err(Error::Status(status)));
    }
}

//! The provisioning story, end to end against the emulated chip through the host math:
//! configure, lock, generate or inject keys, prove them with p256.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use atecc::client::{Client, ClientError};
use atecc::config::{address, slot_size};
use atecc::emulator::Chip;
use atecc::host;
use atecc::opcode::*;
use atecc::packet::{Command, Error};
use atecc::{Status, crc16};
use common::*;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, SigningKey};

fn nonce_in() -> [u8; 20] {
    let mut n = [0u8; 20];
    getrandom_fill(&mut n);
    n
}

#[test]
fn a_blank_chip_answers_like_an_atecc508a() {
    let mut chip = Chip::new_blank();
    assert_eq!(chip.wake(), [0x04, 0x11, 0x33, 0x43]);
    let sn = chip.serial_number();
    assert_eq!(&sn[..2], &[0x01, 0x23]);
    assert_eq!(sn[8], 0xEE);
    assert_ne!(
        Chip::new_blank().serial_number(),
        sn,
        "serial numbers are unique"
    );
    let mut c = Client::new(&mut chip);
    assert_eq!(c.revision().unwrap(), [0x00, 0x00, 0x50, 0x00]);
    assert_eq!(c.serial_number().unwrap(), sn);
    // Before the config zone is locked the RNG gives the test pattern.
    let pattern: Vec<u8> = [0xFF, 0xFF, 0x00, 0x00].repeat(8);
    assert_eq!(c.random().unwrap().to_vec(), pattern);
    let rand_out = run(&mut chip, Command::nonce(NonceMode::Random, &[0; 20])).unwrap();
    assert_eq!(rand_out, pattern);
}

#[test]
fn locking_the_config_zone_needs_the_right_summary_and_nothing_locks_otherwise() {
    let mut chip = configured_chip();
    let zone = Client::new(&mut chip).read_config_zone().unwrap();
    assert_eq!(zone, expected_zone(&mut chip), "the profile is in the chip");
    let good = host::config_lock_crc(&zone);
    expect_refused(
        &mut chip,
        Command::lock(LockTarget::Config, good ^ 0x0101),
        Status::ExecutionError,
    );
    assert!(!chip.config_zone().is_config_locked());
    run(&mut chip, Command::lock(LockTarget::Config, good)).unwrap();
    assert!(chip.config_zone().is_config_locked());
    // Locked once; a second lock and any config write are refused.
    let locked = host::config_lock_crc(&chip.config_zone());
    expect_refused(
        &mut chip,
        Command::lock(LockTarget::Config, locked),
        Status::ExecutionError,
    );
    expect_refused(
        &mut chip,
        Command::write(Zone::Config, address::block_word(0, 4), &[0xC2, 0, 0, 0]),
        Status::ExecutionError,
    );
    // After config lock the RNG is random.
    let r1 = Client::new(&mut chip).random().unwrap();
    let r2 = Client::new(&mut chip).random().unwrap();
    assert_ne!(r1, r2);
}

#[test]
fn locking_the_data_zone_checks_the_summary() {
    let mut chip = config_locked_chip();
    let good = data_summary(&chip);
    expect_refused(
        &mut chip,
        Command::lock(LockTarget::Data, good.wrapping_add(1)),
        Status::ExecutionError,
    );
    assert!(!chip.config_zone().is_data_locked());
    run(&mut chip, Command::lock(LockTarget::Data, good)).unwrap();
    assert!(chip.config_zone().is_data_locked());
    expect_refused(
        &mut chip,
        Command::lock(LockTarget::Data, good),
        Status::ExecutionError,
    );
}

#[test]
fn a_key_generated_in_the_chip_signs_what_p256_verifies() {
    let mut chip = locked_chip();
    let mut c = Client::new(&mut chip);
    let public = c.gen_key(0).unwrap();
    assert_eq!(
        c.public_key(0).unwrap(),
        public,
        "GenKey public mode gives the same key"
    );
    let digest = host::sha256_digest(b"CONNECT mqtt.example:8883");
    let rs = c.sign_digest(0, &digest).unwrap();
    let sig = Signature::from_slice(&rs).unwrap();
    verifying_key(&public)
        .verify_prehash(&digest, &sig)
        .expect("p256 accepts the chip's signature");
    // The chip's own Verify agrees, and rejects a tampered digest.
    assert!(c.verify_external(&digest, &rs, &public).unwrap());
    let mut other = digest;
    other[0] ^= 1;
    assert!(!c.verify_external(&other, &rs, &public).unwrap());
}

#[test]
fn the_profiles_identity_slots_lock_once_and_then_the_key_can_never_be_replaced() {
    let mut chip = locked_chip();
    // The built-in profile makes the identity slots Lockable; the spare slot 1 is not.
    let zone = chip.config_zone();
    assert!(zone.key_config(0).lockable() && zone.key_config(2).lockable());
    assert!(!zone.key_config(1).lockable());
    let key = p256_key();
    let scalar: [u8; 32] = key.to_bytes().into();
    let mut c = Client::new(&mut chip);
    let public = c.gen_key(0).unwrap();
    c.priv_write_encrypted(2, &scalar, WRITE_KEY_SLOT, &WRITE_KEY, &nonce_in())
        .unwrap();
    c.lock_slot(0).unwrap();
    c.lock_slot(2).unwrap();
    let zone = chip.config_zone();
    assert!(zone.is_slot_locked(0) && zone.is_slot_locked(2) && !zone.is_slot_locked(1));
    // SlotLocked is config bytes 88-89, one bit per slot, 0 = locked.
    assert_eq!(zone.0[88] & 0b101, 0, "{:#04x}", zone.0[88]);
    expect_refused(
        &mut chip,
        Command::gen_key_create(0),
        Status::ExecutionError,
    );
    expect_refused(
        &mut chip,
        Command::lock(LockTarget::Slot(0), 0),
        Status::ExecutionError,
    );
    // An encrypted PrivWrite with the right write key is refused too (GenDig first, as the
    // host would do it: the refusal is the lock, not a missing authorisation).
    let mut c = Client::new(&mut chip);
    let other: [u8; 32] = p256_key().to_bytes().into();
    let r = c.priv_write_encrypted(2, &other, WRITE_KEY_SLOT, &WRITE_KEY, &nonce_in());
    assert!(
        matches!(
            r,
            Err(ClientError::Chip(Error::Status(Status::ExecutionError)))
        ),
        "{r:?}"
    );
    // The certified keys stay and still sign; the unlockable spare slot still takes GenKey.
    assert_eq!(c.public_key(0).unwrap(), public);
    assert_eq!(c.public_key(2).unwrap(), xy(key.verifying_key()));
    let digest = host::sha256_digest(b"still me");
    let rs = c.sign_digest(0, &digest).unwrap();
    verifying_key(&public)
        .verify_prehash(&digest, &Signature::from_slice(&rs).unwrap())
        .expect("the locked key signs");
    c.gen_key(1).unwrap();
    // Lock(slot) on a slot that is not Lockable, or before the data zone is locked, fails.
    expect_refused(
        &mut chip,
        Command::lock(LockTarget::Slot(1), 0),
        Status::ExecutionError,
    );
    let mut early = config_locked_chip();
    expect_refused(
        &mut early,
        Command::lock(LockTarget::Slot(0), 0),
        Status::ExecutionError,
    );
}

#[test]
fn genkey_digest_mode_puts_the_public_key_digest_in_tempkey() {
    let mut chip = locked_chip();
    let num_in = nonce_in();
    let tk = Client::new(&mut chip).nonce_random(&num_in).unwrap();
    let public = run(
        &mut chip,
        Command::gen_key(GENKEY_CREATE | GENKEY_DIGEST, 0, &[]),
    )
    .unwrap();
    let public: [u8; 64] = public.try_into().unwrap();
    let expected = host::pubkey_digest(
        &tk,
        GENKEY_CREATE | GENKEY_DIGEST,
        0,
        &chip.serial_number(),
        &public,
    );
    let now = chip.tempkey().unwrap();
    assert_eq!(now.value, expected);
    assert!(now.gen_key_data);
    // Internal sign of that digest is allowed (ReadKey bit 1) and verifies against the
    // message the host reconstructs.
    let rs = run(&mut chip, Command::sign_internal(0, false)).unwrap();
    let zone = chip.config_zone();
    let msg = host::sign_internal_message(
        &now,
        0,
        0,
        zone.slot_config(0).0,
        zone.key_config(0).0,
        &chip.serial_number(),
        zone.is_slot_locked(0),
        false,
    );
    let sig = Signature::from_slice(&rs).unwrap();
    verifying_key(&public)
        .verify_prehash(&host::sha256_digest(&msg), &sig)
        .unwrap();
}

#[test]
fn encrypted_privwrite_with_the_write_key_installs_the_key() {
    let mut chip = locked_chip();
    let key = p256_key();
    let scalar: [u8; 32] = key.to_bytes().into();
    let mut c = Client::new(&mut chip);
    c.priv_write_encrypted(2, &scalar, WRITE_KEY_SLOT, &WRITE_KEY, &nonce_in())
        .unwrap();
    assert_eq!(c.public_key(2).unwrap(), xy(key.verifying_key()));
    let digest = host::sha256_digest(b"hello");
    let rs = c.sign_digest(2, &digest).unwrap();
    key.verifying_key()
        .verify_prehash(&digest, &Signature::from_slice(&rs).unwrap())
        .unwrap();
    assert_eq!(&chip.slot(2).unwrap()[4..36], &scalar);
}

#[test]
fn encrypted_privwrite_with_a_wrong_write_key_fails_and_the_slot_is_unchanged() {
    let mut chip = locked_chip();
    let before = chip.slot(2).unwrap().to_vec();
    let scalar: [u8; 32] = p256_key().to_bytes().into();
    let wrong = [0x99; 32];
    let result = Client::new(&mut chip).priv_write_encrypted(
        2,
        &scalar,
        WRITE_KEY_SLOT,
        &wrong,
        &nonce_in(),
    );
    assert_eq!(
        result,
        Err(ClientError::Chip(Error::Status(Status::ExecutionError)))
    );
    assert_eq!(chip.slot(2).unwrap(), &before[..]);
    // Plain PrivWrite is refused after data lock, and so is a slot without PrivWrite rights
    // (slot 1 of the built-in profile: GenKey only).
    let plain = [0u8; 68];
    expect_refused(
        &mut chip,
        Command::priv_write(2, &plain),
        Status::ExecutionError,
    );
    let r = Client::new(&mut chip).priv_write_encrypted(
        1,
        &scalar,
        WRITE_KEY_SLOT,
        &WRITE_KEY,
        &nonce_in(),
    );
    assert_eq!(
        r,
        Err(ClientError::Chip(Error::Status(Status::ExecutionError)))
    );
}

#[test]
fn privwrite_before_data_lock_works_in_clear_and_encrypted() {
    let mut chip = config_locked_chip();
    let key = p256_key();
    let mut data = [0u8; 68];
    data[4..36].copy_from_slice(&key.to_bytes());
    run(&mut chip, Command::priv_write(1, &data)).unwrap();
    let key2 = p256_key();
    let scalar2: [u8; 32] = key2.to_bytes().into();
    let mut c = Client::new(&mut chip);
    assert_eq!(c.public_key(1).unwrap(), xy(key.verifying_key()));
    c.priv_write_encrypted(2, &scalar2, WRITE_KEY_SLOT, &WRITE_KEY, &nonce_in())
        .unwrap();
    assert_eq!(c.public_key(2).unwrap(), xy(key2.verifying_key()));
}

#[test]
fn encrypted_write_and_encrypted_read_round_trip() {
    let mut chip = locked_chip();
    let data = [0x3E; 32];
    let mut c = Client::new(&mut chip);
    c.write_slot_encrypted(9, 1, &data, WRITE_KEY_SLOT, &WRITE_KEY, &nonce_in())
        .unwrap();
    assert_eq!(
        c.read_slot_block(9, 1).unwrap(),
        data,
        "slot 9 is readable in clear"
    );
    // Slot 10 is secret: readable only encrypted with the read key.
    assert_eq!(
        c.read_slot_encrypted(10, 0, WRITE_KEY_SLOT, &WRITE_KEY, &nonce_in())
            .unwrap(),
        SECRET
    );
    c.write_slot_encrypted(10, 0, &data, WRITE_KEY_SLOT, &WRITE_KEY, &nonce_in())
        .unwrap();
    assert_eq!(
        c.read_slot_encrypted(10, 0, WRITE_KEY_SLOT, &WRITE_KEY, &nonce_in())
            .unwrap(),
        data
    );
    // A wrong read key yields garbage, never the secret.
    let garbage = c
        .read_slot_encrypted(10, 0, WRITE_KEY_SLOT, &[0x11; 32], &nonce_in())
        .unwrap();
    assert_ne!(garbage, data);
    // Plain reads of the secret are refused.
    let cmd = Command::read(Zone::Data, address::data(10, 0, 0), true);
    expect_refused(&mut chip, cmd, Status::ExecutionError);
}

#[test]
fn encrypted_write_with_a_wrong_key_fails_and_the_slot_is_unchanged() {
    let mut chip = locked_chip();
    let before = chip.slot(9).unwrap().to_vec();
    let r = Client::new(&mut chip).write_slot_encrypted(
        9,
        0,
        &[1; 32],
        WRITE_KEY_SLOT,
        &[0x12; 32],
        &nonce_in(),
    );
    assert_eq!(
        r,
        Err(ClientError::Chip(Error::Status(Status::ExecutionError)))
    );
    assert_eq!(chip.slot(9).unwrap(), &before[..]);
    // A clear write to an Encrypt slot is refused too.
    expect_refused(
        &mut chip,
        Command::write(Zone::Data, address::data(9, 0, 0), &[1; 32]),
        Status::ExecutionError,
    );
}

#[test]
fn ecdh_agrees_with_p256() {
    let mut chip = locked_chip();
    let mut c = Client::new(&mut chip);
    let chip_public = c.gen_key(0).unwrap();
    let peer = p256::SecretKey::from_slice(&p256_key().to_bytes()).unwrap();
    let peer_public = xy(&p256::ecdsa::VerifyingKey::from(&SigningKey::from(&peer)));
    let shared = c.ecdh(0, &peer_public).unwrap();
    let chip_pk = p256::PublicKey::from(&verifying_key(&chip_public));
    let expected = peer.diffie_hellman(&chip_pk);
    assert_eq!(&shared[..], &expected.raw_secret_bytes()[..]);
}

#[test]
fn stored_public_keys_verify_signatures() {
    let mut chip = config_locked_chip();
    let ca = p256_key();
    let stored = host::public_key_slot_format(&xy(ca.verifying_key()));
    Client::new(&mut chip).write_slot(14, &stored).unwrap();
    let crc = data_summary(&chip);
    Client::new(&mut chip).lock_data(crc).unwrap();
    let digest = host::sha256_digest(b"firmware image");
    let sig: Signature =
        p256::ecdsa::signature::hazmat::PrehashSigner::sign_prehash(&ca, &digest).unwrap();
    let rs: [u8; 64] = sig.to_bytes().into();
    Client::new(&mut chip).nonce_load(&digest).unwrap();
    assert_eq!(run(&mut chip, Command::verify_stored(14, &rs)), Ok(vec![0]));
    let mut bad = rs;
    bad[40] ^= 4;
    expect_refused(
        &mut chip,
        Command::verify_stored(14, &bad),
        Status::Miscompare,
    );
    // Slot 14 is lockable: lock it, then writes are refused.
    run(&mut chip, Command::lock(LockTarget::Slot(14), 0)).unwrap();
    assert!(chip.config_zone().is_slot_locked(14));
    expect_refused(
        &mut chip,
        Command::lock(LockTarget::Slot(14), 0),
        Status::ExecutionError,
    );
    expect_refused(
        &mut chip,
        Command::write(Zone::Data, address::data(14, 0, 0), &[0; 32]),
        Status::ExecutionError,
    );
    assert_eq!(slot_size(14), 72);
}

#[test]
fn config_lock_summary_matches_crc16_of_the_zone() {
    let chip = configured_chip();
    let zone = chip.config_zone();
    assert_eq!(host::config_lock_crc(&zone), crc16(&zone.0));
}

/// A chip with `tls-device-atcacert` written and both zones locked (the identity slots 10-13
/// stay clear-writable: WriteConfig Always, not secret).
fn atcacert_locked_chip() -> Chip {
    let profile =
        atecc::profile::Profile::from_toml(atecc::profile::TLS_DEVICE_ATCACERT_PROFILE).unwrap();
    let mut chip = Chip::new_blank();
    let current = Client::new(&mut chip).read_config_zone().unwrap();
    let zone = profile.to_config_zone(&current).unwrap();
    let mut c = Client::new(&mut chip);
    c.write_config_zone(&zone).unwrap();
    let zone = c.read_config_zone().unwrap();
    c.lock_config(&zone).unwrap();
    c.write_slot(WRITE_KEY_SLOT, &WRITE_KEY).unwrap();
    let crc = data_summary(&chip);
    Client::new(&mut chip).lock_data(crc).unwrap();
    chip
}

#[test]
fn a_72_byte_slot_is_written_as_cryptoauthlib_does_and_nothing_past_its_end_is_accepted() {
    let mut chip = atcacert_locked_chip();
    let slot = 10u8;
    let comp: Vec<u8> = (1..=72).collect();
    // Two 32-byte blocks, then the 8-byte tail as two 4-byte words (calib_write_bytes_zone).
    Client::new(&mut chip)
        .write_public_slot(slot, &comp)
        .unwrap();
    assert_eq!(chip.slot(10).unwrap(), comp);
    // The tail again as one 32-byte write, zero-padded: accepted (the data sheets allow it).
    let mut padded = [0u8; 32];
    padded[..8].copy_from_slice(&[0xA5; 8]);
    let tail = address::data(slot, 2, 0);
    run(&mut chip, Command::write(Zone::Data, tail, &padded)).unwrap();
    assert_eq!(chip.slot(10).unwrap()[64..], [0xA5; 8]);
    // Refused, and nothing changes: a padded block whose padding is not zero, a word or a
    // block past the slot's end, a 4-byte write to a secret slot.
    padded[8] = 1;
    expect_refused(
        &mut chip,
        Command::write(Zone::Data, tail, &padded),
        Status::ParseError,
    );
    expect_refused(
        &mut chip,
        Command::write(Zone::Data, address::data(slot, 2, 2), &[1, 2, 3, 4]),
        Status::ParseError,
    );
    expect_refused(
        &mut chip,
        Command::write(Zone::Data, address::data(slot, 3, 0), &[0; 32]),
        Status::ParseError,
    );
    expect_refused(
        &mut chip,
        Command::write(
            Zone::Data,
            address::data(WRITE_KEY_SLOT, 0, 0),
            &[1, 2, 3, 4],
        ),
        Status::ExecutionError,
    );
    assert_eq!(
        Client::new(&mut chip).write_public_slot(slot, &[0; 76]),
        Err(ClientError::Chip(Error::DataTooLong))
    );
}

#[test]
fn before_the_data_lock_only_32_byte_writes_are_taken_so_a_short_tail_goes_padded() {
    let mut chip = configured_chip();
    let zone = Client::new(&mut chip).read_config_zone().unwrap();
    Client::new(&mut chip).lock_config(&zone).unwrap();
    // Slot 8 is public in the TLS profile; a 4-byte write before the data lock is refused.
    expect_refused(
        &mut chip,
        Command::write(Zone::Data, address::data(8, 0, 0), &[1, 2, 3, 4]),
        Status::ExecutionError,
    );
    // A 36-byte slot's 4-byte tail goes as a zero-padded 32-byte block (`write_slot`).
    let data: Vec<u8> = (1..=36).collect();
    Client::new(&mut chip)
        .write_slot(WRITE_KEY_SLOT, &data)
        .unwrap();
    assert_eq!(chip.slot(WRITE_KEY_SLOT as usize).unwrap(), data);
}
